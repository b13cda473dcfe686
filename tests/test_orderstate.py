"""The order state machine (rick_core.orderstate) as properties.

- Whatever a venue reports, in whatever order, the moves applied are the ones
  the machine allows, a final state never changes and fills never shrink.
- A valid order life, its venue reports delivered in any order and repeated,
  with rick's own marks (unknown, pending cancel, pending modify) where rick
  would make them, ends where the life ended: by :func:`judge` alone, and
  through a real :class:`OrderManager` writing to a real store.
- Moves the machine forbids are refused, logged and counted by the order manager.

The machine is written out again here from the module's docstring, so a change
to the table in code shows up as a failure against the documentation.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from rick_core.engine.oms import OrderManager
from rick_core.model import Fill, Order, OrderRequest, OrderStatus
from rick_core.orderstate import ALLOWED, Verdict, allowed, judge
from rick_core.store import Store

S = OrderStatus
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
QUANTITY = 10
LIMIT = Decimal(100)
COID = "rk-state-1"
REQUEST = OrderRequest(
    instrument="EUR_USD",
    side="buy",
    quantity=QUANTITY,
    type="limit",
    limit_price=LIMIT,
    client_order_id=COID,
)

# The machine as the docstring of rick_core.orderstate draws it.
DOCUMENTED: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.NEW: frozenset({S.SUBMITTED, S.REJECTED}),
    S.SUBMITTED: frozenset(
        {S.UNKNOWN, S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.REJECTED, S.EXPIRED}
    ),
    S.UNKNOWN: frozenset(
        {S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.REJECTED, S.EXPIRED}
    ),
    S.ACCEPTED: frozenset(
        {S.PARTIALLY_FILLED, S.FILLED, S.PENDING_MODIFY, S.PENDING_CANCEL, S.CANCELED, S.EXPIRED}
    ),
    S.PARTIALLY_FILLED: frozenset(
        {S.FILLED, S.PENDING_MODIFY, S.PENDING_CANCEL, S.CANCELED, S.EXPIRED}
    ),
    S.PENDING_MODIFY: frozenset(
        {S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.CANCELED, S.EXPIRED}
    ),
    S.PENDING_CANCEL: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.EXPIRED}),
    S.FILLED: frozenset(),
    S.CANCELED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
}
LOCAL_ONLY: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.PENDING_CANCEL: frozenset({S.ACCEPTED, S.PARTIALLY_FILLED})
}
FINAL = frozenset({S.FILLED, S.CANCELED, S.REJECTED, S.EXPIRED})


def documented_move(old: OrderStatus, new: OrderStatus, *, local: bool) -> bool:
    return new in DOCUMENTED[old] or (local and new in LOCAL_ONLY.get(old, frozenset()))


def _earlier() -> dict[OrderStatus, frozenset[OrderStatus]]:
    """For each state, every state an order may have been in before reaching it."""
    edges = {s: DOCUMENTED[s] | LOCAL_ONLY.get(s, frozenset()) for s in S}
    reach: dict[OrderStatus, set[OrderStatus]] = {}
    for start in S:
        seen: set[OrderStatus] = set()
        todo = list(edges[start])
        while todo:
            state = todo.pop()
            if state not in seen:
                seen.add(state)
                todo.extend(edges[state])
        reach[start] = seen
    return {s: frozenset(p for p in S if s in reach[p]) for s in S}


EARLIER = _earlier()


def report(
    status: OrderStatus,
    filled: int = 0,
    *,
    at: int = 0,
    stop_loss: Decimal | None = None,
    take_profit: Decimal | None = None,
    venue_order_id: str | None = None,
) -> Order:
    """A report of the order: ``at`` seconds after it was created."""
    request = REQUEST
    if stop_loss is not None or take_profit is not None:
        request = attrs.evolve(REQUEST, stop_loss=stop_loss, take_profit=take_profit)
    return Order(
        request=request,
        broker="paper",
        status=status,
        venue_order_id=venue_order_id,
        filled_quantity=filled,
        average_fill_price=LIMIT if filled else None,
        created_at=T0,
        updated_at=T0 + timedelta(seconds=at),
    )


def news(current: Order, update: Order) -> bool:
    """Whether a report in the same state says something new."""
    return (
        update.filled_quantity > current.filled_quantity
        or update.request.stop_loss != current.request.stop_loss
        or update.request.take_profit != current.request.take_profit
        or update.venue_order_id != current.venue_order_id
    )


def test_the_table_is_the_documented_machine() -> None:
    assert ALLOWED == DOCUMENTED
    for old, new in itertools.product(S, S):
        if old is not new:
            assert allowed(old, new) is (new in DOCUMENTED[old]), (old, new)
            assert allowed(old, new, local=True) is documented_move(old, new, local=True)
    assert {s for s in S if s.is_final} == FINAL
    assert all(not DOCUMENTED[s] for s in FINAL)


# ---------------------------------------------------------------------------
# (a) arbitrary reports


@st.composite
def arbitrary_reports(draw: st.DrawFn) -> tuple[Order, bool]:
    status = draw(st.sampled_from(list(S)))
    filled = QUANTITY if status is S.FILLED else draw(st.integers(0, QUANTITY))
    update = report(
        status,
        filled,
        at=draw(st.integers(0, 30)),
        stop_loss=draw(st.sampled_from([None, Decimal(90), Decimal(95)])),
        take_profit=draw(st.sampled_from([None, Decimal(110)])),
        venue_order_id=draw(st.sampled_from([None, "v-1", "v-2"])),
    )
    return update, draw(st.booleans())


def check_verdict(current: Order, update: Order, local: bool, verdict: Verdict) -> None:
    """What the machine's documentation says about one verdict."""
    old, new = current.status, update.status
    fewer = update.filled_quantity < current.filled_quantity
    more = update.filled_quantity > current.filled_quantity
    if old.is_final:
        assert verdict is not Verdict.APPLY, "a final state changed"
    if fewer:
        assert verdict is Verdict.STALE, "a report with fewer fills must be stale"
    if verdict is Verdict.APPLY:
        assert not fewer
        if old is new:
            assert news(current, update), "a same-state update with nothing new was applied"
            assert more or update.updated_at >= current.updated_at, "an older echo was applied"
        else:
            assert documented_move(old, new, local=local), f"{old} -> {new} applied"
    if verdict is Verdict.STALE and not fewer:
        # Stale: a report from a stage the order has been through (or an older echo).
        if old is new:
            assert update.updated_at < current.updated_at
        else:
            assert new in EARLIER[old], f"{new} after {old} is not stale but contradictory"
    # And the machine does move when it may: every allowed move with no fewer
    # fills applies, except the venue's echo of a working state while rick cancels.
    echo = (
        old is S.PENDING_CANCEL and new is not old and not local and not more and not new.is_final
    )
    if old is not new and not fewer and documented_move(old, new, local=local) and not echo:
        assert verdict is Verdict.APPLY, f"allowed move {old} -> {new} not applied"
    if echo and not fewer:
        assert verdict is Verdict.STALE, "the venue's echo from before the cancel was applied"
    if old is new and more:
        assert verdict is (Verdict.REFUSED if old.is_final else Verdict.APPLY)
    if old is new and not more and not fewer:
        if old.is_final:
            expected = Verdict.SAME
        elif update.updated_at < current.updated_at:
            expected = Verdict.STALE  # a late echo never undoes a newer change
        elif news(current, update):
            expected = Verdict.APPLY  # a new protection price or venue id
        else:
            expected = Verdict.SAME
        assert verdict is expected, f"same state {old}: {verdict}, expected {expected}"


@settings(max_examples=600, deadline=None)
@given(st.lists(arbitrary_reports(), max_size=30))
def test_arbitrary_reports_only_make_allowed_moves(updates: list[tuple[Order, bool]]) -> None:
    current = report(S.NEW)
    history = [current]
    for update, local in updates:
        verdict = judge(current, update, local=local)
        check_verdict(current, update, local, verdict)
        if verdict is Verdict.APPLY:
            current = update
            history.append(current)
    # fills never decrease, and once final the status never changed again
    assert all(a.filled_quantity <= b.filled_quantity for a, b in itertools.pairwise(history))
    finals = [i for i, o in enumerate(history) if o.status.is_final]
    if finals:
        assert finals == list(range(finals[0], len(history))), "moved after a final state"
        assert len({o.status for o in history[finals[0] :]}) == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(arbitrary_reports(), min_size=1, max_size=12), st.data())
def test_every_pair_of_states_is_judged_as_documented(
    updates: list[tuple[Order, bool]], data: st.DataObject
) -> None:
    # Judge each report from every state, not only the states reachable by luck.
    for update, local in updates:
        status = data.draw(st.sampled_from(list(S)))
        filled = QUANTITY if status is S.FILLED else data.draw(st.integers(0, QUANTITY))
        current = report(status, filled, at=data.draw(st.integers(0, 30)))
        check_verdict(current, update, local, judge(current, update, local=local))


# ---------------------------------------------------------------------------
# (b) and (c): valid lives delivered out of order


@attrs.frozen
class Life:
    """A valid order life after ``submitted``.

    ``segments[0]`` holds the venue's reports and fills up to rick's first mark
    (its first report is the answer to the submit); ``segments[i]`` those after
    mark ``marks[i - 1]`` (its first report is the answer to that mark's call).
    ``unknown``: the submit's answer was lost, so rick marked it unknown.
    """

    segments: tuple[tuple[Order | Fill, ...], ...]
    marks: tuple[tuple[OrderStatus, int], ...]
    unknown: bool
    last: Order
    fills: tuple[Fill, ...]


@st.composite
def lives(draw: st.DrawFn) -> Life:
    clock = itertools.count(1)
    segments: list[list[Order | Fill]] = [[]]
    marks: list[tuple[OrderStatus, int]] = []
    fills: list[Fill] = []
    unknown = draw(st.booleans())
    ending = draw(st.sampled_from(["filled", "canceled", "expired", "rejected"]))
    if ending == "rejected":
        last = report(S.REJECTED, at=next(clock))
        segments[0].append(last)
        return Life((tuple(segments[0]),), (), unknown, last, ())
    venue_id = "v-1"
    stop_loss = Decimal(90)
    filled = 0

    def add(status: OrderStatus) -> Order:
        order = report(status, filled, at=next(clock), stop_loss=stop_loss, venue_order_id=venue_id)
        segments[-1].append(order)
        return order

    def fill(quantity: int) -> None:
        fills.append(
            Fill(
                fill_id=f"f-{len(fills) + 1}",
                client_order_id=COID,
                instrument="EUR_USD",
                side="buy",
                quantity=quantity,
                price=LIMIT,
                time=T0 + timedelta(seconds=next(clock)),
                broker="paper",
                venue_order_id=venue_id,
            )
        )
        segments[-1].append(fills[-1])

    def mark(status: OrderStatus) -> None:
        marks.append((status, next(clock)))
        segments.append([])

    last = add(S.ACCEPTED)
    for step in draw(st.lists(st.sampled_from(["fill", "modify"]), max_size=6)):
        if step == "fill" and filled < QUANTITY - 1:
            part = draw(st.integers(1, QUANTITY - 1 - filled))
            filled += part
            fill(part)
            last = add(S.PARTIALLY_FILLED)
        elif step == "modify":
            mark(S.PENDING_MODIFY)
            stop_loss -= 1
            last = add(S.ACCEPTED if filled == 0 else S.PARTIALLY_FILLED)
    if ending == "filled":
        fill(QUANTITY - filled)
        filled = QUANTITY
        last = add(S.FILLED)
    elif ending == "canceled":
        mark(S.PENDING_CANCEL)
        last = add(S.CANCELED)
    else:
        last = add(S.EXPIRED)
    return Life(tuple(tuple(s) for s in segments), tuple(marks), unknown, last, tuple(fills))


Delivery = list[tuple[str, Any]]
"""("venue", Order | Fill), ("mark", (status, seconds)) or ("unknown", None)."""


@st.composite
def deliveries(draw: st.DrawFn, life: Life) -> Delivery:
    """The life's venue reports in any order, repeated, each at least once, none
    before it could exist; rick's marks in order, each after the answer to the
    call before it (rick awaits it) and before everything the venue did after it."""
    out: Delivery = []
    delivered: set[int] = set()
    produced: list[Order | Fill] = []
    for g, segment in enumerate(life.segments):
        produced.extend(segment)
        ids = list(range(len(produced)))
        extras = draw(st.lists(st.sampled_from(ids), max_size=4))
        if g < len(life.segments) - 1:
            start = len(produced) - len(segment)
            chunk = [*extras, start]  # the answer to the call is in hand before the next call
        else:
            chunk = [*extras, *(i for i in ids if i not in delivered)]
        chunk = draw(st.permutations(chunk))
        delivered.update(chunk)
        items: Delivery = [("venue", produced[i]) for i in chunk]
        if g == 0 and life.unknown:
            items.insert(draw(st.integers(0, len(items))), ("unknown", None))
        out.extend(items)
        if g < len(life.marks):
            out.append(("mark", life.marks[g]))
    assert delivered == set(range(len(produced)))
    return out


def deliver(
    delivery: Delivery,
    known: Callable[[], Order],
    apply: Callable[[Order, bool], None],
    fill: Callable[[Fill], None] = lambda fill: None,
) -> None:
    """Play ``delivery``: venue reports as they come, rick's marks only where
    rick makes them (as OrderManager._mark and _record_unknown decide)."""
    for kind, item in delivery:
        if isinstance(item, Fill):
            fill(item)
            continue
        current = known()
        if kind == "unknown":
            if current.status is S.SUBMITTED:
                apply(attrs.evolve(current, status=S.UNKNOWN), True)
        elif kind == "mark":
            status, seconds = item
            mark = attrs.evolve(
                current,
                status=status,
                updated_at=max(current.updated_at, T0 + timedelta(seconds=seconds)),
            )
            if judge(current, mark, local=True) is Verdict.APPLY:
                apply(mark, True)
        elif isinstance(item, Order):
            apply(item, False)


def assert_converged(final: Order, life: Life) -> None:
    last = life.last
    assert final.status is last.status
    assert final.filled_quantity == last.filled_quantity
    assert final.request.stop_loss == last.request.stop_loss
    assert final.venue_order_id == last.venue_order_id
    assert final.updated_at == last.updated_at


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_a_valid_life_delivered_in_any_order_converges(data: st.DataObject) -> None:
    life = data.draw(lives())
    delivery = data.draw(deliveries(life))
    state = {"current": report(S.SUBMITTED)}
    verdicts: list[Verdict] = []

    def apply(update: Order, local: bool) -> None:
        current = state["current"]
        verdict = judge(current, update, local=local)
        check_verdict(current, update, local, verdict)
        verdicts.append(verdict)
        if verdict is Verdict.APPLY:
            state["current"] = update

    deliver(delivery, lambda: state["current"], apply)
    assert Verdict.REFUSED not in verdicts, "a valid life had a move refused"
    assert_converged(state["current"], life)


def new_manager(store: Store, seen: list[tuple[str | None, Order | Fill]]) -> OrderManager:
    """An order manager over ``store`` with the order placed by strategy "s" and sent."""
    oms = OrderManager(store, {}, lambda owner, event: seen.append((owner, event)))
    store.record(new_orders=[(report(S.NEW), "s")])  # as OrderManager.submit stores it
    oms.apply([report(S.SUBMITTED)], durable=True, local=True)
    seen.clear()
    return oms


@settings(max_examples=250, deadline=None)
@given(st.data())
def test_a_valid_life_through_the_order_manager_is_stored_as_it_ended(
    data: st.DataObject,
) -> None:
    life = data.draw(lives())
    delivery = data.draw(deliveries(life))
    with tempfile.TemporaryDirectory() as folder, Store.open(Path(folder) / "rick.db") as store:
        seen: list[tuple[str | None, Order | Fill]] = []
        oms = new_manager(store, seen)

        def known() -> Order:
            found = oms.known(COID)
            assert found is not None
            return found

        deliver(
            delivery,
            known,
            lambda update, local: oms.apply([update], durable=True, local=local),
            lambda fill: oms.apply([fill]),  # fills are written at once, durable or not
        )
        stored = store.get_order(COID)
        assert stored is not None
        assert stored == known()
        assert_converged(stored, life)
        assert store.orders(open_only=True) == ([] if stored.status.is_final else [stored])
        assert oms.refused == 0
        fills = store.fills(client_order_id=COID)
        assert sorted(f.fill_id for f in fills) == sorted(f.fill_id for f in life.fills)
        assert sum((f.quantity for f in fills), Decimal(0)) == stored.filled_quantity
        assert oms.fills_seen == len(life.fills)
        # The strategy heard of every change once, each an allowed move.
        assert {owner for owner, _ in seen} <= {"s"}
        told = [e for _, e in seen if isinstance(e, Order)]
        assert sorted((f for _, f in seen if isinstance(f, Fill)), key=lambda f: f.fill_id) == (
            sorted(life.fills, key=lambda f: f.fill_id)
        )
        previous = report(S.SUBMITTED)
        for order in told:
            if order.status is previous.status:
                assert news(previous, order)
            else:
                assert documented_move(previous.status, order.status, local=True)
            assert order.filled_quantity >= previous.filled_quantity
            previous = order
        assert previous == stored


# ---------------------------------------------------------------------------
# (d) refused moves


def filled_then_canceled() -> tuple[list[Order], Order]:
    return [report(S.FILLED, QUANTITY, at=1)], report(S.CANCELED, QUANTITY, at=2)


def canceled_then_filled() -> tuple[list[Order], Order]:
    path = [
        report(S.ACCEPTED, at=1),
        report(S.PARTIALLY_FILLED, 4, at=2),
        report(S.CANCELED, 4, at=3),
    ]
    return path, report(S.FILLED, QUANTITY, at=4)


def rejected_then_accepted() -> tuple[list[Order], Order]:
    return [report(S.REJECTED, at=1)], report(S.ACCEPTED, at=2, venue_order_id="v-1")


def canceled_gains_fills() -> tuple[list[Order], Order]:
    path = [report(S.ACCEPTED, at=1), report(S.CANCELED, 0, at=2)]
    return path, report(S.CANCELED, 3, at=3)


REFUSALS = {
    "filled->canceled": filled_then_canceled,
    "canceled->filled with more fills": canceled_then_filled,
    "rejected->accepted": rejected_then_accepted,
    "canceled gains fills": canceled_gains_fills,
}


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_forbidden_moves_are_refused(case: Callable[[], tuple[list[Order], Order]]) -> None:
    path, update = case()
    current = path[-1]
    assert judge(current, update) is Verdict.REFUSED
    assert judge(current, update, local=True) is Verdict.REFUSED


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "rick.db") as s:
        yield s


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_the_order_manager_logs_counts_and_never_applies_a_refused_move(
    store: Store, case: Callable[[], tuple[list[Order], Order]]
) -> None:
    seen: list[tuple[str | None, Order | Fill]] = []
    oms = new_manager(store, seen)
    path, update = case()
    for step in path:
        local = step.status is S.REJECTED  # rick's own rejection (a send that failed)
        assert oms.apply([step], durable=True, local=local)
    before = store.get_order(COID)
    assert before == path[-1]
    seen.clear()
    with structlog.testing.capture_logs() as logs:
        assert oms.apply([update], durable=True) == []
    assert oms.refused == 1
    assert store.get_order(COID) == before
    assert oms.known(COID) == before
    assert seen == []  # the strategy is not told of a move that did not happen
    refused = [entry for entry in logs if entry["event"] == "order state change refused"]
    assert len(refused) == 1, logs
    entry = refused[0]
    assert entry["log_level"] == "warning"
    assert entry["client_order_id"] == COID
    assert entry["broker"] == "paper"
    assert entry["current"] == path[-1].status.value
    assert entry["reported"] == update.status.value
    assert entry["current_filled"] == str(path[-1].filled_quantity)
    assert entry["reported_filled"] == str(update.filled_quantity)


def test_stale_and_repeated_reports_are_neither_counted_nor_logged(store: Store) -> None:
    seen: list[tuple[str | None, Order | Fill]] = []
    oms = new_manager(store, seen)
    oms.apply([report(S.ACCEPTED, at=1)], durable=True)
    oms.apply([report(S.PARTIALLY_FILLED, 4, at=2)], durable=True)
    oms.apply([report(S.FILLED, QUANTITY, at=3)], durable=True)
    seen.clear()
    with structlog.testing.capture_logs() as logs:
        late = [
            report(S.ACCEPTED, at=1),  # the submit's answer, after the stream's fill
            report(S.PARTIALLY_FILLED, 4, at=2),  # fewer fills than seen
            report(S.FILLED, QUANTITY, at=3),  # a repeat
            report(S.FILLED, QUANTITY, at=5),  # a repeat, later
        ]
        assert oms.apply(late, durable=True) == []
    assert oms.refused == 0
    assert not [entry for entry in logs if entry["log_level"] in ("warning", "error")]
    assert seen == []
    stored = store.get_order(COID)
    assert (
        stored is not None
        and stored.status is S.FILLED
        and stored.updated_at == T0 + timedelta(seconds=3)
    )


def test_an_end_report_lagging_the_fills_ends_the_order_and_keeps_the_fills(
    tmp_path: Path,
) -> None:
    from rick_core.engine.oms import OrderManager
    from rick_core.store import Store

    request = OrderRequest(
        instrument="EUR_USD", side="buy", quantity=10, type="limit", limit_price="1.1"
    )
    with Store.open(tmp_path / "lag.db") as store:
        oms = OrderManager(store, {}, lambda owner, event: None)
        new = Order(request=request, broker="paper", status="accepted")
        store.record(new_orders=[(new, "s")])
        five = attrs.evolve(
            new, status="partially_filled", filled_quantity=5, average_fill_price="1.1"
        )
        oms.apply([five], durable=True)
        late = attrs.evolve(new, status="canceled", filled_quantity=3, average_fill_price="1.1")
        oms.apply([late], durable=True)
        stored = store.get_order(request.client_order_id)
    assert stored is not None
    assert stored.status is OrderStatus.CANCELED and stored.filled_quantity == 5
