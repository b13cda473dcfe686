"""`rick run` serves the WebSocket proxy with the engine: a client with a key
made by `rick apikey create` (a real vault and key file) gets the engine's
live quotes and its strategies' order events, and a bad key is audited."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from rick_core.api.ws import CloseCode
from rick_core.config import load_config
from rick_core.engine.runtime import Engine
from rick_core.logs import close_logging, forget_secrets
from rick_core.plugins import load_plugins
from rick_core.security.apikeys import open_api_keys
from rick_core.security.audit import AuditLog, AuditTrail
from rick_core.security.records import EventType
from rick_core.security.vault import Vault, generate_master_key
from rick_core.store import Store
from rick_core.strategy import Strategy

CONFIG = """
[proxy]
port = 0

[brokers.paper]
kind = "paper"
persist = false
instruments = ["EUR_USD", "BTC_USD"]

[strategies.idle]
kind = "idle"
broker = "paper"
instruments = ["EUR_USD"]
"""


class Idle(Strategy):
    """Trades only when the test says so, through its context."""


class IdlePlugin:
    from rick_core.hookspecs import hookimpl

    @hookimpl
    def register_strategies(self, register: Any) -> None:
        register("idle", Idle)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("RICK_MASTER_KEY", generate_master_key())
    monkeypatch.setenv("RICK_HOME", str(tmp_path))
    yield tmp_path
    close_logging()
    forget_secrets()


async def until_closed(ws: Any, said: list[dict[str, Any]] | None = None) -> Any:
    """Read until the server closes (the messages go to ``said``); its close reason."""
    while True:
        try:
            message = json.loads(await ws.get_message())
        except ConnectionClosed as closed:
            return closed.reason
        if said is not None:
            said.append(message)


async def receive(ws: Any, kind: str) -> dict[str, Any]:
    """The next message of type ``kind`` (others are skipped)."""
    while True:
        message = json.loads(await ws.get_message())
        if message["type"] == kind:
            return message


async def test_rick_run_serves_quotes_and_order_events_to_a_keyed_client(home: Path) -> None:
    vault = Vault.open(home)
    with open_api_keys(home, vault) as keys:
        key = keys.create("dashboard", "read")
    (home / "rick.toml").write_text(CONFIG)
    config = load_config(home / "rick.toml", home=home)
    plugins = load_plugins(entry_points=(), extra=[("idle", IdlePlugin())])
    audit_log = AuditLog.open(home / "audit.db")
    with Store.open(home / "rick.db") as store:
        engine = Engine.from_config(
            config, plugins, store=store, audit=AuditTrail(audit_log), vault=vault
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run)
            with trio.fail_after(20):
                await engine.started.wait()
                assert engine.proxy is not None and engine.proxy.port
                url = f"ws://127.0.0.1:{engine.proxy.port}"

                # A bad key: refused, the connection closed, audited.
                async with open_websocket_url(url) as ws:
                    await ws.send_message(json.dumps({"action": "auth", "key": key[:-4] + "AAAA"}))
                    closed = await until_closed(ws)
                    assert closed.code == CloseCode.AUTH_FAILED

                async with open_websocket_url(url) as ws:
                    await ws.send_message(json.dumps({"action": "auth", "key": key}))
                    assert (await receive(ws, "auth"))["ok"] is True
                    await ws.send_message(
                        json.dumps(
                            {"action": "subscribe", "instruments": ["BTC_USD"], "broker": "paper"}
                        )
                    )
                    await receive(ws, "subscribed")
                    # The strategy follows EUR_USD only: the client's BTC_USD joins
                    # the paper broker's one upstream subscription.
                    assert engine.quotes.feeds["paper"].subscribed == ("BTC_USD", "EUR_USD")
                    quote = await receive(ws, "quote")
                    assert quote["instrument"] == "BTC_USD" and quote["broker"] == "paper"
                    assert Decimal(quote["bid"]) <= Decimal(quote["ask"])

                    await ws.send_message(json.dumps({"action": "subscribe_events"}))
                    await receive(ws, "subscribed_events")
                    order = await engine.runners[0].buy("EUR_USD", 1000)
                    seen = await receive(ws, "order")
                    while seen["order"]["status"] != "filled":
                        seen = await receive(ws, "order")
                    assert seen["strategy"] == "idle"
                    assert seen["order"]["request"]["client_order_id"] == order.client_order_id
                    fill = await receive(ws, "fill")
                    assert fill["fill"]["client_order_id"] == order.client_order_id

                await trio.sleep(0.5)
                # The client left: its BTC_USD left the venue subscription with it.
                assert engine.quotes.feeds["paper"].subscribed == ("EUR_USD",)
            engine.request_stop()
    with AuditLog.open(home / "audit.db") as log:
        records = list(log.query())
    kinds = [r.type for r in records]
    assert EventType.FAILED_AUTHENTICATION in kinds
    assert EventType.USER_LOGIN in kinds and EventType.USER_LOGOUT in kinds
    login = next(r for r in records if r.type is EventType.USER_LOGIN)
    assert login.actor.name == "dashboard" and login.actor.source == "websocket"
    everything = json.dumps([r.details for r in records], default=str)
    assert key not in everything and key.split("_")[-1] not in everything


async def test_without_a_vault_every_key_is_refused_saying_how_to_make_one(home: Path) -> None:
    (home / "rick.toml").write_text(CONFIG)
    config = load_config(home / "rick.toml", home=home)
    plugins = load_plugins(entry_points=(), extra=[("idle", IdlePlugin())])
    with Store.open(home / "rick.db") as store:
        engine = Engine.from_config(config, plugins, store=store)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run)
            with trio.fail_after(20):
                await engine.started.wait()
                assert engine.proxy is not None
                url = f"ws://127.0.0.1:{engine.proxy.port}"
                async with open_websocket_url(url) as ws:
                    await ws.send_message(json.dumps({"action": "auth", "key": "rk_x_y"}))
                    said: list[dict[str, Any]] = []
                    closed = await until_closed(ws, said)
                    assert closed.code == CloseCode.AUTH_FAILED
                    assert any("rick apikey create" in m.get("message", "") for m in said), said
            engine.request_stop()
