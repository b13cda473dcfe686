"""In-process quote fan-out through the multiplexer, against the raw cost.

One broker feed over 50 instruments, 100 consumers each subscribed to all 50:
every quote goes from the broker's stream through the feed supervisor and the
multiplexer into each consumer's bounded, conflating buffer (100 deliveries
per quote). The raw loop does the least any fan-out must: for each of the
same quotes, a non-blocking send into each of 100 trio memory channels.

Both are timed over the same quotes in the same run; consumers and channels
are emptied between rounds, outside the timing (they are not the feed's cost).
Reported: deliveries/s of each and the ratio (goal: at least 0.3x the raw loop).

Run: ``python bench/bench_quotes.py [quotes_per_round] [rounds]``.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import trio

from rick_core.engine.quotes import QuoteConsumer, QuoteMux
from rick_core.model import Quote

INSTRUMENTS = [f"I{i:02d}_USD" for i in range(50)]
CONSUMERS = 100


def make_quotes(count: int) -> list[Quote]:
    start = datetime(2026, 11, 24, tzinfo=UTC)
    return [
        Quote(
            instrument=INSTRUMENTS[i % len(INSTRUMENTS)],
            bid=Decimal("1.1000") + Decimal(i % 7) / 10_000,
            ask=Decimal("1.1003") + Decimal(i % 7) / 10_000,
            time=start + timedelta(microseconds=i),
            source="feed",
        )
        for i in range(count)
    ]


class ListBroker:
    """A broker whose quote stream yields one round of prepared quotes when
    told to, as fast as they are taken (the venue's cost left out)."""

    quote_silence = None

    def __init__(self) -> None:
        self.round: list[Quote] = []
        self.go = trio.Event()
        self.done = trio.Event()

    @asynccontextmanager
    async def stream_quotes(
        self, instruments: Sequence[str]
    ) -> AsyncIterator[AsyncIterator[Quote]]:
        yield self._quotes()

    async def _quotes(self) -> AsyncIterator[Quote]:
        while True:
            await self.go.wait()
            self.go = trio.Event()
            for quote in self.round:
                yield quote
            self.done.set()


async def through_mux(quotes: list[Quote], rounds: int) -> list[float]:
    mux = QuoteMux()
    broker = ListBroker()
    feed = mux.add_broker("feed", broker)  # type: ignore[arg-type]
    consumers = [QuoteConsumer(f"c{i}", capacity=len(quotes) + 1) for i in range(CONSUMERS)]
    seconds = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed.run)
        for consumer in consumers:
            await mux.subscribe(consumer, INSTRUMENTS, broker="feed")
        broker.round = quotes
        for _ in range(rounds):
            gc.collect()
            broker.done = trio.Event()
            started = time.perf_counter()
            broker.go.set()
            await broker.done.wait()
            seconds.append(time.perf_counter() - started)
            delivered = sum(len(c.take()) for c in consumers)
            assert delivered == len(quotes) * CONSUMERS, delivered
        nursery.cancel_scope.cancel()
    return seconds


async def raw_channels(quotes: list[Quote], rounds: int) -> list[float]:
    channels = [trio.open_memory_channel[Quote](len(quotes) + 1) for _ in range(CONSUMERS)]
    senders = [send for send, _ in channels]
    seconds = []
    for _ in range(rounds):
        gc.collect()
        started = time.perf_counter()
        for quote in quotes:
            for send in senders:
                send.send_nowait(quote)
        seconds.append(time.perf_counter() - started)
        for _, receive in channels:
            while True:
                try:
                    receive.receive_nowait()
                except trio.WouldBlock:
                    break
    return seconds


def main() -> None:
    per_round = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    quotes = make_quotes(per_round)
    deliveries = per_round * CONSUMERS

    async def run() -> tuple[list[float], list[float]]:
        raw = await raw_channels(quotes, rounds)
        mux = await through_mux(quotes, rounds)
        return raw, mux

    raw, mux = trio.run(run)
    raw_rate = deliveries / statistics.median(raw)
    mux_rate = deliveries / statistics.median(mux)
    print(
        f"fan-out: {per_round:,} quotes over {len(INSTRUMENTS)} instruments to "
        f"{CONSUMERS} consumers, median of {rounds} rounds"
    )
    print(f"  raw loop (send_nowait into 100 memory channels): {raw_rate:,.0f} deliveries/s")
    print(f"  multiplexer (stream -> supervisor -> mux -> buffers): {mux_rate:,.0f} deliveries/s")
    print(f"  quotes/s through the multiplexer: {mux_rate / CONSUMERS:,.0f}")
    print(f"  ratio: {mux_rate / raw_rate:.2f}x the raw loop (goal >= 0.3x)")


if __name__ == "__main__":
    main()
