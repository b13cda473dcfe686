"""Attached trailing stops: rick's ``OrderRequest.trailing_stop`` is v20's
``trailingStopLossOnFill``, and the trailing stop it puts on the trade closes
it through the real stream."""

from __future__ import annotations

from decimal import Decimal

import trio
from conftest import MakeBroker

from rick_core.model import Fill, Instrument, OrderRequest, OrderStatus, Side
from rick_oanda import wire
from rick_oanda.fake import FakeV20

EUR_USD = Instrument.pair("EUR_USD", price_increment="0.00001", size_increment="1")


def test_order_body_carries_the_trailing_stop_on_fill() -> None:
    request = OrderRequest(
        instrument="EUR_USD",
        side=Side.BUY,
        quantity=Decimal(100),
        time_in_force="fok",
        trailing_stop=Decimal("0.001234567"),
        client_order_id="rk-trail",
    )
    body = wire.order_body(request, EUR_USD)
    assert body["trailingStopLossOnFill"] == {
        "distance": "0.00123",  # rounded to the instrument's precision
        "timeInForce": "GTC",
        "clientExtensions": {"id": "rk-trail.ts", "tag": "trailing_stop"},
    }
    again = wire.request_from(body, "MARKET", "1")
    assert again.trailing_stop == Decimal("0.00123")


async def test_a_trailing_stop_on_fill_trails_and_closes_the_trade(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    broker = make_broker()
    await broker.connect()
    try:
        bid, ask = fake_v20.price("EUR_USD")
        spread = ask - bid
        request = OrderRequest(
            instrument="EUR_USD",
            side=Side.BUY,
            quantity=Decimal(100),
            time_in_force="fok",
            trailing_stop=Decimal("0.00100"),
        )
        with trio.fail_after(5):
            async with broker.stream_events() as events:
                order = await broker.place_order(request)
                assert order.status is OrderStatus.FILLED
                (trade,) = await broker.open_trades("EUR_USD")
                trailing = trade["trailingStopLossOrder"]
                assert Decimal(trailing["distance"]) == Decimal("0.00100")
                # The price rises: the stop follows it up.
                high = bid + Decimal("0.00500")
                fake_v20.set_price("EUR_USD", high, high + spread)
                (trade,) = await broker.open_trades("EUR_USD")
                level = Decimal(trade["trailingStopLossOrder"]["trailingStopValue"])
                assert level == high - Decimal("0.00100")
                # It falls back by less than the distance: still open.
                fake_v20.set_price("EUR_USD", high - Decimal("0.00050"), high + spread)
                assert await broker.open_trades("EUR_USD")
                # Through the trailed level: the trade closes.
                low = high - Decimal("0.00150")
                fake_v20.set_price("EUR_USD", low, low + spread)
                closing: list[Fill] = []
                async for event in events:
                    if isinstance(event, Fill) and event.side is Side.SELL:
                        closing.append(event)
                        break
        (fill,) = closing
        assert fill.client_order_id == f"{request.client_order_id}.ts"
        assert fill.quantity == Decimal(100)
        assert await broker.open_trades("EUR_USD") == []
        assert [p for p in await broker.positions() if p.instrument == "EUR_USD"] == []
    finally:
        await broker.close()
