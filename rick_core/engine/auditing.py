"""What the engine puts in the audit log, and how it fails closed.

Order events become ``ORDER_SUBMITTED`` / ``ORDER_REJECTED`` / ``ORDER_FILLED`` /
``ORDER_CANCELED`` records, fills worth at least the large-trade threshold (in
the account's currency) a ``LARGE_TRADE_EXECUTED`` record, and the engine's
life ``ENGINE_STARTED`` / ``ENGINE_STOPPED``.

No record is dropped. Records are offered to the audit trail's bounded queue;
when it is full they wait in a backlog that a task feeds into the trail as it
makes room, and no new order is sent until the backlog is empty (backpressure
lands on new risk, never on fills or cancels already under way). When the
audit log cannot be written, no new order is sent at all: rick fails closed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import structlog
import trio

from rick_core.model import Fill, Order, OrderStatus
from rick_core.security.audit import AuditUnavailable
from rick_core.security.records import Actor, AuditRecord, EventType, Severity
from rick_core.strategy import TradingHalted

if TYPE_CHECKING:
    from rick_core.engine.runtime import BrokerService
    from rick_core.security.audit import AuditTrail

__all__ = ["DEFAULT_LARGE_TRADE", "EngineAudit"]

log = structlog.get_logger("rick.audit")

DEFAULT_LARGE_TRADE = Decimal(100_000)
"""Fills worth at least this much in the account's currency are audited as large trades."""

ENGINE = Actor(kind="system", name="engine", source="engine")

MAX_AUDIT_LAG = 0.5
"""Seconds queued records may wait for the audit log before new orders are refused."""

_ORDER_EVENTS = {
    OrderStatus.REJECTED: (EventType.ORDER_REJECTED, Severity.WARNING),
    OrderStatus.FILLED: (EventType.ORDER_FILLED, Severity.INFO),
    OrderStatus.CANCELED: (EventType.ORDER_CANCELED, Severity.INFO),
    OrderStatus.EXPIRED: (EventType.ORDER_CANCELED, Severity.INFO),
}


def _actor(owner: str | None) -> Actor:
    if owner is None:  # an order the venue made (a stop loss that fired, a close-out)
        return Actor(kind="system", name="venue", source="engine")
    return Actor(kind="strategy", name=owner, source="engine")


def _order_details(order: Order) -> dict[str, Any]:
    request = order.request
    details: dict[str, Any] = {
        "client_order_id": order.client_order_id,
        "broker": order.broker,
        "instrument": order.instrument,
        "side": request.side.value,
        "quantity": str(request.quantity),
        "type": request.type.value,
        "status": order.status.value,
    }
    for name, value in (
        ("limit_price", request.limit_price),
        ("stop_price", request.stop_price),
        ("stop_loss", request.stop_loss),
        ("take_profit", request.take_profit),
        ("trailing_stop", request.trailing_stop),
        ("average_fill_price", order.average_fill_price),
    ):
        if value is not None:
            details[name] = str(value)
    if order.filled_quantity:
        details["filled_quantity"] = str(order.filled_quantity)
    if order.reject_reason:
        details["reason"] = order.reject_reason
    return details


class EngineAudit:
    """The engine's side of the audit trail (``trail`` None: auditing is off)."""

    def __init__(
        self,
        trail: AuditTrail | None,
        *,
        services: Mapping[str, BrokerService],
        large_trade: Decimal = DEFAULT_LARGE_TRADE,
    ) -> None:
        self.trail = trail
        self._services = services
        self.large_trade = large_trade
        self._backlog: deque[AuditRecord] = deque()
        self._backlog_added = trio.Event()  # the feeding task waits on this
        self._backlog_emptied = trio.Event()  # new orders wait on this
        self._unconverted: set[str] = set()

    # -- fail closed ---------------------------------------------------------

    @property
    def failure(self) -> str | None:
        """Why the audit log cannot be written, or None when it can."""
        trail = self.trail
        if trail is not None and trail.failed.is_set():
            return trail.failure
        return None

    async def before_send(self, strategy: str, order: Order) -> None:
        """Refuse the send when the audit log is down; otherwise audit it first."""
        if self.trail is None:
            return
        failure = self.failure
        if failure is not None:
            raise TradingHalted(
                f"the audit log cannot be written ({failure}): rick opens no new risk until it can"
            )
        lag = self.trail.lag()
        if lag > MAX_AUDIT_LAG:
            raise TradingHalted(
                f"the audit log has accepted nothing for {lag:.1f} s (is another process "
                "holding it, or the disk stuck?): rick opens no new risk until it catches up"
            )
        while self._backlog:  # backpressure: the log catches up before new risk
            if self._backlog_emptied.is_set():
                self._backlog_emptied = trio.Event()
            await self._backlog_emptied.wait()
        record = AuditRecord(
            type=EventType.ORDER_SUBMITTED, actor=_actor(strategy), details=_order_details(order)
        )
        if not self.trail.emit_nowait(record):
            try:
                await self.trail.emit(record)
            except Exception as exc:
                raise TradingHalted(f"the audit log cannot be written ({exc})") from exc

    # -- records from the engine ------------------------------------------------

    def observe(self, owner: str | None, event: Order | Fill) -> None:
        """Audit an order state or a fill the order manager just stored."""
        if self.trail is None:
            return
        if isinstance(event, Fill):
            self._check_large(owner, event)
            return
        found = _ORDER_EVENTS.get(event.status)
        if found is not None:
            kind, severity = found
            self.offer(
                AuditRecord(
                    type=kind,
                    actor=_actor(owner),
                    severity=severity,
                    details=_order_details(event),
                )
            )

    def system(
        self, kind: EventType, details: Mapping[str, Any], severity: Severity = Severity.INFO
    ) -> None:
        """Audit something the engine itself did (started, stopped, halted)."""
        if self.trail is not None:
            self.offer(AuditRecord(type=kind, actor=ENGINE, severity=severity, details=details))

    def offer(self, record: AuditRecord) -> None:
        """Queue ``record`` without waiting; it waits in the backlog if the trail is full."""
        trail = self.trail
        if trail is None:
            return
        try:
            queued = not self._backlog and trail.emit_nowait(record)
        except AuditUnavailable:
            queued = False  # kept in the backlog, counted in the failure report
        if not queued:
            self._backlog.append(record)
            self._backlog_added.set()

    async def run(self) -> None:
        """Feed the backlog into the trail as it makes room, until cancelled."""
        trail = self.trail
        if trail is None:
            return
        while True:
            while self._backlog:
                try:
                    await trail.emit(self._backlog[0])
                except Exception:
                    return  # the trail failed: before_send now refuses new orders
                self._backlog.popleft()
            self._backlog_emptied.set()
            self._backlog_added = trio.Event()
            if not self._backlog:
                await self._backlog_added.wait()

    def backlog(self) -> list[AuditRecord]:
        """Records still waiting for the trail (after it failed, they stay here)."""
        return list(self._backlog)

    async def flush_backlog(self) -> None:
        """Hand every waiting record to the trail (at stop, before it is closed)."""
        trail = self.trail
        while trail is not None and self._backlog and not trail.failed.is_set():
            await trail.emit(self._backlog.popleft())

    # -- large trades -----------------------------------------------------------

    def _check_large(self, owner: str | None, fill: Fill) -> None:
        service = self._services.get(fill.broker)
        if service is None or service.account is None:
            return
        currency = service.account.currency
        instrument = service.instruments.get(fill.instrument)
        quote_currency = instrument.quote_currency if instrument is not None else currency
        rate = self.rate(service, quote_currency, currency)
        notional = fill.quantity * fill.price
        if rate is None:
            if fill.instrument not in self._unconverted:
                self._unconverted.add(fill.instrument)
                log.warning(
                    "cannot value fills in the account currency; large trades of this "
                    "instrument are judged in its quote currency",
                    instrument=fill.instrument,
                    quote_currency=quote_currency,
                    account_currency=currency,
                )
            value, value_currency = notional, quote_currency
        else:
            value, value_currency = notional * rate, currency
        if value < self.large_trade:
            return
        details = {
            "client_order_id": fill.client_order_id,
            "broker": fill.broker,
            "instrument": fill.instrument,
            "side": fill.side.value,
            "quantity": str(fill.quantity),
            "price": str(fill.price),
            "value": str(value.quantize(Decimal("0.01"))),
            "currency": value_currency,
            "threshold": str(self.large_trade),
        }
        self.offer(
            AuditRecord(
                type=EventType.LARGE_TRADE_EXECUTED,
                actor=_actor(owner),
                severity=Severity.WARNING,
                details=details,
            )
        )

    @staticmethod
    def rate(service: BrokerService, source: str, target: str) -> Decimal | None:
        """How much one unit of ``source`` is worth in ``target``, from the broker's
        latest quotes, or None when they cannot tell."""
        if source == target:
            return Decimal(1)
        direct = service.last_quotes.get(f"{source}_{target}")
        if direct is not None:
            return direct.mid
        inverse = service.last_quotes.get(f"{target}_{source}")
        if inverse is not None:
            return 1 / inverse.mid
        return None
