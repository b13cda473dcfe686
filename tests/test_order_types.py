"""Order types beyond market and limit: native or emulated by the core from the
broker's capabilities (stop, stop-limit, trailing stop), OCO pairs, smart
(target position) orders, baskets, splits, cancel all and close positions;
run through the engine against the paper broker on trio's autojump clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from rick_core.broker import Capabilities
from rick_core.components import ComponentSetup
from rick_core.engine.emulation import Emulator, trigger_price
from rick_core.engine.hosting import split_quantity
from rick_core.engine.runtime import Engine
from rick_core.model import (
    Instrument,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Quote,
    Side,
)
from rick_core.paper.broker import PaperBroker
from rick_core.reports import net_positions
from rick_core.store import Store
from rick_core.strategy import Strategy, StrategyContext, StrategySetup

Script = Callable[[StrategyContext], Awaitable[Any]]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "rick.db") as s:
        yield s


class Recording(PaperBroker):
    """A paper broker that records every request it is sent."""

    sent: list[OrderRequest]
    options: dict[str, Any] = {}

    async def place_order(self, request: OrderRequest) -> Order:
        self.sent.append(request)
        return await super().place_order(request)


class Basic(Recording):
    """A venue with market and limit orders only (the paper broker's
    ``order_types`` option): stops are rick's job."""

    options = {"order_types": ["market", "limit"]}


def broker(tmp_path: Path, cls: type[Recording] = Recording) -> Recording:
    made = cls(
        ComponentSetup(
            name="paper",
            options={
                "persist": False,
                "seed": 5,
                "instruments": ["EUR_USD", "GBP_USD"],
                **cls.options,
            },
            home=tmp_path,
        )
    )
    made.sent = []
    return made


class Scripted(Strategy):
    script: Script
    result: Any = None

    async def on_start(self) -> None:
        self.result = await self.script(self.ctx)


async def run(
    store: Store, venue: Recording, script: Script, seconds: float = 5, name: str = "s"
) -> tuple[Engine, Any]:
    strategy = Scripted(StrategySetup(name=name, broker="paper", instruments=("EUR_USD",)))
    strategy.script = script
    engine = Engine(
        store=store, brokers={"paper": venue}, strategies=[(strategy, "paper", ("EUR_USD",))]
    )
    await engine.run(duration=seconds)
    return engine, strategy.result


def quote(bid: str, ask: str) -> Quote:
    return Quote(
        instrument="EUR_USD", bid=bid, ask=ask, time=datetime(2026, 1, 1, tzinfo=UTC), source="t"
    )


# ---------------------------------------------------------------------------
# triggers, unit level


def test_trailing_stop_trigger_follows_the_best_price() -> None:
    sell = OrderRequest(
        instrument="EUR_USD", side="sell", quantity=1, type="trailing_stop", trail_distance="0.0010"
    )
    assert trigger_price(sell, Decimal("1.1000")) == Decimal("1.0990")
    pct = attrs.evolve(sell, trail_distance=None, trail_percent=Decimal("1"))
    assert trigger_price(pct, Decimal("200")) == Decimal("198")
    buy = attrs.evolve(sell, side=Side.BUY)
    assert trigger_price(buy, Decimal("1.1000")) == Decimal("1.1010")


@pytest.mark.parametrize(
    ("fields", "quotes", "fires_at"),
    [
        # A sell trailing stop: the bid rises to 1.1020 (trigger 1.1010), then falls to it.
        (
            {"side": "sell", "type": "trailing_stop", "trail_distance": "0.0010"},
            [
                ("1.1000", "1.1002"),
                ("1.1020", "1.1022"),
                ("1.1011", "1.1013"),
                ("1.1010", "1.1012"),
            ],
            3,
        ),
        # A buy trailing stop by percent: the ask falls to 100, fires at 101.
        (
            {"side": "buy", "type": "trailing_stop", "trail_percent": "1"},
            [("104", "105"), ("99", "100"), ("100.5", "100.9"), ("100.9", "101")],
            3,
        ),
        # A buy stop fires when the ask reaches the stop; a sell stop-limit when the bid does.
        (
            {"side": "buy", "type": "stop", "stop_price": "1.2"},
            [("1.1", "1.19"), ("1.19", "1.2")],
            1,
        ),
        (
            {"side": "sell", "type": "stop_limit", "stop_price": "1.1", "limit_price": "1.09"},
            [("1.2", "1.21"), ("1.1", "1.11")],
            1,
        ),
        # Market-if-touched, the mirror image: a buy fires when the ask falls to the
        # touch price (not when it rises, as a stop would) ...
        (
            {"side": "buy", "type": "market_if_touched", "stop_price": "1.1"},
            [("1.1", "1.12"), ("1.2", "1.21"), ("1.09", "1.1")],
            2,
        ),
        (
            {"side": "buy", "type": "market_if_touched", "stop_price": "1.1"},
            [("1.11", "1.12"), ("1.05", "1.06")],
            1,
        ),
        # ... a sell when the bid rises to it (not when it falls).
        (
            {"side": "sell", "type": "market_if_touched", "stop_price": "1.2"},
            [("1.19", "1.2"), ("1.1", "1.11"), ("1.2", "1.21")],
            2,
        ),
        (
            {"side": "sell", "type": "market_if_touched", "stop_price": "1.2"},
            [("1.1", "1.11"), ("1.25", "1.26")],
            1,
        ),
    ],
)
def test_held_orders_fire_exactly_when_the_quote_reaches_the_trigger(
    fields: dict[str, Any], quotes: list[tuple[str, str]], fires_at: int
) -> None:
    from rick_core.engine import emulation

    request = OrderRequest(instrument="EUR_USD", quantity=1, **fields)
    held = emulation._Held(
        order=Order(request=request, broker="paper", status="accepted"), strategy="s"
    )
    fired = [Emulator._reached(held, quote(bid, ask)) for bid, ask in quotes]
    assert fired.index(True) == fires_at
    assert not any(fired[:fires_at])


# ---------------------------------------------------------------------------
# emulated and native, through the engine


async def test_a_trailing_stop_the_venue_lacks_is_held_and_fired_by_rick(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = broker(tmp_path, Basic)

    async def script(ctx: StrategyContext) -> Order:
        await ctx.buy("EUR_USD", 1000)
        held = await ctx.sell("EUR_USD", 1000, trail_distance="0.00020")
        assert held.status is OrderStatus.ACCEPTED  # held by rick
        return held

    engine, held = await run(store, venue, script, seconds=600)
    # The venue never saw a trailing stop: only the entry and the fired market order.
    assert [r.type for r in venue.sent] == [OrderType.MARKET, OrderType.MARKET]
    child = venue.sent[1]
    assert child.client_order_id == held.client_order_id + ".x"
    assert child.side is Side.SELL and child.quantity == 1000
    parent = store.get_order(held.client_order_id)
    assert parent is not None and parent.status is OrderStatus.FILLED
    fired = store.get_order(child.client_order_id)
    assert fired is not None and fired.status is OrderStatus.FILLED
    assert parent.average_fill_price == fired.average_fill_price
    # Positions from fills count the child's fill once: flat again.
    assert all(p.is_flat for p in net_positions(store.fills()))
    assert engine.oms.owner(child.client_order_id) == "s"


async def test_a_native_trailing_stop_goes_to_the_venue(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = broker(tmp_path)
    if OrderType.TRAILING_STOP not in venue.capabilities.order_types:
        pytest.skip("this paper broker does not claim trailing stops natively")

    async def script(ctx: StrategyContext) -> Order:
        await ctx.buy("EUR_USD", 1000)
        return await ctx.sell("EUR_USD", 1000, trail_distance="0.00020")

    await run(store, venue, script, seconds=5)
    assert [r.type for r in venue.sent] == [OrderType.MARKET, OrderType.TRAILING_STOP]


async def test_a_market_if_touched_order_the_venue_lacks_is_held_and_fired_by_rick(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = broker(tmp_path, Basic)
    assert OrderType.MARKET_IF_TOUCHED not in venue.capabilities.order_types
    touch: list[Decimal] = []

    async def script(ctx: StrategyContext) -> Order:
        ask = ctx.last_quote("EUR_USD").ask  # type: ignore[union-attr]
        touch.append(ask - Decimal("0.00010"))
        # A buy on a dip: it rests below the market until the ask falls to it.
        held = await ctx.buy("EUR_USD", 1000, if_touched=touch[0])
        assert held.request.type is OrderType.MARKET_IF_TOUCHED
        assert held.request.stop_price == touch[0]  # the touch price rides in stop_price
        assert held.status is OrderStatus.ACCEPTED  # held by rick
        return held

    engine, held = await run(store, venue, script, seconds=600)
    # The venue never saw a market-if-touched order: only the fired market order.
    assert [r.type for r in venue.sent] == [OrderType.MARKET]
    child = venue.sent[0]
    assert child.client_order_id == held.client_order_id + ".x"
    assert (child.side, child.quantity) == (Side.BUY, 1000)
    assert child.stop_price is None and child.limit_price is None
    parent = store.get_order(held.client_order_id)
    assert parent is not None and parent.status is OrderStatus.FILLED
    fired = store.get_order(child.client_order_id)
    assert fired is not None and fired.status is OrderStatus.FILLED
    assert parent.average_fill_price == fired.average_fill_price
    # Fired on the quote whose ask touched the trigger, and filled at that ask.
    assert fired.average_fill_price is not None and fired.average_fill_price <= touch[0]
    # Positions from fills count the child's fill once.
    assert [p.quantity for p in net_positions(store.fills())] == [1000]
    assert engine.oms.owner(child.client_order_id) == "s"


async def test_held_market_if_touched_orders_wait_on_the_favourable_side(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = broker(tmp_path, Basic)

    async def script(ctx: StrategyContext) -> list[Order]:
        quote = ctx.last_quote("EUR_USD")
        assert quote is not None
        # Far from the market on the favourable side: held, never touched.
        dip = await ctx.buy("EUR_USD", 1000, if_touched="0.5")
        rally = await ctx.sell("EUR_USD", 1000, if_touched="9.5")
        # A buy whose touch price is above the ask is touched already: it fires at once,
        # carrying its protection to the market order it fires.
        above = quote.ask + Decimal("0.01")
        now = await ctx.buy(
            "EUR_USD",
            1000,
            if_touched=above,
            stop_loss=quote.bid - Decimal("0.01"),
            take_profit=above + Decimal("0.01"),
        )
        return [dip, rally, now]

    _, (dip, rally, now) = await run(store, venue, script, seconds=60)
    assert [r.client_order_id for r in venue.sent] == [now.client_order_id + ".x"]
    (child,) = venue.sent
    assert child.type is OrderType.MARKET
    assert (child.stop_loss, child.take_profit) == (now.request.stop_loss, now.request.take_profit)
    for order in (dip, rally):
        stored = store.get_order(order.client_order_id)
        assert stored is not None and stored.status is OrderStatus.ACCEPTED  # still held
    fired = store.get_order(now.client_order_id)
    assert fired is not None and fired.status is OrderStatus.FILLED


async def test_a_native_market_if_touched_order_goes_to_the_venue(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = broker(tmp_path)
    assert OrderType.MARKET_IF_TOUCHED in venue.capabilities.order_types

    async def script(ctx: StrategyContext) -> Order:
        return await ctx.sell("EUR_USD", 1000, if_touched="9.5")

    _, order = await run(store, venue, script)
    assert [r.type for r in venue.sent] == [OrderType.MARKET_IF_TOUCHED]
    assert venue.sent[0].stop_price == Decimal("9.5")
    assert order.status is OrderStatus.ACCEPTED and order.venue_order_id is not None


async def test_cancelling_a_held_order_never_reaches_the_venue(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = broker(tmp_path, Basic)

    async def script(ctx: StrategyContext) -> Order:
        held = await ctx.buy("EUR_USD", 1000, stop="9.5", limit="9.6")
        return await ctx.cancel(held)

    _, canceled = await run(store, venue, script)
    assert canceled.status is OrderStatus.CANCELED
    assert venue.sent == []
    stored = store.get_order(canceled.client_order_id)
    assert stored is not None and stored.status is OrderStatus.CANCELED


async def test_an_order_the_venue_lacks_and_rick_cannot_emulate_is_rejected(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    class MarketOnly(Recording):
        options = {"order_types": ["market"]}

    venue = broker(tmp_path, MarketOnly)

    async def script(ctx: StrategyContext) -> Order:
        # A stop-limit fires a limit order, which this venue cannot take either.
        return await ctx.buy("EUR_USD", 1000, stop="9.5", limit="9.6")

    _, order = await run(store, venue, script)
    assert order.status is OrderStatus.REJECTED
    assert "stop_limit orders are not supported" in (order.reject_reason or "")


# ---------------------------------------------------------------------------
# OCO


async def test_oco_the_first_fill_cancels_the_other(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = broker(tmp_path)

    async def script(ctx: StrategyContext) -> tuple[Order, Order]:
        ask = ctx.last_quote("EUR_USD").ask  # type: ignore[union-attr]
        # The first is marketable and fills at once: the second is never sent.
        now = ctx.request("buy", "EUR_USD", 1000, limit=ask + Decimal("0.001"))
        later = ctx.request("buy", "EUR_USD", 1000, limit=Decimal("0.5"))
        return await ctx.oco(now, later)

    _, (first, second) = await run(store, venue, script)
    assert first.status is OrderStatus.FILLED
    assert second.status is OrderStatus.REJECTED
    assert "one-cancels-other partner" in (second.reject_reason or "")
    assert [r.client_order_id for r in venue.sent] == [first.client_order_id]


async def test_oco_cancelling_one_leg_cancels_the_resting_partner(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = broker(tmp_path)

    async def script(ctx: StrategyContext) -> tuple[Order, Order]:
        low = ctx.request("buy", "EUR_USD", 1000, limit=Decimal("0.5"))
        high = ctx.request("sell", "EUR_USD", 1000, limit=Decimal("9.5"))
        a, b = await ctx.oco(low, high)
        assert a.status is OrderStatus.ACCEPTED and b.status is OrderStatus.ACCEPTED
        await ctx.cancel(a)
        return a, b

    _, (a, b) = await run(store, venue, script)
    assert store.get_order(a.client_order_id).status is OrderStatus.CANCELED  # type: ignore[union-attr]
    assert store.get_order(b.client_order_id).status is OrderStatus.CANCELED  # type: ignore[union-attr]


# ---------------------------------------------------------------------------
# smart orders, baskets, splits


async def test_target_position_sends_only_the_difference_even_concurrently(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = broker(tmp_path)

    async def script(ctx: StrategyContext) -> list[Order | None]:
        results: list[Order | None] = []

        async def target(quantity: int) -> None:
            results.append(await ctx.target_position("EUR_USD", quantity))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(target, 3000)
        results.append(await ctx.target_position("EUR_USD", 3000))
        results.append(await ctx.target_position("EUR_USD", -1000))
        return results

    _, results = await run(store, venue, script)
    placed = [r for r in results if r is not None]
    assert [(o.request.side, o.request.quantity) for o in placed] == [
        (Side.BUY, Decimal(3000)),
        (Side.SELL, Decimal(4000)),
    ]
    assert results.count(None) == 3
    (position,) = net_positions(store.fills())
    assert position.quantity == -1000


async def test_close_position_and_close_all(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = broker(tmp_path)

    async def script(ctx: StrategyContext) -> tuple[Order | None, list[Order | Exception]]:
        await ctx.subscribe("GBP_USD")
        await ctx.buy("EUR_USD", 2000)
        await ctx.sell("GBP_USD", 1000)
        closed = await ctx.close_position("EUR_USD")
        assert await ctx.close_position("EUR_USD") is None
        await ctx.buy("EUR_USD", 500)
        return closed, await ctx.close_all_positions()

    _, (closed, rest) = await run(store, venue, script)
    assert closed is not None and closed.request.side is Side.SELL
    assert closed.request.quantity == 2000
    assert sorted((o.instrument, o.request.side.value) for o in rest) == [  # type: ignore[union-attr]
        ("EUR_USD", "sell"),
        ("GBP_USD", "buy"),
    ]
    assert all(p.is_flat for p in net_positions(store.fills()))


async def test_basket_reports_each_leg(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = broker(tmp_path)

    async def script(ctx: StrategyContext) -> list[Order | Exception]:
        return await ctx.basket(
            [
                ctx.request("buy", "EUR_USD", 1000),
                ctx.request("buy", "EUR_USD", 10**12),  # far beyond the margin
                ctx.request("sell", "GBP_USD", 1000),
            ]
        )

    _, legs = await run(store, venue, script)
    assert [leg.status for leg in legs] == [  # type: ignore[union-attr]
        OrderStatus.FILLED,
        OrderStatus.REJECTED,
        OrderStatus.FILLED,
    ]
    assert "margin" in (legs[1].reject_reason or "")  # type: ignore[union-attr]


async def test_split_sends_children_within_the_limit(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = broker(tmp_path)

    async def script(ctx: StrategyContext) -> list[Order | Exception]:
        return await ctx.split(ctx.request("buy", "EUR_USD", 10_000, tag="big"), 3000)

    _, children = await run(store, venue, script)
    sizes = [c.request.quantity for c in children]  # type: ignore[union-attr]
    assert sum(sizes) == 10_000 and all(s <= 3000 for s in sizes) and len(sizes) == 4
    assert all(c.status is OrderStatus.FILLED for c in children)  # type: ignore[union-attr]
    assert len({c.client_order_id for c in children}) == 4  # type: ignore[union-attr]
    assert all("big" in c.request.tag and "split" in c.request.tag for c in children)  # type: ignore[union-attr]


def test_split_quantity_respects_increments_and_minimum() -> None:
    fx = Instrument.pair("EUR_USD", size_increment="1", min_size="1000")
    assert split_quantity(Decimal(10_000), Decimal(3000), fx) == [Decimal(2500)] * 4
    assert split_quantity(Decimal(10_001), Decimal(5000), fx) == [3334, 3334, 3333]
    assert split_quantity(Decimal(7), Decimal(3), None) == [Decimal(3), Decimal(3), Decimal(1)]
    btc = Instrument.pair("BTC_USD", "crypto", size_increment="0.001")
    sizes = split_quantity(Decimal("1.001"), Decimal("0.5"), btc)
    assert sum(sizes) == Decimal("1.001") and max(sizes) <= Decimal("0.5") and len(sizes) == 3
    with pytest.raises(ValueError, match="minimum size"):
        split_quantity(Decimal(2500), Decimal(1000), fx)
    with pytest.raises(ValueError, match="greater than zero"):
        split_quantity(Decimal(10), Decimal(0), None)


# ---------------------------------------------------------------------------
# cancel all


async def test_cancel_all_by_strategy_and_instrument(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = broker(tmp_path)

    async def script(ctx: StrategyContext) -> list[Order | BaseException]:
        await ctx.subscribe("GBP_USD")
        for instrument in ("EUR_USD", "EUR_USD", "GBP_USD"):
            await ctx.buy(instrument, 1000, limit=Decimal("0.5"))
        first = await ctx.cancel_all("EUR_USD")
        assert len(ctx.open_orders()) == 1
        return [*first, *await ctx.cancel_all()]

    engine, canceled = await run(store, venue, script)
    assert [o.status for o in canceled] == [OrderStatus.CANCELED] * 3  # type: ignore[union-attr]
    assert not engine.oms.all_working()


def test_capabilities_decide_native_or_emulated() -> None:
    basic = broker(Path("."), Basic)
    stop = OrderRequest(instrument="EUR_USD", side="buy", quantity=1, type="stop", stop_price=2)
    limit = OrderRequest(instrument="EUR_USD", side="buy", quantity=1, type="limit", limit_price=1)
    assert Emulator.emulates(basic, stop)
    assert not Emulator.emulates(basic, limit)
    native = Capabilities(order_types=["market", "limit", "stop"])
    basic.capabilities = native
    assert not Emulator.emulates(basic, stop)


async def test_a_bracket_the_venue_cannot_attach_is_placed_by_rick_as_an_oco(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    class NoAttached(Recording):
        options = {"attached_protection": False}

    venue = broker(tmp_path, NoAttached)

    async def script(ctx: StrategyContext) -> Order:
        quote = ctx.last_quote("EUR_USD")
        assert quote is not None
        return await ctx.buy(
            "EUR_USD",
            1000,
            stop_loss=quote.bid - Decimal("0.00030"),
            take_profit=quote.ask + Decimal("0.00030"),
        )

    _, entry = await run(store, venue, script, seconds=1800)
    coid = entry.client_order_id
    # The entry went out bare; rick kept its protection and placed it itself.
    assert venue.sent[0].stop_loss is None and venue.sent[0].take_profit is None
    stored = store.get_order(coid)
    assert stored is not None and stored.request.stop_loss == entry.request.stop_loss
    legs = {r.client_order_id: r for r in venue.sent[1:3]}
    assert set(legs) == {coid + ".sl", coid + ".tp"}
    assert legs[coid + ".sl"].type is OrderType.STOP and legs[coid + ".sl"].side is Side.SELL
    assert legs[coid + ".tp"].type is OrderType.LIMIT and legs[coid + ".tp"].quantity == 1000
    # One leg closed the position; the other was canceled with it.
    ends = sorted(store.get_order(c).status.value for c in legs)  # type: ignore[union-attr]
    assert ends == ["canceled", "filled"]
    assert all(p.is_flat for p in net_positions(store.fills()))
