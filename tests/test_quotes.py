"""The quote multiplexer: shared reference-counted subscriptions, fan-out with
conflation, best quotes and staleness."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import trio

from rick_core.engine.quotes import (
    BestQuote,
    QuoteConsumer,
    QuoteMux,
    QuoteQueue,
    StalePrice,
    best_of,
)
from rick_core.model import Quote

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def q(instrument: str, bid: str, ask: str, source: str = "a", seconds: float = 0) -> Quote:
    return Quote(
        instrument=instrument,
        bid=Decimal(bid),
        ask=Decimal(ask),
        time=T0 + timedelta(seconds=seconds),
        source=source,
    )


class ScriptedBroker:
    """Just what the multiplexer uses of a broker: a quote stream whose
    subscriptions are recorded and whose quotes the test pushes."""

    quote_silence: float | None = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.opened: list[tuple[str, ...]] = []
        self.closed: list[tuple[str, ...]] = []
        self.open_now: tuple[str, ...] | None = None
        self._send: trio.MemorySendChannel[Quote] | None = None

    @asynccontextmanager
    async def stream_quotes(
        self, instruments: Sequence[str]
    ) -> AsyncIterator[AsyncIterator[Quote]]:
        keys = tuple(instruments)
        send, receive = trio.open_memory_channel[Quote](16)
        self._send = send
        self.opened.append(keys)
        self.open_now = keys
        try:
            yield receive
        finally:
            self.open_now = None
            self.closed.append(keys)

    async def push(self, quote: Quote) -> None:
        """Hand ``quote`` to the stream, as a venue would: at the pace it is read."""
        assert self._send is not None, "no stream open"
        assert self.open_now is not None and quote.instrument in self.open_now, (
            f"{quote.instrument} pushed on a stream of {self.open_now}"
        )
        await self._send.send(quote)


class Sink:
    def __init__(self) -> None:
        self.got: list[Any] = []

    def put_quote(self, quote: Any) -> None:
        self.got.append(quote)


@asynccontextmanager
async def running(mux: QuoteMux, *brokers: ScriptedBroker) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for broker in brokers:
            feed = mux.add_broker(broker.name, broker)  # type: ignore[arg-type]
            nursery.start_soon(feed.run)
        yield
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# the buffer


def test_queue_is_fifo_until_full_then_keeps_the_latest_per_instrument() -> None:
    queue = QuoteQueue(capacity=4)
    for i in range(4):
        queue.put(q("EUR_USD" if i % 2 else "GBP_USD", f"1.{i}", f"1.{i}5"))
    assert len(queue) == 4 and queue.skipped == 0
    queue.put(q("EUR_USD", "1.9", "1.95"))
    # Over capacity: one quote per instrument, the latest of each.
    items = queue.take()
    assert [(x.instrument, x.bid) for x in items] == [
        ("GBP_USD", Decimal("1.2")),
        ("EUR_USD", Decimal("1.9")),
    ]
    assert queue.skipped == 3


def test_queue_memory_is_bounded_by_capacity_and_instruments() -> None:
    queue = QuoteQueue(capacity=16)
    for i in range(10_000):
        queue.put(q(f"I{i % 5}_USD", "1", "2", seconds=i))
    assert len(queue) <= 16
    assert queue.skipped >= 10_000 - 16


def test_queue_refuses_a_zero_capacity() -> None:
    with pytest.raises(ValueError, match="at least one"):
        QuoteQueue(0)


# ---------------------------------------------------------------------------
# subscriptions


async def test_one_upstream_subscription_shared_and_reference_counted(
    autojump_clock: trio.abc.Clock,
) -> None:
    mux = QuoteMux()
    broker = ScriptedBroker("a")
    async with running(mux, broker):
        one, two = Sink(), Sink()
        assert await mux.subscribe(one, ["EUR_USD"], broker="a")
        assert broker.open_now == ("EUR_USD",)
        assert await mux.subscribe(two, ["EUR_USD", "GBP_USD"], broker="a")
        assert broker.open_now == ("EUR_USD", "GBP_USD")  # each instrument once
        feed = mux.feeds["a"]
        assert feed.holders("EUR_USD") == 2 and feed.holders("GBP_USD") == 1

        await broker.push(q("EUR_USD", "1.1", "1.2"))
        await broker.push(q("GBP_USD", "1.3", "1.4"))
        await trio.sleep(0.01)
        assert [x.instrument for x in one.got] == ["EUR_USD"]
        assert [x.instrument for x in two.got] == ["EUR_USD", "GBP_USD"]

        mux.unsubscribe(two, ["GBP_USD"], broker="a")
        await trio.sleep(0.01)
        assert broker.open_now == ("EUR_USD",)  # the last holder of GBP_USD left
        mux.leave(one)
        await trio.sleep(0.01)
        assert broker.open_now == ("EUR_USD",)  # two still holds it
        mux.leave(two)
        await trio.sleep(0.01)
        assert broker.open_now is None  # nobody left: the venue is unsubscribed
        assert feed.holders("EUR_USD") == 0
        assert broker.closed[-1] == ("EUR_USD",)


async def test_subscribing_an_unknown_broker_or_instrument_is_refused(
    autojump_clock: trio.abc.Clock,
) -> None:
    mux = QuoteMux()
    broker = ScriptedBroker("a")
    async with running(mux, broker):
        mux.feeds["a"].instruments = frozenset({"EUR_USD"})
        with pytest.raises(ValueError, match="no broker named 'b'"):
            await mux.subscribe(Sink(), ["EUR_USD"], broker="b")
        with pytest.raises(ValueError, match="does not list XAU_USD"):
            await mux.subscribe(Sink(), ["XAU_USD"], broker="a")
        with pytest.raises(ValueError, match="no running broker lists XAU_USD"):
            await mux.subscribe(Sink(), ["XAU_USD"])
        assert broker.opened == []


async def test_a_fast_consumer_sees_every_update_while_a_stalled_one_neither_blocks_nor_grows(
    autojump_clock: trio.abc.Clock,
) -> None:
    mux = QuoteMux()
    broker = ScriptedBroker("a")
    instruments = [f"I{i}_USD" for i in range(10)]
    updates = 5_000
    async with running(mux, broker):
        fast = QuoteConsumer("fast", capacity=64)
        stalled = QuoteConsumer("stalled", capacity=64)
        others = [QuoteConsumer(f"other{i}", capacity=64) for i in range(20)]
        for consumer in (fast, stalled, *others):
            await mux.subscribe(consumer, instruments, broker="a")
        seen = 0
        in_order = True
        last = T0 - timedelta(seconds=1)

        async def read_fast() -> None:
            nonlocal seen, in_order, last
            async for quote in fast:
                seen += 1
                in_order = in_order and quote.time > last
                last = quote.time

        async def drain(consumer: QuoteConsumer) -> None:
            while True:
                await consumer.wait()
                consumer.take()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_fast)
            for consumer in others:
                nursery.start_soon(drain, consumer)
            tracemalloc.start()
            try:
                for i in range(updates):
                    await broker.push(q(instruments[i % 10], "1", "2", seconds=i))
                await trio.sleep(0.1)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            nursery.cancel_scope.cancel()
        assert seen == updates and in_order
        assert fast.skipped == 0
        # The stalled consumer holds at most its capacity, and the latest of each.
        assert len(stalled.queue) <= 64
        assert stalled.skipped >= updates - 64
        latest = {x.instrument: x for x in stalled.take()}
        assert latest["I9_USD"].time == T0 + timedelta(seconds=updates - 1)
        # 5,000 quotes (~2 MB) went through; what stayed behind is a few buffers' worth.
        assert peak < 600_000, peak
        assert mux.feeds["a"].received == updates


# ---------------------------------------------------------------------------
# best quotes


def test_best_of_takes_the_best_bid_and_ask_from_different_brokers() -> None:
    best = best_of(
        "EUR_USD",
        [q("EUR_USD", "1.1000", "1.1004", "a"), q("EUR_USD", "1.1001", "1.1006", "b")],
    )
    assert best is not None
    assert (best.bid, best.bid_broker) == (Decimal("1.1001"), "b")
    assert (best.ask, best.ask_broker) == (Decimal("1.1004"), "a")
    assert best.tightest == "a"  # 0.0004 against 0.0005
    assert best.sources == ("a", "b") and best.source == "best"
    assert best.spread == Decimal("0.0003") and not best.crossed


def test_best_of_ties_go_to_the_freshest_quote_then_the_name() -> None:
    best = best_of(
        "EUR_USD",
        [
            q("EUR_USD", "1.1000", "1.1004", "c", seconds=0),
            q("EUR_USD", "1.1000", "1.1004", "b", seconds=5),
            q("EUR_USD", "1.1000", "1.1004", "a", seconds=5),
        ],
    )
    assert best is not None
    assert best.bid_brokers == ("a", "b", "c") and best.ask_brokers == ("a", "b", "c")
    assert best.bid_broker == "a" and best.ask_broker == "a"  # fresher than c; a before b
    assert best.tightest == "a"
    assert best.time == T0 + timedelta(seconds=5)


def test_best_of_sums_sizes_at_the_best_price_and_reports_a_crossed_market() -> None:
    one = Quote(
        instrument="BTC_USD", bid="100", ask="101", time=T0, source="a", bid_size="2", ask_size="1"
    )
    two = Quote(instrument="BTC_USD", bid="101.5", ask="102", time=T0, source="b", bid_size="3")
    best = best_of("BTC_USD", [one, two])
    assert best is not None and best.crossed  # b bids above a's ask
    assert best.bid_size == Decimal(3) and best.ask_size == Decimal(1)
    assert best_of("BTC_USD", []) is None


async def test_best_quote_leaves_out_a_stale_broker(autojump_clock: trio.abc.Clock) -> None:
    mux = QuoteMux(stale_after=5)
    a, b = ScriptedBroker("a"), ScriptedBroker("b")
    async with running(mux, a, b):
        sink = Sink()
        await mux.subscribe(sink, ["EUR_USD"])  # best: on both brokers
        assert a.open_now == ("EUR_USD",) and b.open_now == ("EUR_USD",)
        await a.push(q("EUR_USD", "1.1002", "1.1003", "a"))
        await b.push(q("EUR_USD", "1.1000", "1.1004", "b"))
        await trio.sleep(1)
        best = mux.best("EUR_USD")
        assert best is not None and best.bid_broker == "a" and best.stale == ()
        assert isinstance(sink.got[-1], BestQuote) and sink.got[-1].bid_broker == "a"

        await trio.sleep(3)
        await b.push(q("EUR_USD", "1.1000", "1.1004", "b", seconds=4))
        await trio.sleep(2)  # a's quote is now 6 s old; b's 2 s
        assert mux.is_stale("a", "EUR_USD") and not mux.is_stale("b", "EUR_USD")
        best = mux.best("EUR_USD")
        assert best is not None
        assert best.sources == ("b",) and best.stale == ("a",)
        assert (best.bid, best.bid_broker) == (Decimal("1.1000"), "b")
        assert list(mux.stale()) == [("a", "EUR_USD", pytest.approx(6, abs=0.01))]

        await trio.sleep(10)  # both stale: no best quote at all
        assert mux.best("EUR_USD") is None


async def test_best_subscribers_hear_only_changes_of_the_top(
    autojump_clock: trio.abc.Clock,
) -> None:
    mux = QuoteMux()
    a, b = ScriptedBroker("a"), ScriptedBroker("b")
    async with running(mux, a, b):
        sink = Sink()
        await mux.subscribe(sink, ["EUR_USD"], broker="best")
        await a.push(q("EUR_USD", "1.1000", "1.1004", "a"))
        await trio.sleep(0.01)
        await b.push(q("EUR_USD", "1.0990", "1.1010", "b"))  # worse on both sides: no change
        await trio.sleep(0.01)
        await b.push(q("EUR_USD", "1.1001", "1.1010", "b"))  # a better bid
        await trio.sleep(0.01)
        tops = [(x.bid, x.bid_broker, x.ask, x.ask_broker) for x in sink.got]
        assert tops == [
            (Decimal("1.1000"), "a", Decimal("1.1004"), "a"),
            (Decimal("1.1001"), "b", Decimal("1.1004"), "a"),
        ]
        mux.unsubscribe(sink, ["EUR_USD"])
        await trio.sleep(0.01)
        assert a.open_now is None and b.open_now is None


# ---------------------------------------------------------------------------
# staleness


async def test_check_fresh_refuses_a_stale_or_missing_subscribed_price(
    autojump_clock: trio.abc.Clock,
) -> None:
    mux = QuoteMux(stale_after=3)
    a = ScriptedBroker("a")
    async with running(mux, a):
        mux.check_fresh("a", "EUR_USD")  # not subscribed: priced by snapshot, no stream
        await mux.subscribe(Sink(), ["EUR_USD"], broker="a")
        with pytest.raises(StalePrice, match="no price of EUR_USD from a yet"):
            mux.check_fresh("a", "EUR_USD")
        await a.push(q("EUR_USD", "1.1", "1.2"))
        await trio.sleep(1)
        mux.check_fresh("a", "EUR_USD")
        assert mux.age("a", "EUR_USD") == pytest.approx(1, abs=0.01)
        await trio.sleep(3)
        with pytest.raises(StalePrice, match=r"is 4\.0 s old \(stale after 3 s"):
            mux.check_fresh("a", "EUR_USD")


def test_stale_after_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        QuoteMux(stale_after=0)


class DownBroker(ScriptedBroker):
    """A venue whose quote stream never opens."""

    @asynccontextmanager
    async def stream_quotes(
        self, instruments: Sequence[str]
    ) -> AsyncIterator[AsyncIterator[Quote]]:
        from rick_core.broker import Disconnected

        raise Disconnected("venue down")
        yield  # pragma: no cover


async def test_subscribe_says_when_the_feed_is_down(autojump_clock: trio.abc.Clock) -> None:
    mux = QuoteMux()
    async with running(mux, DownBroker("a")):
        sink = Sink()
        assert await mux.subscribe(sink, ["EUR_USD"], broker="a", confirm_within=2) is False
        assert mux.feeds["a"].holders("EUR_USD") == 1  # held: quotes come once it is back
    assert list(QuoteMux().stale()) == []  # outside trio: nothing to age
