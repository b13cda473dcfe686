"""PaperAccount: matching, fills, fees, protection, margin and snapshots, with exact Decimals.

Every expected amount is worked out by hand in a comment next to it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rick_core.broker import NotFound, OrderRejected
from rick_core.model import (
    AssetClass,
    Fill,
    Instrument,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Quote,
    Side,
    TimeInForce,
)
from rick_core.paper.account import PaperAccount, PaperSettings

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)

INSTRUMENTS = [
    Instrument.pair("EUR_USD", price_increment="0.00001", size_increment=1),
    Instrument.pair("USD_JPY", price_increment="0.001", size_increment=1),
    Instrument.pair("EUR_GBP", price_increment="0.00001", size_increment=1),
    Instrument.pair(
        "BTC_USD",
        AssetClass.CRYPTO,
        price_increment="0.01",
        size_increment="0.0001",
        min_size="0.001",
    ),
    Instrument(symbol="AAPL", asset_class="equity", quote_currency="USD", price_increment="0.01"),
]


def t(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def q(
    instrument: str,
    bid: str,
    ask: str,
    at: int = 0,
    bid_size: str | None = None,
    ask_size: str | None = None,
) -> Quote:
    return Quote(
        instrument=instrument,
        bid=D(bid),
        ask=D(ask),
        time=t(at),
        source="test",
        bid_size=None if bid_size is None else D(bid_size),
        ask_size=None if ask_size is None else D(ask_size),
    )


def ids() -> Iterator[str]:
    n = 0
    while True:
        n += 1
        yield f"auto{n}"


def make(**overrides: Any) -> PaperAccount:
    counter = ids()
    return PaperAccount(
        "paper", PaperSettings(**overrides), INSTRUMENTS, id_factory=lambda: next(counter)
    )


def req(instrument: str, side: str, quantity: str, cid: str, **kw: Any) -> OrderRequest:
    return OrderRequest(
        instrument=instrument, side=side, quantity=D(quantity), client_order_id=cid, **kw
    )


def fills(events: list[Order | Fill]) -> list[Fill]:
    return [e for e in events if isinstance(e, Fill)]


def orders(events: list[Order | Fill]) -> list[Order]:
    return [e for e in events if isinstance(e, Order)]


def position(account: PaperAccount, instrument: str) -> Any:
    return next(p for p in account.positions() if p.instrument == instrument)


# ---------------------------------------------------------------------------
# settings


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"balance": D(-1)}, "balance must not be negative"),
        ({"leverage": {AssetClass.FX: D("0.5")}}, "leverage for fx must be at least 1"),
        ({"fees": {"crypto": D("-0.001")}}, "fee for crypto must not be negative"),
        ({"instrument_fees": {"AAPL": D(-1)}}, "fee for AAPL must not be negative"),
        ({"slippage": D(1)}, "slippage is a fraction"),
        ({"maintenance_ratio": D(0)}, "maintenance_ratio must be above 0"),
        ({"maintenance_ratio": D("1.5")}, "maintenance_ratio must be above 0"),
        ({"balance": 1000.5}, "floats are refused"),
        ({"currency": "usd"}, "must be upper case"),
        ({"leverage": {"stocks": D(2)}}, "unknown asset class 'stocks'"),
    ],
)
def test_settings_are_validated(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PaperSettings(**overrides)


def test_settings_defaults() -> None:
    s = PaperSettings()
    assert s.leverage_for(AssetClass.FX) == D(50)
    assert s.leverage_for(AssetClass.CRYPTO) == D(2)
    assert s.leverage_for(AssetClass.EQUITY) == D(4)
    assert s.leverage_for(AssetClass.INDEX) == D(1)  # missing class: no leverage
    assert s.fee_rate(INSTRUMENTS[0]) == D(0)
    assert s.fee_rate(INSTRUMENTS[3]) == D("0.004")
    assert s.fee_rate(INSTRUMENTS[4]) == D("0.0005")


# ---------------------------------------------------------------------------
# market orders


def test_market_buy_and_sell_at_the_touch() -> None:
    a = make()
    assert a.on_quote(q("EUR_USD", "1.10000", "1.10020")) == []
    order, events = a.submit(req("EUR_USD", "buy", "10000", "b1"), t(1))
    # acceptance, then the fill and the order's new state
    assert [type(e) for e in events] == [Order, Fill, Order]
    assert events[0].status is OrderStatus.ACCEPTED  # type: ignore[union-attr]
    assert events[0].venue_order_id == "P1"
    fill = fills(events)[0]
    assert (fill.fill_id, fill.price, fill.quantity, fill.side) == (
        "paper-1",
        D("1.10020"),  # a buy pays the ask
        D(10000),
        Side.BUY,
    )
    assert (fill.fee, fill.fee_currency, fill.broker, fill.venue_order_id) == (
        D("0.00"),
        "USD",
        "paper",
        "P1",
    )
    assert fill.time == t(1)
    assert order.status is OrderStatus.FILLED
    assert order.average_fill_price == D("1.10020")
    assert order.created_at == order.updated_at == t(1)
    assert a.open_orders() == []

    pos = position(a, "EUR_USD")
    # marked at the bid: (1.10000 - 1.10020) * 10000 = -2.00
    assert (pos.quantity, pos.average_price, pos.unrealized_pnl) == (
        D(10000),
        D("1.10020"),
        D("-2.00"),
    )
    acct = a.account(t(1))
    # margin: 10000 * mid 1.10010 / 50 = 220.02; equity 100000 - 2 = 99998.00
    assert (acct.balance, acct.equity, acct.margin_used, acct.margin_available) == (
        D("100000.00"),
        D("99998.00"),
        D("220.02"),
        D("99777.98"),
    )

    order, events = a.submit(req("EUR_USD", "sell", "10000", "s1"), t(2))
    assert fills(events)[0].price == D("1.10000")  # a sell gets the bid
    # realized: (1.10000 - 1.10020) * 10000 = -2.00
    assert a.realized_pnl == D("-2.00")
    assert a.account(t(2)).balance == D("99998.00")
    assert a.positions() == []


def test_slippage_rounds_away_from_the_trader() -> None:
    a = make(slippage=D("0.0001"))
    a.on_quote(q("EUR_USD", "1.10005", "1.10020"))
    _, events = a.submit(req("EUR_USD", "buy", "1000", "b1"), t(1))
    # 1.10020 * 1.0001 = 1.10031002 -> up to the 0.00001 increment: 1.10032
    assert fills(events)[0].price == D("1.10032")
    _, events = a.submit(req("EUR_USD", "sell", "1000", "s1"), t(1))
    # 1.10005 * 0.9999 = 1.099939995 -> down to the increment: 1.09993
    assert fills(events)[0].price == D("1.09993")
    # realized: (1.09993 - 1.10032) * 1000 = -0.39
    assert a.realized_pnl == D("-0.39")


def test_limit_fills_pay_no_slippage() -> None:
    a = make(slippage=D("0.001"))
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    request = req("EUR_USD", "buy", "1000", "l1", type="limit", limit_price=D("1.10100"))
    _, events = a.submit(request, t(1))
    assert fills(events)[0].price == D("1.10020")


def test_fees_per_asset_class_and_per_instrument_override() -> None:
    a = make()
    a.on_quote(q("BTC_USD", "39990.00", "40000.00"))
    a.on_quote(q("AAPL", "189.99", "190.01"))
    _, events = a.submit(req("BTC_USD", "buy", "0.5", "c1"), t(1))
    # crypto 0.4%: 0.5 * 40000.00 * 0.004 = 80.00
    assert fills(events)[0].fee == D("80.00")
    _, events = a.submit(req("AAPL", "buy", "10", "e1"), t(1))
    # equity 5 bp: 10 * 190.01 * 0.0005 = 0.950050 -> 0.95
    assert fills(events)[0].fee == D("0.95")
    assert a.fees_paid == D("80.95")
    assert a.account(t(1)).balance == D("99919.05")  # 100000 - 80.95

    b = make(instrument_fees={"AAPL": D("0.001")})
    b.on_quote(q("AAPL", "189.99", "190.01"))
    _, events = b.submit(req("AAPL", "buy", "10", "e1"), t(1))
    # override 10 bp: 10 * 190.01 * 0.001 = 1.9001 -> 1.90
    assert fills(events)[0].fee == D("1.90")
    assert fills(events)[0].fee_currency == "USD"


def test_market_gtc_fills_across_quotes_by_size() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020", ask_size="3000"))
    request = req("EUR_USD", "buy", "10000", "m1", time_in_force="gtc")
    order, events = a.submit(request, t(1))
    assert fills(events)[0].quantity == D(3000)
    assert order.status is OrderStatus.PARTIALLY_FILLED
    assert a.open_orders("EUR_USD") == [order]

    events = a.on_quote(q("EUR_USD", "1.10010", "1.10030", at=2, ask_size="5000"))
    assert [(f.quantity, f.price) for f in fills(events)] == [(D(5000), D("1.10030"))]
    assert orders(events)[-1].filled_quantity == D(8000)
    assert orders(events)[-1].updated_at == t(2)

    events = a.on_quote(q("EUR_USD", "1.10020", "1.10040", at=3))  # size unknown: unlimited
    order = orders(events)[-1]
    assert order.status is OrderStatus.FILLED
    # (3000 * 1.10020 + 5000 * 1.10030 + 2000 * 1.10040) / 10000 = 11002.9 / 10000 = 1.10029
    assert order.average_fill_price == D("1.10029")
    assert position(a, "EUR_USD").average_price == D("1.10029")
    assert a.open_orders() == []


def test_ioc_cancels_the_remainder_and_quote_size_is_shared() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020", ask_size="4000"))
    order, events = a.submit(req("EUR_USD", "buy", "3000", "i1"), t(1))  # market: IOC
    assert order.status is OrderStatus.FILLED
    # only 4000 - 3000 = 1000 of this quote is left for the next order
    order, events = a.submit(req("EUR_USD", "buy", "3000", "i2"), t(1))
    assert [e.status for e in orders(events)] == [
        OrderStatus.ACCEPTED,
        OrderStatus.PARTIALLY_FILLED,
        OrderStatus.CANCELED,
    ]
    assert fills(events)[0].quantity == D(1000)
    assert (order.status, order.filled_quantity) == (OrderStatus.CANCELED, D(1000))
    assert position(a, "EUR_USD").quantity == D(4000)

    # nothing left at all: cancelled without a fill
    order, events = a.submit(req("EUR_USD", "buy", "1", "i3"), t(1))
    assert (order.status, order.filled_quantity, fills(events)) == (
        OrderStatus.CANCELED,
        D(0),
        [],
    )
    # a new quote brings new size
    a.on_quote(q("EUR_USD", "1.10000", "1.10020", at=2, ask_size="4000"))
    order, _ = a.submit(req("EUR_USD", "buy", "4000", "i4"), t(2))
    assert order.status is OrderStatus.FILLED


def test_fill_or_kill() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020", ask_size="4000"))
    request = req("EUR_USD", "buy", "5000", "f1", time_in_force="fok")
    with pytest.raises(OrderRejected, match="fill or kill: only 4000 available") as info:
        a.submit(request, t(1))
    assert info.value.broker == "paper"
    assert a.positions() == []
    with pytest.raises(OrderRejected, match="fill or kill: only 0 available"):
        a.submit(
            req(
                "EUR_USD",
                "buy",
                "1000",
                "f2",
                type="limit",
                limit_price=D("1.10000"),
                time_in_force="fok",
            ),
            t(1),
        )
    order, _ = a.submit(req("EUR_USD", "buy", "4000", "f3", time_in_force="fok"), t(1))
    assert order.status is OrderStatus.FILLED
    # nothing was stored for the rejected order: its id may be used again
    with pytest.raises(NotFound):
        a.get_order("f1")


# ---------------------------------------------------------------------------
# limit and stop orders


def test_resting_limit_and_price_improvement() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    buy = req("EUR_USD", "buy", "1000", "l1", type="limit", limit_price=D("1.10000"))
    order, events = a.submit(buy, t(1))
    assert (order.status, fills(events)) == (OrderStatus.ACCEPTED, [])
    assert a.on_quote(q("EUR_USD", "1.10005", "1.10015", at=2)) == []  # ask above the limit
    events = a.on_quote(q("EUR_USD", "1.09970", "1.09990", at=3))
    # ask 1.09990 <= limit 1.10000: fills at min(limit, ask) = 1.09990
    assert fills(events)[0].price == D("1.09990")
    assert orders(events)[0].status is OrderStatus.FILLED

    # marketable at submission: a sell limit at 1.09900 below the bid 1.09970 gets the bid
    sell = req("EUR_USD", "sell", "1000", "l2", type="limit", limit_price=D("1.09900"))
    _, events = a.submit(sell, t(4))
    assert fills(events)[0].price == D("1.09970")
    # realized: (1.09970 - 1.09990) * 1000 = -0.20
    assert a.realized_pnl == D("-0.20")


def test_stop_triggers_and_keeps_working_once_triggered() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    stop = req("EUR_USD", "buy", "5000", "st1", type="stop", stop_price=D("1.10100"))
    order, _ = a.submit(stop, t(1))
    assert order.status is OrderStatus.ACCEPTED
    assert a.on_quote(q("EUR_USD", "1.10070", "1.10090", at=2)) == []  # ask below the stop
    events = a.on_quote(q("EUR_USD", "1.10090", "1.10110", at=3, ask_size="2000"))
    assert [(f.quantity, f.price) for f in fills(events)] == [(D(2000), D("1.10110"))]
    # back below the stop: a triggered stop is a market order now and fills the rest
    events = a.on_quote(q("EUR_USD", "1.10030", "1.10050", at=4))
    assert [(f.quantity, f.price) for f in fills(events)] == [(D(3000), D("1.10050"))]
    assert orders(events)[0].status is OrderStatus.FILLED


def test_stop_through_the_market_triggers_at_once_with_slippage() -> None:
    a = make(slippage=D("0.0001"))
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    sell_stop = req("EUR_USD", "sell", "1000", "st1", type="stop", stop_price=D("1.10050"))
    order, events = a.submit(sell_stop, t(1))
    # bid 1.10000 <= stop: fills at 1.10000 * 0.9999 = 1.09989
    assert fills(events)[0].price == D("1.09989")
    assert order.status is OrderStatus.FILLED


def test_gtd_expiry() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    gtd = req(
        "EUR_USD",
        "buy",
        "1000",
        "g1",
        type="limit",
        limit_price=D("1.09000"),
        time_in_force="gtd",
        expire_time=t(60),
    )
    a.submit(gtd, t(1))
    assert a.on_quote(q("EUR_USD", "1.10000", "1.10020", at=59)) == []
    events = a.on_quote(q("EUR_USD", "1.08000", "1.08020", at=60))  # would fill, but expired
    assert len(events) == 1
    expired = orders(events)[0]
    assert (expired.status, expired.updated_at) == (OrderStatus.EXPIRED, t(60))
    assert a.open_orders() == []
    assert a.get_order("g1") == expired

    late = req(
        "EUR_USD",
        "buy",
        "1000",
        "g2",
        type="limit",
        limit_price=D("1.09000"),
        time_in_force="gtd",
        expire_time=t(60),
    )
    with pytest.raises(OrderRejected, match="is not after the submission time"):
        a.submit(late, t(61))


def test_day_orders_work_like_gtc() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    day = req(
        "EUR_USD",
        "buy",
        "1000",
        "d1",
        type="limit",
        limit_price=D("1.09000"),
        time_in_force=TimeInForce.DAY,
    )
    a.submit(day, t(1))
    a.on_quote(q("EUR_USD", "1.10000", "1.10020", at=86400 * 3))
    assert a.get_order("d1").status is OrderStatus.ACCEPTED


# ---------------------------------------------------------------------------
# protection


def test_attached_stop_loss_fires_with_sl_id() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    entry = req(
        "EUR_USD",
        "buy",
        "10000",
        "entry1",
        stop_loss=D("1.09500"),
        take_profit=D("1.10500"),
    )
    a.submit(entry, t(1))
    pos = position(a, "EUR_USD")
    assert (pos.stop_loss, pos.take_profit) == (D("1.09500"), D("1.10500"))
    assert a.on_quote(q("EUR_USD", "1.09600", "1.09620", at=2)) == []
    events = a.on_quote(q("EUR_USD", "1.09500", "1.09520", at=3))
    assert [type(e) for e in events] == [Fill, Order]
    fill, closing = events
    assert isinstance(fill, Fill)
    assert isinstance(closing, Order)
    assert (closing.client_order_id, closing.request.tag, closing.request.type) == (
        "entry1.sl",
        "stop_loss",
        OrderType.MARKET,
    )
    assert (closing.status, closing.filled_quantity) == (OrderStatus.FILLED, D(10000))
    assert (fill.side, fill.price, fill.client_order_id) == (Side.SELL, D("1.09500"), "entry1.sl")
    # realized: (1.09500 - 1.10020) * 10000 = -52.00
    assert a.realized_pnl == D("-52.00")
    assert a.positions() == []
    assert a.get_order("entry1.sl") == closing


def test_attached_take_profit_fires_for_a_short() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    entry = req("EUR_USD", "sell", "1000", "s1", stop_loss=D("1.11000"), take_profit=D("1.09000"))
    a.submit(entry, t(1))
    assert a.on_quote(q("EUR_USD", "1.08990", "1.09010", at=2)) == []  # ask above the TP
    events = a.on_quote(q("EUR_USD", "1.08970", "1.08990", at=3))
    fill, closing = events
    assert isinstance(fill, Fill)
    assert isinstance(closing, Order)
    assert (closing.client_order_id, closing.request.tag) == ("s1.tp", "take_profit")
    # buys back at the ask 1.08990 (better than the TP 1.09000)
    assert (fill.side, fill.price) == (Side.BUY, D("1.08990"))
    # realized: (1.10000 - 1.08990) * 1000 = 10.10
    assert a.realized_pnl == D("10.10")


def test_protection_waits_for_the_next_quote_and_ids_get_a_counter() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    entry = req(
        "EUR_USD",
        "buy",
        "10000",
        "e1",
        type="limit",
        limit_price=D("1.10000"),
        stop_loss=D("1.09000"),
    )
    a.submit(entry, t(1))
    # fills 4000 at 1.09990; the bid 1.08000 is below the new SL, but protection set by
    # this quote's fill only watches later quotes
    events = a.on_quote(q("EUR_USD", "1.08000", "1.09990", at=2, ask_size="4000"))
    assert [f.quantity for f in fills(events)] == [D(4000)]
    assert position(a, "EUR_USD").stop_loss == D("1.09000")
    # next quote: the limit takes 2000 more at 1.09010, then the SL closes all 6000
    events = a.on_quote(q("EUR_USD", "1.08990", "1.09010", at=3, ask_size="2000"))
    assert [(f.client_order_id, f.quantity) for f in fills(events)] == [
        ("e1", D(2000)),
        ("e1.sl", D(6000)),
    ]
    assert a.positions() == []
    # e1 fills again from flat: its protection applies to the new position
    a.on_quote(q("EUR_USD", "1.09500", "1.09520", at=4, ask_size="1000"))
    assert position(a, "EUR_USD").stop_loss == D("1.09000")
    events = a.on_quote(q("EUR_USD", "1.08900", "1.08920", at=5, ask_size="0"))
    assert [f.client_order_id for f in fills(events)] == ["e1.sl2"]


def test_market_order_protection_on_the_wrong_side_is_rejected() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    with pytest.raises(OrderRejected, match=r"must be below the bid 1\.10000"):
        a.submit(req("EUR_USD", "buy", "1000", "b1", stop_loss=D("1.10010")), t(1))


def test_replace_order_protection() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    entry = req(
        "EUR_USD",
        "buy",
        "1000",
        "l1",
        type="limit",
        limit_price=D("1.09800"),
        stop_loss=D("1.09000"),
        take_profit=D("1.11000"),
    )
    a.submit(entry, t(1))
    order, events = a.replace_order_protection("l1", take_profit=None, now=t(2))
    assert events == [order]
    assert (order.request.stop_loss, order.request.take_profit) == (D("1.09000"), None)
    assert order.client_order_id == "l1"
    assert (order.created_at, order.updated_at) == (t(1), t(2))
    assert a.open_orders() == [order]

    order, events = a.replace_order_protection("l1", stop_loss=D("1.09500"), now=t(3))
    assert order.request.stop_loss == D("1.09500")
    assert a.replace_order_protection("l1", now=t(4)) == (order, [])  # all KEEP: no change

    with pytest.raises(OrderRejected, match="wrong side of the entry"):
        a.replace_order_protection("l1", stop_loss=D("1.09900"), now=t(5))
    with pytest.raises(OrderRejected, match="price increment"):
        a.replace_order_protection("l1", stop_loss=D("1.090001"), now=t(5))
    with pytest.raises(NotFound):
        a.replace_order_protection("nope", stop_loss=None, now=t(5))

    # the fill hands the order's (replaced) protection to the position
    a.on_quote(q("EUR_USD", "1.09780", "1.09800", at=6))
    pos = position(a, "EUR_USD")
    assert (pos.stop_loss, pos.take_profit) == (D("1.09500"), None)
    with pytest.raises(NotFound, match="is filled"):
        a.replace_order_protection("l1", stop_loss=None, now=t(7))


def test_replace_position_protection() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    with pytest.raises(NotFound, match="no open paper position in EUR_USD"):
        a.replace_position_protection("EUR_USD", stop_loss=D("1.09000"), now=t(1))
    a.submit(req("EUR_USD", "buy", "1000", "b1"), t(1))
    pos = a.replace_position_protection(
        "EUR_USD", stop_loss=D("1.09000"), take_profit=D("1.11000"), now=t(2)
    )
    assert (pos.stop_loss, pos.take_profit) == (D("1.09000"), D("1.11000"))
    pos = a.replace_position_protection("EUR_USD", take_profit=None, now=t(3))
    assert (pos.stop_loss, pos.take_profit) == (D("1.09000"), None)
    assert a.positions() == [pos]

    with pytest.raises(OrderRejected, match=r"stop loss must be below the bid 1\.10000"):
        a.replace_position_protection("EUR_USD", stop_loss=D("1.10000"), now=t(4))
    assert position(a, "EUR_USD").stop_loss == D("1.09000")  # unchanged by the refusal

    # the removed TP does not fire; the SL does, with the opening order as parent
    assert a.on_quote(q("EUR_USD", "1.12000", "1.12020", at=5)) == []
    events = a.on_quote(q("EUR_USD", "1.08990", "1.09010", at=6))
    assert [f.client_order_id for f in fills(events)] == ["b1.sl"]


# ---------------------------------------------------------------------------
# P&L


def test_realized_pnl_on_add_reduce_and_flip() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    a.submit(req("EUR_USD", "buy", "10000", "b1"), t(1))
    a.on_quote(q("EUR_USD", "1.10020", "1.10040", at=2))
    a.submit(req("EUR_USD", "buy", "10000", "b2"), t(2))
    # (10000 * 1.10020 + 10000 * 1.10040) / 20000 = 1.10030
    assert position(a, "EUR_USD").average_price == D("1.10030")

    a.on_quote(q("EUR_USD", "1.10130", "1.10150", at=3))
    a.submit(req("EUR_USD", "sell", "8000", "s1"), t(3))
    # reduce: (1.10130 - 1.10030) * 8000 = 8.00; the average stays
    assert a.realized_pnl == D("8.00")
    pos = position(a, "EUR_USD")
    assert (pos.quantity, pos.average_price) == (D(12000), D("1.10030"))

    a.on_quote(q("EUR_USD", "1.10230", "1.10250", at=4))
    a.submit(req("EUR_USD", "sell", "16000", "s2"), t(4))
    # flip: closes 12000 for (1.10230 - 1.10030) * 12000 = 24.00, opens 4000 short at 1.10230
    assert a.realized_pnl == D("32.00")
    pos = position(a, "EUR_USD")
    assert (pos.quantity, pos.average_price) == (D(-4000), D("1.10230"))
    # short marked at the ask: (1.10230 - 1.10250) * 4000 = -0.80
    assert pos.unrealized_pnl == D("-0.80")
    assert a.account(t(4)).balance == D("100032.00")


def test_usd_jpy_pnl_is_converted_at_the_pair_mid() -> None:
    a = make()
    a.on_quote(q("USD_JPY", "150.000", "150.020"))
    a.submit(req("USD_JPY", "buy", "10000", "j1"), t(1))
    a.on_quote(q("USD_JPY", "151.000", "151.020", at=2))
    # (151.000 - 150.020) * 10000 = 9800 JPY; / mid 151.010 = 64.8963... -> 64.90 USD
    assert position(a, "USD_JPY").unrealized_pnl == D("64.90")
    # margin: 10000 * 151.010 / 151.010 / 50 = 200.00 USD
    assert a.account(t(2)).margin_used == D("200.00")
    a.submit(req("USD_JPY", "sell", "10000", "j2"), t(2))
    assert a.realized_pnl == D("64.90")
    assert a.account(t(2)).balance == D("100064.90")


def test_eur_gbp_needs_a_gbp_usd_quote() -> None:
    a = make(instrument_fees={"EUR_GBP": D("0.0001")})
    a.on_quote(q("EUR_GBP", "0.85000", "0.85020"))
    with pytest.raises(OrderRejected, match="cannot value GBP in USD: the paper market needs "):
        a.submit(req("EUR_GBP", "buy", "10000", "g1"), t(1))
    with pytest.raises(NotFound):  # nothing was stored for the refused order
        a.get_order("g1")

    a.on_quote(q("GBP_USD", "1.25000", "1.25010"))  # not traded, used as a rate
    _, events = a.submit(req("EUR_GBP", "buy", "10000", "g1"), t(1))
    # fee: 0.0001 * 10000 * 0.85020 = 0.8502 GBP * mid 1.25005 = 1.06279251 -> 1.06 USD
    assert fills(events)[0].fee == D("1.06")
    a.on_quote(q("EUR_GBP", "0.85120", "0.85140", at=2))
    _, events = a.submit(req("EUR_GBP", "sell", "10000", "g2"), t(2))
    # (0.85120 - 0.85020) * 10000 = 10 GBP * 1.25005 = 12.5005 -> 12.50 USD (half-even)
    # fee: 0.0001 * 10000 * 0.85120 = 0.8512 GBP * 1.25005 = 1.06404256 -> 1.06 USD
    assert a.realized_pnl == D("12.50")
    assert a.fees_paid == D("2.12")
    assert a.account(t(2)).balance == D("100010.38")  # 100000 + 12.50 - 2.12


def test_gbp_account_uses_the_direct_pair() -> None:
    a = PaperAccount("paper", PaperSettings(currency="GBP"), INSTRUMENTS)
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    with pytest.raises(OrderRejected, match="needs GBP_USD or USD_GBP"):
        a.submit(req("EUR_USD", "buy", "1000", "x1"), t(1))


# ---------------------------------------------------------------------------
# margin


def test_margin_rejection_names_the_numbers() -> None:
    a = make(balance=D(1500), instrument_fees={"AAPL": D(0)}, maintenance_ratio=D("0.1"))
    a.on_quote(q("AAPL", "191.99", "192.01"))
    # 50 * mid 192.00 / leverage 4 = 2400.00 needed
    with pytest.raises(
        OrderRejected,
        match=r"insufficient margin: the order needs 2400\.00 USD, 1500\.00 USD available",
    ):
        a.submit(req("AAPL", "buy", "50", "m1"), t(1))
    # a limit is checked at its price: 40 * 150.00 / 4 = 1500.00, exactly what is free
    order, _ = a.submit(req("AAPL", "buy", "40", "m2", type="limit", limit_price=D("150.00")), t(1))
    assert order.status is OrderStatus.ACCEPTED

    # working orders reserve no margin: 25 * 192.00 / 4 = 1200.00 still fits
    a.submit(req("AAPL", "buy", "25", "m3"), t(1))
    acct = a.account(t(1))
    # unrealized (191.99 - 192.01) * 25 = -0.50; margin 25 * 192 / 4 = 1200.00
    assert (acct.equity, acct.margin_used, acct.margin_available) == (
        D("1499.50"),
        D("1200.00"),
        D("299.50"),
    )
    # reducing is never refused, even when nothing is free:
    # equity 1500 + (150.00 - 192.01) * 25 = 449.75, margin 25 * 150.01 / 4 = 937.56
    a.on_quote(q("AAPL", "150.00", "150.02", at=2))
    assert a.account(t(2)).margin_available < 0
    order, _ = a.submit(req("AAPL", "sell", "25", "m4"), t(2))
    assert order.status is OrderStatus.FILLED


def test_margin_closeout_when_equity_falls_below_maintenance() -> None:
    a = make(balance=D(1000))
    a.on_quote(q("EUR_USD", "1.09990", "1.10010"))
    # margin: 40000 * 1.10000 / 50 = 880.00 <= 1000
    a.submit(req("EUR_USD", "buy", "40000", "b1"), t(1))
    # equity 1000 + (1.09000 - 1.10010) * 40000 = 596.00 >= 0.5 * 872.08 (margin at 1.09010)
    assert a.on_quote(q("EUR_USD", "1.09000", "1.09020", at=2)) == []
    events = a.on_quote(q("EUR_USD", "1.08500", "1.08520", at=3))
    # equity 1000 + (1.08500 - 1.10010) * 40000 = 396.00 < 0.5 * 868.08 = 434.04: close out
    assert [type(e) for e in events] == [Fill, Order]
    fill, closing = events
    assert isinstance(fill, Fill)
    assert isinstance(closing, Order)
    assert (closing.client_order_id, closing.request.tag, closing.status) == (
        "auto1",
        "margin_closeout",
        OrderStatus.FILLED,
    )
    assert (fill.side, fill.quantity, fill.price) == (Side.SELL, D(40000), D("1.08500"))
    assert a.positions() == []
    assert a.realized_pnl == D("-604.00")
    assert a.account(t(3)).balance == D("396.00")


# ---------------------------------------------------------------------------
# orders: ids, cancels, refusals


def test_duplicate_client_order_id_is_idempotent() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    first, events = a.submit(req("EUR_USD", "buy", "1000", "dup"), t(1))
    assert len(fills(events)) == 1
    again, events = a.submit(req("EUR_USD", "buy", "1000", "dup"), t(2))
    assert (again, events) == (first, [])
    assert position(a, "EUR_USD").quantity == D(1000)


def test_cancel() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    with pytest.raises(NotFound, match="no paper order 'nope'"):
        a.cancel("nope", t(1))
    a.submit(req("EUR_USD", "buy", "1000", "l1", type="limit", limit_price=D("1.09000")), t(1))
    order, events = a.cancel("l1", t(2))
    assert events == [order]
    assert (order.status, order.updated_at) == (OrderStatus.CANCELED, t(2))
    assert a.open_orders() == []
    assert a.cancel("l1", t(3)) == (order, [])  # final: unchanged
    assert a.on_quote(q("EUR_USD", "1.08000", "1.08020", at=4)) == []


def test_open_orders_in_submission_order_and_by_instrument() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    a.on_quote(q("AAPL", "189.99", "190.01"))
    a.submit(req("EUR_USD", "buy", "1000", "o1", type="limit", limit_price=D("1.09000")), t(1))
    a.submit(req("AAPL", "buy", "1", "o2", type="limit", limit_price=D("180.00")), t(1))
    a.submit(req("EUR_USD", "sell", "1000", "o3", type="limit", limit_price=D("1.12000")), t(1))
    assert [o.client_order_id for o in a.open_orders()] == ["o1", "o2", "o3"]
    assert [o.client_order_id for o in a.open_orders("EUR_USD")] == ["o1", "o3"]
    assert [o.venue_order_id for o in a.open_orders()] == ["P1", "P2", "P3"]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            req("GBP_CHF", "buy", "1", "x"),
            "unknown instrument GBP_CHF: the paper market trades AAPL, BTC_USD, EUR_GBP, "
            "EUR_USD, USD_JPY",
        ),
        (req("EUR_USD", "buy", "10.5", "x"), "not a multiple of its size increment 1"),
        (req("BTC_USD", "buy", "0.0005", "x"), "below its minimum size 0.001"),
        (req("BTC_USD", "buy", "0.00015", "x"), "size increment 0.0001"),
        (
            req("EUR_USD", "buy", "1", "x", type="limit", limit_price=D("1.100001")),
            "limit_price 1.100001 of EUR_USD is not a multiple of its price increment 0.00001",
        ),
        (
            req("EUR_USD", "buy", "1", "x", type="stop", stop_price=D("1.200005")),
            "stop_price 1.200005",
        ),
        (req("EUR_USD", "buy", "1", "x", take_profit=D("1.2000001")), "take_profit 1.2000001"),
        (req("USD_JPY", "buy", "1", "x"), "no market for USD_JPY yet"),
    ],
)
def test_refusals(request_: OrderRequest, message: str) -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    a.on_quote(q("BTC_USD", "39990.00", "40000.00"))
    with pytest.raises(OrderRejected) as info:
        a.submit(request_, t(1))
    assert message in info.value.reason
    assert info.value.broker == "paper"


def test_results_do_not_depend_on_the_callers_decimal_context() -> None:
    import decimal

    def run() -> list[Any]:
        a = make()
        a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
        out: list[Any] = a.submit(req("EUR_USD", "buy", "3", "b1"), t(1))[1]
        a.on_quote(q("EUR_USD", "1.10000", "1.10030", at=2))
        out += a.submit(req("EUR_USD", "buy", "7", "b2"), t(2))[1]
        # 3 * 1.10020 + 7 * 1.10030 = 11.0027 / 10: the average needs more than 5 digits
        return [*out, *a.positions(), a.account(t(3))]

    expected = run()
    with decimal.localcontext(decimal.Context(prec=5)):
        assert run() == expected


# ---------------------------------------------------------------------------
# snapshot / restore


def _scenario_start(a: PaperAccount) -> None:
    a.on_quote(q("EUR_USD", "1.10000", "1.10020", ask_size="3000"))
    a.on_quote(q("USD_JPY", "150.000", "150.020"))
    a.submit(
        req("EUR_USD", "buy", "10000", "p1", time_in_force="gtc", stop_loss=D("1.09000")), t(1)
    )
    a.submit(req("USD_JPY", "sell", "5000", "p2", take_profit=D("148.000")), t(1))
    a.submit(req("EUR_USD", "sell", "2000", "p3", type="limit", limit_price=D("1.10500")), t(1))
    a.submit(req("USD_JPY", "buy", "1000", "p4", type="stop", stop_price=D("150.500")), t(1))
    a.on_quote(q("USD_JPY", "150.490", "150.510", at=2, ask_size="400"))  # p4 triggered, part


def _scenario_continue(a: PaperAccount) -> list[Any]:
    out: list[Any] = []
    out += a.on_quote(q("EUR_USD", "1.10100", "1.10120", at=3, ask_size="5000"))
    out += a.on_quote(q("USD_JPY", "150.400", "150.420", at=4))
    out += a.on_quote(q("EUR_USD", "1.10500", "1.10520", at=5))
    out += a.submit(req("EUR_USD", "sell", "1000", "p5"), t(6))[1]
    out += a.on_quote(q("USD_JPY", "147.980", "148.000", at=7))
    out += a.on_quote(q("EUR_USD", "1.08990", "1.09010", at=8))
    out += a.positions()
    out.append(a.account(t(9)))
    return out


def test_snapshot_restore_round_trip_continues_identically() -> None:
    a = make()
    _scenario_start(a)
    data = a.snapshot()
    text = json.dumps(data)
    b = PaperAccount.restore(
        "paper", PaperSettings(), INSTRUMENTS, json.loads(text), id_factory=lambda: "unused"
    )
    assert b.snapshot() == data
    assert b.positions() == a.positions()
    assert b.open_orders() == a.open_orders()
    assert b.account(t(2)) == a.account(t(2))
    assert (b.realized_pnl, b.fees_paid) == (a.realized_pnl, a.fees_paid)
    # the idempotency memory survives: a retried submit does not trade again
    assert b.submit(req("USD_JPY", "sell", "5000", "p2"), t(3)) == (a.get_order("p2"), [])

    out_a, out_b = _scenario_continue(a), _scenario_continue(b)
    assert out_a == out_b
    assert any(isinstance(e, Fill) and e.client_order_id == "p2.tp" for e in out_a)
    assert any(isinstance(e, Fill) and e.client_order_id == "p1.sl" for e in out_a)
    assert a.snapshot() == b.snapshot()


def test_restore_refuses_a_snapshot_it_cannot_continue() -> None:
    a = make()
    _scenario_start(a)
    data = a.snapshot()
    with pytest.raises(ValueError, match="snapshot is in USD but the settings say EUR"):
        PaperAccount.restore("paper", PaperSettings(currency="EUR"), INSTRUMENTS, data)
    with pytest.raises(ValueError, match="no longer trades: add USD_JPY"):
        PaperAccount.restore("paper", PaperSettings(), INSTRUMENTS[:1], data)
    with pytest.raises(ValueError, match="version"):
        PaperAccount.restore("paper", PaperSettings(), INSTRUMENTS, {**data, "version": 99})
    with pytest.raises(ValueError, match="snapshot is damaged"):
        PaperAccount.restore("paper", PaperSettings(), INSTRUMENTS, {**data, "balance": "1,5"})
    damaged = {k: v for k, v in data.items() if k != "positions"}
    with pytest.raises(ValueError, match=r"snapshot is damaged \(missing 'positions'\)"):
        PaperAccount.restore("paper", PaperSettings(), INSTRUMENTS, damaged)


# ---------------------------------------------------------------------------
# property: the books balance

STOCK = Instrument(symbol="XYZ", asset_class="index", quote_currency="USD", price_increment="0.01")


@st.composite
def trades(draw: st.DrawFn) -> list[tuple[Side, D, D, D]]:
    """(side, quantity, bid, spread) steps."""
    steps = draw(st.integers(min_value=1, max_value=15))
    return [
        (
            draw(st.sampled_from([Side.BUY, Side.SELL])),
            D(draw(st.integers(min_value=1, max_value=50))),
            D(draw(st.integers(min_value=5000, max_value=15000))) / 100,
            D(draw(st.integers(min_value=0, max_value=20))) / 100,
        )
        for _ in range(steps)
    ]


@settings(max_examples=150, deadline=None)
@given(steps=trades(), fee=st.sampled_from([D(0), D("0.0005"), D("0.0013")]))
def test_books_balance_after_closing_everything(steps: list[tuple[Side, D, D, D]], fee: D) -> None:
    start = D(10_000_000)
    a = PaperAccount("paper", PaperSettings(balance=start, instrument_fees={"XYZ": fee}), [STOCK])
    cash = D(0)  # -quantity * price over every fill (buys pay, sells receive)
    n_fills = 0
    for i, (side, quantity, bid, spread) in enumerate(steps):
        a.on_quote(Quote(instrument="XYZ", bid=bid, ask=bid + spread, time=t(i), source="h"))
        _, events = a.submit(req("XYZ", side.value, str(quantity), f"o{i}"), t(i))
        for f in fills(events):
            cash -= f.quantity * f.price if f.side is Side.BUY else -f.quantity * f.price
            n_fills += 1
    for p in a.positions():
        closing = "sell" if p.quantity > 0 else "buy"
        _, events = a.submit(req("XYZ", closing, str(abs(p.quantity)), "close"), t(99))
        for f in fills(events):
            cash -= f.quantity * f.price if f.side is Side.BUY else -f.quantity * f.price
            n_fills += 1
    assert a.positions() == []
    balance = a.account(t(100)).balance
    # every booked amount went into the balance, exactly
    assert balance == start + a.realized_pnl - a.fees_paid
    # and the realized P&L is the cash flow, up to one cent of rounding per fill
    assert abs(a.realized_pnl - cash) <= D("0.01") * n_fills
    if fee == 0:
        assert a.fees_paid == 0


# ---------------------------------------------------------------------------
# market-if-touched orders: native, the mirror image of a stop


def mit(side: str, quantity: str, cid: str, touch: str, **kw: Any) -> OrderRequest:
    return req("EUR_USD", side, quantity, cid, type="market_if_touched", stop_price=D(touch), **kw)


def test_buy_market_if_touched_rests_below_and_fires_when_the_ask_falls_to_it() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    order, events = a.submit(mit("buy", "5000", "m1", "1.09900"), t(1))
    assert (order.status, fills(events)) == (OrderStatus.ACCEPTED, [])
    assert a.open_orders() == [order]
    # the ask rises (where a buy stop would fire): nothing
    assert a.on_quote(q("EUR_USD", "1.10100", "1.10120", at=2)) == []
    # the ask falls, but not to the touch price: nothing
    assert a.on_quote(q("EUR_USD", "1.09890", "1.09910", at=3)) == []
    # the ask touches 1.09900: a market order now, 2000 (the quoted size) at the ask
    events = a.on_quote(q("EUR_USD", "1.09880", "1.09900", at=4, ask_size="2000"))
    assert [(f.side, f.quantity, f.price) for f in fills(events)] == [
        (Side.BUY, D(2000), D("1.09900"))
    ]
    assert orders(events)[-1].status is OrderStatus.PARTIALLY_FILLED
    # the market moves away: once touched it stays a market order and fills the rest
    events = a.on_quote(q("EUR_USD", "1.10000", "1.10020", at=5))
    assert [(f.quantity, f.price) for f in fills(events)] == [(D(3000), D("1.10020"))]
    done = orders(events)[-1]
    # (2000 * 1.09900 + 3000 * 1.10020) / 5000 = 1.09972
    assert (done.status, done.average_fill_price) == (OrderStatus.FILLED, D("1.09972"))
    assert position(a, "EUR_USD").quantity == D(5000)


def test_sell_market_if_touched_rests_above_and_fires_when_the_bid_rises_to_it() -> None:
    a = make(slippage=D("0.0001"))
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    order, _ = a.submit(mit("sell", "1000", "m2", "1.10100"), t(1))
    assert order.status is OrderStatus.ACCEPTED
    # the bid falls (where a sell stop would fire): nothing
    assert a.on_quote(q("EUR_USD", "1.09800", "1.09820", at=2)) == []
    assert a.on_quote(q("EUR_USD", "1.10090", "1.10110", at=3)) == []  # bid below the touch
    events = a.on_quote(q("EUR_USD", "1.10100", "1.10120", at=4))
    # touched: a market sell at the bid with slippage: 1.10100 * 0.9999 = 1.1008899 -> 1.10088
    assert [(f.side, f.quantity, f.price) for f in fills(events)] == [
        (Side.SELL, D(1000), D("1.10088"))
    ]
    assert orders(events)[-1].status is OrderStatus.FILLED
    assert position(a, "EUR_USD").quantity == D(-1000)


def test_market_if_touched_with_the_market_already_there_fills_at_once_and_fok_checks_it() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    # a buy whose touch price is above the ask: the ask is already at or below it
    order, events = a.submit(mit("buy", "1000", "m3", "1.10050"), t(1))
    assert [(f.quantity, f.price) for f in fills(events)] == [(D(1000), D("1.10020"))]
    assert order.status is OrderStatus.FILLED
    # a sell whose touch price is below the bid: fills at the bid
    order, events = a.submit(mit("sell", "1000", "m4", "1.09950"), t(2))
    assert [(f.quantity, f.price) for f in fills(events)] == [(D(1000), D("1.10000"))]
    # fill or kill: an untouched one has nothing available now
    with pytest.raises(OrderRejected, match="fill or kill: only 0 available"):
        a.submit(mit("buy", "1000", "m5", "1.09900", time_in_force="fok"), t(3))
    order, _ = a.submit(mit("buy", "1000", "m6", "1.10020", time_in_force="fok"), t(3))
    assert order.status is OrderStatus.FILLED  # the ask 1.10020 touches 1.10020


def test_market_if_touched_carries_its_protection_to_the_position() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    entry = mit("buy", "1000", "m7", "1.09900", stop_loss=D("1.09500"), take_profit=D("1.10500"))
    a.submit(entry, t(1))
    events = a.on_quote(q("EUR_USD", "1.09880", "1.09900", at=2))
    assert [f.price for f in fills(events)] == [D("1.09900")]
    pos = position(a, "EUR_USD")
    assert (pos.stop_loss, pos.take_profit) == (D("1.09500"), D("1.10500"))
    events = a.on_quote(q("EUR_USD", "1.09490", "1.09510", at=3))
    assert [f.client_order_id for f in fills(events)] == ["m7.sl"]
    assert a.positions() == []


def test_a_touched_market_if_touched_order_stays_touched_through_a_restore() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    a.submit(mit("buy", "5000", "m8", "1.09900"), t(1))
    a.submit(mit("sell", "1000", "m9", "1.10500"), t(1))
    a.on_quote(q("EUR_USD", "1.09880", "1.09900", at=2, ask_size="2000"))  # m8 touched, part
    data = json.loads(json.dumps(a.snapshot()))
    b = PaperAccount.restore("paper", PaperSettings(), INSTRUMENTS, data, id_factory=lambda: "u")
    assert b.open_orders() == a.open_orders()
    later = [q("EUR_USD", "1.10000", "1.10020", at=3), q("EUR_USD", "1.10500", "1.10520", at=4)]
    out_a = [e for quote in later for e in a.on_quote(quote)]
    out_b = [e for quote in later for e in b.on_quote(quote)]
    assert out_a == out_b
    assert [(f.client_order_id, f.quantity, f.price) for f in fills(out_a)] == [
        ("m8", D(3000), D("1.10020")),  # still a market order, though the ask moved away
        ("m9", D(1000), D("1.10500")),  # the bid rose to the sell's touch price
    ]


# ---------------------------------------------------------------------------
# stop-limit orders


def test_stop_limit_triggers_then_works_as_a_limit_without_slippage() -> None:
    a = make(slippage=D("0.0001"))
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    buy = req(
        "EUR_USD",
        "buy",
        "2000",
        "sl1",
        type="stop_limit",
        stop_price=D("1.10100"),
        limit_price=D("1.10120"),
    )
    order, events = a.submit(buy, t(1))
    assert (order.status, fills(events)) == (OrderStatus.ACCEPTED, [])
    assert a.on_quote(q("EUR_USD", "1.10070", "1.10090", at=2)) == []  # ask below the stop
    # the ask gaps to 1.10150: the stop (1.10100) is reached, but the limit 1.10120 is not
    assert a.on_quote(q("EUR_USD", "1.10130", "1.10150", at=3)) == []
    assert a.get_order("sl1").status is OrderStatus.ACCEPTED
    # back below the stop: triggered stays triggered, and the ask 1.10090 is within the
    # limit: 1000 (the quoted size) fill at the ask itself, no slippage
    events = a.on_quote(q("EUR_USD", "1.10070", "1.10090", at=4, ask_size="1000"))
    assert [(f.quantity, f.price) for f in fills(events)] == [(D(1000), D("1.10090"))]
    assert orders(events)[-1].status is OrderStatus.PARTIALLY_FILLED
    # above the limit again: the rest waits, like any limit order
    assert a.on_quote(q("EUR_USD", "1.10140", "1.10160", at=5)) == []
    events = a.on_quote(q("EUR_USD", "1.10090", "1.10110", at=6))
    assert [(f.quantity, f.price) for f in fills(events)] == [(D(1000), D("1.10110"))]
    done = orders(events)[-1]
    # (1000 * 1.10090 + 1000 * 1.10110) / 2000 = 1.10100
    assert (done.status, done.average_fill_price) == (OrderStatus.FILLED, D("1.10100"))


def test_sell_stop_limit_fills_on_the_triggering_quote_when_within_its_limit() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    sell = req(
        "EUR_USD",
        "sell",
        "1000",
        "ss1",
        type="stop_limit",
        stop_price=D("1.09900"),
        limit_price=D("1.09850"),
    )
    a.submit(sell, t(1))
    assert a.on_quote(q("EUR_USD", "1.09910", "1.09930", at=2)) == []  # bid above the stop
    events = a.on_quote(q("EUR_USD", "1.09880", "1.09900", at=3))
    # bid 1.09880 <= stop 1.09900 triggers; 1.09880 >= limit 1.09850: fills at the bid
    assert [(f.side, f.quantity, f.price) for f in fills(events)] == [
        (Side.SELL, D(1000), D("1.09880"))
    ]
    # a sell stop-limit gapped through its limit rests instead
    gap = req(
        "EUR_USD",
        "sell",
        "1000",
        "ss2",
        type="stop_limit",
        stop_price=D("1.09800"),
        limit_price=D("1.09750"),
    )
    a.submit(gap, t(4))
    assert a.on_quote(q("EUR_USD", "1.09700", "1.09720", at=5)) == []  # triggered, below limit
    events = a.on_quote(q("EUR_USD", "1.09760", "1.09780", at=6))  # bid back within it
    assert [(f.quantity, f.price) for f in fills(events)] == [(D(1000), D("1.09760"))]


def test_stop_limit_through_the_market_fills_at_submission_and_fok_checks_it() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    through = req(
        "EUR_USD",
        "buy",
        "1000",
        "sl1",
        type="stop_limit",
        stop_price=D("1.10000"),
        limit_price=D("1.10050"),
    )
    order, events = a.submit(through, t(1))
    # ask 1.10020 >= stop 1.10000 and <= limit 1.10050: fills at the ask at once
    assert [(f.quantity, f.price) for f in fills(events)] == [(D(1000), D("1.10020"))]
    assert order.status is OrderStatus.FILLED
    not_reached = req(
        "EUR_USD",
        "buy",
        "1000",
        "sl2",
        type="stop_limit",
        stop_price=D("1.10100"),
        limit_price=D("1.10150"),
        time_in_force="fok",
    )
    with pytest.raises(OrderRejected, match="fill or kill: only 0 available"):
        a.submit(not_reached, t(1))


# ---------------------------------------------------------------------------
# trailing stops


def test_sell_trailing_stop_follows_the_highest_bid_by_a_distance() -> None:
    a = make(slippage=D("0.0001"))
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    a.submit(req("EUR_USD", "buy", "1000", "b1"), t(1))
    trail = req(
        "EUR_USD",
        "sell",
        "1000",
        "ts1",
        type="trailing_stop",
        trail_distance=D("0.00050"),
        time_in_force="gtc",
    )
    order, events = a.submit(trail, t(1))
    assert (order.status, fills(events)) == (OrderStatus.ACCEPTED, [])
    # best bid 1.10000 since acceptance: 1.10000 - 0.00050
    assert a.trailing_stop_price("ts1") == D("1.09950")
    assert a.on_quote(q("EUR_USD", "1.10100", "1.10120", at=2)) == []
    assert a.trailing_stop_price("ts1") == D("1.10050")  # follows the new high
    assert a.on_quote(q("EUR_USD", "1.10060", "1.10080", at=3)) == []
    assert a.trailing_stop_price("ts1") == D("1.10050")  # a lower bid does not move it
    assert a.on_quote(q("EUR_USD", "1.10200", "1.10220", at=4)) == []
    assert a.trailing_stop_price("ts1") == D("1.10150")
    # the bid falls to the trigger: a market sell of what the bid size allows, slipped:
    # 1.10150 * (1 - 0.0001) = 1.10138985, down to the increment: 1.10138
    events = a.on_quote(q("EUR_USD", "1.10150", "1.10170", at=5, bid_size="400"))
    assert [(f.quantity, f.price) for f in fills(events)] == [(D(400), D("1.10138"))]
    # triggered for good: the rest sells on the next quote whatever the price does:
    # 1.10300 * 0.9999 = 1.10288970 -> 1.10288
    events = a.on_quote(q("EUR_USD", "1.10300", "1.10320", at=6))
    assert [(f.quantity, f.price) for f in fills(events)] == [(D(600), D("1.10288"))]
    assert orders(events)[-1].status is OrderStatus.FILLED
    assert a.trailing_stop_price("ts1") is None  # not working any more
    assert a.positions() == []
    # the buy paid 1.10020 * 1.0001 = 1.10031002 -> 1.10032; realized:
    # (1.10138 - 1.10032) * 400 + (1.10288 - 1.10032) * 600 = 0.424 + 1.536 -> 0.42 + 1.54
    assert a.realized_pnl == D("1.96")


def test_buy_trailing_stop_follows_the_lowest_ask_by_a_percent() -> None:
    a = make()
    a.on_quote(q("AAPL", "189.99", "190.01"))
    trail = req("AAPL", "buy", "10", "tb1", type="trailing_stop", trail_percent=D("1"))
    order, _ = a.submit(trail, t(1))
    assert order.request.time_in_force is TimeInForce.GTC
    # lowest ask 190.01 * (1 + 1/100)
    assert a.trailing_stop_price("tb1") == D("191.9101")
    assert a.on_quote(q("AAPL", "179.98", "180.00", at=2)) == []
    assert a.trailing_stop_price("tb1") == D("181.8000")  # 180.00 * 1.01
    assert a.on_quote(q("AAPL", "181.77", "181.79", at=3)) == []  # just below the trigger
    events = a.on_quote(q("AAPL", "181.78", "181.80", at=4))
    assert [(f.side, f.quantity, f.price) for f in fills(events)] == [
        (Side.BUY, D(10), D("181.80"))
    ]
    # equity fee 0.0005 * 10 * 181.80 = 0.909 -> 0.91
    assert fills(events)[0].fee == D("0.91")
    assert position(a, "AAPL").quantity == D(10)


def test_trailing_stops_never_fire_on_their_acceptance_quote() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    # a trail of 0.001 %: the trigger is 1.10000 * 0.99999 = 1.0999890, just below the bid
    gtc = req("EUR_USD", "sell", "1000", "t1", type="trailing_stop", trail_percent=D("0.001"))
    order, events = a.submit(gtc, t(1))  # GTC: the default of every type but market
    assert order.status is OrderStatus.ACCEPTED and fills(events) == []
    immediate = req(
        "EUR_USD",
        "sell",
        "1000",
        "t2",
        type="trailing_stop",
        trail_percent=D("0.001"),
        time_in_force="ioc",
    )
    order, events = a.submit(immediate, t(1))
    assert order.status is OrderStatus.CANCELED and fills(events) == []
    fok = attrs.evolve(immediate, client_order_id="t3", time_in_force=TimeInForce.FOK)
    with pytest.raises(OrderRejected, match="fill or kill: only 0 available"):
        a.submit(fok, t(1))


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            req("EUR_USD", "sell", "1", "x", type="trailing_stop", trail_distance=D("0.000005")),
            "trail_distance 0.000005 of EUR_USD is not a multiple of its price increment",
        ),
        (
            req("EUR_USD", "sell", "1", "x", type="trailing_stop", trail_distance=D("1.10000")),
            "trail_distance 1.10000 of a sell trailing stop must be below the bid 1.10000",
        ),
        (
            req(
                "EUR_USD",
                "buy",
                "1",
                "x",
                type="trailing_stop",
                trail_percent=D(1),
                stop_loss=D("1.10000"),
            ),
            "stop_loss 1.10000 is on the wrong side of the market",
        ),
        (
            req(
                "EUR_USD",
                "buy",
                "1",
                "x",
                type="stop_limit",
                stop_price=D("1.1"),
                limit_price=D("1.100001"),
            ),
            "limit_price 1.100001 of EUR_USD is not a multiple",
        ),
        (
            req(
                "EUR_USD",
                "buy",
                "1",
                "x",
                type="stop_limit",
                stop_price=D("1.100007"),
                limit_price=D("1.1"),
            ),
            "stop_price 1.100007",
        ),
        (
            req("EUR_USD", "buy", "1.5", "x", type="trailing_stop", trail_percent=D(1)),
            "not a multiple of its size increment 1",
        ),
    ],
)
def test_stop_limit_and_trailing_refusals(request_: OrderRequest, message: str) -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    with pytest.raises(OrderRejected) as info:
        a.submit(request_, t(1))
    assert message in info.value.reason
    assert a.open_orders() == []


# ---------------------------------------------------------------------------
# fill history


def test_fills_since_are_oldest_first_at_or_after_since_and_snapshotted() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    first = fills(a.submit(req("EUR_USD", "buy", "1000", "f1"), t(10))[1])
    a.on_quote(q("EUR_USD", "1.10010", "1.10030", at=20))
    second = fills(a.submit(req("EUR_USD", "sell", "1000", "f2"), t(20))[1])
    assert a.fills(t(0)) == first + second
    assert a.fills(t(10)) == first + second  # at or after
    assert a.fills(t(11)) == second
    assert a.fills(t(21)) == []
    assert [f.fill_id for f in a.fills(t(0))] == ["paper-1", "paper-2"]
    with pytest.raises(ValueError, match="naive datetime"):
        a.fills(datetime(2026, 1, 5))
    b = PaperAccount.restore("paper", PaperSettings(), INSTRUMENTS, a.snapshot())
    assert b.fills(t(0)) == first + second


def test_fill_history_is_bounded_by_count_and_age(monkeypatch: pytest.MonkeyPatch) -> None:
    from rick_core.paper import account as account_module

    monkeypatch.setattr(account_module, "_FILL_HISTORY", 3)
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    for i in range(5):
        a.submit(req("EUR_USD", "buy" if i % 2 == 0 else "sell", "1", f"o{i}"), t(i))
    assert [f.fill_id for f in a.fills(t(0))] == ["paper-3", "paper-4", "paper-5"]
    # 30 days and a second later, the older fills are forgotten
    late = t(4) + timedelta(days=30, seconds=1)
    a.on_quote(Quote(instrument="EUR_USD", bid=D("1.1"), ask=D("1.1002"), time=late, source="t"))
    a.submit(req("EUR_USD", "sell", "1", "o5"), late)
    assert [f.fill_id for f in a.fills(t(0))] == ["paper-6"]


def test_a_version_1_snapshot_without_fills_still_restores() -> None:
    a = make()
    _scenario_start(a)
    data = a.snapshot()
    old = {k: v for k, v in data.items() if k not in ("fills", "trailing")}
    old["version"] = 1
    b = PaperAccount.restore("paper", PaperSettings(), INSTRUMENTS, old)
    assert b.positions() == a.positions()
    assert b.open_orders() == a.open_orders()
    assert b.fills(t(0)) == []


# ---------------------------------------------------------------------------
# changes: what the broker's crash journal writes, replayed over a snapshot


def _without_market(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A snapshot without the quotes: the journal does not keep the market."""
    return {k: v for k, v in snapshot.items() if k not in ("quotes", "consumed")}


def _everything(a: PaperAccount, log: list[str]) -> None:
    """A session touching every kind of change, journaling each step into ``log``."""

    def step(*_: Any) -> None:
        line = a.take_changes()
        if line is not None:
            log.append(line)

    step(_scenario_start(a))  # several operations in one record: still an overwrite
    stop_limit = req(
        "EUR_USD",
        "buy",
        "1000",
        "c1",
        type="stop_limit",
        stop_price=D("1.10600"),
        limit_price=D("1.10620"),
    )
    step(a.submit(stop_limit, t(2)))
    trailing = req("EUR_USD", "sell", "500", "c2", type="trailing_stop", trail_percent=D(1))
    step(a.submit(trailing, t(2)))
    step(a.submit(req("EUR_USD", "sell", "500", "c3", type="limit", limit_price=D("1.2")), t(2)))
    step(a.replace_order_protection("c3", stop_loss=D("1.3"), now=t(2)))
    step(a.on_quote(q("EUR_USD", "1.10100", "1.10120", at=3, ask_size="5000")))  # p1, c2 trail
    step(a.on_quote(q("USD_JPY", "150.400", "150.420", at=4)))  # p4's rest fills
    step(a.cancel("c3", t(5)))
    step(a.on_quote(q("EUR_USD", "1.10610", "1.10630", at=6)))  # c1 triggers over its limit
    step(a.on_quote(q("EUR_USD", "1.11000", "1.11020", at=7)))  # c2 trails up
    step(a.replace_position_protection("EUR_USD", stop_loss=D("1.09000"), now=t(8)))
    step(a.on_quote(q("USD_JPY", "147.980", "148.000", at=9)))  # the short's take profit


def test_changes_replayed_over_the_first_snapshot_rebuild_the_account() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    a.on_quote(q("USD_JPY", "150.000", "150.020"))
    assert a.take_changes() is None  # not tracking
    start = a.snapshot()
    a.track_changes()
    assert a.take_changes() is None and not a.has_changes
    log: list[str] = []
    _everything(a, log)
    assert len(log) >= 8
    assert all("\n" not in line for line in log)
    assert a.trailing_stop_price("c2") is not None
    assert "c1" in a._triggered  # triggered, waiting for its limit

    b = PaperAccount.restore("paper", PaperSettings(), INSTRUMENTS, start)
    for line in log:
        b.apply_changes(json.loads(line))
    assert _without_market(b.snapshot()) == _without_market(a.snapshot())
    assert b.trailing_stop_price("c2") == a.trailing_stop_price("c2")
    # and it goes on identically
    for account in (a, b):
        account.on_quote(q("EUR_USD", "1.10000", "1.10020", at=20))
        account.on_quote(q("USD_JPY", "150.000", "150.020", at=20))
    after = [account.on_quote(q("EUR_USD", "1.10600", "1.10610", at=21)) for account in (a, b)]
    assert after[0] == after[1]
    assert _without_market(b.snapshot()) == _without_market(a.snapshot())


def test_a_quote_that_changes_nothing_makes_no_record() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    a.track_changes()
    a.submit(req("EUR_USD", "buy", "1000", "l1", type="limit", limit_price=D("1.09")), t(1))
    assert a.has_changes
    record = json.loads(a.take_changes() or "")
    assert [o["order"]["status"] for o in record["orders"]] == ["accepted"]
    assert (record["fills"], record["positions"], record["order_seq"]) == ([], {}, 1)
    assert a.on_quote(q("EUR_USD", "1.10010", "1.10030", at=2)) == []
    assert not a.has_changes and a.take_changes() is None


def test_a_record_that_cannot_be_applied_is_refused() -> None:
    a = make()
    a.on_quote(q("EUR_USD", "1.10000", "1.10020"))
    a.track_changes()
    a.submit(req("EUR_USD", "buy", "1000", "b1"), t(1))
    record = json.loads(a.take_changes() or "")
    b = make()
    with pytest.raises(ValueError, match=r"damaged change record \(missing 'balance'\)"):
        b.apply_changes({k: v for k, v in record.items() if k != "balance"})
    record["fills"][0]["price"] = "-1"
    with pytest.raises(ValueError, match="damaged change record"):
        make().apply_changes(record)


@pytest.mark.parametrize(
    "order",
    [
        Order(
            request=OrderRequest(
                instrument="EUR_USD",
                side="sell",
                quantity=D("1E+3"),
                type="stop_limit",
                stop_price=D("1.09"),
                limit_price=D("1.08"),
                time_in_force="gtd",
                expire_time=T0,
                stop_loss=D("1.2"),
                take_profit=D("1.0"),
                tag='odd "tag" \u00e9\n\\',
                client_order_id="abc.1:2-3_4",
            ),
            broker='pap"er',
            status="partially_filled",
            venue_order_id="P\u00e97",
            filled_quantity=D("0.5"),
            average_fill_price=D("1.0800"),
            created_at=T0,
            updated_at=t(5),
            reject_reason='n\u00f6 "way"',
        ),
        Order(
            request=OrderRequest(
                instrument="BTC_USD",
                side="buy",
                quantity=D(1),
                type="trailing_stop",
                trail_distance=D("10.5"),
            ),
            broker="paper",
        ),
    ],
)
def test_the_fast_json_is_exactly_the_models_json(order: Order) -> None:
    from rick_core.model import to_jsonable
    from rick_core.paper.account import fill_json, order_json

    def dumped(value: Any) -> str:
        return json.dumps(to_jsonable(value), separators=(",", ":"))

    assert order_json(order) == dumped(order)
    fill = Fill(
        fill_id='x"1',
        client_order_id="foreign order \u00e9",
        instrument=order.instrument,
        side=order.request.side,
        quantity=D("0.5"),
        price=D("1.0800"),
        time=t(3),
        broker=order.broker,
        fee=D("-0.01"),
        fee_currency="USD",
        venue_order_id=order.venue_order_id,
    )
    assert fill_json(fill) == dumped(fill)
    # every field of the model is written: a new field must be added to the fast path
    for model, text in ((order, order_json(order)), (fill, fill_json(fill))):
        assert set(json.loads(text)) == {f.name for f in attrs.fields(type(model))}
    assert set(json.loads(order_json(order))["request"]) == {
        f.name for f in attrs.fields(OrderRequest)
    }
