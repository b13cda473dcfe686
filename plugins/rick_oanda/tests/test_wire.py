"""wire: v20 JSON <-> rick's model, both ways (payload shapes from OANDA's v20 definitions)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from rick_core.broker import HEARTBEAT, OrderRejected, Unsupported
from rick_core.model import (
    AssetClass,
    Fill,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Quote,
    Side,
    TimeInForce,
)
from rick_oanda import wire

BROKER = "fx"

EUR_USD_DATA = {
    "name": "EUR_USD",
    "type": "CURRENCY",
    "displayName": "EUR/USD",
    "pipLocation": -4,
    "displayPrecision": 5,
    "tradeUnitsPrecision": 0,
    "minimumTradeSize": "1",
    "maximumTrailingStopDistance": "1.00000",
    "minimumTrailingStopDistance": "0.00050",
    "maximumPositionSize": "0",
    "maximumOrderUnits": "100000000",
    "marginRate": "0.0333",
}
EUR_USD = wire.instrument_from(EUR_USD_DATA)
USD_JPY = wire.instrument_from(
    {"name": "USD_JPY", "type": "CURRENCY", "displayPrecision": 3, "tradeUnitsPrecision": 0}
)
DE30_EUR = wire.instrument_from(
    {
        "name": "DE30_EUR",
        "type": "CFD",
        "displayPrecision": 1,
        "tradeUnitsPrecision": 1,
        "minimumTradeSize": "0.1",
    }
)

PRICE_LINE = (
    b'{"type":"PRICE","time":"2020-10-23T21:02:02.692522548Z","bids":[{"price":"1.18571",'
    b'"liquidity":10000000}],"asks":[{"price":"1.18671","liquidity":10000000}],'
    b'"closeoutBid":"1.18571","closeoutAsk":"1.18671","status":"non-tradeable",'
    b'"tradeable":false,"instrument":"EUR_USD"}'
)
PRICE_HEARTBEAT = b'{"type":"HEARTBEAT","time":"2020-10-23T21:02:07.123456789Z"}'
TRANSACTION_HEARTBEAT = (
    b'{"type":"HEARTBEAT","lastTransactionID":"2315","time":"2016-10-28T14:28:10.000000000Z"}'
)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def price(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PRICE_LINE)
    data.update(changes)
    return data


def request(**fields: Any) -> OrderRequest:
    fields.setdefault("instrument", "EUR_USD")
    fields.setdefault("side", Side.BUY)
    fields.setdefault("quantity", Decimal(1000))
    fields.setdefault("client_order_id", "rk01ABC")
    return OrderRequest(**fields)


# ---------------------------------------------------------------------------
# times


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2020-10-23T21:02:02.692522548Z", utc(2020, 10, 23, 21, 2, 2, 692522)),
        ("2016-10-28T14:28:10Z", utc(2016, 10, 28, 14, 28, 10)),
        ("2016-10-28T14:28:10.000000000Z", utc(2016, 10, 28, 14, 28, 10)),
        ("2026-11-24T10:15:42.5Z", utc(2026, 11, 24, 10, 15, 42, 500000)),
        ("2026-11-24T12:15:42.123456789+02:00", utc(2026, 11, 24, 10, 15, 42, 123456)),
        ("2026-11-24T05:15:42-05:00", utc(2026, 11, 24, 10, 15, 42)),
    ],
)
def test_parse_time_is_aware_utc(text: str, expected: datetime) -> None:
    parsed = wire.parse_time(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC
    assert parsed.microsecond == expected.microsecond


def test_parse_time_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="yesterday"):
        wire.parse_time("yesterday")


def test_format_time_has_nine_digits_in_utc() -> None:
    assert wire.format_time(utc(2024, 1, 5, 21, 0, 0)) == "2024-01-05T21:00:00.000000000Z"
    local = datetime(2024, 1, 5, 23, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert wire.format_time(local) == "2024-01-05T21:00:00.123456000Z"


@pytest.mark.parametrize(
    "when",
    [
        utc(2024, 1, 5, 21, 0, 0),
        utc(2026, 11, 24, 10, 15, 42, 1),
        utc(2026, 11, 24, 10, 15, 42, 999999),
        datetime(2026, 3, 29, 1, 30, 0, 654321, tzinfo=timezone(timedelta(hours=-7))),
    ],
)
def test_format_then_parse_round_trips_at_microseconds(when: datetime) -> None:
    assert wire.parse_time(wire.format_time(when)) == when


# ---------------------------------------------------------------------------
# reference data


def test_instrument_from_a_currency_pair() -> None:
    assert EUR_USD.symbol == "EUR_USD"
    assert EUR_USD.asset_class is AssetClass.FX
    assert EUR_USD.base == "EUR"
    assert EUR_USD.quote_currency == "USD"
    assert EUR_USD.price_increment == Decimal("0.00001")
    assert EUR_USD.size_increment == Decimal(1)
    assert EUR_USD.min_size == Decimal(1)
    assert USD_JPY.price_increment == Decimal("0.001")
    assert USD_JPY.min_size is None


@pytest.mark.parametrize(
    ("name", "kind", "asset_class"),
    [
        ("XAU_USD", "METAL", AssetClass.COMMODITY),
        ("XAG_EUR", "METAL", AssetClass.COMMODITY),
        ("SPX500_USD", "CFD", AssetClass.INDEX),
        ("DE30_EUR", "CFD", AssetClass.INDEX),
        ("BCO_USD", "CFD", AssetClass.COMMODITY),
        ("NATGAS_USD", "CFD", AssetClass.COMMODITY),
        ("GBP_JPY", "CURRENCY", AssetClass.FX),
    ],
)
def test_instrument_asset_classes(name: str, kind: str, asset_class: AssetClass) -> None:
    data = {"name": name, "type": kind, "displayPrecision": 2, "tradeUnitsPrecision": 0}
    instrument = wire.instrument_from(data)
    assert instrument.asset_class is asset_class
    assert instrument.base == name.split("_")[0]
    assert instrument.quote_currency == name.split("_")[1]


def test_instrument_increments_follow_the_precisions() -> None:
    assert DE30_EUR.price_increment == Decimal("0.1")
    assert DE30_EUR.size_increment == Decimal("0.1")
    assert DE30_EUR.min_size == Decimal("0.1")
    data = {"name": "JP225_USD", "type": "CFD", "displayPrecision": 0, "tradeUnitsPrecision": 2}
    instrument = wire.instrument_from(data)
    assert instrument.price_increment == Decimal(1)
    assert instrument.size_increment == Decimal("0.01")


def test_account_from_a_summary() -> None:
    summary = {
        "id": "101-004-1435156-001",
        "currency": "USD",
        "balance": "100000.0000",
        "NAV": "100012.5000",
        "unrealizedPL": "12.5000",
        "marginUsed": "33.3900",
        "marginAvailable": "99979.1100",
        "openTradeCount": 1,
        "hedgingEnabled": False,
    }
    account = wire.account_from(summary, BROKER)
    assert account.broker == BROKER
    assert account.currency == "USD"
    assert account.balance == Decimal("100000.0000")
    assert account.equity == Decimal("100012.5000")
    assert account.margin_used == Decimal("33.3900")
    assert account.margin_available == Decimal("99979.1100")
    assert account.unrealized_pnl == Decimal("12.5")


def test_account_without_nav_has_equity_of_its_balance() -> None:
    account = wire.account_from({"currency": "EUR", "balance": "250.5"}, BROKER)
    assert account.equity == Decimal("250.5")
    assert account.margin_used == 0


# ---------------------------------------------------------------------------
# prices


def test_a_price_line_is_a_quote() -> None:
    parser = wire.PriceParser(BROKER)
    quote = parser.line(PRICE_LINE)
    assert isinstance(quote, Quote)
    assert quote.instrument == "EUR_USD"
    assert type(quote.bid) is Decimal
    assert type(quote.ask) is Decimal
    assert quote.bid == Decimal("1.18571")
    assert quote.ask == Decimal("1.18671")
    assert quote.bid_size == Decimal(10000000)
    assert quote.ask_size == Decimal(10000000)
    assert quote.time == utc(2020, 10, 23, 21, 2, 2, 692522)
    assert quote.source == BROKER
    assert (parser.parsed, parser.dropped) == (1, 0)


def test_best_bucket_is_the_first_and_sizes_are_optional() -> None:
    parser = wire.PriceParser(BROKER)
    data = price(
        bids=[{"price": "1.10000"}, {"price": "1.09990", "liquidity": 5}],
        asks=[{"price": "1.10010"}, {"price": "1.10020", "liquidity": 5}],
    )
    quote = parser.line(json.dumps(data).encode())
    assert isinstance(quote, Quote)
    assert (quote.bid, quote.ask) == (Decimal("1.10000"), Decimal("1.10010"))
    assert quote.bid_size is None
    assert quote.ask_size is None


def test_each_new_venue_time_is_read() -> None:
    parser = wire.PriceParser(BROKER)
    first = parser.line(PRICE_LINE)
    same = parser.line(PRICE_LINE)
    later = parser.price(price(time="2020-10-23T21:02:03.000000001Z", bids=[{"price": "1.1858"}]))
    assert isinstance(first, Quote)
    assert isinstance(same, Quote)
    assert isinstance(later, Quote)
    assert same.time == first.time
    assert later.time == utc(2020, 10, 23, 21, 2, 3)
    assert later.bid == Decimal("1.1858")
    assert parser.parsed == 3


@pytest.mark.parametrize("line", [PRICE_HEARTBEAT, TRANSACTION_HEARTBEAT])
def test_a_heartbeat_line_is_the_heartbeat(line: bytes) -> None:
    parser = wire.PriceParser(BROKER)
    assert parser.line(line) is HEARTBEAT
    assert (parser.parsed, parser.dropped) == (0, 0)


@pytest.mark.parametrize(
    "line",
    [
        json.dumps(price(bids=[])).encode(),  # one-sided book
        json.dumps(price(asks=[])).encode(),
        json.dumps(price(bids=[{"price": "1.2"}], asks=[{"price": "1.1"}])).encode(),  # crossed
        b"",
        b"not json at all",
        b"\xff\xfe\x00garbage\x80",
        b'{"type":"PRICE","time":"2020-10-23T21:0',  # cut in the middle
        b"[1, 2, 3]",
        b"null",
        b"42",
        b'"HEARTBEAT"',
        b'{"type":"PRICE"}',
        json.dumps(price(time="not a time")).encode(),
        json.dumps(price(bids=[{"price": "abc"}])).encode(),
        json.dumps(price(bids=[{"price": "-1.2"}])).encode(),
        json.dumps(price(bids=["1.18571"])).encode(),
        json.dumps(price(bids={"price": "1.18571"})).encode(),
        json.dumps(price(instrument="EUR/USD")).encode(),
        json.dumps(price(asks=[{"price": "1.18671", "liquidity": "lots"}])).encode(),
    ],
)
def test_bad_lines_are_dropped_and_counted_never_raised(line: bytes) -> None:
    parser = wire.PriceParser(BROKER)
    assert parser.line(line) is None
    assert (parser.parsed, parser.dropped) == (0, 1)
    assert isinstance(parser.line(PRICE_LINE), Quote)  # the stream goes on
    assert (parser.parsed, parser.dropped) == (1, 1)


@pytest.mark.parametrize("when", [None, 1603486922])
def test_a_non_text_time_is_dropped_not_raised(when: object) -> None:
    parser = wire.PriceParser(BROKER)
    assert parser.line(json.dumps(price(time=when)).encode()) is None
    assert parser.dropped == 1


def test_deeply_nested_garbage_is_dropped_not_raised() -> None:
    parser = wire.PriceParser(BROKER)
    assert parser.line(b"[" * 100_000) is None
    assert parser.dropped == 1


# ---------------------------------------------------------------------------
# orders: rick -> v20


def test_market_order_body() -> None:
    body = wire.order_body(request(), EUR_USD)
    assert body == {
        "type": "MARKET",
        "instrument": "EUR_USD",
        "units": "1000",
        "timeInForce": "IOC",  # rick's default for a market order
        "positionFill": "DEFAULT",
        "clientExtensions": {"id": "rk01ABC"},
    }


def test_market_sell_units_are_negative_and_fok_kept() -> None:
    body = wire.order_body(
        request(side=Side.SELL, time_in_force=TimeInForce.FOK, tag="strat-a"), EUR_USD
    )
    assert body["units"] == "-1000"
    assert body["timeInForce"] == "FOK"
    assert body["clientExtensions"] == {"id": "rk01ABC", "tag": "strat-a"}


def test_limit_order_body() -> None:
    order = request(side=Side.SELL, quantity=100, type=OrderType.LIMIT, limit_price="1.2")
    body = wire.order_body(order, EUR_USD)
    assert body == {
        "type": "LIMIT",
        "instrument": "EUR_USD",
        "units": "-100",
        "price": "1.20000",
        "timeInForce": "GTC",
        "positionFill": "DEFAULT",
        "triggerCondition": "DEFAULT",
        "clientExtensions": {"id": "rk01ABC"},
    }


def test_stop_order_body_uses_the_stop_price() -> None:
    order = request(instrument="USD_JPY", type=OrderType.STOP, stop_price="151.25")
    body = wire.order_body(order, USD_JPY)
    assert body["type"] == "STOP"
    assert body["price"] == "151.250"
    assert body["units"] == "1000"
    assert body["triggerCondition"] == "DEFAULT"


def test_market_if_touched_body_uses_the_touch_price() -> None:
    order = request(side=Side.SELL, type=OrderType.MARKET_IF_TOUCHED, stop_price="1.25")
    body = wire.order_body(order, EUR_USD)
    assert body["type"] == "MARKET_IF_TOUCHED"
    assert body["price"] == "1.25000"
    assert body["units"] == "-1000"
    assert body["timeInForce"] == "GTC"
    assert body["triggerCondition"] == "DEFAULT"


@pytest.mark.parametrize(
    ("instrument", "given", "sent"),
    [
        (EUR_USD, "1.123445", "1.12344"),  # half even: down to the even digit
        (EUR_USD, "1.123455", "1.12346"),  # half even: up to the even digit
        (EUR_USD, "1.1234551", "1.12346"),
        (EUR_USD, "1.1", "1.10000"),
        (USD_JPY, "151.2505", "151.250"),
        (USD_JPY, "151.2515", "151.252"),
        (DE30_EUR, "15000.25", "15000.2"),
    ],
)
def test_prices_are_rounded_half_even_to_the_display_precision(
    instrument: Any, given: str, sent: str
) -> None:
    order = request(instrument=instrument.symbol, type=OrderType.LIMIT, limit_price=given)
    assert wire.order_body(order, instrument)["price"] == sent


@pytest.mark.parametrize(
    ("instrument", "quantity"),
    [(EUR_USD, "1000.5"), (EUR_USD, "0.1"), (DE30_EUR, "0.25"), (DE30_EUR, "1.01")],
)
def test_units_finer_than_the_trade_units_precision_are_rejected(
    instrument: Any, quantity: str
) -> None:
    with pytest.raises(OrderRejected) as caught:
        wire.order_body(request(instrument=instrument.symbol, quantity=quantity), instrument)
    assert caught.value.code == "UNITS_PRECISION_EXCEEDED"
    assert quantity in caught.value.reason


@pytest.mark.parametrize(
    ("instrument", "quantity", "side", "units"),
    [
        (EUR_USD, "1000.000", Side.BUY, "1000"),  # exact, only written finer
        (DE30_EUR, "0.5", Side.BUY, "0.5"),
        (DE30_EUR, "2.50", Side.SELL, "-2.5"),
        (DE30_EUR, "3", Side.SELL, "-3.0"),
    ],
)
def test_units_on_the_precision_are_sent_signed(
    instrument: Any, quantity: str, side: Side, units: str
) -> None:
    order = request(instrument=instrument.symbol, quantity=quantity, side=side)
    assert wire.order_body(order, instrument)["units"] == units


@pytest.mark.parametrize(
    ("kind", "tif", "extra"),
    [
        (OrderType.MARKET, TimeInForce.GTC, {}),
        (OrderType.MARKET, TimeInForce.DAY, {}),
        (OrderType.MARKET_IF_TOUCHED, TimeInForce.IOC, {"stop_price": "1.05"}),
        (OrderType.MARKET_IF_TOUCHED, TimeInForce.FOK, {"stop_price": "1.05"}),
    ],
)
def test_time_in_force_v20_does_not_take_is_unsupported(
    kind: OrderType, tif: TimeInForce, extra: dict[str, Any]
) -> None:
    with pytest.raises(Unsupported, match=tif.value):
        wire.order_body(request(type=kind, time_in_force=tif, **extra), EUR_USD)


@pytest.mark.parametrize("tif", [TimeInForce.IOC, TimeInForce.FOK])
def test_limit_orders_take_immediate_time_in_force(tif: TimeInForce) -> None:
    order = request(type=OrderType.LIMIT, limit_price="1.1", time_in_force=tif)
    assert wire.order_body(order, EUR_USD)["timeInForce"] == tif.name


def test_gtd_sends_the_expiry_as_gtd_time() -> None:
    expiry = datetime(2024, 1, 5, 16, 0, tzinfo=timezone(timedelta(hours=-5)))
    order = request(
        type=OrderType.STOP, stop_price="1.2", time_in_force=TimeInForce.GTD, expire_time=expiry
    )
    body = wire.order_body(order, EUR_USD)
    assert body["timeInForce"] == "GTD"
    assert body["gtdTime"] == "2024-01-05T21:00:00.000000000Z"


def test_day_is_good_for_day() -> None:
    order = request(type=OrderType.LIMIT, limit_price="1.1", time_in_force=TimeInForce.DAY)
    body = wire.order_body(order, EUR_USD)
    assert body["timeInForce"] == "GFD"
    assert "gtdTime" not in body


def test_a_long_tag_is_cut_to_128_characters() -> None:
    body = wire.order_body(request(tag="t" * 300), EUR_USD)
    assert body["clientExtensions"] == {"id": "rk01ABC", "tag": "t" * 128}


def test_stop_loss_and_take_profit_on_fill_carry_their_own_client_ids() -> None:
    order = request(
        type=OrderType.LIMIT,
        limit_price="1.10000",
        stop_loss="1.0912345",
        take_profit="1.12",
    )
    body = wire.order_body(order, EUR_USD)
    assert body["stopLossOnFill"] == {
        "price": "1.09123",
        "timeInForce": "GTC",
        "clientExtensions": {"id": "rk01ABC.sl", "tag": "stop_loss"},
    }
    assert body["takeProfitOnFill"] == {
        "price": "1.12000",
        "timeInForce": "GTC",
        "clientExtensions": {"id": "rk01ABC.tp", "tag": "take_profit"},
    }


def test_market_order_protection_only_when_asked() -> None:
    body = wire.order_body(request(side=Side.SELL, stop_loss="1.3"), EUR_USD)
    assert body["stopLossOnFill"]["price"] == "1.30000"
    assert "takeProfitOnFill" not in body
    assert "stopLossOnFill" not in wire.order_body(request(), EUR_USD)


def test_protection_ids_stay_within_64_characters() -> None:
    longest = "A" * 60 + "wxyz"
    assert len(longest) == 64
    stop = wire.protection_id(longest, "sl")
    take = wire.protection_id(longest, "tp")
    assert len(stop) == 64
    assert len(take) == 64
    assert stop == "A" * 60 + "w.sl"
    assert take == "A" * 60 + "w.tp"
    assert wire.protection_id("rk1", "sl") == "rk1.sl"
    body = wire.order_body(request(client_order_id=longest, stop_loss="1.0"), EUR_USD)
    assert body["clientExtensions"]["id"] == longest
    assert body["stopLossOnFill"]["clientExtensions"]["id"] == stop


@pytest.mark.parametrize(
    "fields",
    [
        {"type": OrderType.TRAILING_STOP, "trail_distance": "0.0050"},
        {"type": OrderType.TRAILING_STOP, "trail_percent": "1"},
        {"type": OrderType.STOP_LIMIT, "stop_price": "1.2", "limit_price": "1.21"},
    ],
)
def test_entries_v20_has_not_are_unsupported(fields: dict[str, Any]) -> None:
    with pytest.raises(Unsupported, match=fields["type"].value):
        wire.order_body(request(**fields), EUR_USD)


# ---------------------------------------------------------------------------
# orders: v20 -> rick

PENDING_LIMIT = {
    "id": "2304",
    "createTime": "2016-10-24T21:48:18.593753865Z",
    "type": "LIMIT",
    "instrument": "EUR_USD",
    "units": "-100",
    "price": "1.20000",
    "timeInForce": "GTC",
    "positionFill": "DEFAULT",
    "triggerCondition": "DEFAULT",
    "state": "PENDING",
    "clientExtensions": {"id": "rk01ABC", "tag": "strat-a"},
    "stopLossOnFill": {"timeInForce": "GTC", "price": "1.22000"},
    "takeProfitOnFill": {"timeInForce": "GTC", "price": "1.15000"},
}

STOP_LOSS_ORDER = {
    "id": "166",
    "createTime": "2018-11-30T18:32:46.972901259Z",
    "type": "STOP_LOSS",
    "tradeID": "160",
    "price": "1.10000",
    "timeInForce": "GTC",
    "triggerCondition": "DEFAULT",
    "guaranteed": False,
    "state": "PENDING",
}


def test_a_pending_limit_order() -> None:
    order = wire.order_from(PENDING_LIMIT, BROKER)
    assert isinstance(order, Order)
    assert order.broker == BROKER
    assert order.status is OrderStatus.ACCEPTED
    assert order.venue_order_id == "2304"
    assert order.client_order_id == "rk01ABC"
    assert order.request.tag == "strat-a"
    assert order.request.type is OrderType.LIMIT
    assert order.request.side is Side.SELL
    assert order.request.quantity == Decimal(100)
    assert order.request.limit_price == Decimal("1.20000")
    assert order.request.stop_price is None
    assert order.request.time_in_force is TimeInForce.GTC
    assert order.request.stop_loss == Decimal("1.22")
    assert order.request.take_profit == Decimal("1.15")
    assert order.filled_quantity == 0
    assert order.created_at == utc(2016, 10, 24, 21, 48, 18, 593753)
    assert order.updated_at == order.created_at


def test_pending_stop_and_touch_orders_carry_the_trigger_as_stop_price() -> None:
    stop = dict(
        PENDING_LIMIT,
        type="STOP",
        units="100",
        price="1.25000",
        timeInForce="GTD",
        gtdTime="2024-01-05T21:00:00.000000000Z",
        stopLossOnFill={"price": "1.24"},
        takeProfitOnFill={"price": "1.3"},
    )
    order = wire.order_from(stop, BROKER)
    assert order is not None
    assert order.request.type is OrderType.STOP
    assert order.request.stop_price == Decimal("1.25000")
    assert order.request.limit_price is None
    assert order.request.time_in_force is TimeInForce.GTD
    assert order.request.expire_time == utc(2024, 1, 5, 21, 0)

    touch = dict(stop, type="MARKET_IF_TOUCHED", price="1.18000", timeInForce="GFD")
    del touch["stopLossOnFill"], touch["takeProfitOnFill"]
    order = wire.order_from(touch, BROKER)
    assert order is not None
    assert order.request.type is OrderType.MARKET_IF_TOUCHED
    assert order.request.stop_price == Decimal("1.18000")
    assert order.request.time_in_force is TimeInForce.DAY
    assert order.request.expire_time is None


def test_a_triggered_order_is_still_working() -> None:
    order = wire.order_from(dict(PENDING_LIMIT, state="TRIGGERED"), BROKER)
    assert order is not None
    assert order.status is OrderStatus.ACCEPTED


def test_a_cancelled_order() -> None:
    data = dict(
        PENDING_LIMIT,
        state="CANCELLED",
        cancellingTransactionID="2306",
        cancelledTime="2016-10-25T19:45:38.558056359Z",
    )
    order = wire.order_from(data, BROKER)
    assert order is not None
    assert order.status is OrderStatus.CANCELED
    assert order.filled_quantity == 0
    assert order.created_at == utc(2016, 10, 24, 21, 48, 18, 593753)
    assert order.updated_at == utc(2016, 10, 25, 19, 45, 38, 558056)


def test_a_filled_order() -> None:
    data = dict(
        PENDING_LIMIT,
        state="FILLED",
        fillingTransactionID="2310",
        filledTime="2016-10-25T10:00:00.000000000Z",
        tradeOpenedID="2310",
    )
    with pytest.raises(ValueError, match="fill transaction is needed"):
        wire.order_from(data, BROKER)  # v20's Order has no fill price
    fill = Fill(
        fill_id="2310",
        client_order_id="rk-1",
        instrument="EUR_USD",
        side="sell",
        quantity=Decimal(100),
        price=Decimal("1.20003"),
        time=utc(2016, 10, 25, 10, 0),
        broker=BROKER,
    )
    order = wire.order_from(data, BROKER, fill)
    assert order is not None
    assert order.status is OrderStatus.FILLED
    assert order.filled_quantity == Decimal(100)
    assert order.average_fill_price == Decimal("1.20003")
    assert order.updated_at == utc(2016, 10, 25, 10, 0)


def test_a_foreign_order_without_client_extensions() -> None:
    data = {k: v for k, v in PENDING_LIMIT.items() if k != "clientExtensions"}
    order = wire.order_from(data, BROKER)
    assert order is not None
    assert order.client_order_id == "oanda-2304"
    assert order.request.tag == ""
    tagged = wire.order_from(dict(data, clientExtensions={"tag": "web"}), BROKER)
    assert tagged is not None
    assert tagged.client_order_id == "oanda-2304"
    assert tagged.request.tag == "web"


def test_a_foreign_client_id_rick_cannot_hold_falls_back() -> None:
    data = dict(PENDING_LIMIT, clientExtensions={"id": "my order #1", "tag": "manual"})
    order = wire.order_from(data, BROKER)
    assert order is not None
    assert order.client_order_id == "oanda-2304"


def test_a_market_order_object_defaults_to_fok() -> None:
    data = {
        "id": "1041",
        "createTime": "2016-07-21T17:32:51.361464739Z",
        "type": "MARKET",
        "instrument": "DE30_EUR",
        "units": "5",
        "state": "CANCELLED",
        "cancelledTime": "2016-07-21T17:32:51.361464739Z",
    }
    order = wire.order_from(data, BROKER)
    assert order is not None
    assert order.request.type is OrderType.MARKET
    assert order.request.time_in_force is TimeInForce.FOK
    assert order.request.side is Side.BUY
    assert order.status is OrderStatus.CANCELED


@pytest.mark.parametrize("kind", ["STOP_LOSS", "TAKE_PROFIT", "TRAILING_STOP_LOSS"])
def test_orders_hanging_on_a_trade_are_not_rick_orders(kind: str) -> None:
    assert wire.order_from(dict(STOP_LOSS_ORDER, type=kind), BROKER) is None


def test_request_from_a_create_transaction() -> None:
    tx = {
        "type": "LIMIT_ORDER",
        "id": "2304",
        "time": "2016-10-24T21:48:18.593753865Z",
        "instrument": "EUR_USD",
        "units": "-100",
        "price": "1.20000",
        "timeInForce": "GTC",
        "positionFill": "DEFAULT",
        "triggerCondition": "TRIGGER_DEFAULT",
        "reason": "CLIENT_ORDER",
        "stopLossOnFill": {"timeInForce": "GTC", "price": "1.22000"},
    }
    req = wire.request_from(tx, "LIMIT", "2304")
    assert req.type is OrderType.LIMIT
    assert req.side is Side.SELL
    assert req.quantity == Decimal(100)
    assert req.limit_price == Decimal("1.2")
    assert req.stop_loss == Decimal("1.22")
    assert req.take_profit is None
    assert req.time_in_force is TimeInForce.GTC
    assert req.client_order_id == "oanda-2304"


def test_request_from_a_market_order_without_time_in_force_is_fok() -> None:
    tx = {"instrument": "EUR_USD", "units": "250", "clientExtensions": {"id": "rk9"}}
    req = wire.request_from(tx, "MARKET", "77")
    assert req.type is OrderType.MARKET
    assert req.time_in_force is TimeInForce.FOK
    assert req.client_order_id == "rk9"
    assert req.side is Side.BUY


# ---------------------------------------------------------------------------
# transactions

ORDER_FILL = {
    "type": "ORDER_FILL",
    "id": "2311",
    "batchID": "2310",
    "orderID": "2310",
    "clientOrderID": "rk01ABC",
    "instrument": "EUR_USD",
    "units": "-100",
    "price": "1.19990",
    "fullVWAP": "1.19995",
    "reason": "LIMIT_ORDER",
    "pl": "0.0000",
    "financing": "0.0000",
    "commission": "0.5000",
    "guaranteedExecutionFee": "0.2500",
    "accountBalance": "99999.2500",
    "time": "2016-10-25T10:00:00.123456789Z",
    "tradeOpened": {"tradeID": "2311", "units": "-100", "price": "1.19980"},
}


def test_fill_from_an_order_fill() -> None:
    fill = wire.fill_from(ORDER_FILL, BROKER, "USD")
    assert isinstance(fill, Fill)
    assert fill.fill_id == "2311"  # the transaction, not the order
    assert fill.venue_order_id == "2310"
    assert fill.client_order_id == "rk01ABC"
    assert fill.instrument == "EUR_USD"
    assert fill.side is Side.SELL
    assert fill.quantity == Decimal(100)
    assert fill.price == Decimal("1.19995")  # fullVWAP, not the deprecated price
    assert fill.fee == Decimal("0.75")  # commission + guaranteed execution fee
    assert fill.fee_currency == "USD"
    assert fill.broker == BROKER
    assert fill.time == utc(2016, 10, 25, 10, 0, 0, 123456)


def test_without_full_vwap_the_price_comes_from_the_trades() -> None:
    tx = {k: v for k, v in ORDER_FILL.items() if k not in ("fullVWAP", "tradeOpened")}
    tx.update(
        units="100",
        price="9.99999",
        tradesClosed=[
            {"tradeID": "1", "units": "30", "price": "1.10000"},
            {"tradeID": "2", "units": "50", "price": "1.20000"},
        ],
        tradeReduced={"tradeID": "3", "units": "20", "price": "1.30000"},
    )
    fill = wire.fill_from(tx, BROKER, "USD")
    assert fill.side is Side.BUY
    # (30 * 1.1 + 50 * 1.2 + 20 * 1.3) / 100
    assert fill.price == Decimal("1.19")


def test_trade_prices_are_weighted_by_size_whatever_their_sign() -> None:
    tx = {k: v for k, v in ORDER_FILL.items() if k != "fullVWAP"}
    tx.update(
        units="-400",
        tradesClosed=[{"tradeID": "1", "units": "-100", "price": "1.10000"}],
        tradeOpened={"tradeID": "2", "units": "-300", "price": "1.30000"},
    )
    assert wire.fill_from(tx, BROKER, "USD").price == Decimal("1.25")


def test_a_trade_close_fill_without_trade_prices_uses_the_price() -> None:
    tx = {
        "type": "ORDER_FILL",
        "id": "1042",
        "batchID": "1041",
        "orderID": "1041",
        "instrument": "DE30_EUR",
        "units": "5",
        "price": "10131.6",
        "reason": "MARKET_ORDER_TRADE_CLOSE",
        "pl": "14.0000",
        "financing": "-0.1519",
        "accountBalance": "44876.2548",
        "tradeReduced": {
            "tradeID": "1030",
            "units": "5",
            "realizedPL": "14.0000",
            "financing": "-0.1519",
        },
        "time": "2016-07-21T17:32:51.361464739Z",
    }
    fill = wire.fill_from(tx, BROKER, "EUR")
    assert fill.price == Decimal("10131.6")
    assert fill.client_order_id == "oanda-1041"  # foreign: no clientOrderID
    assert fill.venue_order_id == "1041"
    assert fill.side is Side.BUY
    assert fill.quantity == Decimal(5)
    assert fill.fee == 0
    assert fill.fee_currency == "EUR"


def test_an_empty_client_order_id_is_foreign() -> None:
    fill = wire.fill_from(dict(ORDER_FILL, clientOrderID=""), BROKER, "USD")
    assert fill.client_order_id == "oanda-2310"


CREATE_LIMIT = {
    "type": "LIMIT_ORDER",
    "id": "2304",
    "batchID": "2304",
    "userID": 1435156,
    "accountID": "101-004-1435156-001",
    "time": "2016-10-24T21:48:18.593753865Z",
    "instrument": "EUR_USD",
    "units": "-100",
    "price": "1.20000",
    "timeInForce": "GTC",
    "positionFill": "DEFAULT",
    "triggerCondition": "TRIGGER_DEFAULT",
    "reason": "CLIENT_ORDER",
    "clientExtensions": {"id": "rk01ABC"},
    "stopLossOnFill": {"timeInForce": "GTC", "price": "1.22000"},
}


def test_created_order() -> None:
    order = wire.created_order(CREATE_LIMIT, BROKER)
    assert order.status is OrderStatus.ACCEPTED
    assert order.venue_order_id == "2304"
    assert order.client_order_id == "rk01ABC"
    assert order.request.type is OrderType.LIMIT
    assert order.request.limit_price == Decimal("1.2")
    assert order.request.stop_loss == Decimal("1.22")
    assert order.created_at == order.updated_at == utc(2016, 10, 24, 21, 48, 18, 593753)


@pytest.mark.parametrize(
    ("kind", "order_type"),
    [
        ("MARKET_ORDER", OrderType.MARKET),
        ("STOP_ORDER", OrderType.STOP),
        ("MARKET_IF_TOUCHED_ORDER", OrderType.MARKET_IF_TOUCHED),
    ],
)
def test_created_orders_of_each_entry_type(kind: str, order_type: OrderType) -> None:
    tx = dict(CREATE_LIMIT, type=kind, units="100")
    del tx["stopLossOnFill"]
    if order_type is OrderType.MARKET:
        del tx["price"]
        tx["timeInForce"] = "FOK"
    order = wire.created_order(tx, BROKER)
    assert order.request.type is order_type
    if order_type is OrderType.MARKET:
        assert order.request.time_in_force is TimeInForce.FOK
    else:
        assert order.request.stop_price == Decimal("1.2")


def test_rejected_order() -> None:
    tx = {
        "id": "2320",
        "type": "MARKET_ORDER_REJECT",
        "accountID": "101-004-1435156-001",
        "time": "2016-10-24T21:50:00.000000000Z",
        "instrument": "EUR_USD",
        "units": "0.5",
        "timeInForce": "FOK",
        "positionFill": "DEFAULT",
        "reason": "CLIENT_ORDER",
        "clientExtensions": {"id": "rk02"},
        "rejectReason": "UNITS_PRECISION_EXCEEDED",
    }
    order = wire.rejected_order(tx, BROKER)
    assert order.status is OrderStatus.REJECTED
    assert order.reject_reason == "UNITS_PRECISION_EXCEEDED"
    assert order.venue_order_id is None  # a reject creates no order at the venue
    assert order.client_order_id == "rk02"
    assert order.request.quantity == Decimal("0.5")
    assert order.created_at == utc(2016, 10, 24, 21, 50)
    unexplained = wire.rejected_order({k: v for k, v in tx.items() if k != "rejectReason"}, "x")
    assert unexplained.reject_reason == "rejected"


def accepted(quantity: str = "100") -> Order:
    return Order(
        request=request(quantity=quantity, type=OrderType.LIMIT, limit_price="1.2"),
        broker=BROKER,
        status=OrderStatus.ACCEPTED,
        venue_order_id="2310",
        created_at=utc(2026, 1, 2, 10, 0),
        updated_at=utc(2026, 1, 2, 10, 0),
    )


def a_fill(quantity: str, price_: str, when: datetime, fill_id: str = "2311") -> Fill:
    return Fill(
        fill_id=fill_id,
        client_order_id="rk01ABC",
        instrument="EUR_USD",
        side=Side.BUY,
        quantity=quantity,
        price=price_,
        time=when,
        broker=BROKER,
    )


def test_filled_order_after_a_whole_fill() -> None:
    order = wire.filled_order(accepted(), a_fill("100", "1.19", utc(2026, 1, 2, 11, 0)))
    assert order.status is OrderStatus.FILLED
    assert order.filled_quantity == Decimal(100)
    assert order.average_fill_price == Decimal("1.19")
    assert order.updated_at == utc(2026, 1, 2, 11, 0)
    assert order.venue_order_id == "2310"


def test_partial_fills_average_their_prices() -> None:
    first = wire.filled_order(accepted(), a_fill("40", "1.10", utc(2026, 1, 2, 11, 0)))
    assert first.status is OrderStatus.PARTIALLY_FILLED
    assert first.average_fill_price == Decimal("1.10")
    second = wire.filled_order(first, a_fill("60", "1.20", utc(2026, 1, 2, 12, 0), "2312"))
    assert second.status is OrderStatus.FILLED
    assert second.filled_quantity == Decimal(100)
    assert second.average_fill_price == Decimal("1.16")


def test_a_fill_stamped_before_the_order_keeps_time_order() -> None:
    order = wire.filled_order(accepted(), a_fill("100", "1.19", utc(2026, 1, 2, 9, 59)))
    assert order.updated_at == order.created_at


def test_cancelled_order_keeps_the_reason() -> None:
    tx = {
        "type": "ORDER_CANCEL",
        "id": "2306",
        "orderID": "2310",
        "clientOrderID": "rk01ABC",
        "reason": "CLIENT_REQUEST",
        "time": "2026-01-02T12:00:00.000000000Z",
    }
    order = wire.cancelled_order(accepted(), tx)
    assert order.status is OrderStatus.CANCELED
    assert order.reject_reason == "CLIENT_REQUEST"
    assert order.updated_at == utc(2026, 1, 2, 12, 0)
    expired = wire.cancelled_order(accepted(), dict(tx, reason="TIME_IN_FORCE_EXPIRED"))
    assert expired.status is OrderStatus.EXPIRED
    assert expired.reject_reason == "TIME_IN_FORCE_EXPIRED"


def test_cancelling_a_partly_filled_order_keeps_what_filled() -> None:
    partly = wire.filled_order(accepted(), a_fill("40", "1.10", utc(2026, 1, 2, 11, 0)))
    tx = {"type": "ORDER_CANCEL", "reason": "", "time": "2026-01-02T12:00:00Z"}
    order = wire.cancelled_order(partly, tx)
    assert order.status is OrderStatus.CANCELED
    assert order.filled_quantity == Decimal(40)
    assert order.average_fill_price == Decimal("1.10")
    assert order.reject_reason is None


def cached(venue_id: str | None) -> Order:
    order = accepted()
    return Order(
        request=order.request,
        broker=BROKER,
        status=OrderStatus.ACCEPTED,
        venue_order_id=venue_id,
        created_at=order.created_at,
        updated_at=order.updated_at,
    )


def test_order_cache_is_bounded_oldest_first() -> None:
    cache = wire.OrderCache(limit=3)
    for venue_id in ("1", "2", "3"):
        cache.put(cached(venue_id))
    refreshed = cached("1")
    assert cache.put(refreshed) is refreshed  # put again: now the newest
    cache.put(cached("4"))
    assert len(cache) == 3
    assert cache.get("2") is None
    assert cache.get("1") is refreshed
    assert cache.get("3") is not None
    assert cache.get("4") is not None
    cache.put(cached("5"))
    assert cache.get("3") is None


def test_order_cache_skips_orders_without_a_venue_id() -> None:
    cache = wire.OrderCache(limit=2)
    order = cached(None)
    assert cache.put(order) is order
    assert len(cache) == 0


# ---------------------------------------------------------------------------
# positions

POSITIONS = [
    {
        "instrument": "EUR_USD",
        "pl": "10.0000",
        "unrealizedPL": "25.5000",
        "long": {"units": "1500", "averagePrice": "1.10000", "tradeIDs": ["10", "11"]},
        "short": {"units": "0", "pl": "0.0000", "unrealizedPL": "0.0000"},
    },
    {
        "instrument": "DE30_EUR",
        "pl": "-13554.8000",
        "resettablePL": "-13554.8000",
        "unrealizedPL": "870.0000",
        "long": {"units": "0", "pl": "404.5000", "resettablePL": "404.5000"},
        "short": {
            "units": "-20",
            "averagePrice": "10581.5",
            "tradeIDs": ["2121", "2123"],
            "pl": "-13959.3000",
            "unrealizedPL": "870.0000",
        },
    },
    {
        "instrument": "GBP_USD",
        "unrealizedPL": "0.0000",
        "long": {"units": "0"},
        "short": {"units": "0"},
    },
]


def trade(instrument: str, units: str, stop: str | None, take: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"id": "1", "instrument": instrument, "currentUnits": units}
    if stop is not None:
        data["stopLossOrder"] = dict(STOP_LOSS_ORDER, price=stop)
    if take is not None:
        data["takeProfitOrder"] = dict(STOP_LOSS_ORDER, type="TAKE_PROFIT", price=take)
    return data


def test_positions_net_long_net_short_flat_skipped() -> None:
    positions = wire.positions_from(POSITIONS, [], BROKER)
    assert [p.instrument for p in positions] == ["EUR_USD", "DE30_EUR"]
    long, short = positions
    assert long.quantity == Decimal(1500)
    assert long.side is Side.BUY
    assert long.average_price == Decimal("1.10000")
    assert long.unrealized_pnl == Decimal("25.5")
    assert long.broker == BROKER
    assert short.quantity == Decimal(-20)
    assert short.side is Side.SELL
    assert short.average_price == Decimal("10581.5")
    assert short.unrealized_pnl == Decimal(870)
    assert long.stop_loss is long.take_profit is None
    assert short.stop_loss is short.take_profit is None


def test_protection_is_what_triggers_first_across_trades() -> None:
    trades = [
        trade("EUR_USD", "1000", stop="1.09000", take="1.13000"),
        trade("EUR_USD", "500", stop="1.09500", take="1.12000"),
        trade("EUR_USD", "0", stop=None, take=None),
        trade("DE30_EUR", "-10", stop="10700.0", take="10400.0"),
        trade("DE30_EUR", "-10", stop="10650.0", take="10450.0"),
        trade("GBP_USD", "1", stop="1.2", take="1.3"),  # its position is flat: no position
    ]
    long, short = wire.positions_from(POSITIONS, trades, BROKER)
    # long: the highest stop and the lowest target are hit first
    assert long.stop_loss == Decimal("1.09500")
    assert long.take_profit == Decimal("1.12000")
    # short: the lowest stop and the highest target are hit first
    assert short.stop_loss == Decimal("10650.0")
    assert short.take_profit == Decimal("10450.0")


def test_protection_without_a_price_is_ignored() -> None:
    distance_only = {"type": "STOP_LOSS", "distance": "0.0050", "state": "PENDING"}
    trades = [{"id": "1", "instrument": "EUR_USD", "stopLossOrder": distance_only}]
    long, _ = wire.positions_from(POSITIONS, trades, BROKER)
    assert long.stop_loss is None
