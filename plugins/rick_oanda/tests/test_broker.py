"""OandaBroker against the fake v20 server over loopback: credentials,
idempotent order submission, v20 rejections, 429 / 5xx handling, pacing,
the live-account lock, protection, foreign orders and fills."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import ACCOUNT, BAD_TOKEN, TOKEN, MakeBroker, Secrets

from rick_core.broker import (
    AuthenticationFailed,
    BrokerError,
    Disconnected,
    OrderRejected,
    RateLimited,
    TemporarilyUnavailable,
    Unsupported,
)
from rick_core.components import ComponentSetup
from rick_core.model import Fill, Order, OrderRequest, OrderStatus, utc_now
from rick_oanda.broker import OandaBroker
from rick_oanda.fake import FakeV20

PATH = f"/v3/accounts/{ACCOUNT}"


@asynccontextmanager
async def connected(make_broker: MakeBroker, **options: Any) -> AsyncIterator[OandaBroker]:
    broker = make_broker(**options)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()


def market(side: str, cid: str, quantity: int = 100, **fields: Any) -> OrderRequest:
    return OrderRequest(
        instrument=fields.pop("instrument", "EUR_USD"),
        side=side,
        quantity=Decimal(quantity),
        time_in_force="fok",
        client_order_id=cid,
        **fields,
    )


def far_limit(cid: str, price: str = "0.54000", quantity: int = 100) -> OrderRequest:
    return OrderRequest(
        instrument="EUR_USD",
        side="buy",
        quantity=Decimal(quantity),
        type="limit",
        limit_price=Decimal(price),
        time_in_force="gtc",
        client_order_id=cid,
    )


def texts(error: BaseException) -> str:
    """Everything an error (and what it is chained to) shows."""
    parts: list[str] = []
    current: BaseException | None = error
    while current is not None:
        parts += [str(current), repr(current), *map(repr, current.args)]
        parts += [str(getattr(current, name, "")) for name in ("reason", "code")]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def pending(fake: FakeV20) -> list[dict[str, Any]]:
    return [o for o in fake.orders.values() if o["state"] == "PENDING"]


# ---------------------------------------------------------------------------
# credentials


async def test_connect_without_a_token_says_how_to_store_one(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    broker = make_broker(token=None)
    with trio.fail_after(2), pytest.raises(AuthenticationFailed) as caught:
        await broker.connect()
    assert "rick creds set oanda token" in str(caught.value)
    assert caught.value.broker == "oanda"
    assert fake_v20.requests == []  # nothing was sent without a token
    await broker.close()


async def test_connect_names_the_broker_in_the_advice(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    broker = make_broker(token=None, name="fx-demo")
    with trio.fail_after(2), pytest.raises(AuthenticationFailed, match="rick creds set fx-demo"):
        await broker.connect()
    await broker.close()


async def test_a_bad_token_fails_authentication_without_showing_it(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    broker = make_broker(token=BAD_TOKEN)
    with trio.fail_after(2), pytest.raises(AuthenticationFailed) as caught:
        await broker.connect()
    shown = texts(caught.value)
    assert BAD_TOKEN not in shown and TOKEN not in shown
    assert "Insufficient authorization" in shown  # the venue's words
    assert "rick creds set oanda token" in shown
    assert fake_v20.count("GET", "/summary") == 1  # refused, not retried
    assert BAD_TOKEN not in repr(broker) and BAD_TOKEN not in repr(broker.http)
    await broker.close()


async def test_a_token_with_spaces_is_refused_before_a_request(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    broker = make_broker(token="abc def")
    with trio.fail_after(2), pytest.raises(AuthenticationFailed, match="not a token") as caught:
        await broker.connect()
    assert "abc def" not in texts(caught.value)
    assert fake_v20.requests == []
    await broker.close()


# ---------------------------------------------------------------------------
# idempotency


async def test_an_unanswered_order_is_found_by_client_id_not_resent(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(3):
        async with connected(make_broker, timeout=0.5) as broker:
            fake_v20.swallow_next_order()
            request = far_limit("lost-answer")
            with pytest.raises(TemporarilyUnavailable, match=r"no answer within 0\.5 s"):
                await broker.place_order(request)
            found = await broker.get_order("lost-answer")
            assert found.status is OrderStatus.ACCEPTED
            assert found.request.limit_price == Decimal("0.54000")
            assert found.request.quantity == 100
            venue = fake_v20.order("@lost-answer")
            assert venue is not None and found.venue_order_id == venue["id"]
            assert fake_v20.count("POST", "/orders") == 1  # not sent again
            listed = [o for o in await broker.open_orders() if o.client_order_id == "lost-answer"]
            assert len(listed) == 1


async def test_the_same_request_twice_returns_the_order_that_exists(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            request = far_limit("twice")
            first = await broker.place_order(request)
            again = await broker.place_order(request)
            assert again.venue_order_id == first.venue_order_id
            assert again.client_order_id == "twice" and again.status is OrderStatus.ACCEPTED
            assert again.request == request
            assert fake_v20.count("POST", "/orders") == 2
            rejects = [t for t in fake_v20.transactions if t["type"] == "LIMIT_ORDER_REJECT"]
            assert [t["rejectReason"] for t in rejects] == ["CLIENT_ORDER_ID_ALREADY_EXISTS"]
            assert [o["id"] for o in pending(fake_v20)] == [first.venue_order_id]


async def test_a_client_id_already_used_by_another_order_is_rejected(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            await broker.place_order(far_limit("taken"))
            with pytest.raises(OrderRejected) as caught:
                await broker.place_order(far_limit("taken", quantity=200))
            assert caught.value.code == "CLIENT_ORDER_ID_ALREADY_EXISTS"
            assert "already used" in caught.value.reason
            assert len(pending(fake_v20)) == 1


# ---------------------------------------------------------------------------
# v20 refusals


@pytest.mark.parametrize("reason", ["INSUFFICIENT_MARGIN", "UNITS_LIMIT_EXCEEDED"])
async def test_a_reject_transaction_is_order_rejected_with_its_reason(
    fake_v20: FakeV20, make_broker: MakeBroker, reason: str
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            fake_v20.reject_next_order(reason)
            with pytest.raises(OrderRejected) as caught:
                await broker.place_order(market("buy", f"refused-{reason.lower()}"))
            assert caught.value.code == reason
            assert reason in caught.value.reason
            assert caught.value.broker == "oanda"
            assert fake_v20.transactions[-1]["type"] == "MARKET_ORDER_REJECT"
            assert fake_v20.trades == {}
            # the fault was one order: the next goes through
            placed = await broker.place_order(market("buy", "accepted"))
            assert placed.status is OrderStatus.FILLED


async def test_an_order_over_the_maximum_units_is_refused_by_the_venue(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            with pytest.raises(OrderRejected) as caught:
                await broker.place_order(market("buy", "too-big", quantity=200_000_000))
            assert caught.value.code == "UNITS_LIMIT_EXCEEDED"
            assert fake_v20.count("POST", "/orders") == 1  # the venue said so


async def test_an_order_the_venue_cancels_at_once_is_rejected(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            fake_v20.cancel_next_order("MARKET_HALTED")
            with pytest.raises(OrderRejected) as caught:
                await broker.place_order(market("buy", "halted"))
            assert caught.value.code == "MARKET_HALTED"
            assert "MARKET_HALTED" in caught.value.reason
            cancel = fake_v20.transactions[-1]
            assert (cancel["type"], cancel["reason"]) == ("ORDER_CANCEL", "MARKET_HALTED")
            assert await broker.positions() == []


async def test_an_order_beyond_the_margin_is_cancelled_and_rejected(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            # 100,000 USD at a 3.33 % margin rate carries about 2.7 million EUR
            with pytest.raises(OrderRejected) as caught:
                await broker.place_order(market("buy", "no-margin", quantity=50_000_000))
            assert caught.value.code == "INSUFFICIENT_MARGIN"
            assert await broker.positions() == []


# ---------------------------------------------------------------------------
# 429, 5xx


async def test_429_is_retried_until_the_call_succeeds(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(3):
        async with connected(make_broker) as broker:
            before = fake_v20.count("GET", "/summary")
            fake_v20.fail_next(2, status=429, path_contains="/summary")
            account = await broker.account()
            assert account.balance == Decimal(100_000)
            assert fake_v20.count("GET", "/summary") - before == 3
            assert broker.http.rate_limited == 2


async def test_an_order_answered_429_is_sent_again_and_made_once(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(3):
        async with connected(make_broker) as broker:
            fake_v20.fail_next(1, status=429, path_contains="/orders")
            placed = await broker.place_order(far_limit("after-429"))
            assert placed.status is OrderStatus.ACCEPTED
            assert fake_v20.count("POST", "/orders") == 2  # a 429 was not processed
            assert len(pending(fake_v20)) == 1


async def test_429_beyond_the_retries_is_rate_limited(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(3):
        async with connected(make_broker, rate_limit_retries=1) as broker:
            before = fake_v20.count("GET", "/summary")
            fake_v20.fail_next(2, status=429, path_contains="/summary", retry_after=0.1)
            with pytest.raises(RateLimited) as caught:
                await broker.account()
            assert fake_v20.count("GET", "/summary") - before == 2
            assert broker.http.rate_limited == 2
            assert caught.value.retry_after == pytest.approx(0.1)
            assert caught.value.retryable
            assert (await broker.account()).currency == "USD"  # once the venue lets us


async def test_retry_after_is_honoured(fake_v20: FakeV20, make_broker: MakeBroker) -> None:
    with trio.fail_after(3):
        async with connected(make_broker) as broker:
            fake_v20.fail_next(1, status=429, path_contains="/summary", retry_after=0.7)
            started = trio.current_time()
            await broker.account()
            waited = trio.current_time() - started
            # without Retry-After the first wait is 0.25 s +- 20 %
            assert 0.68 <= waited < 1.5, waited


@pytest.mark.parametrize("status", [500, 503])
async def test_a_5xx_is_temporarily_unavailable(
    fake_v20: FakeV20, make_broker: MakeBroker, status: int
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            before = fake_v20.count("GET", "/summary")
            fake_v20.fail_next(1, status=status, path_contains="/summary")
            with pytest.raises(TemporarilyUnavailable) as caught:
                await broker.account()
            assert not isinstance(caught.value, Disconnected)  # the venue did answer
            assert caught.value.retryable
            assert TOKEN not in texts(caught.value)
            assert fake_v20.count("GET", "/summary") - before == 1  # not retried here
            assert broker.http.rate_limited == 0


# ---------------------------------------------------------------------------
# pacing


async def test_requests_are_paced_to_requests_per_second(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(4):
        async with connected(make_broker, requests_per_second=5) as broker:
            before = fake_v20.count("GET", "/summary")
            started = trio.current_time()
            for _ in range(8):
                await broker.account()
            took = trio.current_time() - started
            # at most 5 in any second: the 6th goes a second after the 1st
            assert took >= 0.95, took
            assert fake_v20.count("GET", "/summary") - before == 8


async def test_the_default_pace_lets_a_burst_through(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            started = trio.current_time()
            for _ in range(8):
                await broker.account()
            assert trio.current_time() - started < 0.8


# ---------------------------------------------------------------------------
# live accounts


async def test_a_live_account_refuses_orders_outside_canary_and_live(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker, environment="live") as broker:
            assert broker.options.real_money
            assert broker.options.rest_url == fake_v20.url
            with pytest.raises(Unsupported, match="canary") as caught:
                await broker.place_order(market("buy", "real-money"))
            assert "live" in str(caught.value)
            assert fake_v20.count("POST", "/orders") == 0
            assert (await broker.account()).currency == "USD"  # reading is fine


async def test_a_live_account_takes_orders_when_real_orders_are_allowed(
    fake_v20: FakeV20, tmp_path: Path
) -> None:
    broker = OandaBroker(
        ComponentSetup(
            name="oanda",
            options={
                "account_id": ACCOUNT,
                "environment": "live",
                "rest_url": fake_v20.url,
                "stream_url": fake_v20.url,
            },
            credentials=Secrets(token=TOKEN),
            home=tmp_path,
            real_orders=True,
        )
    )
    with trio.fail_after(2):
        await broker.connect()
        try:
            placed = await broker.place_order(market("buy", "canary-order"))
        finally:
            await broker.close()
    assert placed.status is OrderStatus.FILLED
    assert fake_v20.count("POST", "/orders") == 1


# ---------------------------------------------------------------------------
# protection


async def test_replace_order_protection_replaces_the_order(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            placed = await broker.place_order(far_limit("protect-me"))
            guarded = await broker.replace_order_protection(placed, stop_loss=Decimal("0.5"))
            assert guarded.client_order_id == "protect-me"
            assert guarded.venue_order_id not in (None, placed.venue_order_id)
            assert guarded.request.stop_loss == Decimal("0.5")
            assert guarded.status is OrderStatus.ACCEPTED
            old = fake_v20.order(str(placed.venue_order_id))
            assert old is not None and old["state"] == "CANCELLED"
            assert old["replacedByOrderID"] == guarded.venue_order_id
            new = fake_v20.order(str(guarded.venue_order_id))
            assert new is not None and new["state"] == "PENDING"
            assert new["clientExtensions"]["id"] == "protect-me"
            assert new["price"] == "0.54000"
            assert new["stopLossOnFill"]["price"] == "0.50000"
            assert new["stopLossOnFill"]["clientExtensions"]["id"] == "protect-me.sl"

            bare = await broker.replace_order_protection(guarded, stop_loss=None)
            assert bare.venue_order_id not in (placed.venue_order_id, guarded.venue_order_id)
            assert bare.client_order_id == "protect-me" and bare.request.stop_loss is None
            newest = fake_v20.order(str(bare.venue_order_id))
            assert newest is not None and "stopLossOnFill" not in newest
            assert [o["id"] for o in pending(fake_v20)] == [bare.venue_order_id]
            (listed,) = await broker.open_orders()
            assert (listed.client_order_id, listed.venue_order_id) == (
                "protect-me",
                bare.venue_order_id,
            )
            assert listed.request.stop_loss is None
            assert fake_v20.count("PUT", "/orders/") == 2


async def test_replace_position_protection_sets_every_open_trade(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            await broker.place_order(market("buy", "leg-1"))
            await broker.place_order(market("buy", "leg-2", quantity=150))
            await broker.place_order(market("buy", "other", instrument="GBP_USD"))
            eur = [t for t in fake_v20.trades.values() if t["instrument"] == "EUR_USD"]
            assert len(eur) == 2  # v20 keeps one trade per fill

            position = await broker.replace_position_protection(
                "EUR_USD", stop_loss=Decimal("1.07")
            )
            assert position.quantity == 250 and position.stop_loss == Decimal("1.07")
            for trade in fake_v20.trades.values():
                if trade["instrument"] == "EUR_USD":
                    assert trade["stopLossOrder"]["price"] == "1.07000"
                    assert trade["stopLossOrder"]["state"] == "PENDING"
                else:
                    assert "stopLossOrder" not in trade
            listed = {p.instrument: p for p in await broker.positions()}
            assert listed["EUR_USD"].stop_loss == Decimal("1.07")
            assert listed["GBP_USD"].stop_loss is None

            position = await broker.replace_position_protection(
                "EUR_USD", take_profit=Decimal("1.2")
            )
            assert (position.stop_loss, position.take_profit) == (Decimal("1.07"), Decimal("1.2"))
            position = await broker.replace_position_protection("EUR_USD", stop_loss=None)
            assert (position.stop_loss, position.take_profit) == (None, Decimal("1.2"))
            for trade in fake_v20.trades.values():
                if trade["instrument"] == "EUR_USD":
                    assert "stopLossOrder" not in trade
                    assert trade["takeProfitOrder"]["price"] == "1.20000"
            assert fake_v20.count("PUT", "/trades/") == 6  # 3 changes x 2 trades


# ---------------------------------------------------------------------------
# orders rick did not place


async def test_foreign_orders_are_listed_under_an_oanda_client_id(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=fake_v20.url, headers=headers) as http:
            plain = await http.post(
                f"{PATH}/orders",
                json={
                    "order": {
                        "type": "LIMIT",
                        "instrument": "EUR_USD",
                        "units": "-25",
                        "price": "1.50000",
                        "timeInForce": "GTC",
                    }
                },
            )
            odd = await http.post(
                f"{PATH}/orders",
                json={
                    "order": {
                        "type": "STOP",
                        "instrument": "GBP_USD",
                        "units": "40",
                        "price": "1.40000",
                        "clientExtensions": {"id": "my order #1", "tag": "manual"},
                    }
                },
            )
        assert plain.status_code == odd.status_code == 201
        plain_id = plain.json()["orderCreateTransaction"]["id"]
        odd_id = odd.json()["orderCreateTransaction"]["id"]
        async with connected(make_broker) as broker:
            await broker.place_order(far_limit("mine"))
            listed = {o.client_order_id: o for o in await broker.open_orders()}
            assert set(listed) == {"mine", f"oanda-{plain_id}", f"oanda-{odd_id}"}
            foreign = listed[f"oanda-{plain_id}"]
            assert foreign.venue_order_id == plain_id
            assert foreign.request.side.value == "sell" and foreign.request.quantity == 25
            assert foreign.request.limit_price == Decimal("1.5")
            stop = listed[f"oanda-{odd_id}"]  # an id rick's model cannot take
            assert stop.request.stop_price == Decimal("1.4") and stop.request.tag == "manual"
            only_eur = await broker.open_orders("EUR_USD")
            assert {o.client_order_id for o in only_eur} == {"mine", f"oanda-{plain_id}"}


# ---------------------------------------------------------------------------
# fills


async def collect_fills(events: AsyncIterator[Any], count: int, into: list[Fill]) -> None:
    with trio.fail_after(1.5):
        async for event in events:
            if isinstance(event, Fill):
                into.append(event)
                if len(into) == count:
                    return


async def test_a_triggered_stop_loss_fills_under_the_protection_client_id(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            fills: list[Fill] = []
            async with broker.stream_events() as events:
                await broker.place_order(market("buy", "guarded", stop_loss=Decimal("1.08")))
                await collect_fills(events, 1, fills)
                fake_v20.set_price("EUR_USD", "1.07950", "1.07962")  # through the stop
                await collect_fills(events, 2, fills)
            entry, stop = fills
            assert entry.client_order_id == "guarded" and entry.side.value == "buy"
            assert stop.client_order_id == "guarded.sl"
            assert (stop.side.value, stop.quantity) == ("sell", Decimal(100))
            assert stop.price == Decimal("1.07950")  # a sell fills at the bid
            tx = next(t for t in fake_v20.transactions if t["id"] == stop.fill_id)
            assert (tx["type"], tx["reason"]) == ("ORDER_FILL", "STOP_LOSS_ORDER")
            assert await broker.positions() == []


async def test_fills_since_lists_the_streamed_fills_oldest_first(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            since = utc_now()
            streamed: list[Fill] = []
            async with broker.stream_events() as events:
                for side, cid in (("buy", "f-1"), ("sell", "f-2"), ("buy", "f-3")):
                    await broker.place_order(market(side, cid))
                    await collect_fills(events, len(streamed) + 1, streamed)
            listed = await broker.fills(since)
            assert [f.fill_id for f in listed] == [f.fill_id for f in streamed]
            assert [f.client_order_id for f in listed] == ["f-1", "f-2", "f-3"]
            assert [int(f.fill_id) for f in listed] == sorted(int(f.fill_id) for f in listed)
            assert [f.time for f in listed] == sorted(f.time for f in listed)
            for mine, again in zip(streamed, listed, strict=True):
                assert (mine.price, mine.quantity, mine.side) == (
                    again.price,
                    again.quantity,
                    again.side,
                )
            later = await broker.fills(listed[1].time)
            assert [f.client_order_id for f in later] == ["f-2", "f-3"]


async def test_fills_since_a_time_the_venue_has_not_reached_is_empty(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            await broker.place_order(market("buy", "before-future"))
            assert await broker.fills(utc_now() + timedelta(minutes=5)) == []
            # v20 refuses a range from the future: the plugin asked from before now
            (target,) = [t for m, t in fake_v20.requests if t.startswith(f"{PATH}/transactions?")]
            assert "from=" in target and "to=" not in target


async def test_get_order_of_a_filled_order_carries_its_fill_price(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            _, ask = fake_v20.price("EUR_USD")
            placed = await broker.place_order(market("buy", "filled-one", quantity=300))
        # a broker that did not place it (nothing cached) finds it all the same
        async with connected(make_broker) as fresh:
            found = await fresh.get_order("filled-one")
        assert found.status is OrderStatus.FILLED
        assert found.filled_quantity == 300
        assert found.average_fill_price == ask == placed.average_fill_price
        assert found.venue_order_id == placed.venue_order_id
        assert found.updated_at >= found.created_at
        assert isinstance(found, Order) and not isinstance(found, BrokerError)


async def test_get_order_of_a_market_order_cancelled_at_once_is_rejected_with_the_reason(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    """A lost answer looked up later says what place_order would have raised."""
    broker = make_broker()
    await broker.connect()
    try:
        fake_v20.cancel_next_order("MARKET_HALTED")
        request = OrderRequest(
            instrument="EUR_USD", side="buy", quantity=Decimal(100), time_in_force="fok"
        )
        with trio.fail_after(5), pytest.raises(OrderRejected):
            await broker.place_order(request)
        with trio.fail_after(5):
            found = await broker.get_order(request.client_order_id)
        assert found.status is OrderStatus.REJECTED
        assert found.reject_reason is not None and "MARKET_HALTED" in found.reject_reason
    finally:
        await broker.close()


async def test_positions_raises_a_broker_error_not_a_group(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    broker = make_broker()
    await broker.connect()
    try:
        fake_v20.fail_next(1, status=503, path_contains="/openTrades")
        with trio.fail_after(5), pytest.raises(TemporarilyUnavailable):
            await broker.positions()
    finally:
        await broker.close()
