"""Reconciliation on connect: rick's store made to agree with the venue (the
paper broker, persisted between "runs"), mismatches reported and audited, and
no order to a broker before its reconciliation succeeded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from rick_core.broker import NotFound, TemporarilyUnavailable
from rick_core.components import ComponentSetup
from rick_core.engine.oms import OrderManager, owner_key
from rick_core.engine.reconcile import reconcile
from rick_core.engine.runtime import Engine
from rick_core.model import Fill, Order, OrderRequest, OrderStatus, utc_now
from rick_core.paper.broker import PaperBroker
from rick_core.reports import net_positions
from rick_core.security.records import EventType, Severity
from rick_core.store import Store
from rick_core.strategy import TradingHalted


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "rick.db") as s:
        yield s


class Counting(PaperBroker):
    """A persisting paper broker that counts the orders sent to it."""

    placed: list[str]

    async def place_order(self, request: OrderRequest) -> Order:
        self.placed.append(request.client_order_id)
        return await super().place_order(request)


def venue(home: Path, **options: Any) -> Counting:
    options.setdefault("seed", 7)
    options.setdefault("instruments", ["EUR_USD", "GBP_USD"])
    broker = Counting(ComponentSetup(name="paper", options=options, home=home))
    broker.placed = []
    return broker


def buy(quantity: int = 1000, **kw: Any) -> OrderRequest:
    if "limit_price" in kw:
        kw.setdefault("type", "limit")
    return OrderRequest(instrument="EUR_USD", side="buy", quantity=quantity, **kw)


async def earlier_run(home: Path, store: Store) -> dict[str, str]:
    """What a run killed mid-flow leaves: orders the venue has but the store shows
    as new, an order stored but never sent, one the venue has and rick never
    recorded, and a fill rick never heard of."""
    broker = venue(home)
    await broker.connect()
    quote = await broker.quote("EUR_USD")
    resting = buy(limit_price=(quote.bid * Decimal("0.98")).quantize(Decimal("0.00001")))
    filled = buy()
    never_sent = buy()
    external = OrderRequest(
        instrument="GBP_USD",
        side="sell",
        quantity=2000,
        type="limit",
        limit_price=Decimal("9.5"),
    )
    for request in (resting, filled, never_sent):
        store.record(new_orders=[(Order(request=request, broker="paper"), "s")])
    await broker.place_order(resting)
    await broker.place_order(filled)
    await broker.place_order(external)
    await broker.close()  # the venue keeps its state; the store never heard back
    return {
        "resting": resting.client_order_id,
        "filled": filled.client_order_id,
        "never_sent": never_sent.client_order_id,
        "external": external.client_order_id,
    }


async def test_orders_of_an_earlier_run_are_resolved_never_resent(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    ids = await earlier_run(tmp_path, store)
    broker = venue(tmp_path)
    engine = Engine(store=store, brokers={"paper": broker}, strategies=[])
    await engine.run(duration=1)

    assert broker.placed == [], "reconciliation never sends an order"
    status = {o.client_order_id: o for o in store.orders()}
    assert status[ids["resting"]].status is OrderStatus.ACCEPTED
    assert status[ids["filled"]].status is OrderStatus.FILLED
    assert status[ids["never_sent"]].status is OrderStatus.REJECTED
    assert "never received" in (status[ids["never_sent"]].reject_reason or "")
    # The fill rick missed is stored, and the position it makes agrees with the venue.
    (fill,) = store.fills()
    assert fill.client_order_id == ids["filled"]
    # The order rick never placed is recorded, without a strategy.
    assert status[ids["external"]].status is OrderStatus.ACCEPTED
    assert store.strategy_of(ids["external"]) is None
    report = engine.services["paper"].reconciliation
    assert report is not None
    assert set(report.resolved) == {ids["resting"], ids["filled"], ids["never_sent"]}
    assert report.external == (ids["external"],)
    assert report.missed_fills == 1
    assert [m.kind for m in report.mismatches] == ["external_order"]
    # Orders adopted from the earlier run are working orders of this run too.
    working = {o.client_order_id for o in engine.oms.all_working()}
    assert working == {ids["resting"], ids["external"]}


async def test_mismatches_are_reported_and_audited(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    ids = await earlier_run(tmp_path, store)
    # A working order the venue never heard of (not a new/unknown one), and a
    # stored fill the venue does not have: both are mismatches.
    ghost = Order(request=buy(limit_price=Decimal("0.5")), broker="paper", status="accepted")
    store.record(new_orders=[(ghost, "s")])
    store.record(
        fills=[
            Fill(
                fill_id="lost-1",
                client_order_id="elsewhere",
                instrument="GBP_USD",
                side="buy",
                quantity=500,
                price=Decimal("1.25"),
                time=utc_now(),
                broker="paper",
            )
        ]
    )
    broker = venue(tmp_path)
    await broker.connect()
    audited: list[tuple[EventType, dict[str, Any], Severity]] = []
    oms = OrderManager(store, {"paper": broker}, lambda owner, event: None)
    result = await reconcile("paper", broker, oms, store, lambda *record: audited.append(record))
    await broker.close()

    kinds = sorted(m.kind for m in result.mismatches)
    assert kinds == ["external_order", "position", "unknown_to_venue"]
    (position,) = [m for m in result.mismatches if m.kind == "position"]
    assert position.instrument == "GBP_USD" and "500" in position.detail
    stored_ghost = store.get_order(ghost.client_order_id)
    assert stored_ghost is not None and stored_ghost.status is OrderStatus.CANCELED
    mismatch_records = [r for r in audited if r[0] is EventType.RECONCILIATION_MISMATCH]
    assert len(mismatch_records) == 3
    assert all(r[2] is Severity.WARNING for r in mismatch_records)
    assert {r[1]["kind"] for r in mismatch_records} == set(kinds)
    summary = [r for r in audited if r[0] is EventType.BROKER_RECONCILED]
    assert summary and summary[0][1]["external_orders"] == [ids["external"]]


async def test_reconciling_twice_changes_nothing(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    await earlier_run(tmp_path, store)
    broker = venue(tmp_path)
    await broker.connect()
    oms = OrderManager(store, {"paper": broker}, lambda owner, event: None)
    await reconcile("paper", broker, oms, store)
    before = (store.orders(), store.fills())
    again = await reconcile("paper", broker, oms, store)
    await broker.close()
    assert (store.orders(), store.fills()) == before
    assert again.missed_fills == 0 and again.external == () and again.resolved == ()
    assert again.mismatches == ()


class Flaky(Counting):
    """A venue whose order listing fails the first ``failures`` times."""

    failures = 3

    async def open_orders(self, instrument: str | None = None) -> list[Order]:
        if self.failures:
            self.failures -= 1
            raise TemporarilyUnavailable("order listing down", broker=self.name)
        return await super().open_orders(instrument)


async def test_no_order_reaches_a_broker_until_reconciliation_succeeds(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    broker = Flaky(ComponentSetup(name="paper", options={"persist": False}, home=tmp_path))
    broker.placed = []
    engine = Engine(store=store, brokers={"paper": broker}, strategies=[])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await engine.started.wait()
        assert "reconciliation with the venue failed" in (engine.oms.blocked("paper") or "")
        with pytest.raises(TradingHalted, match="no orders to paper yet"):
            await engine.oms.submit("s", "paper", buy())
        assert broker.placed == [] and store.orders() == []
        await trio.sleep(30)  # retried with backoff until the listing works
        assert engine.oms.blocked("paper") is None
        order = await engine.oms.submit("s", "paper", buy())
        assert order.status is OrderStatus.FILLED
        engine.request_stop("test")


async def test_a_venue_that_never_got_the_order_rejects_it_without_resending(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    request = buy()
    store.record(new_orders=[(Order(request=request, broker="paper"), "s")])
    broker = venue(tmp_path, persist=False)
    await broker.connect()
    with pytest.raises(NotFound):
        await broker.get_order(request.client_order_id)
    oms = OrderManager(store, {"paper": broker}, lambda owner, event: None)
    result = await reconcile("paper", broker, oms, store)
    await broker.close()
    assert result.resolved == (request.client_order_id,)
    stored = store.get_order(request.client_order_id)
    assert stored is not None and stored.status is OrderStatus.REJECTED
    assert broker.placed == []


# ---------------------------------------------------------------------------
# the crash test

CHILD = Path(__file__).with_name("crash_child.py")


def _child(home: Path, seconds: float, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(home), str(seconds), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def test_sigkill_mid_flow_then_restart_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    child = _child(tmp_path, 120)
    assert child.stdout is not None
    in_flight = 0
    deadline = time.monotonic() + 90
    try:
        # Trade for a while, then kill while the venue has an order whose
        # answer rick has not recorded yet.
        for line in child.stdout:
            if line.startswith("INFLIGHT"):
                in_flight += 1
                if in_flight >= 40:
                    os.kill(child.pid, signal.SIGKILL)
                    break
            assert time.monotonic() < deadline, "the child did not trade fast enough"
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    with Store.open(tmp_path / "rick.db") as store:
        left = [o for o in store.orders() if o.status.value in ("new", "submitted", "unknown")]
        orders_before = {o.client_order_id for o in store.orders()}
    assert left, "the kill should leave at least the order in flight unresolved"

    restart = _child(tmp_path, 3, "--no-strategy")
    out, _ = restart.communicate(timeout=60)
    assert restart.returncode == 0 and "STOPPED" in out

    async def venue_view() -> tuple[dict[str, Decimal], list[Fill], dict[str, Order | None]]:
        broker = venue(tmp_path, instruments=["EUR_USD", "GBP_USD"], seed=11)
        await broker.connect()
        try:
            positions = {p.instrument: p.quantity for p in await broker.positions()}
            fills = await broker.fills(datetime(2000, 1, 1, tzinfo=UTC))
            states: dict[str, Order | None] = {}
            for coid in orders_before:
                try:
                    states[coid] = await broker.get_order(coid)
                except NotFound:
                    states[coid] = None
            return positions, fills, states
        finally:
            await broker.close()

    positions, venue_fills, states = trio.run(venue_view)
    with Store.open(tmp_path / "rick.db") as store:
        orders = {o.client_order_id: o for o in store.orders()}
        fills = store.fills()
    # No order lost: every order the venue has is in the store.
    assert orders_before <= set(orders)
    for fill in venue_fills:
        assert owner_key(fill.client_order_id) in orders or fill.client_order_id in orders
    # None duplicated: one venue order per client order id, one stored fill per venue fill.
    assert sorted(f.fill_id for f in fills) == sorted(f.fill_id for f in venue_fills)
    # The unknown orders are resolved, each to what the venue says.
    for order in left:
        after = orders[order.client_order_id]
        assert after.status.is_final or after.status is OrderStatus.ACCEPTED
        at_venue = states[order.client_order_id]
        if at_venue is None:
            assert after.status is OrderStatus.REJECTED
        else:
            assert after.status is at_venue.status
            assert after.filled_quantity == at_venue.filled_quantity
    assert not [o for o in orders.values() if o.status.value in ("new", "submitted", "unknown")]
    # Positions equal the sum of the stored fills.
    ours = {p.instrument: p.quantity for p in net_positions(fills) if not p.is_flat}
    assert ours == positions


async def test_a_ghost_runs_records_are_not_held_against_the_real_venue(
    tmp_path: Path, store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    # A ghost run simulated a fill and left a simulated order working, stored
    # under the real broker's name; the real venue never saw either.
    simulated = Order(
        request=buy(limit_price=Decimal("0.5")),
        broker="paper",
        status="accepted",
        venue_order_id="ghost-7",
    )
    store.record(new_orders=[(simulated, "s")])
    store.record(
        fills=[
            Fill(
                fill_id="ghost-fill-1",
                client_order_id="rk-ghost",
                instrument="EUR_USD",
                side="buy",
                quantity=1000,
                price=Decimal("1.1"),
                time=utc_now(),
                broker="paper",
            )
        ]
    )
    broker = venue(tmp_path, persist=False)
    await broker.connect()
    oms = OrderManager(store, {"paper": broker}, lambda owner, event: None)
    result = await reconcile("paper", broker, oms, store)
    await broker.close()
    assert result.mismatches == ()
    kept = store.get_order(simulated.client_order_id)
    assert kept is not None and kept.status is OrderStatus.ACCEPTED
