"""The fake v20 server (rick_oanda.fake), driven over loopback by plain httpx."""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest
import trio
from conftest import TOKEN

from rick_oanda.fake import FakeInstrument, FakeV20, format_time

ACCOUNT = "/v3/accounts/101-004-1234567-001"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$")

Message = dict[str, Any]


@pytest.fixture
async def client(fake_v20: FakeV20) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake_v20.url, headers=AUTH, timeout=5) as http:
        yield http


async def place(http: httpx.AsyncClient, **order: Any) -> httpx.Response:
    return await http.post(f"{ACCOUNT}/orders", json={"order": order})


@asynccontextmanager
async def stream(
    http: httpx.AsyncClient, path: str, **params: str
) -> AsyncIterator[trio.MemoryReceiveChannel[Message]]:
    """The decoded lines of a stream, read by a background task into a channel."""
    send, receive = trio.open_memory_channel[Message](math.inf)
    async with http.stream("GET", path, params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert "content-length" not in response.headers
        assert response.headers["transfer-encoding"] == "chunked"

        async def pump() -> None:
            async for line in response.aiter_lines():
                if line:
                    send.send_nowait(json.loads(line))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            yield receive
            nursery.cancel_scope.cancel()


async def next_message(
    lines: trio.MemoryReceiveChannel[Message], *, heartbeats: bool = False, within: float = 1.0
) -> Message:
    """The next line (skipping heartbeats unless asked for)."""
    with trio.fail_after(within):
        while True:
            message = await lines.receive()
            if heartbeats or message["type"] != "HEARTBEAT":
                return message


async def eventually(condition: Callable[[], bool], within: float = 1.0) -> None:
    """Wait until ``condition()`` holds (polling; fails after ``within`` seconds)."""
    with trio.fail_after(within):
        for _ in itertools.count():
            if condition():
                return
            await trio.sleep(0.01)


# ---------------------------------------------------------------------------
# HTTP, auth, account


async def test_every_request_needs_the_token(fake_v20: FakeV20) -> None:
    async with httpx.AsyncClient(base_url=fake_v20.url, timeout=5) as http:
        missing = await http.get(f"{ACCOUNT}/summary")
        wrong = await http.get(f"{ACCOUNT}/summary", headers={"Authorization": "Bearer nope"})
        other = await http.get("/v3/accounts/101-004-7654321-001/summary", headers=AUTH)
        unknown = await http.get(f"{ACCOUNT}/nothing", headers=AUTH)
        method = await http.delete(f"{ACCOUNT}/summary", headers=AUTH)
    for answer in (missing, wrong):
        assert answer.status_code == 401
        assert answer.json() == {"errorMessage": "Insufficient authorization to perform request."}
    assert other.status_code == 403
    assert other.json() == {"errorMessage": "The provided request was forbidden."}
    assert unknown.status_code == 404
    assert method.status_code == 405
    for answer in (missing, wrong, other, unknown, method):
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["requestid"].isdigit()
        assert "errorMessage" in answer.json()
    assert fake_v20.count("GET", "/summary") == 3
    assert fake_v20.requests[-1] == ("DELETE", f"{ACCOUNT}/summary")


async def test_requests_share_a_keep_alive_connection(
    fake_v20: FakeV20, client: httpx.AsyncClient
) -> None:
    ids = set()
    for _ in range(4):
        answer = await client.get(f"{ACCOUNT}/summary")
        assert answer.status_code == 200
        ids.add(answer.headers["RequestID"])
    assert fake_v20.connections == 1
    assert len(ids) == 4


async def test_summary_and_instruments(client: httpx.AsyncClient) -> None:
    summary = (await client.get(f"{ACCOUNT}/summary")).json()
    account = summary["account"]
    assert summary["lastTransactionID"] == account["lastTransactionID"] == "2"  # CREATE, funding
    assert account["id"] == "101-004-1234567-001"
    assert account["currency"] == "USD"
    assert account["balance"] == account["NAV"] == account["marginAvailable"] == "100000.0000"
    assert account["unrealizedPL"] == account["marginUsed"] == "0.0000"
    assert account["openTradeCount"] == account["pendingOrderCount"] == 0
    assert account["hedgingEnabled"] is False
    assert account["createdByUserID"] == 1234567
    assert TIME.match(account["createdTime"])

    answer = (await client.get(f"{ACCOUNT}/instruments")).json()
    instruments = {i["name"]: i for i in answer["instruments"]}
    assert list(instruments) == ["EUR_USD", "GBP_USD", "USD_JPY", "XAU_USD", "SPX500_USD"]
    assert instruments["EUR_USD"] == {
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
    assert instruments["XAU_USD"]["type"] == "METAL"
    assert instruments["SPX500_USD"]["type"] == "CFD"
    assert instruments["SPX500_USD"]["tradeUnitsPrecision"] == 1
    assert instruments["USD_JPY"]["displayPrecision"] == 3
    some = (await client.get(f"{ACCOUNT}/instruments", params={"instruments": "USD_JPY"})).json()
    assert [i["name"] for i in some["instruments"]] == ["USD_JPY"]


async def test_pricing_snapshot(client: httpx.AsyncClient) -> None:
    answer = await client.get(f"{ACCOUNT}/pricing", params={"instruments": "EUR_USD,USD_JPY"})
    assert answer.status_code == 200
    body = answer.json()
    assert TIME.match(body["time"])
    eur, jpy = body["prices"]
    assert eur["type"] == "PRICE"
    assert eur["instrument"] == "EUR_USD"
    assert eur["bids"] == [{"price": "1.08494", "liquidity": 10000000}]
    assert eur["asks"] == [{"price": "1.08506", "liquidity": 10000000}]
    assert (eur["closeoutBid"], eur["closeoutAsk"]) == ("1.08494", "1.08506")
    assert eur["status"] == "tradeable"
    assert eur["tradeable"] is True
    assert jpy["bids"][0]["price"] == "149.993"
    bad = await client.get(f"{ACCOUNT}/pricing", params={"instruments": "EUR_USD,NOPE_NOPE"})
    assert bad.status_code == 400
    assert bad.json() == {"errorMessage": "Invalid value specified for 'instruments'"}


# ---------------------------------------------------------------------------
# orders


async def test_market_order_fills_and_is_streamed(
    fake_v20: FakeV20, client: httpx.AsyncClient
) -> None:
    async with stream(client, f"{ACCOUNT}/transactions/stream") as lines:
        answer = await place(
            client,
            type="MARKET",
            instrument="EUR_USD",
            units="1000",
            clientExtensions={"id": "m-1", "tag": "test"},
        )
        assert answer.status_code == 201
        body = answer.json()
        create = body["orderCreateTransaction"]
        fill = body["orderFillTransaction"]
        assert "orderCancelTransaction" not in body
        assert create["type"] == "MARKET_ORDER"
        assert (create["id"], create["batchID"]) == ("3", "3")
        assert create["timeInForce"] == "FOK"
        assert create["positionFill"] == "DEFAULT"
        assert create["reason"] == "CLIENT_ORDER"
        assert create["clientExtensions"] == {"id": "m-1", "tag": "test"}
        assert create["requestID"] == answer.headers["RequestID"]
        assert create["userID"] == 1234567
        assert TIME.match(create["time"])
        assert fill["type"] == "ORDER_FILL"
        assert (fill["id"], fill["batchID"], fill["orderID"]) == ("4", "3", "3")
        assert fill["clientOrderID"] == "m-1"
        assert fill["reason"] == "MARKET_ORDER"
        assert fill["units"] == "1000"
        assert fill["price"] == fill["fullVWAP"] == "1.08506"  # bought at the ask
        assert fill["pl"] == "0.0000"
        assert fill["financing"] == fill["commission"] == "0.0000"
        assert fill["accountBalance"] == "100000.0000"
        assert fill["tradeOpened"]["tradeID"] == "4"
        assert fill["tradeOpened"]["units"] == "1000"
        assert fill["halfSpreadCost"] == "0.0600"
        assert body["relatedTransactionIDs"] == ["3", "4"]
        assert body["lastTransactionID"] == "4"
        assert answer.headers["Location"].endswith(f"{ACCOUNT}/orders/3")

        assert await next_message(lines) == create
        assert await next_message(lines) == fill

        # FIFO netting: selling reduces the open trade instead of opening a short.
        sell = (await place(client, type="MARKET", instrument="EUR_USD", units="-400")).json()
        reduced = sell["orderFillTransaction"]["tradeReduced"]
        assert reduced["tradeID"] == "4"
        assert reduced["units"] == "-400"
        assert reduced["realizedPL"] == "-0.0480"  # (1.08494 - 1.08506) * 400
        assert "tradeOpened" not in sell["orderFillTransaction"]
        assert (await next_message(lines))["type"] == "MARKET_ORDER"
        assert (await next_message(lines))["type"] == "ORDER_FILL"

    trades = (await client.get(f"{ACCOUNT}/openTrades")).json()["trades"]
    assert [(t["id"], t["currentUnits"], t["initialUnits"]) for t in trades] == [
        ("4", "600", "1000")
    ]
    position = (await client.get(f"{ACCOUNT}/positions/EUR_USD")).json()["position"]
    assert position["long"]["units"] == "600"
    assert position["long"]["tradeIDs"] == ["4"]
    assert position["short"]["units"] == "0"
    summary = (await client.get(f"{ACCOUNT}/summary")).json()["account"]
    assert summary["balance"] == "99999.9520"
    assert summary["openTradeCount"] == 1
    assert Decimal(summary["marginUsed"]) > 0
    order = (await client.get(f"{ACCOUNT}/orders/@m-1")).json()["order"]
    assert order["state"] == "FILLED"
    assert order["fillingTransactionID"] == "4"
    assert order["tradeOpenedID"] == "4"


async def test_limit_order_rests_until_the_price_reaches_it(
    fake_v20: FakeV20, client: httpx.AsyncClient
) -> None:
    answer = await place(
        client,
        type="LIMIT",
        instrument="EUR_USD",
        units="100",
        price="1.08",
        clientExtensions={"id": "l-1"},
    )
    assert answer.status_code == 201
    body = answer.json()
    assert set(body) == {"orderCreateTransaction", "relatedTransactionIDs", "lastTransactionID"}
    create = body["orderCreateTransaction"]
    assert create["type"] == "LIMIT_ORDER"
    assert create["price"] == "1.08000"  # echoed at display precision
    assert create["timeInForce"] == "GTC"
    assert create["triggerCondition"] == "DEFAULT"
    pending = (await client.get(f"{ACCOUNT}/pendingOrders")).json()["orders"]
    assert [(o["id"], o["type"], o["state"]) for o in pending] == [
        (create["id"], "LIMIT", "PENDING")
    ]

    fake_v20.set_price("EUR_USD", "1.08010", "1.08020")  # not there yet
    assert fake_v20.orders[create["id"]]["state"] == "PENDING"
    fake_v20.set_price("EUR_USD", "1.07990", "1.07998")
    fill = fake_v20.transactions[-1]
    assert fill["type"] == "ORDER_FILL"
    assert fill["reason"] == "LIMIT_ORDER"
    assert fill["orderID"] == create["id"]
    assert fill["clientOrderID"] == "l-1"
    assert fill["price"] == "1.07998"
    assert "requestID" not in fill  # made by the market, not by a request

    order = (await client.get(f"{ACCOUNT}/orders/@l-1")).json()["order"]
    assert order["state"] == "FILLED"
    assert order["fillingTransactionID"] == fill["id"]
    assert (await client.get(f"{ACCOUNT}/pendingOrders")).json()["orders"] == []
    assert fake_v20.price("EUR_USD") == (Decimal("1.07990"), Decimal("1.07998"))


async def test_replace_and_cancel(fake_v20: FakeV20, client: httpx.AsyncClient) -> None:
    first = (
        await place(
            client,
            type="LIMIT",
            instrument="EUR_USD",
            units="100",
            price="1.08000",
            clientExtensions={"id": "r-1"},
        )
    ).json()["orderCreateTransaction"]

    answer = await client.put(
        f"{ACCOUNT}/orders/{first['id']}",
        json={
            "order": {
                "type": "LIMIT",
                "instrument": "EUR_USD",
                "units": "100",
                "price": "1.07500",
                "clientExtensions": {"id": "r-1"},
            }
        },
    )
    assert answer.status_code == 201
    body = answer.json()
    cancel = body["orderCancelTransaction"]
    create = body["orderCreateTransaction"]
    assert cancel["type"] == "ORDER_CANCEL"
    assert cancel["orderID"] == first["id"]
    assert cancel["clientOrderID"] == "r-1"
    assert cancel["reason"] == "CLIENT_REQUEST_REPLACED"
    assert cancel["replacedByOrderID"] == create["id"]
    assert create["reason"] == "REPLACEMENT"
    assert create["replacesOrderID"] == first["id"]
    assert body["relatedTransactionIDs"] == [cancel["id"], create["id"]]

    current = (await client.get(f"{ACCOUNT}/orders/%40r-1")).json()["order"]
    assert (current["id"], current["price"], current["state"]) == (
        create["id"],
        "1.07500",
        "PENDING",
    )
    old = (await client.get(f"{ACCOUNT}/orders/{first['id']}")).json()["order"]
    assert old["state"] == "CANCELLED"
    assert old["replacedByOrderID"] == create["id"]

    answer = await client.put(f"{ACCOUNT}/orders/@r-1/cancel")
    assert answer.status_code == 200
    cancelled = answer.json()["orderCancelTransaction"]
    assert cancelled["orderID"] == create["id"]
    assert cancelled["reason"] == "CLIENT_REQUEST"

    for spec in ("@r-1", first["id"], "@never-seen"):
        again = await client.put(f"{ACCOUNT}/orders/{spec}/cancel")
        assert again.status_code == 404
        body = again.json()
        reject = body["orderCancelRejectTransaction"]
        assert reject["type"] == "ORDER_CANCEL_REJECT"
        assert reject["rejectReason"] == body["errorCode"] == "ORDER_DOESNT_EXIST"
        assert body["errorMessage"]
        assert body["lastTransactionID"] == reject["id"]
    missing = await client.get(f"{ACCOUNT}/orders/@never-seen")
    assert missing.status_code == 404


async def test_stop_loss_on_fill_closes_the_trade(
    fake_v20: FakeV20, client: httpx.AsyncClient
) -> None:
    answer = await place(
        client,
        type="MARKET",
        instrument="EUR_USD",
        units="1000",
        clientExtensions={"id": "p-1"},
        stopLossOnFill={"price": "1.08000", "clientExtensions": {"id": "p-1.sl"}},
        takeProfitOnFill={"price": "1.09000", "clientExtensions": {"id": "p-1.tp"}},
    )
    body = answer.json()
    trade_id = body["orderFillTransaction"]["tradeOpened"]["tradeID"]
    kinds = [fake_v20.transactions[int(i) - 1]["type"] for i in body["relatedTransactionIDs"]]
    assert kinds == ["MARKET_ORDER", "ORDER_FILL", "TAKE_PROFIT_ORDER", "STOP_LOSS_ORDER"]
    stop_tx = fake_v20.transactions[-1]
    assert stop_tx["reason"] == "ON_FILL"
    assert stop_tx["tradeID"] == trade_id
    assert stop_tx["orderFillTransactionID"] == body["orderFillTransaction"]["id"]
    assert stop_tx["clientExtensions"] == {"id": "p-1.sl"}

    trade = (await client.get(f"{ACCOUNT}/trades/{trade_id}")).json()["trade"]
    stop = trade["stopLossOrder"]
    assert (stop["type"], stop["state"], stop["price"]) == ("STOP_LOSS", "PENDING", "1.08000")
    assert stop["tradeID"] == trade_id
    assert stop["clientExtensions"] == {"id": "p-1.sl"}
    assert trade["takeProfitOrder"]["price"] == "1.09000"

    fake_v20.set_price("EUR_USD", "1.07990", "1.08002")
    fill, linked = fake_v20.transactions[-2:]
    assert fill["type"] == "ORDER_FILL"
    assert fill["reason"] == "STOP_LOSS_ORDER"
    assert fill["orderID"] == stop["id"]
    assert fill["clientOrderID"] == "p-1.sl"
    assert fill["units"] == "-1000"
    assert fill["price"] == "1.07990"
    assert fill["tradesClosed"][0]["tradeID"] == trade_id
    assert fill["pl"] == "-5.1600"  # (1.07990 - 1.08506) * 1000
    assert fill["accountBalance"] == "99994.8400"
    assert linked["type"] == "ORDER_CANCEL"
    assert linked["reason"] == "LINKED_TRADE_CLOSED"
    assert linked["clientOrderID"] == "p-1.tp"
    assert fill["batchID"] == linked["batchID"] == fill["id"]

    closed = fake_v20.trades[trade_id]
    assert closed["state"] == "CLOSED"
    assert closed["realizedPL"] == "-5.1600"
    assert "stopLossOrder" not in closed
    assert (await client.get(f"{ACCOUNT}/openTrades")).json()["trades"] == []
    assert fake_v20.balance == Decimal("99994.84")


async def test_trade_orders_and_closes(fake_v20: FakeV20, client: httpx.AsyncClient) -> None:
    fill = (await place(client, type="MARKET", instrument="USD_JPY", units="1000")).json()[
        "orderFillTransaction"
    ]
    trade_id = fill["tradeOpened"]["tradeID"]
    path = f"{ACCOUNT}/trades/{trade_id}"

    answer = await client.put(
        f"{path}/orders",
        json={"takeProfit": {"price": "151.000"}, "stopLoss": {"price": "149.000"}},
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["takeProfitOrderTransaction"]["type"] == "TAKE_PROFIT_ORDER"
    assert body["stopLossOrderTransaction"]["reason"] == "CLIENT_ORDER"
    stop_id = body["stopLossOrderTransaction"]["id"]

    # A new stop loss replaces the old one; null cancels the take profit.
    body = (
        await client.put(
            f"{path}/orders", json={"takeProfit": None, "stopLoss": {"price": "149.5"}}
        )
    ).json()
    assert body["takeProfitOrderCancelTransaction"]["reason"] == "CLIENT_REQUEST"
    assert body["stopLossOrderCancelTransaction"]["orderID"] == stop_id
    assert body["stopLossOrderCancelTransaction"]["reason"] == "CLIENT_REQUEST_REPLACED"
    new_stop = body["stopLossOrderTransaction"]
    assert new_stop["replacesOrderID"] == stop_id
    assert new_stop["price"] == "149.500"
    trade = (await client.get(path)).json()["trade"]
    assert "takeProfitOrder" not in trade
    assert trade["stopLossOrder"]["id"] == new_stop["id"]

    bad = await client.put(f"{path}/orders", json={"stopLoss": {"price": "149.0001"}})
    assert bad.status_code == 400
    assert (
        bad.json()["stopLossOrderRejectTransaction"]["rejectReason"] == "PRICE_PRECISION_EXCEEDED"
    )

    answer = await client.put(f"{path}/close", json={"units": "400"})
    assert answer.status_code == 200
    body = answer.json()
    create = body["orderCreateTransaction"]
    assert create["reason"] == "TRADE_CLOSE"
    assert create["units"] == "-400"
    assert create["positionFill"] == "REDUCE_ONLY"
    assert create["tradeClose"] == {"tradeID": trade_id, "units": "400"}
    assert body["orderFillTransaction"]["reason"] == "MARKET_ORDER_TRADE_CLOSE"
    assert body["orderFillTransaction"]["tradeReduced"]["units"] == "-400"
    too_many = await client.put(f"{path}/close", json={"units": "601"})
    assert too_many.status_code == 400
    assert too_many.json()["errorCode"] == "CLOSE_TRADE_UNITS_EXCEED_TRADE_SIZE"

    answer = await client.put(f"{ACCOUNT}/positions/USD_JPY/close", json={"longUnits": "ALL"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["longOrderCreateTransaction"]["longPositionCloseout"] == {
        "instrument": "USD_JPY",
        "units": "ALL",
    }
    fill = body["longOrderFillTransaction"]
    assert fill["reason"] == "MARKET_ORDER_POSITION_CLOSEOUT"
    assert fill["tradesClosed"][0]["tradeID"] == trade_id
    assert fake_v20.orders[new_stop["id"]]["state"] == "CANCELLED"  # went with the trade
    assert (await client.get(f"{ACCOUNT}/openPositions")).json()["positions"] == []
    flat = await client.put(f"{ACCOUNT}/positions/USD_JPY/close", json={"shortUnits": "ALL"})
    assert flat.status_code == 400
    assert flat.json()["shortOrderRejectTransaction"]["rejectReason"] == (
        "CLOSEOUT_POSITION_DOESNT_EXIST"
    )
    gone = await client.put(f"{path}/close", json={"units": "ALL"})
    assert gone.status_code == 404
    assert gone.json()["orderRejectTransaction"]["rejectReason"] == "TRADE_DOESNT_EXIST"
    assert fake_v20.errors == []


async def test_stop_market_if_touched_and_trailing_stop(
    fake_v20: FakeV20, client: httpx.AsyncClient
) -> None:
    stop = (
        await place(client, type="STOP", instrument="EUR_USD", units="100", price="1.08600")
    ).json()["orderCreateTransaction"]
    touch = (
        await place(
            client, type="MARKET_IF_TOUCHED", instrument="EUR_USD", units="-100", price="1.08700"
        )
    ).json()["orderCreateTransaction"]
    assert fake_v20.orders[touch["id"]]["initialMarketPrice"] == "1.08494"  # the bid: a sell
    fake_v20.set_price("EUR_USD", "1.08590", "1.08602")  # the ask reaches the buy stop
    assert fake_v20.orders[stop["id"]]["state"] == "FILLED"
    assert fake_v20.orders[touch["id"]]["state"] == "PENDING"
    assert fake_v20.transactions[-1]["reason"] == "STOP_ORDER"
    assert fake_v20.transactions[-1]["price"] == "1.08602"
    fake_v20.set_price("EUR_USD", "1.08700", "1.08712")  # the bid touches the sell
    fill = fake_v20.transactions[-1]
    assert fill["reason"] == "MARKET_IF_TOUCHED_ORDER"
    assert fill["tradesClosed"][0]["realizedPL"] == "0.0980"  # (1.08700 - 1.08602) * 100

    body = (
        await place(
            client,
            type="MARKET",
            instrument="EUR_USD",
            units="100",
            trailingStopLossOnFill={"distance": "0.00100"},
        )
    ).json()
    trailing_id = body["lastTransactionID"]
    trailing = fake_v20.orders[trailing_id]
    assert trailing["type"] == "TRAILING_STOP_LOSS"
    assert trailing["trailingStopValue"] == "1.08600"  # bid - distance
    fake_v20.set_price("EUR_USD", "1.08800", "1.08812")
    assert trailing["trailingStopValue"] == "1.08700"  # follows a rising bid
    fake_v20.set_price("EUR_USD", "1.08750", "1.08762")
    assert trailing["trailingStopValue"] == "1.08700"  # never backs off
    assert trailing["state"] == "PENDING"
    fake_v20.set_price("EUR_USD", "1.08699", "1.08711")
    assert trailing["state"] == "FILLED"
    assert fake_v20.transactions[-1]["reason"] == "TRAILING_STOP_LOSS_ORDER"
    assert fake_v20.errors == []


async def test_gtd_order_expires(fake_v20: FakeV20, client: httpx.AsyncClient) -> None:
    expiry = format_time(time.time_ns() + 200_000_000)
    create = (
        await place(
            client,
            type="STOP",
            instrument="EUR_USD",
            units="100",
            price="1.09000",
            timeInForce="GTD",
            gtdTime=expiry,
        )
    ).json()["orderCreateTransaction"]
    assert create["gtdTime"] == expiry
    await eventually(lambda: fake_v20.orders[create["id"]]["state"] != "PENDING")
    cancel = fake_v20.transactions[-1]
    assert (cancel["type"], cancel["orderID"]) == ("ORDER_CANCEL", create["id"])
    assert cancel["reason"] == "TIME_IN_FORCE_EXPIRED"


# ---------------------------------------------------------------------------
# rejects and fault injection

REJECTS = [
    ({"units": "0.5"}, "UNITS_PRECISION_EXCEEDED"),
    ({"units": "0"}, "UNITS_INVALID"),
    ({"units": "100000001"}, "UNITS_LIMIT_EXCEEDED"),
    ({"instrument": "SPX500_USD", "units": "0.25"}, "UNITS_PRECISION_EXCEEDED"),
    ({"timeInForce": "GTC"}, "TIME_IN_FORCE_INVALID"),
    ({"type": "MARKET_IF_TOUCHED", "price": "1.07", "timeInForce": "FOK"}, "TIME_IN_FORCE_INVALID"),
    ({"type": "LIMIT", "price": "1.080001"}, "PRICE_PRECISION_EXCEEDED"),
    ({"type": "LIMIT"}, "PRICE_MISSING"),
    ({"stopLossOnFill": {"price": "1.0700001"}}, "STOP_LOSS_ON_FILL_PRICE_PRECISION_EXCEEDED"),
    ({"instrument": "NOPE_USD"}, "INSTRUMENT_UNKNOWN"),
]


@pytest.mark.parametrize(("changes", "reason"), REJECTS)
async def test_invalid_orders_are_rejected(
    fake_v20: FakeV20, client: httpx.AsyncClient, changes: dict[str, Any], reason: str
) -> None:
    order = {"type": "MARKET", "instrument": "EUR_USD", "units": "100", **changes}
    answer = await place(client, **order)
    assert answer.status_code == 400
    body = answer.json()
    reject = body["orderRejectTransaction"]
    assert reject["type"] == f"{order['type']}_ORDER_REJECT"
    assert reject["rejectReason"] == body["errorCode"] == reason
    assert body["errorMessage"]
    assert body["relatedTransactionIDs"] == [reject["id"]] == [body["lastTransactionID"]]
    assert fake_v20.transactions[-1] == reject  # a real transaction
    if reason == "INSTRUMENT_UNKNOWN":
        assert body["errorMessage"] == "Invalid value specified for 'instrument'"


async def test_more_rejects(nursery: trio.Nursery) -> None:
    fake = FakeV20(
        token=TOKEN, instruments=[FakeInstrument("EUR_USD", minimum_trade_size=Decimal(100))]
    )
    await nursery.start(fake.serve)
    async with httpx.AsyncClient(base_url=fake.url, headers=AUTH, timeout=5) as http:
        small = await place(http, type="MARKET", instrument="EUR_USD", units="-99")
        assert small.json()["errorCode"] == "UNITS_MIMIMUM_NOT_MET"  # OANDA's spelling
        fine = await place(http, type="LIMIT", instrument="EUR_USD", units="100", price="1.0700000")
        assert fine.status_code == 201  # trailing zeros are not precision
        twice = dict(type="LIMIT", instrument="EUR_USD", units="100", price="1.07")
        first = await place(http, **twice, clientExtensions={"id": "dup"})
        second = await place(http, **twice, clientExtensions={"id": "dup"})
        assert first.status_code == 201
        assert second.status_code == 400
        assert second.json()["errorCode"] == "CLIENT_ORDER_ID_ALREADY_EXISTS"
        huge = await place(http, type="MARKET", instrument="EUR_USD", units="10000000")
        assert huge.status_code == 201
        body = huge.json()
        assert "orderFillTransaction" not in body
        assert body["orderCancelTransaction"]["reason"] == "INSUFFICIENT_MARGIN"


async def test_injected_rejects_and_cancels(fake_v20: FakeV20, client: httpx.AsyncClient) -> None:
    fake_v20.reject_next_order()
    async with stream(client, f"{ACCOUNT}/transactions/stream") as lines:
        answer = await place(client, type="MARKET", instrument="EUR_USD", units="100")
        assert answer.status_code == 400
        body = answer.json()
        assert await next_message(lines) == body["orderRejectTransaction"]
    assert body["orderRejectTransaction"]["type"] == "MARKET_ORDER_REJECT"
    assert body["orderRejectTransaction"]["rejectReason"] == "INSUFFICIENT_MARGIN"
    assert body["errorCode"] == "INSUFFICIENT_MARGIN"
    assert body["lastTransactionID"] == "3"

    fake_v20.cancel_next_order("MARKET_HALTED")
    answer = await place(client, type="MARKET", instrument="EUR_USD", units="100")
    assert answer.status_code == 201
    body = answer.json()
    assert body["orderCancelTransaction"]["reason"] == "MARKET_HALTED"
    assert body["orderCancelTransaction"]["orderID"] == body["orderCreateTransaction"]["id"]
    assert "orderFillTransaction" not in body

    filled = await place(client, type="MARKET", instrument="EUR_USD", units="100")
    assert "orderFillTransaction" in filled.json()


async def test_rate_limit_injection(fake_v20: FakeV20, client: httpx.AsyncClient) -> None:
    fake_v20.fail_next(2, path_contains="/summary", retry_after=0.5)
    assert (await client.get(f"{ACCOUNT}/instruments")).status_code == 200
    for _ in range(2):
        answer = await client.get(f"{ACCOUNT}/summary")
        assert answer.status_code == 429
        assert answer.headers["Retry-After"] == "0.5"
        assert answer.headers["RequestID"]
        assert list(answer.json()) == ["errorMessage"]
    assert (await client.get(f"{ACCOUNT}/summary")).status_code == 200
    fake_v20.fail_next(status=503)
    answer = await client.get(f"{ACCOUNT}/openTrades")
    assert answer.status_code == 503
    assert "Retry-After" not in answer.headers
    assert fake_v20.count("GET", "/summary") == 3


async def test_swallowed_order_is_made_but_never_answered(
    fake_v20: FakeV20, client: httpx.AsyncClient
) -> None:
    fake_v20.swallow_next_order()
    async with httpx.AsyncClient(base_url=fake_v20.url, headers=AUTH, timeout=0.3) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await place(
                impatient,
                type="MARKET",
                instrument="EUR_USD",
                units="100",
                clientExtensions={"id": "s-1"},
            )
    order = (await client.get(f"{ACCOUNT}/orders/@s-1")).json()["order"]
    assert order["state"] == "FILLED"
    assert [t["type"] for t in fake_v20.transactions[-2:]] == ["MARKET_ORDER", "ORDER_FILL"]
    assert fake_v20.count("POST", "/orders") == 1
    assert (await place(client, type="MARKET", instrument="EUR_USD", units="1")).status_code == 201


# ---------------------------------------------------------------------------
# streams


async def test_pricing_stream_snapshot_ticks_and_heartbeats(
    fake_v20: FakeV20, client: httpx.AsyncClient
) -> None:
    path = f"{ACCOUNT}/pricing/stream"
    async with stream(client, path, instruments="EUR_USD,USD_JPY") as lines:
        first = await next_message(lines, heartbeats=True)
        second = await next_message(lines, heartbeats=True)
        assert [first["instrument"], second["instrument"]] == ["EUR_USD", "USD_JPY"]
        assert first["bids"] == [{"price": "1.08494", "liquidity": 10000000}]
        assert list(first) == [
            "type",
            "time",
            "bids",
            "asks",
            "closeoutBid",
            "closeoutAsk",
            "status",
            "tradeable",
            "instrument",
        ]
        seen: list[Message] = []
        with trio.move_on_after(0.5):
            while True:
                seen.append(await next_message(lines, heartbeats=True))
        beats = [m for m in seen if m["type"] == "HEARTBEAT"]
        ticks = [m for m in seen if m["type"] == "PRICE"]
        assert 2 <= len(beats) <= 3
        assert all(set(b) == {"type", "time"} and TIME.match(b["time"]) for b in beats)
        assert len(ticks) >= 10  # the random walk, both instruments
        last = ticks[-1]
        assert fake_v20.price(last["instrument"])[0] == Decimal(last["bids"][0]["price"])
    assert fake_v20.stream_connections["pricing"] == 1
    bad = await client.get(path, params={"instruments": "EUR_USD,NOPE_NOPE"})
    assert bad.status_code == 400
    assert bad.json() == {"errorMessage": "Invalid value specified for 'instruments'"}


async def test_pricing_stream_without_snapshot(nursery: trio.Nursery) -> None:
    fake = FakeV20(token=TOKEN, heartbeat=0.1, price_interval=0)  # no random walk
    await nursery.start(fake.serve)
    async with (
        httpx.AsyncClient(base_url=fake.url, headers=AUTH, timeout=5) as http,
        stream(http, f"{ACCOUNT}/pricing/stream", instruments="GBP_USD", snapshot="false") as lines,
    ):
        assert (await next_message(lines, heartbeats=True))["type"] == "HEARTBEAT"
        fake.set_price("GBP_USD", "1.25000", "1.25010")
        price = await next_message(lines)
        assert (price["closeoutBid"], price["closeoutAsk"]) == ("1.25000", "1.25010")


async def test_transactions_stream_stall_and_resume(
    fake_v20: FakeV20, client: httpx.AsyncClient
) -> None:
    async with stream(client, f"{ACCOUNT}/transactions/stream") as lines:
        beat = await next_message(lines, heartbeats=True)
        assert beat == {"type": "HEARTBEAT", "lastTransactionID": "2", "time": beat["time"]}
        fake_v20.stall_streams("transactions")
        body = (await place(client, type="MARKET", instrument="EUR_USD", units="10")).json()
        with trio.move_on_after(0.5) as silence:
            await lines.receive()  # nothing at all: no heartbeat either
        assert silence.cancelled_caught
        fake_v20.resume_streams("transactions")
        assert await next_message(lines, heartbeats=True) == body["orderCreateTransaction"]
        assert await next_message(lines, heartbeats=True) == body["orderFillTransaction"]
        beat = await next_message(lines, heartbeats=True)
        assert beat["lastTransactionID"] == body["lastTransactionID"]


async def test_drop_in_the_middle_of_a_line(fake_v20: FakeV20, client: httpx.AsyncClient) -> None:
    raw = b""
    async with client.stream("GET", f"{ACCOUNT}/transactions/stream") as response:
        assert fake_v20.open_streams("transactions") == 1
        await place(client, type="MARKET", instrument="EUR_USD", units="10")
        with trio.fail_after(1), pytest.raises(httpx.RemoteProtocolError):  # noqa: PT012
            async for chunk in response.aiter_raw():
                raw += chunk
                if raw.count(b"\n") == 2:
                    fake_v20.drop_streams(mid_line=True)
    *whole, partial = raw.split(b"\n")
    assert [json.loads(line)["type"] for line in whole] == ["MARKET_ORDER", "ORDER_FILL"]
    assert partial.startswith(b'{"')
    with pytest.raises(json.JSONDecodeError):
        json.loads(partial)
    await eventually(lambda: fake_v20.open_streams() == 0)

    # A clean drop ends the chunked body early too; a new stream works.
    async with stream(client, f"{ACCOUNT}/transactions/stream") as lines:
        assert (await next_message(lines, heartbeats=True))["type"] == "HEARTBEAT"
    async with client.stream("GET", f"{ACCOUNT}/transactions/stream") as response:
        fake_v20.drop_streams("transactions")
        with trio.fail_after(1), pytest.raises(httpx.RemoteProtocolError):
            await response.aread()
    assert fake_v20.stream_connections == {"pricing": 0, "transactions": 3}


async def test_transaction_history(fake_v20: FakeV20, client: httpx.AsyncClient) -> None:
    for units in ("10", "-10", "5"):
        await place(client, type="MARKET", instrument="EUR_USD", units=units)
    assert fake_v20.last_transaction_id == "8"

    index = (await client.get(f"{ACCOUNT}/transactions", params={"pageSize": "3"})).json()
    assert index["count"] == 8
    assert index["pageSize"] == 3
    assert index["lastTransactionID"] == "8"
    base = f"{fake_v20.url}{ACCOUNT}/transactions/idrange"
    assert index["pages"] == [
        f"{base}?from=1&to=3",
        f"{base}?from=4&to=6",
        f"{base}?from=7&to=8",
    ]
    paged = []
    for page in index["pages"]:
        paged += (await client.get(page)).json()["transactions"]
    assert paged == fake_v20.transactions

    since = (await client.get(f"{ACCOUNT}/transactions/sinceid", params={"id": "6"})).json()
    assert [t["id"] for t in since["transactions"]] == ["7", "8"]
    fills = (await client.get(f"{ACCOUNT}/transactions", params={"type": "ORDER_FILL"})).json()
    assert fills["count"] == 3
    assert fills["pages"] == [f"{base}?from=4&to=8&type=ORDER_FILL"]
    only = (await client.get(fills["pages"][0])).json()["transactions"]
    assert [t["id"] for t in only] == ["4", "6", "8"]
    one = (await client.get(f"{ACCOUNT}/transactions/1")).json()["transaction"]
    assert one["type"] == "CREATE"
    assert (await client.get(f"{ACCOUNT}/transactions/99")).status_code == 404
    unix = await client.get(f"{ACCOUNT}/transactions/1", headers={"Accept-Datetime-Format": "UNIX"})
    assert re.fullmatch(r"\d+\.\d{9}", unix.json()["transaction"]["time"])
