"""Pacing requests and new connections under OANDA's documented rates.

OANDA recommends at most 100 REST requests per second on a connection (its
hard limit is 120 per second per IP address, answered 429 above that) and
allows 2 new connections per second. rick stays under both instead of
learning them from errors: :class:`Pacer` admits at most ``rate``
events in any window of one second (a sliding window, so a burst of 100 goes
at once and the 101st waits for the first to be a second old), and
:class:`PacedBackend` puts every new TCP connection httpx opens through one.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import httpcore
import trio

__all__ = ["PacedBackend", "Pacer"]


class Pacer:
    """At most ``rate`` events in any window of ``window`` seconds.

    ``rate`` below 1 means one event per ``window / rate`` seconds; a fractional
    rate above 1 is rounded down. ``clock`` is read to judge the window (a
    test may pass its own); waits always sleep on trio's clock. Each caller
    reserves its slot before it sleeps, so concurrent callers are admitted in
    the order they asked, and the reservations never exceed the rate.
    """

    def __init__(
        self,
        rate: float,
        *,
        window: float = 1.0,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        # A fractional rate is rounded down (99.5 admits 99 a window), never
        # turned into a shorter window, which would let two bursts into one.
        self.count = max(1, math.floor(rate))
        self.window = window if rate >= 1 else window / rate
        self._clock = clock
        self._times: deque[float] = deque()
        self.waited = 0
        """How many callers had to wait for a slot."""

    async def wait(self) -> None:
        """Return when the caller may go; never early, never out of turn."""
        now = self._clock()
        times = self._times
        if len(times) < self.count:
            times.append(now)
            await trio.lowlevel.checkpoint()
            return
        slot = max(now, times.popleft() + self.window)
        times.append(slot)
        if slot > now:
            self.waited += 1
            await trio.sleep_until(slot)
        else:
            await trio.lowlevel.checkpoint()


class PacedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio network backend, with each new TCP connection paced."""

    def __init__(self, pacer: Pacer, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.pacer = pacer
        self._inner = inner if inner is not None else httpcore.TrioBackend()
        self.connections = 0
        """New connections opened through this backend."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        await self.pacer.wait()
        self.connections += 1
        return await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        await self.pacer.wait()
        self.connections += 1
        return await self._inner.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
