"""The WebSocket proxy over real loopback WebSockets: a real QuoteMux fed by
paper brokers, real API keys, a trio-websocket client; and ``rick quotes``
as a real process against it."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from click.testing import CliRunner
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket

from rick_core.api.ws import ACTIONS, CloseCode, ErrorCode, QuoteProxy
from rick_core.cli import _build_cli
from rick_core.components import ComponentSetup
from rick_core.config import ProxyConfig
from rick_core.engine.events import EventHub
from rick_core.engine.quotes import QuoteMux
from rick_core.model import Fill, Order, OrderRequest, OrderStatus, to_jsonable
from rick_core.paper.broker import PaperBroker
from rick_core.security.apikeys import ApiKeys
from rick_core.security.records import AuditRecord, EventType

HOST = "127.0.0.1"
PEPPER = b"a pepper of at least sixteen bytes, for tests"
WRONG_KEY = "rk_abcdefghij_" + "A" * 43


# ---------------------------------------------------------------------------
# the rig: paper brokers -> mux -> proxy


@attrs.define
class Rig:
    mux: QuoteMux
    hub: EventHub
    proxy: QuoteProxy
    port: int
    audit: list[AuditRecord]

    def holders(self, broker: str, instrument: str) -> int:
        return self.mux.feeds[broker].holders(instrument)

    def records(self, type: EventType) -> list[AuditRecord]:
        return [r for r in self.audit if r.type is type]


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[ApiKeys]:
    with ApiKeys(tmp_path / "apikeys.db", PEPPER) as api_keys:
        yield api_keys


@pytest.fixture
def reader_key(keys: ApiKeys) -> str:
    return keys.create("reader", "read")


async def start_rig(
    nursery: trio.Nursery,
    tmp_path: Path,
    keys: ApiKeys | None,
    *,
    brokers: tuple[str, ...] = ("paper",),
    interval: float = 0.02,
    event_capacity: int = 1000,
    **config: Any,
) -> Rig:
    mux = QuoteMux()
    for seed, name in enumerate(brokers, start=7):
        options = {"persist": False, "seed": seed, "interval": interval}
        broker = PaperBroker(ComponentSetup(name=name, options=options, home=tmp_path))
        await broker.connect()
        feed = mux.add_broker(name, broker)
        feed.instruments = frozenset(i.symbol for i in await broker.instruments())
        await nursery.start(feed.run)
    hub = EventHub()
    audit: list[AuditRecord] = []
    proxy = QuoteProxy(
        mux,
        hub,
        ProxyConfig(host=HOST, port=0, **config),
        keys=keys,
        audit=audit.append,
        event_capacity=event_capacity,
    )
    port = await nursery.start(proxy.serve)
    assert port == proxy.port and port > 0
    return Rig(mux, hub, proxy, port, audit)


# ---------------------------------------------------------------------------
# a client


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket(HOST, port, "/", use_ssl=False) as ws:
        yield ws


async def send(ws: WebSocketConnection, message: Any) -> None:
    await ws.send_message(json.dumps(message))


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await ws.get_message())
    return message


async def until(ws: WebSocketConnection, kind: str) -> dict[str, Any]:
    """The next message of type ``kind``, skipping others (quotes)."""
    while True:
        message = await receive(ws)
        if message["type"] == kind:
            return message


async def login(ws: WebSocketConnection, key: str) -> dict[str, Any]:
    await send(ws, {"action": "auth", "key": key})
    reply = await receive(ws)
    assert reply == {"type": "auth", "ok": True, "key": reply["key"], "scope": reply["scope"]}
    return reply


async def close_reason(ws: WebSocketConnection) -> Any:
    """Read until the server closes; its CloseReason."""
    while True:
        try:
            await ws.get_message()
        except ConnectionClosed as closed:
            return closed.reason


async def eventually(condition: Any, what: str) -> None:
    """Poll the proxy's state (it has no event to wait on for each of these)."""
    with trio.move_on_after(10):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)
        return
    pytest.fail(f"timed out waiting for {what}")


def check_quote(message: dict[str, Any]) -> None:
    """Decimal strings, an aware UTC ISO 8601 time."""
    assert message["type"] == "quote"
    assert isinstance(message["bid"], str) and isinstance(message["ask"], str)
    assert Decimal(message["bid"]) <= Decimal(message["ask"])
    assert Decimal(message["bid"]) > 0
    time = datetime.fromisoformat(message["time"])
    assert time.utcoffset() is not None and time.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def no_secret_in(records: list[AuditRecord], *secrets: str) -> None:
    text = repr(records) + json.dumps([dict(r.details) for r in records], default=str)
    for secret in secrets:
        assert secret not in text
        if secret.startswith("rk_"):  # rk_<key id>_<secret>: nor the secret part alone
            assert secret.split("_", 2)[2] not in text


# ---------------------------------------------------------------------------
# authentication


@pytest.mark.parametrize(
    ("presented", "reason"),
    [(WRONG_KEY, "unknown"), ("hunter2", "malformed")],
)
async def test_a_bad_key_is_closed_with_4001_and_audited(
    nursery: trio.Nursery,
    tmp_path: Path,
    keys: ApiKeys,
    reader_key: str,
    presented: str,
    reason: str,
) -> None:
    rig = await start_rig(nursery, tmp_path, keys)
    with trio.fail_after(10):
        async with connect(rig.port) as ws:
            await send(ws, {"action": "auth", "key": presented})
            error = await receive(ws)
            closed = await close_reason(ws)
    assert error["type"] == "error" and error["code"] == "auth_failed"
    assert "rick apikey" in error["message"]
    assert closed.code == CloseCode.AUTH_FAILED == 4001
    (failed,) = rig.records(EventType.FAILED_AUTHENTICATION)
    assert failed.actor.kind == "api_key" and failed.actor.source == "websocket"
    assert failed.actor.name == "unknown"
    assert failed.details["reason"] == reason
    assert failed.details["peer"].startswith("127.0.0.1:")
    assert not rig.records(EventType.USER_LOGIN)
    assert rig.proxy.stats()["auth_failures"] == 1
    no_secret_in(rig.audit, presented, reader_key)


async def test_no_auth_message_in_time_closes_with_4002(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys
) -> None:
    rig = await start_rig(nursery, tmp_path, keys, auth_timeout=0.2)
    with trio.fail_after(10):
        async with connect(rig.port) as ws:
            error = await receive(ws)
            closed = await close_reason(ws)
    assert error["code"] == "auth_timeout"
    assert closed.code == CloseCode.AUTH_TIMEOUT == 4002
    (failed,) = rig.records(EventType.FAILED_AUTHENTICATION)
    assert failed.details["reason"] == "auth_timeout"
    assert (failed.actor.kind, failed.actor.name, failed.actor.source) == (
        "api_key",
        "unknown",
        "websocket",
    )


async def test_a_first_message_that_is_not_auth_closes_with_4003(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys)
    with trio.fail_after(10):
        async with connect(rig.port) as ws:
            # A valid key in the wrong message: still refused, and never recorded.
            await send(ws, {"action": "login", "key": reader_key})
            error = await receive(ws)
            closed = await close_reason(ws)
    assert error["code"] == "auth_required"
    assert closed.code == CloseCode.AUTH_REQUIRED == 4003
    (failed,) = rig.records(EventType.FAILED_AUTHENTICATION)
    assert failed.details["reason"] == "auth_expected"
    no_secret_in(rig.audit, reader_key)


async def test_without_a_vault_every_client_is_told_how_to_make_a_key(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    rig = await start_rig(nursery, tmp_path, None)
    with trio.fail_after(10):
        async with connect(rig.port) as ws:
            await send(ws, {"action": "auth", "key": WRONG_KEY})
            error = await receive(ws)
            closed = await close_reason(ws)
    assert closed.code == 4001
    assert "vault" in error["message"] and "rick apikey create" in error["message"]
    (failed,) = rig.records(EventType.FAILED_AUTHENTICATION)
    assert failed.details["reason"] == "no_api_keys"
    no_secret_in(rig.audit, WRONG_KEY)


async def test_a_session_is_audited_from_login_to_logout(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys)
    info = keys.get("reader")
    assert info is not None
    with trio.fail_after(10):
        async with connect(rig.port) as ws:
            reply = await login(ws, reader_key)
            await send(ws, {"action": "ping", "id": 1})
            assert (await until(ws, "pong"))["id"] == 1
        await eventually(lambda: rig.records(EventType.USER_LOGOUT), "the logout record")
    assert reply == {"type": "auth", "ok": True, "key": "reader", "scope": "read"}
    (login_record,) = rig.records(EventType.USER_LOGIN)
    assert (login_record.actor.kind, login_record.actor.name, login_record.actor.source) == (
        "api_key",
        "reader",
        "websocket",
    )
    assert login_record.details["key_id"] == info.key_id
    assert login_record.details["peer"].startswith("127.0.0.1:")
    (logout,) = rig.records(EventType.USER_LOGOUT)
    assert logout.actor == login_record.actor
    assert logout.details["reason"] == "client closed (1000)"
    assert logout.details["messages"] == 1  # the pong (the auth reply comes before)
    assert logout.details["duration"] >= 0
    assert not rig.records(EventType.FAILED_AUTHENTICATION)
    no_secret_in(rig.audit, reader_key)


# ---------------------------------------------------------------------------
# quotes


async def test_quotes_of_one_broker_are_decimal_strings_with_utc_times(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys)
    wanted = {"EUR_USD", "GBP_USD"}
    seen: set[str] = set()
    with trio.fail_after(10):
        async with connect(rig.port) as ws:
            await login(ws, reader_key)
            await send(
                ws, {"action": "subscribe", "broker": "paper", "instruments": sorted(wanted)}
            )
            subscribed = await until(ws, "subscribed")
            while seen != wanted:
                quote = await until(ws, "quote")
                check_quote(quote)
                assert quote["broker"] == "paper"
                assert quote["instrument"] in wanted
                assert "bid_broker" not in quote
                seen.add(quote["instrument"])
    assert subscribed == {
        "type": "subscribed",
        "broker": "paper",
        "instruments": ["EUR_USD", "GBP_USD"],
        "confirmed": True,
    }
    assert rig.proxy.stats()["quotes_sent"] >= 2


async def test_best_quotes_compare_the_brokers(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys, brokers=("paper", "paper2"))
    with trio.fail_after(10):
        async with connect(rig.port) as ws:
            await login(ws, reader_key)
            await send(ws, {"action": "subscribe", "instruments": ["EUR_USD"]})  # best: default
            assert (await until(ws, "subscribed"))["broker"] == "best"
            while True:
                quote = await until(ws, "quote")
                check_quote(quote)
                assert quote["broker"] == "best" and quote["instrument"] == "EUR_USD"
                if quote["sources"] == ["paper", "paper2"]:
                    break
    assert quote["bid_broker"] in quote["bid_brokers"]
    assert quote["ask_broker"] in quote["ask_brokers"]
    assert quote["tightest"] in ("paper", "paper2")
    assert quote["stale"] == []
    # The best bid is the higher of the two brokers' bids at that moment.
    last = {name: rig.mux.feeds[name].last["EUR_USD"] for name in ("paper", "paper2")}
    best = rig.mux.best("EUR_USD")
    assert best is not None
    assert best.bid == max(q.bid for q in last.values())


async def test_bad_requests_get_errors_and_the_connection_stays_usable(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys)
    with trio.fail_after(10):
        async with connect(rig.port) as ws:
            await login(ws, reader_key)

            async def error_for(raw: str | bytes) -> dict[str, Any]:
                await ws.send_message(raw)
                return await until(ws, "error")

            bad_json = await error_for("{not json")
            not_object = await error_for("[1, 2]")
            binary = await error_for(b'{"action": "ping"}')
            unknown = await error_for(json.dumps({"action": "dance", "id": "a1"}))
            no_list = await error_for(json.dumps({"action": "subscribe", "instruments": "EUR_USD"}))
            badly_spelt = await error_for(
                json.dumps({"action": "subscribe", "broker": "paper", "instruments": ["eur/usd"]})
            )
            no_broker = await error_for(
                json.dumps({"action": "subscribe", "broker": "nope", "instruments": ["EUR_USD"]})
            )
            not_listed = await error_for(
                json.dumps({"action": "subscribe", "broker": "paper", "instruments": ["XYZ_ABC"]})
            )
            twice = await error_for(json.dumps({"action": "auth", "key": reader_key}))
            await send(ws, {"action": "ping", "id": "after"})
            pong = await until(ws, "pong")
    assert bad_json["code"] == "bad_json" and "action" not in bad_json
    assert not_object["code"] == "not_an_object"
    assert binary["code"] == "bad_json" and "binary" in binary["message"]
    assert unknown["code"] == "unknown_action" and unknown["id"] == "a1"
    assert "subscribe" in unknown["message"] and "subscribe_events" in unknown["message"]
    assert no_list["code"] == "bad_request" and no_list["action"] == "subscribe"
    assert badly_spelt["code"] == "bad_request" and "EUR_USD" in badly_spelt["message"]
    assert (
        no_broker["code"] == "unknown_broker" and "no broker named 'nope'" in no_broker["message"]
    )
    assert not_listed["code"] == "unknown_instrument" and "XYZ_ABC" in not_listed["message"]
    assert twice["code"] == "already_authenticated"
    assert pong["id"] == "after"
    assert datetime.fromisoformat(pong["time"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert rig.holders("paper", "XYZ_ABC") == 0
    assert rig.proxy.stats()["errors"] == 0


async def test_an_oversized_message_closes_with_1009(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys)
    huge = {"action": "subscribe", "instruments": ["EUR_USD"] * 10_000}  # ~110 KB
    with trio.fail_after(10):
        async with connect(rig.port) as ws:
            await login(ws, reader_key)
            await send(ws, huge)
            closed = await close_reason(ws)
        await eventually(lambda: rig.records(EventType.USER_LOGOUT), "the logout record")
    assert closed.code == CloseCode.MESSAGE_TOO_BIG == 1009
    assert rig.records(EventType.USER_LOGOUT)[0].details["reason"] == "message too big"


async def test_subscriptions_are_limited_per_connection(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys, max_subscriptions=3)
    with trio.fail_after(10):
        async with connect(rig.port) as ws:
            await login(ws, reader_key)

            async def subscribe(*instruments: str, broker: str = "paper") -> dict[str, Any]:
                request = {"action": "subscribe", "broker": broker, "instruments": instruments}
                await send(ws, request)
                while True:
                    message = await receive(ws)
                    if message["type"] in ("subscribed", "error"):
                        return message

            first = await subscribe("EUR_USD", "GBP_USD")
            again = await subscribe("EUR_USD")  # already held: costs nothing
            over = await subscribe("USD_JPY", "AUD_USD")
            best = await subscribe("EUR_USD", broker="best")  # counts: 3 of 3
            full = await subscribe("USD_JPY")
            await send(ws, {"action": "unsubscribe", "broker": "paper", "instruments": ["GBP_USD"]})
            unsubscribed = await until(ws, "unsubscribed")
            room_again = await subscribe("USD_JPY")
    assert first["type"] == again["type"] == best["type"] == "subscribed"
    assert over["code"] == full["code"] == "subscription_limit"
    assert "max_subscriptions" in over["message"]
    assert unsubscribed["instruments"] == ["GBP_USD"]
    assert room_again["type"] == "subscribed"
    assert rig.holders("paper", "AUD_USD") == 0


async def test_connections_are_limited_per_key(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys, max_connections_per_key=2)
    other_key = keys.create("other", "read")
    with trio.fail_after(10):
        async with connect(rig.port) as one, connect(rig.port) as two:
            await login(one, reader_key)
            await login(two, reader_key)
            async with connect(rig.port) as three:
                await send(three, {"action": "auth", "key": reader_key})
                refused = await receive(three)
                closed = await close_reason(three)
            async with connect(rig.port) as another:
                assert (await login(another, other_key))["key"] == "other"
            await send(two, {"action": "ping"})
            await until(two, "pong")  # the others are undisturbed
        await eventually(lambda: rig.proxy.stats()["clients"] == 0, "all sessions ended")
        async with connect(rig.port) as four:
            await login(four, reader_key)  # the key's connections were given back
    assert refused["code"] == "too_many_connections"
    assert closed.code == CloseCode.TOO_MANY_CONNECTIONS == 4029
    assert rig.proxy.stats()["rejected_over_limit"] == 1
    # Refused after auth, before a session: no login recorded for it.
    assert len(rig.records(EventType.USER_LOGIN)) == 4


async def test_a_client_that_stops_reading_is_dropped_and_others_keep_receiving(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys, interval=0.001, send_timeout=0.5)
    everything = sorted(rig.mux.feeds["paper"].instruments or ())
    received_after_drop = 0

    async def fast_client(task_status: trio.TaskStatus[None]) -> None:
        nonlocal received_after_drop
        async with connect(rig.port) as ws:
            await login(ws, reader_key)
            await send(ws, {"action": "subscribe", "broker": "paper", "instruments": everything})
            await until(ws, "quote")
            task_status.started()
            while True:
                await until(ws, "quote")
                if rig.proxy.disconnected_slow:
                    received_after_drop += 1

    with trio.fail_after(20):
        await nursery.start(fast_client)
        async with connect(rig.port) as slow:
            await login(slow, reader_key)
            await send(slow, {"action": "subscribe", "broker": "paper", "instruments": everything})
            # ... and never reads again, until it has been dropped.
            await eventually(lambda: rig.proxy.disconnected_slow == 1, "the slow client dropped")
            await eventually(lambda: received_after_drop >= 50, "the fast client still served")
            closed = await close_reason(slow)
        await eventually(lambda: rig.records(EventType.USER_LOGOUT), "the slow client's logout")
    # 4008 when the close frame could follow whole frames; else the drop is abrupt.
    assert closed.code in (CloseCode.TOO_SLOW, 1006)
    (logout,) = rig.records(EventType.USER_LOGOUT)
    assert logout.details["reason"] == "too slow"
    assert rig.proxy.stats()["clients"] == 1
    assert all(rig.holders("paper", i) == 1 for i in everything)  # the fast client's only


async def test_a_client_that_leaves_leaks_no_subscription_and_can_come_back(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys)
    subscribe_paper = {"action": "subscribe", "broker": "paper", "instruments": ["EUR_USD"]}
    subscribe_best = {"action": "subscribe", "instruments": ["EUR_USD"]}
    with trio.fail_after(10):
        async with connect(rig.port) as ws:
            await login(ws, reader_key)
            await send(ws, subscribe_paper)
            await send(ws, subscribe_best)
            await until(ws, "quote")
            assert rig.holders("paper", "EUR_USD") == 2  # its broker sink and its best hold
        await eventually(lambda: rig.holders("paper", "EUR_USD") == 0, "the holds released")
        # Gone mid-subscribe: the connection drops before any reply is read.
        with trio.CancelScope() as abrupt:
            async with connect(rig.port) as ws:
                await login(ws, reader_key)
                await send(ws, subscribe_paper)
                await send(ws, subscribe_best)
                abrupt.cancel()
        await eventually(lambda: rig.proxy.stats()["clients"] == 0, "the session ended")
        await eventually(lambda: rig.holders("paper", "EUR_USD") == 0, "the holds released")
        async with connect(rig.port) as ws:
            await login(ws, reader_key)
            await send(ws, subscribe_paper)
            check_quote(await until(ws, "quote"))
    await eventually(lambda: rig.holders("paper", "EUR_USD") == 0, "the holds released")
    assert rig.mux.feeds["paper"].subscribed == ()
    assert rig.proxy.stats()["errors"] == 0


async def test_after_unsubscribed_no_quote_of_it_arrives(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys, interval=0.002)
    with trio.fail_after(10):
        async with connect(rig.port) as ws:
            await login(ws, reader_key)
            await send(ws, {"action": "subscribe", "broker": "paper", "instruments": ["EUR_USD"]})
            for _ in range(5):
                await until(ws, "quote")
            await send(ws, {"action": "unsubscribe", "broker": "paper"})  # all of it
            assert (await until(ws, "unsubscribed"))["instruments"] == ["EUR_USD"]
            await trio.sleep(0.1)
            await send(ws, {"action": "ping"})
            between = []
            while (message := await receive(ws))["type"] != "pong":
                between.append(message)
    assert between == []
    assert rig.holders("paper", "EUR_USD") == 0


async def test_a_client_that_falls_behind_is_told_how_much_it_skipped(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys, interval=0.001, buffer=2)
    everything = sorted(rig.mux.feeds["paper"].instruments or ())
    with trio.fail_after(10):
        async with connect(rig.port) as ws:
            await login(ws, reader_key)
            await send(ws, {"action": "subscribe", "broker": "paper", "instruments": everything})
            await until(ws, "quote")
            await trio.sleep(0.3)  # not reading: the proxy conflates for us
            while "skipped" not in (quote := await until(ws, "quote")):
                pass
    check_quote(quote)
    assert quote["skipped"] >= 1
    assert rig.proxy.stats()["skipped"] >= quote["skipped"]


async def test_a_failing_handler_ends_only_its_connection(
    nursery: trio.Nursery,
    tmp_path: Path,
    keys: ApiKeys,
    reader_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = await start_rig(nursery, tmp_path, keys)
    subscribe = rig.mux.subscribe

    async def failing(sink: Any, instruments: Any, **kwargs: Any) -> bool:
        if "USD_JPY" in instruments:
            raise RuntimeError("a bug")
        return await subscribe(sink, instruments, **kwargs)

    monkeypatch.setattr(rig.mux, "subscribe", failing)
    with trio.fail_after(10):
        async with connect(rig.port) as bystander, connect(rig.port) as victim:
            await login(bystander, reader_key)
            await login(victim, reader_key)
            await send(
                bystander, {"action": "subscribe", "broker": "paper", "instruments": ["EUR_USD"]}
            )
            await send(
                victim, {"action": "subscribe", "broker": "paper", "instruments": ["AUD_USD"]}
            )
            await until(victim, "subscribed")
            await send(
                victim, {"action": "subscribe", "broker": "paper", "instruments": ["USD_JPY"]}
            )
            closed = await close_reason(victim)
            for _ in range(3):
                check_quote(await until(bystander, "quote"))
        await eventually(lambda: rig.proxy.stats()["clients"] == 0, "the sessions ended")
    assert closed.code == CloseCode.INTERNAL_ERROR == 1011
    assert rig.proxy.stats()["errors"] == 1
    assert rig.holders("paper", "AUD_USD") == 0  # the failed session's holds were released
    reasons = sorted(r.details["reason"] for r in rig.records(EventType.USER_LOGOUT))
    assert reasons == ["client closed (1000)", "error"]


async def test_stopping_the_proxy_closes_sessions_with_1001_at_once(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys)
    proxy = QuoteProxy(rig.mux, rig.hub, ProxyConfig(host=HOST, port=0), keys=keys)
    stop = trio.CancelScope()

    async def serve_until_stopped(task_status: trio.TaskStatus[int]) -> None:
        with stop:
            await proxy.serve(task_status=task_status)

    port = await nursery.start(serve_until_stopped)
    with trio.fail_after(10):
        async with connect(port) as ws:
            await login(ws, reader_key)
            await send(ws, {"action": "subscribe", "broker": "paper", "instruments": ["EUR_USD"]})
            await until(ws, "quote")
            started = trio.current_time()
            stop.cancel()
            closed = await close_reason(ws)
        await eventually(lambda: proxy.port is None, "the proxy stopped")
    assert closed.code == CloseCode.GOING_AWAY == 1001
    assert trio.current_time() - started < 1.5  # not held up by a close handshake
    assert rig.holders("paper", "EUR_USD") == 0


# ---------------------------------------------------------------------------
# events


def an_order() -> Order:
    request = OrderRequest(instrument="EUR_USD", side="buy", quantity=Decimal("1000"))
    return Order(
        request=request,
        broker="paper",
        status=OrderStatus.FILLED,
        filled_quantity=Decimal("1000"),
        average_fill_price=Decimal("1.08513"),
    )


def a_fill(order: Order) -> Fill:
    return Fill(
        fill_id="f-1",
        client_order_id=order.client_order_id,
        instrument="EUR_USD",
        side="buy",
        quantity=Decimal("1000"),
        price=Decimal("1.08513"),
        time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        broker="paper",
        fee=Decimal("0.05"),
    )


async def test_order_and_fill_events_reach_a_subscribed_client(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys)
    order = an_order()
    fill = a_fill(order)
    with trio.fail_after(10):
        async with connect(rig.port) as ws:
            await login(ws, reader_key)
            await send(ws, {"action": "subscribe_events"})
            await until(ws, "subscribed_events")
            rig.hub.publish("momentum", order)
            rig.hub.publish(None, fill)
            order_message = await receive(ws)
            fill_message = await receive(ws)
            await send(ws, {"action": "unsubscribe_events"})
            await until(ws, "unsubscribed_events")
            assert len(rig.hub) == 0
            rig.hub.publish("momentum", order)
            await send(ws, {"action": "ping"})
            assert (await receive(ws))["type"] == "pong"  # no event came in between
    assert order_message == {
        "type": "order",
        "strategy": "momentum",
        "order": json.loads(json.dumps(to_jsonable(order))),
    }
    assert order_message["order"]["average_fill_price"] == "1.08513"
    assert fill_message == {
        "type": "fill",
        "strategy": None,
        "fill": json.loads(json.dumps(to_jsonable(fill))),
    }
    assert fill_message["fill"]["time"] == "2026-01-02T03:04:05+00:00"
    assert rig.proxy.stats()["events_sent"] == 2


async def test_events_that_overflow_close_the_connection_with_4009(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys, event_capacity=5)
    order = an_order()
    with trio.fail_after(10):
        async with connect(rig.port) as ws:
            await login(ws, reader_key)
            await send(ws, {"action": "subscribe_events"})
            await until(ws, "subscribed_events")
            for _ in range(6):  # with no checkpoint between: the proxy cannot keep up
                rig.hub.publish("momentum", order)
            closed = await close_reason(ws)
        await eventually(lambda: rig.records(EventType.USER_LOGOUT), "the logout record")
    assert closed.code == CloseCode.EVENTS_OVERFLOW == 4009
    assert "read the state again" in closed.reason
    assert rig.records(EventType.USER_LOGOUT)[0].details["reason"] == "events overflowed"
    assert len(rig.hub) == 0
    assert rig.proxy.stats()["disconnected_overflow"] == 1


# ---------------------------------------------------------------------------
# rick quotes


async def run_cli(*args: str, key: str | None, **env: str) -> trio.CompletedProcess[bytes]:
    environment = {k: v for k, v in os.environ.items() if k != "RICK_API_KEY"}
    if key is not None:
        environment["RICK_API_KEY"] = key
    environment.update(env)
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "rick_core", "quotes", *args],
            env=environment,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def test_rick_quotes_prints_n_quotes_from_a_running_proxy(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys, brokers=("paper", "paper2"))
    url = f"ws://{HOST}:{rig.port}"
    done = await run_cli(
        "eur_usd", "--broker", "paper", "--url", url, "--count", "3", key=reader_key
    )
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 3
    for line in lines:
        stamp, broker, instrument, _, bid, _, ask, _, spread = line.split()
        assert (broker, instrument) == ("paper", "EUR_USD")
        assert datetime.fromisoformat(stamp).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
        assert Decimal(ask) - Decimal(bid) == Decimal(spread) >= 0

    # JSON lines of best quotes, the URL taken from the config's [proxy].
    config = tmp_path / "rick.toml"
    config.write_text(f"[proxy]\nport = {rig.port}\n", "utf-8")
    done = await run_cli(
        "EUR_USD", "--count", "2", "--json", key=None, RICK_CONFIG=str(config), RICK_API_KEY=""
    )
    assert done.returncode != 0 and b"RICK_API_KEY" in done.stderr  # no key: no connection
    key_file = tmp_path / "key.txt"
    key_file.write_text(reader_key + "\n", "utf-8")
    done = await run_cli(
        "EUR_USD", "--count", "2", "--json", "--key-file", str(key_file), key=None,
        RICK_CONFIG=str(config),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    messages = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert len(messages) == 2
    for message in messages:
        check_quote(message)
        assert message["broker"] == "best" and message["bid_broker"] in ("paper", "paper2")
    assert len(rig.records(EventType.USER_LOGIN)) == 2


async def test_rick_quotes_shows_what_the_proxy_refused(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys)
    url = f"ws://{HOST}:{rig.port}"
    unknown = await run_cli("XYZ_ABC", "--broker", "paper", "--url", url, key=reader_key)
    assert unknown.returncode == 1
    assert b"does not list XYZ_ABC" in unknown.stderr
    refused = await run_cli("EUR_USD", "--url", url, "--count", "1", key=WRONG_KEY)
    assert refused.returncode == 1
    assert b"unknown API key" in refused.stderr
    assert WRONG_KEY.encode() not in refused.stderr + refused.stdout


def test_rick_quotes_without_a_key_says_how_to_make_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RICK_API_KEY", raising=False)
    result = CliRunner().invoke(_build_cli(), ["quotes", "EUR_USD", "--url", "ws://127.0.0.1:1"])
    assert result.exit_code == 1
    assert "rick apikey create NAME --scope read" in result.output
    assert "export RICK_API_KEY=" in result.output


def test_rick_quotes_when_rick_is_not_running(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RICK_API_KEY", WRONG_KEY)
    url = f"ws://{HOST}:{port}"
    result = CliRunner().invoke(_build_cli(), ["quotes", "EUR_USD", "--url", url])
    assert result.exit_code == 1
    assert url in result.output
    assert "rick running" in result.output and "[proxy] enabled" in result.output


# ---------------------------------------------------------------------------
# the protocol document stays true

PROTOCOL_DOC = Path(__file__).resolve().parents[1] / "docs" / "websocket-protocol.md"


def test_the_protocol_document_names_every_code_and_status() -> None:
    text = PROTOCOL_DOC.read_text("utf-8")
    close_table = text.split("## 8. Close codes", 1)[1]
    for code in CloseCode:
        assert f"\n| {int(code)} |" in close_table, f"close code {int(code)} is not documented"
    error_table = text.split("## 5. Errors", 1)[1].split("## 6.", 1)[0]
    for error in ErrorCode:
        assert f"`{error.value}`" in error_table, f"error code {error.value} is not documented"
    for action in ACTIONS:
        assert f"`{action}`" in text
    for status in OrderStatus:
        assert f"`{status.value}`" in text.split("## 4. Event messages", 1)[1]


async def test_the_documented_python_client_works(
    nursery: trio.Nursery, tmp_path: Path, keys: ApiKeys, reader_key: str
) -> None:
    rig = await start_rig(nursery, tmp_path, keys)
    text = PROTOCOL_DOC.read_text("utf-8")
    source = text.split("<!-- example: client -->\n```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {"__name__": "documented_client"}
    exec(compile(source, str(PROTOCOL_DOC), "exec"), namespace)
    with trio.fail_after(10):
        quotes = await namespace["watch"](
            f"ws://{HOST}:{rig.port}", reader_key, ["EUR_USD"], broker="paper", count=3
        )
    assert len(quotes) == 3
    for quote in quotes:
        check_quote(quote)
