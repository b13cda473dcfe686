"""The broker contract: what every broker plugin implements, so strategies and the
engine never change when the venue does.

A broker plugin registers a *factory* (see ``register_brokers`` in
:mod:`rick_core.hookspecs`) that the core calls with a
:class:`~rick_core.components.ComponentSetup`
for each broker configured in ``rick.toml``. The object it returns is a
:class:`Broker`.

Lifecycle: the engine calls :meth:`Broker.connect` once and counts the broker
ready only when it returns; :meth:`Broker.close` is always called, also after
a failed ``connect``. All methods are trio-async and must be cancellation-safe.

Errors: a broker raises only subclasses of :class:`BrokerError` for venue-side
problems, so the engine can act on them uniformly (``retryable`` says whether
the same call may succeed later). A venue's own reason text is kept in the
message; credentials never are.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from decimal import Decimal
from typing import Final, Protocol

from attrs import field, frozen

from rick_core.components import ComponentSetup
from rick_core.model import (
    Account,
    Fill,
    Instrument,
    Order,
    OrderRequest,
    OrderType,
    Position,
    Quote,
    TimeInForce,
)
from rick_core.symbols import SymbolMap

__all__ = [
    "HEARTBEAT",
    "KEEP",
    "AuthenticationFailed",
    "Broker",
    "BrokerError",
    "BrokerEvent",
    "BrokerFactory",
    "Capabilities",
    "Disconnected",
    "Heartbeat",
    "Keep",
    "NotFound",
    "OrderRejected",
    "RateLimited",
    "TemporarilyUnavailable",
    "Unsupported",
]


# ---------------------------------------------------------------------------
# errors


class BrokerError(Exception):
    """Base of every error a broker raises for a venue-side problem."""

    retryable: bool = False

    def __init__(self, message: str, *, broker: str = "") -> None:
        super().__init__(f"{broker}: {message}" if broker else message)
        self.broker = broker


class OrderRejected(BrokerError):
    """The venue refused the order; ``reason`` is the venue's own words, ``code`` its code."""

    def __init__(self, reason: str, *, broker: str = "", code: str | None = None) -> None:
        detail = f"order rejected: {reason}" + (f" ({code})" if code else "")
        super().__init__(detail, broker=broker)
        self.reason = reason
        self.code = code


class RateLimited(BrokerError):
    """The venue asked us to slow down; retry after ``retry_after`` seconds when given."""

    retryable = True

    def __init__(
        self, message: str = "rate limited", *, broker: str = "", retry_after: float | None = None
    ) -> None:
        if retry_after is not None:
            message = f"{message} (retry after {retry_after:g}s)"
        super().__init__(message, broker=broker)
        self.retry_after = retry_after


class AuthenticationFailed(BrokerError):
    """The venue refused our credentials. Retrying with the same ones will not help."""


class NotFound(BrokerError):
    """The order, position or instrument asked for does not exist at the venue."""


class TemporarilyUnavailable(BrokerError):
    """The venue is down, overloaded or unreachable right now; the call may succeed later."""

    retryable = True


class Disconnected(TemporarilyUnavailable):
    """The connection to the venue was lost; the broker will reconnect."""


class Unsupported(BrokerError):
    """The venue cannot do this (see :class:`Capabilities`); no retry will change that."""


# ---------------------------------------------------------------------------
# capabilities


def _order_types(values: Iterable[OrderType | str]) -> frozenset[OrderType]:
    return frozenset(OrderType.parse(v, what="order type") for v in values)


def _time_in_force_set(values: Iterable[TimeInForce | str]) -> frozenset[TimeInForce]:
    return frozenset(TimeInForce.parse(v, what="time in force") for v in values)


@frozen
class Capabilities:
    """What a venue does natively. The engine emulates or refuses the rest.

    The defaults claim the least (market orders, GTC and IOC, nothing attached),
    so a plugin that forgets to declare a capability is never trusted with it.
    """

    order_types: frozenset[OrderType] = field(
        default=frozenset({OrderType.MARKET}), converter=_order_types
    )
    time_in_force: frozenset[TimeInForce] = field(
        default=frozenset({TimeInForce.GTC, TimeInForce.IOC}), converter=_time_in_force_set
    )
    attached_stop_loss: bool = False
    attached_take_profit: bool = False
    modify_order_protection: bool = False
    modify_position_protection: bool = False
    client_order_ids: bool = False
    fractional_quantity: bool = False
    short_selling: bool = False
    streaming_quotes: bool = False
    streaming_events: bool = False
    attached_trailing_stop: bool = False
    """Whether an order may carry ``trailing_stop`` (a stop trailing the position
    it opens by a price distance, OANDA's ``trailingStopLossOnFill``). Last, so
    positional construction keeps working."""

    def supports(self, request: OrderRequest) -> str | None:
        """Why the venue cannot take ``request`` natively, or None if it can."""
        if request.type not in self.order_types:
            return f"{request.type.value} orders are not supported"
        if request.time_in_force not in self.time_in_force:
            return f"time in force {request.time_in_force.value} is not supported"
        if request.stop_loss is not None and not self.attached_stop_loss:
            return "an attached stop loss is not supported"
        if request.take_profit is not None and not self.attached_take_profit:
            return "an attached take profit is not supported"
        if request.trailing_stop is not None and not self.attached_trailing_stop:
            return "an attached trailing stop is not supported"
        if (
            request.quantity != request.quantity.to_integral_value()
            and not self.fractional_quantity
        ):
            return f"fractional quantity {request.quantity} is not supported"
        return None


# ---------------------------------------------------------------------------
# setup


class _Keep:
    """Sentinel type of :data:`KEEP`."""

    _instance: _Keep | None = None

    def __new__(cls) -> _Keep:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "KEEP"


Keep = _Keep
KEEP: Final = _Keep()
"""Leave this protective order as it is (as opposed to ``None``: remove it)."""


BrokerEvent = Order | Fill
"""What :meth:`Broker.stream_events` yields: an order's new state, or an execution."""


@frozen
class Heartbeat:
    """A sign of life from a stream that has nothing else to say.

    A broker whose venue sends keep-alives (OANDA's ``HEARTBEAT`` lines, a
    WebSocket heartbeat channel) yields one from :meth:`Broker.stream_quotes`
    or :meth:`Broker.stream_events` for each, so the engine's silence watchdog
    (see :attr:`Broker.quote_silence`) can tell a quiet market from a dead
    connection. Consumers skip them; they carry no data.
    """

    time: datetime | None = None


HEARTBEAT: Final = Heartbeat()
"""The heartbeat to yield when the venue's keep-alive carries no useful time."""


class Broker(abc.ABC):
    """A connection to one account at one venue.

    Implementations set ``name`` (from the setup), ``capabilities``
    and ``symbols`` and implement every abstract method. Every value returned
    uses canonical symbols and ``Decimal`` amounts; every ``Order`` carries the
    ``client_order_id`` of the request that created it.
    """

    name: str
    capabilities: Capabilities
    symbols: SymbolMap

    quote_silence: float | None = None
    """Seconds without any message on :meth:`stream_quotes` (quotes or
    :class:`Heartbeat`) after which the engine judges the stream dead, closes
    it and subscribes again. None: no watchdog (a venue that may stay silent
    while healthy and sends no heartbeats). Set it from the venue's documented
    heartbeat interval, with margin: OANDA heartbeats every 5 s, so 10."""

    event_silence: float | None = None
    """The same for :meth:`stream_events`, which is quiet between orders: only
    venues that heartbeat this stream can set it."""

    # -- lifecycle -----------------------------------------------------------

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection and authenticate; return only once usable.

        Raises :class:`AuthenticationFailed` for bad credentials and
        :class:`TemporarilyUnavailable` when the venue cannot be reached.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release every connection. Idempotent; never raises for a dead connection."""

    # -- orders --------------------------------------------------------------

    @abc.abstractmethod
    async def place_order(self, request: OrderRequest) -> Order:
        """Send ``request`` and return the order as the venue acknowledged it.

        Venues that accept a client order id get ``request.client_order_id``,
        so submitting the same request twice creates one order. Raises
        :class:`OrderRejected` with the venue's reason, :class:`Unsupported`
        for an order type or attachment the venue lacks.
        """

    @abc.abstractmethod
    async def cancel_order(self, order: Order) -> Order:
        """Cancel a working order and return its new state.

        ``order`` is rick's last known state of it: it carries both the client
        order id and, once acknowledged, the venue's id (venues cancel by
        either). Raises :class:`NotFound` when the venue does not know it;
        cancelling an order that is already final returns it unchanged.
        """

    @abc.abstractmethod
    async def replace_order_protection(
        self,
        order: Order,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
    ) -> Order:
        """Change the stop loss / take profit attached to a working order.

        ``KEEP`` leaves one as it is, ``None`` removes it, a price sets it.
        """

    @abc.abstractmethod
    async def replace_position_protection(
        self,
        instrument: str,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
    ) -> Position:
        """Change the stop loss / take profit protecting the open position in ``instrument``.

        ``KEEP`` leaves one as it is, ``None`` removes it (for example, cancel
        the take profit to let a winner run), a price sets it. Raises
        :class:`NotFound` when there is no position.
        """

    @abc.abstractmethod
    async def open_orders(self, instrument: str | None = None) -> list[Order]:
        """Working orders, optionally of one instrument."""

    @abc.abstractmethod
    async def get_order(self, client_order_id: str) -> Order:
        """The venue's current state of the order with this client order id.

        The core calls it when a submit timed out or lost its connection, to
        learn whether the venue has the order, instead of sending it again.
        Raises :class:`NotFound` when the venue never received it.
        """

    @abc.abstractmethod
    async def fills(self, since: datetime) -> list[Fill]:
        """Executions of this account at or after ``since``, oldest first.

        The engine calls it on start to catch up on fills it missed while it
        was not running (reconciliation); the venue's fill ids deduplicate any
        overlap, so every fill must carry the same ``fill_id`` here as on
        :meth:`stream_events`. A venue that keeps a shorter history returns
        what it has. ``since`` is timezone-aware.
        """

    # -- account -------------------------------------------------------------

    @abc.abstractmethod
    async def positions(self) -> list[Position]:
        """Open (non-zero) positions."""

    @abc.abstractmethod
    async def account(self) -> Account:
        """Balance, equity and margin of the account."""

    @abc.abstractmethod
    async def instruments(self) -> list[Instrument]:
        """Instruments this account can trade, with their increments."""

    # -- market data and events ----------------------------------------------

    @abc.abstractmethod
    async def quote(self, instrument: str) -> Quote:
        """The current top of book of ``instrument``."""

    @abc.abstractmethod
    def stream_quotes(
        self, instruments: Sequence[str]
    ) -> AbstractAsyncContextManager[AsyncIterator[Quote | Heartbeat]]:
        """Subscribe to quotes; the context manager is entered once subscribed.

        Use as ``async with broker.stream_quotes(["EUR_USD"]) as quotes:
        async for quote in quotes: ...``. Leaving the block unsubscribes.
        The iterator ends (or raises :class:`Disconnected`) when the feed is
        lost; the caller decides whether to resubscribe.

        A venue message that does not make a valid :class:`Quote` (a one-sided
        or crossed book, a zero price) is dropped and counted by the plugin,
        never allowed to end the stream. A venue keep-alive is yielded as a
        :class:`Heartbeat`.

        The engine subscribes once per instrument for all its consumers (the
        union of what they want) and supervises the stream: a silence longer
        than :attr:`quote_silence`, an error or the end of the iterator makes
        it close the block and enter a new one, with backoff. So a plugin
        need not reconnect by itself.
        """

    @abc.abstractmethod
    def stream_events(
        self,
    ) -> AbstractAsyncContextManager[AsyncIterator[BrokerEvent | Heartbeat]]:
        """Order updates and fills of this account, as they happen, in venue order.

        May yield :class:`Heartbeat`. Supervised as :meth:`stream_quotes` is
        (see :attr:`event_silence`); after a new subscription the engine
        reconciles with :meth:`fills` and :meth:`open_orders`, so what the
        venue did while the stream was down is not lost.
        """


class BrokerFactory(Protocol):
    """Builds a :class:`Broker` from its setup. Must not do I/O: connect does that."""

    def __call__(self, setup: ComponentSetup) -> Broker: ...
