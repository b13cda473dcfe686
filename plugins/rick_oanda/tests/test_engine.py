"""rick's engine in-process with a real OandaBroker on the fake v20 server, in live
mode (so the orders go to the venue): the venue's refusals reach the strategy
with v20's reason, an order whose answer is lost is found by its client id and
never sent twice, a dropped transactions stream is reopened without losing or
doubling a fill, and a 429 on an order is retried."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import MakeBroker

from rick_core.config import CanaryConfig
from rick_core.engine.hosting import StrategyRunner
from rick_core.engine.modes import ModeGate, TradingMode, write_mode
from rick_core.engine.runtime import Engine
from rick_core.model import Fill, Order, OrderStatus
from rick_core.store import Store
from rick_core.strategy import Strategy, StrategySetup
from rick_oanda.broker import OandaBroker
from rick_oanda.fake import FakeV20

INSTRUMENT = "EUR_USD"


class Recorder(Strategy):
    """Trades only when the test says so, through its context; keeps every
    order update and fill the engine hands it."""

    def __init__(self, setup: StrategySetup) -> None:
        super().__init__(setup)
        self.orders: list[Order] = []
        self.fills: list[Fill] = []

    async def on_order(self, order: Order) -> None:
        self.orders.append(order)

    async def on_fill(self, fill: Fill) -> None:
        self.fills.append(fill)

    def seen(self, client_order_id: str) -> list[Order]:
        return [o for o in self.orders if o.client_order_id == client_order_id]


@asynccontextmanager
async def running(
    tmp_path: Path, broker: OandaBroker
) -> AsyncIterator[tuple[Engine, StrategyRunner, Recorder, Store]]:
    """The engine in live mode on ``broker``, started; stopped on the way out."""
    write_mode(tmp_path, TradingMode.LIVE, actor="test")
    strategy = Recorder(StrategySetup(name="rec", broker="oanda", instruments=(INSTRUMENT,)))
    with Store.open(tmp_path / "rick.db") as store:
        engine = Engine(
            store=store,
            brokers={"oanda": broker},
            strategies=[(strategy, "oanda", (INSTRUMENT,))],
            modes=ModeGate.load(tmp_path, CanaryConfig()),
            home=tmp_path,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run)
            with trio.fail_after(10):
                await engine.started.wait()
            await eventually(lambda: engine.runners[0].last_quote(INSTRUMENT) is not None)
            assert engine.modes is not None and engine.modes.mode is TradingMode.LIVE
            yield engine, engine.runners[0], strategy, store
            engine.request_stop("test over")


async def eventually(condition: Callable[[], Any], within: float = 5.0) -> None:
    """Wait until ``condition()`` holds (polling; fails after ``within`` seconds)."""
    with trio.fail_after(within):
        for _ in itertools.count():
            if condition():
                return
            await trio.sleep(0.02)


def final_status(strategy: Recorder, client_order_id: str) -> OrderStatus | None:
    seen = strategy.seen(client_order_id)
    return seen[-1].status if seen else None


# -- (a) the venue's refusals ------------------------------------------------


@pytest.mark.parametrize(
    ("refuse", "reason"),
    [
        ("reject", "INSUFFICIENT_MARGIN"),
        ("reject", "UNITS_LIMIT_EXCEEDED"),
        ("cancel", "MARKET_HALTED"),
    ],
)
async def test_a_refused_order_reaches_the_strategy_with_the_venues_reason(
    tmp_path: Path, fake_v20: FakeV20, make_broker: MakeBroker, refuse: str, reason: str
) -> None:
    async with running(tmp_path, make_broker()) as (_, ctx, strategy, store):
        if refuse == "reject":
            fake_v20.reject_next_order(reason)
        else:
            fake_v20.cancel_next_order(reason)

        order = await ctx.buy(INSTRUMENT, 1000)

        assert order.status is OrderStatus.REJECTED
        assert order.reject_reason is not None and reason in order.reject_reason
        coid = order.client_order_id
        await eventually(lambda: final_status(strategy, coid) is OrderStatus.REJECTED)
        assert reason in (strategy.seen(coid)[-1].reject_reason or "")
        # The venue's stream tells of it too (the reject or the create and cancel
        # transactions): the order stays rejected, with the same reason.
        await trio.sleep(0.5)
        stored = store.get_order(coid)
        assert stored is not None and stored.status is OrderStatus.REJECTED
        assert reason in (stored.reject_reason or "")
        assert final_status(strategy, coid) is OrderStatus.REJECTED
        assert not ctx.open_orders(INSTRUMENT) and ctx.position(INSTRUMENT) is None
    assert fake_v20.count("POST", "/orders") == 1
    assert strategy.fills == [] and fake_v20.trades == {}


# -- (b) a lost answer ---------------------------------------------------------


async def test_an_unanswered_order_is_found_by_client_id_and_never_resent(
    tmp_path: Path, fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    async with running(tmp_path, make_broker(timeout=0.5)) as (_, ctx, strategy, store):
        fake_v20.swallow_next_order()

        with trio.fail_after(10):
            order = await ctx.buy(INSTRUMENT, 1000)

        coid = order.client_order_id
        assert order.status is OrderStatus.FILLED, order
        statuses = [o.status for o in strategy.seen(coid)]
        # The answer was lost: the order went UNKNOWN, unless the transactions
        # stream delivered its fill first (a race the engine may win either way).
        if OrderStatus.UNKNOWN in statuses:
            assert statuses.index(OrderStatus.UNKNOWN) < statuses.index(OrderStatus.FILLED)
        assert statuses[-1] is OrderStatus.FILLED
        await eventually(lambda: len(strategy.fills) == 1)  # the fill came all the same
        await trio.sleep(0.5)
        stored = store.get_order(coid)
        assert stored is not None and stored.status is OrderStatus.FILLED
        assert stored.filled_quantity == 1000
        position = ctx.position(INSTRUMENT)
        assert position is not None and position.quantity == 1000
        # Exactly one POST, looked up afterwards by client id: one order, one fill.
        assert fake_v20.count("POST", "/orders") == 1
        assert fake_v20.count("GET", f"/orders/@{coid}") >= 1
        venue = fake_v20.order("@" + coid)
        assert venue is not None and venue["state"] == "FILLED"
        fills = [t for t in fake_v20.transactions if t["type"] == "ORDER_FILL"]
        assert [t["clientOrderID"] for t in fills] == [coid]
        assert [f.fill_id for f in store.fills()] == [str(fills[0]["id"])]
        assert [f.fill_id for f in strategy.fills] == [str(fills[0]["id"])]


# -- (c) a dropped transactions stream ---------------------------------------


async def test_a_fill_while_the_transactions_stream_is_down_is_stored_once(
    tmp_path: Path, fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    async with running(tmp_path, make_broker()) as (engine, ctx, strategy, store):
        await eventually(lambda: fake_v20.open_streams("transactions") == 1)
        bid, _ = fake_v20.price(INSTRUMENT)
        limit = bid - Decimal("0.00500")  # far below the random walk
        order = await ctx.buy(INSTRUMENT, 1000, limit=limit)
        assert order.status is OrderStatus.ACCEPTED
        coid = order.client_order_id
        opened = fake_v20.stream_connections["transactions"]

        fake_v20.drop_streams("transactions")
        # Before the dropped stream could send anything: the limit fills now.
        fake_v20.set_price(INSTRUMENT, limit - Decimal("0.00010"), limit - Decimal("0.00002"))
        fills = [t for t in fake_v20.transactions if t["type"] == "ORDER_FILL"]
        assert [t["clientOrderID"] for t in fills] == [coid]

        # The engine reopens the stream and catches up on what it missed.
        await eventually(lambda: fake_v20.stream_connections["transactions"] > opened)
        await eventually(lambda: final_status(strategy, coid) is OrderStatus.FILLED)
        await eventually(lambda: len(store.fills()) == 1)
        await trio.sleep(1.5)  # room for a second delivery (replay, reconciliation)
        assert fake_v20.open_streams("transactions") == 1
        assert [f.fill_id for f in store.fills()] == [str(fills[0]["id"])]
        assert [f.fill_id for f in strategy.fills] == [str(fills[0]["id"])]
        stored = store.get_order(coid)
        assert stored is not None and stored.status is OrderStatus.FILLED
        assert stored.average_fill_price == limit - Decimal("0.00002")
        position = ctx.position(INSTRUMENT)
        assert position is not None and position.quantity == 1000
        events = engine.services["oanda"].event_feed
        assert events.reconnects >= 1 and events.failures >= 1 and events.healthy
        assert fake_v20.stream_connections["pricing"] == 1  # the pricing stream stayed up
    assert fake_v20.count("GET", "/transactions/sinceid") >= 2  # at the start, and after


# -- (d) a 429 on an order ------------------------------------------------------


async def test_an_order_answered_429_is_retried_and_fills(
    tmp_path: Path, fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    broker = make_broker()
    async with running(tmp_path, broker) as (_, ctx, strategy, store):
        fake_v20.fail_next(1, status=429, path_contains="/orders")

        order = await ctx.sell(INSTRUMENT, 2000)

        assert order.status is OrderStatus.FILLED, order
        coid = order.client_order_id
        await eventually(lambda: len(strategy.fills) == 1)
        stored = store.get_order(coid)
        assert stored is not None and stored.status is OrderStatus.FILLED
        position = ctx.position(INSTRUMENT)
        assert position is not None and position.quantity == -2000
        assert broker.http.rate_limited == 1
        assert fake_v20.count("POST", "/orders") == 2  # the refused one and the retry
        fills = [t for t in fake_v20.transactions if t["type"] == "ORDER_FILL"]
        assert [(t["clientOrderID"], t["units"]) for t in fills] == [(coid, "-2000")]
        assert [f.fill_id for f in store.fills()] == [str(fills[0]["id"])]
