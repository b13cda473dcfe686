"""Model validation: bad values fail at construction with a message naming the problem."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rick_core.model import (
    Account,
    Fill,
    Instrument,
    ModelError,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Quote,
    Side,
    TimeInForce,
    check_symbol,
    from_json,
    new_client_order_id,
    to_json,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def quote(**overrides: object) -> Quote:
    values: dict[str, object] = {
        "instrument": "EUR_USD",
        "bid": Decimal("1.0841"),
        "ask": Decimal("1.0843"),
        "time": NOW,
        "source": "paper",
    }
    return Quote(**{**values, **overrides})  # type: ignore[arg-type]


def test_a_quote_has_mid_spread_and_touch_prices() -> None:
    q = quote(bid_size="1000000", ask_size=Decimal("500000"))
    assert (q.mid, q.spread) == (Decimal("1.0842"), Decimal("0.0002"))
    assert (q.price_for(Side.BUY), q.price_for(Side.SELL)) == (q.ask, q.bid)
    assert q.bid_size == Decimal("1000000")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bid": 1.0841}, "got float 1.0841; floats are refused"),
        ({"ask": Decimal("NaN")}, "not a finite number"),
        ({"ask": "Infinity"}, "not a finite number"),
        ({"bid": "abc"}, "'abc' is not a number"),
        ({"bid": True}, "got bool"),
        ({"bid": Decimal("-1")}, "bid must be greater than zero, got -1"),
        ({"bid": Decimal("1.1"), "ask": Decimal("1.0")}, "crossed quote for EUR_USD from paper"),
        ({"time": datetime(2026, 11, 24, 12, 0)}, "naive datetime 2026-11-24T12:00:00 refused"),
        ({"instrument": "EURUSD="}, "'EURUSD=' is not a canonical instrument symbol"),
        ({"instrument": "btc-usd"}, "did you mean 'BTC_USD'?"),
        ({"source": ""}, "source must be a non-empty string"),
        ({"bid_size": Decimal(-5)}, "bid_size must not be negative"),
    ],
)
def test_invalid_quotes_are_refused_with_the_reason(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ModelError, match=message.replace("(", r"\(")):
        quote(**overrides)


def test_aware_times_are_normalised_to_utc() -> None:
    new_york = timezone(timedelta(hours=-5))
    q = quote(time=datetime(2026, 11, 24, 7, 0, tzinfo=new_york))
    assert q.time == NOW and q.time.tzinfo is UTC


def test_quantities_must_be_positive_and_sides_known() -> None:
    with pytest.raises(ModelError, match="quantity must be greater than zero, got 0"):
        OrderRequest(instrument="EUR_USD", side="buy", quantity=Decimal(0))
    with pytest.raises(ModelError, match="quantity must be greater than zero, got -3"):
        OrderRequest(instrument="EUR_USD", side="buy", quantity=Decimal(-3))
    with pytest.raises(ModelError, match="unknown side 'long'; expected one of 'buy', 'sell'"):
        OrderRequest(instrument="EUR_USD", side="long", quantity=Decimal(1))  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="unknown order type 'iceberg'"):
        OrderRequest(instrument="EUR_USD", side="buy", quantity=Decimal(1), type="iceberg")  # type: ignore[arg-type]


def test_order_request_defaults() -> None:
    market = OrderRequest(instrument="BTC_USD", side="sell", quantity="0.015")
    assert (market.type, market.time_in_force, market.side) == (
        OrderType.MARKET,
        TimeInForce.IOC,
        Side.SELL,
    )
    assert market.quantity == Decimal("0.015")
    limit = OrderRequest(
        instrument="BTC_USD", side="buy", quantity=1, type="limit", limit_price="50000"
    )
    assert limit.time_in_force is TimeInForce.GTC and limit.entry_price == Decimal(50000)
    assert market.client_order_id != limit.client_order_id


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "limit"}, "a limit order needs limit_price"),
        ({"type": "stop"}, "a stop order needs stop_price"),
        ({"limit_price": "1.1"}, "limit_price is only for limit and stop_limit orders"),
        (
            {"type": "limit", "limit_price": "1.1", "stop_price": "1.2"},
            "stop_price is only for stop and stop_limit orders",
        ),
        ({"time_in_force": "gtd"}, "expire_time is required with GTD"),
        (
            {"type": "limit", "limit_price": "1.10", "stop_loss": "1.12"},
            "stop_loss 1.12 is on the wrong side of the entry 1.10",
        ),
        (
            {"type": "limit", "limit_price": "1.10", "take_profit": "1.05"},
            "take_profit 1.05 is on the wrong side of the entry 1.10",
        ),
        ({"stop_loss": "1.2", "take_profit": "1.1"}, "are the wrong way round for a buy"),
        ({"client_order_id": "x" * 65}, "client_order_id 'x{65}' is invalid: 1 to 64 characters"),
        ({"client_order_id": "a b\n"}, "client_order_id 'a b.* is invalid"),
        ({"tag": 7}, "tag must be a string, got int"),
    ],
)
def test_inconsistent_order_requests_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        OrderRequest(instrument="EUR_USD", side="buy", quantity=Decimal(1000), **fields)  # type: ignore[arg-type]


def test_sell_protection_sides_are_mirrored() -> None:
    sell = OrderRequest(
        instrument="EUR_USD",
        side="sell",
        quantity=1,
        type="stop",
        stop_price="1.08",
        stop_loss="1.09",
        take_profit="1.05",
    )
    assert sell.stop_loss == Decimal("1.09")
    with pytest.raises(ModelError, match=r"stop_loss 1\.07 is on the wrong side"):
        attrs.evolve(sell, stop_loss=Decimal("1.07"))


# ---------------------------------------------------------------------------
# market-if-touched: the trigger (touch price) is stop_price; no limit, no trail


def test_market_if_touched_requests() -> None:
    buy = OrderRequest(
        instrument="EUR_USD",
        side="buy",
        quantity=1000,
        type="market_if_touched",
        stop_price="1.0750",
        stop_loss="1.0700",
        take_profit="1.0850",
    )
    assert buy.type is OrderType.MARKET_IF_TOUCHED
    assert OrderType.parse("MARKET_IF_TOUCHED", what="order type") is OrderType.MARKET_IF_TOUCHED
    assert buy.time_in_force is TimeInForce.GTC  # it rests: not IOC like a market order
    # it enters at market once touched: its touch price is the entry protection is judged at
    assert buy.entry_price == Decimal("1.0750")
    assert buy.limit_price is None and buy.trail_distance is None and buy.trail_percent is None
    # a sell rests above the market: its protection is mirrored
    sell = OrderRequest(
        instrument="EUR_USD",
        side="sell",
        quantity=1000,
        type=OrderType.MARKET_IF_TOUCHED,
        stop_price="1.0950",
        stop_loss="1.1000",
        take_profit="1.0900",
    )
    assert sell.entry_price == Decimal("1.0950")
    bare = OrderRequest(
        instrument="EUR_USD", side="sell", quantity=1, type="market_if_touched", stop_price=2
    )
    assert (bare.stop_loss, bare.take_profit) == (None, None)
    assert from_json(OrderRequest, to_json(buy)) == buy


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, r"a market_if_touched order needs stop_price \(its touch price"),
        (
            {"stop_price": "1.07", "limit_price": "1.07"},
            "a market_if_touched order takes no limit_price: it fills at market",
        ),
        ({"limit_price": "1.07"}, "a market_if_touched order needs stop_price"),
        (
            {"stop_price": "1.07", "trail_distance": "0.001"},
            "trail_distance and trail_percent are for trailing stops",
        ),
        (
            {"stop_price": "1.07", "trail_percent": "1"},
            "trail_distance and trail_percent are for trailing stops",
        ),
        ({"stop_price": "0"}, "stop_price must be greater than zero"),
        (
            {"stop_price": "1.07", "stop_loss": "1.08"},
            "stop_loss 1.08 is on the wrong side of the entry 1.07",
        ),
        (
            {"stop_price": "1.07", "take_profit": "1.06"},
            "take_profit 1.06 is on the wrong side of the entry 1.07",
        ),
        (
            {"stop_price": "1.07", "time_in_force": "gtd"},
            "expire_time is required with GTD",
        ),
    ],
)
def test_bad_market_if_touched_requests_are_refused(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        OrderRequest(
            instrument="EUR_USD",
            side="buy",
            quantity=Decimal(1000),
            type="market_if_touched",
            **fields,  # type: ignore[arg-type]
        )


def test_stop_price_on_other_types_names_market_if_touched() -> None:
    with pytest.raises(ModelError, match=r"and market_if_touched orders \(the touch price\)"):
        OrderRequest(instrument="EUR_USD", side="buy", quantity=1, stop_price="1.1")
    with pytest.raises(ModelError, match=r"unknown order type 'if_touched'.*'market_if_touched'"):
        OrderRequest(instrument="EUR_USD", side="buy", quantity=1, type="if_touched")


def test_order_invariants() -> None:
    request = OrderRequest(instrument="EUR_USD", side="buy", quantity=Decimal(100))
    order = Order(
        request=request,
        broker="paper",
        status="partially_filled",
        filled_quantity=Decimal(40),
        average_fill_price=Decimal("1.1"),
    )
    assert order.remaining_quantity == Decimal(60) and order.status is OrderStatus.PARTIALLY_FILLED
    assert not order.status.is_final and OrderStatus.REJECTED.is_final
    with pytest.raises(ModelError, match="filled 101 is more than the ordered 100"):
        attrs.evolve(order, filled_quantity=Decimal(101))
    with pytest.raises(ModelError, match="status filled but only 40 of 100 filled"):
        attrs.evolve(order, status=OrderStatus.FILLED)
    with pytest.raises(ModelError, match="needs an average_fill_price"):
        attrs.evolve(order, average_fill_price=None)
    with pytest.raises(ModelError, match="venue_order_id must be a string or None, got int"):
        attrs.evolve(order, venue_order_id=123)
    with pytest.raises(ModelError, match=r"updated_at .* is before created_at"):
        attrs.evolve(order, created_at=NOW, updated_at=NOW - timedelta(seconds=1))


def test_positions_accounts_and_instruments() -> None:
    short = Position(
        instrument="USD_JPY",
        quantity=Decimal(-1000),
        average_price=Decimal("151.20"),
        broker="oanda",
    )
    assert short.side is Side.SELL
    account = Account(
        broker="oanda",
        currency="USD",
        balance=Decimal("10000"),
        equity=Decimal("10012.50"),
        margin_used=Decimal(300),
        margin_available=Decimal("9712.50"),
    )
    assert account.unrealized_pnl == Decimal("12.50")
    with pytest.raises(ModelError, match="margin_used must not be negative"):
        attrs.evolve(account, margin_used=Decimal(-1))
    btc = Instrument.pair("BTC_USD", "crypto", price_increment="0.01", min_size="0.00001")
    assert (btc.base, btc.quote_currency, btc.price_increment) == ("BTC", "USD", Decimal("0.01"))
    assert Instrument(symbol="AAPL", asset_class="equity", quote_currency="USD").base == "AAPL"
    with pytest.raises(
        ModelError, match="quote_currency 'EUR' does not match the symbol's quote 'USD'"
    ):
        Instrument(symbol="BTC_USD", asset_class="crypto", quote_currency="EUR")
    with pytest.raises(ModelError, match="base 'GBP' does not match the symbol's base 'EUR'"):
        Instrument(symbol="EUR_USD", asset_class="fx", quote_currency="USD", base="GBP")
    with pytest.raises(ModelError, match="unknown asset class 'stocks'"):
        Instrument(symbol="AAPL", asset_class="stocks", quote_currency="USD")  # type: ignore[arg-type]


@pytest.mark.parametrize("symbol", ["EUR_USD", "BTC_USD", "ETH_USDC", "1INCH_USD", "AAPL", "BRK.B"])
def test_canonical_symbols(symbol: str) -> None:
    assert check_symbol(symbol) == symbol


@pytest.mark.parametrize(
    "symbol", ["eur_usd", "EUR/USD", "BTC-USD", "EUR_USD_X", "", " AAPL", "EUR_USD\n", "AAPL\n"]
)
def test_non_canonical_symbols(symbol: str) -> None:
    with pytest.raises(ModelError, match="not a canonical instrument symbol"):
        check_symbol(symbol)


def test_client_order_ids_are_unique_and_time_ordered() -> None:
    ids = [new_client_order_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 28 and i.startswith("rk") and i.isalnum() for i in ids)
    assert ids[0][:12] <= ids[-1][:12]  # the millisecond prefix never goes backwards


# --- JSON round trips ------------------------------------------------------

finite = st.decimals(allow_nan=False, allow_infinity=False)
positive = finite.filter(lambda d: d > 0)
aware = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.timezones()
)


@settings(max_examples=300, deadline=None)
@given(price=positive, quantity=positive, fee=finite, when=aware)
def test_fills_round_trip_through_json_exactly(
    price: Decimal, quantity: Decimal, fee: Decimal, when: datetime
) -> None:
    fill = Fill(
        fill_id="f1",
        client_order_id="rk1",
        instrument="BTC_USD",
        side="buy",
        quantity=quantity,
        price=price,
        fee=fee,
        time=when,
        broker="coinbase",
    )
    text = to_json(fill)
    back = from_json(Fill, text)
    assert back == fill
    for name in ("price", "quantity", "fee"):  # same digits and exponent, not just equal value
        assert str(getattr(back, name)) == str(getattr(fill, name))
        assert json.loads(text)[name] == str(getattr(fill, name))
    assert back.time.tzinfo is UTC


@settings(max_examples=200, deadline=None)
@given(limit=positive, quantity=positive, side=st.sampled_from(Side))
def test_orders_round_trip_through_json(limit: Decimal, quantity: Decimal, side: Side) -> None:
    request = OrderRequest(
        instrument="EUR_USD", side=side, quantity=quantity, type="limit", limit_price=limit
    )
    order = Order(request=request, broker="paper", created_at=NOW, updated_at=NOW)
    back = from_json(Order, to_json(order))
    assert back == order and str(back.request.limit_price) == str(limit)


def test_unknown_json_fields_are_refused() -> None:
    text = to_json(quote())
    broken = json.loads(text) | {"venue": "x"}
    with pytest.raises(ModelError, match=r"Quote: unknown field\(s\) \['venue'\]"):
        from_json(Quote, json.dumps(broken))


def test_the_symbol_cache_never_admits_a_bad_symbol() -> None:
    assert check_symbol("GBP_USD") == "GBP_USD"
    assert check_symbol("GBP_USD") == "GBP_USD"  # second time from the cache
    for bad in ("gbp_usd", ["GBP_USD"], None):
        with pytest.raises(ModelError):
            check_symbol(bad)  # type: ignore[arg-type]
