"""The strategy SDK: what a strategy author writes against.

A strategy subclasses :class:`Strategy` and overrides the ``on_*`` methods it
needs. The engine builds it from its ``[strategies.<name>]`` table, sets
:attr:`Strategy.ctx`, and calls the methods one at a time, never concurrently,
from the strategy's own task::

    from decimal import Decimal
    from attrs import frozen
    from rick_core.strategy import Strategy

    class Dip(Strategy):
        @frozen
        class Params:
            quantity: Decimal = Decimal(1000)
            below: Decimal = Decimal("1.08")

        async def on_quote(self, quote):
            if quote.ask < self.params.below and self.ctx.position(quote.instrument) is None:
                await self.ctx.buy(quote.instrument, self.params.quantity)

Register it from a plugin with ``register("dip", Dip)`` in ``register_strategies``.

Events arrive in order per kind: fills and order updates are never dropped and
are delivered before any quote waiting at the same time; quotes are
*conflated*: a strategy that falls behind sees the latest quote of each
instrument, not a backlog. An exception in a handler is logged with its
traceback and the strategy carries on; an exception in :meth:`Strategy.on_start`
stops that strategy (the others keep running).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Protocol

import attrs
from attrs import frozen

from rick_core.broker import KEEP, Keep
from rick_core.model import (
    Account,
    BestQuote,
    Fill,
    Instrument,
    Order,
    OrderRequest,
    Position,
    Quote,
    Side,
    TimeInForce,
)

__all__ = [
    "Strategy",
    "StrategyContext",
    "StrategyError",
    "StrategyFactory",
    "StrategySetup",
    "TradingHalted",
]


class StrategyError(ValueError):
    """A strategy cannot be built from its configuration (bad or unknown parameters)."""


class TradingHalted(RuntimeError):
    """The engine takes no new orders (it is stopping, or trading was halted)."""


@frozen
class StrategySetup:
    """Handed to a strategy factory: the strategy's ``[strategies.<name>]`` table.

    ``source`` says where it is configured (file and table), for error messages.
    """

    name: str
    broker: str
    instruments: tuple[str, ...]
    params: Mapping[str, Any] = attrs.field(factory=dict)
    source: str = ""


class StrategyContext(Protocol):
    """What a running strategy acts through. Provided by the engine.

    Prices and quantities are ``Decimal`` (an ``int`` or ``str`` is accepted and
    converted); orders go to the strategy's configured broker, are written to
    the store before they are sent, and carry the strategy's name.
    """

    @property
    def name(self) -> str:
        """The strategy's name in rick.toml."""

    @property
    def broker(self) -> str:
        """The name of the broker this strategy trades on."""

    @property
    def instruments(self) -> tuple[str, ...]:
        """The instruments configured for this strategy (subscribed before ``on_start``)."""

    @property
    def log(self) -> Any:
        """A structlog logger bound to the strategy's name."""

    def now(self) -> datetime:
        """The current time (UTC); the engine's clock, so simulated runs stay consistent."""

    async def buy(
        self,
        instrument: str,
        quantity: Decimal | int | str,
        *,
        limit: Decimal | int | str | None = None,
        stop: Decimal | int | str | None = None,
        trail_distance: Decimal | int | str | None = None,
        trail_percent: Decimal | int | str | None = None,
        if_touched: Decimal | int | str | None = None,
        stop_loss: Decimal | int | str | None = None,
        take_profit: Decimal | int | str | None = None,
        trailing_stop: Decimal | int | str | None = None,
        time_in_force: TimeInForce | str | None = None,
        expire_time: datetime | None = None,
        tag: str = "",
    ) -> Order:
        """Buy ``quantity``: a market order; a limit (``limit=``), stop (``stop=``) or
        stop-limit (both) order; a trailing stop (``trail_distance=`` a price
        distance, or ``trail_percent=``); or a market-if-touched order
        (``if_touched=`` its touch price: a buy rests below the market and fires
        a market order when the ask falls to it, a sell rests above and fires
        when the bid rises to it); optionally with an attached stop loss
        and take profit (prices), and an attached ``trailing_stop`` (a price
        distance: once filled, a stop trails the best price since the fill by
        it; the first of the three to trigger closes the position; not for a
        trailing stop order). An order type the broker lacks is held and fired by
        rick from the quotes where it can be (see ``rick_core.engine.emulation``).

        Returns the order as the broker acknowledged it; a refused order comes
        back with status ``rejected`` and its ``reject_reason`` (it is not
        raised). Raises :class:`TradingHalted` when the engine takes no new
        orders, and ``rick_core.model.ModelError`` for an impossible request
        (a stop loss above a buy limit, say).
        """

    async def sell(
        self,
        instrument: str,
        quantity: Decimal | int | str,
        *,
        limit: Decimal | int | str | None = None,
        stop: Decimal | int | str | None = None,
        trail_distance: Decimal | int | str | None = None,
        trail_percent: Decimal | int | str | None = None,
        if_touched: Decimal | int | str | None = None,
        stop_loss: Decimal | int | str | None = None,
        take_profit: Decimal | int | str | None = None,
        trailing_stop: Decimal | int | str | None = None,
        time_in_force: TimeInForce | str | None = None,
        expire_time: datetime | None = None,
        tag: str = "",
    ) -> Order:
        """Sell ``quantity``; see :meth:`buy`."""

    def request(
        self,
        side: Side | str,
        instrument: str,
        quantity: Decimal | int | str,
        *,
        limit: Decimal | int | str | None = None,
        stop: Decimal | int | str | None = None,
        trail_distance: Decimal | int | str | None = None,
        trail_percent: Decimal | int | str | None = None,
        if_touched: Decimal | int | str | None = None,
        stop_loss: Decimal | int | str | None = None,
        take_profit: Decimal | int | str | None = None,
        trailing_stop: Decimal | int | str | None = None,
        time_in_force: TimeInForce | str | None = None,
        expire_time: datetime | None = None,
        tag: str = "",
    ) -> OrderRequest:
        """Build (not send) an order request with the arguments of :meth:`buy`,
        for :meth:`place`, :meth:`oco`, :meth:`basket` and :meth:`split`."""

    async def place(self, request: OrderRequest) -> Order:
        """Send an order request built with :meth:`request`; see :meth:`buy`."""

    async def oco(self, first: OrderRequest, second: OrderRequest) -> tuple[Order, Order]:
        """Place two resting orders as one-cancels-other: the first to get a fill
        (or to end otherwise) cancels the other."""

    async def basket(self, requests: Sequence[OrderRequest]) -> list[Order | Exception]:
        """Send several orders together; one result per leg, in the order given:
        the order (possibly ``rejected``), or the error that kept it from the venue."""

    async def split(
        self, request: OrderRequest, max_quantity: Decimal | int | str
    ) -> list[Order | Exception]:
        """Send ``request`` as child orders of at most ``max_quantity`` each (in the
        instrument's size increments), one after another; stops at the first
        child the venue rejects. Each child has its own client order id and a
        tag naming the parent request."""

    async def target_position(self, instrument: str, quantity: Decimal | int | str) -> Order | None:
        """Make the position in ``instrument`` equal ``quantity`` (signed: negative is
        short) with one market order for the difference; None when it already is.
        Calls for the same instrument (from any strategy on this broker) run one
        at a time, each on the position the previous one left."""

    async def close_position(self, instrument: str) -> Order | None:
        """Flatten the position in ``instrument`` (a market order); None when flat."""

    async def close_all_positions(self) -> list[Order | Exception]:
        """Flatten every position at this strategy's broker."""

    async def cancel(self, order: Order | str) -> Order:
        """Cancel a working order (an :class:`Order` or its client order id)."""

    async def cancel_all(self, instrument: str | None = None) -> list[Order | BaseException]:
        """Cancel this strategy's working orders (of one instrument, or all): each
        order's new state, or the error that kept it from being canceled."""

    async def set_protection(
        self,
        instrument: str,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
    ) -> Position:
        """Change the stop loss / take profit of the open position in ``instrument``:
        a price sets it, ``None`` removes it, ``KEEP`` leaves it."""

    async def set_order_protection(
        self,
        order: Order | str,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
    ) -> Order:
        """Change the stop loss / take profit attached to a working order."""

    def position(self, instrument: str) -> Position | None:
        """The open position in ``instrument`` at this strategy's broker, or None when flat.

        Refreshed from the broker when an order call returns with a fill, and
        after every fill the broker reports, before the fill reaches the strategy.
        """

    def positions(self) -> Sequence[Position]:
        """Every open position at this strategy's broker."""

    def open_orders(self, instrument: str | None = None) -> Sequence[Order]:
        """This strategy's working orders, optionally of one instrument."""

    def last_quote(self, instrument: str) -> Quote | None:
        """The latest quote seen of ``instrument``, or None."""

    def quote_age(self, instrument: str) -> float | None:
        """Seconds since this broker's quote of ``instrument`` was last updated
        (None: never). Past ``[quotes] stale_after`` it is stale, and market
        orders wait for a fresh one."""

    def best_quote(self, instrument: str) -> BestQuote | None:
        """The best bid and ask of ``instrument`` across the running brokers
        that quote it freshly, with who quotes them (None: no fresh quote).
        Brokers quote it only while someone subscribes: :meth:`watch_best`."""

    async def watch_best(self, *instruments: str) -> None:
        """Keep ``instruments`` subscribed on every running broker that lists
        them, so :meth:`best_quote` compares them all; ``on_quote`` still gets
        only this strategy's broker."""

    def instrument(self, symbol: str) -> Instrument | None:
        """What the broker says about ``symbol`` (increments, minimum size), or None."""

    async def account(self) -> Account:
        """The broker account: balance, equity, margin."""

    async def subscribe(self, *instruments: str) -> None:
        """Receive quotes of more instruments (in canonical symbols)."""

    def schedule(self, every: float, name: str = "timer") -> None:
        """Call :meth:`Strategy.on_timer` with ``name`` every ``every`` seconds."""


class Strategy:
    """Base of every strategy. Override the ``on_*`` methods you need.

    A subclass may declare its parameters as a nested attrs class named
    ``Params``; the ``[strategies.<name>.params]`` table is then checked
    against it (unknown names and wrong types are refused, ints and strings
    are converted to ``Decimal`` where a field is annotated ``Decimal``) and
    the result is :attr:`params`. Without ``Params``, :attr:`params` is the
    table as written.
    """

    Params: ClassVar[type[Any] | None] = None

    ctx: StrategyContext
    """Set by the engine before :meth:`on_start`."""

    def __init__(self, setup: StrategySetup) -> None:
        self.name = setup.name
        self.setup = setup
        self.params: Any = _build_params(type(self), setup)

    async def on_start(self) -> None:
        """Called once, after the broker is connected and quotes are subscribed."""

    async def on_quote(self, quote: Quote) -> None:
        """A new quote of a subscribed instrument."""

    async def on_fill(self, fill: Fill) -> None:
        """An execution of one of this strategy's orders (or of a protective order
        the venue created for its position: a stop loss or take profit that fired)."""

    async def on_order(self, order: Order) -> None:
        """A new state of one of this strategy's orders."""

    async def on_timer(self, name: str) -> None:
        """A timer set with ``ctx.schedule`` fired."""

    async def on_stop(self) -> None:
        """Called once when the engine stops. New orders are refused by then;
        cancelling is still allowed."""


class StrategyFactory(Protocol):
    """Builds a :class:`Strategy` from its setup; usually the strategy class itself."""

    def __call__(self, setup: StrategySetup) -> Strategy: ...


def _build_params(cls: type[Strategy], setup: StrategySetup) -> Any:
    params_cls = cls.Params
    raw = dict(setup.params)
    if params_cls is None:
        return raw
    where = f"strategy {setup.name!r}" + (f" ({setup.source})" if setup.source else "")
    if not attrs.has(params_cls):
        raise TypeError(f"{cls.__name__}.Params must be an attrs class")
    hints = typing.get_type_hints(params_cls)
    fields = {f.name: f for f in attrs.fields(params_cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise StrategyError(
            f"{where}: unknown parameter(s) {', '.join(unknown)}; "
            f"{cls.__name__} takes: {', '.join(fields) or 'none'}"
        )
    values: dict[str, Any] = {}
    for name, value in raw.items():
        values[name] = _coerce(where, name, value, hints.get(name))
    try:
        return params_cls(**values)
    except (TypeError, ValueError) as exc:
        raise StrategyError(f"{where}: bad parameters: {exc}") from None


def _coerce(where: str, name: str, value: Any, hint: Any) -> Any:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) else ()
    wanted = [t for t in options if t is not type(None)] or [hint]
    if value is None and type(None) in options:
        return None
    if Decimal in wanted:
        if isinstance(value, bool | float):
            raise StrategyError(f"{where}: parameter {name} must be a number, got {value!r}")
        if isinstance(value, int | str):
            try:
                return Decimal(value)
            except ArithmeticError:
                raise StrategyError(
                    f"{where}: parameter {name} must be a number, got {value!r}"
                ) from None
        if isinstance(value, Decimal):
            return value
        raise StrategyError(f"{where}: parameter {name} must be a number, got {value!r}")
    if int in wanted and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, Decimal) and value == value.to_integral_value():
            return int(value)
        raise StrategyError(f"{where}: parameter {name} must be a whole number, got {value!r}")
    if float in wanted and isinstance(value, int | Decimal) and not isinstance(value, bool):
        return float(value)  # durations and ratios that are not money
    if bool in wanted and not isinstance(value, bool):
        raise StrategyError(f"{where}: parameter {name} must be true or false, got {value!r}")
    if str in wanted and not isinstance(value, str):
        raise StrategyError(f"{where}: parameter {name} must be a string, got {value!r}")
    if tuple in [typing.get_origin(t) or t for t in wanted] and isinstance(value, list):
        return tuple(value)
    return value


_UnionType = type(int | str)
