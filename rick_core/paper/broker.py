"""The paper broker: a :class:`~rick_core.broker.Broker` over a simulated market.

Options (``[brokers.<name>]`` with ``kind = "paper"``), all optional:

=====================  =========================================================
``seed``               integer seed of the simulated market (default 1): the same
                       seed gives the same prices
``interval``           seconds between quotes of one instrument (default 0.5)
``speed``              how fast simulated time runs: 1 is real time (default),
                       10 ten times faster, 0 as fast as the consumer takes quotes
``instruments``        symbols of the default universe to simulate (default: all)
``replay``             a JSONL or CSV file of recorded quotes to replay instead
``loop``               replay the file again at its end (default false)
``currency``           account currency (default "USD")
``balance``            starting balance (default 100000)
``leverage``           table of asset class -> leverage (fx 50, crypto 2, equity 4)
``fees``               table of asset class -> fee rate of notional
``instrument_fees``    table of symbol -> fee rate, overriding ``fees``
``slippage``           fraction of price paid on market, stop and market-if-touched
                       fills (default 0)
``maintenance_ratio``  close out when equity < ratio x margin used (default 0.5)
``persist``            keep the account (balance, positions, working orders,
                       fills) between runs, and through a crash, in
                       ``$RICK_HOME/paper/<name>.json`` and ``<name>.journal``
                       (default true)
``order_types``        the order types the broker claims and takes (default all:
                       ``["market", "limit", "stop", "stop_limit",
                       "trailing_stop", "market_if_touched"]``); others raise
                       ``Unsupported``
``time_in_force``      the times in force it claims and takes (default all:
                       ``["gtc", "gtd", "day", "ioc", "fok"]``)
``attached_protection``  whether orders may carry a stop loss / take profit /
                       trailing stop, and have the first two changed
                       (default true)
``position_protection``  whether a position's stop loss / take profit can be set
                       with ``replace_position_protection`` (default true)
``fractional_quantity``  whether quantities may be fractional (default true)
``heartbeat``          seconds of silence after which a stream yields a
                       :class:`~rick_core.broker.Heartbeat` (default 5)
``quote_silence``      the broker's ``quote_silence``: seconds without a quote or
                       heartbeat after which the engine reopens the quote stream
                       (default 10; false: no watchdog)
``event_silence``      the same for the event stream (default 20; false: none)
=====================  =========================================================

The last five narrow what the paper venue can do, to rehearse a weaker venue:
rick's engine emulates what a broker does not claim, and with, say,
``order_types = ["market", "limit"]`` and ``attached_protection = false`` it
does so against the paper broker. The broker then claims only those in its
:class:`~rick_core.broker.Capabilities` and refuses the rest with
``Unsupported``, as a venue lacking them would.

Durability: with ``persist``, every change of the account (an order accepted,
filled, cancelled, a trigger, a fill, a position) is appended to the journal
before the call that made it returns or publishes it, so a process killed at
any moment, even by ``SIGKILL``, restarts with the venue exactly as it was
(see :mod:`rick_core.paper.journal`). Quotes are not kept: the restarted
market brings its own, and its clock continues from the latest time the
account saw (a venue's clock never runs backwards).

Faults, for tests and rehearsals: :meth:`PaperBroker.drop_streams` ends the
open streams with :class:`~rick_core.broker.Disconnected`, as a venue dropping
the connection; :meth:`PaperBroker.stall_streams` makes them deliver nothing,
heartbeats included, as a hung connection, until it ends or
:meth:`PaperBroker.resume_streams`. Events published meanwhile reach a
stalled stream late, in order; events published while no event stream is
subscribed reach no later one (the engine reconciles after subscribing).

The market advances lazily with trio's clock: whenever a stream or a call
needs it, every quote due by now is generated and applied to the account
(fills, protective stops, close-outs) in time order. So a run under trio's
autojump clock is deterministic, and a slow consumer makes the market catch
up rather than stall.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

import attrs
import structlog
import trio

from rick_core.broker import (
    HEARTBEAT,
    KEEP,
    Broker,
    BrokerEvent,
    Capabilities,
    Disconnected,
    Heartbeat,
    Keep,
    NotFound,
    TemporarilyUnavailable,
    Unsupported,
)
from rick_core.components import ComponentSetup
from rick_core.model import (
    Account,
    AssetClass,
    Fill,
    Instrument,
    Order,
    OrderRequest,
    OrderType,
    Position,
    Quote,
    TimeInForce,
    utc_now,
)
from rick_core.paper.account import PaperAccount, PaperSettings
from rick_core.paper.journal import COMPACT_BYTES, AccountInUse, JournalError, PaperFiles
from rick_core.paper.market import DEFAULT_UNIVERSE, QuoteSource, ReplayMarket, SimulatedMarket
from rick_core.symbols import SeparatorSymbolMap

__all__ = ["NATIVE_CAPABILITIES", "PaperBroker", "PaperOptions"]

NATIVE_CAPABILITIES = Capabilities(
    order_types=OrderType,
    time_in_force=TimeInForce,
    attached_stop_loss=True,
    attached_take_profit=True,
    modify_order_protection=True,
    modify_position_protection=True,
    client_order_ids=True,
    fractional_quantity=True,
    short_selling=True,
    streaming_quotes=True,
    streaming_events=True,
    attached_trailing_stop=True,
)
"""Everything the paper venue can do; options narrow it (see the module documentation)."""

log = structlog.get_logger("rick.paper")

FAST_BATCH = 64
"""Quotes a stream hands out between checkpoints when ``speed = 0``."""


STREAM_KINDS = ("quotes", "events")
"""The kinds of stream :meth:`PaperBroker.drop_streams` and its siblings take."""


class _Subscriber:
    """One open stream: what is queued for it, and how it is to end.

    ``None`` in the queue makes the stream look at ``ended`` and ``dropped`` and
    at its kind's stall before going on (:meth:`_Streams.hold`); so the quote
    fast path checks nothing more per quote than it did."""

    __slots__ = ("dropped", "ended", "instruments", "queue", "wakeup")

    def __init__(self, instruments: frozenset[str] | None) -> None:
        self.instruments = instruments
        self.queue: deque[Any] = deque()
        self.wakeup = trio.Event()
        self.ended = False  # the broker closed: end after what is queued
        self.dropped = False  # the connection "dropped": raise before anything queued

    def push(self, item: Any) -> None:
        self.queue.append(item)
        self.wakeup.set()

    def signal(self) -> None:
        """Make the stream look at its state at its next step, before anything queued."""
        self.queue.appendleft(None)
        self.wakeup.set()

    def end(self) -> None:
        self.ended = True
        self.push(None)


class _Streams:
    """The open streams of one kind, and the venue faults applied to them."""

    def __init__(self, kind: str, broker: str = "") -> None:
        self.kind = kind
        self.broker = broker
        self.subs: list[_Subscriber] = []
        self.stalled_until: float | None = None  # trio time; inf: until resumed
        self._changed: trio.Event | None = None

    def drop(self) -> None:
        for sub in self.subs:
            sub.dropped = True
            sub.signal()
        self._wake()

    def stall(self, seconds: float | None) -> None:
        self.stalled_until = math.inf if seconds is None else trio.current_time() + seconds
        for sub in self.subs:
            sub.signal()
        self._wake()

    def resume(self) -> None:
        self.stalled_until = None
        self._wake()

    def end(self) -> None:
        for sub in self.subs:
            sub.end()
        self._wake()

    def _wake(self) -> None:
        event, self._changed = self._changed, None
        if event is not None:
            event.set()

    async def hold(self, sub: _Subscriber) -> None:
        """Raise :class:`Disconnected` if ``sub`` was dropped; wait while stalled."""
        while True:
            if sub.dropped:
                raise Disconnected(
                    f"the paper venue dropped the {self.kind} stream", broker=self.broker
                )
            until = self.stalled_until
            if until is None or sub.ended:
                return
            if trio.current_time() >= until:
                self.stalled_until = None
                return
            if self._changed is None:
                self._changed = trio.Event()
            with trio.move_on_at(until):
                await self._changed.wait()


class EventFeed:
    """The order events of a simulated account, fanned out to every subscriber
    of ``stream_events`` in the order published (the paper and ghost brokers).

    ``heartbeat``: seconds of silence after which a stream yields
    :data:`~rick_core.broker.HEARTBEAT` (None: never); ``broker`` names the
    broker in errors. :attr:`streams` drops and stalls the streams."""

    def __init__(self, *, heartbeat: float | None = None, broker: str = "") -> None:
        self.heartbeat = heartbeat
        self.streams = _Streams("events", broker)

    def publish(self, events: Sequence[BrokerEvent]) -> None:
        for sub in self.streams.subs:
            for event in events:
                sub.push(event)

    def end(self) -> None:
        """End every subscriber's stream (the broker closed)."""
        self.streams.end()

    @asynccontextmanager
    async def stream(self) -> AsyncIterator[AsyncIterator[BrokerEvent | Heartbeat]]:
        sub = _Subscriber(None)
        subs = self.streams.subs
        subs.append(sub)
        events = self._events(sub)
        try:
            yield events
        finally:
            subs.remove(sub)
            await events.aclose()

    async def _events(self, sub: _Subscriber) -> AsyncGenerator[BrokerEvent | Heartbeat, None]:
        queue = sub.queue
        streams = self.streams
        heartbeat = self.heartbeat
        await streams.hold(sub)  # opened while stalled: nothing yet
        while True:
            while queue:
                event = queue.popleft()
                if event is None:
                    await streams.hold(sub)
                    if sub.ended and not queue:
                        return
                    continue
                yield event
            sub.wakeup = trio.Event()
            if heartbeat is None:
                await sub.wakeup.wait()
                continue
            with trio.move_on_after(heartbeat):
                await sub.wakeup.wait()
            if not queue:  # nothing came (a push or a signal queues something)
                yield HEARTBEAT


class PaperOptions:
    """The paper broker's options, checked, with errors naming the key."""

    def __init__(self, setup: ComponentSetup) -> None:
        self._where = setup.source or f"broker {setup.name!r}"
        raw = dict(setup.options)
        self.seed = self._int(raw.pop("seed", 1), "seed")
        self.interval = self._float(raw.pop("interval", 0.5), "interval", positive=True)
        self.speed = self._float(raw.pop("speed", 1), "speed", positive=False)
        self.persist = self._bool(raw.pop("persist", True), "persist")
        self.loop = self._bool(raw.pop("loop", False), "loop")
        replay = raw.pop("replay", None)
        if replay is not None and not isinstance(replay, str):
            self._fail("replay", "a path to a .jsonl or .csv file of recorded quotes", replay)
        self.replay = None if replay is None else (setup.home / Path(replay).expanduser())
        wanted = raw.pop("instruments", None)
        universe = {spec.instrument.symbol: spec for spec in DEFAULT_UNIVERSE}
        if wanted is None:
            self.specs = list(DEFAULT_UNIVERSE)
        else:
            if not isinstance(wanted, list) or not all(isinstance(s, str) for s in wanted):
                self._fail("instruments", "a list of symbols", wanted)
            unknown = [s for s in wanted if s not in universe]
            if unknown:
                raise ValueError(
                    f"{self._where}: instruments: {', '.join(unknown)} not in the simulated "
                    f"universe ({', '.join(universe)}); use replay = FILE for others"
                )
            self.specs = [universe[s] for s in wanted]
        settings: dict[str, Any] = {}
        if "currency" in raw:
            currency = raw.pop("currency")
            if not isinstance(currency, str) or not currency.isalpha():
                self._fail("currency", "a currency code such as USD", currency)
            settings["currency"] = currency.upper()
        for key in ("balance", "slippage", "maintenance_ratio"):
            if key in raw:
                settings[key] = self._decimal(raw.pop(key), key)
        for key in ("leverage", "fees"):
            if key in raw:
                settings[key] = self._by_asset_class(raw.pop(key), key)
        if "instrument_fees" in raw:
            table = raw.pop("instrument_fees")
            if not isinstance(table, Mapping):
                self._fail("instrument_fees", "a table of symbol = fee rate", table)
            settings["instrument_fees"] = {
                str(k): self._decimal(v, f"instrument_fees.{k}") for k, v in table.items()
            }
        self.capabilities = self._capabilities(raw)
        self.heartbeat = self._float(raw.pop("heartbeat", 5.0), "heartbeat", positive=True)
        self.quote_silence = self._silence(raw.pop("quote_silence", 10.0), "quote_silence")
        self.event_silence = self._silence(raw.pop("event_silence", 20.0), "event_silence")
        if raw:
            raise ValueError(
                f"{self._where}: unknown option(s) {', '.join(sorted(raw))}; the paper broker "
                "takes seed, interval, speed, instruments, replay, loop, currency, balance, "
                "leverage, fees, instrument_fees, slippage, maintenance_ratio, persist, "
                "order_types, time_in_force, attached_protection, position_protection, "
                "fractional_quantity, heartbeat, quote_silence, event_silence"
            )
        try:
            self.settings = PaperSettings(**settings)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self._where}: {exc}") from None

    def _capabilities(self, raw: dict[str, Any]) -> Capabilities:
        """The capabilities the options leave the paper venue (all by default)."""
        native = NATIVE_CAPABILITIES
        order_types = self._names(
            raw.pop("order_types", None), "order_types", OrderType, native.order_types
        )
        time_in_force = self._names(
            raw.pop("time_in_force", None), "time_in_force", TimeInForce, native.time_in_force
        )
        attached = self._bool(raw.pop("attached_protection", True), "attached_protection")
        position = self._bool(raw.pop("position_protection", True), "position_protection")
        fractional = self._bool(raw.pop("fractional_quantity", True), "fractional_quantity")
        return attrs.evolve(
            native,
            order_types=order_types,
            time_in_force=time_in_force,
            attached_stop_loss=attached,
            attached_take_profit=attached,
            attached_trailing_stop=attached,
            modify_order_protection=attached,
            modify_position_protection=position,
            fractional_quantity=fractional,
        )

    def _names(
        self, value: object, key: str, kind: type[OrderType | TimeInForce], native: frozenset[Any]
    ) -> frozenset[Any]:
        """A list of enum values (``["market", "limit"]``) among ``native``."""
        allowed = ", ".join(repr(m.value) for m in kind if m in native)
        if value is None:
            return native
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._fail(key, f"a list of names among {allowed}", value)
        if not value:
            raise ValueError(f"{self._where}: {key} must name at least one of {allowed}")
        chosen = set()
        for name in value:
            try:
                member = kind(name.lower())
            except ValueError:
                raise ValueError(
                    f"{self._where}: {key}: unknown name {name!r}; the paper broker takes {allowed}"
                ) from None
            chosen.add(member)
        return frozenset(chosen)

    def _fail(self, key: str, expected: str, value: object) -> NoReturn:
        raise ValueError(f"{self._where}: {key} must be {expected}, got {value!r}")

    def _int(self, value: object, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            self._fail(key, "a whole number", value)
        if isinstance(value, Decimal) and value != value.to_integral_value():
            self._fail(key, "a whole number", value)
        return int(value)

    def _float(self, value: object, key: str, *, positive: bool) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            self._fail(key, "a number", value)
        number = float(value)  # a duration or a rate, not money
        if not math.isfinite(number) or number < 0 or (positive and number == 0):
            self._fail(key, "a positive number" if positive else "zero or more", value)
        return number

    def _silence(self, value: object, key: str) -> float | None:
        """A silence timeout: seconds, longer than the heartbeat; false for none."""
        if value is False:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            self._fail(key, "a positive number of seconds, or false (no watchdog)", value)
        number = float(value)  # a duration, not money
        if not math.isfinite(number) or number <= 0:
            self._fail(key, "a positive number of seconds, or false (no watchdog)", value)
        if number <= self.heartbeat:
            raise ValueError(
                f"{self._where}: {key} ({number:g} s) must be longer than heartbeat "
                f"({self.heartbeat:g} s), or a quiet stream is judged dead between heartbeats"
            )
        return number

    def _bool(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            self._fail(key, "true or false", value)
        return bool(value)

    def _decimal(self, value: object, key: str) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
            self._fail(key, "a number", value)
        try:
            return Decimal(value)
        except ArithmeticError:
            self._fail(key, "a number", value)

    def _by_asset_class(self, table: object, key: str) -> dict[AssetClass, Decimal]:
        if not isinstance(table, Mapping):
            self._fail(key, "a table of asset class = number (fx, crypto, equity, ...)", table)
        result: dict[AssetClass, Decimal] = {}
        for name, value in table.items():
            try:
                asset_class = AssetClass(str(name).lower())
            except ValueError:
                known = ", ".join(a.value for a in AssetClass)
                raise ValueError(
                    f"{self._where}: {key}.{name}: unknown asset class (known: {known})"
                ) from None
            result[asset_class] = self._decimal(value, f"{key}.{name}")
        return result


class PaperBroker(Broker):
    """A simulated venue that behaves like a live one through the Broker interface."""

    capabilities = NATIVE_CAPABILITIES  # each broker's own: narrowed by its options

    def __init__(self, setup: ComponentSetup) -> None:
        self.name = setup.name
        self.options = PaperOptions(setup)
        self.capabilities = self.options.capabilities
        self.symbols = SeparatorSymbolMap("_")
        self._files: PaperFiles | None = (
            PaperFiles(setup.home / "paper", setup.name) if self.options.persist else None
        )
        self._journal: PaperFiles | None = None  # the files, once open for appending
        self._journal_failed = False
        self._locked = False  # this broker took the account's lock
        self._market: QuoteSource | None = None
        self._account: PaperAccount | None = None
        self._t0 = 0.0
        self._start = utc_now()
        self._last_quote_time: datetime | None = None
        self.quote_silence = self.options.quote_silence
        self.event_silence = self.options.event_silence
        self._quote_streams = _Streams("quotes", self.name)
        self._quote_subs = self._quote_streams.subs
        self._feed = EventFeed(heartbeat=self.options.heartbeat, broker=self.name)

    # -- lifecycle -----------------------------------------------------------

    async def connect(self) -> None:
        await trio.lowlevel.checkpoint()
        start = utc_now()
        market = self._make_market(start)
        instruments = list(market.instruments.values())
        account = None
        files = self._files
        if files is not None:
            try:
                files.lock()
            except AccountInUse as exc:
                raise TemporarilyUnavailable(str(exc), broker=self.name) from None
            self._locked = True
            account = self._restore(files, instruments)
        if account is None:
            account = PaperAccount(self.name, self.options.settings, instruments)
        latest = account.last_activity()
        if latest is not None and latest > start:
            # The restored venue saw later times (a fast simulated clock): its clock
            # goes on from there, it never runs backwards.
            start = latest
            market = self._make_market(start)
        self._start = start
        self._t0 = trio.current_time()
        if files is not None:
            try:
                files.compact(account.snapshot())  # the journal starts empty after it
            except OSError as exc:
                raise TemporarilyUnavailable(
                    f"the paper venue cannot write its account to {files.snapshot_path} ({exc})",
                    broker=self.name,
                ) from None
            account.track_changes()
            self._journal = files
            self._journal_failed = False
        self._market = market
        self._account = account
        for symbol in market.instruments:
            quote = market.current(symbol)
            if quote is not None:
                self._commit(account, account.on_quote(quote))

    def _make_market(self, start: datetime) -> QuoteSource:
        opts = self.options
        if opts.replay is not None:
            return ReplayMarket.from_file(
                opts.replay, start=start, source=self.name, loop=opts.loop
            )
        return SimulatedMarket(
            opts.specs, seed=opts.seed, interval=opts.interval, start=start, source=self.name
        )

    async def close(self) -> None:
        journal, account = self._journal, self._account
        self._journal = None
        self._account = None
        self._market = None
        self._quote_streams.end()
        self._feed.end()
        if journal is not None:
            try:
                if account is not None:
                    journal.compact(account.snapshot())
            except OSError as exc:
                # Never raised from close(): the journal still holds every change
                # (unless it could not be written either, which was raised then).
                log.warning(
                    "the paper venue could not write its snapshot at close; the journal "
                    "keeps its changes for the next start",
                    broker=self.name,
                    snapshot=str(journal.snapshot_path),
                    error=str(exc),
                )
            finally:
                journal.close()
        if self._locked and self._files is not None:
            self._files.unlock()
            self._locked = False

    def _restore(self, files: PaperFiles, instruments: list[Instrument]) -> PaperAccount | None:
        """The saved account with its journal replayed, None when nothing was saved."""
        path = files.snapshot_path
        try:
            data, records = files.load()
            if data is None:
                return None
            account = PaperAccount.restore(self.name, self.options.settings, instruments, data)
        except JournalError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path}: the saved paper account cannot be read ({exc}); move the "
                "file away to start a fresh paper account, or set persist = false"
            ) from None
        for number, record in records:
            try:
                account.apply_changes(record)
            except ValueError as exc:
                raise JournalError(
                    f"{files.journal_path}:{number}: {exc}; the paper account cannot be "
                    "restored without guessing: move the journal and the snapshot away to "
                    "start a fresh paper account"
                ) from None
        return account

    def _commit(self, account: PaperAccount, events: Sequence[BrokerEvent]) -> None:
        """Journal the last operation's changes, then publish its events (also when
        the journal cannot be written: the venue did change, in memory)."""
        try:
            self._record(account)
        finally:
            self._publish(events)

    def _record(self, account: PaperAccount) -> None:
        """Journal what the last operation changed, before anyone hears of it."""
        journal = self._journal
        if journal is None or not account.has_changes:
            return
        try:
            if self._journal_failed:
                journal.compact(account.snapshot())  # the whole state: nothing is lost
                account.take_changes()
                self._journal_failed = False
                return
            record = account.take_changes()
            assert record is not None
            journal.append(record)
            if journal.size > COMPACT_BYTES:
                journal.compact(account.snapshot())
        except OSError as exc:
            self._journal_failed = True  # the next change writes a whole snapshot
            raise TemporarilyUnavailable(
                f"the paper venue cannot write its journal {journal.journal_path} ({exc})",
                broker=self.name,
            ) from None

    # -- the simulated clock -------------------------------------------------

    def _live(self) -> tuple[QuoteSource, PaperAccount]:
        if self._market is None or self._account is None:
            raise Disconnected("the paper broker is not connected", broker=self.name)
        return self._market, self._account

    def now(self) -> datetime:
        """The simulated time: the start plus trio time elapsed, scaled by ``speed``;
        with ``speed = 0``, the time of the latest quote (the market runs ahead of
        the clock), never before the start plus trio time elapsed."""
        speed = self.options.speed
        clock = self._start + timedelta(seconds=(trio.current_time() - self._t0) * (speed or 1.0))
        if not speed and self._last_quote_time is not None:
            return max(clock, self._last_quote_time)
        return clock

    def _due_at(self, offset: float) -> float:
        """The trio time at which the quote due ``offset`` simulated seconds after the
        start is generated. Every comparison goes through this one formula, so a
        sleep until that time always finds the quote due (no float mismatch)."""
        return self._t0 + offset / self.options.speed

    def _advance(self, *, at_most: int | None = None) -> int:
        """Generate and apply every quote due by now (``speed > 0``), or the next
        ``at_most`` quotes (``speed = 0``). Returns how many."""
        market, account = self._live()
        paced = bool(self.options.speed)
        now = trio.current_time()
        count = 0
        limit = math.inf if at_most is None else at_most
        peek = market.peek_time
        while count < limit:
            due = peek()
            if due is None or (paced and self._due_at(due) > now):
                break
            quote = market.next_quote()
            self._last_quote_time = quote.time
            count += 1
            events = account.on_quote(quote)
            try:
                if account.has_changes:
                    self._record(account)
            finally:
                if events:
                    self._publish(events)
            for sub in self._quote_subs:
                if sub.instruments is None or quote.instrument in sub.instruments:
                    sub.push(quote)
        return count

    def _catch_up(self) -> None:
        if self.options.speed:
            self._advance()

    def _publish(self, events: Sequence[BrokerEvent]) -> None:
        self._feed.publish(events)

    # -- orders --------------------------------------------------------------

    async def place_order(self, request: OrderRequest) -> Order:
        await trio.lowlevel.checkpoint()
        self._catch_up()
        _, account = self._live()
        reason = self.capabilities.supports(request)
        if reason is not None:
            raise Unsupported(reason, broker=self.name)
        order, events = account.submit(request, self.now())
        self._commit(account, events)
        return order

    async def cancel_order(self, order: Order) -> Order:
        await trio.lowlevel.checkpoint()
        self._catch_up()
        _, account = self._live()
        result, events = account.cancel(order.client_order_id, self.now())
        self._commit(account, events)
        return result

    async def replace_order_protection(
        self,
        order: Order,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
    ) -> Order:
        await trio.lowlevel.checkpoint()
        if not self.capabilities.modify_order_protection:
            raise Unsupported("changing an order's protection is not supported", broker=self.name)
        self._catch_up()
        _, account = self._live()
        result, events = account.replace_order_protection(
            order.client_order_id, stop_loss=stop_loss, take_profit=take_profit, now=self.now()
        )
        self._commit(account, events)
        return result

    async def replace_position_protection(
        self,
        instrument: str,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
    ) -> Position:
        await trio.lowlevel.checkpoint()
        if not self.capabilities.modify_position_protection:
            raise Unsupported(
                "a position's stop loss / take profit is not supported", broker=self.name
            )
        self._catch_up()
        _, account = self._live()
        position = account.replace_position_protection(
            instrument, stop_loss=stop_loss, take_profit=take_profit, now=self.now()
        )
        self._record(account)
        return position

    async def get_order(self, client_order_id: str) -> Order:
        self._catch_up()
        return self._live()[1].get_order(client_order_id)

    async def open_orders(self, instrument: str | None = None) -> list[Order]:
        self._catch_up()
        return self._live()[1].open_orders(instrument)

    async def fills(self, since: datetime) -> list[Fill]:
        self._catch_up()
        return self._live()[1].fills(since)

    # -- account -------------------------------------------------------------
    # Reads answer from memory without yielding to the scheduler: the engine
    # reads positions after every fill, and a checkpoint there would cost the
    # order round trip a quarter of its time.

    async def positions(self) -> list[Position]:
        self._catch_up()
        return self._live()[1].positions()

    async def account(self) -> Account:
        self._catch_up()
        return self._live()[1].account(self.now())

    async def instruments(self) -> list[Instrument]:
        market, _ = self._live()
        return list(market.instruments.values())

    async def quote(self, instrument: str) -> Quote:
        self._catch_up()
        market, _ = self._live()
        if instrument not in market.instruments:
            raise NotFound(
                f"unknown instrument {instrument}: the paper market has "
                f"{', '.join(market.instruments)}",
                broker=self.name,
            )
        found = market.current(instrument)
        if found is None:
            raise NotFound(f"no quote for {instrument} yet", broker=self.name)
        return found

    # -- streams -------------------------------------------------------------

    @asynccontextmanager
    async def stream_quotes(
        self, instruments: Sequence[str]
    ) -> AsyncIterator[AsyncIterator[Quote | Heartbeat]]:
        market, _ = self._live()
        unknown = [i for i in instruments if i not in market.instruments]
        if unknown:
            raise NotFound(
                f"unknown instrument(s) {', '.join(unknown)}: the paper market has "
                f"{', '.join(market.instruments)}",
                broker=self.name,
            )
        sub = _Subscriber(frozenset(instruments))
        subs = self._quote_subs
        subs.append(sub)
        quotes = self._quotes(sub)
        try:
            yield quotes
        finally:
            subs.remove(sub)
            await quotes.aclose()  # the consumer may have left mid-iteration

    async def _quotes(self, sub: _Subscriber) -> AsyncGenerator[Quote | Heartbeat, None]:
        queue = sub.queue
        streams = self._quote_streams
        speed = self.options.speed
        heartbeat = self.options.heartbeat
        handed = 0  # items yielded, heartbeats included
        seen = -1  # `handed` when the stream last found nothing to yield
        quiet_since = 0.0  # trio time since which it has yielded nothing
        await streams.hold(sub)  # opened while stalled: nothing yet
        while True:
            if queue:
                quote = queue.popleft()
                if quote is None:  # ended, dropped or stalled
                    await streams.hold(sub)
                    if sub.ended and not queue:
                        return
                    continue
                handed += 1
                if not speed and handed % FAST_BATCH == 0:
                    await trio.lowlevel.checkpoint()
                yield quote
                continue
            if self._market is None:
                return
            # Nothing queued: the clock is read here, never per quote.
            if not speed:
                if not self._advance(at_most=FAST_BATCH):
                    return  # a replay that ended
                if queue:
                    continue
                # a whole batch with nothing for this stream
                now = trio.current_time()
                if handed != seen:
                    seen, quiet_since = handed, now
                elif now - quiet_since >= heartbeat:
                    handed += 1
                    yield HEARTBEAT
                continue
            self._advance()
            if queue:
                continue
            due = self._market.peek_time()
            if due is None:
                return
            now = trio.current_time()
            if handed != seen:
                seen, quiet_since = handed, now
            beat_at = quiet_since + heartbeat
            if now >= beat_at:
                handed += 1
                yield HEARTBEAT
                continue
            sub.wakeup = trio.Event()
            with trio.move_on_at(min(self._due_at(due), beat_at)):
                await sub.wakeup.wait()

    def stream_events(self) -> AbstractAsyncContextManager[AsyncIterator[BrokerEvent | Heartbeat]]:
        self._live()
        return self._feed.stream()

    # -- faults --------------------------------------------------------------

    def drop_streams(self, kind: str | None = None) -> None:
        """End every open stream of ``kind`` (``"quotes"``, ``"events"``, None: both)
        at its next step with :class:`~rick_core.broker.Disconnected`, as a venue
        dropping the connection: what was queued for it is lost."""
        for streams in self._streams(kind):
            streams.drop()

    def stall_streams(self, seconds: float | None, kind: str | None = None) -> None:
        """Make the open and new streams of ``kind`` (None: both) yield nothing at
        all, heartbeats included, for ``seconds`` (None: until
        :meth:`resume_streams`), as a venue whose connection hangs. What comes
        meanwhile stays queued for each open stream and follows the stall."""
        if seconds is not None and (
            isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0
        ):
            raise ValueError(f"seconds must be zero or more, or None, got {seconds!r}")
        for streams in self._streams(kind):
            streams.stall(seconds)

    def resume_streams(self, kind: str | None = None) -> None:
        """End a stall of the streams of ``kind`` (None: both) at once."""
        for streams in self._streams(kind):
            streams.resume()

    def _streams(self, kind: str | None) -> list[_Streams]:
        if kind is None:
            return [self._quote_streams, self._feed.streams]
        if kind == "quotes":
            return [self._quote_streams]
        if kind == "events":
            return [self._feed.streams]
        raise ValueError(f"kind must be one of {', '.join(STREAM_KINDS)} or None, got {kind!r}")
