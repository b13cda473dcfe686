"""The matching and accounting core of rick's paper broker.

:class:`PaperAccount` is synchronous and deterministic: no I/O, no clock, no
randomness. The async ``PaperBroker`` feeds it quotes (:meth:`PaperAccount.on_quote`)
and order calls and forwards the events (:class:`~rick_core.model.Order` states and
:class:`~rick_core.model.Fill` executions) they return, in the order they happened.
Every method takes the time it happens at (``now``) or uses the quote's time, so
a replay of the same calls gives the same results, byte for byte.

The simulation in short
-----------------------
- Orders trade against the top of book of the latest quote of their instrument:
  buys at the ask, sells at the bid. A fill takes at most the quoted size on its
  side (``ask_size`` for buys, ``bid_size`` for sells; ``None`` is unlimited), and
  each quote's size is consumed once, by all of rick's orders together.
- Market orders, triggered stops and triggered market-if-touched orders pay
  ``slippage`` (a fraction of the price, rounded to the instrument's
  ``price_increment`` away from the trader); limit orders fill at the touch
  when it is at or better than their limit, without slippage.
- A stop order triggers when the touch reaches its ``stop_price`` (a buy's ask at
  or above it, a sell's bid at or below it) and then trades as a market order.
  A stop-limit order triggers the same way and then works as a limit order at
  its ``limit_price`` (filled on the triggering quote when that quote allows).
  A market-if-touched order is the mirror image of a stop: it triggers when the
  touch comes to its ``stop_price`` (its touch price) from the favourable side
  (a buy's ask at or below it, a sell's bid at or above it) and then trades as
  a market order, paying ``slippage`` like a triggered stop. Submitted with the
  market already there, it fills at once.
  Once triggered, an order stays triggered whatever the price does next.
- A trailing stop is native: it remembers the best touch since it was accepted
  (a sell's highest bid, a buy's lowest ask) and triggers, as a market order,
  when the touch comes back to ``best - trail_distance`` or
  ``best * (1 - trail_percent / 100)`` for a sell, ``best + trail_distance`` or
  ``best * (1 + trail_percent / 100)`` for a buy (see
  :meth:`PaperAccount.trailing_stop_price`). It never triggers on the quote it
  was accepted at.
- Positions are netted per instrument, with an average entry price. Realized P&L
  and fees are converted into the account currency at the mid of the latest
  quote of the conversion pair and booked into the balance.
- Every amount booked in the account currency (a fill's realized P&L, a fee) is
  rounded to the currency's minor unit (0.01 for common fiat, 1 for JPY,
  0.00000001 otherwise, half-even) when it is booked, so the balance always
  equals the starting balance plus the booked amounts exactly. Reported
  unrealized P&L and margin are rounded per position the same way.

Events
------
Every change to an order is reported as the order's new state, and every
execution as a :class:`~rick_core.model.Fill` followed by the order's new state.
A submitted order is first reported as accepted (status ``ACCEPTED``). Orders the
account creates itself (the ``.sl`` / ``.tp`` / ``.ts`` closes of position protection and
``margin_closeout`` orders) are born filled: they are reported as a fill and the
``FILLED`` order. A stop order reaching its stop price is not an event (its status
stays ``ACCEPTED`` until it fills). Fills at submission happen at ``now``; fills on a
quote at the quote's time (never before the order's ``created_at``).

Simplifications (documented, deliberate)
----------------------------------------
- ``DAY`` orders are treated like ``GTC``: the paper market has no trading day.
- Margin is checked once, when an order is submitted; working orders reserve no
  margin, and fills of resting orders are not checked again. The margin
  close-out catches an account that overreaches.
- Protective closes (stop loss, take profit) and margin close-outs ignore the
  quoted size: they close the whole position at the touch.
- A margin close-out closes every position but leaves working orders alone.
- Stop losses, take profits and trailing stops attached to an order become the
  position's protection at the order's first fill in its direction (they
  replace the whole earlier set). Changing the order's protection afterwards
  does not move the position's: use
  :meth:`PaperAccount.replace_position_protection` for that (stop loss and
  take profit only: it leaves a trailing stop as it is).
- An attached trailing stop (``trailing_stop``, a price distance) starts from
  the mark when it is set (a long's bid, a short's ask), follows each quote's
  mark when it is better (a long's highest bid, a short's lowest ask: the stop
  only ever moves in the position's favour) and closes the whole position
  (client order id ``<parent>.ts``, tag ``trailing_stop``, slipped like a stop
  loss) when the mark comes back to ``best - distance`` (a long) or
  ``best + distance`` (a short). A stop loss reached on the same quote wins;
  the trailing stop is checked before the take profit.
- A fill that needs a currency conversion nobody has quoted is skipped (the
  order keeps working); submission already refuses orders that cannot be valued.

History and durability
----------------------
The account keeps its latest fills (:meth:`PaperAccount.fills`: at most
10,000, none more than 30 days older than the newest) and its latest final
orders, and both are part of :meth:`PaperAccount.snapshot`. For crash
durability the account can also report every change as it happens
(:meth:`PaperAccount.track_changes`, :meth:`PaperAccount.take_changes`): a
record of the *new* state of everything an operation touched (orders with
their trigger and trailing state, fills, positions, balance, counters), so
that replaying records over a snapshot (:meth:`PaperAccount.apply_changes`)
is a plain overwrite. Quotes are not recorded: they are the market's, and a
restarted market brings its own.
"""

from __future__ import annotations

import functools
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from decimal import (
    ROUND_CEILING,
    ROUND_FLOOR,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)
from types import MappingProxyType
from typing import Any, Final, NoReturn, ParamSpec, TypeVar

import attrs
from attrs import define, field, frozen

from rick_core.broker import KEEP, Keep, NotFound, OrderRejected
from rick_core.model import (
    Account,
    AssetClass,
    Fill,
    Instrument,
    ModelError,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Quote,
    Side,
    TimeInForce,
    from_jsonable,
    new_client_order_id,
    to_jsonable,
    to_utc,
)

__all__ = ["PaperAccount", "PaperSettings"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

# Every public method computes in this context, whatever the caller's: 34 digits
# (decimal128) keep average prices and conversions far beyond any minor unit, and
# the traps turn a silent NaN into an error.
_CONTEXT: Final = Context(
    prec=34, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow]
)

_ZERO: Final = Decimal(0)
_ONE: Final = Decimal(1)

_CENT_CURRENCIES: Final = frozenset(
    {"USD", "EUR", "GBP", "CHF", "CAD", "AUD", "NZD", "SEK", "NOK", "DKK", "SGD", "HKD"}
)
_WHOLE_CURRENCIES: Final = frozenset({"JPY"})

_FINAL_HISTORY: Final = 10_000
"""Final orders remembered (and snapshotted) for ``get_order`` and idempotent retries."""

_FILL_HISTORY: Final = 10_000
"""Fills remembered (and snapshotted) for :meth:`PaperAccount.fills`."""

_FILL_HISTORY_AGE: Final = timedelta(days=30)
"""Fills older than this before the newest one are forgotten."""

_SNAPSHOT_VERSION: Final = 2
_READABLE_VERSIONS: Final = frozenset({1, 2})  # 1: before fills and trailing stops were kept


def _exact(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` in the paper market's decimal context."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with localcontext(_CONTEXT):
            return fn(*args, **kwargs)

    return wrapper


def minor_unit(currency: str) -> Decimal:
    """The smallest booked amount of ``currency``: 0.01 for common fiat, 1 for JPY,
    0.00000001 for anything else (crypto)."""
    if currency in _CENT_CURRENCIES:
        return Decimal("0.01")
    if currency in _WHOLE_CURRENCIES:
        return _ONE
    return Decimal("0.00000001")


# ---------------------------------------------------------------------------
# settings


def _default_leverage() -> Mapping[AssetClass, Decimal]:
    return {
        AssetClass.FX: Decimal(50),
        AssetClass.CRYPTO: Decimal(2),
        AssetClass.EQUITY: Decimal(4),
    }


def _default_fees() -> Mapping[AssetClass, Decimal]:
    return {
        AssetClass.FX: _ZERO,
        AssetClass.CRYPTO: Decimal("0.004"),
        AssetClass.EQUITY: Decimal("0.0005"),
    }


def _decimal(value: object, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise ValueError(
            f"paper settings: {what} must be a Decimal (or an int or a numeric string), got "
            f"{type(value).__name__} {value!r}; floats are refused: use Decimal('{value}')"
        )
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"paper settings: {what} {value!r} is not a number") from None
    if not result.is_finite():
        raise ValueError(f"paper settings: {what} must be a finite number, got {value!r}")
    return result


def _class_rates(value: Mapping[AssetClass | str, Any]) -> Mapping[AssetClass, Decimal]:
    result: dict[AssetClass, Decimal] = {}
    for key, rate in value.items():
        try:
            asset_class: AssetClass = AssetClass.parse(key, what="asset class")
        except ModelError as e:
            raise ValueError(f"paper settings: {e}") from None
        result[asset_class] = _decimal(rate, f"the rate for {asset_class.value}")
    return MappingProxyType(result)


def _symbol_rates(value: Mapping[str, Any]) -> Mapping[str, Decimal]:
    return MappingProxyType({str(k): _decimal(v, f"the fee of {k}") for k, v in value.items()})


def _setting_decimal(value: Any) -> Decimal:
    return _decimal(value, "value")


@frozen
class PaperSettings:
    """How the paper market and account behave.

    ``leverage`` and ``fees`` are per asset class (a class missing from
    ``leverage`` trades at 1:1, one missing from ``fees`` trades free);
    ``instrument_fees`` overrides the fee rate per symbol. Fees are fractions of
    the notional (0.0005 is 5 basis points). ``slippage`` is a fraction of the
    price that market orders, triggered stops and market-if-touched orders, and
    stop-loss closes pay. When the equity falls below ``maintenance_ratio``
    times the margin used, every position is closed.
    """

    currency: str = "USD"
    balance: Decimal = field(default=Decimal(100000), converter=_setting_decimal)
    leverage: Mapping[AssetClass, Decimal] = field(
        factory=_default_leverage, converter=_class_rates
    )
    fees: Mapping[AssetClass, Decimal] = field(factory=_default_fees, converter=_class_rates)
    instrument_fees: Mapping[str, Decimal] = field(factory=dict, converter=_symbol_rates)
    slippage: Decimal = field(default=_ZERO, converter=_setting_decimal)
    maintenance_ratio: Decimal = field(default=Decimal("0.5"), converter=_setting_decimal)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.currency, str) or not self.currency.isalnum():
            raise ValueError(
                f"paper settings: currency must be a currency code such as 'USD', "
                f"got {self.currency!r}"
            )
        if self.currency != self.currency.upper():
            raise ValueError(
                f"paper settings: currency {self.currency!r} must be upper case: "
                f"use {self.currency.upper()!r}"
            )
        if self.balance < 0:
            raise ValueError(f"paper settings: balance must not be negative, got {self.balance}")
        for asset_class, leverage in self.leverage.items():
            if leverage < 1:
                raise ValueError(
                    f"paper settings: leverage for {asset_class.value} must be at least 1 "
                    f"(1 means no leverage), got {leverage}"
                )
        for asset_class, fee in self.fees.items():
            if fee < 0:
                raise ValueError(
                    f"paper settings: fee for {asset_class.value} must not be negative, got {fee}"
                )
        for symbol, fee in self.instrument_fees.items():
            if fee < 0:
                raise ValueError(
                    f"paper settings: fee for {symbol} must not be negative, got {fee}"
                )
        if not 0 <= self.slippage < 1:
            raise ValueError(
                f"paper settings: slippage is a fraction of the price, at least 0 and below 1 "
                f"(0.0001 is one basis point), got {self.slippage}"
            )
        if not 0 < self.maintenance_ratio <= 1:
            raise ValueError(
                f"paper settings: maintenance_ratio must be above 0 and at most 1, "
                f"got {self.maintenance_ratio}"
            )

    def leverage_for(self, asset_class: AssetClass) -> Decimal:
        """The leverage of ``asset_class`` (1 when not configured)."""
        return self.leverage.get(asset_class, _ONE)

    def fee_rate(self, instrument: Instrument) -> Decimal:
        """The fee rate of ``instrument``: its override, else its asset class's, else 0."""
        rate = self.instrument_fees.get(instrument.symbol)
        if rate is not None:
            return rate
        return self.fees.get(instrument.asset_class, _ZERO)


# ---------------------------------------------------------------------------
# internal state


@define
class _Holding:
    """A net position as the account books it (mutable; published as :class:`Position`)."""

    quantity: Decimal
    average_price: Decimal
    opened_by: str  # client order id of the fill that opened it
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    protection_by: str | None = None  # client order id of the order that set the protection
    trailing_stop: Decimal | None = None  # an attached trailing stop's distance
    trail_best: Decimal | None = None  # its best mark since it was set

    def to_jsonable(self, instrument: str) -> dict[str, Any]:
        return {
            "instrument": instrument,
            "quantity": str(self.quantity),
            "average_price": str(self.average_price),
            "opened_by": self.opened_by,
            "stop_loss": None if self.stop_loss is None else str(self.stop_loss),
            "take_profit": None if self.take_profit is None else str(self.take_profit),
            "protection_by": self.protection_by,
            "trailing_stop": None if self.trailing_stop is None else str(self.trailing_stop),
            "trail_best": None if self.trail_best is None else str(self.trail_best),
        }

    def to_json(self, instrument: str) -> str:
        """:meth:`to_jsonable` as compact JSON text."""
        return (
            f'{{"instrument":"{instrument}","quantity":"{self.quantity!s}",'
            f'"average_price":"{self.average_price!s}","opened_by":{_escape(self.opened_by)},'
            f'"stop_loss":{_jnum(self.stop_loss)},"take_profit":{_jnum(self.take_profit)},'
            f'"protection_by":{_jtext(self.protection_by)},'
            f'"trailing_stop":{_jnum(self.trailing_stop)},"trail_best":{_jnum(self.trail_best)}}}'
        )

    @classmethod
    def from_jsonable(cls, data: Mapping[str, Any]) -> _Holding:
        def optional(value: str | None) -> Decimal | None:
            return None if value is None else Decimal(value)

        return cls(
            quantity=Decimal(data["quantity"]),
            average_price=Decimal(data["average_price"]),
            opened_by=data["opened_by"],
            stop_loss=optional(data["stop_loss"]),
            take_profit=optional(data["take_profit"]),
            protection_by=data["protection_by"],
            # Absent from records written before attached trailing stops existed.
            trailing_stop=optional(data.get("trailing_stop")),
            trail_best=optional(data.get("trail_best")),
        )


def _sign(value: Decimal) -> int:
    return (value > 0) - (value < 0)


def _signed(side: Side, quantity: Decimal) -> Decimal:
    return quantity if side is Side.BUY else -quantity


def _opposite(side: Side) -> Side:
    return Side.SELL if side is Side.BUY else Side.BUY


def _stop_reached(request: OrderRequest, touch: Decimal) -> bool:
    """Whether ``touch`` reached the stop price of a stop or stop-limit ``request``."""
    stop = request.stop_price
    assert stop is not None  # the model requires it
    return touch >= stop if request.side is Side.BUY else touch <= stop


def _touched(request: OrderRequest, touch: Decimal) -> bool:
    """Whether ``touch`` came to the touch price (``stop_price``) of a market-if-touched
    ``request`` from the favourable side: a buy's ask at or below it, a sell's bid at or
    above it (the opposite direction of :func:`_stop_reached`)."""
    price = request.stop_price
    assert price is not None  # the model requires it
    return touch <= price if request.side is Side.BUY else touch >= price


def _within_limit(request: OrderRequest, touch: Decimal) -> bool:
    """Whether ``touch`` is at or better than the limit of a limit or stop-limit ``request``."""
    limit = request.limit_price
    assert limit is not None  # the model requires it
    return touch <= limit if request.side is Side.BUY else touch >= limit


# ---------------------------------------------------------------------------
# JSON text of orders, fills and positions: exactly ``json.dumps(to_jsonable(x),
# separators=(",", ":"))``, built directly (the change journal writes an order and
# a fill on every round trip, and the generic path costs several times more).
# Symbols, the request's client order id, enum values, Decimals and ISO times
# need no escaping (the model validates their characters); free text is escaped.

_escape: Final[Callable[[str], str]] = json.encoder.encode_basestring_ascii


def _jtext(value: str | None) -> str:
    return "null" if value is None else _escape(value)


def _jnum(value: Decimal | None) -> str:
    return "null" if value is None else f'"{value!s}"'


_last_time: tuple[datetime | None, str] = (None, "")
"""The latest datetime written and its text (one tuple: replaced in one step): an
order's times and its fill's are usually one object, the moment of the operation."""


def _iso(value: datetime) -> str:
    global _last_time
    last = _last_time
    if value is last[0]:
        return last[1]
    text = value.isoformat()
    _last_time = (value, text)
    return text


_names: dict[str, str] = {}
"""Escaped text of the few names repeated in every record (broker, currency)."""


def _name(value: str) -> str:
    text = _names.get(value)
    if text is None:
        text = _escape(value)
        if len(_names) < 1000:
            _names[value] = text
    return text


def _jtime(value: datetime | None) -> str:
    return "null" if value is None else f'"{_iso(value)}"'


def request_json(request: OrderRequest) -> str:
    """``request`` as compact JSON text, the same as its :func:`to_jsonable` dumped."""
    r = request
    return (
        f'{{"instrument":"{r.instrument}","side":"{r.side.value}","quantity":"{r.quantity!s}",'
        f'"type":"{r.type.value}","limit_price":{_jnum(r.limit_price)},'
        f'"stop_price":{_jnum(r.stop_price)},"time_in_force":"{r.time_in_force.value}",'
        f'"expire_time":{_jtime(r.expire_time)},"stop_loss":{_jnum(r.stop_loss)},'
        f'"take_profit":{_jnum(r.take_profit)},"client_order_id":"{r.client_order_id}",'
        f'"tag":{_escape(r.tag)},"trail_distance":{_jnum(r.trail_distance)},'
        f'"trail_percent":{_jnum(r.trail_percent)},"trailing_stop":{_jnum(r.trailing_stop)}}}'
    )


def order_json(order: Order) -> str:
    """``order`` as compact JSON text, the same as its :func:`to_jsonable` dumped."""
    o = order
    return (
        f'{{"request":{request_json(o.request)},"broker":{_name(o.broker)},'
        f'"status":"{o.status.value}","venue_order_id":{_jtext(o.venue_order_id)},'
        f'"filled_quantity":"{o.filled_quantity!s}",'
        f'"average_fill_price":{_jnum(o.average_fill_price)},'
        f'"created_at":"{_iso(o.created_at)}","updated_at":"{_iso(o.updated_at)}",'
        f'"reject_reason":{_jtext(o.reject_reason)}}}'
    )


def fill_json(fill: Fill) -> str:
    """``fill`` as compact JSON text, the same as its :func:`to_jsonable` dumped."""
    f = fill
    return (
        f'{{"fill_id":{_escape(f.fill_id)},"client_order_id":{_escape(f.client_order_id)},'
        f'"instrument":"{f.instrument}","side":"{f.side.value}","quantity":"{f.quantity!s}",'
        f'"price":"{f.price!s}","time":"{_iso(f.time)}","broker":{_name(f.broker)},'
        f'"fee":"{f.fee!s}","fee_currency":{_name(f.fee_currency)},'
        f'"venue_order_id":{_jtext(f.venue_order_id)}}}'
    )


def _fill_time(fill: Fill) -> datetime:
    return fill.time


class _Changes:
    """What changed since the last :meth:`PaperAccount.take_changes`."""

    __slots__ = ("any", "fills", "orders", "symbols")

    def __init__(self) -> None:
        self.any = False
        self.orders: dict[str, None] = {}  # client order ids, in the order last touched
        self.fills: list[Fill] = []
        self.symbols: set[str] = set()  # positions

    def clear(self) -> None:
        self.any = False
        self.orders.clear()
        self.fills.clear()
        self.symbols.clear()


# ---------------------------------------------------------------------------
# the account


class PaperAccount:
    """A simulated market and account: matches orders against quotes and books fills.

    See the module documentation for the rules. All methods are synchronous and
    deterministic; events come back from the call that caused them.
    """

    @_exact
    def __init__(
        self,
        broker: str,
        settings: PaperSettings,
        instruments: Iterable[Instrument],
        *,
        id_factory: Callable[[], str] = new_client_order_id,
    ) -> None:
        if not isinstance(broker, str) or not broker.strip():
            raise ValueError(f"broker must be a non-empty name, got {broker!r}")
        self.broker: Final = broker
        self.settings: Final = settings
        self._id_factory = id_factory
        self._instruments: dict[str, Instrument] = {}
        for instrument in instruments:
            if instrument.symbol in self._instruments:
                raise ValueError(f"instrument {instrument.symbol} is listed twice")
            self._instruments[instrument.symbol] = instrument
        self._unit = minor_unit(settings.currency)
        self._balance = self._money(settings.balance)
        self._realized = _ZERO.quantize(self._unit)
        self._fees = _ZERO.quantize(self._unit)
        self._positions: dict[str, _Holding] = {}
        self._working: dict[str, Order] = {}  # insertion order is submission order
        self._final: dict[str, Order] = {}  # oldest first, bounded by _FINAL_HISTORY
        self._triggered: set[str] = set()  # stop / if-touched orders whose trigger was reached
        self._protection_applied: set[str] = set()  # working orders that set protection
        self._trail: dict[str, Decimal] = {}  # trailing stops: the best touch since accepted
        self._fills: deque[Fill] = deque(maxlen=_FILL_HISTORY)  # oldest first
        self._changes: _Changes | None = None  # set by track_changes()
        self._quotes: dict[str, Quote] = {}
        # Size of the latest quote already taken by rick's orders: [bid side, ask side].
        self._consumed: dict[str, list[Decimal]] = {}
        self._fill_seq = 0
        self._order_seq = 0

    # -- read-only state -----------------------------------------------------

    @property
    def realized_pnl(self) -> Decimal:
        """Realized P&L in the account currency, before fees."""
        return self._realized

    @property
    def fees_paid(self) -> Decimal:
        """Fees paid, in the account currency."""
        return self._fees

    def last_quote(self, instrument: str) -> Quote | None:
        """The latest quote of ``instrument``, or None when none arrived yet."""
        return self._quotes.get(instrument)

    def get_order(self, client_order_id: str) -> Order:
        """The current state of an order; :class:`NotFound` if this account never had it."""
        order = self._working.get(client_order_id) or self._final.get(client_order_id)
        if order is None:
            raise NotFound(
                f"no paper order {client_order_id!r}: check the id (orders are kept across "
                "restarts only when the account was restored from a snapshot)",
                broker=self.broker,
            )
        return order

    def open_orders(self, instrument: str | None = None) -> list[Order]:
        """Working orders, in submission order, optionally of one instrument."""
        return [o for o in self._working.values() if instrument in (None, o.instrument)]

    def fills(self, since: datetime) -> list[Fill]:
        """The remembered fills at or after ``since`` (timezone-aware), oldest first.

        The history holds the latest 10,000 fills, none more than 30 days older
        than the newest; it is kept across restarts with the snapshot.
        """
        since = to_utc(since)
        found = [fill for fill in self._fills if fill.time >= since]
        found.sort(key=_fill_time)  # stable: fills of one moment stay in execution order
        return found

    @_exact
    def trailing_stop_price(self, client_order_id: str) -> Decimal | None:
        """Where the working trailing stop ``client_order_id`` triggers now (its best
        touch so far, less or plus the trail), or None for any other order."""
        order = self._working.get(client_order_id)
        best = self._trail.get(client_order_id)
        if order is None or best is None:
            return None
        return self._trail_trigger(order.request, best)

    def last_activity(self) -> datetime | None:
        """The latest time this account saw: of an order's change, a fill or a quote."""
        times = [order.updated_at for order in self._working.values()]
        times += [order.updated_at for order in self._final.values()]
        times += [fill.time for fill in self._fills]
        times += [quote.time for quote in self._quotes.values()]
        return max(times, default=None)

    @_exact
    def positions(self) -> list[Position]:
        """Open positions sorted by symbol, with unrealized P&L in the account currency
        (longs marked at the bid, shorts at the ask) and their protection."""
        return [
            Position(
                instrument=symbol,
                quantity=holding.quantity,
                average_price=holding.average_price,
                broker=self.broker,
                unrealized_pnl=self._unrealized(symbol, holding),
                stop_loss=holding.stop_loss,
                take_profit=holding.take_profit,
            )
            for symbol, holding in sorted(self._positions.items())
        ]

    @_exact
    def account(self, now: datetime) -> Account:
        """Balance, equity and margin in the account currency, at the latest quotes."""
        unrealized, margin = self._valuation()
        equity = self._balance + unrealized
        return Account(
            broker=self.broker,
            currency=self.settings.currency,
            balance=self._balance,
            equity=equity,
            margin_used=margin,
            margin_available=equity - margin,
            time=to_utc(now),
        )

    # -- market data ---------------------------------------------------------

    @_exact
    def on_quote(self, quote: Quote) -> list[Order | Fill]:
        """Take a new quote: expire due orders, match working orders of its instrument,
        fire position protection, then close everything out if margin is short.

        Quotes of instruments the market does not trade are kept as conversion rates.
        Returns the events in the order they happened.
        """
        events: list[Order | Fill] = []
        symbol = quote.instrument
        self._quotes[symbol] = quote
        self._consumed[symbol] = [_ZERO, _ZERO]
        self._expire(quote.time, events)
        fresh: set[str] = set()  # protection set by this quote's fills waits for the next
        if symbol in self._instruments:
            for client_order_id in list(self._working):
                order = self._working.get(client_order_id)
                if order is None or order.instrument != symbol:
                    continue
                self._match(order, quote, quote.time, events, fresh)
            if symbol not in fresh:
                self._protect(symbol, quote, events)
        self._check_margin(events)
        return events

    # -- orders --------------------------------------------------------------

    @_exact
    def submit(self, request: OrderRequest, now: datetime) -> tuple[Order, list[Order | Fill]]:
        """Accept ``request`` and fill what the current quote allows.

        Returns the order's state after submission and the events it produced: its
        acceptance (status ACCEPTED), then a fill and the order's new state per
        execution, then its cancellation when an IOC order could not fill in full.
        A client order id seen before returns that order unchanged and no events.
        Raises :class:`OrderRejected` (nothing is booked) for an order the paper
        market refuses.
        """
        now = to_utc(now)
        existing = self._working.get(request.client_order_id) or self._final.get(
            request.client_order_id
        )
        if existing is not None:
            return existing, []
        instrument = self._instrument(request.instrument)
        self._check_increments(instrument, request)
        if request.expire_time is not None and request.expire_time <= now:
            self._reject(
                f"expire_time {request.expire_time.isoformat()} is not after the submission "
                f"time {now.isoformat()}: give a later expire_time"
            )
        quote = self._quotes.get(instrument.symbol)
        if quote is None:
            self._reject(
                f"no market for {instrument.symbol} yet: the paper market needs a quote of it "
                "before it can take orders"
            )
        rate = self._require_rate(instrument.quote_currency)
        if request.type is OrderType.TRAILING_STOP:
            self._check_trail(instrument, request, quote)
        if (
            request.trailing_stop is not None
            and request.side is Side.BUY
            and request.trailing_stop >= quote.bid
        ):
            self._reject(
                f"trailing_stop {request.trailing_stop} of a buy must be below the bid "
                f"{quote.bid} of {instrument.symbol}: the stop could never trigger"
            )
        if request.type is OrderType.MARKET or request.type is OrderType.TRAILING_STOP:
            # Both trade at the market: protection the market is through would fire at once.
            self._check_protection_sides(
                request.side,
                request.stop_loss,
                request.take_profit,
                quote,
                "the order's",
            )
        if request.time_in_force is TimeInForce.FOK:
            available = self._fillable_now(instrument, request, quote)
            if available < request.quantity:
                self._reject(
                    f"fill or kill: only {available} available for {request.quantity} "
                    f"{instrument.symbol} at submission"
                )
        self._check_margin_for(instrument, request, quote, rate)

        self._order_seq += 1
        order = Order(
            request=request,
            broker=self.broker,
            status=OrderStatus.ACCEPTED,
            venue_order_id=f"P{self._order_seq}",
            created_at=now,
            updated_at=now,
        )
        self._store(order)
        events: list[Order | Fill] = [order]
        fresh: set[str] = set()
        order = self._match(order, quote, now, events, fresh)
        if (
            request.time_in_force in (TimeInForce.IOC, TimeInForce.FOK)
            and not order.status.is_final
        ):
            order = self._update(order, now, events, status=OrderStatus.CANCELED)
        return order, events

    @_exact
    def cancel(self, client_order_id: str, now: datetime) -> tuple[Order, list[Order | Fill]]:
        """Cancel a working order; a final order comes back unchanged with no events.

        Raises :class:`NotFound` for an id this account does not know.
        """
        order = self.get_order(client_order_id)
        if order.status.is_final:
            return order, []
        events: list[Order | Fill] = []
        order = self._update(order, to_utc(now), events, status=OrderStatus.CANCELED)
        return order, events

    @_exact
    def replace_order_protection(
        self,
        client_order_id: str,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
        now: datetime,
    ) -> tuple[Order, list[Order | Fill]]:
        """Change the stop loss / take profit attached to a working order.

        A price sets one, ``None`` removes it, ``KEEP`` leaves it. The returned
        order carries a new request (same client order id) with the new prices.
        Protection already passed to the position at the order's first fill stays
        as it is. Raises :class:`NotFound` for an unknown or final order and
        :class:`OrderRejected` for prices on the wrong side or off the increment.
        """
        order = self._working.get(client_order_id)
        if order is None:
            final = self.get_order(client_order_id)  # raises NotFound for an unknown id
            raise NotFound(
                f"order {client_order_id} is {final.status.value}: only a working order's "
                "protection can change; for an open position use replace_position_protection",
                broker=self.broker,
            )
        request = order.request
        new_stop = self._resolve(stop_loss, request.stop_loss)
        new_take = self._resolve(take_profit, request.take_profit)
        if new_stop == request.stop_loss and new_take == request.take_profit:
            return order, []
        instrument = self._instruments[request.instrument]
        self._check_price(instrument, "stop_loss", new_stop)
        self._check_price(instrument, "take_profit", new_take)
        try:
            new_request = attrs.evolve(request, stop_loss=new_stop, take_profit=new_take)
        except ModelError as e:
            self._reject(str(e))
        events: list[Order | Fill] = []
        order = self._update(order, to_utc(now), events, request=new_request)
        return order, events

    @_exact
    def replace_position_protection(
        self,
        instrument: str,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
        now: datetime,
    ) -> Position:
        """Change the stop loss / take profit of the position in ``instrument``.

        A price sets one, ``None`` removes it, ``KEEP`` leaves it. An attached
        trailing stop the position has is left as it is (its distance and its
        best mark so far). A level the
        current market is already through (a long's stop loss at or above the bid,
        its take profit at or below the bid; shorts mirrored at the ask) is refused
        with :class:`OrderRejected`: close the position with an order instead.
        Raises :class:`NotFound` when there is no position.
        """
        holding = self._positions.get(instrument)
        if holding is None:
            raise NotFound(
                f"no open paper position in {instrument}: nothing to protect",
                broker=self.broker,
            )
        new_stop = self._resolve(stop_loss, holding.stop_loss)
        new_take = self._resolve(take_profit, holding.take_profit)
        spec = self._instruments[instrument]
        self._check_price(spec, "stop_loss", new_stop)
        self._check_price(spec, "take_profit", new_take)
        side = Side.BUY if holding.quantity > 0 else Side.SELL
        quote = self._quotes[instrument]
        self._check_protection_sides(side, new_stop, new_take, quote, "the position's")
        holding.stop_loss = new_stop
        holding.take_profit = new_take
        changes = self._changes
        if changes is not None:
            changes.symbols.add(instrument)
            changes.any = True
        return next(p for p in self.positions() if p.instrument == instrument)

    # -- snapshot ------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The account's state as JSON types (Decimals as strings), for :meth:`restore`.

        Holds the balance and totals, positions with their protection, working
        orders with their trigger and trailing state, the latest final orders (so
        a retried submit stays idempotent across a restart), the fill history,
        the latest quotes with their consumed size, and the sequence counters.
        """
        return {
            "version": _SNAPSHOT_VERSION,
            "currency": self.settings.currency,
            "balance": str(self._balance),
            "realized_pnl": str(self._realized),
            "fees_paid": str(self._fees),
            "fill_seq": self._fill_seq,
            "order_seq": self._order_seq,
            "positions": [h.to_jsonable(s) for s, h in sorted(self._positions.items())],
            "working_orders": [to_jsonable(o) for o in self._working.values()],
            "final_orders": [to_jsonable(o) for o in self._final.values()],
            "triggered": sorted(self._triggered),
            "protection_applied": sorted(self._protection_applied),
            "trailing": {c: str(best) for c, best in sorted(self._trail.items())},
            "fills": [to_jsonable(f) for f in self._fills],
            "quotes": [to_jsonable(q) for _, q in sorted(self._quotes.items())],
            "consumed": {s: [str(v) for v in c] for s, c in sorted(self._consumed.items())},
        }

    @classmethod
    @_exact
    def restore(
        cls,
        broker: str,
        settings: PaperSettings,
        instruments: Iterable[Instrument],
        data: Mapping[str, Any],
        *,
        id_factory: Callable[[], str] = new_client_order_id,
    ) -> PaperAccount:
        """A paper account in the state :meth:`snapshot` saved.

        The settings' starting balance is ignored (the saved balance wins); the
        currency must match. Raises ``ValueError`` for a snapshot this account
        cannot continue from.
        """
        if data.get("version") not in _READABLE_VERSIONS:
            raise ValueError(
                f"paper snapshot version {data.get('version')!r} is not supported "
                f"(expected {_SNAPSHOT_VERSION}): start a fresh paper account"
            )
        if data.get("currency") != settings.currency:
            raise ValueError(
                f"paper snapshot is in {data.get('currency')} but the settings say "
                f"{settings.currency}: set the paper currency back to {data.get('currency')} "
                "or start a fresh paper account"
            )
        account = cls(broker, settings, instruments, id_factory=id_factory)
        try:
            account._load(data)
        except (ModelError, ArithmeticError, KeyError, TypeError, AttributeError) as e:
            # ArithmeticError: decimal.InvalidOperation for a damaged number.
            detail = f"missing {e}" if isinstance(e, KeyError) else str(e) or type(e).__name__
            raise ValueError(
                f"paper snapshot is damaged ({detail}): restore a good copy or start a fresh "
                "paper account"
            ) from None
        return account

    def _load(self, data: Mapping[str, Any]) -> None:
        """Fill a fresh account from snapshot ``data`` (see :meth:`restore`)."""
        self._balance = Decimal(data["balance"])
        self._realized = Decimal(data["realized_pnl"])
        self._fees = Decimal(data["fees_paid"])
        self._fill_seq = int(data["fill_seq"])
        self._order_seq = int(data["order_seq"])
        for item in data["positions"]:
            self._instrument_for_restore(item["instrument"], "a position")
            self._positions[item["instrument"]] = _Holding.from_jsonable(item)
        for item in data["working_orders"]:
            order = from_jsonable(Order, item)
            self._instrument_for_restore(order.instrument, "a working order")
            self._working[order.client_order_id] = order
        for item in data["final_orders"]:
            order = from_jsonable(Order, item)
            self._final[order.client_order_id] = order
        for item in data["quotes"]:
            quote = from_jsonable(Quote, item)
            self._quotes[quote.instrument] = quote
        self._triggered = set(data["triggered"])
        self._protection_applied = set(data["protection_applied"])
        self._consumed = {s: [Decimal(v) for v in c] for s, c in data["consumed"].items()}
        if data["version"] >= 2:  # version 1 kept no fills and had no trailing stops
            self._trail = {c: Decimal(best) for c, best in data["trailing"].items()}
            for item in data["fills"]:
                self._remember(from_jsonable(Fill, item))

    # -- changes (the broker's crash journal) --------------------------------

    def track_changes(self) -> None:
        """Start noting every change, for :meth:`take_changes`."""
        if self._changes is None:
            self._changes = _Changes()

    @property
    def has_changes(self) -> bool:
        """Whether something changed since the last :meth:`take_changes`."""
        changes = self._changes
        return changes is not None and changes.any

    def take_changes(self) -> str | None:
        """The new state of everything changed since the last call, as one line of
        compact JSON (None: nothing changed, or changes are not tracked), for
        :meth:`apply_changes`.

        A record holds each touched order's current state (``orders``, with its
        trigger and trailing state), the new ``fills``, each touched position
        (``positions``, null when flat), and the balance, totals and counters:
        applying it is an overwrite.
        """
        changes = self._changes
        if changes is None or not changes.any:
            return None
        orders = []
        triggered, applied, trail = self._triggered, self._protection_applied, self._trail
        for client_order_id in changes.orders:
            order = self._working.get(client_order_id) or self._final.get(client_order_id)
            if order is None:
                continue  # a final order already pushed out of the history
            orders.append(
                f'{{"order":{order_json(order)},'
                f'"triggered":{"true" if client_order_id in triggered else "false"},'
                f'"protection_applied":{"true" if client_order_id in applied else "false"},'
                f'"trail":{_jnum(trail.get(client_order_id))}}}'
            )
        positions = []
        for symbol in sorted(changes.symbols):
            holding = self._positions.get(symbol)
            positions.append(f'"{symbol}":{"null" if holding is None else holding.to_json(symbol)}')
        record = (
            f'{{"orders":[{",".join(orders)}],'
            f'"fills":[{",".join([fill_json(fill) for fill in changes.fills])}],'
            f'"positions":{{{",".join(positions)}}},'
            f'"balance":"{self._balance!s}","realized_pnl":"{self._realized!s}",'
            f'"fees_paid":"{self._fees!s}","fill_seq":{self._fill_seq},'
            f'"order_seq":{self._order_seq}}}'
        )
        changes.clear()
        return record

    @_exact
    def apply_changes(self, record: Mapping[str, Any]) -> None:
        """Overwrite this account with a record of :meth:`take_changes` (replaying a
        journal over the snapshot it continues). Raises ``ValueError`` for a record
        that cannot be applied."""
        try:
            self._apply(record)
        except (ModelError, ArithmeticError, KeyError, TypeError, AttributeError) as e:
            detail = f"missing {e}" if isinstance(e, KeyError) else str(e) or type(e).__name__
            raise ValueError(f"damaged change record ({detail})") from None

    def _apply(self, record: Mapping[str, Any]) -> None:
        for entry in record["orders"]:
            order = from_jsonable(Order, entry["order"])
            client_order_id = order.client_order_id
            if not order.status.is_final:
                self._instrument_for_restore(order.instrument, "a working order")
            self._store(order)
            if order.status.is_final:
                continue
            for flag, members in (
                ("triggered", self._triggered),
                ("protection_applied", self._protection_applied),
            ):
                if entry[flag]:
                    members.add(client_order_id)
                else:
                    members.discard(client_order_id)
            if entry["trail"] is None:
                self._trail.pop(client_order_id, None)
            else:
                self._trail[client_order_id] = Decimal(entry["trail"])
        for item in record["fills"]:
            self._remember(from_jsonable(Fill, item))
        for symbol, item in record["positions"].items():
            if item is None:
                self._positions.pop(symbol, None)
            else:
                self._instrument_for_restore(symbol, "a position")
                self._positions[symbol] = _Holding.from_jsonable(item)
        self._balance = Decimal(record["balance"])
        self._realized = Decimal(record["realized_pnl"])
        self._fees = Decimal(record["fees_paid"])
        self._fill_seq = int(record["fill_seq"])
        self._order_seq = int(record["order_seq"])

    def _instrument_for_restore(self, symbol: str, what: str) -> None:
        if symbol not in self._instruments:
            raise ValueError(
                f"paper snapshot holds {what} in {symbol}, which the paper market no longer "
                f"trades: add {symbol} to the paper instruments"
            )

    # -- validation ----------------------------------------------------------

    def _reject(self, reason: str) -> NoReturn:
        raise OrderRejected(reason, broker=self.broker)

    def _resolve(self, value: Decimal | Keep | None, current: Decimal | None) -> Decimal | None:
        """The new protective price: ``KEEP`` -> ``current``, None -> None, else the price."""
        if isinstance(value, Keep):
            return current
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
            self._reject(
                f"a protective price must be a Decimal, got {type(value).__name__} {value!r}; "
                f"use Decimal('{value}')"
            )
        return Decimal(value)

    def _instrument(self, symbol: str) -> Instrument:
        instrument = self._instruments.get(symbol)
        if instrument is None:
            traded = ", ".join(sorted(self._instruments)) or "nothing (no instruments configured)"
            self._reject(f"unknown instrument {symbol}: the paper market trades {traded}")
        return instrument

    def _check_increments(self, instrument: Instrument, request: OrderRequest) -> None:
        step = instrument.size_increment
        if step is not None and request.quantity % step != 0:
            self._reject(
                f"quantity {request.quantity} of {instrument.symbol} is not a multiple of its "
                f"size increment {step}"
            )
        if instrument.min_size is not None and request.quantity < instrument.min_size:
            self._reject(
                f"quantity {request.quantity} of {instrument.symbol} is below its minimum "
                f"size {instrument.min_size}"
            )
        self._check_price(instrument, "limit_price", request.limit_price)
        self._check_price(instrument, "stop_price", request.stop_price)
        self._check_price(instrument, "stop_loss", request.stop_loss)
        self._check_price(instrument, "take_profit", request.take_profit)
        self._check_price(instrument, "trail_distance", request.trail_distance)
        self._check_price(instrument, "trailing_stop", request.trailing_stop)

    def _check_trail(self, instrument: Instrument, request: OrderRequest, quote: Quote) -> None:
        """Refuse a sell trailing stop whose distance would put its trigger at or below zero."""
        distance = request.trail_distance
        if request.side is Side.SELL and distance is not None and distance >= quote.bid:
            self._reject(
                f"trail_distance {distance} of a sell trailing stop must be below the bid "
                f"{quote.bid} of {instrument.symbol}: the stop could never trigger"
            )

    def _check_price(self, instrument: Instrument, name: str, price: Decimal | None) -> None:
        step = instrument.price_increment
        if price is None:
            return
        if price <= 0:
            self._reject(f"{name} must be greater than zero, got {price}")
        if step is not None and price % step != 0:
            self._reject(
                f"{name} {price} of {instrument.symbol} is not a multiple of its price "
                f"increment {step}"
            )

    def _check_protection_sides(
        self,
        side: Side,
        stop_loss: Decimal | None,
        take_profit: Decimal | None,
        quote: Quote,
        whose: str,
    ) -> None:
        """Refuse protection the market is already through: it would fire at once."""
        if side is Side.BUY:
            if stop_loss is not None and stop_loss >= quote.bid:
                self._reject(
                    f"{whose} stop_loss {stop_loss} is on the wrong side of the market: a long "
                    f"position's stop loss must be below the bid {quote.bid}"
                )
            if take_profit is not None and take_profit <= quote.bid:
                self._reject(
                    f"{whose} take_profit {take_profit} is on the wrong side of the market: a "
                    f"long position's take profit must be above the bid {quote.bid}"
                )
        else:
            if stop_loss is not None and stop_loss <= quote.ask:
                self._reject(
                    f"{whose} stop_loss {stop_loss} is on the wrong side of the market: a short "
                    f"position's stop loss must be above the ask {quote.ask}"
                )
            if take_profit is not None and take_profit >= quote.ask:
                self._reject(
                    f"{whose} take_profit {take_profit} is on the wrong side of the market: a "
                    f"short position's take profit must be below the ask {quote.ask}"
                )

    def _check_margin_for(
        self, instrument: Instrument, request: OrderRequest, quote: Quote, rate: Decimal
    ) -> None:
        """Refuse an order that grows its instrument's exposure beyond the free margin."""
        holding = self._positions.get(instrument.symbol)
        current = holding.quantity if holding is not None else _ZERO
        resulting = current + _signed(request.side, request.quantity)
        growth = abs(resulting) - abs(current)
        if growth <= 0:
            return  # only reduces: never refused for margin
        price = request.entry_price if request.entry_price is not None else quote.mid
        leverage = self.settings.leverage_for(instrument.asset_class)
        needed = self._money(growth * price * rate / leverage)
        unrealized, margin = self._valuation()
        available = self._balance + unrealized - margin
        if needed > available:
            currency = self.settings.currency
            self._reject(
                f"insufficient margin: the order needs {needed} {currency}, {available} "
                f"{currency} available; reduce the quantity or close positions"
            )

    def _fillable_now(self, instrument: Instrument, request: OrderRequest, quote: Quote) -> Decimal:
        """What of ``request`` the current quote would fill."""
        touch = quote.price_for(request.side)
        kind = request.type
        if kind is OrderType.TRAILING_STOP:
            return _ZERO  # it trails from this quote: never triggered on it
        if (kind is OrderType.STOP or kind is OrderType.STOP_LIMIT) and not _stop_reached(
            request, touch
        ):
            return _ZERO
        if kind is OrderType.MARKET_IF_TOUCHED and not _touched(request, touch):
            return _ZERO
        if (kind is OrderType.LIMIT or kind is OrderType.STOP_LIMIT) and not _within_limit(
            request, touch
        ):
            return _ZERO
        available = self._available(instrument, quote, request.side)
        return request.quantity if available is None else min(request.quantity, available)

    # -- money ---------------------------------------------------------------

    def _money(self, amount: Decimal) -> Decimal:
        """``amount`` rounded to the account currency's minor unit (half-even, never -0)."""
        result = amount.quantize(self._unit, rounding=ROUND_HALF_EVEN)
        return result.copy_abs() if result.is_zero() else result

    def _rate(self, currency: str) -> Decimal | None:
        """The value of one unit of ``currency`` in the account currency, None if unknown."""
        account = self.settings.currency
        if currency == account:
            return _ONE
        direct = self._quotes.get(f"{currency}_{account}")
        if direct is not None:
            return direct.mid
        inverse = self._quotes.get(f"{account}_{currency}")
        if inverse is not None:
            return _ONE / inverse.mid
        return None

    def _require_rate(self, currency: str) -> Decimal:
        rate = self._rate(currency)
        if rate is None:
            account = self.settings.currency
            self._reject(
                f"cannot value {currency} in {account}: the paper market needs "
                f"{account}_{currency} or {currency}_{account}"
            )
        return rate

    def _unrealized(self, symbol: str, holding: _Holding) -> Decimal:
        quote = self._quotes.get(symbol)
        rate = self._rate(self._instruments[symbol].quote_currency)
        if quote is None or rate is None:
            return _ZERO  # unknown market: valued at entry until quoted
        mark = quote.bid if holding.quantity > 0 else quote.ask
        return self._money((mark - holding.average_price) * holding.quantity * rate)

    def _margin(self, symbol: str, holding: _Holding) -> Decimal:
        quote = self._quotes.get(symbol)
        instrument = self._instruments[symbol]
        rate = self._rate(instrument.quote_currency)
        if quote is None or rate is None:
            return _ZERO
        leverage = self.settings.leverage_for(instrument.asset_class)
        return self._money(abs(holding.quantity) * quote.mid * rate / leverage)

    def _valuation(self) -> tuple[Decimal, Decimal]:
        """(unrealized P&L, margin used) over all positions, in the account currency."""
        unrealized = margin = _ZERO
        for symbol, holding in self._positions.items():
            unrealized += self._unrealized(symbol, holding)
            margin += self._margin(symbol, holding)
        return unrealized, margin

    # -- matching ------------------------------------------------------------

    def _available(self, instrument: Instrument, quote: Quote, side: Side) -> Decimal | None:
        """Size of ``quote`` still free on ``side``, on the size increment; None: unlimited."""
        size = quote.ask_size if side is Side.BUY else quote.bid_size
        if size is None:
            return None
        consumed = self._consumed.get(quote.instrument, [_ZERO, _ZERO])
        free = size - consumed[1 if side is Side.BUY else 0]
        step = instrument.size_increment
        if step is not None:
            free = (free / step).to_integral_value(rounding=ROUND_FLOOR) * step
        return max(free, _ZERO)

    def _consume(self, quote: Quote, side: Side, quantity: Decimal) -> None:
        consumed = self._consumed.setdefault(quote.instrument, [_ZERO, _ZERO])
        consumed[1 if side is Side.BUY else 0] += quantity

    def _slipped(self, instrument: Instrument, side: Side, touch: Decimal) -> Decimal:
        """``touch`` moved against the trader by the slippage, on the price increment."""
        slippage = self.settings.slippage
        if slippage == 0:
            return touch
        if side is Side.BUY:
            price, rounding = touch * (1 + slippage), ROUND_CEILING
        else:
            price, rounding = touch * (1 - slippage), ROUND_FLOOR
        step = instrument.price_increment
        if step is None:
            return price
        rounded = (price / step).to_integral_value(rounding=rounding) * step
        # A sell slipped below the smallest price still trades at the smallest price.
        return rounded if rounded > 0 else step

    def _match(
        self,
        order: Order,
        quote: Quote,
        when: datetime,
        events: list[Order | Fill],
        fresh: set[str],
    ) -> Order:
        """Fill what ``quote`` allows of a working ``order``; returns its new state."""
        request = order.request
        instrument = self._instruments[request.instrument]
        side = request.side
        touch = quote.price_for(side)
        kind = request.type
        if kind is OrderType.LIMIT:
            if not _within_limit(request, touch):
                return order
            price = touch  # at or better than the limit: the trader gets the improvement
        elif kind is OrderType.MARKET:
            price = self._slipped(instrument, side, touch)
        else:  # the triggers (stops, if touched): nothing happens until triggered, then
            # they stay triggered
            client_order_id = order.client_order_id
            if client_order_id not in self._triggered:
                if kind is OrderType.TRAILING_STOP:
                    reached = self._trail_reached(order, touch)
                elif kind is OrderType.MARKET_IF_TOUCHED:
                    reached = _touched(request, touch)
                else:
                    reached = _stop_reached(request, touch)
                if not reached:
                    return order
                self._triggered.add(client_order_id)
                self._touch(client_order_id)
            if kind is OrderType.STOP_LIMIT:
                if not _within_limit(request, touch):
                    return order
                price = touch  # a limit order now
            else:
                price = self._slipped(instrument, side, touch)
        available = self._available(instrument, quote, side)
        quantity = (
            order.remaining_quantity
            if available is None
            else min(order.remaining_quantity, available)
        )
        if quantity <= 0 or self._rate(instrument.quote_currency) is None:
            return order
        self._consume(quote, side, quantity)
        return self._execute(order, quantity, price, when, events, fresh)

    def _trail_reached(self, order: Order, touch: Decimal) -> bool:
        """Move the trailing stop ``order`` with ``touch`` if it is a new best; whether
        ``touch`` reached its trigger."""
        request = order.request
        client_order_id = order.client_order_id
        buy = request.side is Side.BUY
        best = self._trail.get(client_order_id)
        if best is None or (touch < best if buy else touch > best):
            self._trail[client_order_id] = best = touch
            self._touch(client_order_id)
        trigger = self._trail_trigger(request, best)
        return touch >= trigger if buy else touch <= trigger

    @staticmethod
    def _trail_trigger(request: OrderRequest, best: Decimal) -> Decimal:
        """The trigger of a trailing stop whose best touch so far is ``best``."""
        buy = request.side is Side.BUY
        distance = request.trail_distance
        if distance is not None:
            return best + distance if buy else best - distance
        percent = request.trail_percent
        assert percent is not None  # the model requires one of the two
        return best * (1 + percent / 100) if buy else best * (1 - percent / 100)

    def _execute(
        self,
        order: Order,
        quantity: Decimal,
        price: Decimal,
        when: datetime,
        events: list[Order | Fill],
        fresh: set[str],
    ) -> Order:
        """Book one fill of ``order``: position, realized P&L, fee, then the order."""
        request = order.request
        instrument = self._instruments[request.instrument]
        rate = self._rate(instrument.quote_currency)
        assert rate is not None  # callers checked
        when = max(when, order.created_at)
        realized = self._money(self._book(instrument, order, quantity, price, fresh) * rate)
        fee = self._money(self.settings.fee_rate(instrument) * quantity * price * rate)
        self._realized += realized
        self._fees += fee
        self._balance += realized - fee
        self._fill_seq += 1
        fill = Fill(
            fill_id=f"{self.broker}-{self._fill_seq}",
            client_order_id=order.client_order_id,
            instrument=instrument.symbol,
            side=request.side,
            quantity=quantity,
            price=price,
            time=when,
            broker=self.broker,
            fee=fee,
            fee_currency=self.settings.currency,
            venue_order_id=order.venue_order_id,
        )
        self._remember(fill)
        changes = self._changes
        if changes is not None:
            changes.fills.append(fill)
            changes.symbols.add(instrument.symbol)
            changes.any = True
        events.append(fill)
        filled = order.filled_quantity + quantity
        previous = order.average_fill_price
        average = (
            price
            if previous is None
            else (previous * order.filled_quantity + price * quantity) / filled
        )
        status = OrderStatus.FILLED if filled == request.quantity else OrderStatus.PARTIALLY_FILLED
        return self._update(
            order,
            when,
            events,
            status=status,
            filled_quantity=filled,
            average_fill_price=average,
        )

    def _book(
        self,
        instrument: Instrument,
        order: Order,
        quantity: Decimal,
        price: Decimal,
        fresh: set[str],
    ) -> Decimal:
        """Apply a fill to the position; returns the realized P&L in the quote currency."""
        symbol = instrument.symbol
        request = order.request
        delta = _signed(request.side, quantity)
        holding = self._positions.get(symbol)
        current = holding.quantity if holding is not None else _ZERO
        resulting = current + delta
        realized = _ZERO
        opened = False
        if holding is None or _sign(current) == _sign(delta):
            if holding is None:
                holding = _Holding(
                    quantity=delta, average_price=price, opened_by=order.client_order_id
                )
                self._positions[symbol] = holding
                opened = True
            else:
                holding.average_price = (
                    abs(current) * holding.average_price + quantity * price
                ) / abs(resulting)
                holding.quantity = resulting
        else:
            closed = min(abs(current), quantity)
            realized = (price - holding.average_price) * closed * _sign(current)
            if resulting == 0:
                del self._positions[symbol]  # flat: its protection goes with it
                holding = None
            elif _sign(resulting) == _sign(current):
                holding.quantity = resulting
            else:  # through zero: the rest opens a new position at the fill price
                holding = _Holding(
                    quantity=resulting, average_price=price, opened_by=order.client_order_id
                )
                self._positions[symbol] = holding
                opened = True
        if (
            holding is not None
            and _sign(holding.quantity) == _sign(delta)
            and (
                request.stop_loss is not None
                or request.take_profit is not None
                or request.trailing_stop is not None
            )
            and (opened or order.client_order_id not in self._protection_applied)
        ):
            holding.stop_loss = request.stop_loss
            holding.take_profit = request.take_profit
            holding.trailing_stop = request.trailing_stop
            quote = self._quotes.get(symbol)
            holding.trail_best = (
                None
                if request.trailing_stop is None or quote is None
                else quote.bid
                if holding.quantity > 0
                else quote.ask
            )
            holding.protection_by = order.client_order_id
            self._protection_applied.add(order.client_order_id)
            fresh.add(symbol)
        return realized

    def _update(
        self, order: Order, when: datetime, events: list[Order | Fill], **changes: Any
    ) -> Order:
        """Store a new state of ``order`` (updated at ``when``) and report it."""
        order = attrs.evolve(order, updated_at=max(when, order.created_at), **changes)
        self._store(order)
        events.append(order)
        return order

    def _remember(self, fill: Fill) -> None:
        """Add ``fill`` to the history, forgetting the oldest beyond its bounds."""
        history = self._fills
        history.append(fill)  # the deque's maxlen drops the oldest
        horizon = fill.time - _FILL_HISTORY_AGE
        while history[0].time < horizon:
            history.popleft()

    def _touch(self, client_order_id: str) -> None:
        """Note that the order (or its trigger state) changed, for :meth:`take_changes`."""
        changes = self._changes
        if changes is not None:
            touched = changes.orders
            touched.pop(client_order_id, None)  # last touched last: the order it went final
            touched[client_order_id] = None
            changes.any = True

    def _store(self, order: Order) -> None:
        client_order_id = order.client_order_id
        if self._changes is not None:
            self._touch(client_order_id)
        if not order.status.is_final:
            self._working[client_order_id] = order
            return
        self._working.pop(client_order_id, None)
        self._triggered.discard(client_order_id)
        self._protection_applied.discard(client_order_id)
        self._trail.pop(client_order_id, None)
        self._final.pop(client_order_id, None)
        self._final[client_order_id] = order
        while len(self._final) > _FINAL_HISTORY:
            del self._final[next(iter(self._final))]

    def _expire(self, now: datetime, events: list[Order | Fill]) -> None:
        for order in list(self._working.values()):
            expire_time = order.request.expire_time
            if expire_time is not None and now >= expire_time:  # only GTD orders have one
                self._update(order, now, events, status=OrderStatus.EXPIRED)

    # -- protection and close-out --------------------------------------------

    def _protect(self, symbol: str, quote: Quote, events: list[Order | Fill]) -> None:
        """Move the position's trailing stop with ``quote``, and close the position in
        ``symbol`` if ``quote`` reached its stop loss, trailing stop or take profit."""
        holding = self._positions.get(symbol)
        if holding is None:
            return
        long = holding.quantity > 0
        mark = quote.bid if long else quote.ask
        stop, take = holding.stop_loss, holding.take_profit
        trail = holding.trailing_stop
        trailed = False
        if trail is not None:
            best = holding.trail_best
            if best is None or (mark > best if long else mark < best):
                holding.trail_best = best = mark
                changes = self._changes
                if changes is not None:
                    changes.symbols.add(symbol)
                    changes.any = True
            trailed = mark <= best - trail if long else mark >= best + trail
        if stop is not None and (mark <= stop if long else mark >= stop):
            kind, suffix = "stop_loss", "sl"
        elif trailed:
            kind, suffix = "trailing_stop", "ts"
        elif take is not None and (mark >= take if long else mark <= take):
            kind, suffix = "take_profit", "tp"
        else:
            return
        parent = holding.protection_by or holding.opened_by
        self._close(symbol, quote, self._protective_id(parent, suffix), kind, events)

    def _protective_id(self, parent: str, suffix: str) -> str:
        """``parent.sl`` (or ``.tp``, ``.ts``), with a counter when that id was used before."""
        count = 1
        while True:
            tail = f".{suffix}" + (str(count) if count > 1 else "")
            # Client order ids are at most 64 characters: shorten the parent, keep the tail.
            candidate = parent[: 64 - len(tail)] + tail
            if candidate not in self._working and candidate not in self._final:
                return candidate
            count += 1

    def _close(
        self, symbol: str, quote: Quote, client_order_id: str, tag: str, events: list[Order | Fill]
    ) -> None:
        """Close the whole position in ``symbol`` at the touch, ignoring the quoted size."""
        holding = self._positions[symbol]
        instrument = self._instruments[symbol]
        if self._rate(instrument.quote_currency) is None:
            return
        side = Side.SELL if holding.quantity > 0 else Side.BUY
        quantity = abs(holding.quantity)
        touch = quote.price_for(side)
        price = touch if tag == "take_profit" else self._slipped(instrument, side, touch)
        self._order_seq += 1
        order = Order(
            request=OrderRequest(
                instrument=symbol,
                side=side,
                quantity=quantity,
                type=OrderType.MARKET,
                time_in_force=TimeInForce.IOC,
                client_order_id=client_order_id,
                tag=tag,
            ),
            broker=self.broker,
            status=OrderStatus.ACCEPTED,
            venue_order_id=f"P{self._order_seq}",
            created_at=quote.time,
            updated_at=quote.time,
        )
        available = self._available(instrument, quote, side)
        self._consume(quote, side, quantity if available is None else min(available, quantity))
        self._execute(order, quantity, price, quote.time, events, set())

    def _check_margin(self, events: list[Order | Fill]) -> None:
        """Close every position when the equity fell below the maintenance margin."""
        unrealized, margin = self._valuation()
        if margin <= 0 or self._balance + unrealized >= self.settings.maintenance_ratio * margin:
            return
        for symbol in sorted(self._positions):
            quote = self._quotes.get(symbol)
            if quote is not None:
                self._close(symbol, quote, self._id_factory(), "margin_closeout", events)
