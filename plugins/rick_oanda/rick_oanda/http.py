"""The v20 HTTP layer: one pooled keep-alive httpx client per host, paced,
with v20 error bodies mapped onto rick's broker errors.

Every REST call goes through :meth:`V20Http.request`: it waits for the
request pacer, sends, retries a 429 with jittered backoff (a 429 was not
processed, so even an order may be sent again), and returns the decoded JSON
body of a 2xx answer. Anything else raises a
:class:`~rick_core.broker.BrokerError`:

=============================  ==============================================
401, 403                       ``AuthenticationFailed`` (the token, or its
                               access to this account)
404                            ``NotFound``
429 (after the retries)        ``RateLimited``
400 and other 4xx              :func:`venue_error` (an order's reject reason
                               becomes ``OrderRejected`` at the order call)
5xx, a timeout, a dropped or   ``TemporarilyUnavailable`` (``Disconnected``
refused connection             for a connection lost mid-answer)
=============================  ==============================================

The venue's ``errorMessage`` and ``errorCode`` are kept; the token never
appears in an error, a log line or a repr.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import httpcore
import httpx
import structlog
import trio

from rick_core.broker import (
    AuthenticationFailed,
    BrokerError,
    Disconnected,
    NotFound,
    RateLimited,
    TemporarilyUnavailable,
)
from rick_core.feeds import Backoff
from rick_oanda.pacing import PacedBackend, Pacer

__all__ = ["RATE_LIMIT_BACKOFF", "V20Error", "V20Http", "venue_error"]

log = structlog.get_logger("rick.oanda")

RATE_LIMIT_BACKOFF: Final = Backoff(initial=0.25, maximum=8.0, factor=2.0, jitter=0.2)
"""Waits between the retries of a request answered 429 (unless it says how long)."""


class V20Error(BrokerError):
    """A v20 error answer that fits no narrower kind (a 400 outside an order
    call, a 405). ``status`` is the HTTP status, ``code`` the v20
    ``errorCode`` (or a reject transaction's ``rejectReason``), ``body`` the
    decoded answer."""

    def __init__(
        self,
        message: str,
        *,
        broker: str = "",
        status: int = 0,
        code: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, broker=broker)
        self.status = status
        self.code = code
        self.body: Mapping[str, Any] = body or {}


def _message(body: Mapping[str, Any], status: int) -> str:
    text = body.get("errorMessage")
    if isinstance(text, str) and text.strip():
        return text.strip()
    return f"HTTP {status}"


def _code(body: Mapping[str, Any]) -> str | None:
    for value in body.values():  # a reject transaction says why
        if isinstance(value, Mapping) and isinstance(value.get("rejectReason"), str):
            return str(value["rejectReason"])
    code = body.get("errorCode")
    return str(code) if isinstance(code, str | int) and code != "" else None


def venue_error(status: int, body: Mapping[str, Any], *, broker: str, what: str) -> BrokerError:
    """The broker error for a v20 answer with HTTP ``status`` and decoded ``body``."""
    message = _message(body, status)
    code = _code(body)
    detail = f"{what}: {message}" + (f" ({code})" if code and code not in message else "")
    if status in (401, 403):
        return AuthenticationFailed(
            f"{detail}: check the token (rick creds set {broker} token) and that it may "
            "use this account",
            broker=broker,
        )
    if status == 404:
        error: BrokerError = NotFound(detail, broker=broker)
        error.code = code  # type: ignore[attr-defined]
        return error
    if status == 429:
        return RateLimited(detail, broker=broker)
    if status >= 500:
        return TemporarilyUnavailable(detail, broker=broker)
    return V20Error(detail, broker=broker, status=status, code=code, body=body)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 60 else None


def _transport(backend: PacedBackend, *, connections: int) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose pool opens its connections through ``backend``.

    httpx does not take a network backend, so the pool it built is replaced
    by an equal one that does (TLS from httpx's own default context)."""
    transport = httpx.AsyncHTTPTransport(retries=0)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=connections,
        max_keepalive_connections=connections,
        keepalive_expiry=60.0,
        http1=True,
        http2=False,
        network_backend=backend,
    )
    return transport


class V20Http:
    """The v20 REST and streaming clients of one broker.

    ``open(token)`` builds both clients (the token goes into their default
    headers, and nowhere else); ``aclose()`` closes them. Not thread-safe; one
    trio run.
    """

    def __init__(
        self,
        *,
        broker: str,
        rest_url: str,
        stream_url: str,
        timeout: float,
        requests_per_second: float,
        connections_per_second: float,
        rate_limit_retries: int,
        rng: random.Random | None = None,
    ) -> None:
        self.broker = broker
        self.rest_url = rest_url
        self.stream_url = stream_url
        self.timeout = timeout
        self.rate_limit_retries = rate_limit_retries
        self.requests = Pacer(requests_per_second)
        self.backend = PacedBackend(Pacer(connections_per_second))
        self._rng = rng or random.Random()
        self._rest: httpx.AsyncClient | None = None
        self._stream: httpx.AsyncClient | None = None
        self.sent = 0
        """REST requests sent (retries included)."""
        self.rate_limited = 0
        """429 answers received."""

    def __repr__(self) -> str:
        return f"V20Http(broker={self.broker!r}, rest_url={self.rest_url!r})"

    @property
    def is_open(self) -> bool:
        return self._rest is not None

    def open(self, token: str) -> None:
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept-Datetime-Format": "RFC3339",
            "Content-Type": "application/json",
            "User-Agent": "rick-oanda",
        }
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))
        self._rest = httpx.AsyncClient(
            base_url=self.rest_url,
            headers=headers,
            timeout=timeout,
            transport=_transport(self.backend, connections=4),
        )
        # Streams stay open for hours: no read timeout (the engine's silence
        # watchdog judges them); one connection per open stream.
        self._stream = httpx.AsyncClient(
            base_url=self.stream_url,
            headers=headers,
            timeout=httpx.Timeout(None, connect=min(self.timeout, 10.0)),
            transport=_transport(self.backend, connections=8),
        )

    async def aclose(self) -> None:
        clients = [c for c in (self._rest, self._stream) if c is not None]
        self._rest = self._stream = None
        for client in clients:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await client.aclose()

    def _client(self, streaming: bool = False) -> httpx.AsyncClient:
        client = self._stream if streaming else self._rest
        if client is None:
            raise Disconnected("not connected: call connect() first", broker=self.broker)
        return client

    async def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Send one REST request and return (status, body) of a 2xx answer;
        any other answer raises (:func:`venue_error`). Order calls use
        :meth:`send`, to read the reject transactions of 400 and 404 answers."""
        status, data = await self.send(method, path, what=what, params=params, body=body)
        if status >= 300:
            raise venue_error(status, data, broker=self.broker, what=what)
        return status, data

    async def send(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Send one REST request; return (status, decoded body) of any answer
        but 401, 403, 429 and 5xx, which raise. Retries 429 with backoff."""
        client = self._client()
        content = None if body is None else json.dumps(body, separators=(",", ":"))
        attempt = 0
        while True:
            await self.requests.wait()
            self.sent += 1
            try:
                response = await client.request(method, path, params=params, content=content)
            except httpx.TimeoutException:
                raise TemporarilyUnavailable(
                    f"{what}: no answer within {self.timeout:g} s", broker=self.broker
                ) from None
            except httpx.RemoteProtocolError as exc:
                raise Disconnected(
                    f"{what}: the connection was lost before the answer ({type(exc).__name__})",
                    broker=self.broker,
                ) from None
            except httpx.TransportError as exc:
                raise TemporarilyUnavailable(
                    f"{what}: cannot reach {self.rest_url} ({type(exc).__name__}: {exc})",
                    broker=self.broker,
                ) from None
            status = response.status_code
            data = _decode(response)
            if status == 429:
                self.rate_limited += 1
                if attempt < self.rate_limit_retries:
                    attempt += 1
                    delay = _retry_after(response)
                    if delay is None:  # Backoff counts failures from 1: 0.25 s first
                        delay = RATE_LIMIT_BACKOFF.delay(attempt, self._rng)
                    log.warning(
                        "rate limited by the venue; retrying",
                        broker=self.broker,
                        what=what,
                        attempt=attempt,
                        delay=round(delay, 3),
                    )
                    await trio.sleep(delay)
                    continue
                raise RateLimited(
                    f"{what}: still rate limited after {attempt} retries",
                    broker=self.broker,
                    retry_after=_retry_after(response),
                )
            if status in (401, 403) or status >= 500:
                raise venue_error(status, data or {}, broker=self.broker, what=what)
            if data is None:
                raise TemporarilyUnavailable(
                    f"{what}: HTTP {status} with a body that is not v20 JSON", broker=self.broker
                )
            return status, data

    @asynccontextmanager
    async def stream(
        self, path: str, *, what: str, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open a v20 stream; yield an iterator of its lines (bytes, no newline).

        The iterator raises :class:`Disconnected` when the connection drops,
        also in the middle of a line (the partial line is discarded), and ends
        when the venue closes the stream cleanly.
        """
        client = self._client(streaming=True)
        await self.requests.wait()
        self.sent += 1
        try:
            async with client.stream("GET", path, params=params) as response:
                if response.status_code != 200:
                    await response.aread()
                    data = _decode(response) or {}
                    raise venue_error(response.status_code, data, broker=self.broker, what=what)
                yield _lines(response, what=what, broker=self.broker)
        except httpx.TransportError as exc:
            raise Disconnected(
                f"{what}: the stream's connection failed ({type(exc).__name__})",
                broker=self.broker,
            ) from None


def _decode(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = json.loads(response.content) if response.content else {}
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


async def _lines(response: httpx.Response, *, what: str, broker: str) -> AsyncIterator[bytes]:
    """The lines of a chunked v20 stream, as they complete."""
    tail = b""
    try:
        # No chunk size: httpx would hold data back until that much arrived,
        # and a heartbeat is 80 bytes.
        async for chunk in response.aiter_raw():
            if tail:
                chunk = tail + chunk
            *lines, tail = chunk.split(b"\n")
            for line in lines:
                if line:
                    yield line
    except httpx.TransportError as exc:
        raise Disconnected(
            f"{what}: the stream's connection dropped ({type(exc).__name__})", broker=broker
        ) from None
    if tail.strip():
        raise Disconnected(f"{what}: the stream ended in the middle of a line", broker=broker)
