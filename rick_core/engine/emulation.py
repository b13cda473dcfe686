"""Orders the core runs itself when a venue cannot: trigger orders (stop,
stop-limit, trailing stop, market-if-touched) held by rick and fired from the
quote stream, and one-cancels-other pairs.

Whether an order is native or emulated is decided from the broker's
:class:`~rick_core.broker.Capabilities`: an order type the venue claims goes
to the venue; a trigger order it does not claim is *held* by rick when the
venue can take what the trigger fires (a market order for a stop, a trailing
stop or a market-if-touched order, a limit order for a stop-limit).

A held order is stored like any other (it passes the risk charter and the
audit when placed) and is ``accepted``: working, held by rick. When a quote
reaches its trigger, rick sends the *child* order (client order id
``<parent>.x``) straight away, without a second risk check: a stop that a rate
limit could hold back is a stop that was never placed. The parent then mirrors
its child (partially filled, filled, canceled), so the strategy sees its own
order complete; fills belong to the child, so positions computed from fills
count them once. Cancelling a held parent cancels it locally; cancelling a
triggered one cancels its child at the venue.

A trailing stop follows the best price since it was accepted: a sell trails the
highest bid (trigger = best - distance, or best x (1 - percent/100)) and fires
when the bid falls to the trigger; a buy trails the lowest ask and fires when
the ask rises to it. Stops trigger on the touch the same way (a buy stop when
the ask reaches the stop price, a sell stop when the bid does).
Market-if-touched orders trigger from the other side, as a limit would fill: a
buy (resting below the market) when the ask falls to its ``stop_price`` or
below, a sell (resting above) when the bid rises to it or above; either then
fires a market order.

Held orders live in the running engine; a held order found working in the
store at start (rick stopped while holding it) is taken up again by
reconciliation and held anew. While rick is not running nothing fires it:
a venue-native stop is the safer choice where the venue offers one.

OCO: orders placed together (two, or a bracket's up to three protective legs);
the first to get a fill (or to end any other way: canceled, rejected, expired)
cancels the others.

A bracket (protection the venue cannot attach: ``stop_loss``, ``take_profit``,
``trailing_stop``) is placed by rick once the entry has filled, for the filled
quantity: ``<id>.sl`` (a stop), ``<id>.tp`` (a limit) and ``<id>.ts`` (a
trailing stop by ``trail_distance`` = the entry's ``trailing_stop``, itself
held by rick where the venue has no trailing stops), one-cancels-other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING

import attrs
import structlog
import trio

from rick_core.broker import Broker, BrokerError
from rick_core.model import (
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Quote,
    Side,
    TimeInForce,
    new_client_order_id,
    utc_now,
)

if TYPE_CHECKING:
    from rick_core.engine.oms import OrderManager

__all__ = ["Emulator", "trigger_price"]

log = structlog.get_logger("rick.emulation")

_TRIGGERS = frozenset(
    {OrderType.STOP, OrderType.STOP_LIMIT, OrderType.TRAILING_STOP, OrderType.MARKET_IF_TOUCHED}
)
_HUNDRED = Decimal(100)


def trigger_price(request: OrderRequest, best: Decimal) -> Decimal:
    """Where a trailing stop stands when the best price since it was placed is ``best``."""
    if request.trail_distance is not None:
        offset = request.trail_distance
    else:
        assert request.trail_percent is not None
        offset = best * request.trail_percent / _HUNDRED
    return best - offset if request.side is Side.SELL else best + offset


def _protection(entry: Order) -> list[OrderRequest]:
    """The stop loss, take profit and trailing stop orders protecting ``entry``'s
    filled quantity."""
    request = entry.request
    side = Side.SELL if request.side is Side.BUY else Side.BUY
    legs = []
    for suffix, price, kind in (
        ("sl", request.stop_loss, OrderType.STOP),
        ("tp", request.take_profit, OrderType.LIMIT),
        ("ts", request.trailing_stop, OrderType.TRAILING_STOP),
    ):
        if price is None:
            continue
        coid = f"{request.client_order_id}.{suffix}"
        legs.append(
            OrderRequest(
                instrument=request.instrument,
                side=side,
                quantity=entry.filled_quantity,
                type=kind,
                stop_price=price if kind is OrderType.STOP else None,
                limit_price=price if kind is OrderType.LIMIT else None,
                trail_distance=price if kind is OrderType.TRAILING_STOP else None,
                time_in_force=TimeInForce.GTC,
                client_order_id=coid if len(coid) <= 64 else new_client_order_id(),
                tag=f"{suffix} of {request.client_order_id}",
            )
        )
    return legs


def _child_request(parent: OrderRequest, quantity: Decimal) -> OrderRequest:
    coid = parent.client_order_id + ".x"
    if len(coid) > 64:
        coid = new_client_order_id()
    if parent.type is OrderType.STOP_LIMIT:
        tif = parent.time_in_force
        return OrderRequest(
            instrument=parent.instrument,
            side=parent.side,
            quantity=quantity,
            type=OrderType.LIMIT,
            limit_price=parent.limit_price,
            time_in_force=tif,
            expire_time=parent.expire_time if tif is TimeInForce.GTD else None,
            stop_loss=parent.stop_loss,
            take_profit=parent.take_profit,
            trailing_stop=parent.trailing_stop,
            client_order_id=coid,
            tag=parent.tag,
        )
    return OrderRequest(
        instrument=parent.instrument,
        side=parent.side,
        quantity=quantity,
        type=OrderType.MARKET,
        stop_loss=parent.stop_loss,
        take_profit=parent.take_profit,
        trailing_stop=parent.trailing_stop,
        client_order_id=coid,
        tag=parent.tag,
    )


@attrs.define
class _Held:
    order: Order
    strategy: str | None
    best: Decimal | None = None  # trailing stops: the best price seen
    child: str | None = None  # the child's client order id, once triggered


class Emulator:
    """Holds trigger orders and OCO links for one order manager (see the module notes)."""

    def __init__(self, oms: OrderManager) -> None:
        self._oms = oms
        self._held: dict[str, _Held] = {}
        self._watch: dict[tuple[str, str], dict[str, _Held]] = {}
        self._children: dict[str, str] = {}  # child -> parent
        self._partner: dict[str, tuple[str, ...]] = {}  # OCO: each leg -> the others
        self._voided: dict[str, str] = {}  # OCO legs not yet sent whose partner ended
        self._brackets: dict[str, str | None] = {}  # entries rick protects -> strategy
        self._protective: set[str] = set()  # protective legs (sl / tp / ts) rick placed
        self._pending_protection: dict[str, tuple[Order, str | None]] = {}
        self._work_in, self._work_out = trio.open_memory_channel[tuple[str, str]](math.inf)
        self.last_quote: Callable[[str, str], Quote | None] = lambda broker, instrument: None
        self.watching = False
        """Whether any held order waits for quotes (the quote loop asks first: cheap)."""

    # -- decisions -----------------------------------------------------------

    @staticmethod
    def emulates(broker: Broker, request: OrderRequest) -> bool:
        """Whether ``request`` should be held by rick: a trigger order the venue
        does not take natively, whose child order the venue does take."""
        caps = broker.capabilities
        if request.type not in _TRIGGERS or request.type in caps.order_types:
            return False
        child = _child_request(request, request.quantity)
        return caps.supports(child) is None

    @property
    def active(self) -> bool:
        """Whether any order is held, fired or OCO-linked (order events are then looked at)."""
        return bool(self._held or self._children or self._partner or self._voided or self._brackets)

    def is_child(self, client_order_id: str) -> bool:
        """Whether rick placed this order for an order already checked (a fired
        trigger, a bracket's protection): it skips the risk charter."""
        return client_order_id in self._children or client_order_id in self._protective

    @staticmethod
    def needs_bracket(broker: Broker, request: OrderRequest) -> bool:
        """Whether ``request`` carries protection the venue cannot attach natively."""
        caps = broker.capabilities
        return (
            (request.stop_loss is not None and not caps.attached_stop_loss)
            or (request.take_profit is not None and not caps.attached_take_profit)
            or (request.trailing_stop is not None and not caps.attached_trailing_stop)
        )

    def bracket(self, order: Order, strategy: str | None) -> None:
        """Protect ``order`` once it fills: rick places its stop loss, take profit
        and trailing stop (one-cancels-other when more than one is set) for the
        filled quantity."""
        self._brackets[order.client_order_id] = strategy

    def brackets(self, client_order_id: str) -> bool:
        return client_order_id in self._brackets

    def held(self, client_order_id: str) -> bool:
        """Whether rick holds this order and has not fired it yet."""
        held = self._held.get(client_order_id)
        return held is not None and held.child is None

    # -- holding -------------------------------------------------------------

    def hold(self, order: Order, strategy: str | None) -> Order:
        """Take ``order`` (stored, risk-checked) into rick's keeping: it is accepted."""
        accepted = attrs.evolve(
            order, status=OrderStatus.ACCEPTED, updated_at=max(utc_now(), order.updated_at)
        )
        self._oms.apply([accepted], durable=True, local=True)
        current = self._oms.known(order.client_order_id) or accepted
        self._register(current, strategy)
        quote = self.last_quote(order.broker, order.instrument)
        if quote is not None:
            self.on_quote(order.broker, quote)
        log.info(
            "order held by rick",
            client_order_id=order.client_order_id,
            broker=order.broker,
            type=order.request.type.value,
        )
        return self._oms.known(order.client_order_id) or current

    def adopt(self, order: Order, strategy: str | None, child: Order | None) -> None:
        """Hold again an order a previous run held (found working at reconciliation);
        ``child`` is the order it fired, if it fired."""
        coid = order.client_order_id
        if coid in self._held:
            return
        self._register(order, strategy)
        if child is not None:
            held = self._held[coid]
            held.child = child.client_order_id
            self._children[child.client_order_id] = coid
            watched = self._watch.get((order.broker, order.instrument), {})
            watched.pop(coid, None)
            self._mirror(child.client_order_id)

    def _register(self, order: Order, strategy: str | None) -> None:
        held = _Held(order=order, strategy=strategy)
        self._held[order.client_order_id] = held
        self._watch.setdefault((order.broker, order.instrument), {})[order.client_order_id] = held
        self.watching = True

    def _release(self, client_order_id: str) -> None:
        held = self._held.pop(client_order_id, None)
        if held is None:
            return
        key = (held.order.broker, held.order.instrument)
        watched = self._watch.get(key)
        if watched is not None:
            watched.pop(client_order_id, None)
            if not watched:
                del self._watch[key]
        self.watching = bool(self._watch)

    # -- quotes --------------------------------------------------------------

    def on_quote(self, broker: str, quote: Quote) -> None:
        """Fire every held order of ``quote``'s instrument whose trigger it reaches."""
        watched = self._watch.get((broker, quote.instrument))
        if not watched:
            return
        for coid, held in list(watched.items()):
            if held.child is None and self._reached(held, quote):
                held.child = "firing"
                watched.pop(coid, None)
                self._work_in.send_nowait(("fire", coid))

    @staticmethod
    def _reached(held: _Held, quote: Quote) -> bool:
        request = held.order.request
        sell = request.side is Side.SELL
        touch = quote.bid if sell else quote.ask
        if request.type is OrderType.TRAILING_STOP:
            best = held.best
            if best is None or (touch > best if sell else touch < best):
                held.best = best = touch
            trigger = trigger_price(request, best)
        else:
            assert request.stop_price is not None
            trigger = request.stop_price
            if request.type is OrderType.MARKET_IF_TOUCHED:
                # Touched from the favourable side: the mirror image of a stop.
                return touch >= trigger if sell else touch <= trigger
        return touch <= trigger if sell else touch >= trigger

    # -- order events --------------------------------------------------------

    def on_order(self, order: Order) -> None:
        """Called by the order manager with every applied order state."""
        coid = order.client_order_id
        parent = self._children.get(coid)
        if parent is not None:
            self._work_in.send_nowait(("mirror", coid))
        partners = self._partner.get(coid)
        if partners is not None and (order.filled_quantity > 0 or order.status.is_final):
            self._partner.pop(coid, None)
            for partner in partners:
                self._partner.pop(partner, None)
                other = self._oms.known(partner)
                if other is None or other.status is OrderStatus.NEW:
                    # Not sent yet: its submit sees this and does not send it.
                    self._voided[partner] = "not sent: its one-cancels-other partner ended first"
                else:
                    self._work_in.send_nowait(("cancel", partner))
        if order.status.is_final and coid in self._held and self._held[coid].child is None:
            self._release(coid)
        if order.status.is_final and coid in self._brackets:
            strategy = self._brackets.pop(coid)
            if order.filled_quantity > 0:
                self._pending_protection[coid] = (order, strategy)
                self._work_in.send_nowait(("protect", coid))

    # -- OCO -----------------------------------------------------------------

    def link(self, first: str, second: str, *more: str) -> None:
        """Make two or more orders (by client order id) one-cancels-other: the
        first to get a fill or to end cancels all the others."""
        group = (first, second, *more)
        for coid in group:
            self._partner[coid] = tuple(other for other in group if other != coid)

    def unlink(self, client_order_id: str) -> None:
        """Undo :meth:`link` (the first leg could not be placed)."""
        partners = self._partner.pop(client_order_id, None)
        for partner in partners or ():
            self._partner.pop(partner, None)

    def voided(self, client_order_id: str) -> str | None:
        """Why an OCO leg not yet sent must not be sent (its partner ended first)."""
        return self._voided.pop(client_order_id, None)

    # -- the worker ----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fire triggered orders, mirror children into parents, cancel OCO partners."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            async for kind, coid in self._work_out:
                if kind == "mirror":
                    self._mirror(coid)
                elif kind == "fire":
                    nursery.start_soon(self._fire, coid)
                elif kind == "protect":
                    nursery.start_soon(self._protect, coid)
                else:
                    nursery.start_soon(self._cancel_partner, coid)

    async def _fire(self, coid: str) -> None:
        held = self._held.get(coid)
        oms = self._oms
        if held is None:
            return
        current = oms.known(coid) or held.order
        if current.status.is_final or current.status is OrderStatus.PENDING_CANCEL:
            self._release(coid)
            return
        child = _child_request(current.request, current.remaining_quantity)
        # The child carries the protection: it, not the parent, is bracketed.
        self._brackets.pop(coid, None)
        held.child = child.client_order_id
        self._children[child.client_order_id] = coid
        log.info("held order triggered", client_order_id=coid, child=child.client_order_id)
        try:
            await oms.submit(held.strategy or "", current.broker, child)
        except Exception as exc:  # TradingHalted, a lost answer (left unknown, resolved)
            log.warning("triggered order not placed", client_order_id=coid, error=str(exc))
        self._mirror(child.client_order_id)

    async def _protect(self, coid: str) -> None:
        entry, strategy = self._pending_protection.pop(coid)
        legs = _protection(entry)
        if len(legs) >= 2:
            self.link(*(leg.client_order_id for leg in legs))
        for leg in legs:
            self._protective.add(leg.client_order_id)
            try:
                placed = await self._oms.submit(strategy or "", entry.broker, leg)
            except Exception as exc:
                log.error(
                    "protection not placed", client_order_id=coid, leg=leg.tag, error=str(exc)
                )
                continue
            if placed.status is OrderStatus.REJECTED:
                log.error(
                    "protection refused",
                    client_order_id=coid,
                    leg=leg.tag,
                    reason=placed.reject_reason,
                )

    def _mirror(self, child_coid: str) -> None:
        parent_coid = self._children.get(child_coid)
        oms = self._oms
        child = oms.known(child_coid)
        if parent_coid is None or child is None:
            return
        parent = oms.known(parent_coid)
        if parent is None or parent.status.is_final:
            return
        status = child.status
        reason = parent.reject_reason
        if status is OrderStatus.REJECTED:
            status = OrderStatus.CANCELED
            reason = f"triggered, but the venue refused the order: {child.reject_reason}"
        elif status in (OrderStatus.CANCELED, OrderStatus.EXPIRED):
            reason = child.reject_reason
        elif status not in (OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED):
            return  # sent, working: the parent stays accepted
        mirrored = attrs.evolve(
            parent,
            status=status,
            filled_quantity=child.filled_quantity,
            average_fill_price=child.average_fill_price,
            reject_reason=reason,
            venue_order_id=child.venue_order_id,
            updated_at=max(utc_now(), parent.updated_at),
        )
        oms.apply([mirrored], durable=True, local=True)
        if mirrored.status.is_final:
            self._release(parent_coid)
            self._children.pop(child_coid, None)

    async def cancel_held(self, order: Order) -> Order | None:
        """Cancel a held order: locally if it has not fired, at the venue through its
        child if it has. None if rick does not hold it."""
        held = self._held.get(order.client_order_id)
        if held is None:
            return None
        oms = self._oms
        if held.child is None or held.child == "firing":
            held.child = "canceled"
            self._release(order.client_order_id)
            current = oms.known(order.client_order_id) or order
            return oms.settle(current, OrderStatus.CANCELED, "canceled (held by rick, not fired)")
        child = oms.known(held.child)
        if child is not None and not child.status.is_final:
            await oms.cancel(held.strategy, child)
        self._mirror(held.child)
        return oms.known(order.client_order_id)

    async def _cancel_partner(self, coid: str) -> None:
        oms = self._oms
        order = oms.known(coid)
        if order is None or order.status.is_final:
            return
        try:
            await oms.cancel(None, order)
        except BrokerError as exc:
            log.error("OCO partner not canceled", client_order_id=coid, error=str(exc))
