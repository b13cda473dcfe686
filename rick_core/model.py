"""The value types every part of rick speaks: instruments, quotes, orders, fills,
positions and accounts.

Rules that hold for every type here:

- values are immutable (attrs ``frozen`` with slots); change one with
  ``attrs.evolve``;
- every price, quantity and amount is a :class:`~decimal.Decimal`. ``int`` and
  ``str`` are accepted and converted exactly; ``float`` is refused, because a
  float has already lost the exact value (``0.1`` is not one tenth);
- every time is a timezone-aware datetime, normalised to UTC; a naive datetime
  is refused;
- enums accept their value as a string (``"buy"``) and refuse anything else
  with the list of accepted values.

Invalid values raise :class:`ModelError` (a ``ValueError``) at construction,
so a value that exists is a valid value.

Canonical instrument symbology
------------------------------
One spelling per instrument, whatever the venue:

- currency pairs, FX and crypto alike: ``BASE_QUOTE`` in upper case,
  ``EUR_USD``, ``USD_JPY``, ``BTC_USD``, ``ETH_USDC``;
- single listings (equities, ETFs, indices): the ticker in upper case,
  ``AAPL``, ``BRK.B``, ``SPY``.

Broker plugins translate to and from their venue's native spelling with a
:class:`rick_core.symbols.SymbolMap`.
"""

from __future__ import annotations

import enum
import json
import re
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, TypeVar

import attrs
from attrs import field, frozen

__all__ = [
    "BEST",
    "Account",
    "AssetClass",
    "BestQuote",
    "Fill",
    "Instrument",
    "ModelError",
    "Order",
    "OrderRequest",
    "OrderStatus",
    "OrderType",
    "Position",
    "Quote",
    "Side",
    "TimeInForce",
    "from_json",
    "from_jsonable",
    "new_client_order_id",
    "to_json",
    "to_jsonable",
    "to_utc",
    "utc_now",
]


class ModelError(ValueError):
    """A value given to a model type is invalid. The message says which field and why."""


# ---------------------------------------------------------------------------
# enums


class _ValueEnum(enum.Enum):
    @classmethod
    def parse(cls, value: object, *, what: str) -> Any:
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value.lower())
            except ValueError:
                pass
        allowed = ", ".join(repr(m.value) for m in cls)
        raise ModelError(f"unknown {what} {value!r}; expected one of {allowed}")


class Side(_ValueEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(_ValueEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"  # a market order once the price reaches stop_price
    STOP_LIMIT = "stop_limit"  # a limit order at limit_price once the price reaches stop_price
    TRAILING_STOP = "trailing_stop"  # a stop that follows the best price by a distance or percent
    # A market order once the price touches stop_price from the favourable side: a
    # buy rests below the market (fires when the ask falls to stop_price or below),
    # a sell above it (when the bid rises to it or above). The mirror of a stop.
    MARKET_IF_TOUCHED = "market_if_touched"


class TimeInForce(_ValueEnum):
    GTC = "gtc"  # good till cancelled
    GTD = "gtd"  # good till date (needs expire_time)
    DAY = "day"  # until the end of the venue's trading day
    IOC = "ioc"  # immediate or cancel: fill what you can now, cancel the rest
    FOK = "fok"  # fill or kill: all now or nothing


class OrderStatus(_ValueEnum):
    """Where an order is in its life (the allowed moves are in :mod:`rick_core.orderstate`).

    ``NEW`` orders exist only in rick (written to the store, not yet sent);
    ``SUBMITTED`` orders are being sent; ``UNKNOWN`` orders were sent and the
    venue's answer was lost (a timeout, a dropped connection): they are looked
    up at the venue by client order id, never sent again. ``ACCEPTED`` orders
    are working at the venue (or, for an emulated order, held by rick).
    ``PENDING_CANCEL`` and ``PENDING_MODIFY`` mark a cancel or a change under
    way. The final states never change again.
    """

    NEW = "new"
    SUBMITTED = "submitted"
    UNKNOWN = "unknown"
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    PENDING_MODIFY = "pending_modify"
    PENDING_CANCEL = "pending_cancel"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @classmethod
    def _missing_(cls, value: object) -> OrderStatus | None:
        # The names of rick 0.1's stores and paper accounts.
        return _LEGACY_STATUS.get(value) if isinstance(value, str) else None

    @property
    def is_final(self) -> bool:
        return self in _FINAL_STATUSES


_LEGACY_STATUS: Final = {"pending": OrderStatus.NEW, "open": OrderStatus.ACCEPTED}

_FINAL_STATUSES: Final = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
)


class AssetClass(_ValueEnum):
    FX = "fx"
    CRYPTO = "crypto"
    EQUITY = "equity"
    INDEX = "index"
    COMMODITY = "commodity"
    FUTURE = "future"
    OPTION = "option"


# ---------------------------------------------------------------------------
# converters and validators (attrs runs converters before validators)


def _to_decimal(value: Decimal | int | str) -> Decimal:
    """Exact conversion to Decimal; refuses floats, bools and non-finite values."""
    if type(value) is Decimal and value.is_finite():  # the hot path: quotes, fills
        return value
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise ModelError(
            f"expected a Decimal (or an int or a numeric string), got {type(value).__name__} "
            f"{value!r}; floats are refused because they cannot hold prices exactly: "
            f"use Decimal('{value}')"
        )
    if isinstance(value, Decimal):
        result = value
    else:
        try:
            result = Decimal(value)
        except InvalidOperation:
            raise ModelError(f"{value!r} is not a number") from None
    if not result.is_finite():
        raise ModelError(f"{value!r} is not a finite number (NaN and infinity are refused)")
    return result


def _to_optional_decimal(value: Decimal | int | str | None) -> Decimal | None:
    return None if value is None else _to_decimal(value)


def to_utc(value: datetime | str) -> datetime:
    """Aware datetime (or ISO 8601 text with an offset) normalised to UTC."""
    if type(value) is datetime and value.tzinfo is UTC:  # the hot path
        return value
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ModelError(f"{value!r} is not an ISO 8601 date-time") from None
    if not isinstance(value, datetime):
        raise ModelError(f"expected a timezone-aware datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ModelError(
            f"naive datetime {value.isoformat()} refused: times must be timezone-aware; "
            "use datetime.now(UTC) or attach tzinfo=UTC"
        )
    return value.astimezone(UTC)


def _to_optional_utc(value: datetime | str | None) -> datetime | None:
    return None if value is None else to_utc(value)


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Decimal) -> None:
    if value <= 0:
        raise ModelError(f"{attribute.name} must be greater than zero, got {value}")


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: Decimal) -> None:
    if value < 0:
        raise ModelError(f"{attribute.name} must not be negative, got {value}")


def _optional(check: Any) -> Any:
    def validate(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            check(instance, attribute, value)

    return validate


def _non_empty(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ModelError(f"{attribute.name} must be a non-empty string, got {value!r}")


def _side(value: Side | str) -> Side:
    result: Side = Side.parse(value, what="side")
    return result


def _order_type(value: OrderType | str) -> OrderType:
    result: OrderType = OrderType.parse(value, what="order type")
    return result


def _time_in_force(value: TimeInForce | str) -> TimeInForce:
    result: TimeInForce = TimeInForce.parse(value, what="time in force")
    return result


def _order_status(value: OrderStatus | str) -> OrderStatus:
    result: OrderStatus = OrderStatus.parse(value, what="order status")
    return result


def _asset_class(value: AssetClass | str) -> AssetClass:
    result: AssetClass = AssetClass.parse(value, what="asset class")
    return result


# ---------------------------------------------------------------------------
# symbology

_PAIR = re.compile(r"^[A-Z0-9]{1,16}_[A-Z0-9]{2,10}$")
_TICKER = re.compile(r"^[A-Z0-9][A-Z0-9.]{0,19}$")


_KNOWN_SYMBOLS: set[str] = set()
"""Symbols already checked: a quote stream repeats a handful of them millions of times."""


def check_symbol(symbol: str) -> str:
    """Return ``symbol`` if canonical, else raise :class:`ModelError` saying how to spell it."""
    if type(symbol) is str and symbol in _KNOWN_SYMBOLS:
        return symbol
    if not isinstance(symbol, str):
        raise ModelError(f"instrument symbol must be a string, got {type(symbol).__name__}")
    if _PAIR.fullmatch(symbol) or _TICKER.fullmatch(symbol):
        if len(_KNOWN_SYMBOLS) < 100_000:  # bounded: symbols come from venues too
            _KNOWN_SYMBOLS.add(symbol)
        return symbol
    hint = symbol.upper().replace("-", "_").replace("/", "_")
    raise ModelError(
        f"{symbol!r} is not a canonical instrument symbol: use BASE_QUOTE in upper case for "
        f"pairs (EUR_USD, BTC_USD) or the upper-case ticker for listings (AAPL); "
        f"did you mean {hint!r}?"
    )


def _symbol(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    check_symbol(value)


# ---------------------------------------------------------------------------
# value types


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CLIENT_ORDER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}")


def _client_order_id(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not _CLIENT_ORDER_ID.fullmatch(value):
        raise ModelError(
            f"{attribute.name} {value!r} is invalid: 1 to 64 characters of letters, digits "
            "and . _ : - (starting with a letter or digit), so every venue accepts it"
        )


def _optional_str(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise ModelError(f"{attribute.name} must be a string or None, got {type(value).__name__}")


def _str(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise ModelError(f"{attribute.name} must be a string, got {type(value).__name__}")


def new_client_order_id() -> str:
    """A new client order id: ``rk`` + 26 characters, time-ordered and unique.

    ULID-shaped (48 bits of milliseconds, 80 random bits, Crockford base32), 28
    characters of ``[0-9A-Z]``: short and plain enough for every venue's client
    order id field, sortable by creation time.
    """
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "rk" + "".join(reversed(chars))


@frozen
class Instrument:
    """A tradable instrument in canonical symbology.

    ``quote_currency`` is the currency prices are in; ``base`` is what is bought
    (the base currency of a pair, the ticker of a listing).
    """

    symbol: str = field(validator=_symbol)
    asset_class: AssetClass = field(converter=_asset_class)
    quote_currency: str = field(validator=_non_empty)
    base: str = field(
        default=attrs.Factory(lambda self: self.symbol.split("_", 1)[0], takes_self=True),
        validator=_non_empty,
    )
    price_increment: Decimal | None = field(
        default=None, converter=_to_optional_decimal, validator=_optional(_positive)
    )
    size_increment: Decimal | None = field(
        default=None, converter=_to_optional_decimal, validator=_optional(_positive)
    )
    min_size: Decimal | None = field(
        default=None, converter=_to_optional_decimal, validator=_optional(_non_negative)
    )

    def __attrs_post_init__(self) -> None:
        if "_" in self.symbol:
            base, quote = self.symbol.split("_", 1)
            if quote != self.quote_currency:
                raise ModelError(
                    f"instrument {self.symbol}: quote_currency {self.quote_currency!r} does not "
                    f"match the symbol's quote {quote!r}"
                )
            if base != self.base:
                raise ModelError(
                    f"instrument {self.symbol}: base {self.base!r} does not match the "
                    f"symbol's base {base!r}"
                )

    @classmethod
    def pair(
        cls, symbol: str, asset_class: AssetClass | str = AssetClass.FX, **kw: Any
    ) -> Instrument:
        """A currency pair from its canonical symbol, e.g. ``Instrument.pair("EUR_USD")``."""
        check_symbol(symbol)
        if "_" not in symbol:
            raise ModelError(f"{symbol!r} is not a pair: expected BASE_QUOTE such as EUR_USD")
        base, quote = symbol.split("_", 1)
        return cls(symbol=symbol, asset_class=asset_class, quote_currency=quote, base=base, **kw)


@frozen
class Quote:
    """The top of a venue's book for one instrument at one time."""

    instrument: str = field(validator=_symbol)
    bid: Decimal = field(converter=_to_decimal, validator=_positive)
    ask: Decimal = field(converter=_to_decimal, validator=_positive)
    time: datetime = field(converter=to_utc)
    source: str = field(validator=_non_empty)
    bid_size: Decimal | None = field(
        default=None, converter=_to_optional_decimal, validator=_optional(_non_negative)
    )
    ask_size: Decimal | None = field(
        default=None, converter=_to_optional_decimal, validator=_optional(_non_negative)
    )

    def __attrs_post_init__(self) -> None:
        if self.bid > self.ask:
            raise ModelError(
                f"crossed quote for {self.instrument} from {self.source}: "
                f"bid {self.bid} is above ask {self.ask}"
            )

    @property
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / 2

    @property
    def spread(self) -> Decimal:
        return self.ask - self.bid

    def price_for(self, side: Side) -> Decimal:
        """The touch price a market order of ``side`` would trade at (buy at ask, sell at bid)."""
        return self.ask if side is Side.BUY else self.bid


BEST = "best"
"""The source of a :class:`BestQuote`, and the broker name that asks for one."""


@frozen
class BestQuote:
    """The consolidated top of book of one instrument across brokers.

    ``bid_brokers`` / ``ask_brokers`` are every broker at the best price (ties),
    ``bid_broker`` / ``ask_broker`` the one chosen among them: the freshest
    quote, then the first name. ``tightest`` is the broker whose own spread is
    narrowest. ``stale`` names the brokers left out because their quote is
    stale. Across venues the best bid can meet or pass the best ask
    (``crossed``): an arbitrage, or a sign that one venue's price is off.
    """

    instrument: str
    bid: Decimal
    ask: Decimal
    bid_broker: str
    ask_broker: str
    bid_brokers: tuple[str, ...]
    ask_brokers: tuple[str, ...]
    tightest: str
    time: datetime
    """The newest venue time among the quotes used."""
    sources: tuple[str, ...]
    """The brokers whose (fresh) quotes were compared."""
    stale: tuple[str, ...] = ()
    bid_size: Decimal | None = None
    ask_size: Decimal | None = None
    source: str = field(default=BEST, init=False)

    @property
    def crossed(self) -> bool:
        return self.bid >= self.ask

    @property
    def spread(self) -> Decimal:
        return self.ask - self.bid

    @property
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / 2


def _default_tif(order: OrderRequest) -> TimeInForce:
    return TimeInForce.IOC if order.type is OrderType.MARKET else TimeInForce.GTC


@frozen
class OrderRequest:
    """What a strategy asks for. The core gives it a client order id, which is
    sent to every venue that accepts one so a retried submit never doubles it.

    ``stop_loss`` and ``take_profit`` are prices of protective orders attached
    to the position this order opens. ``trailing_stop`` is a price *distance*:
    once the order fills, a stop trailing the best price since the fill by that
    distance protects the filled quantity (a long's stop is the highest bid
    since the fill less the distance, and only ever moves up; a short's is the
    lowest ask plus the distance, and only ever moves down). It is for entry
    orders (market, limit, stop, stop-limit, market-if-touched), not for
    trailing stop orders, and combines with ``stop_loss`` and ``take_profit``:
    whichever triggers first closes the position.

    Prices by type: ``limit_price`` for limit orders; ``stop_price`` is the
    trigger of stop orders (a buy fires when the ask rises to it, a sell when
    the bid falls to it) and, for ``market_if_touched`` orders, the touch price
    (a buy fires when the ask falls to it, a sell when the bid rises to it);
    stop-limit orders take both. A market-if-touched order takes no
    ``limit_price``: once touched it is a market order.
    """

    instrument: str = field(validator=_symbol)
    side: Side = field(converter=_side)
    quantity: Decimal = field(converter=_to_decimal, validator=_positive)
    type: OrderType = field(default=OrderType.MARKET, converter=_order_type)
    limit_price: Decimal | None = field(
        default=None, converter=_to_optional_decimal, validator=_optional(_positive)
    )
    stop_price: Decimal | None = field(
        default=None, converter=_to_optional_decimal, validator=_optional(_positive)
    )
    time_in_force: TimeInForce = field(
        default=attrs.Factory(_default_tif, takes_self=True), converter=_time_in_force
    )
    expire_time: datetime | None = field(default=None, converter=_to_optional_utc)
    stop_loss: Decimal | None = field(
        default=None, converter=_to_optional_decimal, validator=_optional(_positive)
    )
    take_profit: Decimal | None = field(
        default=None, converter=_to_optional_decimal, validator=_optional(_positive)
    )
    client_order_id: str = field(factory=new_client_order_id, validator=_client_order_id)
    tag: str = field(default="", validator=_str)
    trail_distance: Decimal | None = field(
        default=None, converter=_to_optional_decimal, validator=_optional(_positive)
    )
    trail_percent: Decimal | None = field(
        default=None, converter=_to_optional_decimal, validator=_optional(_positive)
    )
    # Last, so positional construction and stored JSON of earlier versions still fit.
    trailing_stop: Decimal | None = field(
        default=None, converter=_to_optional_decimal, validator=_optional(_positive)
    )

    def __attrs_post_init__(self) -> None:
        where = f"order {self.client_order_id} ({self.side.value} {self.instrument})"
        kind = self.type
        needs_limit = kind is OrderType.LIMIT or kind is OrderType.STOP_LIMIT
        touched = kind is OrderType.MARKET_IF_TOUCHED
        needs_stop = kind is OrderType.STOP or kind is OrderType.STOP_LIMIT or touched
        if needs_limit and self.limit_price is None:
            raise ModelError(f"{where}: a {kind.value} order needs limit_price")
        if touched and self.stop_price is None:
            raise ModelError(
                f"{where}: a market_if_touched order needs stop_price (its touch price: a buy "
                "fires when the ask falls to it, a sell when the bid rises to it)"
            )
        if needs_stop and self.stop_price is None:
            raise ModelError(f"{where}: a {kind.value} order needs stop_price")
        if touched and self.limit_price is not None:
            raise ModelError(
                f"{where}: a market_if_touched order takes no limit_price: it fills at market "
                "once touched, and its touch price goes in stop_price"
            )
        if not needs_limit and self.limit_price is not None:
            raise ModelError(f"{where}: limit_price is only for limit and stop_limit orders")
        if not needs_stop and self.stop_price is not None:
            raise ModelError(
                f"{where}: stop_price is only for stop and stop_limit orders (the trigger) "
                "and market_if_touched orders (the touch price)"
            )
        if kind is OrderType.TRAILING_STOP:
            if (self.trail_distance is None) == (self.trail_percent is None):
                raise ModelError(
                    f"{where}: a trailing stop needs exactly one of trail_distance (a price "
                    "distance) or trail_percent (percent of the best price)"
                )
            if self.trail_percent is not None and self.trail_percent >= 100:
                raise ModelError(f"{where}: trail_percent must be below 100")
            if self.trailing_stop is not None:
                raise ModelError(
                    f"{where}: a trailing stop order takes no attached trailing_stop: it "
                    "trails by its own trail_distance or trail_percent"
                )
        elif self.trail_distance is not None or self.trail_percent is not None:
            raise ModelError(f"{where}: trail_distance and trail_percent are for trailing stops")
        if (self.time_in_force is TimeInForce.GTD) != (self.expire_time is not None):
            raise ModelError(f"{where}: expire_time is required with GTD and only with GTD")
        # Plain comparisons, no arithmetic: nothing here depends on the caller's
        # decimal context (precision, traps).
        buy = self.side is Side.BUY

        def below(low: Decimal, high: Decimal) -> bool:  # "low is on the loss side of high"
            return low < high if buy else low > high

        entry = self.entry_price
        if self.stop_loss is not None and entry is not None and not below(self.stop_loss, entry):
            raise ModelError(
                f"{where}: stop_loss {self.stop_loss} is on the wrong side of the entry {entry}"
            )
        if (
            self.take_profit is not None
            and entry is not None
            and not below(entry, self.take_profit)
        ):
            raise ModelError(
                f"{where}: take_profit {self.take_profit} is on the wrong side of the entry {entry}"
            )
        if (
            self.stop_loss is not None
            and self.take_profit is not None
            and not below(self.stop_loss, self.take_profit)
        ):
            raise ModelError(
                f"{where}: take_profit {self.take_profit} and stop_loss {self.stop_loss} "
                f"are the wrong way round for a {self.side.value}"
            )

    @property
    def entry_price(self) -> Decimal | None:
        """The price this order enters at, when known before it fills: the limit
        price, else the trigger price (a stop's or a market-if-touched order's
        ``stop_price``, where it fires at market); None for market orders and
        trailing stops. Attached protection is checked against it."""
        return self.limit_price if self.limit_price is not None else self.stop_price


def _to_request(value: OrderRequest | Mapping[str, Any]) -> OrderRequest:
    if isinstance(value, OrderRequest):
        return value
    if isinstance(value, Mapping):
        return OrderRequest(**value)
    raise ModelError(f"expected an OrderRequest, got {type(value).__name__}")


@frozen
class Order:
    """An order as rick tracks it: the request plus what the venue has done with it."""

    request: OrderRequest = field(converter=_to_request)
    broker: str = field(validator=_non_empty)
    status: OrderStatus = field(default=OrderStatus.NEW, converter=_order_status)
    venue_order_id: str | None = field(default=None, validator=_optional_str)
    filled_quantity: Decimal = field(
        default=Decimal(0), converter=_to_decimal, validator=_non_negative
    )
    average_fill_price: Decimal | None = field(
        default=None, converter=_to_optional_decimal, validator=_optional(_positive)
    )
    created_at: datetime = field(factory=utc_now, converter=to_utc)
    updated_at: datetime = field(factory=utc_now, converter=to_utc)
    reject_reason: str | None = field(default=None, validator=_optional_str)

    def __attrs_post_init__(self) -> None:
        if self.updated_at < self.created_at:
            raise ModelError(
                f"order {self.client_order_id}: updated_at {self.updated_at.isoformat()} is "
                f"before created_at {self.created_at.isoformat()}"
            )
        if self.filled_quantity > self.request.quantity:
            raise ModelError(
                f"order {self.client_order_id}: filled {self.filled_quantity} is more than "
                f"the ordered {self.request.quantity}"
            )
        if self.filled_quantity > 0 and self.average_fill_price is None:
            raise ModelError(
                f"order {self.client_order_id}: a filled quantity needs an average_fill_price"
            )
        if self.status is OrderStatus.FILLED and self.filled_quantity != self.request.quantity:
            raise ModelError(
                f"order {self.client_order_id}: status filled but only "
                f"{self.filled_quantity} of {self.request.quantity} filled"
            )

    @property
    def client_order_id(self) -> str:
        return self.request.client_order_id

    @property
    def instrument(self) -> str:
        return self.request.instrument

    @property
    def remaining_quantity(self) -> Decimal:
        return self.request.quantity - self.filled_quantity


@frozen
class Fill:
    """One execution against an order. ``fee`` is in ``fee_currency``; a rebate is negative."""

    fill_id: str = field(validator=_non_empty)
    client_order_id: str = field(validator=_non_empty)  # venues report fills of foreign orders
    instrument: str = field(validator=_symbol)
    side: Side = field(converter=_side)
    quantity: Decimal = field(converter=_to_decimal, validator=_positive)
    price: Decimal = field(converter=_to_decimal, validator=_positive)
    time: datetime = field(converter=to_utc)
    broker: str = field(validator=_non_empty)
    fee: Decimal = field(default=Decimal(0), converter=_to_decimal)
    fee_currency: str = field(default="", validator=_str)
    venue_order_id: str | None = field(default=None, validator=_optional_str)

    @property
    def notional(self) -> Decimal:
        return self.quantity * self.price


@frozen
class Position:
    """A net position. ``quantity`` is signed: positive long, negative short."""

    instrument: str = field(validator=_symbol)
    quantity: Decimal = field(converter=_to_decimal)
    average_price: Decimal = field(converter=_to_decimal, validator=_positive)
    broker: str = field(validator=_non_empty)
    unrealized_pnl: Decimal = field(default=Decimal(0), converter=_to_decimal)
    stop_loss: Decimal | None = field(
        default=None, converter=_to_optional_decimal, validator=_optional(_positive)
    )
    take_profit: Decimal | None = field(
        default=None, converter=_to_optional_decimal, validator=_optional(_positive)
    )

    @property
    def side(self) -> Side | None:
        if self.quantity > 0:
            return Side.BUY
        if self.quantity < 0:
            return Side.SELL
        return None


@frozen
class Account:
    """Balances of one broker account, in its currency."""

    broker: str = field(validator=_non_empty)
    currency: str = field(validator=_non_empty)
    balance: Decimal = field(converter=_to_decimal)
    equity: Decimal = field(converter=_to_decimal)
    margin_used: Decimal = field(default=Decimal(0), converter=_to_decimal, validator=_non_negative)
    margin_available: Decimal = field(default=Decimal(0), converter=_to_decimal)
    time: datetime = field(factory=utc_now, converter=to_utc)

    @property
    def unrealized_pnl(self) -> Decimal:
        return self.equity - self.balance


# ---------------------------------------------------------------------------
# JSON: Decimals as strings (exact, exponent kept), times as ISO 8601 with offset

T = TypeVar("T")


def _serialize(inst: Any, attribute: Any, value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


def to_jsonable(value: Any) -> dict[str, Any]:
    """A model value as a dict of JSON types (Decimal -> str, datetime -> ISO text)."""
    result: dict[str, Any] = attrs.asdict(value, value_serializer=_serialize)
    return result


def from_jsonable(cls: type[T], data: Mapping[str, Any]) -> T:
    """The inverse of :func:`to_jsonable`."""
    if not attrs.has(cls):
        raise TypeError(f"{cls!r} is not a model type")
    unknown = set(data) - {a.name for a in attrs.fields(cls)}
    if unknown:
        raise ModelError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    result: T = cls(**data)  # type: ignore[assignment]  # attrs.has() narrowed cls
    return result


def to_json(value: Any) -> str:
    return json.dumps(to_jsonable(value), separators=(",", ":"), sort_keys=True)


def from_json(cls: type[T], text: str | bytes) -> T:
    return from_jsonable(cls, json.loads(text))
