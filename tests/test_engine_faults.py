"""The engine when venues and disks misbehave: nothing is lost, nothing moves backwards,
and a stop request is always honoured."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from rick_core.broker import BrokerError, Disconnected, RateLimited, TemporarilyUnavailable
from rick_core.components import ComponentSetup
from rick_core.engine.oms import OrderManager
from rick_core.engine.runtime import Engine
from rick_core.model import Fill, Order, OrderRequest, OrderStatus, Position, Quote
from rick_core.paper.broker import PaperBroker
from rick_core.store import Store
from rick_core.strategy import Strategy, StrategySetup


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "rick.db") as s:
        yield s


def make(cls: type[PaperBroker], tmp_path: Path, **options: Any) -> Any:
    options.setdefault("persist", False)
    options.setdefault("instruments", ["EUR_USD"])
    return cls(ComponentSetup(name="paper", options=options, home=tmp_path))


class Buyer(Strategy):
    request: dict[str, Any] = {"instrument": "EUR_USD", "quantity": 1000}

    def __init__(self) -> None:
        super().__init__(StrategySetup(name="s", broker="paper", instruments=("EUR_USD",)))
        self.seen: list[Order | Fill] = []
        self.result: Order | None = None

    async def on_start(self) -> None:
        self.result = await self.ctx.buy(**self.request)

    async def on_order(self, order: Order) -> None:
        self.seen.append(order)

    async def on_fill(self, fill: Fill) -> None:
        self.seen.append(fill)


@pytest.mark.parametrize("error", [TemporarilyUnavailable, RateLimited])
async def test_a_fill_survives_a_failed_position_refresh(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock, error: type[BrokerError]
) -> None:
    class FlakyPositions(PaperBroker):
        calls = 0
        armed = False

        async def place_order(self, request: OrderRequest) -> Order:
            self.armed = True
            return await super().place_order(request)

        async def positions(self) -> list[Position]:
            if self.armed:
                self.calls += 1
                if self.calls == 2:  # the refresh on the fill event
                    raise error("positions endpoint timed out", broker=self.name)
            return await super().positions()

    strategy = Buyer()
    engine = Engine(
        store=store,
        brokers={"paper": make(FlakyPositions, tmp_path)},
        strategies=[(strategy, "paper", ("EUR_USD",))],
    )
    await engine.run(duration=5)
    (order,) = store.orders()
    assert order.status is OrderStatus.FILLED
    (fill,) = store.fills()
    assert [e for e in strategy.seen if isinstance(e, Fill)] == [fill]


async def test_a_local_error_after_the_venue_accepted_does_not_bury_the_order(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    class GarbledReply(PaperBroker):
        async def place_order(self, request: OrderRequest) -> Order:
            await super().place_order(request)  # the venue has it...
            await trio.sleep(0.01)  # ...its stream says so...
            raise BrokerError("could not parse the venue's response", broker=self.name)

    strategy = Buyer()
    strategy.request = {"instrument": "EUR_USD", "quantity": 1000, "limit": "1.00000"}
    broker = make(GarbledReply, tmp_path)
    engine = Engine(
        store=store, brokers={"paper": broker}, strategies=[(strategy, "paper", ("EUR_USD",))]
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await engine.started.wait()
        await trio.sleep(1)
        (order,) = store.orders()
        # rick still knows it as working, so it can still be cancelled
        assert order.status is OrderStatus.ACCEPTED
        assert strategy.result is not None and strategy.result.status is OrderStatus.ACCEPTED
        assert [o.status for o in await broker.open_orders()] == [OrderStatus.ACCEPTED]
        engine.request_stop()


async def test_a_late_echo_never_undoes_a_newer_protection_change(
    tmp_path: Path, store: Store
) -> None:
    broker = make(PaperBroker, tmp_path)
    oms = OrderManager(store, {"paper": broker}, lambda owner, event: None)
    await broker.connect()
    order = await oms.submit(
        "s",
        "paper",
        OrderRequest(
            instrument="EUR_USD",
            side="buy",
            quantity=1000,
            type="limit",
            limit_price=Decimal("1.00000"),
            stop_loss=Decimal("0.99000"),
        ),
    )
    newer = attrs.evolve(
        order,
        request=attrs.evolve(order.request, stop_loss=Decimal("0.99500")),
        updated_at=order.updated_at + timedelta(seconds=1),
    )
    oms.apply([newer], durable=True)
    oms.apply([order], durable=True)  # the venue's stream repeats the older state
    known = oms.known(order.client_order_id)
    assert known is not None and known.request.stop_loss == Decimal("0.99500")
    stored = store.get_order(order.client_order_id)
    assert stored is not None and stored.request.stop_loss == Decimal("0.99500")
    await broker.close()


async def test_order_states_waiting_to_be_written_survive_a_store_error(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = make(PaperBroker, tmp_path)
    oms = OrderManager(store, {"paper": broker}, lambda owner, event: None)
    await broker.connect()
    order = await oms.submit(
        "s",
        "paper",
        OrderRequest(
            instrument="EUR_USD",
            side="buy",
            quantity=1000,
            type="limit",
            limit_price=Decimal("1.00000"),
        ),
    )
    assert order.status is OrderStatus.ACCEPTED
    assert store.get_order(order.client_order_id).status is OrderStatus.NEW  # type: ignore[union-attr]
    real = store.record

    def failing_once(**kw: Any) -> list[Fill]:
        monkeypatch.setattr(store, "record", real)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "record", failing_once)
    fill = Fill(
        fill_id="x1",
        client_order_id="elsewhere",
        instrument="EUR_USD",
        side="buy",
        quantity=1,
        price=Decimal("1.1"),
        time=order.created_at,
        broker="paper",
    )
    with pytest.raises(sqlite3.OperationalError):
        oms.apply([fill])
    oms.flush()
    assert store.get_order(order.client_order_id).status is OrderStatus.ACCEPTED  # type: ignore[union-attr]
    await broker.close()


class QuotesDown(PaperBroker):
    """A venue whose quote feed refuses every subscription."""

    @asynccontextmanager
    async def stream_quotes(
        self, instruments: Sequence[str]
    ) -> AsyncIterator[AsyncIterator[Quote]]:
        raise Disconnected("quote feed down", broker=self.name)
        yield  # pragma: no cover


async def test_a_stop_request_during_start_up_is_honoured(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    engine = Engine(
        store=store,
        brokers={"paper": make(QuotesDown, tmp_path)},
        strategies=[(Buyer(), "paper", ("EUR_USD",))],
        drain_timeout=2,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await trio.sleep(3)  # still waiting for the quote subscription
        assert not engine.started.is_set()
        engine.request_stop("SIGINT")
        with trio.fail_after(10):
            await engine.finished.wait()


async def test_a_feed_that_stays_down_does_not_block_the_strategies_forever(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    strategy = Buyer()
    engine = Engine(
        store=store,
        brokers={"paper": make(QuotesDown, tmp_path)},
        strategies=[(strategy, "paper", ("EUR_USD",))],
    )
    await engine.run(duration=30)
    assert engine.started.is_set()
    assert strategy.result is not None and strategy.result.status is OrderStatus.FILLED


async def test_a_fast_simulated_market_runs_under_the_autojump_clock(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    class Count(Strategy):
        quotes = 0

        async def on_quote(self, quote: Quote) -> None:
            self.quotes += 1

    strategy = Count(StrategySetup(name="c", broker="paper", instruments=("EUR_USD",)))
    engine = Engine(
        store=store,
        brokers={"paper": make(PaperBroker, tmp_path, speed=20, interval=0.5)},
        strategies=[(strategy, "paper", ("EUR_USD",))],
    )
    with trio.fail_after(60):
        await engine.run(duration=10)
    # 10 s at speed 20 is 200 simulated seconds: about 400 quotes at 0.5 s
    assert 300 <= strategy.quotes <= 500


class AcceptsThenSilent(PaperBroker):
    """The venue takes the order, and its answer never comes back."""

    calls = 0

    async def place_order(self, request: OrderRequest) -> Order:
        self.calls += 1
        await super().place_order(request)
        await trio.sleep_forever()
        raise AssertionError("unreachable")


class LostOnTheWay(PaperBroker):
    """The submit disappears before it reaches the venue."""

    calls = 0

    async def place_order(self, request: OrderRequest) -> Order:
        self.calls += 1
        await trio.sleep_forever()
        raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("cls", "status"),
    [(AcceptsThenSilent, OrderStatus.FILLED), (LostOnTheWay, OrderStatus.REJECTED)],
)
async def test_an_unanswered_submit_is_looked_up_by_client_id_and_never_resent(
    tmp_path: Path,
    store: Store,
    autojump_clock: trio.testing.MockClock,
    cls: type[PaperBroker],
    status: OrderStatus,
) -> None:
    broker = make(cls, tmp_path)
    strategy = Buyer()
    engine = Engine(
        store=store, brokers={"paper": broker}, strategies=[(strategy, "paper", ("EUR_USD",))]
    )
    engine.oms.send_timeout = 2.0
    await engine.run(duration=30)
    (order,) = store.orders()
    assert order.status is status
    assert broker.calls == 1  # type: ignore[attr-defined]
    assert strategy.result is not None and strategy.result.status is status
    if status is OrderStatus.REJECTED:
        assert "never received it" in (order.reject_reason or "")
        assert "not sent again" in (order.reject_reason or "")
    else:
        assert store.fills() and store.fills()[0].client_order_id == order.client_order_id
