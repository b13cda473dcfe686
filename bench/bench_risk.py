"""The risk charter's pre-trade check, against the raw cost of the same run.

``Charter.check`` with 10 active rules on allowed orders of varying
instruments and strategies, timed per call with ``perf_counter_ns``; compared
with 10 plain Decimal comparisons per iteration, timed the same way in the same
run (the floor of any check that compares 10 limits).

Target: p99 < 50 us per check.

Run: ``python bench/bench_risk.py [checks]``.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from rick_core.engine.risk import Charter, Limits, RiskContext, TradingHours
from rick_core.model import OrderRequest

D = Decimal
INSTRUMENTS = ("EUR_USD", "GBP_USD", "USD_JPY", "AUD_USD", "BTC_USD", "AAPL")
STRATEGIES = ("trend", "dip", "carry", "grid")


def charter() -> Charter:
    hours = TradingHours.parse(["mon-sun 00:00-24:00"], timezone="Europe/London")
    return Charter(
        Limits(
            max_order_quantity=D(100_000),
            max_order_notional=D(1_000_000),
            max_position=D(500_000),
            max_open_positions=50,
            max_orders_per_second=100_000,
            daily_loss_limit=D(10_000),
            require_stop_loss=True,
            min_reward_to_risk=D("1.5"),
            trading_hours=hours,
        ),
        instruments={"EUR_USD": Limits(max_order_quantity=D(50_000))},
    )


def requests() -> list[OrderRequest]:
    result = []
    for i, instrument in enumerate(INSTRUMENTS):
        for side in ("buy", "sell"):
            sign = 1 if side == "buy" else -1
            result.append(
                OrderRequest(
                    instrument=instrument,
                    side=side,
                    quantity=D(1000 + 100 * i),
                    stop_loss=D("1.00") - sign * D("0.01"),
                    take_profit=D("1.00") + sign * D("0.03"),
                )
            )
    return result


def percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * q))] / 1000


def bench_check(n: int) -> tuple[list[int], int]:
    risk = charter()
    pool = requests()
    start = datetime(2024, 6, 12, 12, 0, tzinfo=UTC)
    step = timedelta(milliseconds=1)
    timings = [0] * n
    clock = time.perf_counter_ns
    for i in range(n):
        ctx = RiskContext(
            request=pool[i % len(pool)],
            strategy=STRATEGIES[i % len(STRATEGIES)],
            broker="paper",
            reference_price=D("1.00"),
            position=D(0),
            open_positions=3,
            daily_pnl=D(-250),
            now=start + step * i,
        )
        t0 = clock()
        risk.check(ctx)
        timings[i] = clock() - t0
    return timings, risk.rules_active()


def bench_raw(n: int) -> list[int]:
    """10 plain Decimal comparisons per iteration, timed like one check."""
    a = [D(1000 + i) for i in range(10)]
    b = [D(50_000 + i) for i in range(10)]
    a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = a
    b0, b1, b2, b3, b4, b5, b6, b7, b8, b9 = b
    timings = [0] * n
    clock = time.perf_counter_ns
    sink = 0
    for i in range(n):
        t0 = clock()
        sink += (
            (a0 > b0)
            + (a1 > b1)
            + (a2 > b2)
            + (a3 > b3)
            + (a4 > b4)
            + (a5 > b5)
            + (a6 > b6)
            + (a7 > b7)
            + (a8 > b8)
            + (a9 > b9)
        )
        timings[i] = clock() - t0
    assert sink == 0
    return timings


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    gc.collect()
    check, rules = bench_check(n)
    raw = bench_raw(n)
    check.sort()
    raw.sort()
    c50, c99 = percentile(check, 0.5), percentile(check, 0.99)
    r50, r99 = percentile(raw, 0.5), percentile(raw, 0.99)
    c_mean, r_mean = statistics.fmean(check) / 1000, statistics.fmean(raw) / 1000
    print(f"Risk charter check ({n:,} allowed orders, {rules} active rules)")
    print(f"  Charter.check          p50 {c50:7.2f} us   p99 {c99:7.2f} us   mean {c_mean:6.2f} us")
    print(f"  raw: 10 Decimal cmps   p50 {r50:7.2f} us   p99 {r99:7.2f} us   mean {r_mean:6.2f} us")
    print(
        f"  ratio                  p50 {c50 / r50:7.1f}x    p99 {c99 / r99:7.1f}x    "
        f"mean {c_mean / r_mean:6.1f}x"
    )
    print(f"  goal p99 < 50 us: {'met' if c99 < 50 else 'MISSED'}")


if __name__ == "__main__":
    main()
