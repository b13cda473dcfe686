"""Trading modes: whether orders reach real venues, and who may say so.

Four modes, from the least risk to the most:

- ``off``: no order goes to a real broker (each is refused with
  :attr:`~rick_core.engine.risk.ReasonCode.MODE_OFF`);
- ``ghost`` (the default): strategies run on the real broker's live quotes, but
  every order is simulated by a paper account (:class:`~rick_core.paper.ghost.GhostBroker`)
  and nothing is sent to the venue;
- ``canary``: real orders, under the caps of ``[canary]`` in rick.toml (the
  largest quantity of one order, the most real orders in one UTC day);
- ``live``: real orders, with only the ``[risk]`` limits.

The built-in ``paper`` broker is a simulator: it trades the same way in every
mode. The modes govern every other broker.

The mode is never read from rick.toml, where an edit could arm real trading: it
lives in ``$RICK_HOME/trading-mode.json`` (written atomically, mode 0600) and
is set by ``rick mode``. Switching to ``canary`` or ``live`` needs the PIN
(``$RICK_HOME/trading-pin.json``: an scrypt hash with its random salt and
parameters); five wrong PINs in a row lock switching for
:data:`LOCKOUT` (kept in ``trading-pin-lockout.json``, so separate processes
cannot take turns guessing). Switching to ``off`` or ``ghost`` needs no PIN:
it only lowers risk.

A running engine (:class:`ModeGate`) reads the mode when it is built and then
watches the file: a switch down (to ``off``, to ``ghost``, or ``live`` to
``canary``) applies within a second; a switch up applies at the next start,
and the engine logs that it needs a restart.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import fcntl
import hmac
import json
import os
import tempfile
import unicodedata
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from attrs import frozen

from rick_core.engine.risk import ReasonCode, RiskDenied
from rick_core.model import Order, OrderStatus, to_utc, utc_now
from rick_core.security.kdf import (
    DEFAULT_SCRYPT,
    ScryptParams,
    check_scrypt,
    new_scrypt,
    scrypt_derive,
)

if TYPE_CHECKING:
    from rick_core.broker import Broker
    from rick_core.config import CanaryConfig
    from rick_core.store import Store

__all__ = [
    "DEFAULT_MODE",
    "LOCKOUT",
    "MAX_FAILURES",
    "MIN_PIN_LENGTH",
    "MODE_FILENAME",
    "PIN_FILENAME",
    "ModeError",
    "ModeGate",
    "ModeState",
    "PinError",
    "PinInfo",
    "PinScrypt",
    "TradingMode",
    "check_new_pin",
    "is_simulator",
    "lockout_status",
    "pin_info",
    "read_mode",
    "set_pin",
    "verify_pin",
    "write_mode",
]

MODE_FILENAME: Final = "trading-mode.json"
PIN_FILENAME: Final = "trading-pin.json"
LOCKOUT_FILENAME: Final = "trading-pin-lockout.json"
_LOCK_FILENAME: Final = "trading-pin.lock"

MIN_PIN_LENGTH: Final = 6
MAX_PIN_LENGTH: Final = 128
MAX_FAILURES: Final = 5
"""Wrong PINs in a row that lock switching up."""
LOCKOUT: Final = timedelta(minutes=15)
"""How long switching up stays locked after :data:`MAX_FAILURES` wrong PINs."""

MODE_POLL: Final = 0.5
"""Seconds between two looks of a running engine at the mode file."""

_PIN_FORMAT: Final = "rick-mode-pin"
_PIN_VERSION: Final = 1
_SALT_BYTES: Final = 16
_HASH_BYTES: Final = 32


class TradingMode(enum.Enum):
    """Whether orders to real brokers are refused, simulated, capped or sent."""

    OFF = "off"
    GHOST = "ghost"
    CANARY = "canary"
    LIVE = "live"

    @property
    def rank(self) -> int:
        """0 for off up to 3 for live: a higher rank opens more risk."""
        return _RANKS[self]

    @property
    def real(self) -> bool:
        """Whether orders reach the venue (canary and live): switching here needs the PIN."""
        return self in (TradingMode.CANARY, TradingMode.LIVE)

    def describe(self) -> str:
        """What the mode does, in one sentence."""
        return _DESCRIPTIONS[self]


_RANKS: Final = {
    TradingMode.OFF: 0,
    TradingMode.GHOST: 1,
    TradingMode.CANARY: 2,
    TradingMode.LIVE: 3,
}
_DESCRIPTIONS: Final = {
    TradingMode.OFF: "no order goes to a real broker (the built-in paper broker still simulates)",
    TradingMode.GHOST: (
        "real brokers give live quotes; orders are simulated by a paper account and "
        "nothing is sent to the venue"
    ),
    TradingMode.CANARY: "REAL orders, capped by [canary] max_quantity and max_orders_per_day",
    TradingMode.LIVE: "REAL orders, with only the [risk] limits",
}

DEFAULT_MODE: Final = TradingMode.GHOST
"""The mode when ``rick mode`` was never used: nothing reaches a real venue."""


class ModeError(Exception):
    """A mode or PIN file cannot be used; the message says what to do."""


class PinError(ModeError):
    """The PIN was not accepted. ``kind`` is ``no_pin``, ``wrong_pin`` or ``locked``;
    ``failures`` the wrong PINs in a row so far; ``locked_until`` when a lockout ends."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        failures: int = 0,
        locked_until: datetime | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.failures = failures
        self.locked_until = locked_until


# ---------------------------------------------------------------------------
# private files


def _write_private(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=1)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, path)
        temp = ""
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        if temp:
            with contextlib.suppress(OSError):
                os.unlink(temp)


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, None when there is no file; ValueError when damaged."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("not a time")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("a time without a timezone")
    return to_utc(parsed)


# ---------------------------------------------------------------------------
# the mode file


@frozen
class ModeState:
    """The mode recorded in ``$RICK_HOME``: who set it, when, from what and why.

    ``time`` is None when the mode was never set (the default). ``problem`` says why
    the file could not be read; the mode is then ``off`` (when in doubt, rick opens
    no risk)."""

    mode: TradingMode
    actor: str = ""
    time: datetime | None = None
    previous: TradingMode | None = None
    reason: str = ""
    problem: str = ""

    @property
    def is_default(self) -> bool:
        """True when ``rick mode`` was never used in this home."""
        return self.time is None and not self.problem


def read_mode(home: Path) -> ModeState:
    """The mode set in ``home``: the default (ghost) when none was, ``off`` (with
    :attr:`ModeState.problem`) when the file cannot be read."""
    path = home / MODE_FILENAME
    try:
        data = _read_json(path)
        if data is None:
            return ModeState(DEFAULT_MODE)
        previous = data.get("previous")
        return ModeState(
            mode=TradingMode(data["mode"]),
            actor=str(data.get("actor", "")),
            time=_time(data["time"]),
            previous=None if previous is None else TradingMode(previous),
            reason=str(data.get("reason", "")),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return ModeState(
            TradingMode.OFF,
            actor="system",
            problem=(
                f"{path} cannot be read ({type(exc).__name__}): trading is off until "
                "the mode is set again with `rick mode <mode>`"
            ),
        )


def write_mode(
    home: Path,
    mode: TradingMode,
    *,
    actor: str,
    previous: TradingMode | None = None,
    reason: str = "",
    now: datetime | None = None,
) -> ModeState:
    """Record ``mode`` in ``home`` (atomically, 0600). The caller checks the PIN and audits."""
    state = ModeState(
        mode=mode, actor=actor, time=to_utc(now or utc_now()), previous=previous, reason=reason
    )
    assert state.time is not None
    _write_private(
        home / MODE_FILENAME,
        {
            "mode": mode.value,
            "actor": actor,
            "time": state.time.isoformat(),
            "previous": None if previous is None else previous.value,
            "reason": reason,
        },
    )
    return state


# ---------------------------------------------------------------------------
# the PIN


PinScrypt = ScryptParams
"""scrypt cost parameters of a new PIN hash (an existing hash keeps its own)."""


@frozen
class PinInfo:
    """That a PIN is set, when and by whom (never the PIN nor its hash)."""

    set_at: datetime
    set_by: str


def check_new_pin(pin: str) -> None:
    """Raise :class:`ModeError` if ``pin`` cannot be a PIN (the message never shows it)."""
    if not isinstance(pin, str) or len(pin) < MIN_PIN_LENGTH:
        raise ModeError(f"a PIN needs at least {MIN_PIN_LENGTH} characters; nothing was changed")
    if len(pin) > MAX_PIN_LENGTH:
        raise ModeError(f"a PIN has at most {MAX_PIN_LENGTH} characters; nothing was changed")
    if pin != pin.strip() or any(unicodedata.category(c).startswith("C") for c in pin):
        raise ModeError(
            "a PIN cannot start or end with a space nor hold control characters; "
            "nothing was changed"
        )


def _derive(pin: str, kdf: Mapping[str, Any]) -> bytes:
    return scrypt_derive(pin, kdf, _HASH_BYTES)


def _check_kdf(kdf: Any) -> dict[str, Any]:
    """The kdf of a PIN file if it is one rick accepts (bounded costs), else ValueError."""
    return check_scrypt(kdf, min_salt=_SALT_BYTES)


def _read_pin(home: Path) -> tuple[dict[str, Any], bytes, PinInfo] | None:
    """The PIN file's kdf, hash and info; None when no PIN is set."""
    path = home / PIN_FILENAME
    try:
        data = _read_json(path)
        if data is None:
            return None
        if data.get("format") != _PIN_FORMAT or data.get("version") != _PIN_VERSION:
            raise ValueError("not a rick PIN file of a known version")
        kdf = _check_kdf(data["kdf"])
        digest = base64.b64decode(data["hash"], validate=True)
        if len(digest) != _HASH_BYTES:
            raise ValueError("the hash is malformed")
        info = PinInfo(set_at=_time(data["set_at"]), set_by=str(data.get("set_by", "")))
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ModeError(
            f"{path} is damaged or unreadable ({exc}); nothing was changed. Delete the "
            "file and set a new PIN with `rick mode set-pin`"
        ) from None
    return kdf, digest, info


def pin_info(home: Path) -> PinInfo | None:
    """When the PIN was set and by whom; None when no PIN is set.

    Raises :class:`ModeError` when the PIN file is damaged."""
    found = _read_pin(home)
    return None if found is None else found[2]


def set_pin(
    home: Path,
    pin: str,
    *,
    actor: str,
    scrypt: ScryptParams = DEFAULT_SCRYPT,
    now: datetime | None = None,
) -> PinInfo:
    """Store a new PIN as an scrypt hash with a random salt (0600). The caller has
    checked the current PIN (:func:`verify_pin`) and audited the change."""
    check_new_pin(pin)
    kdf = new_scrypt(scrypt, _SALT_BYTES)
    _check_kdf(kdf)
    info = PinInfo(set_at=to_utc(now or utc_now()), set_by=actor)
    digest = _derive(pin, kdf)
    with _locked(home):
        _write_private(
            home / PIN_FILENAME,
            {
                "format": _PIN_FORMAT,
                "version": _PIN_VERSION,
                "kdf": kdf,
                "hash": base64.b64encode(digest).decode("ascii"),
                "set_at": info.set_at.isoformat(),
                "set_by": actor,
            },
        )
        _write_lockout(home, 0, None)
    return info


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """An exclusive lock over PIN checks and changes, across processes."""
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / _LOCK_FILENAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_lockout(home: Path) -> tuple[int, datetime | None]:
    try:
        data = _read_json(home / LOCKOUT_FILENAME)
        if data is None:
            return 0, None
        failures = data["failures"]
        if type(failures) is not int or failures < 0:
            raise ValueError("bad failure count")
        until = data.get("locked_until")
        return failures, None if until is None else _time(until)
    except (OSError, ValueError, KeyError, TypeError):
        # A damaged record of failures: one more wrong PIN locks.
        return MAX_FAILURES - 1, None


def _write_lockout(home: Path, failures: int, until: datetime | None) -> None:
    _write_private(
        home / LOCKOUT_FILENAME,
        {"failures": failures, "locked_until": None if until is None else until.isoformat()},
    )


def lockout_status(home: Path, *, now: datetime | None = None) -> tuple[int, datetime | None]:
    """``(wrong PINs in a row, end of the lockout or None)`` as of ``now``."""
    failures, until = _read_lockout(home)
    if until is not None and to_utc(now or utc_now()) >= until:
        return 0, None
    return failures, until


def verify_pin(home: Path, pin: str, *, now: datetime | None = None) -> None:
    """Return if ``pin`` is the PIN; otherwise raise :class:`PinError`.

    Checked under an exclusive lock, in constant time. A wrong PIN is counted in
    ``$RICK_HOME`` (so separate processes share the count); the
    :data:`MAX_FAILURES`-th in a row locks every check for :data:`LOCKOUT`, the
    right PIN included. The right PIN resets the count."""
    moment = to_utc(now or utc_now())
    with _locked(home):
        found = _read_pin(home)
        if found is None:
            raise PinError(
                "no_pin",
                "no PIN is set: set one with `rick mode set-pin` (canary and live need it)",
            )
        kdf, digest, _ = found
        failures, until = _read_lockout(home)
        if until is not None and moment < until:
            raise PinError(
                "locked",
                f"{MAX_FAILURES} wrong PINs in a row: switching is locked until "
                f"{until.strftime('%Y-%m-%d %H:%M:%S')} UTC; try again after that",
                failures=failures,
                locked_until=until,
            )
        if until is not None:  # a lockout that has ended starts a fresh count
            failures = 0
        try:
            candidate = _derive(pin, kdf)
        except (MemoryError, ValueError) as exc:
            raise ModeError(
                f"{home / PIN_FILENAME}: its scrypt parameters cannot be used here "
                f"({type(exc).__name__}); delete it and set a new PIN with `rick mode set-pin`"
            ) from None
        if hmac.compare_digest(candidate, digest):
            if failures or until is not None:
                _write_lockout(home, 0, None)
            return
        failures += 1
        if failures >= MAX_FAILURES:
            locked = moment + LOCKOUT
            _write_lockout(home, failures, locked)
            raise PinError(
                "wrong_pin",
                f"wrong PIN, {failures} in a row: switching is locked until "
                f"{locked.strftime('%Y-%m-%d %H:%M:%S')} UTC",
                failures=failures,
                locked_until=locked,
            )
        _write_lockout(home, failures, None)
        left = MAX_FAILURES - failures
        raise PinError(
            "wrong_pin",
            f"wrong PIN ({left} more wrong in a row lock switching for "
            f"{int(LOCKOUT.total_seconds() // 60)} minutes)",
            failures=failures,
        )


# ---------------------------------------------------------------------------
# the engine's side


def is_simulator(broker: Broker) -> bool:
    """Whether ``broker`` is the built-in paper broker itself (not a subclass, not a
    plugin): it simulates in every mode, so the mode does not govern it."""
    from rick_core.paper.broker import PaperBroker

    return type(broker) is PaperBroker


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino, st.st_size


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


class ModeGate:
    """The trading mode inside a running engine.

    :meth:`prepare` wraps each real broker in a
    :class:`~rick_core.paper.ghost.GhostBroker` when the engine starts in ghost
    mode and counts the real orders already sent today (from the store, so a
    restart keeps the canary cap); :meth:`check` (before the risk charter) and
    :meth:`admit` (after it) refuse or count each order; :meth:`watch` follows
    the mode file.
    """

    def __init__(
        self,
        state: ModeState,
        canary: CanaryConfig,
        *,
        home: Path | None = None,
        clock: Callable[[], datetime] = utc_now,
        canary_source: str = "[canary]",
    ) -> None:
        self.state = state
        self.started = state.mode
        """The mode the engine started in (it decides which brokers are simulated)."""
        self.mode = state.mode
        """The mode in force: the start mode, or lower after a switch down."""
        self.pending: TradingMode | None = None
        """A higher mode set while running: it applies at the next start."""
        self.canary = canary
        self.canary_source = canary_source
        self.home = home
        self.governed: set[str] = set()
        """Brokers the mode applies to (every one but the built-in paper broker)."""
        self._clock = clock
        self._day = to_utc(clock()).date()
        self.sent_today = 0
        """Real orders sent on :attr:`governed` brokers this UTC day (from the store at start)."""
        self._seen = _stamp(home / MODE_FILENAME) if home is not None else None

    @classmethod
    def load(
        cls,
        home: Path,
        canary: CanaryConfig,
        *,
        clock: Callable[[], datetime] = utc_now,
        canary_source: str = "[canary]",
    ) -> ModeGate:
        """The gate for the mode recorded in ``home`` now."""
        gate = cls(read_mode(home), canary, home=home, clock=clock, canary_source=canary_source)
        if gate.state.problem:
            import structlog

            structlog.get_logger("rick.mode").error(
                "the trading mode cannot be read: trading is off", problem=gate.state.problem
            )
        return gate

    # -- start ---------------------------------------------------------------

    def prepare(
        self, brokers: Mapping[str, Broker], *, store: Store | None = None
    ) -> dict[str, Broker]:
        """The brokers the engine trades: each real one wrapped in a ghost broker
        when starting in ghost mode. Counts today's real orders from ``store``."""
        from rick_core.paper.ghost import GhostBroker

        prepared: dict[str, Broker] = {}
        for name, broker in brokers.items():
            if is_simulator(broker):
                prepared[name] = broker
                continue
            self.governed.add(name)
            if self.started is TradingMode.GHOST and not isinstance(broker, GhostBroker):
                broker = GhostBroker(broker, name=name, home=self.home)
            prepared[name] = broker
        if store is not None and self.governed:
            self.sent_today = self.count_sent(store, self.governed, self._day)
        return prepared

    @staticmethod
    def count_sent(store: Store, brokers: Collection[str], day: date) -> int:
        """Orders rick's strategies sent to a real venue on ``brokers`` during UTC ``day``:
        not simulated ones (ghost), nor ones refused before the send (a stored
        reject reason starting ``risk ``)."""
        from rick_core.paper.ghost import is_ghost_order

        start = _day_start(day)
        end = start + timedelta(days=1)
        count = 0
        for order, strategy in store.orders_created_since(start):
            if strategy is None or order.broker not in brokers or order.created_at >= end:
                continue
            if is_ghost_order(order):
                continue
            reason = order.reject_reason or ""
            if order.status is OrderStatus.REJECTED and reason.startswith("risk "):
                continue
            count += 1
        return count

    # -- each order ----------------------------------------------------------

    def check(self, order: Order, *, caps: bool = True) -> None:
        """Refuse ``order`` (raise :class:`RiskDenied`) if the mode does not let it go.
        ``caps=False`` skips the canary caps (an order fired by a trigger that was
        capped when it was placed); off and a switch down to ghost still refuse it."""
        if order.broker not in self.governed:
            return
        mode = self.mode
        if mode is TradingMode.LIVE:
            return
        if mode is TradingMode.OFF:
            who = self._who()
            raise RiskDenied(
                ReasonCode.MODE_OFF,
                f"{_what(order)}: the trading mode is off{who}: no order goes to broker "
                f"{order.broker!r}. `rick mode ghost` simulates orders; `rick mode canary` "
                "or `rick mode live` (PIN) sends them",
            )
        if mode is TradingMode.GHOST:
            if self.started is TradingMode.GHOST:
                return  # the ghost broker simulates it
            raise RiskDenied(
                ReasonCode.MODE_GHOST,
                f"{_what(order)}: the trading mode was switched down to ghost while rick "
                f"runs{self._who()}: no real order goes to broker {order.broker!r}; restart "
                "rick to simulate orders in ghost mode",
            )
        if caps:
            self._check_caps(order)

    def admit(self, order: Order) -> None:
        """:meth:`check` again (the mode or the count may have changed meanwhile),
        then count the order if it goes to a real venue. Synchronous: nothing
        happens between the check and the count."""
        self.check(order)
        if order.broker in self.governed and self.mode.real:
            self._roll_day()
            self.sent_today += 1

    def _check_caps(self, order: Order) -> None:
        request = order.request
        cap = self.canary.max_quantity_for(request.instrument)
        if request.quantity > cap:
            where = (
                f"{self.canary_source[:-1]}.instrument_max_quantity] {request.instrument}"
                if request.instrument in self.canary.instrument_max_quantity
                else f"{self.canary_source} max_quantity"
            )
            raise RiskDenied(
                ReasonCode.CANARY_QUANTITY,
                f"{_what(order)}: quantity {request.quantity:f} is above the canary cap "
                f"{cap:f} ({where}); canary mode sends only small real orders. Lower the "
                "order, or raise the cap in rick.toml and restart",
            )
        self._roll_day()
        limit = self.canary.max_orders_per_day
        if self.sent_today >= limit:
            raise RiskDenied(
                ReasonCode.CANARY_ORDERS,
                f"{_what(order)}: {self.sent_today} real orders were sent today "
                f"({self._day.isoformat()} UTC), the canary cap max_orders_per_day is {limit} "
                f"({self.canary_source}); more from 00:00 UTC, or raise the cap and restart",
            )

    def _roll_day(self) -> None:
        today = to_utc(self._clock()).date()
        if today != self._day:
            self._day = today
            self.sent_today = 0

    def _who(self) -> str:
        state = self.state
        if state.problem:
            return f" ({state.problem})"
        if state.actor:
            return f" (set by {state.actor})"
        return ""

    # -- following the file --------------------------------------------------

    def follow(self, state: ModeState) -> None:
        """Take a mode read from the file: lower applies now, higher at the next start."""
        import structlog

        log = structlog.get_logger("rick.mode")
        new = state.mode
        if state.problem:
            log.error("the trading mode cannot be read: trading is off", problem=state.problem)
        if new.rank < self.mode.rank:
            log.warning(
                "trading mode switched down: applied now",
                mode=new.value,
                was=self.mode.value,
                by=state.actor,
            )
            self.mode, self.state, self.pending = new, state, None
        elif new.rank > self.mode.rank:
            if self.pending is not new:
                log.warning(
                    "trading mode switched up: it applies at the next start; restart rick",
                    mode=new.value,
                    running=self.mode.value,
                    by=state.actor,
                )
            self.pending = new
        else:
            self.pending = None

    async def watch(self) -> None:
        """Follow the mode file until cancelled (run in the engine's nursery)."""
        import trio

        if self.home is None:
            return
        path = self.home / MODE_FILENAME
        while True:
            await trio.sleep(MODE_POLL)
            stamp = _stamp(path)
            if stamp != self._seen:
                self._seen = stamp
                self.follow(read_mode(self.home))

    # -- reporting -----------------------------------------------------------

    def summary(self) -> str:
        """The mode for the status line and the start log, e.g. ``canary 3/10 today``;
        ``(paper only)`` when every broker is the built-in paper broker (the mode
        changes nothing then)."""
        text = self.mode.value
        if not self.governed:
            return f"{text} (paper only)"
        if self.mode is TradingMode.CANARY:
            text += f" {self.sent_today}/{self.canary.max_orders_per_day} today"
        if self.pending is not None:
            text += f" ({self.pending.value} after a restart)"
        return text


def _what(order: Order) -> str:
    request = order.request
    return (
        f"{request.side.value} {request.quantity:f} {request.instrument} "
        f"{request.type.value} on {order.broker}"
    )
