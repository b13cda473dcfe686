"""OandaBroker's two v20 streams against the fake over loopback: the pricing
stream and the transactions stream, their heartbeats, and what supervision
(rick_core.feeds.FeedSupervisor) does when the fake stalls or drops them."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import pytest
import trio
from conftest import MakeBroker

from rick_core.broker import Disconnected, Heartbeat, NotFound
from rick_core.feeds import Backoff, FeedEvent, FeedEventKind, FeedSupervisor
from rick_core.model import Fill, Order, OrderRequest, OrderStatus, Quote
from rick_oanda.broker import OandaBroker
from rick_oanda.fake import FakeV20

FAST = Backoff(initial=0.05, maximum=0.1, factor=2.0, jitter=0.0)
"""Reopen a failed stream at once (the default waits 0.5 s)."""

SILENCE = 0.6
"""The watchdogs' silence in these tests: three of the fake's 0.2 s heartbeats."""


@asynccontextmanager
async def connected(make_broker: MakeBroker, **options: Any) -> AsyncIterator[OandaBroker]:
    broker = make_broker(**options)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()


async def eventually(condition: Callable[[], bool], what: str, within: float = 1.5) -> None:
    try:
        with trio.fail_after(within):
            for _ in itertools.count():
                if condition():
                    return
                await trio.sleep(0.01)
    except trio.TooSlowError:
        pytest.fail(f"waited {within} s for {what}")


def market(side: str, cid: str, quantity: int = 100) -> OrderRequest:
    return OrderRequest(
        instrument="EUR_USD",
        side=side,
        quantity=Decimal(quantity),
        time_in_force="fok",
        client_order_id=cid,
    )


async def read_all(stream: AsyncIterator[Any], into: list[Any]) -> None:
    """Read ``stream`` into ``into`` until it ends (or raises)."""
    async for item in stream:
        into.append(item)


def stream_targets(fake: FakeV20, kind: str) -> list[str]:
    return [t for m, t in fake.requests if m == "GET" and f"/{kind}/stream" in t]


class Recorder:
    """What a supervised feed delivered and reported, with trio times."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.events: list[FeedEvent] = []
        self.at: dict[FeedEventKind, tuple[float, int]] = {}
        """Time and item count at the first event of each kind."""

    def deliver(self, item: Any) -> None:
        self.items.append(item)

    def on_event(self, event: FeedEvent) -> None:
        self.events.append(event)
        self.at.setdefault(event.kind, (trio.current_time(), len(self.items)))

    def kinds(self) -> list[FeedEventKind]:
        return [e.kind for e in self.events]

    def after(self, kind: FeedEventKind) -> list[Any]:
        return self.items[self.at[kind][1] :] if kind in self.at else []


# ---------------------------------------------------------------------------
# pricing


async def test_pricing_stream_delivers_quotes_of_the_instruments_and_heartbeats(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(3):
        async with connected(make_broker) as broker:
            quotes: list[Quote] = []
            beats = 0
            async with broker.stream_quotes(["EUR_USD", "USD_JPY"]) as stream:
                fake_v20.set_price("USD_JPY", "151.111", "151.125")
                async for item in stream:
                    if isinstance(item, Heartbeat):
                        beats += 1
                    else:
                        assert isinstance(item, Quote)
                        quotes.append(item)
                    seen = {q.instrument for q in quotes}
                    if beats >= 2 and seen == {"EUR_USD", "USD_JPY"} and len(quotes) >= 6:
                        break
            assert {q.instrument for q in quotes} == {"EUR_USD", "USD_JPY"}
            assert all(q.source == "oanda" and 0 < q.bid <= q.ask for q in quotes)
            # the price set at the fake came (the random walk may have moved it a
            # step or two since: the fake streams the newest price of each instrument)
            assert any(
                q.instrument == "USD_JPY"
                and abs(q.bid - Decimal("151.111")) <= Decimal("0.01")
                and q.ask - q.bid == Decimal("0.014")
                for q in quotes
            ), "the price the fake was set to never came"
            assert all(q.bid < Decimal(2) for q in quotes if q.instrument == "EUR_USD")
            assert all(q.bid_size == q.ask_size == Decimal(10_000_000) for q in quotes)
            assert broker.prices.dropped == 0
            (target,) = stream_targets(fake_v20, "pricing")
            assert "instruments=EUR_USD,USD_JPY" in target
            assert "snapshot=true" in target


async def test_pricing_stream_of_an_unknown_instrument_is_refused_before_a_request(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            with pytest.raises(NotFound, match="ZZZ_QQQ"):
                async with broker.stream_quotes(["EUR_USD", "ZZZ_QQQ"]):
                    pass  # pragma: no cover
    assert stream_targets(fake_v20, "pricing") == []


async def test_heartbeat_silence_reconnects_and_resubscribes(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(4):
        async with connected(make_broker, quote_silence=SILENCE) as broker:
            record = Recorder()
            assert broker.quote_silence == SILENCE
            supervisor: FeedSupervisor[Quote] = FeedSupervisor(
                "oanda quotes",
                broker.stream_quotes,
                silence=broker.quote_silence,
                backoff=FAST,
                on_event=record.on_event,
            )
            supervisor.set_keys(["GBP_USD", "EUR_USD"])
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.run, record.deliver)
                await eventually(lambda: len(record.items) >= 3, "the first quotes")
                fake_v20.stall_streams("pricing")
                stalled_at = trio.current_time()
                await eventually(
                    lambda: FeedEventKind.RECONNECTED in record.at,
                    "the silent stream to be reopened",
                )
                await eventually(
                    lambda: (
                        {q.instrument for q in record.after(FeedEventKind.RECONNECTED)}
                        == {"EUR_USD", "GBP_USD"}
                    ),
                    "prices of both instruments after the reconnect",
                )
                nursery.cancel_scope.cancel()
            assert record.kinds()[:2] == [FeedEventKind.STALE, FeedEventKind.RECONNECTED]
            silent_for = record.at[FeedEventKind.STALE][0] - stalled_at
            # silence counts from the last message, at most one heartbeat before the stall
            assert SILENCE - 0.25 <= silent_for <= SILENCE + 0.5, silent_for
            assert fake_v20.stream_connections["pricing"] == 2
            targets = stream_targets(fake_v20, "pricing")
            assert len(targets) == 2
            assert all("instruments=EUR_USD,GBP_USD" in t for t in targets), targets
            assert supervisor.reconnects == 1
            await eventually(
                lambda: fake_v20.open_streams("pricing") == 0, "both connections to close"
            )


async def test_a_stream_dropped_mid_line_raises_disconnected(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            async with broker.stream_quotes(["EUR_USD"]) as stream:
                items = [await anext(stream) for _ in range(3)]
                fake_v20.drop_streams("pricing", mid_line=True)
                with pytest.raises(Disconnected) as caught:
                    await read_all(stream, items)
            assert caught.value.broker == "oanda"
            assert "pricing stream" in str(caught.value)
            quotes = [i for i in items if isinstance(i, Quote)]
            assert all(q.instrument == "EUR_USD" for q in quotes)
            # the half line never reached the parser: every price parsed was a whole line
            assert broker.prices.dropped == 0
            assert broker.prices.parsed == len(quotes)
            # the broker itself is fine
            assert (await broker.quote("EUR_USD")).instrument == "EUR_USD"


async def test_prices_keep_flowing_under_supervision_after_a_drop(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(3):
        async with connected(make_broker) as broker:
            record = Recorder()
            supervisor: FeedSupervisor[Quote] = FeedSupervisor(
                "oanda quotes",
                broker.stream_quotes,
                silence=broker.quote_silence,
                backoff=FAST,
                on_event=record.on_event,
            )
            supervisor.set_keys(["EUR_USD"])
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.run, record.deliver)
                await eventually(lambda: len(record.items) >= 3, "the first quotes")
                fake_v20.drop_streams("pricing", mid_line=True)
                await eventually(
                    lambda: len(record.after(FeedEventKind.RECONNECTED)) >= 3,
                    "quotes after the reconnect",
                )
                nursery.cancel_scope.cancel()
            assert record.kinds()[:2] == [FeedEventKind.DISCONNECTED, FeedEventKind.RECONNECTED]
            assert "pricing stream" in record.events[0].reason
            assert all(isinstance(q, Quote) and q.instrument == "EUR_USD" for q in record.items)
            assert broker.prices.dropped == 0
            assert fake_v20.stream_connections["pricing"] == 2


# ---------------------------------------------------------------------------
# transactions


async def until_filled(
    events: AsyncIterator[Any], cids: set[str], into: list[Any], within: float = 1.5
) -> None:
    """Read ``events`` into ``into`` until every order in ``cids`` came FILLED."""
    done: set[str] = set()
    with trio.fail_after(within):
        async for event in events:
            into.append(event)
            if isinstance(event, Order) and event.status is OrderStatus.FILLED:
                done.add(event.client_order_id)
                if cids <= done:
                    return
    pytest.fail(f"the events stream ended before {sorted(cids - done)} filled")


def fills_of(events: list[Any]) -> list[Fill]:
    return [e for e in events if isinstance(e, Fill)]


async def test_transactions_stream_delivers_fill_and_filled_order(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            got: list[Any] = []
            async with broker.stream_events() as events:
                placed = await broker.place_order(market("buy", "stream-fill"))
                await until_filled(events, {"stream-fill"}, got)
            (fill,) = fills_of(got)
            assert fill.client_order_id == "stream-fill"
            assert fill.quantity == 100 and fill.side.value == "buy"
            assert fill.venue_order_id == placed.venue_order_id
            tx = next(t for t in fake_v20.transactions if t["id"] == fill.fill_id)
            assert tx["type"] == "ORDER_FILL"  # the fill id is the transaction id
            assert fill.price == Decimal(tx["fullVWAP"]) == placed.average_fill_price
            filled = [e for e in got if isinstance(e, Order) and e.status is OrderStatus.FILLED]
            assert filled[-1].filled_quantity == 100
            assert filled[-1].venue_order_id == placed.venue_order_id
            assert got.index(fill) < got.index(filled[-1])


async def test_transactions_stream_reopened_replays_what_it_missed_once(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(3):
        async with connected(make_broker) as broker:
            first: list[Any] = []
            async with broker.stream_events() as events:
                await broker.place_order(market("buy", "before-drop"))
                await until_filled(events, {"before-drop"}, first)
                fake_v20.drop_streams("transactions")
                with pytest.raises(Disconnected, match="transactions stream"):
                    await read_all(events, first)
            assert fake_v20.count("GET", "/transactions/sinceid") == 1  # at the first open

            # while no stream is open
            await broker.place_order(market("sell", "while-down"))
            replayed = broker.replayed

            second: list[Any] = []
            async with broker.stream_events() as events:
                # the fake streams this one's transactions on the new connection
                # *and* sinceid returns them: both overlap
                await broker.place_order(market("buy", "at-reopen"))
                await until_filled(events, {"while-down", "at-reopen"}, second)
                # until the next heartbeat: the stream's copies are not delivered again
                with trio.fail_after(1):
                    async for event in events:
                        second.append(event)
                        if isinstance(event, Heartbeat):
                            break
            assert fake_v20.count("GET", "/transactions/sinceid") == 2
            assert broker.replayed > replayed
            # what happened while down came first: replayed before any line of the stream
            down = next(f for f in fills_of(second) if f.client_order_id == "while-down")
            assert not any(isinstance(e, Heartbeat) for e in second[: second.index(down)])
            fills = fills_of(first) + fills_of(second)
            ids = [f.fill_id for f in fills]
            assert len(ids) == len(set(ids)), f"a fill was delivered twice: {ids}"
            assert sorted(f.client_order_id for f in fills) == [
                "at-reopen",
                "before-drop",
                "while-down",
            ]
            fake_fills = [t["id"] for t in fake_v20.transactions if t["type"] == "ORDER_FILL"]
            assert sorted(ids, key=int) == fake_fills


async def test_a_stalled_transactions_stream_is_judged_silent(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(3):
        async with connected(make_broker, event_silence=SILENCE) as broker:
            record = Recorder()
            supervisor: FeedSupervisor[Any] = FeedSupervisor(
                "oanda events",
                lambda keys: broker.stream_events(),
                silence=broker.event_silence,
                backoff=FAST,
                on_event=record.on_event,
                keyed=False,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.run, record.deliver)
                await trio.sleep(0.3)  # heartbeats keep it alive meanwhile
                assert record.events == []
                fake_v20.stall_streams("transactions")
                stalled_at = trio.current_time()
                await broker.place_order(market("buy", "during-stall"))
                await eventually(
                    lambda: any(
                        isinstance(e, Order)
                        and e.client_order_id == "during-stall"
                        and e.status is OrderStatus.FILLED
                        for e in record.after(FeedEventKind.RECONNECTED)
                    ),
                    "the stalled stream's fill after the reconnect",
                )
                nursery.cancel_scope.cancel()
            assert record.kinds()[:2] == [FeedEventKind.STALE, FeedEventKind.RECONNECTED]
            silent_for = record.at[FeedEventKind.STALE][0] - stalled_at
            assert SILENCE - 0.25 <= silent_for <= SILENCE + 0.5, silent_for
            assert fake_v20.stream_connections["transactions"] == 2
            ids = [f.fill_id for f in fills_of(record.items)]
            assert len(ids) == 1


def lose_queued_transactions(fake: FakeV20) -> int:
    """Make the open transactions streams lose what they have not sent yet, as a
    connection that silently dropped data would; returns how many were lost.

    (The fake has no control for this; its streams' outboxes are reached directly.)
    """
    lost = 0
    for stream in fake._streams:
        if stream.kind == "transactions":
            lost += len(stream.outbox)
            stream.outbox.clear()
    return lost


async def test_a_heartbeat_ahead_of_what_was_delivered_catches_up(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            got: list[Any] = []
            async with broker.stream_events() as events:
                assert isinstance(await anext(events), Heartbeat)  # open, replayed nothing
                assert fake_v20.count("GET", "/transactions/sinceid") == 1
                fake_v20.stall_streams("transactions")
                placed = await broker.place_order(market("buy", "unseen"))
                assert lose_queued_transactions(fake_v20) >= 2  # create and fill
                fake_v20.resume_streams("transactions")
                await until_filled(events, {"unseen"}, got)
                # the catch-up came from the heartbeat: it precedes the heartbeat
                assert not any(isinstance(e, Heartbeat) for e in got)
                assert isinstance(await anext(events), Heartbeat)
            assert fake_v20.count("GET", "/transactions/sinceid") == 2
            (fill,) = fills_of(got)
            assert fill.client_order_id == "unseen"
            assert fill.venue_order_id == placed.venue_order_id
            assert broker.delivered == int(fake_v20.last_transaction_id)


async def test_heartbeats_at_the_delivered_transaction_fetch_nothing(
    fake_v20: FakeV20, make_broker: MakeBroker
) -> None:
    with trio.fail_after(2):
        async with connected(make_broker) as broker:
            async with broker.stream_events() as events:
                beats = 0
                while beats < 3:
                    beats += isinstance(await anext(events), Heartbeat)
            assert fake_v20.count("GET", "/transactions/sinceid") == 1
            assert broker.delivered == int(fake_v20.last_transaction_id)
