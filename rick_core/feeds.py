"""Supervised venue streams: open, read, watch for silence, reopen with backoff.

A :class:`FeedSupervisor` keeps one stream of a venue alive for as long as it
runs: it enters the stream's context manager (``open(keys)``, for example a
broker's :meth:`~rick_core.broker.Broker.stream_quotes`), hands every item to
a ``deliver`` callable, and when the stream fails it leaves the block (so the
venue is unsubscribed properly) and enters a new one after a jittered,
growing delay (:class:`Backoff`). A stream fails when

- opening it or reading from it raises a :class:`~rick_core.broker.BrokerError`,
  or its iterator ends (``DISCONNECTED``);
- it delivers nothing at all, not even a :class:`~rick_core.broker.Heartbeat`,
  for ``silence`` seconds (``STALE``): a hung connection that never raises.

Every change of the feed's health is reported as a :class:`FeedEvent` to the
``on_event`` callback and logged (logger ``rick.feeds``): ``DISCONNECTED`` or
``STALE``, then ``RECONNECTED`` once a stream is open again, then ``RECOVERED``
with its first message. Changing what the stream is opened with
(:meth:`FeedSupervisor.set_keys`, the instruments of a quote stream) closes
the open stream and opens a new one at once: a resubscription, not a failure.

Any other exception (a bug in the plugin or in ``deliver``) propagates out of
:meth:`FeedSupervisor.run`: retrying a bug forever would only hide it.

The engine supervises every broker's quote and event streams with it; a broker
plugin may use it too, for a venue connection of its own::

    supervisor = FeedSupervisor("venue quotes", open_stream, silence=10.0)
    supervisor.set_keys(["EUR_USD"])
    nursery.start_soon(supervisor.run, handle_quote)
"""

from __future__ import annotations

import enum
import inspect
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Generic, NoReturn, TypeVar, cast

import attrs
import structlog
import trio

from rick_core.broker import BrokerError, Heartbeat
from rick_core.model import utc_now

__all__ = ["DEFAULT_BACKOFF", "Backoff", "FeedEvent", "FeedEventKind", "FeedSupervisor"]

T = TypeVar("T")

log = structlog.get_logger("rick.feeds")


class FeedEventKind(enum.StrEnum):
    """What happened to a supervised feed."""

    DISCONNECTED = "disconnected"
    """The stream raised a :class:`~rick_core.broker.BrokerError` (also when
    opening it) or its iterator ended."""
    STALE = "stale"
    """The silence watchdog tripped: no message (heartbeats count) for ``silence`` s."""
    RECONNECTED = "reconnected"
    """A stream is open again after ``DISCONNECTED`` or ``STALE``."""
    RECOVERED = "recovered"
    """The first message (data or heartbeat) after ``RECONNECTED``: the feed is healthy."""


@attrs.frozen
class FeedEvent:
    """A change of a supervised feed's health, as told to ``on_event``."""

    kind: FeedEventKind
    feed: str
    """The supervisor's name, e.g. ``"oanda quotes"``."""
    time: datetime
    """When it happened (UTC), from the supervisor's clock."""
    reason: str = ""
    """Why: the error's text, ``"no message for 10 s"``, ``"stream ended"``."""
    attempt: int = 0
    """Consecutive failures so far, this one included (``RECONNECTED`` and
    ``RECOVERED``: how many it took)."""
    outage: float | None = None
    """``RECONNECTED`` / ``RECOVERED``: seconds since the feed was last healthy,
    that is since the first failure of this outage: the ``DISCONNECTED``, or
    for a ``STALE`` the last message before it (the silence is the outage)."""


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"backoff {attribute.name} must be a positive number, got {value!r}")


@attrs.frozen
class Backoff:
    """How long to wait before reopening a failed stream: ``initial`` seconds
    after the first failure, ``factor`` times longer after each further one in
    a row, never more than ``maximum``; each delay then multiplied by a random
    factor in ``[1 - jitter, 1 + jitter]`` so that many clients of one venue do
    not reconnect in step."""

    initial: float = attrs.field(default=0.5, validator=_positive)
    maximum: float = attrs.field(default=30.0, validator=_positive)
    factor: float = 2.0
    jitter: float = 0.2

    def __attrs_post_init__(self) -> None:
        if self.maximum < self.initial:
            raise ValueError(
                f"backoff maximum ({self.maximum:g}) must not be less than initial "
                f"({self.initial:g})"
            )
        if not math.isfinite(self.factor) or self.factor < 1:
            raise ValueError(f"backoff factor must be 1 or more, got {self.factor!r}")
        if not 0 <= self.jitter < 1:  # also refuses NaN
            raise ValueError(f"backoff jitter must be at least 0 and below 1, got {self.jitter!r}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after ``attempt`` failures in a row (1 or more)."""
        if attempt < 1:
            raise ValueError(f"attempt must be 1 or more, got {attempt}")
        try:
            base = min(self.initial * self.factor ** (attempt - 1), self.maximum)
        except OverflowError:
            base = self.maximum
        if not self.jitter:
            return base
        return base * rng.uniform(1 - self.jitter, 1 + self.jitter)


DEFAULT_BACKOFF: Backoff = Backoff()
"""0.5 s, doubling up to 30 s, ±20 % jitter."""


class FeedSupervisor(Generic[T]):
    """Keeps one venue stream open, watched and delivered; see the module documentation.

    ``name`` names the feed in events and logs. ``open(keys)`` returns the
    stream's async context manager (entered once subscribed; leaving it
    unsubscribes), whose iterator yields items of type ``T`` and
    :class:`~rick_core.broker.Heartbeat`. ``silence``: seconds without any
    message after which the stream is judged dead (None: no watchdog).
    ``on_event`` is called synchronously with every :class:`FeedEvent`; an
    exception from it is logged and swallowed. ``keyed``: True opens the
    stream only while :attr:`keys` is non-empty (quotes of some instruments);
    False opens it always, with :attr:`keys` (``()`` unless set: an account's
    event stream). ``rng`` draws the backoff jitter; ``clock`` stamps events.

    Read-only state, for status displays: :attr:`keys`, :attr:`generation`,
    :attr:`open_generation`, :attr:`connected`, :attr:`healthy`,
    :attr:`reconnects`, :attr:`failures`, :attr:`messages`.
    """

    __slots__ = (
        "_attempt",
        "_awaiting_recovery",
        "_busy",
        "_changed",
        "_clock",
        "_down_since",
        "_last",
        "_on_event",
        "_open",
        "_reconnect_due",
        "_resubscribe",
        "_rng",
        "_running",
        "_scope",
        "_settled",
        "_settled_event",
        "_stale",
        "backoff",
        "connected",
        "failures",
        "generation",
        "healthy",
        "keyed",
        "keys",
        "messages",
        "name",
        "open_generation",
        "reconnects",
        "silence",
    )

    def __init__(
        self,
        name: str,
        open: Callable[
            [tuple[str, ...]], AbstractAsyncContextManager[AsyncIterator[T | Heartbeat]]
        ],
        *,
        silence: float | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        on_event: Callable[[FeedEvent], None] | None = None,
        keyed: bool = True,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if silence is not None and (
            isinstance(silence, bool) or not math.isfinite(silence) or silence <= 0
        ):
            raise ValueError(
                f"{name}: silence must be a positive number of seconds or None, got {silence!r}"
            )
        self.name = name
        self._open = open
        self.silence = silence
        self.backoff = backoff
        self._on_event = on_event
        self.keyed = keyed
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock

        self.keys: tuple[str, ...] = ()
        """Sorted: what the current (or next) stream is opened with."""
        self.generation = 0
        """Bumped by every :meth:`set_keys` that changes :attr:`keys`."""
        self.open_generation = -1
        """The generation of the stream open now (-1 if none)."""
        self.connected = False
        """A stream is open now."""
        self.healthy = False
        """A stream is open and not silent: False from a ``DISCONNECTED`` or
        ``STALE`` until its ``RECOVERED``, and while no stream is open."""
        self.reconnects = 0
        """Streams opened again after a failure, in total."""
        self.failures = 0
        """``DISCONNECTED`` and ``STALE`` events, in total."""
        self.messages = 0
        """Items received, heartbeats included, in total."""

        self._attempt = 0  # failures in a row, reset by the first message after one
        self._down_since: float | None = None  # trio time the current outage began
        self._reconnect_due = False  # the next open is a RECONNECTED
        self._awaiting_recovery = False  # the next message is a RECOVERED
        self._last = 0.0  # trio time of the last message (or of the open)
        self._stale = False  # the watchdog closed the stream
        self._busy = False  # an async deliver is under way: not to be interrupted
        self._resubscribe = False  # keys changed during an async deliver
        self._scope: trio.CancelScope | None = None  # the open stream's reading
        self._changed: trio.Event | None = None  # set by set_keys (backoff and idle waits)
        self._settled = -1  # generation in effect: open, or idle without keys
        self._settled_event: trio.Event | None = None
        self._running = False

    # -- control -------------------------------------------------------------

    def set_keys(self, keys: Iterable[str]) -> int:
        """Change the subscription set; returns the generation to wait for
        (:meth:`wait_open`).

        If it changed, the open stream (if any) is closed and a new one opened
        at once with the new keys: this is a resubscription, not a failure (no
        event, no backoff; a backoff wait under way ends early). With
        ``keyed=True`` and no keys, the stream is closed and the supervisor
        idles until keys come back (the venue is unsubscribed).
        """
        wanted = tuple(sorted(set(keys)))
        if wanted == self.keys:
            return self.generation
        self.keys = wanted
        self.generation += 1
        if self._scope is not None:
            if self._busy:
                self._resubscribe = True  # once the item in hand is delivered
            else:
                self._scope.cancel()
        if self._changed is not None:
            self._changed.set()
        return self.generation

    async def wait_open(self, generation: int, timeout: float) -> bool:  # noqa: ASYNC109
        """True once a stream opened with ``generation`` or a later one is open;
        False after ``timeout`` seconds.

        Also True when, at that generation or later, a keyed supervisor has no
        keys and is idle: there is nothing to open, and the venue is unsubscribed.
        """
        await trio.lowlevel.checkpoint()
        with trio.move_on_after(timeout):
            while self._settled < generation:
                if self._settled_event is None:
                    self._settled_event = trio.Event()
                await self._settled_event.wait()
            return True
        return False

    def _settle(self, generation: int) -> None:
        self._settled = generation
        event, self._settled_event = self._settled_event, None
        if event is not None:
            event.set()

    # -- running -------------------------------------------------------------

    async def run(
        self,
        deliver: Callable[[T], object] | Callable[[T], Awaitable[object]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
        must_open_first: bool = False,
    ) -> NoReturn:
        """Open, read, reopen, forever (until cancelled).

        ``deliver`` is called with every item that is not a
        :class:`~rick_core.broker.Heartbeat`: a plain function is called
        synchronously (the fast path, for quotes), an ``async def`` is awaited
        (the stream is not read meanwhile, and that time does not count as
        silence). An exception from ``deliver``, even a ``BrokerError``,
        propagates: it handles its own errors.

        ``task_status.started()`` is called once the first stream is open (at
        once with ``keyed=True`` and no keys). With ``must_open_first``, an
        exception from the first open propagates (the engine refuses to start
        when a broker's event stream cannot open); otherwise it is a failure
        like any other.

        A ``BrokerError`` from opening or reading the stream, or its end, is a
        ``DISCONNECTED``; the silence watchdog a ``STALE``. Either way the
        stream is closed and reopened after ``backoff.delay(attempt)``, where
        ``attempt`` counts the failures in a row; it resets only once a reopened
        stream has delivered a message, so a venue that accepts and drops at
        once is still backed off from. Any other exception propagates.
        """
        if self._running:
            raise RuntimeError(f"{self.name}: run() is already running")
        self._running = True
        try:
            await self._run(deliver, task_status, must_open_first)
        finally:
            self._running = False
            self._closed()

    async def _run(
        self,
        deliver: Callable[[T], object] | Callable[[T], Awaitable[object]],
        task_status: trio.TaskStatus[None],
        must_open_first: bool,
    ) -> NoReturn:
        is_async = inspect.iscoroutinefunction(deliver) or inspect.iscoroutinefunction(
            type(deliver).__call__  # an object with an async __call__
        )
        status: trio.TaskStatus[None] | None = task_status
        first = True
        while True:
            if self.keyed and not self.keys:
                self._settle(self.generation)
                if status is not None:
                    status.started()
                    status = None
                await self._idle()
                continue
            generation, keys = self.generation, self.keys
            phase = "open"  # then "read", then "close"
            failure: tuple[FeedEventKind, str] | None = None
            try:
                async with self._open(keys) as stream:
                    phase = "read"
                    first = False
                    self._opened(generation)
                    if status is not None:
                        status.started()
                        status = None
                    failure = await self._read(stream, generation, deliver, is_async)
                    phase = "close"
                    if failure is not None:
                        self._fail(*failure)  # reported before the (maybe slow) cleanup
            except BrokerError as exc:
                if phase == "read":
                    raise  # from deliver: it handles its own errors
                if phase == "close":  # the stream is closed all the same
                    log.warning(
                        "feed: closing the stream failed", feed=self.name, error=_reason(exc)
                    )
                else:
                    if first and must_open_first:
                        raise
                    first = False
                    failure = (FeedEventKind.DISCONNECTED, _reason(exc))
                    self._fail(*failure)
            finally:
                self._closed()
            if failure is not None:
                await self._back_off(generation)

    async def _read(
        self,
        stream: AsyncIterator[T | Heartbeat],
        generation: int,
        deliver: Callable[[T], object] | Callable[[T], Awaitable[object]],
        is_async: bool,
    ) -> tuple[FeedEventKind, str] | None:
        """Read ``stream`` until it fails (returns why) or keys change (None)."""
        self._stale = False
        self._resubscribe = False
        self._last = trio.current_time()
        error: BrokerError | None = None
        bug: Exception | None = None
        with trio.CancelScope() as scope:
            if generation != self.generation:
                return None  # keys changed while the stream opened: resubscribe
            self._scope = scope
            try:
                if self.silence is None:
                    error = await self._pump(stream, deliver, is_async)
                else:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._watchdog, scope, self.silence)
                        try:
                            error = await self._pump(stream, deliver, is_async)
                        except Exception as exc:  # raised below, not in an ExceptionGroup
                            bug = exc
                        finally:
                            nursery.cancel_scope.cancel()
            finally:
                self._scope = None
        if bug is not None:
            raise bug
        if scope.cancelled_caught:
            if self._stale:
                return FeedEventKind.STALE, f"no message for {self.silence:g} s"
            return None
        if error is not None:
            return FeedEventKind.DISCONNECTED, _reason(error)
        return FeedEventKind.DISCONNECTED, "stream ended"

    async def _pump(
        self,
        stream: AsyncIterator[T | Heartbeat],
        deliver: Callable[[T], object] | Callable[[T], Awaitable[object]],
        is_async: bool,
    ) -> BrokerError | None:
        """Hand every item to ``deliver``; return the stream's error, or None at its end."""
        now = trio.current_time
        step = aiter(stream).__anext__
        if is_async:
            deliver_async = cast(Callable[[T], Awaitable[object]], deliver)
            while True:
                try:
                    item = await step()
                except StopAsyncIteration:
                    return None
                except BrokerError as exc:
                    return exc
                self._last = now()
                self.messages += 1
                if self._awaiting_recovery:
                    self._recovered()
                if not isinstance(item, Heartbeat):
                    self._busy = True
                    try:
                        await deliver_async(item)
                    finally:
                        self._busy = False
                    self._last = now()  # the consumer was busy, not the venue silent
                    if self._resubscribe and self._scope is not None:
                        self._scope.cancel()  # keys changed meanwhile
        deliver_sync = deliver
        while True:
            try:
                item = await step()
            except StopAsyncIteration:
                return None
            except BrokerError as exc:
                return exc
            self._last = now()
            self.messages += 1
            if self._awaiting_recovery:
                self._recovered()
            if not isinstance(item, Heartbeat):
                deliver_sync(item)

    async def _watchdog(self, scope: trio.CancelScope, silence: float) -> None:
        """Close the stream (cancel ``scope``) once nothing came for ``silence`` s."""
        while True:
            deadline = self._last + silence
            now = trio.current_time()
            if now >= deadline:
                if not self._busy:
                    self._stale = True
                    self.healthy = False
                    scope.cancel()
                    return
                deadline = now + silence  # an async deliver under way: not silence
            await trio.sleep_until(deadline)

    async def _idle(self) -> None:
        """Wait, unsubscribed, until keys come back."""
        while self.keyed and not self.keys:
            self._changed = trio.Event()
            await self._changed.wait()
        self._changed = None

    async def _back_off(self, generation: int) -> None:
        """Wait out the backoff delay of the failure just reported, unless keys change."""
        delay = self.backoff.delay(self._attempt, self._rng)
        if generation != self.generation:
            return  # keys changed since that stream opened: try the new ones at once
        self._changed = trio.Event()
        try:
            with trio.move_on_after(delay):
                await self._changed.wait()
        finally:
            self._changed = None

    # -- state and events ----------------------------------------------------

    def _opened(self, generation: int) -> None:
        self.connected = True
        self.open_generation = generation
        if self._reconnect_due:
            self._reconnect_due = False
            self._awaiting_recovery = True
            self.reconnects += 1
            self._emit(FeedEventKind.RECONNECTED, attempt=self._attempt, outage=self._outage())
        elif self._down_since is None:
            self.healthy = True
        self._settle(generation)

    def _closed(self) -> None:
        self.connected = False
        self.healthy = False
        self.open_generation = -1
        self._settled = -1

    def _fail(self, kind: FeedEventKind, reason: str) -> None:
        self.failures += 1
        self._attempt += 1
        self.healthy = False
        if self._down_since is None:
            # A silent stream was last healthy at its last message (or its open).
            stale = kind is FeedEventKind.STALE
            self._down_since = self._last if stale else trio.current_time()
        self._reconnect_due = True
        self._awaiting_recovery = False
        self._emit(kind, reason=reason, attempt=self._attempt)

    def _recovered(self) -> None:
        attempt, outage = self._attempt, self._outage()
        self._attempt = 0
        self._down_since = None
        self._awaiting_recovery = False
        self.healthy = True
        self._emit(FeedEventKind.RECOVERED, attempt=attempt, outage=outage)

    def _outage(self) -> float | None:
        since = self._down_since
        return None if since is None else trio.current_time() - since

    def _emit(
        self,
        kind: FeedEventKind,
        *,
        reason: str = "",
        attempt: int = 0,
        outage: float | None = None,
    ) -> None:
        event = FeedEvent(
            kind=kind,
            feed=self.name,
            time=self._clock(),
            reason=reason,
            attempt=attempt,
            outage=outage,
        )
        fields: dict[str, object] = {"feed": self.name, "attempt": attempt}
        if reason:
            fields["reason"] = reason
        if outage is not None:
            fields["outage"] = round(outage, 3)
        if kind is FeedEventKind.DISCONNECTED:
            log.warning("feed disconnected; reconnecting", **fields)
        elif kind is FeedEventKind.STALE:
            log.warning("feed silent; reconnecting", **fields)
        elif kind is FeedEventKind.RECONNECTED:
            log.info("feed reconnected", **fields)
        else:
            log.info("feed recovered", **fields)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("feed: the on_event callback failed", feed=self.name, kind=str(kind))


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
