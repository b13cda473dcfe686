"""rick-oanda: order placement overhead and pricing stream parsing, against raw costs.

1. Order placement. The fake v20 server (``python -m rick_oanda.fake``) runs in
   a process of its own on loopback. The same sequence of market orders
   (alternately buy and sell, so the fake's account stays small) is sent
   twice per round, interleaved: by ``OandaBroker.place_order`` (validation,
   precision, the v20 body, pacing, the POST, the answer read into an
   ``Order`` with its fill), and by a bare ``httpx.AsyncClient.post`` of the
   same JSON body to the same fake, reading the answer's JSON and nothing
   more. Reported: p50 / p99 per order of each, and the ratio of the p50s
   (goal: under 1.5x). Orders go in bursts of 90 with a pause between them,
   outside the timing, so the 100 requests/s pacer admits every one at once
   (its waits are deliberate, not overhead).

2. Pricing stream parsing. A recorded stream of v20 PRICE lines (with a
   HEARTBEAT line every 500) is split from 64 KiB chunks into lines and
   parsed into ``Quote`` objects by the plugin's stream code; the raw floor
   is ``json.loads`` of the same lines. Reported: prices/s of each (goal: at
   least 100,000 prices/s).

Run: ``python bench/bench_oanda.py [orders] [prices]``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import trio

from rick_core.components import ComponentSetup
from rick_core.model import OrderRequest, Quote, Side, TimeInForce
from rick_oanda.broker import OandaBroker
from rick_oanda.http import _lines

TOKEN = "bench-token"
ACCOUNT = "101-004-1234567-001"
BURST = 90


class Token:
    def get(self, name: str) -> str:
        if name != "token":
            raise KeyError(name)
        return TOKEN

    def names(self) -> list[str]:
        return ["token"]


def start_fake() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "rick_oanda.fake", "--port", "0", "--token", TOKEN],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        for word in line.split():
            if word.startswith("http://127.0.0.1:"):
                return process, word.rstrip("/")
    raise RuntimeError("the fake v20 server did not print its URL")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench_orders(url: str, orders: int) -> None:
    broker = OandaBroker(
        ComponentSetup(
            name="oanda",
            options={"account_id": ACCOUNT, "rest_url": url, "stream_url": url},
            credentials=Token(),
        )
    )
    await broker.connect()
    instrument = broker._instruments["EUR_USD"]
    from rick_oanda import wire

    bare = httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    path = f"/v3/accounts/{ACCOUNT}/orders"
    plugin_times: list[float] = []
    bare_times: list[float] = []
    try:
        # warm both paths (connections, caches)
        for i in range(20):
            side = Side.BUY if i % 2 == 0 else Side.SELL
            request = OrderRequest(
                instrument="EUR_USD", side=side, quantity=Decimal(100), time_in_force="ioc"
            )
            await broker.place_order(request)
            body = json.dumps({"order": wire.order_body(request, instrument)})
            (await bare.post(path, content=body)).json()
        sent = 0
        while sent < orders:
            await trio.sleep(1.05)  # a fresh pacing window: no order waits for a slot
            burst = min(BURST // 2, (orders - sent))
            for i in range(burst):
                side = Side.BUY if i % 2 == 0 else Side.SELL
                request = OrderRequest(
                    instrument="EUR_USD",
                    side=side,
                    quantity=Decimal(100),
                    time_in_force=TimeInForce.IOC,
                )
                started = time.perf_counter()
                await broker.place_order(request)
                plugin_times.append(time.perf_counter() - started)
                twin = OrderRequest(
                    instrument="EUR_USD",
                    side=side,
                    quantity=Decimal(100),
                    time_in_force=TimeInForce.IOC,
                )
                body = json.dumps({"order": wire.order_body(twin, instrument)})
                started = time.perf_counter()
                (await bare.post(path, content=body)).json()
                bare_times.append(time.perf_counter() - started)
            sent += burst
    finally:
        await bare.aclose()
        await broker.close()
    p50, p99 = percentile(plugin_times, 0.5), percentile(plugin_times, 0.99)
    b50, b99 = percentile(bare_times, 0.5), percentile(bare_times, 0.99)
    print(f"order placement, {len(plugin_times)} market orders against the fake (loopback)")
    print(f"  OandaBroker.place_order: p50 {p50 * 1e3:.3f} ms  p99 {p99 * 1e3:.3f} ms")
    print(f"  bare httpx POST:         p50 {b50 * 1e3:.3f} ms  p99 {b99 * 1e3:.3f} ms")
    print(
        f"  ratio p50 {p50 / b50:.2f}x  p99 {p99 / b99:.2f}x  (goal < 1.5x); plugin overhead "
        f"p50 {(p50 - b50) * 1e6:.0f} us"
    )


def recorded_stream(prices: int) -> bytes:
    instruments = ["EUR_USD", "GBP_USD", "USD_JPY", "AUD_USD", "USD_CAD"]
    lines = []
    for i in range(prices):
        symbol = instruments[i % len(instruments)]
        base = Decimal("150.000") if symbol == "USD_JPY" else Decimal("1.10000")
        step = Decimal("0.001") if symbol == "USD_JPY" else Decimal("0.00001")
        bid = base + step * (i % 97)
        ask = bid + step * 14
        stamp = (
            f"2026-11-24T10:{(i // 60000) % 60:02d}:{(i // 1000) % 60:02d}.{i % 1000:03d}123456Z"
        )
        lines.append(
            json.dumps(
                {
                    "type": "PRICE",
                    "time": stamp,
                    "bids": [{"price": str(bid), "liquidity": 1000000}],
                    "asks": [{"price": str(ask), "liquidity": 1000000}],
                    "closeoutBid": str(bid - step),
                    "closeoutAsk": str(ask + step),
                    "status": "tradeable",
                    "tradeable": True,
                    "instrument": symbol,
                },
                separators=(",", ":"),
            )
        )
        if i % 500 == 499:
            lines.append(json.dumps({"type": "HEARTBEAT", "time": stamp}))
    return ("\n".join(lines) + "\n").encode()


class Recorded:
    """What ``_lines`` reads: an httpx response's ``aiter_raw`` over recorded bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def aiter_raw(self, size: int = 65536) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), size):
            yield self.data[start : start + size]


async def bench_parsing(prices: int, rounds: int = 5) -> None:
    data = recorded_stream(prices)
    plugin_rates: list[float] = []
    raw_rates: list[float] = []
    for _ in range(rounds):
        broker = OandaBroker(ComponentSetup(name="oanda", options={"account_id": ACCOUNT}))
        started = time.perf_counter()
        quotes = 0
        lines = _lines(Recorded(data), what="bench", broker="oanda")  # type: ignore[arg-type]
        async for item in broker._quotes(lines):  # the stream_quotes iterator
            if isinstance(item, Quote):
                quotes += 1
        plugin_rates.append(quotes / (time.perf_counter() - started))
        dropped = broker.prices.dropped
        assert quotes == prices and dropped == 0, (quotes, dropped)
        started = time.perf_counter()
        count = 0
        for raw in data.split(b"\n"):
            if raw:
                json.loads(raw)
                count += 1
        raw_rates.append(prices / (time.perf_counter() - started))
    plugin = statistics.median(plugin_rates)
    raw = statistics.median(raw_rates)
    print(f"pricing stream parsing, {prices} prices (median of {rounds} rounds)")
    print(f"  chunks -> lines -> Quote: {plugin:,.0f} prices/s  (goal >= 100,000)")
    print(f"  json.loads of each line:  {raw:,.0f} lines/s  (ratio {plugin / raw:.2f}x)")


async def main(orders: int, prices: int) -> None:
    await bench_parsing(prices)
    process, url = start_fake()
    try:
        await bench_orders(url, orders)
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    trio.run(main, *(args + [1000, 200_000][len(args) :]))
