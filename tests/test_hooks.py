"""Each hookspec, exercised through a real plugin object registered with the
real plugin manager. The docs meta-test requires a ``test_hook_<name>`` here for
every hook."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import click
import pytest
from click.testing import CliRunner

from rick_core import cli
from rick_core.broker import KEEP, Broker, BrokerEvent, Capabilities, Keep, NotFound
from rick_core.components import ComponentSetup
from rick_core.hookspecs import hookimpl
from rick_core.model import (
    Account,
    Fill,
    Instrument,
    Order,
    OrderRequest,
    OrderStatus,
    Position,
    Quote,
    utc_now,
)
from rick_core.notify import Notification, Notifier
from rick_core.plugins import load_plugins
from rick_core.security.records import Actor, AuditRecord, AuditSink, EventType
from rick_core.symbols import SeparatorSymbolMap


class OneQuoteBroker(Broker):
    """A tiny in-memory broker: enough to show a registered factory is used."""

    capabilities = Capabilities(client_order_ids=True)
    symbols = SeparatorSymbolMap("_")

    def __init__(self, setup: ComponentSetup) -> None:
        self.name = setup.name
        self.price = Decimal(setup.options["price"])
        self.connected = False
        self.orders: dict[str, Order] = {}

    async def connect(self) -> None:
        self.connected = True

    async def close(self) -> None:
        self.connected = False

    async def place_order(self, request: OrderRequest) -> Order:
        order = self.orders.get(request.client_order_id)
        if order is None:
            order = Order(request=request, broker=self.name, status=OrderStatus.ACCEPTED)
            self.orders[request.client_order_id] = order
        return order

    async def cancel_order(self, order: Order) -> Order:
        if order.client_order_id not in self.orders:
            raise NotFound(f"order {order.client_order_id}", broker=self.name)
        return self.orders[order.client_order_id]

    async def replace_order_protection(
        self,
        order: Order,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
    ) -> Order:
        return await self.cancel_order(order)

    async def replace_position_protection(
        self,
        instrument: str,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
    ) -> Position:
        raise NotFound(f"no position in {instrument}", broker=self.name)

    async def open_orders(self, instrument: str | None = None) -> list[Order]:
        return list(self.orders.values())

    async def get_order(self, client_order_id: str) -> Order:
        try:
            return self.orders[client_order_id]
        except KeyError:
            raise NotFound(f"no order {client_order_id}", broker=self.name) from None

    async def fills(self, since: datetime) -> list[Fill]:
        return []  # it never fills anything

    async def positions(self) -> list[Position]:
        return []

    async def account(self) -> Account:
        return Account(broker=self.name, currency="USD", balance=Decimal(0), equity=Decimal(0))

    async def instruments(self) -> list[Instrument]:
        return [Instrument.pair("EUR_USD")]

    async def quote(self, instrument: str) -> Quote:
        return Quote(
            instrument=instrument, bid=self.price, ask=self.price, time=utc_now(), source=self.name
        )

    @asynccontextmanager
    async def stream_quotes(
        self, instruments: Sequence[str]
    ) -> AsyncIterator[AsyncIterator[Quote]]:
        async def quotes() -> AsyncIterator[Quote]:
            for instrument in instruments:
                yield await self.quote(instrument)

        yield quotes()

    @asynccontextmanager
    async def stream_events(self) -> AsyncIterator[AsyncIterator[BrokerEvent]]:
        async def events() -> AsyncIterator[BrokerEvent]:
            for order in self.orders.values():
                yield order

        yield events()


async def test_hook_register_brokers() -> None:
    plugin = SimpleNamespace(
        register_brokers=hookimpl(
            lambda register: register("one", OneQuoteBroker, description="one price")
        )
    )
    plugin_set = load_plugins({}, entry_points=(), extra=[("one-plugin", plugin)])
    component = plugin_set.require("broker", "one")
    assert (component.plugin, component.description) == ("one-plugin", "one price")

    broker = component.factory(ComponentSetup(name="demo", options={"price": "1.2345"}))
    await broker.connect()
    quote = await broker.quote("EUR_USD")
    assert (quote.bid, quote.source) == (Decimal("1.2345"), "demo")
    request = OrderRequest(instrument="EUR_USD", side="buy", quantity=Decimal(1))
    first = await broker.place_order(request)
    assert await broker.place_order(request) is first  # the client order id dedupes
    async with broker.stream_quotes(["EUR_USD", "USD_JPY"]) as quotes:
        assert [q.instrument async for q in quotes] == ["EUR_USD", "USD_JPY"]
    stranger = Order(
        request=OrderRequest(instrument="EUR_USD", side="sell", quantity=1, client_order_id="nope"),
        broker="demo",
    )
    with pytest.raises(NotFound, match="demo: order nope"):
        await broker.cancel_order(stranger)


def test_hook_register_strategies() -> None:
    class Trend:
        def __init__(self, window: int) -> None:
            self.window = window

    plugin = SimpleNamespace(
        register_strategies=hookimpl(lambda register: register("trend", Trend))
    )
    plugin_set = load_plugins({}, entry_points=(), extra=[("strategies", plugin)])
    assert plugin_set.require("strategy", "trend").factory(window=20).window == 20
    assert plugin_set.plugins[-1].registered == {"strategy": ["trend"]}


async def test_hook_register_notifiers() -> None:
    sent: list[Notification] = []

    class ListNotifier(Notifier):
        def __init__(self, setup: ComponentSetup) -> None:
            self.name = setup.name

        async def send(self, notification: Notification) -> None:
            sent.append(notification)

    plugin = SimpleNamespace(
        register_notifiers=hookimpl(lambda register: register("list", ListNotifier))
    )
    plugin_set = load_plugins({}, entry_points=(), extra=[("notify", plugin)])
    assert set(plugin_set.of_kind("notifier")) == {"log", "list"}  # the built-in one too
    notifier = plugin_set.require("notifier", "list").factory(ComponentSetup(name="ops"))
    await notifier.send(Notification(title="filled", level="warning"))
    await notifier.close()
    assert [(n.title, n.level.value) for n in sent] == [("filled", "warning")]


async def test_hook_register_audit_sinks() -> None:
    written: list[AuditRecord] = []
    flushed: list[int] = []

    class MemorySink(AuditSink):
        def __init__(self, setup: ComponentSetup) -> None:
            self.name = setup.name

        async def write(self, record: AuditRecord) -> None:
            written.append(record)

        async def flush(self) -> None:
            flushed.append(len(written))

    plugin = SimpleNamespace(
        register_audit_sinks=hookimpl(lambda register: register("memory", MemorySink))
    )
    sink = (
        load_plugins({}, entry_points=(), extra=[("sink", plugin)])
        .require("audit_sink", "memory")
        .factory(ComponentSetup(name="mem"))
    )
    record = AuditRecord(
        type="ENGINE_STARTED", actor=Actor(kind="system", name="rick", source="engine")
    )
    await sink.write(record)
    await sink.close()  # the default close flushes
    assert written == [record] and record.type is EventType.ENGINE_STARTED
    assert flushed == [1]


def test_hook_register_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    @click.command(name="hello")
    @click.argument("who")
    def hello(who: str) -> None:
        """Say hello."""
        click.echo(f"hello {who}")

    plugin = SimpleNamespace(register_commands=hookimpl(lambda register: register(hello)))
    real_load = load_plugins

    def load_with_plugin(**kwargs: Any) -> Any:
        return real_load({}, entry_points=(), extra=[("greeter", plugin)], **kwargs)

    monkeypatch.setattr("rick_core.plugins.load_plugins", load_with_plugin)
    runner = CliRunner()
    result = runner.invoke(cli._build_cli(), ["hello", "world"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello world\n"
    listing = runner.invoke(cli._build_cli(), ["--help"])
    assert "hello" in listing.output and "Say hello." in listing.output
