"""The WebSocket proxy under load: many loopback clients, a steady quote feed.

A server process runs the quote multiplexer and the proxy over a synthetic
broker that emits ``rate`` quotes per second, round robin over a universe of
instruments, each stamped with the wall-clock time it was made. Client
processes open ``clients`` real WebSocket connections (trio-websocket),
authenticate with an API key, and subscribe to ``per_client`` instruments
each. Every quote received is timed: its age is the receive time minus its
stamp, so it includes the multiplexer, the proxy's buffering and encoding,
loopback TCP, and the client's own WebSocket parsing.

Reported: messages/s delivered, p50 / p99 / max age of a quote at the client,
skipped (conflated) quotes, and the server's peak memory (max RSS) and its
RSS before any client connected. Goals (issue #6): p99 age under 20 ms and
memory under 150 MB, for 200 clients of 10 instruments and 5,000 quotes/s.

Two universes are run: ``wide`` (500 instruments: each quote goes to about 4
clients, 20,000 messages/s) and ``dense`` (100 instruments: about 20 clients
per quote, 100,000 messages/s asked for, more than one Python process can
write; conflation then keeps ages bounded by skipping clients forward).

Run: ``python bench/bench_proxy.py [seconds]``. Roles (internal):
``--server RATE UNIVERSE`` and ``--clients URL KEY FIRST COUNT PER SECONDS UNIVERSE``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

CLIENTS = 200
PER_CLIENT = 10
RATE = 5_000
CLIENT_PROCESSES = 2


def universe(size: int) -> list[str]:
    return [f"X{i:03d}_USD" for i in range(size)]


# ---------------------------------------------------------------------------
# server


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def server(rate: int, size: int) -> None:
    import trio

    from rick_core.config import ProxyConfig
    from rick_core.engine.events import EventHub
    from rick_core.engine.quotes import QuoteMux
    from rick_core.model import Quote
    from rick_core.security.apikeys import ApiKeys

    class SyntheticFeed:
        """Quotes at ``rate``/s, round robin over what is subscribed, stamped now."""

        quote_silence = None

        @asynccontextmanager
        async def stream_quotes(
            self, instruments: Sequence[str]
        ) -> AsyncIterator[AsyncIterator[Quote]]:
            yield self._quotes(list(instruments))

        async def _quotes(self, instruments: list[str]) -> AsyncIterator[Quote]:
            tick = 0.002  # a batch every 2 ms
            per_tick = max(1, round(rate * tick))
            bid = Decimal("1.10000")
            step = Decimal("0.00001")
            n = 0
            next_at = trio.current_time()
            while True:
                next_at += tick
                await trio.sleep_until(next_at)
                now = datetime.now(UTC)
                for _ in range(per_tick):
                    instrument = instruments[n % len(instruments)]
                    price = bid + step * (n % 50)
                    n += 1
                    yield Quote(
                        instrument=instrument, bid=price, ask=price + step, time=now, source="feed"
                    )

    home = Path(tempfile.mkdtemp(prefix="rick-bench-proxy-"))
    keys = ApiKeys(home / "apikeys.db", os.urandom(32))
    key = keys.create("bench", "read")
    mux = QuoteMux()
    feed = mux.add_broker("feed", SyntheticFeed())  # type: ignore[arg-type]
    feed.instruments = frozenset(universe(size))

    async def main() -> None:
        from rick_core.api.ws import QuoteProxy

        proxy = QuoteProxy(
            mux,
            EventHub(),
            ProxyConfig(host="127.0.0.1", port=0, max_connections_per_key=10_000),
            keys=keys,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed.run)
            port = await nursery.start(proxy.serve)
            print(json.dumps({"port": port, "key": key, "rss_mb": rss_mb()}), flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)  # until the parent closes stdin
            stats = proxy.stats()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(json.dumps({"peak_mb": peak, "stats": stats}, default=str), flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


# ---------------------------------------------------------------------------
# clients


def clients(
    url: str, key: str, first: int, count: int, per: int, seconds: float, size: int
) -> None:
    import trio
    from trio_websocket import open_websocket_url

    names = universe(size)
    ages: list[float] = []
    received = 0
    skipped = 0
    connected = 0
    stop_at = float("inf")

    async def client(index: int, ready: trio.Event, go: trio.Event) -> None:
        nonlocal received, skipped, connected
        start = (index * per) % len(names)
        wanted = [names[(start + k) % len(names)] for k in range(per)]
        async with open_websocket_url(url) as ws:
            await ws.send_message(json.dumps({"action": "auth", "key": key}))
            reply = json.loads(await ws.get_message())
            assert reply.get("ok"), reply
            await ws.send_message(
                json.dumps({"action": "subscribe", "instruments": wanted, "broker": "feed"})
            )
            while json.loads(await ws.get_message()).get("type") != "subscribed":
                pass
            connected += 1
            if connected == count:
                ready.set()
            # Read all along (a client that stops reading is another test);
            # measure from the go to the end.
            while True:
                message = await ws.get_message()
                if not go.is_set():
                    continue
                now = time.time()
                if now >= stop_at:
                    return
                # The stamp without a full JSON parse: the client's cost is not the proxy's.
                at = message.find('"time":"')
                if at < 0:
                    continue
                stamp = message[at + 8 : message.index('"', at + 8)]
                ages.append(now - datetime.fromisoformat(stamp).timestamp())
                received += 1
                if '"skipped"' in message:
                    skipped += json.loads(message).get("skipped", 0)

    async def main() -> None:
        ready, go = trio.Event(), trio.Event()
        async with trio.open_nursery() as nursery:
            for i in range(first, first + count):
                nursery.start_soon(client, i, ready, go)
            await ready.wait()
            print("connected", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            nonlocal stop_at
            stop_at = time.time() + seconds
            go.set()

    trio.run(main)
    print(json.dumps({"received": received, "skipped": skipped, "ages": ages}), flush=True)


# ---------------------------------------------------------------------------
# the run


def run(seconds: float, size: int) -> dict[str, float]:
    here = Path(__file__).resolve()
    srv = subprocess.Popen(
        [sys.executable, str(here), "--server", str(RATE), str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert srv.stdout is not None and srv.stdin is not None
    hello = json.loads(srv.stdout.readline())
    url = f"ws://127.0.0.1:{hello['port']}"
    per_process = CLIENTS // CLIENT_PROCESSES
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(here),
                "--clients",
                url,
                hello["key"],
                str(i * per_process),
                str(per_process),
                str(PER_CLIENT),
                str(seconds),
                str(size),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(CLIENT_PROCESSES)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "connected"
    time.sleep(0.5)
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        results.append(json.loads(out.strip().splitlines()[-1]))
    srv.stdin.close()
    final = json.loads(srv.stdout.readline())
    srv.wait(timeout=30)
    ages = sorted(a for r in results for a in r["ages"])
    received = sum(r["received"] for r in results)
    return {
        "messages_per_s": received / seconds,
        "p50_ms": statistics.median(ages) * 1000,
        "p99_ms": ages[int(len(ages) * 0.99)] * 1000,
        "max_ms": ages[-1] * 1000,
        "skipped": sum(r["skipped"] for r in results),
        "rss_start_mb": hello["rss_mb"],
        "peak_mb": final["peak_mb"],
        "server": final["stats"],
    }


def quiet_logs() -> None:
    """Warnings and worse to stderr: stdout carries the results."""
    import logging

    import structlog

    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )


def main() -> None:
    quiet_logs()
    if sys.argv[1:2] == ["--server"]:
        server(int(sys.argv[2]), int(sys.argv[3]))
        return
    if sys.argv[1:2] == ["--clients"]:
        url, key, first, count, per, seconds, size = sys.argv[2:9]
        clients(url, key, int(first), int(count), int(per), float(seconds), int(size))
        return
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    print(
        f"proxy: {CLIENTS} loopback WebSocket clients x {PER_CLIENT} instruments, "
        f"{RATE:,} quotes/s in, {seconds:g} s, clients in {CLIENT_PROCESSES} processes"
    )
    for label, size in (("wide", 500), ("dense", 100)):
        r = run(seconds, size)
        fan = CLIENTS * PER_CLIENT / size
        print(
            f"  {label} ({size} instruments, ~{fan:.0f} clients per quote, "
            f"{RATE * fan:,.0f} messages/s asked): {r['messages_per_s']:,.0f} messages/s "
            f"delivered, age p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms "
            f"max {r['max_ms']:.1f} ms, {r['skipped']:,} skipped; server memory "
            f"{r['rss_start_mb']:.0f} MB at start, peak {r['peak_mb']:.0f} MB "
            f"(goals: p99 < 20 ms, < 150 MB)"
        )
        if "-v" in sys.argv:
            print(f"    server: {r['server']}")


if __name__ == "__main__":
    main()
