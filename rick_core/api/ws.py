"""The WebSocket proxy: live quotes and order events for local programs.

Each client authenticates with an API key, then subscribes to quotes of a
broker, or to the best quote across brokers, and optionally to order and fill
events. The wire protocol is documented for client authors in
``docs/websocket-protocol.md``; this module is its one implementation.

How it stays fast and fair:

- **One sink per client.** Every subscription of a client goes through the
  :class:`~rick_core.engine.quotes.QuoteMux` into the client's own bounded,
  conflating :class:`~rick_core.engine.quotes.QuoteConsumer` (``[proxy]
  buffer``): the feed never waits for a client, and a client that falls behind
  gets the latest price of each instrument, with a ``skipped`` count.
- **One writer per client** sends everything pending back to back: replies,
  events, then quotes, as ready-made WebSocket text frames joined into one
  write: a batch costs one system call, not one per message, and does not
  yield between messages. (Only data frames are written this way, beside
  trio-websocket, which keeps the handshake, pings and closing; see
  :class:`_ClientStream`.)
- **Encoded once.** A quote that several clients get is turned into its frame
  once (a two-generation cache keyed by the quote's identity).
- **A client that stops reading is dropped**, not waited for: when its socket
  accepts nothing for ``send_timeout`` seconds the proxy gives up on it
  (close code 4008). It owns each connection's TCP stream (:class:`_ClientStream`)
  so that it knows whether the last frame went out whole: only then can the
  close frame follow it (else the client sees the connection drop, 1006). The
  connection is closed at once either way, never waiting on a peer that does
  not read, and never holding up the other clients.

Events cannot be conflated (a missing fill is a wrong position): a client that
falls ``event_capacity`` events behind is closed with code 4009 and must read
the state again.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import math
import socket
import struct
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from rick_core.config import ProxyConfig
from rick_core.engine.events import EVENT_BUFFER, EventHub, EventSubscriber
from rick_core.engine.quotes import QuoteConsumer, QuoteMux
from rick_core.model import (
    BEST,
    BestQuote,
    Fill,
    ModelError,
    Order,
    Quote,
    check_symbol,
    utc_now,
)
from rick_core.model import to_jsonable as _to_jsonable
from rick_core.security.apikeys import ApiKeyInfo, ApiKeyRejected, KeySource, Scope
from rick_core.security.records import Actor, AuditRecord, EventType, Severity

__all__ = [
    "ACTIONS",
    "CloseCode",
    "ErrorCode",
    "ProxyError",
    "QuoteProxy",
    "encode_quote",
    "text_frame",
]

log = structlog.get_logger("rick.proxy")

ACTIONS = (
    "auth",
    "subscribe",
    "unsubscribe",
    "subscribe_events",
    "unsubscribe_events",
    "ping",
)
"""Every action a client may send (``auth`` first, once)."""

QUOTES_SCOPE = Scope.READ
EVENTS_SCOPE = Scope.READ
"""Order and fill events show what every strategy does: any valid key may read
them today, and the check is explicit so that raising it is a one-line change."""

MAX_MESSAGE_SIZE = 64 * 1024
"""Largest message a client may send (characters); a larger one closes with 1009."""
MAX_ID_LENGTH = 128
HANDSHAKE_TIMEOUT = 10.0
"""Seconds a new TCP connection has to complete the WebSocket handshake."""
CLOSE_TIMEOUT = 2.0
"""Seconds a polite close (auth failure, events overflow) waits for the client's reply."""
SLOW_CLOSE_GRACE = 0.05
"""Seconds a too-slow client's close frame gets to reach the kernel's buffer."""
SHUTDOWN_CLOSE_GRACE = 0.2
"""Seconds each client's close frame gets when the proxy stops: its reply is not
awaited (the connection's reader is being cancelled too), so rick's shutdown
is not held up by its clients."""
SUBSCRIBE_CONFIRM = 5.0
"""Seconds a subscribe waits for the upstream stream to open before replying anyway."""
SEND_BUFFER = 64 * 1024
"""Bytes of the kernel's send buffer per client (Linux doubles it): about 400
quote messages in flight before the client's own buffer starts conflating."""
MAX_OUTBOX = 256
"""Replies and events waiting for a client's writer before the proxy stops reading
that client's requests (and taking its events) until they are sent."""
ENCODE_CACHE = 2048
"""Encoded quotes per cache generation (two generations are kept)."""
_PEER_UNKNOWN = "unknown"


class CloseCode(enum.IntEnum):
    """WebSocket close codes the proxy sends (4000-4999: this application's)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    """rick is shutting down."""
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    AUTH_FAILED = 4001
    AUTH_TIMEOUT = 4002
    AUTH_REQUIRED = 4003
    """The first message was not an auth message."""
    TOO_SLOW = 4008
    EVENTS_OVERFLOW = 4009
    TOO_MANY_CONNECTIONS = 4029


_CLOSE_GRACES: dict[int, float] = {
    CloseCode.TOO_SLOW: SLOW_CLOSE_GRACE,
    CloseCode.GOING_AWAY: SHUTDOWN_CLOSE_GRACE,
}


class ErrorCode(enum.StrEnum):
    """``code`` of an ``error`` message; the connection stays open after these
    (except ``auth_*``, sent just before the matching close)."""

    BAD_JSON = "bad_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_ACTION = "unknown_action"
    BAD_REQUEST = "bad_request"
    UNKNOWN_BROKER = "unknown_broker"
    UNKNOWN_INSTRUMENT = "unknown_instrument"
    SUBSCRIPTION_LIMIT = "subscription_limit"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    ALREADY_AUTHENTICATED = "already_authenticated"
    AUTH_FAILED = "auth_failed"
    AUTH_REQUIRED = "auth_required"
    AUTH_TIMEOUT = "auth_timeout"
    TOO_MANY_CONNECTIONS = "too_many_connections"


class ProxyError(Exception):
    """The proxy cannot start; the message says what to do."""


class _BadRequest(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _quote_message(item: Quote | BestQuote) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "quote",
        "instrument": item.instrument,
        "broker": item.source,
        "bid": str(item.bid),
        "ask": str(item.ask),
        "time": item.time.isoformat(),
    }
    if item.bid_size is not None:
        message["bid_size"] = str(item.bid_size)
    if item.ask_size is not None:
        message["ask_size"] = str(item.ask_size)
    if isinstance(item, BestQuote):
        message["bid_broker"] = item.bid_broker
        message["ask_broker"] = item.ask_broker
        message["bid_brokers"] = list(item.bid_brokers)
        message["ask_brokers"] = list(item.ask_brokers)
        message["tightest"] = item.tightest
        message["sources"] = list(item.sources)
        message["stale"] = list(item.stale)
    return message


def encode_quote(item: Quote | BestQuote) -> str:
    """The ``quote`` message of a :class:`Quote` or :class:`BestQuote`, as JSON text."""
    return _dumps(_quote_message(item))


def text_frame(text: str) -> bytes:
    """``text`` as one unmasked, unfragmented WebSocket text frame (server to client,
    RFC 6455 section 5.2). The proxy's JSON is ASCII (``ensure_ascii``), hence UTF-8."""
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 0x10000:
        header = _HEADER_16.pack(0x81, 126, size)
    else:
        header = _HEADER_64.pack(0x81, 127, size)
    return header + payload


_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def _skipped_frame(item: Quote | BestQuote, skipped: int) -> bytes:
    message = _quote_message(item)
    message["skipped"] = skipped
    return text_frame(_dumps(message))


def _event_frame(strategy: str | None, event: Order | Fill) -> bytes:
    kind = "fill" if isinstance(event, Fill) else "order"
    return text_frame(_dumps({"type": kind, "strategy": strategy, kind: _to_jsonable(event)}))


def _peer_of(stream: trio.SocketStream) -> str:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return _PEER_UNKNOWN
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address) or _PEER_UNKNOWN


# ---------------------------------------------------------------------------
# the TCP stream under one connection


class _ClientStream(trio.abc.HalfCloseableStream):
    """A client's TCP stream, as the proxy needs it under trio-websocket.

    - The writer puts a whole batch of ready-made text frames on it at once
      (:meth:`write_frames`): one system call for the batch. trio-websocket's
      own frames (the auth reply, pongs, close frames) come through
      :meth:`send_all` into the same queue, so the order on the wire is the
      order they were handed over.
    - Writes go through the socket's own ``send``, each of which either puts
      bytes into the kernel or, cancelled, puts none; so after a cancelled
      write :attr:`torn` tells whether a frame went out only in part (then no
      close frame can follow it).
    - While :attr:`deadline_scope` is set, every write that makes progress
      moves its deadline ``timeout`` seconds on: a client is too slow when its
      socket accepts *nothing* for that long.
    """

    def __init__(self, transport: trio.SocketStream) -> None:
        self.transport = transport
        self._socket = transport.socket
        self._pending = bytearray()
        self._frames: deque[int] = deque()  # the length of each frame in _pending
        self._head_sent = 0  # bytes of the first pending frame already written
        # trio-websocket serialises its own sends, but not against the writer's
        # batches: one flush at a time on the socket.
        self._write_lock = trio.Lock()
        self.deadline_scope: trio.CancelScope | None = None
        self.timeout = 0.0
        self.bytes_sent = 0

    @property
    def torn(self) -> bool:
        """Whether a frame was cut: part of it is on the wire, the rest is not."""
        return self._head_sent > 0

    def discard_unsent(self) -> None:
        """Drop every frame not yet written (when not :attr:`torn`: none is begun)."""
        assert not self.torn
        self._pending.clear()
        self._frames.clear()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            await trio.lowlevel.checkpoint()
            return
        self._pending += data
        self._frames.append(len(data))
        await self.flush()

    async def write_frames(self, frames: list[bytes]) -> None:
        """Queue ``frames`` (whole WebSocket frames) and write everything pending."""
        self._pending += b"".join(frames)
        self._frames.extend(map(len, frames))
        await self.flush()

    async def flush(self) -> None:
        """Write everything pending."""
        async with self._write_lock:
            while self._pending:
                try:
                    sent = await self._socket.send(self._pending)
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        raise trio.ClosedResourceError("the connection was closed") from None
                    raise trio.BrokenResourceError(f"the connection broke: {exc}") from exc
                self._written(sent)

    def _written(self, sent: int) -> None:
        if not self._pending:
            return  # closed meanwhile
        del self._pending[:sent]
        self.bytes_sent += sent
        head_sent = self._head_sent + sent
        frames = self._frames
        while frames and head_sent >= frames[0]:
            head_sent -= frames.popleft()
        self._head_sent = head_sent
        scope = self.deadline_scope
        if scope is not None and sent:
            scope.deadline = trio.current_time() + self.timeout

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.transport.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.transport.send_eof()

    async def aclose(self) -> None:
        """Close the TCP connection at once; what was not written is dropped."""
        self._pending.clear()
        self._frames.clear()
        self._head_sent = 0
        await self.transport.aclose()


# ---------------------------------------------------------------------------
# one client


class _ClientQuotes(QuoteConsumer):
    """The client's quote buffer (its sink in the mux); a quote wakes its writer."""

    __slots__ = ("client",)

    def __init__(self, client: _Client, capacity: int) -> None:
        super().__init__(f"websocket {client.peer}", capacity)
        self.client = client

    def put_quote(self, quote: Any) -> None:
        self.queue.put(quote)
        self.client.wake()


class _Client:
    """One authenticated connection: its subscriptions, buffers and writer."""

    def __init__(
        self,
        proxy: QuoteProxy,
        conn: WebSocketConnection,
        stream: _ClientStream,
        peer: str,
        key: ApiKeyInfo,
    ) -> None:
        self.proxy = proxy
        self.conn = conn
        self.stream = stream
        self.peer = peer
        self.key = key
        self.quotes = _ClientQuotes(self, proxy.config.buffer)
        self.outbox: deque[bytes] = deque()
        """Encoded replies and events, in order; sent before quotes."""
        self.subscriptions: dict[str, dict[str, None]] = {}
        """broker (or "best") -> the instruments this client follows there."""
        self.events: EventSubscriber | None = None
        self._events_scope: trio.CancelScope | None = None
        self.sent = 0
        self.skipped_reported = 0
        self.started = trio.current_time()
        self.end: tuple[int, str, str] | None = None
        """(close code, reason for the client, reason for the record) once decided."""
        self._nursery: trio.Nursery | None = None
        self._wakeup: trio.Event | None = None
        self._drained: trio.Event | None = None

    # -- plumbing ------------------------------------------------------------

    @property
    def subscription_count(self) -> int:
        return sum(len(held) for held in self.subscriptions.values())

    def wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def reply(self, message: Mapping[str, Any]) -> None:
        self.outbox.append(text_frame(_dumps(message)))
        self.wake()

    def finish(self, code: int, reason: str, why: str) -> None:
        """End the session with ``code`` (the first reason given wins)."""
        if self.end is None:
            self.end = (code, reason, why)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _gone(self) -> None:
        """The client closed the connection, or it broke."""
        closed = self.conn.closed
        code = closed.code if closed is not None else 1006
        if code == 1006:
            why = "connection lost"
        elif code == CloseCode.MESSAGE_TOO_BIG:
            why = "message too big"  # trio-websocket closed it: over MAX_MESSAGE_SIZE
        else:
            why = f"client closed ({code})"
        self.finish(code, "", why)

    async def _wait_room(self) -> None:
        while len(self.outbox) >= MAX_OUTBOX:
            if self._drained is None:
                self._drained = trio.Event()
            await self._drained.wait()

    # -- running -------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._write)
            await self._read()
            nursery.cancel_scope.cancel()

    async def _read(self) -> None:
        while True:
            try:
                message = await self.conn.get_message()
            except ConnectionClosed:
                self._gone()
                return
            await self._handle(message)
            await self._wait_room()

    async def _write(self) -> None:
        proxy = self.proxy
        quotes = self.quotes
        queue = quotes.queue
        outbox = self.outbox
        stream = self.stream
        timeout = proxy.config.send_timeout
        while True:
            while not outbox and not queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            batch = list(outbox)
            outbox.clear()
            drained = self._drained
            if drained is not None:
                self._drained = None
                drained.set()
            quote_count = 0
            if queue:
                quote_count = self._encode_quotes(queue.take(), batch)
            if not batch:
                continue
            if self.conn.closed is not None:
                # Closing: no data frame may follow the close frame. The reader
                # (or whoever closes) ends the session.
                return
            with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
                stream.timeout = timeout
                stream.deadline_scope = scope
                try:
                    await stream.write_frames(batch)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.finish(1006, "", "connection lost")
                    return
                finally:
                    stream.deadline_scope = None
            if scope.cancelled_caught:
                proxy.disconnected_slow += 1
                self.finish(
                    CloseCode.TOO_SLOW,
                    f"too slow: nothing read for {timeout:g} s",
                    "too slow",
                )
                return
            self.sent += len(batch)
            proxy.messages_sent += len(batch)
            proxy.quotes_sent += quote_count

    def _encode_quotes(self, items: list[Any], batch: list[bytes]) -> int:
        proxy = self.proxy
        subscriptions = self.subscriptions
        skipped = self.quotes.skipped - self.skipped_reported
        if skipped:
            self.skipped_reported += skipped
            proxy.skipped_reported += skipped
        frame_of = proxy.frame_of
        count = 0
        for item in items:
            held = subscriptions.get(item.source)
            if held is None or item.instrument not in held:
                continue  # unsubscribed since it was queued
            if skipped:
                batch.append(_skipped_frame(item, skipped))
                skipped = 0
            else:
                batch.append(frame_of(item))
            count += 1
        return count

    # -- requests ------------------------------------------------------------

    async def _handle(self, message: str | bytes) -> None:
        request_id: Any = None
        action: str | None = None
        try:
            if isinstance(message, bytes):
                raise _BadRequest(
                    ErrorCode.BAD_JSON, "send JSON objects as text messages, not binary ones"
                )
            try:
                request = json.loads(message)
            except ValueError as exc:
                raise _BadRequest(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from None
            if not isinstance(request, dict):
                raise _BadRequest(
                    ErrorCode.NOT_AN_OBJECT,
                    'send a JSON object such as {"action": "ping"}, not '
                    f"a JSON {type(request).__name__}",
                )
            request_id = request.get("id")
            if request_id is not None and not _valid_id(request_id):
                request_id = None
                raise _BadRequest(
                    ErrorCode.BAD_REQUEST,
                    f'"id" must be a string of at most {MAX_ID_LENGTH} characters or a number',
                )
            raw_action = request.get("action")
            if isinstance(raw_action, str) and raw_action in ACTIONS:
                action = raw_action
            else:
                raise _BadRequest(
                    ErrorCode.UNKNOWN_ACTION,
                    _unknown_action_text(raw_action),
                )
            reply = await self._act(action, request)
        except _BadRequest as bad:
            error: dict[str, Any] = {"type": "error", "code": bad.code.value, "message": str(bad)}
            if action is not None:
                error["action"] = action
            if request_id is not None:
                error["id"] = request_id
            self.reply(error)
            return
        if request_id is not None:
            reply["id"] = request_id
        self.reply(reply)

    async def _act(self, action: str, request: dict[str, Any]) -> dict[str, Any]:
        if action == "ping":
            return {"type": "pong", "time": _now_text()}
        if action == "subscribe":
            return await self._subscribe(request)
        if action == "unsubscribe":
            return self._unsubscribe(request)
        if action == "subscribe_events":
            return self._subscribe_events()
        if action == "unsubscribe_events":
            self._unsubscribe_events()
            return {"type": "unsubscribed_events"}
        raise _BadRequest(
            ErrorCode.ALREADY_AUTHENTICATED,
            f"this connection is already authenticated as {self.key.name!r}",
        )

    def _broker_of(self, request: dict[str, Any]) -> str:
        broker = request.get("broker", BEST)
        if not isinstance(broker, str) or not broker:
            raise _BadRequest(
                ErrorCode.BAD_REQUEST,
                '"broker" must be a broker name from rick.toml, or "best" (the default)',
            )
        if broker != BEST:
            try:
                self.proxy.mux.feed(broker)
            except ValueError as exc:
                raise _BadRequest(ErrorCode.UNKNOWN_BROKER, str(exc)) from None
        return broker

    async def _subscribe(self, request: dict[str, Any]) -> dict[str, Any]:
        broker = self._broker_of(request)
        instruments = _instruments_of(request, required=True)
        assert instruments is not None
        held = self.subscriptions.get(broker, {})
        new = [i for i in instruments if i not in held]
        limit = self.proxy.config.max_subscriptions
        count = self.subscription_count
        if count + len(new) > limit:
            raise _BadRequest(
                ErrorCode.SUBSCRIPTION_LIMIT,
                f"this would make {count + len(new)} subscriptions on this connection, over "
                f"the limit of {limit} ([proxy] max_subscriptions); it has {count}. "
                "Unsubscribe some, or open another connection.",
            )
        confirmed = True
        if new:
            # Recorded first: quotes (the current best at once) may come while
            # the upstream subscription opens, and the writer passes only what
            # is recorded. A disconnect meanwhile is cleaned up by leave().
            held = self.subscriptions.setdefault(broker, {})
            held.update(dict.fromkeys(new))
            try:
                confirmed = await self.proxy.mux.subscribe(
                    self.quotes, new, broker=broker, confirm_within=SUBSCRIBE_CONFIRM
                )
            except ValueError as exc:  # raised before anything is held
                for instrument in new:
                    del held[instrument]
                if not held:
                    del self.subscriptions[broker]
                raise _BadRequest(ErrorCode.UNKNOWN_INSTRUMENT, str(exc)) from None
        return {
            "type": "subscribed",
            "broker": broker,
            "instruments": instruments,
            "confirmed": confirmed,
        }

    def _unsubscribe(self, request: dict[str, Any]) -> dict[str, Any]:
        broker = self._broker_of(request)
        instruments = _instruments_of(request, required=False)
        held = self.subscriptions.get(broker, {})
        removed = list(held) if instruments is None else [i for i in instruments if i in held]
        if removed:
            self.proxy.mux.unsubscribe(self.quotes, removed, broker=broker)
            for instrument in removed:
                del held[instrument]
            if not held:
                self.subscriptions.pop(broker, None)
        return {"type": "unsubscribed", "broker": broker, "instruments": removed}

    def _subscribe_events(self) -> dict[str, Any]:
        if not self.key.scope.allows(EVENTS_SCOPE):
            raise _BadRequest(
                ErrorCode.INSUFFICIENT_SCOPE,
                f"order and fill events need an API key with scope {EVENTS_SCOPE.value} or "
                f"higher; {self.key.name!r} has {self.key.scope.value}",
            )
        if self.events is None:
            assert self._nursery is not None
            self.events = self.proxy.events.subscribe(self.proxy.event_capacity)
            self._events_scope = trio.CancelScope()
            self._nursery.start_soon(self._pump_events, self.events, self._events_scope)
        return {"type": "subscribed_events"}

    def _unsubscribe_events(self) -> None:
        if self.events is not None:
            self.proxy.events.unsubscribe(self.events)
            self.events = None
        if self._events_scope is not None:
            self._events_scope.cancel()
            self._events_scope = None

    async def _pump_events(self, events: EventSubscriber, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await events.wait()
                if events.overflowed:
                    self.proxy.disconnected_overflow += 1
                    self.finish(
                        CloseCode.EVENTS_OVERFLOW,
                        f"events overflowed: over {events.capacity} unread; read the state again",
                        "events overflowed",
                    )
                    return
                if events.closed:
                    return
                taken = events.take()
                for strategy, event in taken:
                    self.outbox.append(_event_frame(strategy, event))
                self.proxy.events_sent += len(taken)
                self.wake()
                await self._wait_room()

    def leave(self) -> None:
        """Release every subscription (the mux's and the event hub's)."""
        self.proxy.mux.leave(self.quotes)
        self.subscriptions.clear()
        self._unsubscribe_events()


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return len(value) <= MAX_ID_LENGTH
    if isinstance(value, float):
        return math.isfinite(value)  # NaN and Infinity are not JSON
    return isinstance(value, int)


def _unknown_action_text(action: Any) -> str:
    known = ", ".join(a for a in ACTIONS if a != "auth")
    if action is None:
        return f'no "action": say what to do, one of {known}'
    shown = action if isinstance(action, str) and len(action) <= 40 else "that"
    return f"unknown action {shown!r}: use one of {known}"


def _instruments_of(request: dict[str, Any], *, required: bool) -> list[str] | None:
    raw = request.get("instruments")
    if raw is None and not required:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(i, str) for i in raw):
        raise _BadRequest(
            ErrorCode.BAD_REQUEST,
            '"instruments" must be a non-empty list of instrument symbols, '
            'such as ["EUR_USD", "BTC_USD"]',
        )
    try:
        checked = [check_symbol(i) for i in raw]
    except ModelError as exc:
        raise _BadRequest(ErrorCode.BAD_REQUEST, str(exc)) from None
    return list(dict.fromkeys(checked))


def _now_text() -> str:
    return utc_now().isoformat()


# ---------------------------------------------------------------------------
# the proxy


class QuoteProxy:
    """The WebSocket proxy over ``mux`` (quotes) and ``events`` (orders and fills).

    ``keys`` checks the API key each client presents (an
    :class:`~rick_core.security.apikeys.ApiKeys` or ``KeyChecker``; None: no
    vault, so no key can exist and every client is refused, saying how to set
    one up). ``audit`` receives the session records (``USER_LOGIN``,
    ``USER_LOGOUT``) and every refused authentication
    (``FAILED_AUTHENTICATION``); no record holds a key. ``event_capacity``:
    events a client may fall behind by before it is cut off.

    :meth:`serve` serves whatever ``config.enabled`` says: whether to run the
    proxy at all is its owner's decision.

    Run :meth:`serve` in a nursery: ``port = await nursery.start(proxy.serve)``.
    """

    def __init__(
        self,
        mux: QuoteMux,
        events: EventHub,
        config: ProxyConfig,
        *,
        keys: KeySource | None,
        audit: Callable[[AuditRecord], None] | None = None,
        event_capacity: int = EVENT_BUFFER,
    ) -> None:
        if config.buffer < 1:
            raise ValueError("[proxy] buffer must be at least 1")
        self.mux = mux
        self.events = events
        self.config = config
        self.keys = keys
        self.audit = audit
        self.event_capacity = event_capacity
        self.port: int | None = None
        """The port actually bound, once :meth:`serve` has started."""
        self.clients: set[_Client] = set()
        self._per_key: dict[str, int] = {}
        self._cache: dict[int, tuple[object, bytes]] = {}
        self._old_cache: dict[int, tuple[object, bytes]] = {}
        self.connections = 0
        self.messages_sent = 0
        self.quotes_sent = 0
        self.events_sent = 0
        self.skipped_reported = 0
        self.disconnected_slow = 0
        self.disconnected_overflow = 0
        self.auth_failures = 0
        self.rejected_over_limit = 0
        self.errors = 0
        self.encoded_quotes = 0

    # -- serving -------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``[proxy] host:port`` and serve clients until cancelled;
        ``task_status.started`` gets the port actually bound."""
        host, port = self.config.host, self.config.port
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise ProxyError(
                f"the WebSocket proxy cannot listen on {host}:{port}: {exc.strerror or exc}. "
                "Another program (or another rick) may use that port: set [proxy] port in "
                "rick.toml to a free one, or [proxy] enabled = false."
            ) from None
        self.port = listeners[0].socket.getsockname()[1]
        log.debug("proxy listening", host=host, port=self.port)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._serve_stream, listeners)
                task_status.started(self.port)
        finally:
            self.port = None

    async def _serve_stream(self, transport: trio.SocketStream) -> None:
        self.connections += 1
        # A small kernel send buffer: a client reading slower than its quotes
        # come is skipped forward by its conflating buffer here within a few
        # hundred messages, instead of being fed quotes seconds old from
        # megabytes queued in the kernel (loopback buffers grow to 4 MB).
        with contextlib.suppress(OSError):
            transport.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        stream = _ClientStream(transport)
        peer = _peer_of(transport)
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await self._connection(nursery, stream, peer)
                finally:
                    nursery.cancel_scope.cancel()  # trio-websocket's reader task
        except* Exception:
            # One connection's failure is logged and ends it alone, never the proxy.
            self.errors += 1
            log.exception("proxy connection failed", peer=peer)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _connection(self, nursery: trio.Nursery, stream: _ClientStream, peer: str) -> None:
        request = None
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            request = await wrap_server_stream(nursery, stream, max_message_size=MAX_MESSAGE_SIZE)
        if request is None:
            log.info("proxy handshake timed out", peer=peer)
            return
        try:
            conn = await request.accept()
        except ConnectionClosed:
            return
        key = await self._authenticate(conn, stream, peer)
        if key is None:
            return
        held = self._per_key.get(key.key_id, 0)
        limit = self.config.max_connections_per_key
        if held >= limit:
            self.rejected_over_limit += 1
            log.warning(
                "proxy connection over the limit of its key", peer=peer, key=key.name, limit=limit
            )
            await self._refuse(
                conn,
                stream,
                CloseCode.TOO_MANY_CONNECTIONS,
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"the API key {key.name!r} already has {held} connections, the limit "
                "([proxy] max_connections_per_key); close one, or use another key",
                "too many connections for this key",
            )
            return
        login = AuditRecord(
            EventType.USER_LOGIN,
            actor=Actor(kind="api_key", name=key.name, source="websocket"),
            details={"key_id": key.key_id, "peer": peer},
        )
        if not self._record(login):  # fail closed: no session without its record
            await _close(conn, stream, CloseCode.INTERNAL_ERROR, "internal error", CLOSE_TIMEOUT)
            return
        self._per_key[key.key_id] = held + 1
        try:
            await self._session(conn, stream, peer, key)
        finally:
            left = self._per_key[key.key_id] - 1
            if left:
                self._per_key[key.key_id] = left
            else:
                del self._per_key[key.key_id]

    # -- authentication ------------------------------------------------------

    async def _authenticate(
        self, conn: WebSocketConnection, stream: _ClientStream, peer: str
    ) -> ApiKeyInfo | None:
        """The key of the client's auth message, or None once the client is refused."""
        message: str | bytes | None = None
        with trio.move_on_after(self.config.auth_timeout):
            try:
                message = await conn.get_message()
            except ConnectionClosed:
                log.info("proxy client left before authenticating", peer=peer)
                return None
        if message is None:
            self._audit_failure(peer, "auth_timeout")
            await self._refuse(
                conn,
                stream,
                CloseCode.AUTH_TIMEOUT,
                ErrorCode.AUTH_TIMEOUT,
                f"no auth message within {self.config.auth_timeout:g} s: send "
                '{"action": "auth", "key": "<api key>"} first',
                "auth timeout",
            )
            return None
        presented = _presented_key(message)
        if presented is None:
            self._audit_failure(peer, "auth_expected")
            await self._refuse(
                conn,
                stream,
                CloseCode.AUTH_REQUIRED,
                ErrorCode.AUTH_REQUIRED,
                'the first message must be {"action": "auth", "key": "<api key>"}',
                "auth required",
            )
            return None
        if self.keys is None:
            self._audit_failure(peer, "no_api_keys")
            await self._refuse(
                conn,
                stream,
                CloseCode.AUTH_FAILED,
                ErrorCode.AUTH_FAILED,
                "no API keys exist on this machine: set up the credential vault "
                "(export RICK_MASTER_KEY=$(rick creds genkey)), create a key with "
                "`rick apikey create NAME --scope read`, then restart `rick run`",
                "auth failed: no API keys",
            )
            return None
        try:
            info = self.keys.verify(presented, QUOTES_SCOPE, audit=self._verify_audit(peer))
        except ApiKeyRejected as rejected:
            # ApiKeys.verify has audited it (through _verify_audit).
            self.auth_failures += 1
            log.info("proxy authentication failed", peer=peer, reason=rejected.reason.value)
            await self._refuse(
                conn,
                stream,
                CloseCode.AUTH_FAILED,
                ErrorCode.AUTH_FAILED,
                str(rejected),
                f"auth failed: {rejected.reason.value}",
            )
            return None
        except Exception:
            self.errors += 1
            log.exception("proxy cannot check an API key", peer=peer)
            await _close(conn, stream, CloseCode.INTERNAL_ERROR, "internal error", CLOSE_TIMEOUT)
            return None
        return info

    def _record(self, record: AuditRecord) -> bool:
        """Hand ``record`` to the audit callback; False (logged) if it failed."""
        if self.audit is None:
            return True
        try:
            self.audit(record)
        except Exception:
            self.errors += 1
            log.exception("proxy cannot write an audit record", event=record.type.value)
            return False
        return True

    def _verify_audit(self, peer: str) -> Callable[[EventType, Mapping[str, Any], Severity], None]:
        def record(type: EventType, details: Mapping[str, Any], severity: Severity) -> None:
            if self.audit is None:
                return
            name = details.get("key_name") or "unknown"
            self.audit(
                AuditRecord(
                    type,
                    actor=Actor(kind="api_key", name=str(name), source="websocket"),
                    severity=severity,
                    details={**details, "peer": peer},
                )
            )

        return record

    def _audit_failure(self, peer: str, reason: str) -> None:
        self.auth_failures += 1
        log.info("proxy authentication failed", peer=peer, reason=reason)
        self._record(
            AuditRecord(
                EventType.FAILED_AUTHENTICATION,
                actor=Actor(kind="api_key", name="unknown", source="websocket"),
                severity=Severity.WARNING,
                details={"reason": reason, "peer": peer},
            )
        )

    async def _refuse(
        self,
        conn: WebSocketConnection,
        stream: _ClientStream,
        close_code: CloseCode,
        error: ErrorCode,
        message: str,
        reason: str,
    ) -> None:
        """Tell the client why (an error message), then close with ``close_code``."""
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await conn.send_message(
                    _dumps({"type": "error", "code": error.value, "message": message})
                )
            except ConnectionClosed:
                return
        await _close(conn, stream, close_code, reason, CLOSE_TIMEOUT)

    # -- sessions ------------------------------------------------------------

    async def _session(
        self, conn: WebSocketConnection, stream: _ClientStream, peer: str, key: ApiKeyInfo
    ) -> None:
        client = _Client(self, conn, stream, peer, key)
        self.clients.add(client)
        log.info("proxy client connected", peer=peer, key=key.name)
        ok = {"type": "auth", "ok": True, "key": key.name, "scope": key.scope.value}
        with trio.move_on_after(self.config.send_timeout), suppress(ConnectionClosed):
            await conn.send_message(_dumps(ok))
        try:
            await client.run()
        except* Exception:
            self.errors += 1
            log.exception("proxy client failed", peer=peer, key=key.name)
            client.finish(CloseCode.INTERNAL_ERROR, "internal error; see rick's log", "error")
        finally:
            self.clients.discard(client)
            client.leave()
            self.skipped_reported += client.quotes.skipped - client.skipped_reported
            if client.end is None:  # left by a cancellation: the proxy is stopping
                client.finish(CloseCode.GOING_AWAY, "rick is shutting down", "proxy stopped")
            assert client.end is not None
            code, reason, why = client.end
            if conn.closed is None:
                grace = _CLOSE_GRACES.get(code, CLOSE_TIMEOUT)
                with trio.CancelScope(shield=True):
                    await _close(conn, stream, code, reason, grace)
            duration = trio.current_time() - client.started
            log.info(
                "proxy client disconnected",
                peer=peer,
                key=key.name,
                reason=why,
                code=int(code),
                messages=client.sent,
                seconds=round(duration, 3),
            )
            self._record(
                AuditRecord(
                    EventType.USER_LOGOUT,
                    actor=Actor(kind="api_key", name=key.name, source="websocket"),
                    details={
                        "key_id": key.key_id,
                        "peer": peer,
                        "duration": round(duration, 3),
                        "messages": client.sent,
                        "reason": why,
                    },
                )
            )

    # -- encoding ------------------------------------------------------------

    def frame_of(self, item: Quote | BestQuote) -> bytes:
        """``item``'s quote message as a WebSocket frame, encoded once however many
        clients get it. Keyed by identity: the mux hands every client the same object."""
        key = id(item)
        entry = self._cache.get(key)
        if entry is not None and entry[0] is item:
            return entry[1]
        entry = self._old_cache.get(key)
        if entry is None or entry[0] is not item:
            entry = (item, text_frame(encode_quote(item)))
            self.encoded_quotes += 1
        cache = self._cache
        cache[key] = entry
        if len(cache) >= ENCODE_CACHE:
            self._old_cache = cache
            self._cache = {}
        return entry[1]

    # -- reading -------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for status displays and benchmarks."""
        return {
            "port": self.port,
            "clients": len(self.clients),
            "connections": self.connections,
            "messages_sent": self.messages_sent,
            "quotes_sent": self.quotes_sent,
            "events_sent": self.events_sent,
            "quotes_encoded": self.encoded_quotes,
            "skipped": self.skipped_reported
            + sum(c.quotes.skipped - c.skipped_reported for c in self.clients),
            "disconnected_slow": self.disconnected_slow,
            "disconnected_overflow": self.disconnected_overflow,
            "auth_failures": self.auth_failures,
            "rejected_over_limit": self.rejected_over_limit,
            "errors": self.errors,
        }


def _presented_key(message: str | bytes) -> str | None:
    """The key of an auth message (any JSON value: ApiKeys judges it), or None if
    ``message`` is not an auth message at all."""
    if isinstance(message, bytes):
        return None
    try:
        request = json.loads(message)
    except ValueError:
        return None
    if not isinstance(request, dict) or request.get("action") != "auth":
        return None
    key = request.get("key")
    return key if isinstance(key, str) else ""


async def _close(
    conn: WebSocketConnection,
    stream: _ClientStream,
    code: int,
    reason: str,
    grace: float,
) -> None:
    """Close with ``code``: the close frame if it can follow whole frames, waiting
    at most ``grace`` seconds for the client's reply; then the TCP connection."""
    if not stream.torn:
        if code == CloseCode.TOO_SLOW:
            stream.discard_unsent()  # the client is behind anyway: the close frame first
        with trio.move_on_after(grace):
            await conn.aclose(code, reason or None)
    await stream.aclose()
