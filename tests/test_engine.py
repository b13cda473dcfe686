"""The engine end to end: paper broker, order manager, store and strategies, on
trio's autojump clock (simulated seconds pass instantly and deterministically)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from rick_core.components import ComponentSetup
from rick_core.config import load_config
from rick_core.engine.runtime import Engine, EngineError
from rick_core.model import Fill, Order, OrderRequest, OrderStatus, Quote
from rick_core.paper.broker import PaperBroker
from rick_core.plugins import load_plugins
from rick_core.reports import net_positions
from rick_core.store import Store
from rick_core.strategy import Strategy, StrategySetup, TradingHalted


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "rick.db") as s:
        yield s


def paper(tmp_path: Path, name: str = "paper", **options: Any) -> PaperBroker:
    options.setdefault("persist", False)
    options.setdefault("seed", 7)
    return PaperBroker(ComponentSetup(name=name, options=options, home=tmp_path))


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rick.toml"
    path.write_text(text, "utf-8")
    return path


EXAMPLE = """
[brokers.paper]
kind = "paper"
seed = 3
persist = false

[strategies.example]
kind = "momentum"
broker = "paper"
instruments = ["EUR_USD", "GBP_USD", "USD_JPY", "BTC_USD", "ETH_USD", "AAPL"]
"""


async def test_example_strategy_trades_end_to_end(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    config = load_config(write_config(tmp_path, EXAMPLE), home=tmp_path)
    engine = Engine.from_config(config, load_plugins(entry_points=()), store=store)
    await engine.run(duration=300)

    orders = store.orders()
    fills = store.fills()
    assert engine.stopped and engine.stop_reason == "duration reached"
    assert len(orders) >= 5, "the example strategy should trade within five simulated minutes"
    assert fills, "market orders on the paper broker fill"
    # No order is left pending; every stored order is final or still working.
    assert {o.status for o in orders} <= {
        OrderStatus.ACCEPTED,
        OrderStatus.PARTIALLY_FILLED,
        OrderStatus.FILLED,
        OrderStatus.CANCELED,
        OrderStatus.REJECTED,
        OrderStatus.EXPIRED,
    }
    by_id = {o.client_order_id: o for o in orders}
    for fill in fills:
        assert fill.client_order_id in by_id, f"fill {fill.fill_id} has no stored order"
    # Each order's filled quantity is the sum of its stored fills.
    for order in orders:
        filled = sum(
            (f.quantity for f in fills if f.client_order_id == order.client_order_id), Decimal(0)
        )
        assert filled == order.filled_quantity, order.client_order_id
    # Entries belong to the strategy; protective closes descend from them.
    entries = [o for o in orders if o.request.tag == "momentum"]
    assert entries and all(store.strategy_of(o.client_order_id) == "example" for o in entries)
    closes = [o for o in orders if o.request.tag in ("stop_loss", "take_profit")]
    for close in closes:
        parent = close.client_order_id.split(".")[0]
        assert parent in by_id
    # The example shows its three moves: entries, a trailing stop, and a take
    # profit cancelled to let a winner run.
    momentum = engine.runners[0].strategy
    assert momentum.entries >= 5  # type: ignore[attr-defined]
    assert momentum.trails >= 1  # type: ignore[attr-defined]
    assert momentum.runners >= 1  # type: ignore[attr-defined]
    # The positions derived from the stored fills are the broker's positions.
    broker = engine.services["paper"].broker
    assert isinstance(broker, PaperBroker)
    derived = {p.instrument: p.quantity for p in net_positions(fills) if p.quantity}
    # the broker is closed after the run: its positions were saved to the store's account
    snapshots = store.accounts()
    assert [s.account.broker for s in snapshots] == ["paper"]
    assert derived == engine.final_positions["paper"]


async def test_example_places_first_orders_within_ten_seconds_on_defaults(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    config = load_config(None, home=tmp_path)
    assert [b.kind for b in config.brokers.values()] == ["paper"]
    assert [s.kind for s in config.strategies.values()] == ["momentum"]
    engine = Engine.from_config(config, load_plugins(entry_points=()), store=store)
    await engine.run(duration=10)
    assert store.orders(), "the default example strategy placed no order in 10 seconds"


class Scripted(Strategy):
    """Places the orders it is given at start and records everything it sees."""

    script: list[dict[str, Any]] = []

    def __init__(self, setup: StrategySetup) -> None:
        super().__init__(setup)
        self.seen: list[Order | Fill | Quote | str] = []
        self.results: list[Order | BaseException] = []

    async def on_start(self) -> None:
        for step in self.script:
            step = dict(step)
            side = step.pop("side")
            try:
                order = await getattr(self.ctx, side)(**step)
                self.results.append(order)
            except (TradingHalted, trio.Cancelled) as exc:
                self.results.append(exc)
                raise

    async def on_fill(self, fill: Fill) -> None:
        self.seen.append(fill)

    async def on_order(self, order: Order) -> None:
        self.seen.append(order)


def scripted(script: list[dict[str, Any]], name: str = "s") -> Scripted:
    strategy = Scripted(StrategySetup(name=name, broker="paper", instruments=("EUR_USD",)))
    strategy.script = script
    return strategy


async def test_order_round_trip_reaches_store_and_strategy(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    strategy = scripted([{"side": "buy", "instrument": "EUR_USD", "quantity": 1000}])
    engine = Engine(
        store=store,
        brokers={"paper": paper(tmp_path, instruments=["EUR_USD"])},
        strategies=[(strategy, "paper", ("EUR_USD",))],
    )
    await engine.run(duration=5)
    (order,) = store.orders()
    assert order.status is OrderStatus.FILLED
    assert store.strategy_of(order.client_order_id) == "s"
    (fill,) = store.fills()
    assert fill.client_order_id == order.client_order_id
    # The strategy saw its fill, and the position it found then includes the fill.
    fills = [e for e in strategy.seen if isinstance(e, Fill)]
    assert fills == [fill]
    assert strategy.results[0].status is OrderStatus.FILLED  # type: ignore[union-attr]


async def test_rejection_is_stored_with_reason_and_returned(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    strategy = scripted([{"side": "buy", "instrument": "EUR_USD", "quantity": 10**12}])
    engine = Engine(
        store=store,
        brokers={"paper": paper(tmp_path, instruments=["EUR_USD"])},
        strategies=[(strategy, "paper", ("EUR_USD",))],
    )
    await engine.run(duration=1)
    (order,) = store.orders()
    assert order.status is OrderStatus.REJECTED
    assert order.reject_reason and "margin" in order.reject_reason
    assert strategy.results[0] == order


class SlowPaper(PaperBroker):
    """A paper broker whose venue takes ``delay`` seconds to answer an order."""

    delay = 10.0

    async def place_order(self, request: OrderRequest) -> Order:
        await trio.sleep(self.delay)
        return await super().place_order(request)


def slow(tmp_path: Path, delay: float) -> SlowPaper:
    broker = SlowPaper(
        ComponentSetup(
            name="paper", options={"persist": False, "instruments": ["EUR_USD"]}, home=tmp_path
        )
    )
    broker.delay = delay
    return broker


async def test_graceful_stop_drains_an_order_in_flight(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    strategy = scripted([{"side": "buy", "instrument": "EUR_USD", "quantity": 1000}])
    engine = Engine(
        store=store,
        brokers={"paper": slow(tmp_path, 2.0)},
        strategies=[(strategy, "paper", ("EUR_USD",))],
        drain_timeout=5,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await engine.started.wait()
        await trio.sleep(1)  # the order is at the venue now
        engine.request_stop("test")
    (order,) = store.orders()
    assert order.status is OrderStatus.FILLED


async def test_stop_past_the_drain_deadline_leaves_orders_resumable(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    strategy = scripted([{"side": "buy", "instrument": "EUR_USD", "quantity": 1000}])
    engine = Engine(
        store=store,
        brokers={"paper": slow(tmp_path, 60.0)},
        strategies=[(strategy, "paper", ("EUR_USD",))],
        drain_timeout=2,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await engine.started.wait()
        await trio.sleep(1)
        engine.request_stop("test")
    (order,) = store.orders()
    # Sent but never answered: left for reconciliation, never "pending".
    assert order.status is OrderStatus.UNKNOWN
    assert order.reject_reason and "reconcile" in order.reject_reason
    assert isinstance(strategy.results[-1], trio.Cancelled)


async def test_forced_stop_mid_order_leaves_the_store_consistent(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    strategy = scripted(
        [
            {"side": "buy", "instrument": "EUR_USD", "quantity": 1000},
            {"side": "sell", "instrument": "EUR_USD", "quantity": 1000},
        ]
    )
    engine = Engine(
        store=store,
        brokers={"paper": slow(tmp_path, 5.0)},
        strategies=[(strategy, "paper", ("EUR_USD",))],
        drain_timeout=30,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await engine.started.wait()
        await trio.sleep(7)  # first order filled, second in flight
        engine.request_stop("first ctrl-c")
        await trio.sleep(0.5)
        engine.force_stop()
    assert engine.forced
    first, second = store.orders()
    assert first.status is OrderStatus.FILLED
    assert second.status is OrderStatus.UNKNOWN
    assert store.fills()[0].client_order_id == first.client_order_id


async def test_no_new_orders_once_stopping(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    engine = Engine(store=store, brokers={"paper": paper(tmp_path)}, strategies=[])
    engine.oms.stop_accepting()
    with pytest.raises(TradingHalted):
        await engine.oms.submit(
            "s", "paper", OrderRequest(instrument="EUR_USD", side="buy", quantity=1)
        )
    assert store.orders() == []


async def test_a_broker_that_cannot_connect_stops_start_up_with_its_reason(
    tmp_path: Path, store: Store
) -> None:
    broker = paper(tmp_path, replay=str(tmp_path / "missing.jsonl"))
    engine = Engine(store=store, brokers={"paper": broker}, strategies=[])
    with pytest.raises(EngineError, match=r"broker 'paper' failed to connect: .*missing\.jsonl"):
        await engine.run(duration=1)
