"""The strategy SDK: parameters, hosting (order of events, errors, timers,
subscriptions) and the context a strategy acts through."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from attrs import frozen

from rick_core.components import ComponentSetup
from rick_core.engine.hosting import QUOTE_BUFFER, _Inbox
from rick_core.engine.runtime import Engine
from rick_core.model import Fill, Order, OrderStatus, OrderType, Quote, TimeInForce
from rick_core.paper.broker import PaperBroker
from rick_core.store import Store
from rick_core.strategy import Strategy, StrategyError, StrategySetup


class WithParams(Strategy):
    @frozen
    class Params:
        quantity: Decimal = Decimal(1000)
        lookback: int = 20
        every: float = 1.0
        name: str = "x"
        enabled: bool = True
        stop: Decimal | None = None


def build(params: dict[str, Any], cls: type[Strategy] = WithParams) -> Any:
    return cls(
        StrategySetup(
            name="s1",
            broker="paper",
            instruments=(),
            params=params,
            source="rick.toml [strategies.s1]",
        )
    ).params


def test_params_are_checked_and_converted() -> None:
    p = build({"quantity": 250, "lookback": Decimal(5), "every": Decimal("0.5"), "stop": "1.05"})
    assert p.quantity == Decimal(250) and isinstance(p.quantity, Decimal)
    assert p.lookback == 5 and isinstance(p.lookback, int)
    assert p.every == 0.5
    assert p.stop == Decimal("1.05")
    assert build({}).quantity == Decimal(1000)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"quantiy": 1},
            r"strategy 's1' \(rick.toml \[strategies.s1\]\): unknown parameter\(s\) "
            r"quantiy; WithParams takes: quantity, lookback",
        ),
        ({"quantity": 0.1}, r"parameter quantity must be a number, got 0.1"),
        ({"quantity": True}, r"parameter quantity must be a number"),
        ({"lookback": Decimal("2.5")}, r"parameter lookback must be a whole number"),
        ({"enabled": "yes"}, r"parameter enabled must be true or false"),
        ({"name": 3}, r"parameter name must be a string"),
    ],
)
def test_bad_params_name_the_strategy_and_the_parameter(
    params: dict[str, Any], message: str
) -> None:
    with pytest.raises(StrategyError, match=message):
        build(params)


def test_without_params_class_the_table_is_passed_as_written() -> None:
    class Plain(Strategy):
        pass

    assert build({"anything": Decimal("1.5")}, Plain) == {"anything": Decimal("1.5")}


def q(instrument: str, bid: str, ask: str, seconds: int = 0) -> Quote:
    time = datetime(2026, 1, 5, tzinfo=UTC) + timedelta(seconds=seconds)
    return Quote(instrument=instrument, bid=bid, ask=ask, time=time, source="paper")


async def test_inbox_gives_events_before_quotes_and_conflates_only_when_full() -> None:
    inbox = _Inbox()
    for i in range(QUOTE_BUFFER):
        inbox.put_quote(q("EUR_USD" if i % 2 else "GBP_USD", "1.1", "1.2", i))
    assert inbox.quotes_conflated == 0
    inbox.put_quote(q("EUR_USD", "1.3", "1.4", QUOTE_BUFFER))
    # Full: only the latest quote of each instrument is kept, oldest first.
    assert inbox.quotes_conflated == QUOTE_BUFFER + 1 - 2
    fill = Fill(
        fill_id="f1",
        client_order_id="rk1",
        instrument="EUR_USD",
        side="buy",
        quantity=1,
        price="1.2",
        time=datetime(2026, 1, 5, tzinfo=UTC),
        broker="paper",
    )
    inbox.put_event(fill)
    assert await inbox.take() == fill
    first, second = await inbox.take(), await inbox.take()
    assert isinstance(first, Quote) and first.instrument == "GBP_USD"
    assert isinstance(second, Quote) and second.bid == Decimal("1.3")
    inbox.close()
    assert await inbox.take() is None


# -- hosted behaviour, on the paper broker and trio's autojump clock ---------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "rick.db") as s:
        yield s


def paper(tmp_path: Path) -> PaperBroker:
    options = {"persist": False, "instruments": ["EUR_USD", "GBP_USD", "BTC_USD"], "seed": 2}
    return PaperBroker(ComponentSetup(name="paper", options=options, home=tmp_path))


class Recorder(Strategy):
    def __init__(self, setup: StrategySetup) -> None:
        super().__init__(setup)
        self.quotes: list[Quote] = []
        self.timers: list[tuple[str, float]] = []
        self.events: list[Order | Fill] = []
        self.calls: list[str] = []

    async def on_start(self) -> None:
        self.calls.append("start")
        self.ctx.schedule(2.0, "every2")

    async def on_quote(self, quote: Quote) -> None:
        self.quotes.append(quote)
        if len(self.quotes) == 3:
            raise RuntimeError("a bug in the strategy")

    async def on_timer(self, name: str) -> None:
        self.timers.append((name, trio.current_time()))

    async def on_fill(self, fill: Fill) -> None:
        self.events.append(fill)

    async def on_order(self, order: Order) -> None:
        self.events.append(order)

    async def on_stop(self) -> None:
        self.calls.append("stop")


def recorder(name: str = "rec", instruments: tuple[str, ...] = ("EUR_USD",)) -> Recorder:
    return Recorder(StrategySetup(name=name, broker="paper", instruments=instruments))


async def test_a_failing_handler_is_logged_and_the_strategy_carries_on(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    strategy = recorder()
    engine = Engine(
        store=store,
        brokers={"paper": paper(tmp_path)},
        strategies=[(strategy, "paper", ("EUR_USD",))],
    )
    await engine.run(duration=10)
    assert len(strategy.quotes) > 10, "quotes kept coming after the handler raised"
    assert engine.runners[0].errors == 1
    assert {quote.instrument for quote in strategy.quotes} == {"EUR_USD"}
    assert strategy.calls == ["start", "stop"]
    # timers fire every 2 s from start
    assert [name for name, _ in strategy.timers] == ["every2"] * len(strategy.timers)
    times = [t for _, t in strategy.timers]
    assert len(times) >= 4 and all(abs((b - a) - 2.0) < 1e-6 for a, b in itertools.pairwise(times))


class FailsToStart(Strategy):
    async def on_start(self) -> None:
        raise ValueError("no")


async def test_a_strategy_that_fails_to_start_does_not_stop_the_others(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    good = recorder("good")
    bad = FailsToStart(StrategySetup(name="bad", broker="paper", instruments=("EUR_USD",)))
    engine = Engine(
        store=store,
        brokers={"paper": paper(tmp_path)},
        strategies=[(bad, "paper", ("EUR_USD",)), (good, "paper", ("EUR_USD",))],
    )
    await engine.run(duration=5)
    assert good.quotes and engine.status()["strategies"]["bad"]["errors"] == 1


class Trader(Recorder):
    """Subscribes to more, places and cancels a resting limit, moves protection."""

    async def on_start(self) -> None:
        await self.ctx.subscribe("GBP_USD")
        quote = self.ctx.last_quote("EUR_USD")
        assert quote is not None
        instrument = self.ctx.instrument("EUR_USD")
        assert instrument is not None and instrument.price_increment == Decimal("0.00001")
        rest = await self.ctx.buy(
            "EUR_USD", 1000, limit=(quote.bid * Decimal("0.9")).quantize(Decimal("0.00001"))
        )
        assert rest.status is OrderStatus.ACCEPTED
        assert [o.client_order_id for o in self.ctx.open_orders("EUR_USD")] == [
            rest.client_order_id
        ]
        self.canceled = await self.ctx.cancel(rest.client_order_id)
        entry = await self.ctx.buy(
            "EUR_USD", 1000, stop_loss=(quote.bid * Decimal("0.99")).quantize(Decimal("0.00001"))
        )
        assert entry.status is OrderStatus.FILLED
        position = self.ctx.position("EUR_USD")
        assert position is not None and position.quantity == 1000
        new_stop = (quote.bid * Decimal("0.995")).quantize(Decimal("0.00001"))
        self.moved = await self.ctx.set_protection("EUR_USD", stop_loss=new_stop)
        self.account = await self.ctx.account()
        with pytest.raises(TypeError, match="Decimal"):
            await self.ctx.buy("EUR_USD", 1000, limit=1.1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="trail_distance= or trail_percent= only"):
            await self.ctx.buy("EUR_USD", 1000, limit=1, trail_distance=2)
        for other in ({"limit": 1}, {"stop": 1}, {"trail_percent": 1}):
            with pytest.raises(ValueError, match="takes if_touched= \\(its touch price\\) only"):
                self.ctx.request("buy", "EUR_USD", 1000, if_touched=1, **other)
        touched = self.ctx.request("sell", "EUR_USD", 1000, if_touched="1.5")
        assert (touched.type, touched.stop_price) == (OrderType.MARKET_IF_TOUCHED, Decimal("1.5"))
        assert touched.limit_price is None and touched.time_in_force is TimeInForce.GTC
        self.calls.append("start")


async def test_the_context_trades_through_the_order_manager(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    strategy = Trader(StrategySetup(name="t", broker="paper", instruments=("EUR_USD",)))
    engine = Engine(
        store=store,
        brokers={"paper": paper(tmp_path)},
        strategies=[(strategy, "paper", ("EUR_USD",))],
    )
    await engine.run(duration=5)
    assert strategy.calls == ["start", "stop"]
    assert strategy.canceled.status is OrderStatus.CANCELED
    assert strategy.moved.stop_loss is not None and strategy.moved.quantity == 1000
    assert strategy.account.broker == "paper"
    assert {quote.instrument for quote in strategy.quotes} == {"EUR_USD", "GBP_USD"}
    stored = store.orders()
    assert [o.status for o in stored] == [OrderStatus.CANCELED, OrderStatus.FILLED]
    assert all(store.strategy_of(o.client_order_id) == "t" for o in stored)
    # the strategy heard of its own orders and fill
    assert any(isinstance(e, Fill) for e in strategy.events)
    assert any(isinstance(e, Order) and e.status is OrderStatus.CANCELED for e in strategy.events)
