"""Pacer and PacedBackend: OANDA's request and connection rates, kept from our side."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any

import httpcore
import pytest
import trio
import trio.testing

from rick_oanda.pacing import PacedBackend, Pacer

EPSILON = 1e-9


def most_in_any_window(times: list[float], window: float) -> int:
    """The largest number of ``times`` inside any half-open window [t, t + window).

    The busiest window can always be slid to start at an admission, so the
    windows starting at each admission are every window that matters."""
    ordered = sorted(times)
    return max(
        bisect.bisect_left(ordered, start + window - EPSILON) - index
        for index, start in enumerate(ordered)
    )


async def test_a_burst_of_rate_goes_at_once(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(100)
    start = trio.current_time()
    for _ in range(100):
        await pacer.wait()
    assert trio.current_time() == start
    assert pacer.waited == 0


async def test_the_next_waits_until_the_first_is_a_window_old(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(3)
    start = trio.current_time()
    await pacer.wait()  # t = 0
    await trio.sleep(0.4)
    await pacer.wait()  # t = 0.4
    await pacer.wait()  # t = 0.4: three in the window, the rate
    await trio.sleep_until(start + 0.6)
    await pacer.wait()  # a sliding window: waits for the first to be 1 s old, not for t = 0.4 + 1
    assert trio.current_time() - start == pytest.approx(1.0)
    await pacer.wait()  # the second admission (t = 0.4) must be a second old
    assert trio.current_time() - start == pytest.approx(1.4)
    assert pacer.waited == 2


async def test_a_caller_after_a_quiet_window_does_not_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(2)
    await pacer.wait()
    await pacer.wait()
    await trio.sleep(5)
    before = trio.current_time()
    await pacer.wait()
    assert trio.current_time() == before
    assert pacer.waited == 0


async def test_never_more_than_rate_in_any_window(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(100)
    start = trio.current_time()
    called: list[int] = []
    admitted: dict[int, float] = {}

    async def caller(number: int) -> None:
        called.append(number)  # the same step as the reservation inside wait()
        await pacer.wait()
        admitted[number] = trio.current_time() - start

    async with trio.open_nursery() as nursery:
        for number in range(350):
            nursery.start_soon(caller, number)

    times = list(admitted.values())
    assert len(times) == 350
    assert most_in_any_window(times, 1.0) == 100  # the whole rate is used, never more
    assert sum(1 for t in times if t < 1.0) == 100  # the first burst goes at once
    assert min(times) == 0
    assert max(times) == pytest.approx(3.0)  # 350 = 100 + 100 + 100 + 50: no dawdling
    assert pacer.waited == 250
    # Admitted in the order asked: nobody goes before a caller who asked earlier.
    in_call_order = [admitted[number] for number in called]
    assert in_call_order == sorted(in_call_order)


async def test_concurrent_callers_are_admitted_in_the_order_they_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(1)
    start = trio.current_time()
    called: list[int] = []
    admitted: list[tuple[int, float]] = []

    async def caller(number: int) -> None:
        called.append(number)
        await pacer.wait()
        admitted.append((number, trio.current_time() - start))

    async with trio.open_nursery() as nursery:
        for number in range(6):
            nursery.start_soon(caller, number)

    assert [number for number, _ in admitted] == called
    assert [t for _, t in admitted] == pytest.approx([0, 1, 2, 3, 4, 5])
    assert pacer.waited == 5


@pytest.mark.parametrize(("rate", "window", "spacing"), [(0.5, 1.0, 2.0), (0.25, 2.0, 8.0)])
async def test_a_rate_below_one_spaces_events_by_window_over_rate(
    autojump_clock: trio.testing.MockClock, rate: float, window: float, spacing: float
) -> None:
    pacer = Pacer(rate, window=window)
    start = trio.current_time()
    times = []
    for _ in range(4):
        await pacer.wait()
        times.append(trio.current_time() - start)
    assert times == pytest.approx([0, spacing, 2 * spacing, 3 * spacing])
    assert pacer.waited == 3


async def test_a_custom_window(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(2, window=0.5)
    start = trio.current_time()
    times = []
    for _ in range(5):
        await pacer.wait()
        times.append(trio.current_time() - start)
    assert times == pytest.approx([0, 0, 0.5, 0.5, 1.0])


async def test_a_fractional_rate_never_exceeds_the_rate_in_any_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(99.5)
    times: list[float] = []

    async def caller() -> None:
        await pacer.wait()
        times.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for _ in range(250):
            nursery.start_soon(caller)

    assert most_in_any_window(times, 1.0) <= 99.5


@pytest.mark.parametrize("rate", [0, -1, math.nan, math.inf, -math.inf])
def test_a_bad_rate_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be a positive number"):
        Pacer(rate)


# ---------------------------------------------------------------------------
# PacedBackend: real loopback connections (no autojump clock with real sockets)


async def greeter(stream: trio.SocketStream) -> None:
    async with stream:
        await stream.send_all(b"hi")


async def loopback_listener(nursery: trio.Nursery) -> int:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, greeter, listeners)
    port: int = listeners[0].socket.getsockname()[1]
    return port


def frozen_clock() -> Callable[[], float]:
    """A clock for the pacer that stands still at the test's start: however slow the
    machine, the pacer sees every connection as made at the same instant."""
    now = trio.current_time()
    return lambda: now


async def test_paced_backend_counts_connections_and_the_third_within_a_window_waits() -> None:
    clock = frozen_clock()
    pacer = Pacer(2, window=0.2, clock=clock)
    backend = PacedBackend(pacer)
    greetings: list[bytes] = []
    admitted: list[float] = []
    async with trio.open_nursery() as nursery:
        port = await loopback_listener(nursery)
        for _ in range(3):
            stream = await backend.connect_tcp("127.0.0.1", port, timeout=5)
            admitted.append(trio.current_time())
            greetings.append(await stream.read(2, timeout=5))
            await stream.aclose()
            if len(admitted) == 2:
                assert pacer.waited == 0  # two connections in a window are allowed
        nursery.cancel_scope.cancel()
    assert backend.connections == 3
    assert greetings == [b"hi", b"hi", b"hi"]  # real connections, through the inner backend
    assert pacer.waited == 1
    assert admitted[2] >= clock() + 0.2  # never early: the first was a window old


async def test_paced_backend_paces_concurrent_connections() -> None:
    clock = frozen_clock()
    pacer = Pacer(2, window=0.2, clock=clock)
    backend = PacedBackend(pacer)
    opened: list[float] = []

    async def connect(port: int) -> None:
        stream = await backend.connect_tcp("127.0.0.1", port, timeout=5)
        opened.append(trio.current_time())
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        port = await loopback_listener(nursery)
        async with trio.open_nursery() as clients:
            for _ in range(4):
                clients.start_soon(connect, port)
        nursery.cancel_scope.cancel()
    assert backend.connections == 4
    assert pacer.waited == 2
    assert sorted(opened)[2] >= clock() + 0.2


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """An inner backend that records what it was asked, and when (on trio's clock)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        self.calls.append(
            ("tcp", host, port, timeout, local_address, socket_options, trio.current_time())
        )
        return httpcore.AsyncMockStream([])

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        self.calls.append(("unix", path, timeout, socket_options, trio.current_time()))
        return httpcore.AsyncMockStream([])


async def test_paced_backend_waits_for_the_pacer_then_forwards_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(1)
    inner = RecordingBackend()
    backend = PacedBackend(pacer, inner)
    start = trio.current_time()
    options = [(6, 1, 1)]
    await backend.connect_tcp("api.example", 443, timeout=3.0, local_address="10.0.0.1")
    await backend.connect_tcp("api.example", 443, socket_options=options)
    await backend.connect_unix_socket("/tmp/v20.sock", timeout=2.0)
    assert backend.connections == 3
    assert pacer.waited == 2
    # Each inner connect happens only once the pacer admits it (1 per second here),
    # unix sockets included, with the caller's arguments passed on.
    assert inner.calls == [
        ("tcp", "api.example", 443, 3.0, "10.0.0.1", None, start),
        ("tcp", "api.example", 443, None, None, options, pytest.approx(start + 1)),
        ("unix", "/tmp/v20.sock", 2.0, None, pytest.approx(start + 2)),
    ]
