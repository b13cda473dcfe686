"""The feed supervisor: delivery, the silence watchdog, reconnects with backoff,
resubscription, and the events that report them (all under trio's autojump clock)."""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from rick_core.broker import HEARTBEAT, Disconnected, Heartbeat, NotFound
from rick_core.feeds import Backoff, FeedEvent, FeedEventKind, FeedSupervisor

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)

# script steps of one stream
END = ("end",)
SILENT = ("silent",)  # nothing more, ever (a hung connection)


def item(value: object) -> tuple[str, object]:
    return ("item", value)


def wait(seconds: float) -> tuple[str, float]:
    return ("wait", seconds)


def fail(exc: BaseException) -> tuple[str, BaseException]:
    return ("raise", exc)


BEAT = item(HEARTBEAT)


class FakeVenue:
    """A scriptable stream source: each open takes the next script (a list of
    steps), or fails while ``refuse`` > 0. Records the keys of every open and
    every cleanup, and the trio time of every open attempt."""

    def __init__(self, *scripts: Sequence[tuple[Any, ...]], refuse: int = 0) -> None:
        self.scripts = list(scripts)
        self.refuse = refuse
        self.refusal: BaseException = Disconnected("connection refused", broker="fake")
        self.attempts: list[float] = []
        self.opened: list[tuple[str, ...]] = []
        self.closed: list[tuple[str, ...]] = []

    @property
    def open_now(self) -> int:
        return len(self.opened) - len(self.closed)

    @asynccontextmanager
    async def open(self, keys: tuple[str, ...]) -> AsyncIterator[AsyncIterator[Any]]:
        await trio.lowlevel.checkpoint()
        self.attempts.append(trio.current_time())
        if self.refuse:
            self.refuse -= 1
            raise self.refusal
        script = self.scripts.pop(0) if self.scripts else [SILENT]
        self.opened.append(keys)
        try:
            yield self._play(script)
        finally:
            with trio.CancelScope(shield=True):  # as a plugin's cleanup should be
                await trio.lowlevel.checkpoint()  # an unsubscribe message, say
            self.closed.append(keys)

    @staticmethod
    async def _play(script: Sequence[tuple[Any, ...]]) -> AsyncGenerator[Any, None]:
        for step in script:
            kind = step[0]
            if kind == "item":
                yield step[1]
            elif kind == "wait":
                await trio.sleep(step[1])
            elif kind == "raise":
                raise step[1]
            elif kind == "end":
                return
            else:
                await trio.sleep_forever()
        await trio.sleep_forever()


class Recorder:
    def __init__(self) -> None:
        self.items: list[object] = []
        self.times: list[float] = []
        self.events: list[FeedEvent] = []

    def deliver(self, value: object) -> None:
        self.items.append(value)
        self.times.append(trio.current_time())

    def on_event(self, event: FeedEvent) -> None:
        self.events.append(event)

    def kinds(self) -> list[FeedEventKind]:
        return [e.kind for e in self.events]


def clock() -> datetime:
    return EPOCH + timedelta(seconds=trio.current_time())


def at(event: FeedEvent) -> float:
    return (event.time - EPOCH).total_seconds()


NO_JITTER = Backoff(initial=1.0, maximum=4.0, factor=2.0, jitter=0.0)


def supervisor(
    venue: FakeVenue, record: Recorder, *, keys: Sequence[str] = ("EUR_USD",), **options: Any
) -> FeedSupervisor[Any]:
    options.setdefault("backoff", NO_JITTER)
    sup: FeedSupervisor[Any] = FeedSupervisor(
        "fake quotes", venue.open, on_event=record.on_event, clock=clock, **options
    )
    sup.set_keys(keys)
    return sup


# ---------------------------------------------------------------------------
# delivery and the watchdog


async def test_data_in_order_heartbeats_skipped_but_keep_the_watchdog_quiet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = [item(1), item(2)]
    for _ in range(5):  # 20 s of heartbeats only, 4 s apart, under a 5 s watchdog
        script += [wait(4), BEAT]
    script += [item(3), item(Heartbeat(time=EPOCH)), item(4)]  # then silence
    venue, record = FakeVenue(script), Recorder()
    sup = supervisor(venue, record, silence=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, record.deliver)
        assert sup.connected and sup.healthy and sup.open_generation == sup.generation
        await trio.sleep(24.5)
        assert record.items == [1, 2, 3, 4]
        assert sup.messages == 10
        assert record.events == []  # 20 s with heartbeats only: never stale
        assert venue.opened == [("EUR_USD",)] and venue.closed == []
        await trio.sleep(1)  # 5 s after the last message
        assert record.kinds() == [FeedEventKind.STALE]
        nursery.cancel_scope.cancel()
    (stale,) = record.events
    assert at(stale) == pytest.approx(25.0)
    assert (stale.feed, stale.reason, stale.attempt) == ("fake quotes", "no message for 5 s", 1)


async def test_a_silent_stream_is_closed_reopened_and_recovers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = FakeVenue([item("a")], [wait(2), item("b"), BEAT])
    record = Recorder()
    sup = supervisor(venue, record, silence=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, record.deliver)
        await trio.sleep(5.5)
        # stale at 5 s: the stream was closed (its cleanup ran), the backoff (1 s) runs
        assert venue.closed == [("EUR_USD",)]
        assert not sup.connected and not sup.healthy and sup.open_generation == -1
        await trio.sleep(1)
        assert sup.connected and not sup.healthy  # open again, nothing heard yet
        await trio.sleep(2)
        assert sup.healthy
        nursery.cancel_scope.cancel()
    assert venue.opened == [("EUR_USD",), ("EUR_USD",)]  # the same keys again
    assert record.items == ["a", "b"]
    stale, reconnected, recovered = record.events
    assert stale.kind is FeedEventKind.STALE and at(stale) == pytest.approx(5.0)
    assert reconnected.kind is FeedEventKind.RECONNECTED
    assert at(reconnected) == pytest.approx(6.0)
    # the outage began with the last message, at 0
    assert (reconnected.attempt, reconnected.outage) == (1, pytest.approx(6.0))
    assert recovered.kind is FeedEventKind.RECOVERED
    assert at(recovered) == pytest.approx(8.0)
    assert (recovered.attempt, recovered.outage) == (1, pytest.approx(8.0))
    assert (sup.failures, sup.reconnects, sup.messages) == (1, 1, 3)


async def test_errors_and_the_end_of_a_stream_are_disconnections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = FakeVenue(
        [item(1), fail(Disconnected("socket closed", broker="fake"))],
        [item(2), END],
        [item(3), fail(NotFound("gone"))],
        [item(4)],
    )
    record = Recorder()
    sup = supervisor(venue, record)  # no watchdog
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, record.deliver)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert record.items == [1, 2, 3, 4]
    disconnects = [e for e in record.events if e.kind is FeedEventKind.DISCONNECTED]
    assert [e.reason for e in disconnects] == ["fake: socket closed", "stream ended", "gone"]
    assert [e.attempt for e in disconnects] == [1, 1, 1]  # each reopened stream was healthy
    assert venue.attempts == pytest.approx([0, 1, 2, 3])  # 1 s after each
    assert venue.closed == venue.opened  # every stream was left properly


# ---------------------------------------------------------------------------
# backoff


async def test_backoff_grows_caps_and_resets_after_a_healthy_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = FakeVenue([item("up"), wait(10), END], refuse=5)
    record = Recorder()
    sup = supervisor(venue, record)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, record.deliver)  # started once a stream is open
        assert trio.current_time() == pytest.approx(15.0)
        await trio.sleep(12)
        nursery.cancel_scope.cancel()
    # refused at 0, 1, 3, 7, 11 (waits 1, 2, 4, 4, 4: capped), open at 15; it
    # delivered, so after it ends (25) the next try waits 1 s again
    assert venue.attempts == pytest.approx([0, 1, 3, 7, 11, 15, 26])
    kinds = record.kinds()
    assert kinds == [FeedEventKind.DISCONNECTED] * 5 + [
        FeedEventKind.RECONNECTED,
        FeedEventKind.RECOVERED,
        FeedEventKind.DISCONNECTED,
        FeedEventKind.RECONNECTED,
    ]
    assert [e.attempt for e in record.events[:5]] == [1, 2, 3, 4, 5]
    assert all(e.reason == "fake: connection refused" for e in record.events[:5])
    reconnected = record.events[5]
    assert (reconnected.attempt, reconnected.outage) == (5, pytest.approx(15.0))
    assert record.events[7].attempt == 1
    assert (sup.failures, sup.reconnects) == (6, 2)


async def test_a_venue_that_accepts_and_drops_at_once_is_still_backed_off_from(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = FakeVenue([END], [END], [END], [END], [item("finally")])
    record = Recorder()
    sup = supervisor(venue, record)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, record.deliver)
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert venue.attempts == pytest.approx([0, 1, 3, 7, 11])
    disconnects = [e for e in record.events if e.kind is FeedEventKind.DISCONNECTED]
    assert [e.attempt for e in disconnects] == [1, 2, 3, 4]
    assert record.events[-1].kind is FeedEventKind.RECOVERED
    assert record.events[-1].outage == pytest.approx(11.0)


# ---------------------------------------------------------------------------
# keys


async def test_set_keys_resubscribes_at_once_without_an_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = FakeVenue([item(1)], [item(2)])
    record = Recorder()
    sup = supervisor(venue, record, silence=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, record.deliver)
        first = sup.generation
        await trio.sleep(3)
        assert sup.set_keys(["EUR_USD"]) == first  # no change: nothing happens
        generation = sup.set_keys(["GBP_USD", "EUR_USD", "GBP_USD"])
        assert generation == first + 1 and sup.keys == ("EUR_USD", "GBP_USD")
        assert await sup.wait_open(generation, timeout=1)
        assert trio.current_time() == pytest.approx(3.0)  # no backoff
        assert sup.open_generation == generation and sup.healthy
        nursery.cancel_scope.cancel()
    assert venue.opened == [("EUR_USD",), ("EUR_USD", "GBP_USD")]
    assert venue.closed == [("EUR_USD",), ("EUR_USD", "GBP_USD")]
    assert record.items == [1, 2]
    assert record.events == []


async def test_set_keys_ends_a_backoff_wait(autojump_clock: trio.testing.MockClock) -> None:
    venue = FakeVenue([item(1), END], [item(2)])
    record = Recorder()
    sup = supervisor(venue, record, backoff=Backoff(initial=20, maximum=20, jitter=0))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, record.deliver)
        await trio.sleep(2)  # ended at once: waiting 20 s
        assert record.kinds() == [FeedEventKind.DISCONNECTED]
        generation = sup.set_keys(["USD_JPY"])
        assert await sup.wait_open(generation, timeout=1)
        assert trio.current_time() == pytest.approx(2.0)
        nursery.cancel_scope.cancel()
    assert venue.opened == [("EUR_USD",), ("USD_JPY",)]
    assert record.kinds() == [
        FeedEventKind.DISCONNECTED,
        FeedEventKind.RECONNECTED,
        FeedEventKind.RECOVERED,
    ]


async def test_a_keyed_supervisor_opens_only_while_it_has_keys(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue, record = FakeVenue([item(1)]), Recorder()
    sup = supervisor(venue, record, keys=())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, record.deliver)  # at once: nothing to open
        await trio.sleep(10)
        assert venue.attempts == [] and not sup.connected
        assert await sup.wait_open(sup.generation, timeout=0)  # idle, nothing to open
        opened = sup.set_keys(["EUR_USD"])
        assert await sup.wait_open(opened, timeout=1)
        await trio.sleep(1)
        assert venue.opened == [("EUR_USD",)] and record.items == [1]
        emptied = sup.set_keys([])
        assert await sup.wait_open(emptied, timeout=1)
        assert venue.closed == [("EUR_USD",)]  # unsubscribed at the venue
        assert not sup.connected and sup.open_generation == -1
        await trio.sleep(10)
        assert len(venue.attempts) == 1
        nursery.cancel_scope.cancel()
    assert record.events == []


async def test_an_unkeyed_supervisor_opens_with_no_keys(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue, record = FakeVenue([item("fill")]), Recorder()
    sup = supervisor(venue, record, keys=(), keyed=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, record.deliver)
        assert sup.connected
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert venue.opened == [()] and record.items == ["fill"]


async def test_wait_open_times_out_while_the_venue_refuses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue, record = FakeVenue(refuse=2), Recorder()
    sup = supervisor(venue, record, backoff=Backoff(initial=2, jitter=0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run, record.deliver)
        assert not await sup.wait_open(sup.generation, timeout=5)
        assert trio.current_time() == pytest.approx(5.0)
        assert await sup.wait_open(sup.generation, timeout=5)
        assert trio.current_time() == pytest.approx(6.0)  # refused at 0 and 2, open at 6
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# what propagates


async def test_must_open_first_propagates_the_first_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue, record = FakeVenue(refuse=1), Recorder()
    sup = supervisor(venue, record)
    with pytest.raises(Disconnected, match="connection refused"):
        await sup.run(record.deliver, must_open_first=True)
    assert record.events == [] and venue.attempts == [0]


async def test_without_must_open_first_a_failed_first_open_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue, record = FakeVenue([wait(1), item(1)], refuse=1), Recorder()
    sup = supervisor(venue, record)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, record.deliver)  # started once a stream is open
        assert trio.current_time() == pytest.approx(1.0)
        assert record.kinds() == [FeedEventKind.DISCONNECTED, FeedEventKind.RECONNECTED]
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert record.kinds()[-1] is FeedEventKind.RECOVERED


@pytest.mark.parametrize("silence", [None, 5.0])
async def test_a_bug_in_the_stream_propagates(
    autojump_clock: trio.testing.MockClock, silence: float | None
) -> None:
    venue = FakeVenue([item(1), fail(ValueError("bad frame"))])
    record = Recorder()
    sup = supervisor(venue, record, silence=silence)
    with pytest.raises(ValueError, match="bad frame"):
        await sup.run(record.deliver)
    assert venue.closed == [("EUR_USD",)]  # left the block properly
    assert record.items == [1] and record.events == []
    assert not sup.connected


async def test_a_bug_in_open_propagates(autojump_clock: trio.testing.MockClock) -> None:
    venue, record = FakeVenue(refuse=1), Recorder()
    venue.refusal = TypeError("open() got an unexpected keyword")
    sup = supervisor(venue, record)
    with pytest.raises(TypeError):
        await sup.run(record.deliver)


async def test_a_broker_error_from_deliver_propagates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue, record = FakeVenue([item(1)]), Recorder()
    sup = supervisor(venue, record, silence=5.0)

    async def deliver(value: object) -> None:
        raise NotFound("the handler's own call failed")

    with pytest.raises(NotFound, match="handler"):
        await sup.run(deliver)
    assert record.events == [] and venue.closed == [("EUR_USD",)]


# ---------------------------------------------------------------------------
# async deliver, on_event


async def test_async_deliver_is_awaited_and_its_time_is_not_silence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = FakeVenue([item(1), item(2), item(3)])
    record = Recorder()
    sup = supervisor(venue, record, silence=5.0, keyed=False)
    handled: list[tuple[object, float]] = []

    async def deliver(value: object) -> None:
        await trio.sleep(8)  # longer than the watchdog's 5 s
        handled.append((value, trio.current_time()))

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, deliver)
        await trio.sleep(24.5)
        assert [v for v, _ in handled] == [1, 2, 3]
        assert [t for _, t in handled] == pytest.approx([8, 16, 24])
        assert record.events == []
        await trio.sleep(5)
        assert record.kinds() == [FeedEventKind.STALE]  # 5 s after the last was handled
        nursery.cancel_scope.cancel()


async def test_set_keys_waits_for_an_async_deliver_to_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = FakeVenue([item(1)], [item(2)])
    record = Recorder()
    sup = supervisor(venue, record)
    handled: list[object] = []

    async def deliver(value: object) -> None:
        await trio.sleep(3)
        handled.append(value)

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, deliver)
        await trio.sleep(1)
        generation = sup.set_keys(["GBP_USD"])
        assert await sup.wait_open(generation, timeout=10)
        assert trio.current_time() == pytest.approx(3.0)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert handled == [1, 2]  # the first was not interrupted


async def test_an_on_event_failure_is_logged_and_swallowed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = FakeVenue([END], [item(1)])

    def on_event(event: FeedEvent) -> None:
        raise RuntimeError("notifier down")

    sup: FeedSupervisor[Any] = FeedSupervisor(
        "fake events", venue.open, on_event=on_event, keyed=False, backoff=NO_JITTER
    )
    got: list[object] = []
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run, got.append)
            await trio.sleep(2)
            nursery.cancel_scope.cancel()
    assert got == [1]
    failed = [entry for entry in logs if entry["event"] == "feed: the on_event callback failed"]
    assert [entry["event"] for entry in failed] == ["feed: the on_event callback failed"] * 3
    disconnected = next(e for e in logs if e["event"].startswith("feed disconnected"))
    assert disconnected["log_level"] == "warning"
    assert (disconnected["feed"], disconnected["reason"]) == ("fake events", "stream ended")
    recovered = next(e for e in logs if e["event"] == "feed recovered")
    assert recovered["log_level"] == "info" and recovered["outage"] == pytest.approx(1.0)


async def test_run_twice_at_once_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    venue, record = FakeVenue(), Recorder()
    sup = supervisor(venue, record)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, record.deliver)
        with pytest.raises(RuntimeError, match="already running"):
            await sup.run(record.deliver)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# Backoff


def test_backoff_delays_grow_and_cap_within_the_jitter() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, factor=2.0, jitter=0.2)
    rng = random.Random(42)
    for attempt, base in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (500, 30.0)]:
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(base * 0.8 <= d <= base * 1.2 for d in delays), attempt
        assert max(delays) - min(delays) > base * 0.2  # it does vary
    exact = Backoff(initial=1, maximum=5, factor=3, jitter=0)
    assert [exact.delay(n, rng) for n in (1, 2, 3)] == [1, 3, 5]
    # a seeded random gives the same delays
    assert Backoff().delay(3, random.Random(7)) == Backoff().delay(3, random.Random(7))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"initial": 0}, "backoff initial must be a positive number, got 0"),
        ({"initial": float("nan")}, "backoff initial must be a positive number"),
        ({"maximum": -1}, "backoff maximum must be a positive number"),
        ({"initial": 5, "maximum": 2}, r"backoff maximum \(2\) must not be less than initial"),
        ({"factor": 0.5}, "backoff factor must be 1 or more, got 0.5"),
        ({"jitter": 1.0}, "backoff jitter must be at least 0 and below 1, got 1.0"),
        ({"jitter": -0.1}, "backoff jitter must be at least 0"),
    ],
)
def test_backoff_validation(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**fields)


def test_backoff_attempts_start_at_one() -> None:
    with pytest.raises(ValueError, match="attempt must be 1 or more"):
        Backoff().delay(0, random.Random(1))


def test_silence_must_be_positive() -> None:
    venue = FakeVenue()
    with pytest.raises(ValueError, match="fake: silence must be a positive number"):
        FeedSupervisor("fake", venue.open, silence=0)
