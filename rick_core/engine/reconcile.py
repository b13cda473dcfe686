"""Reconciliation: make rick's store agree with what a venue says, every time a
broker connects (at start, and after a reconnect), before orders go to it.

The venue holds the truth about orders and executions. In order:

1. **Fills since the last one seen** (:meth:`Broker.fills`): executions rick
   missed while it was not running (or not connected) are stored, deduplicated
   by the venue's fill id, and reach their strategies.
2. **Orders**: every order the store has as working on this broker is compared
   with the venue's open orders; one the venue no longer lists is looked up by
   its client order id (:meth:`Broker.get_order`). An order left ``new`` or
   ``submitted`` by an earlier run (it may or may not have been sent when rick
   stopped) is first marked ``unknown``, then resolved the same way: found,
   it takes the venue's state; not found, it is rejected as never received.
   Nothing is ever sent again.
3. **External orders**: open orders at the venue that rick never placed are
   recorded (no strategy) so the risk charter, ``rick orders`` and a halt see
   them.
4. **Positions**: the venue's positions are compared with the positions
   computed from the stored fills.

Every mismatch (an external order, an order the venue does not know, a state
the machine refuses, a position that differs) is logged and audited as
``RECONCILIATION_MISMATCH``; the summary is audited as ``BROKER_RECONCILED``.
Mismatches are reported, not "fixed" by guessing: a position that differs
stays as the venue has it, and the trader decides.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import structlog
from attrs import frozen

from rick_core.broker import Broker, NotFound
from rick_core.model import Fill, OrderStatus
from rick_core.paper.ghost import GHOST_ID_PREFIX, GhostBroker, is_ghost_order
from rick_core.reports import net_positions
from rick_core.security.records import EventType, Severity

if TYPE_CHECKING:
    from rick_core.engine.oms import OrderManager
    from rick_core.store import Store

__all__ = ["Mismatch", "Reconciliation", "reconcile"]

log = structlog.get_logger("rick.reconcile")

FILL_OVERLAP = timedelta(minutes=5)
"""How far before the last stored fill the venue is asked for fills again: fills
stamped at the same moment, or reported late, are not missed (ids deduplicate)."""

_LEFT_OVER = "left {} by an earlier run; looked up at the venue by client order id"


@frozen
class Mismatch:
    """One disagreement between rick's store and the venue."""

    kind: str  # external_order | unknown_to_venue | state | position
    detail: str
    instrument: str | None = None
    client_order_id: str | None = None

    def to_details(self, broker: str) -> dict[str, Any]:
        details: dict[str, Any] = {"broker": broker, "kind": self.kind, "detail": self.detail}
        if self.instrument is not None:
            details["instrument"] = self.instrument
        if self.client_order_id is not None:
            details["client_order_id"] = self.client_order_id
        return details


@frozen
class Reconciliation:
    """What reconciling one broker found and did."""

    broker: str
    orders_checked: int
    orders_updated: int
    resolved: tuple[str, ...]  # orders of an earlier run whose fate was looked up
    missed_fills: int
    external: tuple[str, ...]
    mismatches: tuple[Mismatch, ...]

    def summary(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "orders_checked": self.orders_checked,
            "orders_updated": self.orders_updated,
            "resolved": list(self.resolved),
            "missed_fills": self.missed_fills,
            "external_orders": list(self.external),
            "mismatches": len(self.mismatches),
        }


Report = Callable[[EventType, dict[str, Any], Severity], None]
"""Where audit records go: (event type, details, severity)."""


async def reconcile(
    name: str, broker: Broker, oms: OrderManager, store: Store, report: Report | None = None
) -> Reconciliation:
    """Reconcile broker ``name`` (see the module notes). Raises the broker's
    error when the venue cannot be asked; the caller retries."""
    mismatches: list[Mismatch] = []
    # A ghost run's simulated orders and fills are stored under the real
    # broker's name: each world is reconciled with its own records only.
    ghost = isinstance(broker, GhostBroker)
    since = _fills_since(name, store, ghost)
    missed = 0
    if since is not None:
        fills = await broker.fills(since)
        missed = sum(1 for e in oms.apply(fills) if isinstance(e, Fill))

    venue_open = {o.client_order_id: o for o in await broker.open_orders()}
    working = oms.adopt(
        (order, strategy)
        for order, strategy in store.orders_with_strategy(broker=name, open_only=True)
        if order.venue_order_id is None or is_ghost_order(order) == ghost
    )
    resolved: list[str] = []
    updated = 0
    for stored in working:
        coid = stored.client_order_id
        current = oms.known(coid) or stored
        if current.status.is_final:
            continue  # an event during reconciliation settled it
        if current.status in (OrderStatus.NEW, OrderStatus.SUBMITTED):
            oms.mark_unknown(current, _LEFT_OVER.format(current.status.value))
            resolved.append(coid)
            current = oms.known(coid) or current
        venue = venue_open.pop(coid, None)
        if (
            venue is None
            and current.status in (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED)
            and oms.emulator.emulates(broker, current.request)
        ):
            # rick held it (the venue never had it): hold it again.
            oms.emulator.adopt(current, oms.owner(coid), oms.known(coid + ".x"))
            continue
        if venue is None:
            try:
                venue = await broker.get_order(coid)
            except NotFound:
                if current.status is OrderStatus.UNKNOWN:
                    oms.settle(
                        current,
                        OrderStatus.REJECTED,
                        "the venue never received it (looked up by client order id after "
                        "rick stopped); it was not sent again",
                    )
                else:
                    mismatches.append(
                        Mismatch(
                            "unknown_to_venue",
                            f"rick has order {coid} as {current.status.value} but the venue "
                            "does not know it; recorded as canceled",
                            current.instrument,
                            coid,
                        )
                    )
                    oms.settle(
                        current,
                        OrderStatus.CANCELED,
                        "the venue no longer knows this order (found at reconciliation)",
                    )
                updated += 1
                continue
        before = oms.known(coid) or current
        oms.apply([venue], durable=True)
        after = oms.known(coid) or before
        if after is not before:
            updated += 1
        if after.status is not venue.status or after.filled_quantity != venue.filled_quantity:
            mismatches.append(
                Mismatch(
                    "state",
                    f"order {coid}: rick has {after.status.value} with "
                    f"{after.filled_quantity} filled, the venue {venue.status.value} with "
                    f"{venue.filled_quantity} filled",
                    after.instrument,
                    coid,
                )
            )

    external: list[str] = []
    for coid, venue in venue_open.items():
        known = oms.known(coid)
        if known is None:
            oms.record_external(venue)
            external.append(coid)
            mismatches.append(
                Mismatch(
                    "external_order",
                    f"the venue has a working {venue.request.side.value} "
                    f"{venue.request.quantity} {venue.instrument} "
                    f"{venue.request.type.value} order rick did not place; recorded without "
                    "a strategy",
                    venue.instrument,
                    coid,
                )
            )
        elif known.status.is_final:
            mismatches.append(
                Mismatch(
                    "state",
                    f"order {coid}: rick has it {known.status.value}, the venue still "
                    f"has it {venue.status.value}",
                    venue.instrument,
                    coid,
                )
            )
        else:
            oms.apply([venue], durable=True)

    venue_positions = {p.instrument: p.quantity for p in await broker.positions()}
    mismatches += _compare_positions(name, store, venue_positions, ghost)
    result = Reconciliation(
        broker=name,
        orders_checked=len(working),
        orders_updated=updated,
        resolved=tuple(resolved),
        missed_fills=missed,
        external=tuple(external),
        mismatches=tuple(mismatches),
    )
    for mismatch in mismatches:
        log.warning("reconciliation mismatch", **mismatch.to_details(name))
        if report is not None:
            report(EventType.RECONCILIATION_MISMATCH, mismatch.to_details(name), Severity.WARNING)
    log.info("broker reconciled", **result.summary())
    if report is not None:
        report(EventType.BROKER_RECONCILED, result.summary(), Severity.INFO)
    return result


def _same_world(fill: Fill, ghost: bool) -> bool:
    return fill.fill_id.startswith(GHOST_ID_PREFIX) == ghost


def _fills_since(name: str, store: Store, ghost: bool) -> datetime | None:
    """From when to ask the venue for fills: a little before the last stored fill,
    else the first stored order; None when rick never traded on this broker."""
    last = store.fills(broker=name, limit=1)
    if last and not _same_world(last[0], ghost):
        last = [f for f in store.fills(broker=name) if _same_world(f, ghost)][-1:]
    if last:
        return last[0].time - FILL_OVERLAP
    first = store.first_order_time(name)
    return None if first is None else first - FILL_OVERLAP


def _compare_positions(
    name: str, store: Store, venue: dict[str, Decimal], ghost: bool
) -> list[Mismatch]:
    fills = [f for f in store.fills(broker=name) if _same_world(f, ghost)]
    ours = {p.instrument: p.quantity for p in net_positions(fills) if not p.is_flat}
    found = []
    for instrument in sorted(set(ours) | set(venue)):
        mine = ours.get(instrument, Decimal(0))
        theirs = venue.get(instrument, Decimal(0))
        if mine != theirs:
            found.append(
                Mismatch(
                    "position",
                    f"{instrument}: the fills rick stored add up to {mine}, the venue "
                    f"reports {theirs}",
                    instrument,
                )
            )
    return found
