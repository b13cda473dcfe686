"""The engine's market data: feeds supervised end to end against the paper
broker told to stall or drop its streams, stale prices refusing market
orders, the audit log and notifiers hearing of outages, reconciliation after
the event stream comes back, and best quotes across two brokers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from rick_core.components import ComponentSetup
from rick_core.engine.risk import ReasonCode, RiskDenied
from rick_core.engine.runtime import Engine
from rick_core.model import OrderStatus
from rick_core.notify import Level, Notification, Notifier
from rick_core.paper.broker import PaperBroker
from rick_core.security.audit import AuditLog, AuditTrail
from rick_core.security.records import EventType
from rick_core.store import Store
from rick_core.strategy import Strategy, StrategySetup


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "rick.db") as s:
        yield s


def paper(tmp_path: Path, name: str = "paper", **options: Any) -> PaperBroker:
    options.setdefault("persist", False)
    options.setdefault("seed", 7)
    options.setdefault("instruments", ["EUR_USD"])
    return PaperBroker(ComponentSetup(name=name, options=options, home=tmp_path))


def stored_status(store: Store, client_order_id: str) -> OrderStatus:
    order = store.get_order(client_order_id)
    assert order is not None
    return order.status


class Idle(Strategy):
    """Subscribes and waits; the test acts through its context."""


def idle(broker: str = "paper") -> Idle:
    return Idle(StrategySetup(name="idle", broker=broker, instruments=("EUR_USD",)))


class Collecting(Notifier):
    name = "collect"

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> None:
        self.sent.append(notification)


async def test_a_stale_price_refuses_market_orders_until_a_fresh_quote(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    broker = paper(tmp_path, quote_silence=60)
    engine = Engine(
        store=store,
        brokers={"paper": broker},
        strategies=[(idle(), "paper", ("EUR_USD",))],
        stale_after=5,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await engine.started.wait()
        ctx = engine.runners[0]
        await trio.sleep(1)
        assert (await ctx.buy("EUR_USD", 1000)).status is OrderStatus.FILLED

        broker.stall_streams(30, kind="quotes")
        await trio.sleep(8)
        assert ctx.quote_age("EUR_USD") > 5
        with pytest.raises(RiskDenied) as refused:
            await ctx.buy("EUR_USD", 1000)
        assert refused.value.code is ReasonCode.STALE_PRICE
        assert re.search(r"EUR_USD from paper is 8\.\d s old \(stale after 5 s", str(refused.value))
        stored = store.orders()[-1]
        assert stored.status is OrderStatus.REJECTED
        assert stored.reject_reason is not None and "stale_price" in stored.reject_reason
        # A limit order names its price: it is not held to the quote's age.
        limit = await ctx.buy("EUR_USD", 1000, limit=Decimal("0.5"))
        assert limit.status is OrderStatus.ACCEPTED

        await trio.sleep(25)  # the stall is over; quotes flow again
        assert ctx.quote_age("EUR_USD") < 5
        assert (await ctx.buy("EUR_USD", 1000)).status is OrderStatus.FILLED
        engine.request_stop()


async def test_a_silent_feed_is_reconnected_audited_and_notified_once_per_outage(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    broker = paper(tmp_path, quote_silence=10)
    notifier = Collecting()
    audit_log = AuditLog.open(tmp_path / "audit.db")
    engine = Engine(
        store=store,
        brokers={"paper": broker},
        strategies=[(idle(), "paper", ("EUR_USD",))],
        audit=AuditTrail(audit_log),
        notifiers=[notifier],
    )
    feed = engine.services["paper"].feed
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await engine.started.wait()
        await trio.sleep(1)
        received = feed.received
        opened = feed.supervisor.reconnects
        broker.stall_streams(45, kind="quotes")  # longer than several silences
        await trio.sleep(60)
        assert feed.supervisor.reconnects > opened  # closed and subscribed again
        assert feed.received > received  # and quotes flow after the stall
        assert feed.subscribed == ("EUR_USD",)
        engine.request_stop()
    with AuditLog.open(tmp_path / "audit.db") as log:
        records = [r for r in log.query() if r.type.value.startswith("FEED_")]
    kinds = [r.type for r in records]
    # Once per outage, though the watchdog tripped on every reopened (still stalled) stream.
    assert kinds == [
        EventType.FEED_STALE,
        EventType.FEED_RECONNECTED,
        EventType.FEED_RECOVERED,
    ], kinds
    assert records[0].details["feed"] == "paper quotes"
    assert "no message" in records[0].details["reason"]
    assert records[2].details["outage_seconds"] >= 40
    titles = [(n.title, n.level) for n in notifier.sent]
    assert titles == [
        ("paper quotes: stale", Level.WARNING),
        ("paper quotes: recovered", Level.INFO),
    ]


async def test_after_the_event_stream_drops_the_engine_reconciles_what_it_missed(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    broker = paper(tmp_path)
    audit_log = AuditLog.open(tmp_path / "audit.db")
    engine = Engine(
        store=store,
        brokers={"paper": broker},
        strategies=[(idle(), "paper", ("EUR_USD",))],
        audit=AuditTrail(audit_log),
    )
    service = engine.services["paper"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await engine.started.wait()
        ctx = engine.runners[0]
        resting = await ctx.buy("EUR_USD", 1000, limit=Decimal("0.5"))
        assert resting.status is OrderStatus.ACCEPTED
        first = service.reconciliation

        broker.drop_streams(kind="events")
        await trio.sleep(0.1)  # the stream is down; the supervisor waits out its backoff
        # The venue cancels the order meanwhile (an expiry, a desk): nobody hears of it.
        await broker.cancel_order(resting)
        assert stored_status(store, resting.client_order_id) is OrderStatus.ACCEPTED
        await trio.sleep(5)
        assert service.event_feed.reconnects >= 1
        assert service.reconciliation is not first  # reconciled again after the gap
        assert stored_status(store, resting.client_order_id) is OrderStatus.CANCELED
        assert not ctx.open_orders()
        engine.request_stop()
    with AuditLog.open(tmp_path / "audit.db") as log:
        kinds = [r.type for r in log.query()]
    assert EventType.FEED_DISCONNECTED in kinds and EventType.FEED_RECOVERED not in kinds[:2]
    assert kinds.count(EventType.BROKER_RECONCILED) == 2


class WatchesBest(Strategy):
    async def on_start(self) -> None:
        await self.ctx.watch_best("EUR_USD")


async def test_a_strategy_reads_the_best_quote_across_two_brokers(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    one = paper(tmp_path, "one", seed=1)
    two = paper(tmp_path, "two", seed=2)
    strategy = WatchesBest(StrategySetup(name="w", broker="one", instruments=("EUR_USD",)))
    engine = Engine(
        store=store,
        brokers={"one": one, "two": two},
        strategies=[(strategy, "one", ("EUR_USD",))],
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await engine.started.wait()
        await trio.sleep(2)
        # Broker two has no strategy of its own, yet quotes EUR_USD for the best quote.
        assert engine.quotes.feeds["two"].subscribed == ("EUR_USD",)
        best = strategy.ctx.best_quote("EUR_USD")
        assert best is not None and best.sources == ("one", "two")
        quotes = [engine.quotes.last(name, "EUR_USD") for name in ("one", "two")]
        assert best.bid == max(q.bid for q in quotes if q is not None)
        assert best.ask == min(q.ask for q in quotes if q is not None)
        engine.request_stop()
    # The strategy's hold is released when it stops.
    assert engine.quotes.feeds["two"].holders("EUR_USD") == 0
