"""The risk charter: pre-trade checks every order passes before it is sent.

A :class:`Charter` holds the limits of the ``[risk]`` table of ``rick.toml``
(global limits, plus ``[risk.brokers.<name>]``, ``[risk.instruments.<SYMBOL>]``
and ``[risk.strategies.<name>]`` overrides) and a trading state. The engine
calls :meth:`Charter.check` with a :class:`RiskContext` for each order; a
refused order raises :class:`RiskDenied`, which is a
:class:`~rick_core.strategy.TradingHalted`, so the strategy host already
handles it. ``check`` is pure and synchronous: no I/O, no clock of its own
(``RiskContext.now`` is the engine's clock), a few microseconds per call.

Decisions, in one place:

- **Strictest of.** For every rule the effective limit is the strictest of the
  values set in the global, broker, instrument and strategy tables (the
  smallest maximum, the largest minimum reward-to-risk, ``require_stop_loss``
  if any table sets it to true, and every ``trading_hours`` set must allow the
  order). A denial names the table the effective limit came from; on a tie,
  the more general table.
- **Exposure.** An order *reduces* exposure when it is against the current
  position and no larger than it (a sell of at most the long quantity). A sell
  larger than a long *flips* it to a short: that is not reducing (it opens a
  new position past zero), so it is denied wherever only reducing orders are
  allowed; close first, then open the other side.
- **What reducing orders skip.** ``max_position``, ``max_open_positions``,
  ``require_stop_loss``, ``trading_hours``, the daily loss limit and the
  REDUCING state apply only to orders that do not reduce exposure, so a
  position can always be closed. Fat-finger limits (``max_order_quantity``,
  ``max_order_notional``), ``min_reward_to_risk`` and the rate limit apply to
  every order.
- **Daily loss.** ``RiskContext.daily_pnl`` is the day's realized plus
  unrealized P&L as the engine measures it (in the account currency). When it
  is at or below ``-daily_loss_limit`` the whole charter moves to REDUCING
  (:attr:`Charter.reason` says why) and stays there until :meth:`Charter.resume`,
  even if the P&L recovers.
- **Rate limit.** Orders are counted in sliding one-second windows: one per
  ``(broker, strategy)``, capped by the strictest ``max_orders_per_second`` of
  the four tables for the order, and one over all orders, capped by the global
  ``[risk]`` value alone. Only allowed orders are counted.
- **States.** HALTED refuses every order; cancels are not checked here and
  should always go through.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from attrs import field, frozen

from rick_core.config import ConfigError
from rick_core.model import ModelError, OrderRequest, Side, check_symbol, to_utc
from rick_core.strategy import TradingHalted

__all__ = [
    "Charter",
    "Limits",
    "ReasonCode",
    "RiskContext",
    "RiskDenied",
    "TradingHours",
    "TradingState",
    "parse_risk",
]


class ReasonCode(enum.StrEnum):
    """Why the charter refused an order."""

    MAX_ORDER_QUANTITY = "max_order_quantity"
    MAX_ORDER_NOTIONAL = "max_order_notional"
    MAX_POSITION = "max_position"
    MAX_OPEN_POSITIONS = "max_open_positions"
    ORDER_RATE = "order_rate"
    DAILY_LOSS = "daily_loss"
    STOP_LOSS_REQUIRED = "stop_loss_required"
    REWARD_TO_RISK = "reward_to_risk"
    TRADING_HOURS = "trading_hours"
    REDUCE_ONLY = "reduce_only"
    HALTED = "halted"
    MODE_OFF = "mode_off"
    """The trading mode is off (`rick mode`): no order goes to a real broker."""
    MODE_GHOST = "mode_ghost"
    """Switched down to ghost while running: real orders are refused until a restart."""
    CANARY_QUANTITY = "canary_quantity"
    """Canary mode: the order is larger than ``[canary] max_quantity``."""
    CANARY_ORDERS = "canary_orders"
    """Canary mode: ``[canary] max_orders_per_day`` real orders were sent this UTC day."""
    STALE_PRICE = "stale_price"
    """A market order while the instrument's quote is older than ``[quotes] stale_after``."""


class RiskDenied(TradingHalted):
    """The risk charter refused an order. ``code`` says which rule; the message
    gives the value, the limit and the table the limit is configured in."""

    def __init__(self, code: ReasonCode, message: str) -> None:
        # The code leads the text, so a stored reject reason and a log line carry it.
        super().__init__(f"risk {code.value}: {message}")
        self.code = code
        self.message = message


class TradingState(enum.Enum):
    """What the charter lets through."""

    ACTIVE = "active"
    """Every order that passes the limits."""
    REDUCING = "reducing"
    """Only orders that reduce the absolute position of their instrument."""
    HALTED = "halted"
    """No order at all (cancels are not checked by the charter)."""


# ---------------------------------------------------------------------------
# trading hours

_DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"^\s*(?P<days>[a-z]{3}(?:\s*-\s*[a-z]{3})?(?:\s*,\s*[a-z]{3}(?:\s*-\s*[a-z]{3})?)*)"
    r"\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$"
)
_WINDOW_HELP: Final = (
    'windows look like "mon-fri 08:00-17:00", "sat 10:00-14:00" or "mon,wed 09:30-16:00" '
    "(start included, end excluded, end may be 24:00)"
)


def _minutes(text: str, *, end: bool) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    value = hours * 60 + minutes
    if minutes > 59 or value > 24 * 60 or (value == 24 * 60 and not end):
        raise ValueError(f"{text!r} is not a time of day (00:00 to 23:59, or 24:00 as an end)")
    return value


def _days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = (p.strip() for p in part.partition("-"))
        for name in (first, last or first):
            if name not in _DAYS:
                raise ValueError(f"{name!r} is not a weekday; use one of {', '.join(_DAYS)}")
        a, b = _DAYS.index(first), _DAYS.index(last or first)
        if b < a:
            raise ValueError(f"day range {part.strip()!r} runs backwards; write it from mon to sun")
        days.update(range(a, b + 1))
    return frozenset(days)


@frozen
class TradingWindow:
    """Weekdays (0 = Monday) and a time span in minutes after local midnight,
    ``start`` included, ``end`` excluded."""

    days: frozenset[int]
    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> TradingWindow:
        """A window from text such as ``"mon-fri 08:00-17:00"``."""
        match = _WINDOW.match(text.lower()) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"{text!r} is not a trading window; {_WINDOW_HELP}")
        start = _minutes(match["start"], end=False)
        end = _minutes(match["end"], end=True)
        if end <= start:
            raise ValueError(
                f"{text!r}: the window ends before it starts; a window past midnight is two "
                f'windows, e.g. "sun 22:00-24:00" and "mon 00:00-02:00"'
            )
        return cls(_days(match["days"]), start, end)


@frozen
class TradingHours:
    """When orders that add exposure are allowed: weekday windows in a named
    (zoneinfo) timezone, so daylight saving time is followed. Orders that
    reduce exposure are allowed at any time."""

    timezone: str
    windows: tuple[TradingWindow, ...]
    _zone: ZoneInfo = field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown timezone {self.timezone!r}; use an IANA name such as "
                "'Europe/London' or 'America/New_York'"
            ) from None
        object.__setattr__(self, "_zone", zone)

    @classmethod
    def parse(cls, windows: Sequence[str], *, timezone: str = "UTC") -> TradingHours:
        """Trading hours from window strings such as ``["mon-fri 08:00-17:00"]``."""
        if isinstance(windows, str) or not windows:
            raise ValueError(f"expected a non-empty list of windows; {_WINDOW_HELP}")
        return cls(timezone, tuple(TradingWindow.parse(w) for w in windows))

    def allows(self, now: datetime) -> bool:
        """Whether the aware datetime ``now`` falls in one of the windows."""
        local = now.astimezone(self._zone)
        day = local.weekday()
        minute = local.hour * 60 + local.minute
        for window in self.windows:
            if day in window.days and window.start <= minute < window.end:
                return True
        return False

    def describe(self) -> str:
        """The windows as configured, for messages."""
        parts = []
        for w in self.windows:
            days = ",".join(_DAYS[d] for d in sorted(w.days))
            parts.append(
                f"{days} {w.start // 60:02d}:{w.start % 60:02d}-{w.end // 60:02d}:{w.end % 60:02d}"
            )
        return f"{'; '.join(parts)} ({self.timezone})"


# ---------------------------------------------------------------------------
# limits


def _decimal(value: Decimal | int | str | None) -> Decimal | None:
    if value is None or type(value) is Decimal:
        return value
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise ModelError(
            f"expected a Decimal (or an int or a numeric string), got {type(value).__name__} "
            f"{value!r}; floats are refused: use Decimal('{value}')"
        )
    return Decimal(value)


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, Decimal):
        ok = value.is_finite() and value > 0
    else:
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    if not ok:
        raise ModelError(f"{attribute.name} must be a positive number or None, got {value!r}")


@frozen(kw_only=True)
class Limits:
    """One table of limits. Every field is optional; ``None`` means no limit.

    Quantities are in units of the instrument, notionals and the loss limit in
    the account currency.
    """

    max_order_quantity: Decimal | None = field(
        default=None, converter=_decimal, validator=_positive
    )
    """The largest quantity of one order."""
    max_order_notional: Decimal | None = field(
        default=None, converter=_decimal, validator=_positive
    )
    """The largest quantity x price x rate_to_account of one order."""
    max_position: Decimal | None = field(default=None, converter=_decimal, validator=_positive)
    """The largest absolute position in an instrument after the order."""
    max_open_positions: int | None = field(default=None, validator=_positive)
    """The most instruments with a non-zero position at the broker, counting the one an
    order opens."""
    max_orders_per_second: int | None = field(default=None, validator=_positive)
    """The most orders in any one-second window (see the module notes)."""
    daily_loss_limit: Decimal | None = field(default=None, converter=_decimal, validator=_positive)
    """A positive amount: at a day's P&L of ``-daily_loss_limit`` or worse the charter
    moves to REDUCING."""
    require_stop_loss: bool | None = None
    """Whether a new or increased position needs an attached stop loss."""
    min_reward_to_risk: Decimal | None = field(
        default=None, converter=_decimal, validator=_positive
    )
    """For an order with a stop loss and a take profit: the least
    ``|take_profit - entry| / |entry - stop_loss|``."""
    trading_hours: TradingHours | None = None
    """When exposure-adding orders are allowed."""

    def rules(self) -> int:
        """How many limits this table sets."""
        return sum(
            1
            for a in attrs.fields(Limits)
            if getattr(self, a.name) is not None
            and not (a.name == "require_stop_loss" and not self.require_stop_loss)
        )


_LIMIT_KEYS: Final = tuple(a.name for a in attrs.fields(Limits))


@frozen(kw_only=True)
class RiskContext:
    """Everything the charter needs to judge one order.

    ``position`` is the current signed quantity of the instrument at the
    broker, ``open_positions`` the number of instruments with a non-zero
    position there, ``daily_pnl`` the day's realized plus unrealized P&L in the
    account currency, ``rate_to_account`` converts the instrument's quote
    currency to the account currency, ``reference_price`` prices a market
    order, and ``now`` is the engine's clock.
    """

    request: OrderRequest
    strategy: str
    broker: str
    reference_price: Decimal
    position: Decimal
    open_positions: int
    daily_pnl: Decimal
    rate_to_account: Decimal = Decimal(1)
    now: datetime = field(converter=to_utc)


# ---------------------------------------------------------------------------
# the charter

_ONE_SECOND: Final = timedelta(seconds=1)
_CACHE_SIZE: Final = 4096


class _Effective:
    """The effective limits (and their tables) for one (broker, instrument, strategy)."""

    __slots__ = (
        "hours",
        "loss",
        "loss_src",
        "notional",
        "notional_src",
        "open",
        "open_src",
        "position",
        "position_src",
        "quantity",
        "quantity_src",
        "rate",
        "rate_src",
        "reward",
        "reward_src",
        "stop",
        "stop_src",
        "window",
    )

    def __init__(self, tables: Sequence[tuple[str, Limits]]) -> None:
        def smallest(name: str) -> tuple[Any, str]:
            best: Any = None
            src = ""
            for where, limits in tables:
                value = getattr(limits, name)
                if value is not None and (best is None or value < best):
                    best, src = value, where
            return best, src

        self.quantity, self.quantity_src = smallest("max_order_quantity")
        self.notional, self.notional_src = smallest("max_order_notional")
        self.position, self.position_src = smallest("max_position")
        self.open, self.open_src = smallest("max_open_positions")
        self.rate, self.rate_src = smallest("max_orders_per_second")
        self.loss, self.loss_src = smallest("daily_loss_limit")
        self.stop: bool = False
        self.stop_src = ""
        self.reward: Decimal | None = None
        self.reward_src = ""
        for where, limits in tables:
            if limits.require_stop_loss and not self.stop:
                self.stop, self.stop_src = True, where
            value = limits.min_reward_to_risk
            if value is not None and (self.reward is None or value > self.reward):
                self.reward, self.reward_src = value, where
        self.hours: tuple[tuple[TradingHours, str], ...] = tuple(
            (limits.trading_hours, where)
            for where, limits in tables
            if limits.trading_hours is not None
        )
        self.window: deque[datetime] | None = None


def _fmt(value: Decimal) -> str:
    return f"{value:f}"


def _what(request: OrderRequest) -> str:
    """The order, for denial messages (built only when an order is denied)."""
    return f"{request.side.value} {_fmt(request.quantity)} {request.instrument}"


class Charter:
    """The pre-trade risk checks and the trading state (see the module notes).

    ``brokers``, ``instruments`` and ``strategies`` map a broker name, an
    instrument symbol or a strategy name to the limits of its table; the
    effective limit of each rule is the strictest one set.
    """

    def __init__(
        self,
        global_limits: Limits | None = None,
        *,
        brokers: Mapping[str, Limits] | None = None,
        instruments: Mapping[str, Limits] | None = None,
        strategies: Mapping[str, Limits] | None = None,
    ) -> None:
        self._global = global_limits if global_limits is not None else Limits()
        self._brokers = dict(brokers or {})
        self._instruments = dict(instruments or {})
        self._strategies = dict(strategies or {})
        self._cache: dict[tuple[str, str, str], _Effective] = {}
        self._windows: dict[tuple[str, str], deque[datetime]] = {}
        self._global_rate = self._global.max_orders_per_second
        self._global_window: deque[datetime] = deque()
        self._state = TradingState.ACTIVE
        self._reason = ""
        self._reduce_code = ReasonCode.REDUCE_ONLY

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> TradingState:
        """The current trading state."""
        return self._state

    @property
    def reason(self) -> str:
        """Why the charter is REDUCING or HALTED (empty when ACTIVE)."""
        return self._reason

    def halt(self, reason: str) -> None:
        """Refuse every order until :meth:`resume`."""
        self._state, self._reason = TradingState.HALTED, reason

    def reduce(self, reason: str) -> None:
        """Allow only exposure-reducing orders until :meth:`resume`."""
        self._state, self._reason = TradingState.REDUCING, reason
        self._reduce_code = ReasonCode.REDUCE_ONLY

    def resume(self) -> None:
        """Back to ACTIVE. A daily loss still past its limit moves the charter
        back to REDUCING at the next order that adds exposure."""
        self._state, self._reason = TradingState.ACTIVE, ""
        self._reduce_code = ReasonCode.REDUCE_ONLY

    def rules_active(self) -> int:
        """How many limits are set, over all tables."""
        tables = [self._global, *self._brokers.values()]
        tables += [*self._instruments.values(), *self._strategies.values()]
        return sum(t.rules() for t in tables)

    # -- the check -----------------------------------------------------------

    def _effective(self, broker: str, instrument: str, strategy: str) -> _Effective:
        tables = [("[risk]", self._global)]
        for prefix, mapping, name in (
            ("brokers", self._brokers, broker),
            ("instruments", self._instruments, instrument),
            ("strategies", self._strategies, strategy),
        ):
            limits = mapping.get(name)
            if limits is not None:
                tables.append((f"[risk.{prefix}.{name}]", limits))
        effective = _Effective(tables)
        if effective.rate is not None:
            effective.window = self._windows.setdefault((broker, strategy), deque())
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[(broker, instrument, strategy)] = effective
        return effective

    def check(self, ctx: RiskContext) -> None:
        """Allow the order of ``ctx`` (and count it for the rate limit) or raise
        :class:`RiskDenied` saying which limit it breaks and where that is configured."""
        request = ctx.request
        state = self._state
        if state is TradingState.HALTED:
            raise RiskDenied(
                ReasonCode.HALTED,
                f"trading is halted ({self._reason or 'no reason given'}); no orders are "
                "taken until the charter is resumed",
            )
        eff = self._cache.get((ctx.broker, request.instrument, ctx.strategy))
        if eff is None:
            eff = self._effective(ctx.broker, request.instrument, ctx.strategy)

        quantity = request.quantity
        position = ctx.position
        buy = request.side is Side.BUY
        if buy:
            reducing = position < 0 and quantity <= -position
        else:
            reducing = position > 0 and quantity <= position

        if not reducing:
            if state is TradingState.ACTIVE and eff.loss is not None and ctx.daily_pnl <= -eff.loss:
                self._state = state = TradingState.REDUCING
                self._reduce_code = ReasonCode.DAILY_LOSS
                self._reason = (
                    f"daily P&L {_fmt(ctx.daily_pnl)} reached daily_loss_limit "
                    f"{_fmt(eff.loss)} ({eff.loss_src})"
                )
            if state is TradingState.REDUCING:
                raise RiskDenied(
                    self._reduce_code,
                    f"{_what(request)}: only orders that reduce a position are taken "
                    f"({self._reason or 'no reason given'}); a position of {_fmt(position)} "
                    "is reduced by an opposite order no larger than it",
                )

        if eff.quantity is not None and quantity > eff.quantity:
            raise RiskDenied(
                ReasonCode.MAX_ORDER_QUANTITY,
                f"{_what(request)}: order quantity {_fmt(quantity)} exceeds "
                f"max_order_quantity {_fmt(eff.quantity)} ({eff.quantity_src})",
            )
        entry = request.entry_price
        if entry is None:
            entry = ctx.reference_price
        if eff.notional is not None:
            notional = quantity * entry * ctx.rate_to_account
            if notional > eff.notional:
                raise RiskDenied(
                    ReasonCode.MAX_ORDER_NOTIONAL,
                    f"{_what(request)}: order notional {_fmt(notional)} exceeds "
                    f"max_order_notional {_fmt(eff.notional)} ({eff.notional_src})",
                )

        if not reducing:
            if eff.position is not None:
                after = position + quantity if buy else position - quantity
                if abs(after) > eff.position:
                    raise RiskDenied(
                        ReasonCode.MAX_POSITION,
                        f"{_what(request)}: position after the order {_fmt(after)} exceeds "
                        f"max_position {_fmt(eff.position)} ({eff.position_src})",
                    )
            if eff.open is not None and position == 0 and ctx.open_positions >= eff.open:
                raise RiskDenied(
                    ReasonCode.MAX_OPEN_POSITIONS,
                    f"{_what(request)}: open positions {ctx.open_positions + 1} with this "
                    f"order exceed max_open_positions {eff.open} ({eff.open_src})",
                )
            if eff.stop and request.stop_loss is None:
                raise RiskDenied(
                    ReasonCode.STOP_LOSS_REQUIRED,
                    f"{_what(request)}: a new or increased position needs a stop_loss; "
                    f"require_stop_loss is set ({eff.stop_src})",
                )
            for hours, where in eff.hours:
                if not hours.allows(ctx.now):
                    raise RiskDenied(
                        ReasonCode.TRADING_HOURS,
                        f"{_what(request)}: {ctx.now.isoformat()} is outside trading_hours "
                        f"{hours.describe()} ({where}); orders that reduce a position are "
                        "still taken",
                    )

        if eff.reward is not None:
            stop_loss, take_profit = request.stop_loss, request.take_profit
            if stop_loss is not None and take_profit is not None:
                reward = abs(take_profit - entry)
                risk = abs(entry - stop_loss)
                if reward < eff.reward * risk:
                    ratio = f"{reward / risk:.2f}" if risk else "inf"
                    raise RiskDenied(
                        ReasonCode.REWARD_TO_RISK,
                        f"{_what(request)}: reward to risk {ratio} (take profit "
                        f"{_fmt(take_profit)}, stop loss {_fmt(stop_loss)}, "
                        f"entry {_fmt(entry)}) "
                        f"is below min_reward_to_risk {_fmt(eff.reward)} ({eff.reward_src})",
                    )

        now = ctx.now
        window = eff.window
        if window is not None or self._global_rate is not None:
            cutoff = now - _ONE_SECOND
            glob = self._global_window
            if self._global_rate is not None:
                while glob and glob[0] <= cutoff:
                    glob.popleft()
                if len(glob) >= self._global_rate:
                    raise RiskDenied(
                        ReasonCode.ORDER_RATE,
                        f"{_what(request)}: {len(glob) + 1} orders in one second over all "
                        f"strategies exceed max_orders_per_second {self._global_rate} ([risk])",
                    )
            if window is not None:
                while window and window[0] <= cutoff:
                    window.popleft()
                if len(window) >= eff.rate:
                    raise RiskDenied(
                        ReasonCode.ORDER_RATE,
                        f"{_what(request)}: {len(window) + 1} orders in one second from strategy "
                        f"{ctx.strategy!r} at broker {ctx.broker!r} exceed "
                        f"max_orders_per_second {eff.rate} ({eff.rate_src})",
                    )
                window.append(now)
            if self._global_rate is not None:
                glob.append(now)


# ---------------------------------------------------------------------------
# the [risk] table

_SECTIONS: Final = ("brokers", "instruments", "strategies")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (boolean)"
    if isinstance(value, dict):
        return "a table"
    kinds = [(int, "integer"), (Decimal, "float"), (str, "string"), (list, "array")]
    kind = next((name for t, name in kinds if isinstance(value, t)), type(value).__name__)
    text = repr(value) if isinstance(value, str) else str(value)
    return f"{text if len(text) <= 80 else text[:77] + '...'} ({kind})"


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, expected: str, found: str) -> ConfigError:
        return ConfigError(f"{self.source}: key {key!r}: expected {expected}; found {found}")

    def check_keys(self, key: str, data: Mapping[str, Any], allowed: Sequence[str]) -> None:
        for name in data:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                advice = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(
                    f"{key}.{name}",
                    f"one of the keys of [{key}]: {', '.join(allowed)}",
                    f"unknown key {name!r}{advice}",
                )

    def limits(self, key: str, data: Mapping[str, Any]) -> Limits:
        values: dict[str, Any] = {}
        for name, value in data.items():
            path = f"{key}.{name}"
            parse = _PARSERS[name]
            values[name] = parse(self, path, value)
        return Limits(**values)

    def positive_number(self, path: str, value: object) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, int | Decimal) or not value > 0:
            raise self.error(path, "a positive number", _toml(value))
        return Decimal(value)

    def positive_integer(self, path: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.error(path, "a positive integer", _toml(value))
        return value

    def boolean(self, path: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.error(path, "a boolean (true or false, without quotes)", _toml(value))
        return value

    def hours(self, path: str, value: object) -> TradingHours:
        expected = 'a table { timezone = "Europe/London", windows = ["mon-fri 08:00-17:00"] }'
        if not isinstance(value, dict):
            raise self.error(path, expected, _toml(value))
        self.check_keys(path, value, ("timezone", "windows"))
        timezone = value.get("timezone", "UTC")
        if not isinstance(timezone, str):
            raise self.error(f"{path}.timezone", "an IANA timezone name", _toml(timezone))
        windows = value.get("windows")
        if not isinstance(windows, list) or not windows:
            raise self.error(
                f"{path}.windows",
                'a non-empty array such as ["mon-fri 08:00-17:00"]',
                "nothing (the key is missing)" if windows is None else _toml(windows),
            )
        parsed = []
        for index, text in enumerate(windows):
            try:
                parsed.append(TradingWindow.parse(text))
            except ValueError as e:
                raise self.error(f"{path}.windows[{index}]", "a trading window", str(e)) from None
        try:
            return TradingHours(timezone, tuple(parsed))
        except ValueError as e:
            raise self.error(f"{path}.timezone", "an IANA timezone name", str(e)) from None


_PARSERS: Final[dict[str, Callable[[_Reader, str, object], object]]] = {
    "max_order_quantity": _Reader.positive_number,
    "max_order_notional": _Reader.positive_number,
    "max_position": _Reader.positive_number,
    "max_open_positions": _Reader.positive_integer,
    "max_orders_per_second": _Reader.positive_integer,
    "daily_loss_limit": _Reader.positive_number,
    "require_stop_loss": _Reader.boolean,
    "min_reward_to_risk": _Reader.positive_number,
    "trading_hours": _Reader.hours,
}


def parse_risk(data: Mapping[str, Any], source: str) -> Charter:
    """A :class:`Charter` from the ``[risk]`` table of the file ``source``.

    The table's own keys are the global limits; ``[risk.brokers.<name>]``,
    ``[risk.instruments.<SYMBOL>]`` and ``[risk.strategies.<name>]`` hold the
    overrides, with the same keys. ``trading_hours`` is a table
    ``{ timezone = "Europe/London", windows = ["mon-fri 08:00-17:00"] }``.

    Raises:
        ConfigError: (a ``ValueError``) an unknown key or a wrong value; the
            message names ``source``, the dotted key, what was expected and what
            was found.
    """
    reader = _Reader(source)
    reader.check_keys("risk", data, (*_LIMIT_KEYS, *_SECTIONS))
    top = reader.limits("risk", {k: v for k, v in data.items() if k not in _SECTIONS})
    sections: dict[str, dict[str, Limits]] = {}
    for section in _SECTIONS:
        key = f"risk.{section}"
        tables = data.get(section, {})
        if not isinstance(tables, dict):
            raise reader.error(key, f"a table of [{key}.<name>] tables", _toml(tables))
        sections[section] = {}
        for name, table in tables.items():
            path = f"{key}.{name}"
            if section == "instruments":
                try:
                    check_symbol(name)
                except ModelError as e:
                    raise reader.error(path, "a canonical instrument symbol", str(e)) from None
            elif not _NAME.match(name):
                raise reader.error(
                    path, "a name of letters, digits, '-' and '_'", f"the name {name!r}"
                )
            if not isinstance(table, dict):
                raise reader.error(path, f"a table [{path}] of limits", _toml(table))
            reader.check_keys(path, table, _LIMIT_KEYS)
            sections[section][name] = reader.limits(path, table)
    return Charter(
        top,
        brokers=sections["brokers"],
        instruments=sections["instruments"],
        strategies=sections["strategies"],
    )
