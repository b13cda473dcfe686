"""A fake OANDA v20 server on loopback, for tests and rehearsals.

:class:`FakeV20` speaks OANDA's published v20 wire protocol (REST and the two
chunked line streams) over plain HTTP/1.1 on ``127.0.0.1``. One server answers
both the REST paths and the stream paths, so a client's ``rest_url`` and
``stream_url`` can both be :attr:`FakeV20.url`. It is written with trio and
h11 only: a task per connection, keep-alive (several requests per
connection), JSON bodies, and chunked newline-delimited JSON for
``/pricing/stream`` and ``/transactions/stream``.

Behind the endpoints is one account: netting (no hedging), FIFO, in one
currency. Market orders fill at once at the ask (buy) or the bid (sell);
limit, stop and market-if-touched orders rest and fill when a price reaches
them (a market-if-touched order when the price crosses its level from the
side it was on at creation, its ``initialMarketPrice``); ``*OnFill``
details put take profit, stop loss and trailing stop loss orders on the
opened trade, which trigger on price and close it. Every
change is a transaction with the next id, in the REST history and, as it
happens, on every open transactions stream. Prices move only when a test
calls :meth:`FakeV20.set_price`, or, while a pricing stream is open, by a
seeded random walk of the subscribed instruments every ``price_interval``
seconds.

Tests steer it: :meth:`~FakeV20.set_price` (which also fills what the new
price reaches), :meth:`~FakeV20.stall_streams` / :meth:`~FakeV20.resume_streams`,
:meth:`~FakeV20.drop_streams` (optionally in the middle of a line),
:meth:`~FakeV20.fail_next` (429 and friends), :meth:`~FakeV20.reject_next_order`,
:meth:`~FakeV20.cancel_next_order` and :meth:`~FakeV20.swallow_next_order`;
and inspect it: :attr:`~FakeV20.requests`, :meth:`~FakeV20.count`,
:attr:`~FakeV20.transactions`, :attr:`~FakeV20.orders`,
:attr:`~FakeV20.trades`, :attr:`~FakeV20.stream_connections`.

Choices where OANDA documents nothing (each marked "our choice" below too):
the body of a 429 is ``{"errorMessage": ...}`` only, with ``Retry-After``
only when the test asks for one; a missing order, trade or transaction is a
404 with ``errorCode`` ``NO_SUCH_ORDER`` / ``NO_SUCH_TRADE`` /
``NO_SUCH_TRANSACTION``; ``errorCode`` equals the reject transaction's
``rejectReason``; list endpoints return newest first, ``count`` defaults to
50 (at most 500); GFD orders never expire; financing and commission are
always zero.

Run it by hand for a rehearsal with ``rick run``::

    python -m rick_oanda.fake --port 8111
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import partial
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import parse_qs, quote, unquote

import h11
import trio

__all__ = ["DEFAULT_INSTRUMENTS", "FakeInstrument", "FakeV20", "main"]

JSON = dict[str, Any]

# ---------------------------------------------------------------------------
# wire constants (OANDA v20 3.0.25 definitions)

ENTRY_TYPES: Final = ("MARKET", "LIMIT", "STOP", "MARKET_IF_TOUCHED")
PENDING_ENTRY_TYPES: Final = ("LIMIT", "STOP", "MARKET_IF_TOUCHED")
DEPENDENT_TYPES: Final = ("TAKE_PROFIT", "STOP_LOSS", "TRAILING_STOP_LOSS")
TIME_IN_FORCE: Final = ("GTC", "GTD", "GFD", "FOK", "IOC")
ALLOWED_TIME_IN_FORCE: Final[Mapping[str, tuple[str, ...]]] = {
    "MARKET": ("FOK", "IOC"),  # "Restricted to FOK or IOC for a MarketOrder"
    "LIMIT": TIME_IN_FORCE,  # no restriction stated
    "STOP": TIME_IN_FORCE,  # no restriction stated
    "MARKET_IF_TOUCHED": ("GTC", "GFD", "GTD"),
    "TAKE_PROFIT": ("GTC", "GFD", "GTD"),
    "STOP_LOSS": ("GTC", "GFD", "GTD"),
    "TRAILING_STOP_LOSS": ("GTC", "GFD", "GTD"),
}
POSITION_FILLS: Final = ("DEFAULT", "OPEN_ONLY", "REDUCE_FIRST", "REDUCE_ONLY")
TRIGGER_CONDITIONS: Final = ("DEFAULT", "INVERSE", "BID", "ASK", "MID")
FILL_REASONS: Final[Mapping[str, str]] = {
    "MARKET": "MARKET_ORDER",
    "LIMIT": "LIMIT_ORDER",
    "STOP": "STOP_ORDER",
    "MARKET_IF_TOUCHED": "MARKET_IF_TOUCHED_ORDER",
    "TAKE_PROFIT": "TAKE_PROFIT_ORDER",
    "STOP_LOSS": "STOP_LOSS_ORDER",
    "TRAILING_STOP_LOSS": "TRAILING_STOP_LOSS_ORDER",
}
ON_FILL: Final = (
    ("takeProfitOnFill", "TAKE_PROFIT"),
    ("stopLossOnFill", "STOP_LOSS"),
    ("trailingStopLossOnFill", "TRAILING_STOP_LOSS"),
)
TRADE_ORDER_KEYS: Final[Mapping[str, str]] = {
    "TAKE_PROFIT": "takeProfit",
    "STOP_LOSS": "stopLoss",
    "TRAILING_STOP_LOSS": "trailingStopLoss",
}
TRANSACTION_GROUPS: Final[Mapping[str, frozenset[str]]] = {
    "FUNDING": frozenset({"TRANSFER_FUNDS", "TRANSFER_FUNDS_REJECT", "DAILY_FINANCING"}),
    "ADMIN": frozenset(
        {
            "CREATE",
            "CLOSE",
            "REOPEN",
            "CLIENT_CONFIGURE",
            "CLIENT_CONFIGURE_REJECT",
            "RESET_RESETTABLE_PL",
        }
    ),
}
COMMON_TRANSACTION_FIELDS: Final = frozenset(
    {"id", "time", "userID", "accountID", "batchID", "requestID", "type"}
)
TIME_KEYS: Final = frozenset(
    {
        "time",
        "createTime",
        "filledTime",
        "cancelledTime",
        "triggeredTime",
        "openTime",
        "closeTime",
        "gtdTime",
        "createdTime",
        "lastOrderFillTimestamp",
        "from",
        "to",
    }
)

AUTH_MESSAGE: Final = "Insufficient authorization to perform request."
FORBIDDEN_MESSAGE: Final = "The provided request was forbidden."
STATUS_MESSAGES: Final[Mapping[int, str]] = {
    400: "The request was missing required data",
    401: AUTH_MESSAGE,
    403: FORBIDDEN_MESSAGE,
    404: "The requested resource was not found",
    405: "The method is not allowed for the requested URL",
    # 429: our choice (OANDA documents the status, not the body).
    429: "Requests are being made too frequently: the rate limit was exceeded",
    500: "An internal server error occurred",
    502: "Bad gateway",
    503: "The service is temporarily unavailable",
    504: "Gateway timeout",
}
REJECT_MESSAGES: Final[Mapping[str, str]] = {
    # The descriptions of OANDA's TransactionRejectReason values.
    "INSUFFICIENT_MARGIN": "The Account had insufficient margin to perform the action specified",
    "INSTRUMENT_MISSING": "Order instrument has not been specified",
    "INSTRUMENT_UNKNOWN": "Invalid value specified for 'instrument'",
    "INSTRUMENT_NOT_TRADEABLE": "The Order's Instrument is not tradeable",
    "UNITS_MISSING": "Order units have not been specified",
    "UNITS_INVALID": "Order units specified are invalid",
    "UNITS_PRECISION_EXCEEDED": (
        "The units specified contain more precision than is allowed for the Order's instrument"
    ),
    "UNITS_LIMIT_EXCEEDED": "The units specified exceeds the maximum number of units allowed",
    "UNITS_MIMIMUM_NOT_MET": (
        "The units specified is less than the minimum number of units required"
    ),
    "PRICE_MISSING": "The price has not been specified",
    "PRICE_INVALID": "The price specified is invalid",
    "PRICE_PRECISION_EXCEEDED": (
        "The price specified contains more precision than is allowed for the instrument"
    ),
    "PRICE_BOUND_INVALID": "The price bound specified is invalid",
    "PRICE_BOUND_PRECISION_EXCEEDED": (
        "The price bound specified contains more precision than is allowed for the Order's "
        "instrument"
    ),
    "PRICE_DISTANCE_MISSING": "The price distance has not been specified",
    "PRICE_DISTANCE_INVALID": "The price distance specified is invalid",
    "TIME_IN_FORCE_INVALID": "The TimeInForce specified is invalid",
    "TIME_IN_FORCE_GTD_TIMESTAMP_MISSING": (
        "The TimeInForce is GTD but no GTD timestamp is provided"
    ),
    "TIME_IN_FORCE_GTD_TIMESTAMP_IN_PAST": (
        "The TimeInForce is GTD but the GTD timestamp is in the past"
    ),
    "ORDER_FILL_POSITION_ACTION_INVALID": "The OrderFillPositionAction specified is invalid",
    "TRIGGER_CONDITION_INVALID": "The TriggerCondition specified is invalid",
    "CLIENT_ORDER_ID_INVALID": "The client Order ID specified is invalid",
    "CLIENT_ORDER_ID_ALREADY_EXISTS": (
        "The client Order ID specified is already assigned to another pending Order"
    ),
    "CLIENT_TRADE_ID_ALREADY_EXISTS": (
        "The client Trade ID specified is already assigned to another open Trade"
    ),
    "ORDERS_ON_FILL_DUPLICATE_CLIENT_ORDER_IDS": (
        "Multiple Orders on fill share the same client Order ID"
    ),
    "ORDER_DOESNT_EXIST": "The Order specified does not exist",
    "TRADE_ID_UNSPECIFIED": "Neither the Trade ID nor client Trade ID are specified",
    "TRADE_DOESNT_EXIST": "The Trade specified does not exist",
    "TRADE_IDENTIFIER_INCONSISTENCY": (
        "The Trade ID and client Trade ID specified do not identify the same Trade"
    ),
    "REPLACING_ORDER_INVALID": (
        "The Order to be replaced has a different type than the replacing Order"
    ),
    "REPLACING_TRADE_ID_INVALID": (
        "The replacing Order refers to a different Trade than the Order being replaced"
    ),
    "TAKE_PROFIT_ORDER_ALREADY_EXISTS": (
        "A Take Profit Order for the specified Trade already exists"
    ),
    "STOP_LOSS_ORDER_ALREADY_EXISTS": "A Stop Loss Order for the specified Trade already exists",
    "TRAILING_STOP_LOSS_ORDER_ALREADY_EXISTS": (
        "A Trailing Stop Loss Order for the specified Trade already exists"
    ),
    "CLOSE_TRADE_UNITS_EXCEED_TRADE_SIZE": (
        "The units specified exceed the current size of the Trade to close"
    ),
    "CLOSEOUT_POSITION_DOESNT_EXIST": "The Position requested to be closed out does not exist",
    "CLOSEOUT_POSITION_UNITS_EXCEED_POSITION_SIZE": (
        "The number of units specified for the Position closeout exceeds the Position's size"
    ),
    "CLOSEOUT_POSITION_INCOMPLETE_SPECIFICATION": (
        "The request to closeout a Position was specified incompletely"
    ),
}

# ---------------------------------------------------------------------------
# scalars


def wall_ns() -> int:
    """Wall-clock UTC now, in nanoseconds since the Unix epoch."""
    return time.time_ns()


def format_time(ns: int) -> str:
    """A v20 RFC 3339 time: UTC, nine fractional digits, ``Z``."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{fraction:09d}Z"


def unix_time(ns: int) -> str:
    """A v20 UNIX time: seconds since the epoch as a string with nine decimals."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return f"{seconds}.{fraction:09d}"


_RFC3339: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})", re.IGNORECASE
)
_UNIX: Final = re.compile(r"(\d+)(?:\.(\d{1,9}))?")


def parse_time(text: str) -> int | None:
    """An RFC 3339 or UNIX v20 DateTime as nanoseconds since the epoch; None if neither."""
    text = text.strip()
    unix = _UNIX.fullmatch(text)
    if unix:
        return int(unix[1]) * 1_000_000_000 + int((unix[2] or "").ljust(9, "0"))
    match = _RFC3339.fullmatch(text)
    if not match:
        return None
    zone = "+00:00" if match[3].upper() == "Z" else match[3]
    try:
        moment = datetime.fromisoformat(match[1] + zone)
    except ValueError:
        return None
    seconds = int(moment.timestamp())
    return seconds * 1_000_000_000 + int((match[2] or "").ljust(9, "0"))


def to_decimal(value: Any) -> Decimal | None:
    """A finite Decimal from a v20 decimal string (or a JSON number); None otherwise."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        number = Decimal(value) if isinstance(value, str) else Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def decimal_places(value: Decimal) -> int:
    """Decimal places ``value`` needs once trailing zeros are dropped (``1.20`` -> 1)."""
    exponent = value.normalize().as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def fixed(value: Decimal, places: int) -> str:
    """``value`` with exactly ``places`` decimals (half even), never ``-0``."""
    quantized = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
    if quantized == 0:
        quantized = abs(quantized)
    return f"{quantized:f}"


def money(value: Decimal) -> str:
    """An account-currency amount as v20 writes it (four decimals)."""
    return fixed(value, 4)


def factor_text(value: Decimal) -> str:
    """A conversion factor as text (up to ten decimals, no trailing zeros)."""
    text = fixed(value, 10).rstrip("0").rstrip(".")
    return text or "0"


def _convert_times(value: Any) -> Any:
    """``value`` (decoded v20 JSON) with its RFC 3339 times rewritten as UNIX times."""
    if isinstance(value, dict):
        result: JSON = {}
        for key, item in value.items():
            if key in TIME_KEYS and isinstance(item, str) and item.endswith("Z"):
                ns = parse_time(item)
                result[key] = unix_time(ns) if ns is not None else item
            else:
                result[key] = _convert_times(item)
        return result
    if isinstance(value, list):
        return [_convert_times(item) for item in value]
    return value


def _client_id(data: Mapping[str, Any] | None) -> str | None:
    """The ``clientExtensions.id`` of an order (or trade, transaction), if any."""
    if not isinstance(data, Mapping):
        return None
    extensions = data.get("clientExtensions")
    if isinstance(extensions, Mapping) and isinstance(extensions.get("id"), str):
        return str(extensions["id"])
    return None


# ---------------------------------------------------------------------------
# instruments


@dataclass(frozen=True)
class FakeInstrument:
    """One tradeable instrument of the fake account and its opening quote.

    The fields are the v20 Instrument's (``display_precision`` is the number
    of price decimals, ``trade_units_precision`` the number of units
    decimals); ``bid`` and ``ask`` are the first price, ``liquidity`` the
    size shown in each price bucket.
    """

    name: str
    type: str = "CURRENCY"
    display_name: str = ""
    pip_location: int = -4
    display_precision: int = 5
    trade_units_precision: int = 0
    minimum_trade_size: Decimal = Decimal(1)
    maximum_order_units: Decimal = Decimal(100_000_000)
    maximum_position_size: Decimal = Decimal(0)
    margin_rate: Decimal = Decimal("0.0333")
    minimum_trailing_stop_distance: Decimal = Decimal("0.0005")
    maximum_trailing_stop_distance: Decimal = Decimal(1)
    bid: Decimal = Decimal("1.08494")
    ask: Decimal = Decimal("1.08506")
    liquidity: int = 10_000_000

    @property
    def base(self) -> str:
        return self.name.partition("_")[0]

    @property
    def quote(self) -> str:
        return self.name.partition("_")[2]

    def price_text(self, value: Decimal) -> str:
        """A price of this instrument as v20 text (display precision)."""
        return fixed(value, self.display_precision)

    def units_text(self, value: Decimal) -> str:
        """Units of this instrument as v20 text (trade units precision)."""
        return fixed(value, self.trade_units_precision)

    def to_json(self) -> JSON:
        """The v20 Instrument object."""
        return {
            "name": self.name,
            "type": self.type,
            "displayName": self.display_name or self.name.replace("_", "/"),
            "pipLocation": self.pip_location,
            "displayPrecision": self.display_precision,
            "tradeUnitsPrecision": self.trade_units_precision,
            "minimumTradeSize": self.units_text(self.minimum_trade_size),
            "maximumTrailingStopDistance": self.price_text(self.maximum_trailing_stop_distance),
            "minimumTrailingStopDistance": self.price_text(self.minimum_trailing_stop_distance),
            "maximumPositionSize": self.units_text(self.maximum_position_size),
            "maximumOrderUnits": self.units_text(self.maximum_order_units),
            "marginRate": str(self.margin_rate),
        }


DEFAULT_INSTRUMENTS: Final = (
    FakeInstrument("EUR_USD", bid=Decimal("1.08494"), ask=Decimal("1.08506")),
    FakeInstrument("GBP_USD", bid=Decimal("1.26992"), ask=Decimal("1.27008")),
    FakeInstrument(
        "USD_JPY",
        pip_location=-2,
        display_precision=3,
        minimum_trailing_stop_distance=Decimal("0.05"),
        maximum_trailing_stop_distance=Decimal(100),
        bid=Decimal("149.993"),
        ask=Decimal("150.007"),
    ),
    FakeInstrument(
        "XAU_USD",
        type="METAL",
        display_name="Gold",
        pip_location=-2,
        display_precision=3,
        maximum_order_units=Decimal(50_000),
        margin_rate=Decimal("0.05"),
        minimum_trailing_stop_distance=Decimal("0.05"),
        maximum_trailing_stop_distance=Decimal(1000),
        bid=Decimal("1999.825"),
        ask=Decimal("2000.175"),
        liquidity=1000,
    ),
    FakeInstrument(
        "SPX500_USD",
        type="CFD",
        display_name="US SPX 500",
        pip_location=0,
        display_precision=1,
        trade_units_precision=1,
        minimum_trade_size=Decimal("0.1"),
        maximum_order_units=Decimal(5000),
        margin_rate=Decimal("0.05"),
        minimum_trailing_stop_distance=Decimal(5),
        maximum_trailing_stop_distance=Decimal(10_000),
        bid=Decimal("4999.7"),
        ask=Decimal("5000.3"),
        liquidity=500,
    ),
)
"""EUR_USD, GBP_USD, USD_JPY (margin 0.0333), XAU_USD and SPX500_USD (margin 0.05)."""


# ---------------------------------------------------------------------------
# internal state


@dataclass
class _Quote:
    bid: Decimal
    ask: Decimal
    ns: int

    @property
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / 2


@dataclass
class _Trade:
    """An open or closed trade (rendered to v20 JSON on demand)."""

    id: str
    instrument: str
    price: Decimal
    open_time: str
    initial_units: Decimal
    initial_margin: Decimal
    client_extensions: JSON | None
    current_units: Decimal = Decimal(0)
    state: str = "OPEN"
    realized_pl: Decimal = Decimal(0)
    closed_units: Decimal = Decimal(0)
    closed_value: Decimal = Decimal(0)
    closing_ids: list[str] = field(default_factory=list)
    close_time: str | None = None
    dependents: dict[str, str] = field(default_factory=dict)
    """Pending dependent order ids by type (TAKE_PROFIT, STOP_LOSS, TRAILING_STOP_LOSS)."""

    @property
    def client_id(self) -> str | None:
        extensions = self.client_extensions
        if extensions and isinstance(extensions.get("id"), str):
            return str(extensions["id"])
        return None


@dataclass
class _Batch:
    """The transactions one action makes (one batchID, one time)."""

    request_id: str | None
    ns: int
    time: str
    first: str | None = None
    ids: list[str] = field(default_factory=list)


@dataclass
class _Failure:
    remaining: int
    status: int
    path_contains: str
    retry_after: float | None


class _Stream:
    """One open stream connection: what it still has to send, and its faults."""

    def __init__(self, kind: str, instruments: Sequence[str], unix: bool) -> None:
        self.kind = kind
        self.instruments = tuple(instruments)
        self.unix = unix
        self.outbox: dict[str, JSON] = {}
        """Messages not yet written, in order; pricing keeps the newest per instrument."""
        self.stalled = False
        self.drop: str | None = None
        """None, or "clean" / "mid_line": close the connection at the next chance."""
        self._event = trio.Event()

    def push(self, key: str, message: JSON) -> None:
        self.outbox.pop(key, None)
        self.outbox[key] = message
        self.poke()

    def take(self) -> JSON | None:
        if not self.outbox:
            return None
        key = next(iter(self.outbox))
        return self.outbox.pop(key)

    def poke(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def changed(self) -> None:
        await self._event.wait()


@dataclass
class _Incoming:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _Context:
    """What a handler knows of its request."""

    method: str
    query: dict[str, str]
    body: bytes
    request_id: str
    unix: bool


@dataclass
class _Answer:
    status: int
    body: JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _StreamAnswer:
    kind: str
    instruments: tuple[str, ...] = ()
    snapshot: bool = True
    request_id: str = ""


class _Hold:
    """Answer nothing: keep the request open until the client goes away."""


_HOLD: Final = _Hold()

_Outcome = _Answer | _StreamAnswer | _Hold


class _Fail(Exception):
    """Answer the request with ``status`` and ``body`` (a v20 error)."""

    def __init__(self, status: int, body: JSON | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body if body is not None else {"errorMessage": STATUS_MESSAGES[status]}


class _Reject(Exception):
    """An order request refused with a TransactionRejectReason."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _invalid(name: str) -> _Fail:
    return _Fail(400, {"errorMessage": f"Invalid value specified for '{name}'"})


# ---------------------------------------------------------------------------
# the server


class FakeV20:
    """A loopback OANDA v20 server with one account. See the module documentation.

    Start it in a nursery: ``fake = await nursery.start(FakeV20().serve)``;
    then :attr:`url` is the base URL for both REST and streams.

    Introspection:

    - :attr:`requests`: ``(method, target)`` of every request received, the
      target percent-decoded with its query (``/v3/accounts/.../orders/@id``).
    - :attr:`transactions`: every transaction (decoded v20 JSON), in id order.
    - :attr:`orders`: every v20 Order object by id (live: updated as orders
      fill or cancel), market and dependent orders included.
    - :attr:`trades`: every v20 Trade object by id, rendered now.
    - :attr:`stream_connections`: stream connections opened per kind.
    - :attr:`connections`: TCP connections accepted.
    - :attr:`errors`: exceptions the fake raised while handling a request
      (answered 500); a test can assert it stays empty.
    """

    def __init__(
        self,
        *,
        token: str = "fake-token",
        account_id: str = "101-004-1234567-001",
        currency: str = "USD",
        balance: Decimal = Decimal(100_000),
        instruments: Sequence[FakeInstrument] | None = None,
        heartbeat: float = 5.0,
        price_interval: float = 0.25,
        seed: int = 1,
    ) -> None:
        self.token = token
        self.account_id = account_id
        self.currency = currency
        self.heartbeat = heartbeat
        """Seconds between HEARTBEAT lines on each stream (0 or less: none)."""
        self.price_interval = price_interval
        """Seconds between random-walk ticks while a pricing stream is open (0 or less: none)."""
        self.instruments: dict[str, FakeInstrument] = {
            i.name: i for i in (DEFAULT_INSTRUMENTS if instruments is None else instruments)
        }
        self.port = 0
        self.url = ""
        self.requests: list[tuple[str, str]] = []
        self.transactions: list[JSON] = []
        self.orders: dict[str, JSON] = {}
        self.stream_connections: dict[str, int] = {"pricing": 0, "transactions": 0}
        self.connections = 0
        self.errors: list[BaseException] = []

        self._rng = random.Random(seed)
        self._request_ids = iter(range(self._rng.randrange(10**16, 9 * 10**16), 10**18))
        self._user_id = _user_id(account_id)
        self._created_ns = wall_ns()
        self._balance = Decimal(0)
        self._pl = Decimal(0)
        self._last_fill_time: str | None = None
        self._quotes = {
            name: _Quote(i.bid, i.ask, self._created_ns) for name, i in self.instruments.items()
        }
        self._trades: dict[str, _Trade] = {}
        self._tx_ns: list[int] = []
        self._batch: _Batch | None = None
        self._stop_levels: dict[str, Decimal] = {}
        """Trigger prices of stop loss orders given as a distance."""
        self._deadlines: dict[str, float] = {}
        """trio deadlines of pending GTD orders, by order id."""
        self._deadlines_changed = trio.Event()
        self._streams: list[_Stream] = []
        self._streams_changed = trio.Event()
        self._failures: list[_Failure] = []
        self._order_rejects: list[str] = []
        self._order_cancels: list[str] = []
        self._swallow = 0
        self._routes = self._route_table()

        with self._batch_of(None):
            site, division, user, number = _account_parts(account_id)
            self._emit(
                "CREATE",
                {
                    "divisionID": division,
                    "siteID": site,
                    "accountUserID": user,
                    "accountNumber": number,
                    "homeCurrency": currency,
                },
            )
            if balance:
                self._balance = Decimal(balance)
                self._emit(
                    "TRANSFER_FUNDS",
                    {
                        "amount": money(self._balance),
                        "fundingReason": "CLIENT_FUNDING",
                        "accountBalance": money(self._balance),
                    },
                )

    def __repr__(self) -> str:
        return f"FakeV20(url={self.url!r}, account_id={self.account_id!r})"

    # -- serving -------------------------------------------------------------

    async def serve(
        self,
        *,
        port: int = 0,
        task_status: trio.TaskStatus[FakeV20] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``127.0.0.1:port`` (0: any free port) and serve until cancelled.

        Reports this server through ``task_status`` once :attr:`url` is set.
        """
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        self.port = int(listeners[0].socket.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._random_walk)
                nursery.start_soon(self._expire_orders)
                await nursery.start(trio.serve_listeners, self._connection, listeners)
                task_status.started(self)
        finally:
            for listener in listeners:
                with trio.CancelScope(shield=True):
                    await listener.aclose()

    async def _connection(self, sock: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                try:
                    incoming = await self._receive(conn, sock)
                except h11.RemoteProtocolError:
                    await self._bad_request(conn, sock)
                    return
                if incoming is None:
                    return
                outcome = self._handle(incoming)
                if isinstance(outcome, _StreamAnswer):
                    await self._stream(conn, sock, outcome, incoming)
                    return
                if isinstance(outcome, _Hold):
                    await self._hold(sock)
                    return
                await self._respond(conn, sock, outcome, incoming)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(sock)

    @staticmethod
    async def _receive(conn: h11.Connection, sock: trio.SocketStream) -> _Incoming | None:
        """The next whole request on the connection; None once the client closed it."""
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await sock.receive_some(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                headers = {
                    name.decode("latin-1").lower(): value.decode("latin-1")
                    for name, value in request.headers
                }
                return _Incoming(
                    request.method.decode("ascii"),
                    request.target.decode("latin-1"),
                    headers,
                    bytes(body),
                )
            else:  # ConnectionClosed (PAUSED cannot happen: one request at a time)
                return None

    @staticmethod
    async def _send(conn: h11.Connection, sock: trio.SocketStream, event: h11.Event) -> None:
        data = conn.send(event)
        if data:
            await sock.send_all(data)

    def _headers(self, request_id: str) -> list[tuple[str, str]]:
        return [("Content-Type", "application/json"), ("RequestID", request_id)]

    async def _respond(
        self, conn: h11.Connection, sock: trio.SocketStream, answer: _Answer, incoming: _Incoming
    ) -> None:
        body = answer.body
        if _wants_unix(incoming.headers):
            body = _convert_times(body)
        payload = json.dumps(body).encode()
        headers = [
            *answer.headers,
            ("Content-Length", str(len(payload))),
        ]
        await self._send(
            conn,
            sock,
            h11.Response(
                status_code=answer.status, headers=headers, reason=HTTPStatus(answer.status).phrase
            ),
        )
        await self._send(conn, sock, h11.Data(data=payload))
        await self._send(conn, sock, h11.EndOfMessage())

    async def _bad_request(self, conn: h11.Connection, sock: trio.SocketStream) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        payload = json.dumps({"errorMessage": "Malformed HTTP request"}).encode()
        headers = [
            *self._headers(self._next_request_id()),
            ("Content-Length", str(len(payload))),
            ("Connection", "close"),
        ]
        try:
            await self._send(
                conn, sock, h11.Response(status_code=400, headers=headers, reason=b"Bad Request")
            )
            await self._send(conn, sock, h11.Data(data=payload))
            await self._send(conn, sock, h11.EndOfMessage())
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    @staticmethod
    async def _hold(sock: trio.SocketStream) -> None:
        """Keep a swallowed request open until the client closes its connection."""
        try:
            while await sock.receive_some(4096):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _stream(
        self,
        conn: h11.Connection,
        sock: trio.SocketStream,
        answer: _StreamAnswer,
        incoming: _Incoming,
    ) -> None:
        stream = _Stream(answer.kind, answer.instruments, _wants_unix(incoming.headers))
        self._open_stream(stream, snapshot=answer.snapshot)
        try:
            # No Content-Length: h11 sends the body chunked (HTTP/1.1).
            await self._send(
                conn, sock, h11.Response(status_code=200, headers=self._headers(answer.request_id))
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_for_close, sock, nursery.cancel_scope)
                await self._pump(conn, sock, stream)
                nursery.cancel_scope.cancel()
        finally:
            self._close_stream(stream)

    @staticmethod
    async def _watch_for_close(sock: trio.SocketStream, scope: trio.CancelScope) -> None:
        try:
            while await sock.receive_some(4096):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    def _heartbeat_message(self, kind: str) -> JSON:
        now = format_time(wall_ns())
        if kind == "transactions":
            return {"type": "HEARTBEAT", "lastTransactionID": self.last_transaction_id, "time": now}
        return {"type": "HEARTBEAT", "time": now}

    @staticmethod
    def _line(stream: _Stream, message: JSON) -> bytes:
        if stream.unix:
            message = _convert_times(message)
        return (json.dumps(message, separators=(",", ":")) + "\n").encode()

    async def _pump(self, conn: h11.Connection, sock: trio.SocketStream, stream: _Stream) -> None:
        """Write the stream's lines and heartbeats until it is dropped (or cancelled)."""
        interval = self.heartbeat if self.heartbeat > 0 else float("inf")
        beat_at = trio.current_time() + interval
        while True:
            if stream.drop is not None:
                if stream.drop == "mid_line":
                    last = stream.take() or self._heartbeat_message(stream.kind)
                    line = self._line(stream, last)
                    await self._send(conn, sock, h11.Data(data=line[: max(1, len(line) // 2)]))
                return
            if stream.stalled:
                await stream.changed()
                beat_at = trio.current_time() + interval
                continue
            message = stream.take()
            if message is not None:
                await self._send(conn, sock, h11.Data(data=self._line(stream, message)))
                continue
            now = trio.current_time()
            if now >= beat_at:
                beat = self._heartbeat_message(stream.kind)
                await self._send(conn, sock, h11.Data(data=self._line(stream, beat)))
                beat_at = max(beat_at + interval, now)
                continue
            with trio.move_on_at(beat_at):
                await stream.changed()

    def _open_stream(self, stream: _Stream, *, snapshot: bool) -> None:
        self.stream_connections[stream.kind] = self.stream_connections.get(stream.kind, 0) + 1
        self._streams.append(stream)
        if stream.kind == "pricing" and snapshot:
            for name in stream.instruments:
                stream.push(name, self._price_json(name))
        self._streams_changed.set()
        self._streams_changed = trio.Event()

    def _close_stream(self, stream: _Stream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)
        self._streams_changed.set()
        self._streams_changed = trio.Event()

    def _open_streams(self, kind: str | None) -> list[_Stream]:
        if kind not in (None, "pricing", "transactions"):
            raise ValueError(f'stream kind must be "pricing", "transactions" or None, not {kind!r}')
        return [s for s in self._streams if kind is None or s.kind == kind]

    # -- request dispatch ----------------------------------------------------

    def _next_request_id(self) -> str:
        return str(next(self._request_ids))

    def _handle(self, incoming: _Incoming) -> _Outcome:
        """Answer one request (synchronously: the account changes atomically)."""
        request_id = self._next_request_id()
        path, _, query_text = incoming.target.partition("?")
        shown = unquote(path) + (f"?{unquote(query_text)}" if query_text else "")
        self.requests.append((incoming.method, shown))
        try:
            outcome = self._dispatch(incoming, path, query_text, shown, request_id)
        except _Fail as fail:
            outcome = _Answer(fail.status, fail.body)
        except Exception as exc:  # a bug in the fake: answer 500 and keep it for the test
            self.errors.append(exc)
            outcome = _Answer(500, {"errorMessage": f"fake v20 error: {type(exc).__name__}: {exc}"})
        if isinstance(outcome, _Answer):
            outcome.headers[:0] = self._headers(request_id)
        elif isinstance(outcome, _StreamAnswer):
            outcome.request_id = request_id
        return outcome

    def _dispatch(
        self, incoming: _Incoming, path: str, query_text: str, shown: str, request_id: str
    ) -> _Outcome:
        failure = self._take_failure(shown)
        if failure is not None:
            answer = _Answer(failure.status, {"errorMessage": _status_message(failure.status)})
            if failure.retry_after is not None:
                answer.headers.append(("Retry-After", f"{failure.retry_after:g}"))
            return answer
        scheme, _, credential = incoming.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or credential.strip() != self.token:
            raise _Fail(401)
        segments = [unquote(s) for s in path.split("/")]
        if segments[:3] != ["", "v3", "accounts"]:
            raise _Fail(404, {"errorMessage": f"The path {unquote(path)} was not found"})
        if len(segments) == 3:
            if incoming.method != "GET":
                raise _Fail(405)
            return _Answer(200, {"accounts": [{"id": self.account_id, "tags": []}]})
        if segments[3] != self.account_id:
            raise _Fail(403)
        rest = tuple(segments[4:])
        for pattern, methods in self._routes:
            if len(pattern) != len(rest):
                continue
            if not all(p == "*" or p == s for p, s in zip(pattern, rest, strict=True)):
                continue
            handler = methods.get(incoming.method)
            if handler is None:
                allowed = ", ".join(sorted(methods))
                raise _Fail(
                    405,
                    {"errorMessage": f"Method {incoming.method} not allowed (use {allowed})"},
                )
            args = [s for p, s in zip(pattern, rest, strict=True) if p == "*"]
            query = {k: v[0] for k, v in parse_qs(query_text, keep_blank_values=True).items()}
            context = _Context(
                incoming.method, query, incoming.body, request_id, _wants_unix(incoming.headers)
            )
            return handler(context, *args)
        raise _Fail(404, {"errorMessage": f"The path {unquote(path)} was not found"})

    def _route_table(self) -> list[tuple[tuple[str, ...], dict[str, Callable[..., _Outcome]]]]:
        return [
            ((), {"GET": self._get_account}),
            (("summary",), {"GET": self._get_summary}),
            (("instruments",), {"GET": self._get_instruments}),
            (("pricing",), {"GET": self._get_pricing}),
            (("pricing", "stream"), {"GET": self._pricing_stream}),
            (("transactions",), {"GET": self._get_transactions}),
            (("transactions", "stream"), {"GET": self._transactions_stream}),
            (("transactions", "idrange"), {"GET": self._get_idrange}),
            (("transactions", "sinceid"), {"GET": self._get_sinceid}),
            (("transactions", "*"), {"GET": self._get_transaction}),
            (("orders",), {"GET": self._list_orders, "POST": self._post_order}),
            (("pendingOrders",), {"GET": self._pending_orders}),
            (("orders", "*"), {"GET": self._get_order, "PUT": self._replace_order}),
            (("orders", "*", "cancel"), {"PUT": self._cancel_order}),
            (("trades",), {"GET": self._list_trades}),
            (("openTrades",), {"GET": self._open_trades}),
            (("trades", "*"), {"GET": self._get_trade}),
            (("trades", "*", "close"), {"PUT": self._close_trade}),
            (("trades", "*", "orders"), {"PUT": self._set_trade_orders}),
            (("positions",), {"GET": self._list_positions}),
            (("openPositions",), {"GET": self._open_positions}),
            (("positions", "*"), {"GET": self._get_position}),
            (("positions", "*", "close"), {"PUT": self._close_position}),
        ]

    def _take_failure(self, shown: str) -> _Failure | None:
        for failure in self._failures:
            if failure.path_contains in shown:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
                return failure
        return None

    @staticmethod
    def _json_body(context: _Context, *, required: bool = True) -> JSON:
        if not context.body.strip():
            if required:
                raise _Fail(400)
            return {}
        try:
            body = json.loads(context.body)
        except ValueError:
            raise _Fail(400, {"errorMessage": "The request body is not valid JSON"}) from None
        if not isinstance(body, dict):
            raise _Fail(400, {"errorMessage": "The request body must be a JSON object"})
        return body

    def _ok(self, body: JSON, status: int = 200) -> _Answer:
        body["lastTransactionID"] = self.last_transaction_id
        return _Answer(status, body)

    # -- test controls -------------------------------------------------------

    def set_price(self, instrument: str, bid: Decimal | str, ask: Decimal | str) -> None:
        """Quote ``instrument`` at ``bid`` / ``ask`` now.

        Pricing streams get the new price; pending orders and trade orders the
        price reaches fill (their transactions are made at once and streamed).
        """
        info = self._instrument_or_raise(instrument)
        new_bid, new_ask = Decimal(bid), Decimal(ask)
        if not (0 < new_bid <= new_ask):
            raise ValueError(f"need 0 < bid <= ask, got bid {bid} and ask {ask}")
        for value in (new_bid, new_ask):
            if decimal_places(value) > info.display_precision:
                raise ValueError(
                    f"{value} has more decimals than {instrument}'s display precision "
                    f"({info.display_precision})"
                )
        self._quotes[instrument] = _Quote(new_bid, new_ask, wall_ns())
        self._price_changed(instrument)

    def price(self, instrument: str) -> tuple[Decimal, Decimal]:
        """The current ``(bid, ask)`` of ``instrument``."""
        self._instrument_or_raise(instrument)
        quote = self._quotes[instrument]
        return quote.bid, quote.ask

    def stall_streams(self, kind: str | None = None) -> None:
        """Make the open streams of ``kind`` ("pricing", "transactions", None: both)
        send nothing at all, not even heartbeats, until :meth:`resume_streams`.

        Streams opened later are not stalled. A stalled transactions stream
        keeps its transactions and sends them, in order, on resume; a stalled
        pricing stream keeps the newest price of each instrument.
        """
        for stream in self._open_streams(kind):
            stream.stalled = True
            stream.poke()

    def resume_streams(self, kind: str | None = None) -> None:
        """Let stalled streams of ``kind`` send again (what they kept first)."""
        for stream in self._open_streams(kind):
            stream.stalled = False
            stream.poke()

    def drop_streams(self, kind: str | None = None, *, mid_line: bool = False) -> None:
        """Close the open stream connections of ``kind`` abruptly (no final chunk).

        With ``mid_line``, each first sends the first half of a JSON line (its
        next message, or a heartbeat). Nothing is lost at the server: the
        transactions stay in the REST history.
        """
        for stream in self._open_streams(kind):
            stream.drop = "mid_line" if mid_line else "clean"
            stream.poke()

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 429,
        path_contains: str = "",
        retry_after: float | None = None,
    ) -> None:
        """Answer the next ``count`` requests whose target contains ``path_contains``
        with ``status`` and a v20 error body, before anything else is checked.

        The body is ``{"errorMessage": ...}`` only (our choice: OANDA documents a
        429 but not its body); ``Retry-After`` is sent only if ``retry_after`` is
        given. Targets are matched percent-decoded, query included.
        """
        if count > 0:
            self._failures.append(_Failure(count, status, path_contains, retry_after))

    def reject_next_order(self, reason: str = "INSUFFICIENT_MARGIN", *, count: int = 1) -> None:
        """Refuse the next ``count`` order creates (POST /orders): 400 with a
        ``*_ORDER_REJECT`` transaction with ``rejectReason`` ``reason``, and
        ``errorCode`` ``reason``."""
        self._order_rejects.extend([reason] * count)

    def cancel_next_order(self, reason: str = "MARKET_HALTED") -> None:
        """Accept the next order create (POST /orders) and cancel it at once:
        201 with the create transaction and an ORDER_CANCEL with ``reason``."""
        self._order_cancels.append(reason)

    def swallow_next_order(self, count: int = 1) -> None:
        """Process the next ``count`` order creates (POST /orders) in full, but
        never answer them: each request stays open until the client closes its
        connection or the server stops."""
        self._swallow += count

    # -- introspection -------------------------------------------------------

    def count(self, method: str, path_contains: str) -> int:
        """How many ``method`` requests had a target containing ``path_contains``."""
        return sum(1 for m, t in self.requests if m == method.upper() and path_contains in t)

    @property
    def trades(self) -> dict[str, JSON]:
        """Every trade as a v20 Trade object (rendered now), by id."""
        return {trade_id: self._trade_json(t) for trade_id, t in self._trades.items()}

    @property
    def last_transaction_id(self) -> str:
        return str(len(self.transactions))

    @property
    def balance(self) -> Decimal:
        return self._balance

    def order(self, specifier: str) -> JSON | None:
        """The v20 Order with this id, or the newest with ``@<client id>``."""
        return self._find_order(specifier)

    def trade(self, specifier: str) -> JSON | None:
        """The v20 Trade with this id, or the newest with ``@<client trade id>``."""
        found = self._find_trade(specifier)
        return None if found is None else self._trade_json(found)

    def open_streams(self, kind: str | None = None) -> int:
        """How many streams of ``kind`` are open now."""
        return len(self._open_streams(kind))

    def account_summary(self) -> JSON:
        """The v20 AccountSummary now."""
        return self._summary_json()

    # -- account arithmetic --------------------------------------------------

    def _instrument_or_raise(self, name: str) -> FakeInstrument:
        found = self.instruments.get(name)
        if found is None:
            raise KeyError(f"{name} is not an instrument of the fake account")
        return found

    def _factor(self, currency: str) -> Decimal:
        """The account-currency value of one unit of ``currency``, at mid prices
        (via USD if no pair links them directly; 1 if none does)."""
        home = self.currency
        if currency == home:
            return Decimal(1)
        direct = self._quotes.get(f"{currency}_{home}")
        if direct is not None:
            return direct.mid
        inverse = self._quotes.get(f"{home}_{currency}")
        if inverse is not None:
            return 1 / inverse.mid
        if "USD" not in (currency, home):
            via = self._factor_between(currency, "USD")
            onward = self._factor_between("USD", home)
            if via is not None and onward is not None:
                return via * onward
        return Decimal(1)

    def _factor_between(self, source: str, target: str) -> Decimal | None:
        direct = self._quotes.get(f"{source}_{target}")
        if direct is not None:
            return direct.mid
        inverse = self._quotes.get(f"{target}_{source}")
        if inverse is not None:
            return 1 / inverse.mid
        return None

    def _trade_unrealized(self, trade: _Trade) -> Decimal:
        if trade.state != "OPEN":
            return Decimal(0)
        quote = self._quotes[trade.instrument]
        close = quote.bid if trade.current_units > 0 else quote.ask
        info = self.instruments[trade.instrument]
        return (close - trade.price) * trade.current_units * self._factor(info.quote)

    def _trade_margin(self, trade: _Trade) -> Decimal:
        if trade.state != "OPEN":
            return Decimal(0)
        info = self.instruments[trade.instrument]
        value = abs(trade.current_units) * self._quotes[trade.instrument].mid
        return value * info.margin_rate * self._factor(info.quote)

    def _trade_value(self, trade: _Trade) -> Decimal:
        if trade.state != "OPEN":
            return Decimal(0)
        info = self.instruments[trade.instrument]
        return (
            abs(trade.current_units) * self._quotes[trade.instrument].mid * self._factor(info.quote)
        )

    def _open_trades_list(self) -> list[_Trade]:
        return [t for t in self._trades.values() if t.state == "OPEN"]

    def _margin_available(self) -> Decimal:
        trades = self._open_trades_list()
        nav = self._balance + sum((self._trade_unrealized(t) for t in trades), Decimal(0))
        used = sum((self._trade_margin(t) for t in trades), Decimal(0))
        return max(nav - used, Decimal(0))

    # -- transactions --------------------------------------------------------

    @contextmanager
    def _batch_of(self, request_id: str | None) -> Iterator[_Batch]:
        """Group the transactions made inside into one batch (nested: the outer one)."""
        if self._batch is not None:
            yield self._batch
            return
        ns = wall_ns()
        batch = _Batch(request_id, ns, format_time(ns))
        self._batch = batch
        try:
            yield batch
        finally:
            self._batch = None

    def _emit(self, kind: str, fields: JSON) -> JSON:
        """Record a transaction of the current batch and stream it."""
        batch = self._batch
        assert batch is not None, "transactions are made inside _batch_of"
        transaction_id = str(len(self.transactions) + 1)
        if batch.first is None:
            batch.first = transaction_id
        tx: JSON = {
            "id": transaction_id,
            "time": batch.time,
            "userID": self._user_id,
            "accountID": self.account_id,
            "batchID": batch.first,
        }
        if batch.request_id is not None:
            tx["requestID"] = batch.request_id
        tx["type"] = kind
        tx.update(fields)
        batch.ids.append(transaction_id)
        self.transactions.append(tx)
        self._tx_ns.append(batch.ns)
        for stream in self._streams:
            if stream.kind == "transactions":
                stream.push(transaction_id, tx)
        return tx

    def _answer_ids(self, batch: _Batch) -> JSON:
        return {
            "relatedTransactionIDs": list(batch.ids),
            "lastTransactionID": self.last_transaction_id,
        }

    # -- prices --------------------------------------------------------------

    def _price_json(self, name: str) -> JSON:
        info = self.instruments[name]
        quote = self._quotes[name]
        bid, ask = info.price_text(quote.bid), info.price_text(quote.ask)
        return {
            "type": "PRICE",
            "time": format_time(quote.ns),
            "bids": [{"price": bid, "liquidity": info.liquidity}],
            "asks": [{"price": ask, "liquidity": info.liquidity}],
            "closeoutBid": bid,
            "closeoutAsk": ask,
            "status": "tradeable",
            "tradeable": True,
            "instrument": name,
        }

    def _price_changed(self, name: str) -> None:
        message = self._price_json(name)
        for stream in self._streams:
            if stream.kind == "pricing" and name in stream.instruments:
                stream.push(name, message)
        self._match(name)

    async def _random_walk(self) -> None:
        """Move the subscribed instruments by one display step every
        ``price_interval`` seconds while any pricing stream is open."""
        if self.price_interval <= 0:
            return
        while True:
            if not any(s.kind == "pricing" for s in self._streams):
                await self._streams_changed.wait()
                continue
            await trio.sleep(self.price_interval)
            names = sorted({n for s in self._streams if s.kind == "pricing" for n in s.instruments})
            for name in names:
                info = self.instruments[name]
                step = Decimal(1).scaleb(-info.display_precision) * self._rng.choice((-1, 1))
                quote = self._quotes[name]
                if quote.bid + step <= 0:
                    step = abs(step)
                self._quotes[name] = _Quote(quote.bid + step, quote.ask + step, wall_ns())
                self._price_changed(name)

    def _trigger_price(self, buy: bool, condition: str, quote: _Quote) -> Decimal:
        if condition == "BID":
            return quote.bid
        if condition == "ASK":
            return quote.ask
        if condition == "MID":
            return quote.mid
        natural = quote.ask if buy else quote.bid
        inverse = quote.bid if buy else quote.ask
        return inverse if condition == "INVERSE" else natural

    def _order_instrument(self, order: JSON) -> str:
        if "instrument" in order:
            return str(order["instrument"])
        return self._trades[str(order["tradeID"])].instrument

    def _triggered(self, order: JSON) -> bool:
        """Whether the current price reaches pending ``order`` (and, for a
        trailing stop, move its trailing value with the price)."""
        kind = str(order["type"])
        condition = str(order.get("triggerCondition", "DEFAULT"))
        if kind in PENDING_ENTRY_TYPES:
            quote = self._quotes[str(order["instrument"])]
            buy = Decimal(order["units"]) > 0
            now = self._trigger_price(buy, condition, quote)
            level = Decimal(order["price"])
            if kind == "LIMIT":
                return now <= level if buy else now >= level
            if kind == "STOP":
                return now >= level if buy else now <= level
            initial = Decimal(order["initialMarketPrice"])  # MARKET_IF_TOUCHED
            return now <= level if initial >= level else now >= level
        trade = self._trades[str(order["tradeID"])]
        quote = self._quotes[trade.instrument]
        buy = trade.current_units < 0  # the order that closes the trade
        now = self._trigger_price(buy, condition, quote)
        if kind == "TAKE_PROFIT":
            level = Decimal(order["price"])
            return now <= level if buy else now >= level
        if kind == "STOP_LOSS":
            level = self._stop_levels.get(str(order["id"])) or Decimal(order["price"])
            return now >= level if buy else now <= level
        # TRAILING_STOP_LOSS: the stop follows the price, never backs off.
        info = self.instruments[trade.instrument]
        distance = Decimal(order["distance"])
        value = Decimal(order["trailingStopValue"])
        value = min(value, now + distance) if buy else max(value, now - distance)
        order["trailingStopValue"] = info.price_text(value)
        return now >= value if buy else now <= value

    def _match(self, name: str) -> None:
        """Fill every pending order of ``name`` the current price reaches."""
        done: set[str] = set()
        while True:
            found = None
            for order in list(self.orders.values()):
                if (
                    order["state"] == "PENDING"
                    and order["id"] not in done
                    and self._order_instrument(order) == name
                    and self._triggered(order)
                ):
                    found = order
                    break
            if found is None:
                return
            done.add(str(found["id"]))
            with self._batch_of(None):
                self._execute(found)

    def _execute(self, order: JSON) -> tuple[JSON | None, JSON | None]:
        """Fill a triggered pending order (entry or trade order)."""
        kind = str(order["type"])
        if kind in DEPENDENT_TYPES:
            trade = self._trades[str(order["tradeID"])]
            return self._fill(
                order, FILL_REASONS[kind], units=-trade.current_units, only_trade=trade
            )
        return self._fill(order, FILL_REASONS[kind])

    async def _expire_orders(self) -> None:
        """Cancel GTD orders at their gtdTime (reason TIME_IN_FORCE_EXPIRED)."""
        while True:
            changed = self._deadlines_changed
            if not self._deadlines:
                await changed.wait()
                continue
            with trio.move_on_at(min(self._deadlines.values())):
                await changed.wait()
            now = trio.current_time()
            for order_id, deadline in sorted(self._deadlines.items(), key=lambda kv: kv[1]):
                if deadline > now:
                    continue
                self._deadlines.pop(order_id, None)
                order = self.orders.get(order_id)
                if order is not None and order["state"] == "PENDING":
                    with self._batch_of(None):
                        self._cancel(order, "TIME_IN_FORCE_EXPIRED")

    def _schedule_expiry(self, order: JSON) -> None:
        if order.get("timeInForce") != "GTD" or "gtdTime" not in order:
            return
        ns = parse_time(str(order["gtdTime"]))
        if ns is None:
            return
        self._deadlines[str(order["id"])] = trio.current_time() + max(0, ns - wall_ns()) / 1e9
        self._deadlines_changed.set()
        self._deadlines_changed = trio.Event()

    # -- orders: lookup and rendering ------------------------------------------

    def _find_order(self, specifier: str) -> JSON | None:
        if specifier.startswith("@"):
            wanted = specifier[1:]
            for order in reversed(self.orders.values()):
                if _client_id(order) == wanted:
                    return order
            return None
        return self.orders.get(specifier)

    def _find_trade(self, specifier: str) -> _Trade | None:
        if specifier.startswith("@"):
            wanted = specifier[1:]
            for trade in reversed(self._trades.values()):
                if trade.client_id == wanted:
                    return trade
            return None
        return self._trades.get(specifier)

    def _order_from(self, tx: JSON, kind: str) -> JSON:
        """Store the v20 Order a create transaction made."""
        order: JSON = {"id": tx["id"], "createTime": tx["time"], "type": kind}
        for key, value in tx.items():
            if key in COMMON_TRANSACTION_FIELDS or key in ("reason", "orderFillTransactionID"):
                continue
            order[key] = copy.deepcopy(value)
        order["state"] = "PENDING"
        self.orders[str(tx["id"])] = order
        return order

    def _pending_client_ids(self, exclude: str | None = None) -> set[str]:
        ids = set()
        for order in self.orders.values():
            if order["state"] == "PENDING" and order["id"] != exclude:
                client = _client_id(order)
                if client is not None:
                    ids.add(client)
        return ids

    # -- orders: validation ----------------------------------------------------

    def _time_in_force(self, kind: str, value: Any, gtd: Any, prefix: str = "") -> JSON:
        """The validated timeInForce (and gtdTime) of a request or details."""
        tif = "FOK" if kind == "MARKET" and not prefix else "GTC"
        if value is not None:
            tif = value
        if tif not in ALLOWED_TIME_IN_FORCE[kind]:
            raise _Reject(f"{prefix}TIME_IN_FORCE_INVALID")
        result: JSON = {"timeInForce": tif}
        if tif == "GTD":
            if gtd is None:
                raise _Reject(
                    f"{prefix}GTD_TIMESTAMP_MISSING"
                    if prefix
                    else "TIME_IN_FORCE_GTD_TIMESTAMP_MISSING"
                )
            ns = parse_time(str(gtd)) if isinstance(gtd, str) else None
            if ns is None:
                raise _Reject(
                    f"{prefix}GTD_TIMESTAMP_MISSING"
                    if prefix
                    else "TIME_IN_FORCE_GTD_TIMESTAMP_MISSING"
                )
            if ns <= wall_ns():
                raise _Reject(
                    f"{prefix}GTD_TIMESTAMP_IN_PAST"
                    if prefix
                    else "TIME_IN_FORCE_GTD_TIMESTAMP_IN_PAST"
                )
            result["gtdTime"] = format_time(ns)
        return result

    @staticmethod
    def _check_price(value: Any, info: FakeInstrument, names: Mapping[str, str]) -> Decimal:
        if value is None:
            raise _Reject(names["missing"])
        number = to_decimal(value)
        if number is None or number <= 0:
            raise _Reject(names["invalid"])
        if decimal_places(number) > info.display_precision:
            raise _Reject(names["precision"])
        return number

    @staticmethod
    def _check_extensions(value: Any, reason: str) -> JSON | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _Reject(reason)
        for key in ("id", "tag", "comment"):
            if key in value and not isinstance(value[key], str):
                raise _Reject(reason)
        if len(str(value.get("id", ""))) > 128:
            raise _Reject(reason)
        return copy.deepcopy(value)

    def _entry_fields(self, kind: str, request: JSON, *, replacing: JSON | None) -> JSON:
        """The create-transaction fields of an entry order request, or a _Reject."""
        name = request.get("instrument")
        if name is None:
            raise _Reject("INSTRUMENT_MISSING")
        info = self.instruments.get(name) if isinstance(name, str) else None
        if info is None:
            raise _Reject("INSTRUMENT_UNKNOWN")
        if request.get("units") is None:
            raise _Reject("UNITS_MISSING")
        units = to_decimal(request["units"])
        if units is None or units == 0:
            raise _Reject("UNITS_INVALID")
        if decimal_places(units) > info.trade_units_precision:
            raise _Reject("UNITS_PRECISION_EXCEEDED")
        if abs(units) > info.maximum_order_units:
            raise _Reject("UNITS_LIMIT_EXCEEDED")
        if abs(units) < info.minimum_trade_size:
            raise _Reject("UNITS_MIMIMUM_NOT_MET")
        fields: JSON = {"instrument": info.name, "units": info.units_text(units)}
        if kind != "MARKET":
            price = self._check_price(
                request.get("price"),
                info,
                {
                    "missing": "PRICE_MISSING",
                    "invalid": "PRICE_INVALID",
                    "precision": "PRICE_PRECISION_EXCEEDED",
                },
            )
            fields["price"] = info.price_text(price)
        if kind != "LIMIT" and request.get("priceBound") is not None:
            bound = self._check_price(
                request["priceBound"],
                info,
                {
                    "missing": "PRICE_BOUND_INVALID",
                    "invalid": "PRICE_BOUND_INVALID",
                    "precision": "PRICE_BOUND_PRECISION_EXCEEDED",
                },
            )
            fields["priceBound"] = info.price_text(bound)
        fields.update(self._time_in_force(kind, request.get("timeInForce"), request.get("gtdTime")))
        position_fill = request.get("positionFill", "DEFAULT")
        if position_fill not in POSITION_FILLS:
            raise _Reject("ORDER_FILL_POSITION_ACTION_INVALID")
        fields["positionFill"] = position_fill
        if kind != "MARKET":
            condition = request.get("triggerCondition", "DEFAULT")
            if condition not in TRIGGER_CONDITIONS:
                raise _Reject("TRIGGER_CONDITION_INVALID")
            fields["triggerCondition"] = condition
        extensions = self._check_extensions(
            request.get("clientExtensions"), "CLIENT_ORDER_ID_INVALID"
        )
        trade_extensions = self._check_extensions(
            request.get("tradeClientExtensions"), "CLIENT_TRADE_ID_INVALID"
        )
        client_ids: list[str] = []
        for key, dependent in ON_FILL:
            details = request.get(key)
            if details is None:
                continue
            spec = self._dependent_spec(dependent, details, info, prefix=f"{dependent}_ON_FILL_")
            fields[key] = spec
            spec_id = _client_id(spec)
            if spec_id is not None:
                client_ids.append(spec_id)
        own = _client_id({"clientExtensions": extensions})
        if len(set(client_ids)) != len(client_ids) or (own is not None and own in client_ids):
            raise _Reject("ORDERS_ON_FILL_DUPLICATE_CLIENT_ORDER_IDS")
        exclude = None if replacing is None else str(replacing["id"])
        if own is not None and own in self._pending_client_ids(exclude):
            raise _Reject("CLIENT_ORDER_ID_ALREADY_EXISTS")
        trade_id = _client_id({"clientExtensions": trade_extensions})
        if trade_id is not None and any(t.client_id == trade_id for t in self._open_trades_list()):
            raise _Reject("CLIENT_TRADE_ID_ALREADY_EXISTS")
        if extensions is not None:
            fields["clientExtensions"] = extensions
        if trade_extensions is not None:
            fields["tradeClientExtensions"] = trade_extensions
        return fields

    def _dependent_spec(
        self, kind: str, details: Any, info: FakeInstrument, *, prefix: str = ""
    ) -> JSON:
        """Validated, normalised TakeProfit/StopLoss/TrailingStopLoss details.

        ``prefix`` is ``"<KIND>_ON_FILL_"`` for ``*OnFill`` details (their reject
        reasons are prefixed) and empty for a trade order request.
        """

        def reason(generic: str) -> str:
            if not prefix:
                if generic.startswith("PRICE_AND_DISTANCE"):
                    return f"STOP_LOSS_ORDER_{generic}"
                return generic
            if kind == "STOP_LOSS" and generic in (
                "PRICE_DISTANCE_INVALID",
                "PRICE_DISTANCE_PRECISION_EXCEEDED",
            ):
                return prefix + generic.removeprefix("PRICE_")
            return prefix + generic

        if not isinstance(details, dict):
            raise _Reject(
                reason(
                    "PRICE_MISSING" if kind != "TRAILING_STOP_LOSS" else "PRICE_DISTANCE_MISSING"
                )
            )
        spec: JSON = {}
        price_names = {
            "missing": reason("PRICE_MISSING"),
            "invalid": reason("PRICE_INVALID"),
            "precision": reason("PRICE_PRECISION_EXCEEDED"),
        }
        distance_names = {
            "missing": reason("PRICE_DISTANCE_MISSING"),
            "invalid": reason("PRICE_DISTANCE_INVALID"),
            "precision": reason("PRICE_DISTANCE_PRECISION_EXCEEDED"),
        }
        if kind == "TAKE_PROFIT":
            spec["price"] = info.price_text(
                self._check_price(details.get("price"), info, price_names)
            )
        elif kind == "STOP_LOSS":
            has_price = details.get("price") is not None
            has_distance = details.get("distance") is not None
            if has_price and has_distance:
                raise _Reject(reason("PRICE_AND_DISTANCE_BOTH_SPECIFIED"))
            if not has_price and not has_distance:
                raise _Reject(reason("PRICE_AND_DISTANCE_BOTH_MISSING"))
            if has_price:
                spec["price"] = info.price_text(
                    self._check_price(details["price"], info, price_names)
                )
            else:
                distance = self._check_price(details["distance"], info, distance_names)
                spec["distance"] = info.price_text(distance)
        else:
            distance = self._check_price(details.get("distance"), info, distance_names)
            if distance < info.minimum_trailing_stop_distance:
                raise _Reject(reason("PRICE_DISTANCE_MINIMUM_NOT_MET"))
            if distance > info.maximum_trailing_stop_distance:
                raise _Reject(reason("PRICE_DISTANCE_MAXIMUM_EXCEEDED"))
            spec["distance"] = info.price_text(distance)
        tif = self._time_in_force(kind, details.get("timeInForce"), details.get("gtdTime"), prefix)
        spec.update(tif)
        if "triggerCondition" in details or not prefix:
            condition = details.get("triggerCondition", "DEFAULT")
            if condition not in TRIGGER_CONDITIONS:
                raise _Reject(reason("TRIGGER_CONDITION_INVALID"))
            spec["triggerCondition"] = condition
        if kind == "STOP_LOSS" and ("guaranteed" in details or not prefix):
            spec["guaranteed"] = bool(details.get("guaranteed", False))
        extensions = self._check_extensions(
            details.get("clientExtensions"), reason("CLIENT_ORDER_ID_INVALID")
        )
        if extensions is not None:
            spec["clientExtensions"] = extensions
        return spec

    def _request_trade(self, request: JSON) -> _Trade:
        """The open trade a trade order request names (tradeID / clientTradeID)."""
        trade_id = request.get("tradeID")
        client_trade_id = request.get("clientTradeID")
        if trade_id is None and client_trade_id is None:
            raise _Reject("TRADE_ID_UNSPECIFIED")
        by_id = self._trades.get(str(trade_id)) if trade_id is not None else None
        by_client = self._find_trade(f"@{client_trade_id}") if client_trade_id is not None else None
        if trade_id is not None and client_trade_id is not None and by_id is not by_client:
            raise _Reject("TRADE_IDENTIFIER_INCONSISTENCY")
        trade = by_id or by_client
        if trade is None or trade.state != "OPEN":
            raise _Reject("TRADE_DOESNT_EXIST", status=404)
        return trade

    def _echo(self, kind: str, request: JSON) -> JSON:
        """A reject transaction's copy of the request (as sent, with defaults)."""
        keys = (
            "tradeID",
            "clientTradeID",
            "instrument",
            "units",
            "price",
            "priceBound",
            "distance",
            "timeInForce",
            "gtdTime",
            "positionFill",
            "triggerCondition",
            "guaranteed",
            "clientExtensions",
            "tradeClientExtensions",
            "takeProfitOnFill",
            "stopLossOnFill",
            "trailingStopLossOnFill",
        )
        fields = {k: copy.deepcopy(request[k]) for k in keys if request.get(k) is not None}
        fields.setdefault("timeInForce", "FOK" if kind == "MARKET" else "GTC")
        if kind in ENTRY_TYPES:
            fields.setdefault("positionFill", "DEFAULT")
        if kind != "MARKET":
            fields.setdefault("triggerCondition", "DEFAULT")
        return fields

    def _reject(
        self,
        kind: str,
        request: JSON,
        reason: str,
        *,
        status: int = 400,
        replacing: JSON | None = None,
        key: str = "orderRejectTransaction",
        fields: JSON | None = None,
    ) -> _Answer:
        """Make the ``<KIND>_ORDER_REJECT`` transaction and the error answer."""
        body = self._echo(kind, request) if fields is None else fields
        body.setdefault("reason", "CLIENT_ORDER" if replacing is None else "REPLACEMENT")
        if replacing is not None and kind != "MARKET":
            body["intendedReplacesOrderID"] = replacing["id"]
        body["rejectReason"] = reason
        tx = self._emit(f"{kind}_ORDER_REJECT", body)
        batch = self._batch
        assert batch is not None
        return _Answer(
            status,
            {
                key: tx,
                **self._answer_ids(batch),
                "errorCode": reason,
                "errorMessage": _reject_message(reason),
            },
        )

    # -- orders: creating, filling, cancelling -----------------------------------

    def _create_entry(self, kind: str, fields: JSON, *, cancel_reason: str | None = None) -> JSON:
        """Create an entry order and do what it does at once (fill, rest, cancel).

        Returns the answer keys: orderCreateTransaction, and orderFillTransaction
        and/or orderCancelTransaction.
        """
        tx = self._emit(f"{kind}_ORDER", fields)
        order = self._order_from(tx, kind)
        result: JSON = {"orderCreateTransaction": tx}
        if kind == "MARKET_IF_TOUCHED":
            quote = self._quotes[str(order["instrument"])]
            buy = Decimal(order["units"]) > 0
            now = self._trigger_price(buy, str(order.get("triggerCondition", "DEFAULT")), quote)
            order["initialMarketPrice"] = self.instruments[str(order["instrument"])].price_text(now)
        if cancel_reason is not None:
            result["orderCancelTransaction"] = self._cancel(order, cancel_reason)
            return result
        if kind == "MARKET":
            fill, cancel = self._fill(order, "MARKET_ORDER")
        elif self._triggered(order):
            fill, cancel = self._execute(order)
        elif order["timeInForce"] in ("FOK", "IOC"):
            fill, cancel = None, self._cancel(order, "TIME_IN_FORCE_EXPIRED")
        else:
            self._schedule_expiry(order)
            fill, cancel = None, None
        if fill is not None:
            result["orderFillTransaction"] = fill
        if cancel is not None:
            result["orderCancelTransaction"] = cancel
        return result

    def _create_dependent(
        self,
        kind: str,
        trade: _Trade,
        spec: JSON,
        *,
        reason: str,
        fill_id: str | None = None,
        replaces: str | None = None,
    ) -> JSON:
        """Create a TAKE_PROFIT / STOP_LOSS / TRAILING_STOP_LOSS order on ``trade``."""
        fields: JSON = {"tradeID": trade.id}
        if trade.client_id is not None:
            fields["clientTradeID"] = trade.client_id
        for key in ("price", "distance", "timeInForce", "gtdTime"):
            if key in spec:
                fields[key] = spec[key]
        fields["triggerCondition"] = spec.get("triggerCondition", "DEFAULT")
        if kind == "STOP_LOSS":
            fields["guaranteed"] = bool(spec.get("guaranteed", False))
        fields["reason"] = reason
        if fill_id is not None:
            fields["orderFillTransactionID"] = fill_id
        if "clientExtensions" in spec:
            fields["clientExtensions"] = copy.deepcopy(spec["clientExtensions"])
        if replaces is not None:
            fields["replacesOrderID"] = replaces
        tx = self._emit(f"{kind}_ORDER", fields)
        order = self._order_from(tx, kind)
        quote = self._quotes[trade.instrument]
        info = self.instruments[trade.instrument]
        long = trade.current_units > 0
        if kind == "STOP_LOSS" and "distance" in spec:
            distance = Decimal(spec["distance"])
            # "for long Trades the ask is used", for short ones the bid.
            self._stop_levels[str(tx["id"])] = (
                quote.ask - distance if long else quote.bid + distance
            )
        if kind == "TRAILING_STOP_LOSS":
            distance = Decimal(spec["distance"])
            order["trailingStopValue"] = info.price_text(
                quote.bid - distance if long else quote.ask + distance
            )
        trade.dependents[kind] = str(tx["id"])
        self._schedule_expiry(order)
        return tx

    def _cancel(self, order: JSON, reason: str, *, replaced_by: str | None = None) -> JSON:
        """Cancel a pending order (ORDER_CANCEL with ``reason``)."""
        fields: JSON = {"orderID": order["id"]}
        client = _client_id(order)
        if client is not None:
            fields["clientOrderID"] = client
        fields["reason"] = reason
        if replaced_by is not None:
            fields["replacedByOrderID"] = replaced_by
        tx = self._emit("ORDER_CANCEL", fields)
        order["state"] = "CANCELLED"
        order["cancellingTransactionID"] = tx["id"]
        order["cancelledTime"] = tx["time"]
        if replaced_by is not None:
            order["replacedByOrderID"] = replaced_by
        self._forget_pending(order)
        return tx

    def _forget_pending(self, order: JSON) -> None:
        order_id = str(order["id"])
        self._deadlines.pop(order_id, None)
        self._stop_levels.pop(order_id, None)
        trade = self._trades.get(str(order.get("tradeID", "")))
        if trade is not None and trade.dependents.get(str(order["type"])) == order_id:
            del trade.dependents[str(order["type"])]

    def _fill(
        self,
        order: JSON,
        reason: str,
        *,
        units: Decimal | None = None,
        only_trade: _Trade | None = None,
    ) -> tuple[JSON | None, JSON | None]:
        """Fill ``order`` whole at the current price; return (fill, cancel).

        Netting, FIFO: the units first reduce or close open trades of the other
        side, oldest first (``only_trade``: just that one), and what remains
        opens a trade (unless the order is REDUCE_ONLY). The order is cancelled
        instead if it breaks its price bound, the margin, or its on-fill stop
        loss or take profit would lose at once.
        """
        kind = str(order["type"])
        name = only_trade.instrument if only_trade is not None else str(order["instrument"])
        info = self.instruments[name]
        quote = self._quotes[name]
        amount = units if units is not None else Decimal(order["units"])
        buy = amount > 0
        price = quote.ask if buy else quote.bid
        if kind in ("LIMIT", "TAKE_PROFIT"):  # at the limit or better
            level = Decimal(order["price"])
            price = min(price, level) if buy else max(price, level)
        bound = to_decimal(order.get("priceBound"))
        if bound is not None and (price > bound if buy else price < bound):
            return None, self._cancel(order, "BOUNDS_VIOLATION")

        # The trades this fill reduces or closes, with the units taken off
        # each (signed like the trade).
        if only_trade is not None:
            candidates = [only_trade]
        else:
            candidates = [
                t
                for t in self._open_trades_list()
                if t.instrument == name and (t.current_units > 0) != buy
            ]
        plan: list[tuple[_Trade, Decimal]] = []
        remaining = amount
        for trade in candidates:
            if remaining == 0:
                break
            take = min(abs(remaining), abs(trade.current_units))
            signed = take if trade.current_units > 0 else -take
            plan.append((trade, signed))
            remaining += signed
        reduce_only = only_trade is not None or order.get("positionFill") == "REDUCE_ONLY"
        opening = Decimal(0) if reduce_only else remaining
        filled = -sum((signed for _, signed in plan), Decimal(0)) + opening
        if filled == 0:
            return None, self._cancel(order, "INSUFFICIENT_LIQUIDITY")  # our choice
        factor = self._factor(info.quote)
        if opening != 0:
            needed = abs(opening) * price * info.margin_rate * factor
            if needed > self._margin_available():
                return None, self._cancel(order, "INSUFFICIENT_MARGIN")
            stop = to_decimal((order.get("stopLossOnFill") or {}).get("price"))
            if stop is not None and (stop >= quote.bid if opening > 0 else stop <= quote.ask):
                return None, self._cancel(order, "STOP_LOSS_ON_FILL_LOSS")
            take_profit = to_decimal((order.get("takeProfitOnFill") or {}).get("price"))
            if take_profit is not None and (
                take_profit <= price if opening > 0 else take_profit >= price
            ):
                return None, self._cancel(order, "TAKE_PROFIT_ON_FILL_LOSS")

        batch = self._batch
        assert batch is not None
        fill_id = str(len(self.transactions) + 1)
        half_spread = (quote.ask - quote.bid) / 2
        price_text = info.price_text(price)
        total_pl = Decimal(0)
        total_cost = Decimal(0)
        closed: list[JSON] = []
        closed_trades: list[_Trade] = []
        reduced: JSON | None = None
        for trade, signed in plan:
            pl = (price - trade.price) * signed * factor
            cost = abs(signed) * half_spread * factor
            trade.current_units -= signed
            trade.realized_pl += pl
            trade.closed_units += abs(signed)
            trade.closed_value += abs(signed) * price
            trade.closing_ids.append(fill_id)
            part = {
                "tradeID": trade.id,
                "units": info.units_text(-signed),
                "price": price_text,
                "realizedPL": money(pl),
                "financing": "0.0000",
                "guaranteedExecutionFee": "0.0000",
                "halfSpreadCost": money(cost),
            }
            if trade.current_units == 0:
                trade.state = "CLOSED"
                trade.close_time = batch.time
                closed.append(part)
                closed_trades.append(trade)
            else:
                reduced = part
            total_pl += pl
            total_cost += cost
        self._balance += total_pl
        self._pl += total_pl
        opened: JSON | None = None
        new_trade: _Trade | None = None
        if opening != 0:
            cost = abs(opening) * half_spread * factor
            margin = abs(opening) * price * info.margin_rate * factor
            trade_extensions = order.get("tradeClientExtensions")
            new_trade = _Trade(
                id=fill_id,
                instrument=name,
                price=price,
                open_time=batch.time,
                initial_units=opening,
                initial_margin=margin,
                client_extensions=copy.deepcopy(trade_extensions) if trade_extensions else None,
                current_units=opening,
            )
            opened = {
                "tradeID": fill_id,
                "units": info.units_text(opening),
                "price": price_text,
                "guaranteedExecutionFee": "0.0000",
            }
            if new_trade.client_extensions:
                opened["clientExtensions"] = copy.deepcopy(new_trade.client_extensions)
            opened["halfSpreadCost"] = money(cost)
            opened["initialMarginRequired"] = money(margin)
            total_cost += cost

        fields: JSON = {"orderID": order["id"]}
        client = _client_id(order)
        if client is not None:
            fields["clientOrderID"] = client
        fields.update(
            {
                "instrument": name,
                "units": info.units_text(filled),
                "gainQuoteHomeConversionFactor": factor_text(factor),
                "lossQuoteHomeConversionFactor": factor_text(factor),
                "price": price_text,
                "fullVWAP": price_text,
                "fullPrice": {k: v for k, v in self._price_json(name).items() if k != "status"},
                "reason": reason,
                "pl": money(total_pl),
                "financing": "0.0000",
                "commission": "0.0000",
                "guaranteedExecutionFee": "0.0000",
                "accountBalance": money(self._balance),
            }
        )
        if opened is not None:
            fields["tradeOpened"] = opened
        if closed:
            fields["tradesClosed"] = closed
        if reduced is not None:
            fields["tradeReduced"] = reduced
        fields["halfSpreadCost"] = money(total_cost)
        if new_trade is not None:
            self._trades[fill_id] = new_trade
        fill = self._emit("ORDER_FILL", fields)
        assert fill["id"] == fill_id
        self._last_fill_time = batch.time

        order["state"] = "FILLED"
        order["fillingTransactionID"] = fill_id
        order["filledTime"] = batch.time
        if new_trade is not None:
            order["tradeOpenedID"] = fill_id
        if reduced is not None:
            order["tradeReducedID"] = reduced["tradeID"]
        if closed:
            order["tradeClosedIDs"] = [part["tradeID"] for part in closed]
        self._forget_pending(order)

        for trade in closed_trades:  # their trade orders go with them
            for dependent_id in list(trade.dependents.values()):
                self._cancel(self.orders[dependent_id], "LINKED_TRADE_CLOSED")
        if new_trade is not None:
            for key, dependent in ON_FILL:
                spec = order.get(key)
                if isinstance(spec, dict):
                    self._create_dependent(
                        dependent, new_trade, spec, reason="ON_FILL", fill_id=fill_id
                    )
        return fill, None

    # -- JSON of the account ----------------------------------------------------

    def _trade_json(self, trade: _Trade, *, summary: bool = False) -> JSON:
        info = self.instruments[trade.instrument]
        data: JSON = {
            "id": trade.id,
            "instrument": trade.instrument,
            "price": info.price_text(trade.price),
            "openTime": trade.open_time,
            "state": trade.state,
            "initialUnits": info.units_text(trade.initial_units),
            "initialMarginRequired": money(trade.initial_margin),
            "currentUnits": info.units_text(trade.current_units),
            "realizedPL": money(trade.realized_pl),
            "unrealizedPL": money(self._trade_unrealized(trade)),
            "marginUsed": money(self._trade_margin(trade)),
            "financing": "0.0000",
        }
        if trade.closed_units:
            data["averageClosePrice"] = info.price_text(trade.closed_value / trade.closed_units)
            data["closingTransactionIDs"] = list(trade.closing_ids)
        if trade.close_time is not None:
            data["closeTime"] = trade.close_time
        if trade.client_extensions:
            data["clientExtensions"] = copy.deepcopy(trade.client_extensions)
        for kind, key in (
            ("TAKE_PROFIT", "takeProfitOrder"),
            ("STOP_LOSS", "stopLossOrder"),
            ("TRAILING_STOP_LOSS", "trailingStopLossOrder"),
        ):
            order_id = trade.dependents.get(kind)
            if order_id is None:
                continue
            if summary:
                data[f"{key}ID"] = order_id
            else:
                data[key] = copy.deepcopy(self.orders[order_id])
        return data

    def _position_json(self, name: str) -> JSON:
        info = self.instruments[name]
        sides: dict[str, JSON] = {}
        unrealized_total = Decimal(0)
        margin_total = Decimal(0)
        pl_total = Decimal(0)
        for side, long in (("long", True), ("short", False)):
            trades = [
                t
                for t in self._trades.values()
                if t.instrument == name and (t.initial_units > 0) == long
            ]
            open_trades = [t for t in trades if t.state == "OPEN"]
            units = sum((t.current_units for t in open_trades), Decimal(0))
            pl = sum((t.realized_pl for t in trades), Decimal(0))
            unrealized = sum((self._trade_unrealized(t) for t in open_trades), Decimal(0))
            data: JSON = {"units": info.units_text(units)}
            if units != 0:
                average = sum((t.price * t.current_units for t in open_trades), Decimal(0)) / units
                data["averagePrice"] = info.price_text(average)
                data["tradeIDs"] = [t.id for t in open_trades]
            data.update(
                {
                    "pl": money(pl),
                    "unrealizedPL": money(unrealized),
                    "resettablePL": money(pl),
                    "financing": "0.0000",
                    "guaranteedExecutionFees": "0.0000",
                }
            )
            sides[side] = data
            unrealized_total += unrealized
            pl_total += pl
            margin_total += sum((self._trade_margin(t) for t in open_trades), Decimal(0))
        return {
            "instrument": name,
            "pl": money(pl_total),
            "unrealizedPL": money(unrealized_total),
            "marginUsed": money(margin_total),
            "resettablePL": money(pl_total),
            "financing": "0.0000",
            "commission": "0.0000",
            "guaranteedExecutionFees": "0.0000",
            "long": sides["long"],
            "short": sides["short"],
        }

    def _position_names(self, *, open_only: bool) -> list[str]:
        names: list[str] = []
        for trade in self._trades.values():
            if open_only and trade.state != "OPEN":
                continue
            if trade.instrument not in names:
                names.append(trade.instrument)
        return names

    def _summary_json(self) -> JSON:
        trades = self._open_trades_list()
        unrealized = sum((self._trade_unrealized(t) for t in trades), Decimal(0))
        used = sum((self._trade_margin(t) for t in trades), Decimal(0))
        value = sum((self._trade_value(t) for t in trades), Decimal(0))
        nav = self._balance + unrealized
        available = max(nav - used, Decimal(0))
        closeout_percent = used / 2 / nav if nav > 0 else Decimal(0)
        call_percent = used / nav if nav > 0 else Decimal(0)
        pending = sum(1 for o in self.orders.values() if o["state"] == "PENDING")
        data: JSON = {
            "id": self.account_id,
            "alias": "Fake v20",
            "currency": self.currency,
            "balance": money(self._balance),
            "createdByUserID": self._user_id,
            "createdTime": format_time(self._created_ns),
            "guaranteedStopLossOrderMode": "DISABLED",
            "pl": money(self._pl),
            "resettablePL": money(self._pl),
            "financing": "0.0000",
            "commission": "0.0000",
            "guaranteedExecutionFees": "0.0000",
            "marginRate": "0.0333",
            "marginCallExtensionCount": 0,
            "openTradeCount": len(trades),
            "openPositionCount": len(self._position_names(open_only=True)),
            "pendingOrderCount": pending,
            "hedgingEnabled": False,
            "unrealizedPL": money(unrealized),
            "NAV": money(nav),
            "marginUsed": money(used),
            "marginAvailable": money(available),
            "positionValue": money(value),
            "marginCloseoutUnrealizedPL": money(unrealized),
            "marginCloseoutNAV": money(nav),
            "marginCloseoutMarginUsed": money(used),
            "marginCloseoutPercent": fixed(closeout_percent, 5),
            "marginCloseoutPositionValue": money(value),
            "withdrawalLimit": money(available),
            "marginCallMarginUsed": money(used),
            "marginCallPercent": fixed(call_percent, 5),
            "lastTransactionID": self.last_transaction_id,
        }
        if self._last_fill_time is not None:
            data["lastOrderFillTimestamp"] = self._last_fill_time
        return data

    # -- handlers: account, instruments, pricing ---------------------------------

    def _get_account(self, context: _Context) -> _Outcome:
        account = self._summary_json()
        account["trades"] = [self._trade_json(t, summary=True) for t in self._open_trades_list()]
        account["positions"] = [
            self._position_json(n) for n in self._position_names(open_only=False)
        ]
        account["orders"] = [
            copy.deepcopy(o) for o in self.orders.values() if o["state"] == "PENDING"
        ]
        return self._ok({"account": account})

    def _get_summary(self, context: _Context) -> _Outcome:
        return self._ok({"account": self._summary_json()})

    def _get_instruments(self, context: _Context) -> _Outcome:
        wanted = context.query.get("instruments")
        names = list(self.instruments)
        if wanted:
            names = [n for n in wanted.split(",") if n]
            if any(n not in self.instruments for n in names):
                raise _invalid("instruments")
        return self._ok({"instruments": [self.instruments[n].to_json() for n in names]})

    def _instrument_list(self, context: _Context) -> list[str]:
        names = [n for n in context.query.get("instruments", "").split(",") if n]
        if not names or any(n not in self.instruments for n in names):
            raise _invalid("instruments")
        return names

    def _get_pricing(self, context: _Context) -> _Outcome:
        names = self._instrument_list(context)
        since = context.query.get("since")
        since_ns = None
        if since:
            since_ns = parse_time(since)
            if since_ns is None:
                raise _invalid("since")
        prices = [
            self._price_json(n) for n in names if since_ns is None or self._quotes[n].ns > since_ns
        ]
        body: JSON = {"prices": prices}
        if context.query.get("includeHomeConversions", "").lower() == "true":
            currencies = sorted({c for n in names for c in n.split("_")} | {self.currency})
            body["homeConversions"] = [
                {
                    "currency": c,
                    "accountGain": factor_text(self._factor(c)),
                    "accountLoss": factor_text(self._factor(c)),
                    "positionValue": factor_text(self._factor(c)),
                }
                for c in currencies
            ]
        body["time"] = format_time(wall_ns())
        return _Answer(200, body)

    def _pricing_stream(self, context: _Context) -> _Outcome:
        names = self._instrument_list(context)
        snapshot = context.query.get("snapshot", "true").lower() != "false"
        return _StreamAnswer("pricing", tuple(names), snapshot)

    def _transactions_stream(self, context: _Context) -> _Outcome:
        return _StreamAnswer("transactions")

    # -- handlers: transactions ----------------------------------------------------

    def _type_filter(self, context: _Context) -> set[str] | None:
        text = context.query.get("type")
        if not text:
            return None
        wanted = {t for t in text.split(",") if t}
        if not all(re.fullmatch(r"[A-Z_]+", t) for t in wanted):
            raise _invalid("type")
        return wanted

    @staticmethod
    def _matches(tx: JSON, wanted: set[str] | None) -> bool:
        if wanted is None:
            return True
        kind = str(tx["type"])
        if kind in wanted:
            return True
        if "ORDER" in wanted and "ORDER" in kind:
            return True
        return any(kind in TRANSACTION_GROUPS[g] for g in wanted if g in TRANSACTION_GROUPS)

    def _get_transactions(self, context: _Context) -> _Outcome:
        query = context.query
        start = parse_time(query["from"]) if "from" in query else self._created_ns
        if start is None:
            raise _invalid("from")
        end = parse_time(query["to"]) if "to" in query else wall_ns()
        if end is None:
            raise _invalid("to")
        try:
            page_size = int(query.get("pageSize", "100"))
        except ValueError:
            raise _invalid("pageSize") from None
        if not 1 <= page_size <= 1000:
            raise _invalid("pageSize")
        if end < start:
            raise _invalid("to")
        wanted = self._type_filter(context)
        ids = [
            tx["id"]
            for tx, ns in zip(self.transactions, self._tx_ns, strict=True)
            if start <= ns <= end and self._matches(tx, wanted)
        ]
        base = f"{self.url}/v3/accounts/{quote(self.account_id, safe='')}/transactions/idrange"
        suffix = f"&type={','.join(sorted(wanted))}" if wanted else ""
        pages = [
            f"{base}?from={chunk[0]}&to={chunk[-1]}{suffix}"
            for chunk in (ids[i : i + page_size] for i in range(0, len(ids), page_size))
        ]
        body: JSON = {"from": format_time(start), "to": format_time(end), "pageSize": page_size}
        if wanted:
            body["type"] = sorted(wanted)
        body.update({"count": len(ids), "pages": pages})
        return self._ok(body)

    def _transaction_number(self, context: _Context, name: str) -> int:
        text = context.query.get(name, "")
        if not text.isdigit():
            raise _invalid(name)
        return int(text)

    def _get_idrange(self, context: _Context) -> _Outcome:
        first = self._transaction_number(context, "from")
        last = self._transaction_number(context, "to")
        wanted = self._type_filter(context)
        found = [
            tx
            for tx in self.transactions[max(first, 1) - 1 : max(last, 0)]
            if self._matches(tx, wanted)
        ]
        return self._ok({"transactions": found})

    def _get_sinceid(self, context: _Context) -> _Outcome:
        after = self._transaction_number(context, "id")
        wanted = self._type_filter(context)
        found = [tx for tx in self.transactions[after:] if self._matches(tx, wanted)]
        return self._ok({"transactions": found})

    def _get_transaction(self, context: _Context, transaction_id: str) -> _Outcome:
        if not transaction_id.isdigit() or not 1 <= int(transaction_id) <= len(self.transactions):
            raise _Fail(
                404,
                {
                    "errorCode": "NO_SUCH_TRANSACTION",
                    "errorMessage": "The Transaction specified does not exist",
                },
            )
        return self._ok({"transaction": self.transactions[int(transaction_id) - 1]})

    # -- handlers: orders -----------------------------------------------------------

    def _count(self, context: _Context) -> int:
        text = context.query.get("count", "50")
        if not text.isdigit() or not 1 <= int(text) <= 500:
            raise _invalid("count")
        return int(text)

    def _before(self, context: _Context) -> int | None:
        text = context.query.get("beforeID")
        if text is None:
            return None
        if not text.isdigit():
            raise _invalid("beforeID")
        return int(text)

    def _list_orders(self, context: _Context) -> _Outcome:
        state = context.query.get("state", "PENDING")
        if state not in ("PENDING", "FILLED", "TRIGGERED", "CANCELLED", "ALL"):
            raise _invalid("state")
        instrument = context.query.get("instrument")
        ids = {i for i in context.query.get("ids", "").split(",") if i} or None
        count = self._count(context)
        before = self._before(context)
        found = []
        for order in reversed(self.orders.values()):
            if state != "ALL" and order["state"] != state:
                continue
            if instrument and self._order_instrument(order) != instrument:
                continue
            if ids is not None and order["id"] not in ids:
                continue
            if before is not None and int(order["id"]) >= before:
                continue
            found.append(copy.deepcopy(order))
            if len(found) >= count:
                break
        return self._ok({"orders": found})

    def _pending_orders(self, context: _Context) -> _Outcome:
        found = [
            copy.deepcopy(o) for o in reversed(self.orders.values()) if o["state"] == "PENDING"
        ]
        return self._ok({"orders": found})

    def _order_or_404(self, specifier: str) -> JSON:
        order = self._find_order(specifier)
        if order is None:
            raise _Fail(
                404,
                {
                    "errorCode": "NO_SUCH_ORDER",
                    "errorMessage": "The Order specified does not exist",
                },
            )
        return order

    def _get_order(self, context: _Context, specifier: str) -> _Outcome:
        return self._ok({"order": copy.deepcopy(self._order_or_404(specifier))})

    def _order_request(self, context: _Context) -> JSON:
        body = self._json_body(context)
        request = body.get("order")
        if not isinstance(request, dict):
            raise _Fail(400)
        kind = request.get("type", "MARKET")
        if kind not in ENTRY_TYPES + DEPENDENT_TYPES:
            raise _invalid("type")
        request = dict(request)
        request["type"] = kind
        return request

    def _post_order(self, context: _Context) -> _Outcome:
        request = self._order_request(context)
        kind = str(request["type"])
        swallow = self._swallow > 0
        if swallow:
            self._swallow -= 1
        with self._batch_of(context.request_id) as batch:
            answer = self._place(kind, request, batch)
        return _HOLD if swallow else answer

    def _place(self, kind: str, request: JSON, batch: _Batch) -> _Answer:
        if self._order_rejects:
            return self._reject(kind, request, self._order_rejects.pop(0))
        try:
            if kind in DEPENDENT_TYPES:
                trade = self._request_trade(request)
                spec = self._dependent_spec(kind, request, self.instruments[trade.instrument])
                self._check_dependent(kind, trade, spec, replacing=None)
            else:
                fields = self._entry_fields(kind, request, replacing=None)
        except _Reject as reject:
            return self._reject(kind, request, reject.reason, status=reject.status)
        if kind in DEPENDENT_TYPES:
            tx = self._create_dependent(kind, trade, spec, reason="CLIENT_ORDER")
            result: JSON = {"orderCreateTransaction": tx}
            order = self.orders[str(tx["id"])]
            if self._order_cancels:
                result["orderCancelTransaction"] = self._cancel(order, self._order_cancels.pop(0))
            elif self._triggered(order):
                fill, _ = self._execute(order)
                if fill is not None:
                    result["orderFillTransaction"] = fill
        else:
            fields["reason"] = "CLIENT_ORDER"
            cancel = self._order_cancels.pop(0) if self._order_cancels else None
            result = self._create_entry(kind, fields, cancel_reason=cancel)
        created = str(result["orderCreateTransaction"]["id"])
        location = f"{self.url}/v3/accounts/{quote(self.account_id, safe='')}/orders/{created}"
        answer = _Answer(201, {**result, **self._answer_ids(batch)})
        answer.headers.append(("Location", location))
        return answer

    def _check_dependent(
        self, kind: str, trade: _Trade, spec: JSON, *, replacing: JSON | None
    ) -> None:
        existing = trade.dependents.get(kind)
        if existing is not None and (replacing is None or existing != replacing["id"]):
            raise _Reject(f"{kind}_ORDER_ALREADY_EXISTS")
        own = _client_id(spec)
        exclude = None if replacing is None else str(replacing["id"])
        if own is not None and own in self._pending_client_ids(exclude):
            raise _Reject("CLIENT_ORDER_ID_ALREADY_EXISTS")

    def _cancel_reject(self, specifier: str, order: JSON | None, *, status: int = 404) -> _Answer:
        """ORDER_CANCEL_REJECT (ORDER_DOESNT_EXIST) for an unknown or final order."""
        fields: JSON = {}
        if order is not None:
            fields["orderID"] = order["id"]
        elif not specifier.startswith("@"):
            fields["orderID"] = specifier
        client = _client_id(order) if order is not None else None
        if client is None and specifier.startswith("@"):
            client = specifier[1:]
        if client is not None:
            fields["clientOrderID"] = client
        fields["rejectReason"] = "ORDER_DOESNT_EXIST"
        tx = self._emit("ORDER_CANCEL_REJECT", fields)
        batch = self._batch
        assert batch is not None
        return _Answer(
            status,
            {
                "orderCancelRejectTransaction": tx,
                **self._answer_ids(batch),
                "errorCode": "ORDER_DOESNT_EXIST",
                "errorMessage": _reject_message("ORDER_DOESNT_EXIST"),
            },
        )

    def _replace_order(self, context: _Context, specifier: str) -> _Outcome:
        request = self._order_request(context)
        kind = str(request["type"])
        with self._batch_of(context.request_id) as batch:
            old = self._find_order(specifier)
            if old is None or old["state"] != "PENDING":
                return self._cancel_reject(specifier, old)
            try:
                if kind != old["type"]:
                    raise _Reject("REPLACING_ORDER_INVALID")
                if kind in DEPENDENT_TYPES:
                    trade = self._request_trade(request)
                    if trade.id != old["tradeID"]:
                        raise _Reject("REPLACING_TRADE_ID_INVALID")
                    spec = self._dependent_spec(kind, request, self.instruments[trade.instrument])
                    self._check_dependent(kind, trade, spec, replacing=old)
                else:
                    fields = self._entry_fields(kind, request, replacing=old)
            except _Reject as reject:
                return self._reject(
                    kind, request, reject.reason, status=reject.status, replacing=old
                )
            new_id = str(len(self.transactions) + 2)  # the cancel comes first
            cancel = self._cancel(old, "CLIENT_REQUEST_REPLACED", replaced_by=new_id)
            result: JSON = {"orderCancelTransaction": cancel}
            if kind in DEPENDENT_TYPES:
                tx = self._create_dependent(
                    kind, trade, spec, reason="REPLACEMENT", replaces=str(old["id"])
                )
                result["orderCreateTransaction"] = tx
                order = self.orders[str(tx["id"])]
                if self._triggered(order):
                    fill, _ = self._execute(order)
                    if fill is not None:
                        result["orderFillTransaction"] = fill
            else:
                fields["reason"] = "REPLACEMENT"
                fields["replacesOrderID"] = old["id"]
                created = self._create_entry(kind, fields)
                result["orderCreateTransaction"] = created["orderCreateTransaction"]
                if "orderFillTransaction" in created:
                    result["orderFillTransaction"] = created["orderFillTransaction"]
                if "orderCancelTransaction" in created:
                    result["replacingOrderCancelTransaction"] = created["orderCancelTransaction"]
            assert result["orderCreateTransaction"]["id"] == new_id
            return _Answer(201, {**result, **self._answer_ids(batch)})

    def _cancel_order(self, context: _Context, specifier: str) -> _Outcome:
        with self._batch_of(context.request_id) as batch:
            order = self._find_order(specifier)
            if order is None or order["state"] != "PENDING":
                return self._cancel_reject(specifier, order)
            tx = self._cancel(order, "CLIENT_REQUEST")
            return _Answer(200, {"orderCancelTransaction": tx, **self._answer_ids(batch)})

    # -- handlers: trades -------------------------------------------------------

    def _list_trades(self, context: _Context) -> _Outcome:
        state = context.query.get("state", "OPEN")
        if state not in ("OPEN", "CLOSED", "CLOSE_WHEN_TRADEABLE", "ALL"):
            raise _invalid("state")
        instrument = context.query.get("instrument")
        ids = {i for i in context.query.get("ids", "").split(",") if i} or None
        count = self._count(context)
        before = self._before(context)
        found = []
        for trade in reversed(self._trades.values()):
            if state != "ALL" and trade.state != state:
                continue
            if instrument and trade.instrument != instrument:
                continue
            if ids is not None and trade.id not in ids:
                continue
            if before is not None and int(trade.id) >= before:
                continue
            found.append(self._trade_json(trade))
            if len(found) >= count:
                break
        return self._ok({"trades": found})

    def _open_trades(self, context: _Context) -> _Outcome:
        trades = [self._trade_json(t) for t in reversed(self._open_trades_list())]
        return self._ok({"trades": trades})

    def _trade_or_404(self, specifier: str) -> _Trade:
        trade = self._find_trade(specifier)
        if trade is None:
            raise _Fail(
                404,
                {
                    "errorCode": "NO_SUCH_TRADE",
                    "errorMessage": "The Trade specified does not exist",
                },
            )
        return trade

    def _get_trade(self, context: _Context, specifier: str) -> _Outcome:
        return self._ok({"trade": self._trade_json(self._trade_or_404(specifier))})

    def _close_trade(self, context: _Context, specifier: str) -> _Outcome:
        body = self._json_body(context, required=False)
        units_text = body.get("units", "ALL")
        with self._batch_of(context.request_id) as batch:
            trade = self._find_trade(specifier)
            close: JSON = {}
            if trade is not None:
                close["tradeID"] = trade.id
            elif not specifier.startswith("@"):
                close["tradeID"] = specifier
            if trade is not None and trade.client_id is not None:
                close["clientTradeID"] = trade.client_id
            elif specifier.startswith("@"):
                close["clientTradeID"] = specifier[1:]
            close["units"] = units_text
            fields: JSON = {
                "timeInForce": "FOK",
                "positionFill": "REDUCE_ONLY",
                "reason": "TRADE_CLOSE",
            }
            fields["tradeClose"] = close
            if trade is None or trade.state != "OPEN":
                return self._reject("MARKET", {}, "TRADE_DOESNT_EXIST", status=404, fields=fields)
            info = self.instruments[trade.instrument]
            if units_text == "ALL":
                amount = abs(trade.current_units)
            else:
                number = to_decimal(units_text) if isinstance(units_text, str) else None
                reason = None
                if number is None or number <= 0:
                    reason = "UNITS_INVALID"
                elif decimal_places(number) > info.trade_units_precision:
                    reason = "UNITS_PRECISION_EXCEEDED"
                elif number > abs(trade.current_units):
                    reason = "CLOSE_TRADE_UNITS_EXCEED_TRADE_SIZE"
                if reason is not None:
                    fields = {"instrument": trade.instrument, **fields}
                    return self._reject("MARKET", {}, reason, fields=fields)
                assert number is not None
                amount = number
            units = -amount if trade.current_units > 0 else amount
            create = self._emit(
                "MARKET_ORDER",
                {"instrument": trade.instrument, "units": info.units_text(units), **fields},
            )
            order = self._order_from(create, "MARKET")
            result: JSON = {"orderCreateTransaction": create}
            fill, cancel = self._fill(
                order, "MARKET_ORDER_TRADE_CLOSE", units=units, only_trade=trade
            )
            if fill is not None:
                result["orderFillTransaction"] = fill
            if cancel is not None:
                result["orderCancelTransaction"] = cancel
            return _Answer(200, {**result, **self._answer_ids(batch)})

    def _set_trade_orders(self, context: _Context, specifier: str) -> _Outcome:
        body = self._json_body(context)
        with self._batch_of(context.request_id) as batch:
            trade = self._find_trade(specifier)
            if trade is None or trade.state != "OPEN":
                raise _Fail(
                    404,
                    {
                        "errorCode": "NO_SUCH_TRADE",
                        "errorMessage": "The Trade specified does not exist",
                    },
                )
            info = self.instruments[trade.instrument]
            plans: list[tuple[str, str, JSON | None]] = []
            rejects: JSON = {}
            first_reason = None
            for kind, key in TRADE_ORDER_KEYS.items():
                if key not in body:
                    continue  # absent: keep
                details = body[key]
                if details is None:
                    plans.append((kind, key, None))  # null: cancel
                    continue
                existing_id = trade.dependents.get(kind)
                existing = self.orders[existing_id] if existing_id else None
                merged: JSON = {}
                if existing is not None and isinstance(details, dict):
                    for name in (
                        "price",
                        "distance",
                        "timeInForce",
                        "gtdTime",
                        "triggerCondition",
                        "guaranteed",
                        "clientExtensions",
                    ):
                        if name in existing:
                            merged[name] = copy.deepcopy(existing[name])
                    if "price" in details or "distance" in details:
                        merged.pop("price", None)
                        merged.pop("distance", None)
                    merged.update(details)
                    if merged.get("timeInForce") != "GTD":
                        merged.pop("gtdTime", None)
                else:
                    merged = details if isinstance(details, dict) else {}
                try:
                    spec = self._dependent_spec(kind, merged, info)
                    own = _client_id(spec)
                    if own is not None and own in self._pending_client_ids(existing_id):
                        raise _Reject("CLIENT_ORDER_ID_ALREADY_EXISTS")
                except _Reject as reject:
                    echo = {"tradeID": trade.id, **self._echo(kind, merged)}
                    if trade.client_id is not None:
                        echo["clientTradeID"] = trade.client_id
                    echo["reason"] = "CLIENT_ORDER" if existing is None else "REPLACEMENT"
                    if existing is not None:
                        echo["intendedReplacesOrderID"] = existing["id"]
                    echo["rejectReason"] = reject.reason
                    rejects[f"{key}OrderRejectTransaction"] = self._emit(
                        f"{kind}_ORDER_REJECT", echo
                    )
                    first_reason = first_reason or reject.reason
                    continue
                plans.append((kind, key, spec))
            if rejects:
                assert first_reason is not None
                return _Answer(
                    400,
                    {
                        **rejects,
                        **self._answer_ids(batch),
                        "errorCode": first_reason,
                        "errorMessage": _reject_message(first_reason),
                    },
                )
            result: JSON = {}
            for kind, key, wanted in plans:
                existing_id = trade.dependents.get(kind)
                if trade.state != "OPEN":
                    break  # an earlier order of this request closed the trade
                if wanted is None:
                    if existing_id is not None:
                        result[f"{key}OrderCancelTransaction"] = self._cancel(
                            self.orders[existing_id], "CLIENT_REQUEST"
                        )
                    continue
                replaces = None
                if existing_id is not None:
                    new_id = str(len(self.transactions) + 2)
                    result[f"{key}OrderCancelTransaction"] = self._cancel(
                        self.orders[existing_id], "CLIENT_REQUEST_REPLACED", replaced_by=new_id
                    )
                    replaces = existing_id
                tx = self._create_dependent(
                    kind,
                    trade,
                    wanted,
                    reason="CLIENT_ORDER" if replaces is None else "REPLACEMENT",
                    replaces=replaces,
                )
                result[f"{key}OrderTransaction"] = tx
                order = self.orders[str(tx["id"])]
                if self._triggered(order):
                    fill, _ = self._execute(order)
                    if fill is not None:
                        result[f"{key}OrderFillTransaction"] = fill
            return _Answer(200, {**result, **self._answer_ids(batch)})

    # -- handlers: positions ----------------------------------------------------

    def _position_instrument(self, name: str) -> str:
        if name not in self.instruments:
            # our choice of status: the spec lists 404 (not 400) for these paths
            raise _Fail(404, {"errorMessage": "Invalid value specified for 'instrument'"})
        return name

    def _list_positions(self, context: _Context) -> _Outcome:
        names = self._position_names(open_only=False)
        return self._ok({"positions": [self._position_json(n) for n in names]})

    def _open_positions(self, context: _Context) -> _Outcome:
        names = self._position_names(open_only=True)
        return self._ok({"positions": [self._position_json(n) for n in names]})

    def _get_position(self, context: _Context, name: str) -> _Outcome:
        return self._ok({"position": self._position_json(self._position_instrument(name))})

    def _close_position(self, context: _Context, name: str) -> _Outcome:
        name = self._position_instrument(name)
        info = self.instruments[name]
        body = self._json_body(context, required=False)
        with self._batch_of(context.request_id) as batch:
            sides: list[tuple[str, Decimal, Any, JSON]] = []
            rejects: JSON = {}
            first_reason = None
            for side, long in (("long", True), ("short", False)):
                held = sum(
                    (
                        t.current_units
                        for t in self._open_trades_list()
                        if t.instrument == name and (t.current_units > 0) == long
                    ),
                    Decimal(0),
                )
                given = body.get(f"{side}Units")
                # Absent means ALL (the documented default), but only for a side
                # that is held: our reading, since clients send one side only.
                if given is None and held == 0:
                    continue
                wanted = "ALL" if given is None else given
                if wanted == "NONE":
                    continue
                fields: JSON = {
                    "instrument": name,
                    "timeInForce": "FOK",
                    "positionFill": "REDUCE_ONLY",
                    "reason": "POSITION_CLOSEOUT",
                    f"{side}PositionCloseout": {"instrument": name, "units": wanted},
                }
                extensions = body.get(f"{side}ClientExtensions")
                if isinstance(extensions, dict):
                    fields["clientExtensions"] = copy.deepcopy(extensions)
                reason = None
                amount = abs(held)
                if held == 0:
                    reason = "CLOSEOUT_POSITION_DOESNT_EXIST"
                elif wanted != "ALL":
                    number = to_decimal(wanted) if isinstance(wanted, str) else None
                    if number is None or number <= 0:
                        reason = "UNITS_INVALID"
                    elif decimal_places(number) > info.trade_units_precision:
                        reason = "UNITS_PRECISION_EXCEEDED"
                    elif number > abs(held):
                        reason = "CLOSEOUT_POSITION_UNITS_EXCEED_POSITION_SIZE"
                    else:
                        amount = number
                if reason is not None:
                    fields["rejectReason"] = reason
                    rejects[f"{side}OrderRejectTransaction"] = self._emit(
                        "MARKET_ORDER_REJECT", fields
                    )
                    first_reason = first_reason or reason
                    continue
                sides.append((side, -amount if long else amount, wanted, fields))
            if rejects:
                assert first_reason is not None
                return _Answer(
                    400,
                    {
                        **rejects,
                        **self._answer_ids(batch),
                        "errorCode": first_reason,
                        "errorMessage": _reject_message(first_reason),
                    },
                )
            if not sides:
                reason = "CLOSEOUT_POSITION_INCOMPLETE_SPECIFICATION"
                raise _Fail(400, {"errorCode": reason, "errorMessage": _reject_message(reason)})
            result: JSON = {}
            for side, units, _, order_fields in sides:
                order_fields["units"] = info.units_text(units)
                create = self._emit("MARKET_ORDER", order_fields)
                order = self._order_from(create, "MARKET")
                result[f"{side}OrderCreateTransaction"] = create
                fill, cancel = self._fill(order, "MARKET_ORDER_POSITION_CLOSEOUT", units=units)
                if fill is not None:
                    result[f"{side}OrderFillTransaction"] = fill
                if cancel is not None:
                    result[f"{side}OrderCancelTransaction"] = cancel
            return _Answer(200, {**result, **self._answer_ids(batch)})


# ---------------------------------------------------------------------------
# helpers


def _wants_unix(headers: Mapping[str, str]) -> bool:
    return headers.get("accept-datetime-format", "").strip().upper() == "UNIX"


def _status_message(status: int) -> str:
    if status in STATUS_MESSAGES:
        return STATUS_MESSAGES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _reject_message(reason: str) -> str:
    return REJECT_MESSAGES.get(reason) or reason.replace("_", " ").capitalize()


def _account_parts(account_id: str) -> tuple[int, int, int, int]:
    """siteID, divisionID, user and account number of ``101-004-1234567-001``."""
    parts = [int(p) if p.isdigit() else 0 for p in account_id.split("-")]
    parts += [0] * (4 - len(parts))
    return parts[0], parts[1], parts[2], parts[3]


def _user_id(account_id: str) -> int:
    return _account_parts(account_id)[2] or 1


# ---------------------------------------------------------------------------
# command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rick_oanda.fake``: serve a fake v20 account until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m rick_oanda.fake",
        description="A fake OANDA v20 server on 127.0.0.1 for rehearsals (REST and streams).",
    )
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free)")
    parser.add_argument("--token", default="fake-token", help="the API token it accepts")
    parser.add_argument("--account-id", default="101-004-1234567-001", help="the v20 account id")
    parser.add_argument("--currency", default="USD", help="the account currency")
    parser.add_argument("--balance", default="100000", help="the opening balance")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="seconds between heartbeats")
    parser.add_argument(
        "--price-interval", type=float, default=0.25, help="seconds between price moves"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the random walk")
    args = parser.parse_args(argv)
    fake = FakeV20(
        token=args.token,
        account_id=args.account_id,
        currency=args.currency,
        balance=Decimal(args.balance),
        heartbeat=args.heartbeat,
        price_interval=args.price_interval,
        seed=args.seed,
    )

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(fake.serve, port=args.port))
            print(f"fake OANDA v20 server at {fake.url}")
            print(f"account id: {fake.account_id}")
            print(f"token:      {fake.token}")
            print()
            print("[brokers.oanda]")
            print('kind = "oanda"')
            print(f'account_id = "{fake.account_id}"')
            print(f'rest_url = "{fake.url}"')
            print(f'stream_url = "{fake.url}"')
            print()
            print("Ctrl-C stops it.", flush=True)

    try:
        trio.run(run)
    except* KeyboardInterrupt:  # Ctrl-C: trio may deliver it inside an exception group
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
