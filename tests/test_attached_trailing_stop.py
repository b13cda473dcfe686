"""Attached trailing stops (``OrderRequest.trailing_stop``, OANDA's
``trailingStopLossOnFill``): the model, the capability, the store, the paper
venue's native protection, and rick's emulation as a bracket leg ``<id>.ts``
on a venue that cannot attach one."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import rick_core.store as store_module
from rick_core.broker import Capabilities, OrderRejected
from rick_core.components import ComponentSetup
from rick_core.engine.emulation import Emulator
from rick_core.engine.runtime import Engine
from rick_core.model import (
    Fill,
    Instrument,
    ModelError,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Quote,
    Side,
    from_json,
    from_jsonable,
    to_json,
    to_jsonable,
)
from rick_core.paper.account import PaperAccount, PaperSettings
from rick_core.paper.broker import NATIVE_CAPABILITIES, PaperBroker
from rick_core.reports import net_positions
from rick_core.store import MIGRATIONS, Store
from rick_core.strategy import Strategy, StrategySetup

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
INSTRUMENTS = [Instrument.pair("EUR_USD", price_increment="0.00001", size_increment=1)]


def req(side: str = "buy", **kw: Any) -> OrderRequest:
    kw.setdefault("client_order_id", "e1")
    return OrderRequest(instrument="EUR_USD", side=side, quantity=D(1000), **kw)


# ---------------------------------------------------------------------------
# the model


@pytest.mark.parametrize(
    "kind",
    [
        {"type": "market"},
        {"type": "limit", "limit_price": D("1.1")},
        {"type": "stop", "stop_price": D("1.2")},
        {"type": "stop_limit", "stop_price": D("1.2"), "limit_price": D("1.21")},
        {"type": "market_if_touched", "stop_price": D("1.0")},
    ],
)
def test_entry_orders_take_a_trailing_stop(kind: dict[str, Any]) -> None:
    request = req(trailing_stop="0.0020", **kind)
    assert request.trailing_stop == D("0.0020")
    # With a stop loss and a take profit too: the first to trigger wins.
    both = req(trailing_stop=D("0.0020"), stop_loss=D("0.9"), take_profit=D("1.5"), **kind)
    assert (both.stop_loss, both.take_profit, both.trailing_stop) == (
        D("0.9"),
        D("1.5"),
        D("0.0020"),
    )


def test_a_trailing_stop_order_takes_no_attached_trailing_stop() -> None:
    with pytest.raises(ModelError, match="trailing stop order takes no attached trailing_stop"):
        req("sell", type="trailing_stop", trail_distance=D("0.001"), trailing_stop=D("0.002"))


@pytest.mark.parametrize("bad", [D(0), D("-0.001")])
def test_a_trailing_stop_distance_is_positive(bad: D) -> None:
    with pytest.raises(ModelError, match="trailing_stop"):
        req(trailing_stop=bad)


def test_trailing_stop_round_trips_through_json_and_old_json_loads_without_it() -> None:
    request = req(type="limit", limit_price=D("1.10000"), trailing_stop=D("0.00200"))
    assert attrs.fields(OrderRequest)[-1].name == "trailing_stop"  # last: old layouts fit
    data = to_jsonable(request)
    assert data["trailing_stop"] == "0.00200"
    back = from_json(OrderRequest, to_json(request))
    assert back == request and str(back.trailing_stop) == "0.00200"
    old = {k: v for k, v in data.items() if k != "trailing_stop"}
    assert from_jsonable(OrderRequest, old).trailing_stop is None
    order = Order(request=request, broker="paper")
    assert from_json(Order, to_json(order)).request.trailing_stop == D("0.00200")


def test_paper_request_json_matches_to_jsonable() -> None:
    from rick_core.paper.account import request_json

    for request in (req(), req(trailing_stop=D("0.00150"))):
        assert json.loads(request_json(request)) == to_jsonable(request)


# ---------------------------------------------------------------------------
# capabilities


def test_capabilities_refuse_an_attached_trailing_stop_they_do_not_claim() -> None:
    request = req(trailing_stop=D("0.001"))
    plain = Capabilities(order_types=["market"])
    assert plain.supports(request) == "an attached trailing stop is not supported"
    assert plain.supports(req()) is None
    claims = Capabilities(order_types=["market"], attached_trailing_stop=True)
    assert claims.supports(request) is None
    assert NATIVE_CAPABILITIES.attached_trailing_stop


def test_needs_bracket_when_the_venue_cannot_attach_it() -> None:
    class Venue:
        capabilities = Capabilities(order_types=["market"], attached_stop_loss=True)

    venue: Any = Venue()
    assert Emulator.needs_bracket(venue, req(trailing_stop=D("0.001")))
    assert not Emulator.needs_bracket(venue, req(stop_loss=D("0.5")))
    venue.capabilities = attrs.evolve(venue.capabilities, attached_trailing_stop=True)
    assert not Emulator.needs_bracket(venue, req(trailing_stop=D("0.001")))


# ---------------------------------------------------------------------------
# the store


def test_the_store_keeps_the_trailing_stop(tmp_path: Path) -> None:
    order = Order(
        request=req(trailing_stop=D("0.00120")), broker="paper", created_at=T0, updated_at=T0
    )
    with Store.open(tmp_path / "rick.db") as store:
        store.record(new_orders=[(order, "s")])
        got = store.get_order("e1")
    assert got is not None and str(got.request.trailing_stop) == "0.00120"
    assert to_json(got) == to_json(order)


def test_orders_stored_before_migration_4_load_without_a_trailing_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rick.db"
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:3])
    old = Order(request=req(), broker="paper", created_at=T0, updated_at=T0)
    with Store.open(path) as store:
        columns = [r[1] for r in store._db.conn.execute("PRAGMA table_info(orders)")]
        assert "trailing_stop" not in columns
        values = dict(
            zip(store_module._ORDER_COLUMNS, store_module._order_values(old), strict=True)
        )
        del values["trailing_stop"]
        names = ", ".join(f"[{k}]" for k in values)
        store._db.conn.execute(
            f"INSERT INTO orders ({names}) VALUES ({', '.join('?' * len(values))})",
            list(values.values()),
        )
        store._db.conn.commit()
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    with Store.open(path) as store:
        got = store.get_order("e1")
    assert got is not None and got.request.trailing_stop is None
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == MIGRATIONS[-1].version
    conn.close()


# ---------------------------------------------------------------------------
# the paper venue: native


def t(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def q(bid: str, ask: str, at: int = 0) -> Quote:
    return Quote(instrument="EUR_USD", bid=D(bid), ask=D(ask), time=t(at), source="test")


def account() -> PaperAccount:
    a = PaperAccount("paper", PaperSettings(), INSTRUMENTS, id_factory=lambda: "auto")
    a.on_quote(q("1.10000", "1.10020"))
    return a


def trail_state(a: PaperAccount) -> tuple[str | None, str | None]:
    (holding,) = a.snapshot()["positions"]
    return holding["trailing_stop"], holding["trail_best"]


def closed_by(events: list[Order | Fill]) -> tuple[Fill, Order]:
    fill, closing = events
    assert isinstance(fill, Fill) and isinstance(closing, Order)
    return fill, closing


def test_paper_long_trailing_stop_ratchets_up_and_closes_with_ts_id() -> None:
    a = account()
    a.submit(req(client_order_id="m1", trailing_stop=D("0.00050")), t(1))  # buys at 1.10020
    assert trail_state(a) == ("0.00050", "1.10000")  # starts from the bid at the fill
    assert a.on_quote(q("1.10100", "1.10120", at=2)) == []  # best 1.10100: stop 1.10050
    assert trail_state(a)[1] == "1.10100"
    assert a.on_quote(q("1.10060", "1.10080", at=3)) == []  # above the stop
    assert trail_state(a)[1] == "1.10100"  # the stop never moves down
    fill, closing = closed_by(a.on_quote(q("1.10050", "1.10070", at=4)))
    assert (closing.client_order_id, closing.request.tag, closing.request.type) == (
        "m1.ts",
        "trailing_stop",
        OrderType.MARKET,
    )
    assert (closing.status, closing.filled_quantity) == (OrderStatus.FILLED, D(1000))
    assert (fill.side, fill.price, fill.client_order_id) == (Side.SELL, D("1.10050"), "m1.ts")
    # realized: (1.10050 - 1.10020) * 1000 = 0.30
    assert a.realized_pnl == D("0.30")
    assert a.positions() == []


def test_paper_short_trailing_stop_ratchets_down_and_closes_with_ts_id() -> None:
    a = account()
    a.submit(req("sell", client_order_id="s1", trailing_stop=D("0.00050")), t(1))  # at 1.10000
    assert trail_state(a) == ("0.00050", "1.10020")  # the ask at the fill
    assert a.on_quote(q("1.09880", "1.09900", at=2)) == []  # best 1.09900: stop 1.09950
    assert a.on_quote(q("1.09920", "1.09940", at=3)) == []
    assert trail_state(a)[1] == "1.09900"  # never moves up for a short
    fill, closing = closed_by(a.on_quote(q("1.09930", "1.09950", at=4)))
    assert (closing.client_order_id, closing.request.tag) == ("s1.ts", "trailing_stop")
    assert (fill.side, fill.price) == (Side.BUY, D("1.09950"))
    # realized: (1.10000 - 1.09950) * 1000 = 0.50
    assert a.realized_pnl == D("0.50")
    assert a.positions() == []


def test_paper_trailing_stop_with_a_stop_loss_whichever_triggers_first() -> None:
    a = account()
    entry = req(
        client_order_id="m1",
        stop_loss=D("1.09000"),
        take_profit=D("1.12000"),
        trailing_stop=D("0.00050"),
    )
    a.submit(entry, t(1))
    assert a.on_quote(q("1.10300", "1.10320", at=2)) == []
    _, closing = closed_by(a.on_quote(q("1.10250", "1.10270", at=3)))
    assert closing.client_order_id == "m1.ts"
    # A stop loss reached on the same quote wins.
    b = account()
    b.submit(attrs.evolve(entry, client_order_id="m2", stop_loss=D("1.09950")), t(1))
    _, closing = closed_by(b.on_quote(q("1.09900", "1.09920", at=2)))
    assert (closing.client_order_id, closing.request.tag) == ("m2.sl", "stop_loss")


def test_replacing_position_protection_leaves_the_trailing_stop() -> None:
    a = account()
    a.submit(req(client_order_id="m1", trailing_stop=D("0.00050")), t(1))
    a.on_quote(q("1.10100", "1.10120", at=2))
    a.replace_position_protection("EUR_USD", stop_loss=D("1.09000"), now=t(3))
    assert trail_state(a) == ("0.00050", "1.10100")
    a.replace_position_protection("EUR_USD", stop_loss=None, now=t(4))
    assert trail_state(a) == ("0.00050", "1.10100")
    _, closing = closed_by(a.on_quote(q("1.10050", "1.10070", at=5)))
    assert closing.client_order_id == "m1.ts"


def test_paper_refuses_a_trailing_stop_that_could_never_trigger() -> None:
    a = account()
    with pytest.raises(OrderRejected, match=r"trailing_stop 1\.10000 of a buy must be below"):
        a.submit(req(trailing_stop=D("1.10000")), t(1))
    with pytest.raises(OrderRejected, match="price increment"):
        a.submit(req(trailing_stop=D("0.000001")), t(1))


def test_the_trailing_state_survives_the_journal_and_a_snapshot() -> None:
    a = account()
    a.track_changes()
    a.take_changes()
    start = a.snapshot()
    lines = []
    a.submit(req(client_order_id="m1", trailing_stop=D("0.00050")), t(1))
    lines.append(a.take_changes())
    a.on_quote(q("1.10100", "1.10120", at=2))
    lines.append(a.take_changes())
    b = PaperAccount.restore("paper", PaperSettings(), INSTRUMENTS, start)
    for line in lines:
        assert line is not None
        b.apply_changes(json.loads(line))
    assert trail_state(b) == ("0.00050", "1.10100")
    c = PaperAccount.restore("paper", PaperSettings(), INSTRUMENTS, a.snapshot())
    for restored in (b, c):
        _, closing = closed_by(restored.on_quote(q("1.10050", "1.10070", at=3)))
        assert closing.client_order_id == "m1.ts"


def test_a_position_saved_before_trailing_stops_loads_without_one() -> None:
    a = account()
    a.submit(req(client_order_id="m1", stop_loss=D("1.09000")), t(1))
    data = a.snapshot()
    for holding in data["positions"]:
        del holding["trailing_stop"], holding["trail_best"]
    b = PaperAccount.restore("paper", PaperSettings(), INSTRUMENTS, data)
    assert trail_state(b) == (None, None)
    assert b.on_quote(q("1.05000", "1.05020", at=2)) != []  # the stop loss still works


# ---------------------------------------------------------------------------
# through the engine


class Recording(PaperBroker):
    sent: list[OrderRequest]
    options: dict[str, Any] = {}

    async def place_order(self, request: OrderRequest) -> Order:
        self.sent.append(request)
        return await super().place_order(request)


class NoAttached(Recording):
    options = {"attached_protection": False}


class NoAttachedNoTrailing(Recording):
    options = {"attached_protection": False, "order_types": ["market", "limit", "stop"]}


def venue_of(tmp_path: Path, cls: type[Recording]) -> Recording:
    made = cls(
        ComponentSetup(
            name="paper",
            options={"persist": False, "seed": 5, "instruments": ["EUR_USD"], **cls.options},
            home=tmp_path,
        )
    )
    made.sent = []
    return made


class Scripted(Strategy):
    distance = D("0.00020")
    protect: dict[str, Any] = {}
    result: Any = None

    async def on_start(self) -> None:
        quote = self.ctx.last_quote("EUR_USD")
        assert quote is not None
        extra = {
            k: quote.bid - v if k == "stop_loss" else quote.ask + v for k, v in self.protect.items()
        }
        self.result = await self.ctx.buy("EUR_USD", 1000, trailing_stop=self.distance, **extra)


async def run(store: Store, venue: Recording, protect: dict[str, Any] | None = None) -> Order:
    strategy = Scripted(StrategySetup(name="s", broker="paper", instruments=("EUR_USD",)))
    strategy.protect = protect or {}
    engine = Engine(
        store=store, brokers={"paper": venue}, strategies=[(strategy, "paper", ("EUR_USD",))]
    )
    await engine.run(duration=1800)
    result: Order = strategy.result
    return result


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "rick.db") as s:
        yield s


async def test_a_native_attached_trailing_stop_goes_to_the_venue(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = venue_of(tmp_path, Recording)
    entry = await run(store, venue)
    assert [r.client_order_id for r in venue.sent] == [entry.client_order_id]
    assert venue.sent[0].trailing_stop == D("0.00020")
    # The paper venue closed the position itself, with its own ``.ts`` order.
    closes = [f for f in store.fills() if f.client_order_id == entry.client_order_id + ".ts"]
    assert closes and closes[0].side is Side.SELL
    assert all(p.is_flat for p in net_positions(store.fills()))


async def test_an_attached_trailing_stop_the_venue_cannot_attach_is_placed_by_rick(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = venue_of(tmp_path, NoAttached)
    entry = await run(store, venue)
    coid = entry.client_order_id
    assert venue.sent[0].trailing_stop is None  # the entry went out bare
    stored = store.get_order(coid)
    assert stored is not None and stored.request.trailing_stop == D("0.00020")
    leg = venue.sent[1]
    assert (leg.client_order_id, leg.type, leg.side, leg.quantity, leg.trail_distance) == (
        coid + ".ts",
        OrderType.TRAILING_STOP,
        Side.SELL,
        D(1000),
        D("0.00020"),
    )
    placed = store.get_order(coid + ".ts")
    assert placed is not None and placed.status is OrderStatus.FILLED
    assert all(p.is_flat for p in net_positions(store.fills()))


async def test_an_emulated_trailing_leg_is_held_by_rick_where_the_venue_has_none(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = venue_of(tmp_path, NoAttachedNoTrailing)
    entry = await run(store, venue)
    coid = entry.client_order_id
    # The venue saw the bare entry, then the market order the held ``.ts`` fired.
    assert [r.client_order_id for r in venue.sent] == [coid, coid + ".ts.x"]
    assert venue.sent[1].type is OrderType.MARKET and venue.sent[1].side is Side.SELL
    held = store.get_order(coid + ".ts")
    assert held is not None and held.request.type is OrderType.TRAILING_STOP
    assert held.status is OrderStatus.FILLED
    assert all(p.is_flat for p in net_positions(store.fills()))


async def test_the_emulated_legs_are_one_cancels_other_all_three(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    venue = venue_of(tmp_path, NoAttached)
    protect = {"stop_loss": D("0.00100"), "take_profit": D("0.00100")}
    entry = await run(store, venue, protect)
    coid = entry.client_order_id
    legs = [coid + suffix for suffix in (".sl", ".tp", ".ts")]
    assert sorted(r.client_order_id for r in venue.sent[1:]) == sorted(legs)
    ends = sorted(store.get_order(c).status.value for c in legs)  # type: ignore[union-attr]
    assert ends == ["canceled", "canceled", "filled"]
    assert all(p.is_flat for p in net_positions(store.fills()))
