"""The paper broker's streams as a venue's: heartbeats, and the faults it can
play (a dropped connection, a hung one) for the engine's supervision to meet."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from rick_core.broker import HEARTBEAT, BrokerEvent, Disconnected, Heartbeat
from rick_core.components import ComponentSetup
from rick_core.feeds import Backoff, FeedEvent, FeedEventKind, FeedSupervisor
from rick_core.model import Fill, Order, OrderRequest, Quote
from rick_core.paper.broker import PaperBroker


def broker(tmp_path: Path, **options: Any) -> PaperBroker:
    options.setdefault("persist", False)
    options.setdefault("instruments", ["EUR_USD"])
    return PaperBroker(
        ComponentSetup(name="sim", options=options, home=tmp_path, source="rick.toml [brokers.sim]")
    )


def market(side: str, cid: str) -> OrderRequest:
    return OrderRequest(
        instrument="EUR_USD", side=side, quantity=Decimal(1000), client_order_id=cid
    )


class Reader:
    """Reads a stream in the background, noting each item with its trio time."""

    def __init__(self) -> None:
        self.items: list[tuple[float, object]] = []
        self.error: BaseException | None = None

    async def read(self, stream: AsyncIterator[Any]) -> None:
        try:
            async for item in stream:
                self.items.append((trio.current_time(), item))
        except Disconnected as exc:
            self.error = exc
            self.items.append((trio.current_time(), exc))

    def data(self) -> list[object]:
        return [item for _, item in self.items if not isinstance(item, Heartbeat)]


# ---------------------------------------------------------------------------
# drop


async def test_drop_ends_both_streams_with_disconnected(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    b = broker(tmp_path)
    await b.connect()
    quotes_read, events_read = Reader(), Reader()
    async with (
        b.stream_quotes(["EUR_USD"]) as quotes,
        b.stream_events() as events,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(quotes_read.read, quotes)
        nursery.start_soon(events_read.read, events)  # waiting, nothing published
        await trio.sleep(2.1)
        await b.place_order(market("buy", "before-drop"))  # queued, not yet read
        b.drop_streams()
        dropped_at = trio.current_time()
    assert isinstance(quotes_read.error, Disconnected)
    assert str(quotes_read.error) == "sim: the paper venue dropped the quotes stream"
    assert isinstance(events_read.error, Disconnected)
    assert "dropped the events stream" in str(events_read.error)
    assert quotes_read.items[-1][0] == events_read.items[-1][0] == dropped_at  # at once
    assert len(quotes_read.data()) >= 4  # quotes flowed until then
    # a dropped connection loses what was in flight
    assert not [e for e in events_read.data() if isinstance(e, Order | Fill)]
    # and the venue takes a new subscription
    async with b.stream_quotes(["EUR_USD"]) as quotes:
        assert isinstance(await anext(quotes), Quote)
    await b.close()


async def test_drop_of_one_kind_leaves_the_other(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    b = broker(tmp_path)
    await b.connect()
    async with b.stream_quotes(["EUR_USD"]) as quotes, b.stream_events() as events:
        b.drop_streams("events")
        with pytest.raises(Disconnected, match="events stream"):
            await anext(events)
        assert isinstance(await anext(quotes), Quote)
        b.drop_streams("quotes")
        with pytest.raises(Disconnected, match="quotes stream"):
            await anext(quotes)
    await b.close()


# ---------------------------------------------------------------------------
# stall


async def test_a_stall_yields_nothing_for_its_time_then_resumes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    b = broker(tmp_path, interval=0.5)
    await b.connect()
    reader = Reader()
    async with b.stream_quotes(["EUR_USD"]) as quotes, trio.open_nursery() as nursery:
        nursery.start_soon(reader.read, quotes)
        await trio.sleep(2)
        before = len(reader.items)
        start = trio.current_time()
        b.stall_streams(12, kind="quotes")  # longer than the 5 s heartbeat
        await trio.sleep(11.9)
        assert len(reader.items) == before  # nothing at all, heartbeats included
        # a stream opened during the stall is stalled too
        async with b.stream_quotes(["EUR_USD"]) as late:
            with trio.move_on_after(0.05):
                await anext(late)
                pytest.fail("a new stream yielded during the stall")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    after = reader.items[before:]
    assert after, "nothing came after the stall"
    assert after[0][0] == pytest.approx(start + 12)
    late_quotes = [q for _, q in after if isinstance(q, Quote)]
    assert len(late_quotes) >= 20  # the stall's quotes, late, then the market's own pace
    times = [q.time for q in late_quotes]
    assert times == sorted(times)
    await b.close()


async def test_a_stall_without_end_lasts_until_resumed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    b = broker(tmp_path, interval=0.5)
    await b.connect()
    reader = Reader()
    async with b.stream_events() as events, trio.open_nursery() as nursery:
        b.stall_streams(None)
        nursery.start_soon(reader.read, events)
        await trio.sleep(100)
        assert reader.items == []
        b.resume_streams()
        await b.place_order(market("buy", "after"))
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert [e.client_order_id for e in reader.data()][:1] == ["after"]  # type: ignore[attr-defined]
    await b.close()


async def test_events_published_during_a_stall_arrive_after_it_in_order(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    b = broker(tmp_path)
    await b.connect()
    reader = Reader()
    async with b.stream_events() as events, trio.open_nursery() as nursery:
        nursery.start_soon(reader.read, events)
        b.stall_streams(10, kind="events")
        start = trio.current_time()
        placed = []
        for n in range(3):
            placed.append(await b.place_order(market("buy" if n % 2 == 0 else "sell", f"o{n}")))
            await trio.sleep(1)
        assert reader.items == []
        await trio.sleep(8)
        nursery.cancel_scope.cancel()
    got: list[BrokerEvent] = reader.data()  # type: ignore[assignment]
    assert all(t == pytest.approx(start + 10) for t, _ in reader.items)
    order_ids = [e.client_order_id for e in got]
    assert order_ids == sorted(order_ids)  # in the order published
    assert set(order_ids) == {"o0", "o1", "o2"}
    fills = [e for e in got if isinstance(e, Fill)]
    assert [f.client_order_id for f in fills] == ["o0", "o1", "o2"]
    finals = [e for e in got if isinstance(e, Order) and e.client_order_id == "o2"]
    assert finals[-1].status == placed[2].status
    await b.close()


async def test_events_published_with_no_stream_open_are_not_replayed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    b = broker(tmp_path, heartbeat=2)
    await b.connect()
    await b.place_order(market("buy", "unheard"))
    async with b.stream_events() as events:
        assert await anext(events) is HEARTBEAT  # nothing replayed: only a heartbeat
    await b.close()


# ---------------------------------------------------------------------------
# heartbeats


async def test_a_quiet_event_stream_heartbeats(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    b = broker(tmp_path, heartbeat=3)
    await b.connect()
    reader = Reader()
    async with b.stream_events() as events, trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(reader.read, events)
        await trio.sleep(7)
        await b.place_order(market("buy", "x"))  # events, then quiet again
        await trio.sleep(6.5)
        nursery.cancel_scope.cancel()
    beats = [t - start for t, item in reader.items if isinstance(item, Heartbeat)]
    assert beats == pytest.approx([3, 6, 10, 13])  # 3 s after the last thing yielded
    assert {e.client_order_id for e in reader.data()} == {"x"}  # type: ignore[attr-defined]
    await b.close()


async def test_a_quiet_quote_stream_heartbeats(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    b = broker(tmp_path, interval=20)  # a quote every 20 s
    await b.connect()
    reader = Reader()
    async with b.stream_quotes(["EUR_USD"]) as quotes, trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(reader.read, quotes)
        await trio.sleep(45)
        nursery.cancel_scope.cancel()
    items = [(round(t - start, 6), type(item).__name__) for t, item in reader.items]
    quote_times = [t for t, kind in items if kind == "Quote"]
    assert len(quote_times) >= 2
    for t, kind in items:
        if kind == "Heartbeat":  # 5 s after the quote or heartbeat before it
            previous = max([0.0, *(u for u, _ in items if u < t)])
            assert t - previous == pytest.approx(5)
    assert sum(kind == "Heartbeat" for _, kind in items) >= 6
    await b.close()


async def test_the_fast_path_yields_no_heartbeats_and_still_stalls(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    b = broker(tmp_path, speed=0, instruments=["EUR_USD", "BTC_USD"])
    await b.connect()
    async with b.stream_quotes(["EUR_USD"]) as quotes:
        got = [await anext(quotes) for _ in range(2000)]
        assert all(isinstance(q, Quote) and q.instrument == "EUR_USD" for q in got)
        b.stall_streams(30)
        start = trio.current_time()
        assert isinstance(await anext(quotes), Quote)
        assert trio.current_time() == pytest.approx(start + 30)
    await b.close()


async def test_a_replay_heartbeats_through_a_gap(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rows = [
        {"instrument": "EUR_USD", "bid": "1.1", "ask": "1.1001", "time": f"2026-03-02T10:00:{s}Z"}
        for s in ("00", "01", "14", "15")
    ]
    (tmp_path / "gap.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", "utf-8")
    b = broker(tmp_path, replay="gap.jsonl", instruments=None)
    await b.connect()
    async with b.stream_quotes(["EUR_USD"]) as quotes:
        kinds = [type(item).__name__ async for item in quotes]  # ends with the file
    # the 13 s gap between the second and the third holds two heartbeats
    assert kinds == ["Quote", "Quote", "Heartbeat", "Heartbeat", "Quote", "Quote"]
    await b.close()


# ---------------------------------------------------------------------------
# under the feed supervisor


async def test_the_supervisor_reopens_a_stalled_paper_stream(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    b = broker(tmp_path, interval=0.5)
    await b.connect()
    assert (b.quote_silence, b.event_silence) == (10.0, 20.0)
    events: list[FeedEvent] = []
    got: list[Quote] = []
    sup: FeedSupervisor[Quote] = FeedSupervisor(
        "sim quotes",
        b.stream_quotes,
        silence=b.quote_silence,
        backoff=Backoff(initial=1, jitter=0),
        on_event=events.append,
        clock=lambda: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=trio.current_time()),
    )
    sup.set_keys(["EUR_USD"])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, got.append)
        await trio.sleep(1)
        b.stall_streams(15, kind="quotes")
        stall_end = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=trio.current_time() + 15)
        await trio.sleep(20)
        b.drop_streams("quotes")
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert [e.kind for e in events] == [
        FeedEventKind.STALE,  # 10 s into the stall
        FeedEventKind.RECONNECTED,  # 1 s later, still stalled
        FeedEventKind.RECOVERED,  # when the stall ends
        FeedEventKind.DISCONNECTED,  # the drop
        FeedEventKind.RECONNECTED,
        FeedEventKind.RECOVERED,
    ]
    stale, _, recovered = events[:3]
    assert recovered.time == stall_end
    # the outage began with the last quote, 10 s (the silence) before the STALE
    assert recovered.outage == pytest.approx((recovered.time - stale.time).total_seconds() + 10)
    assert events[3].reason == "sim: the paper venue dropped the quotes stream"
    assert not b._quote_subs[1:]  # the closed streams left the venue
    times = [q.time for q in got]
    assert times == sorted(times)
    await b.close()


# ---------------------------------------------------------------------------
# options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"heartbeat": 0}, r"heartbeat must be a positive number, got 0"),
        ({"heartbeat": "5"}, r"heartbeat must be a number, got '5'"),
        (
            {"quote_silence": True},
            r"quote_silence must be a positive number of seconds, or false \(no watchdog\), "
            r"got True",
        ),
        ({"quote_silence": -1}, r"quote_silence must be a positive number of seconds"),
        ({"event_silence": "20s"}, r"event_silence must be a positive number of seconds"),
        (
            {"event_silence": 4},
            r"event_silence \(4 s\) must be longer than heartbeat \(5 s\)",
        ),
        ({"heartbeat": 12}, r"quote_silence \(10 s\) must be longer than heartbeat \(12 s\)"),
        ({"heartbeet": 1}, r"unknown option\(s\) heartbeet; .*heartbeat, quote_silence, "),
    ],
)
def test_bad_stream_options_name_the_key(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=r"rick.toml \[brokers.sim\]: " + message):
        broker(tmp_path, **options)


def test_stream_options_set_the_silence_timeouts(tmp_path: Path) -> None:
    b = broker(tmp_path)
    assert (b.options.heartbeat, b.quote_silence, b.event_silence) == (5.0, 10.0, 20.0)
    b = broker(tmp_path, heartbeat=1, quote_silence=False, event_silence=Decimal("2.5"))
    assert (b.options.heartbeat, b.quote_silence, b.event_silence) == (1.0, None, 2.5)


async def test_fault_arguments_are_checked(tmp_path: Path) -> None:
    b = broker(tmp_path)
    with pytest.raises(ValueError, match="kind must be one of quotes, events or None"):
        b.drop_streams("orders")
    with pytest.raises(ValueError, match="seconds must be zero or more, or None, got -1"):
        b.stall_streams(-1)
