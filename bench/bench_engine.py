"""The engine's two hot paths, each against the raw cost of the same work in the same run.

1. Order round trip: a strategy calls ``ctx.buy``/``ctx.sell`` -> the order
   manager writes the order to the store (committed) -> the paper broker fills
   it -> the fill is stored -> the strategy's ``on_fill`` runs, which sends the
   next order. One order in flight at a time, so latency and throughput are
   those of the whole path. Compared with the raw rate of single-row committed
   INSERTs in WAL mode on the same disk.
   Targets: >= 5,000 round trips/s, p99 < 1 ms, >= 0.2x the raw commit rate.

2. Paper market: quotes/s from the simulated market through the paper broker,
   the engine's quote fan-out and a strategy's inbox to its ``on_quote``.
   Compared with the raw rate of generating the same quotes.
   Target: >= 100,000 quotes/s.

Run: ``python bench/bench_engine.py [round trips] [seconds of quotes]``.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from rick_core.components import ComponentSetup
from rick_core.engine.risk import parse_risk
from rick_core.engine.runtime import Engine
from rick_core.logs import configure_logging
from rick_core.model import Fill, Order, Quote, utc_now
from rick_core.paper.broker import PaperBroker
from rick_core.paper.market import DEFAULT_UNIVERSE, SimulatedMarket
from rick_core.security.audit import AUDIT_GATHER, AuditLog, AuditTrail
from rick_core.store import Store
from rick_core.strategy import Strategy, StrategySetup


def raw_commit_rate(folder: Path, n: int) -> float:
    """Single-row INSERT + COMMIT per row, WAL and synchronous=NORMAL like the store."""
    conn = sqlite3.connect(folder / "raw.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, a TEXT, b TEXT, c TEXT)")
    conn.commit()
    start = time.perf_counter()
    for i in range(n):
        conn.execute("INSERT INTO t VALUES (?, ?, ?, ?)", (f"rk{i:026d}", "EUR_USD", "1000", "x"))
        conn.commit()
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


class PingPong(Strategy):
    """Sends the next order from the fill of the previous one; records latencies."""

    def __init__(self, setup: StrategySetup, total: int) -> None:
        super().__init__(setup)
        self.total = total
        self.sent = 0
        self.latencies: list[float] = []
        self.done = trio.Event()
        self._t0 = 0.0
        self.started_at = 0.0
        self.ended_at = 0.0

    async def _send(self) -> None:
        self.sent += 1
        self._t0 = time.perf_counter()
        if self.sent % 2:
            await self.ctx.buy("EUR_USD", 1000)
        else:
            await self.ctx.sell("EUR_USD", 1000)

    async def on_start(self) -> None:
        self.started_at = time.perf_counter()
        await self._send()

    async def on_order(self, order: Order) -> None:
        if order.status.is_final and order.filled_quantity == 0:
            raise RuntimeError(
                f"bench order not filled: {order.status.value} {order.reject_reason}"
            )

    async def on_fill(self, fill: Fill) -> None:
        self.latencies.append(time.perf_counter() - self._t0)
        if self.sent < self.total:
            await self._send()
        else:
            self.ended_at = time.perf_counter()
            self.done.set()


class Counter(Strategy):
    def __init__(self, setup: StrategySetup) -> None:
        super().__init__(setup)
        self.quotes = 0

    async def on_quote(self, quote: Quote) -> None:
        self.quotes += 1


def paper(home: Path, **options: Any) -> PaperBroker:
    options.setdefault("persist", False)
    options.setdefault("instruments", ["EUR_USD"])
    return PaperBroker(ComponentSetup(name="paper", options=options, home=home))


RISK = {  # ten active rules, none of which the ping-pong orders break
    "max_order_quantity": 10_000,
    "max_order_notional": 100_000,
    "max_position": 50_000,
    "max_open_positions": 10,
    "max_orders_per_second": 100_000,
    "daily_loss_limit": 50_000,
    "min_reward_to_risk": 1,
    "instruments": {"EUR_USD": {"max_order_quantity": 5_000, "max_position": 20_000}},
    "strategies": {"bench": {"max_order_notional": 50_000}},
}


async def round_trips(folder: Path, n: int, audited: bool = False, risk: bool = False) -> PingPong:
    strategy = PingPong(StrategySetup(name="bench", broker="paper", instruments=()), n)
    name = ("audited" if audited else "rick") + ("-risk" if risk else "")
    audit_log = AuditLog.open(folder / f"{name}-audit.db") if audited else None
    trail = (
        AuditTrail(audit_log, inline_batch=0, gather=AUDIT_GATHER)
        if audit_log is not None
        else None
    )
    with Store.open(folder / f"{name}.db") as store:
        # 20 quotes/s: enough touch size for every order (each quote's size can be
        # taken once), few enough that quotes cost the order path nothing.
        engine = Engine(
            store=store,
            brokers={"paper": paper(folder, interval=0.05)},
            strategies=[(strategy, "paper", ())],
            audit=trail,
            risk=parse_risk(RISK, "bench") if risk else None,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run)
            await strategy.done.wait()
            engine.request_stop("bench done")
    if audit_log is not None:
        audit_log.close()
    return strategy


def summary(strategy: PingPong) -> tuple[float, float, float]:
    """Round trips per second, p50 and p99 latency in microseconds."""
    lat = sorted(strategy.latencies)
    rate = len(lat) / (strategy.ended_at - strategy.started_at)
    return rate, statistics.median(lat) * 1e6, lat[int(len(lat) * 0.99) - 1] * 1e6


async def quote_flow(folder: Path, seconds: float) -> tuple[int, float]:
    strategy = Counter(StrategySetup(name="bench", broker="paper", instruments=("EUR_USD",)))
    with Store.open(folder / "quotes.db") as store:
        engine = Engine(
            store=store,
            brokers={"paper": paper(folder, speed=0)},
            strategies=[(strategy, "paper", ("EUR_USD",))],
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run)
            await engine.started.wait()
            start, before = time.perf_counter(), strategy.quotes
            await trio.sleep(seconds)
            count, elapsed = strategy.quotes - before, time.perf_counter() - start
            engine.request_stop("bench done")
    return count, elapsed


def raw_quote_rate(n: int) -> float:
    spec = next(s for s in DEFAULT_UNIVERSE if s.instrument.symbol == "EUR_USD")
    market = SimulatedMarket([spec], seed=1, interval=0.5, start=utc_now(), source="paper")
    start = time.perf_counter()
    for _ in range(n):
        market.next_quote()
    return n / (time.perf_counter() - start)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp, open(os.devnull, "w") as null:
        folder = Path(tmp)
        # As `rick run` logs: info and up, to the JSONL file (the console is not timed).
        configure_logging(home=folder, level="info", stream=null)
        raw = raw_commit_rate(folder, n)
        strategy = trio.run(round_trips, folder, n)
        for leftover in folder.glob("raw.db*"):
            leftover.unlink()
        # Measured before and after; the better rate makes the ratio the harder one.
        raw = max(raw, raw_commit_rate(folder, n))
        rate, p50, p99 = summary(strategy)
        a_rate, a_p50, a_p99 = summary(trio.run(round_trips, folder, n, True))
        r_rate, r_p50, r_p99 = summary(trio.run(round_trips, folder, n, True, True))
        print(f"Order round trip ({n:,} orders, one in flight, store in {folder.parent})")
        print(f"  round trips       {rate:10,.0f}/s   p50 {p50:6.0f} us   p99 {p99:6.0f} us")
        print(f"  raw WAL commits   {raw:10,.0f}/s   (single-row INSERT + COMMIT)")
        print(f"  ratio             {rate / raw:10.2f}x  (goal >= 0.2x; >= 5,000/s; p99 < 1 ms)")
        print(
            f"  with audit trail  {a_rate:10,.0f}/s   p50 {a_p50:6.0f} us   p99 {a_p99:6.0f} us"
            "   (ORDER_SUBMITTED + ORDER_FILLED per order, fsynced)"
        )
        print(
            f"  + risk charter    {r_rate:10,.0f}/s   p50 {r_p50:6.0f} us   p99 {r_p99:6.0f} us"
            "   (10 rules; goal >= 3,000/s, p99 < 2 ms)"
        )
        count, elapsed = trio.run(quote_flow, folder, seconds)
        flow = count / elapsed
        gen = raw_quote_rate(200_000)
        print(f"Paper market to one strategy ({seconds:g} s)")
        print(f"  quotes to on_quote {flow:10,.0f}/s   (goal >= 100,000/s)")
        print(f"  quote generation   {gen:10,.0f}/s   (raw: SimulatedMarket.next_quote)")
        print(f"  ratio              {flow / gen:10.2f}x")


if __name__ == "__main__":
    main()
