"""Positions and P&L from fills, against a reference written here from scratch.

Fills go in the way the engine stores them (``Store.record``, and
``OrderManager.apply``), repeated and out of order; the positions and realized
P&L that rick_core.reports derives from the stored fills must equal a plain
exact computation (Fractions, average price per position) over the fills
without repeats, booked in time order.

What reports documents, and the reference follows:

- fills are booked in time order, fills at the same time in the order stored
  (``Store.fills``: time, then the order stored);
- a repeat of a stored (broker, fill id) is ignored: the fill first stored is kept;
- an average that does not terminate is rounded to 34 significant digits, so the
  P&L realized by a part of a position whose share of the cost does not
  terminate is exact to 34 digits only; a position closed to flat (or through
  zero) has realized exactly what it made.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal
from fractions import Fraction
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rick_core.engine.oms import OrderManager
from rick_core.model import Fill, Order, Side
from rick_core.reports import NetPosition, net_positions, pnl_summary
from rick_core.store import Store

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
D = Decimal
ROUND34 = Context(prec=34, rounding=ROUND_HALF_EVEN)
TINY = Fraction(1, 10**32)
"""More than the rounding of one 34-digit division, relative to its result."""


# ---------------------------------------------------------------------------
# the reference


@attrs.define
class Book:
    """One (broker, instrument), exactly."""

    quantity: Fraction = Fraction(0)
    average: Fraction | None = None
    realized: Fraction = Fraction(0)
    fees: dict[str, Fraction] = attrs.Factory(dict)
    volume: Fraction = Fraction(0)
    fills: int = 0
    last_time: datetime | None = None
    slack: Fraction = Fraction(0)
    """How far 34-digit rounding may have moved realized P&L (0: it must be exact)."""


def terminates_in_34_digits(value: Fraction) -> bool:
    return Fraction(ROUND34.divide(D(value.numerator), D(value.denominator))) == value


def first_delivered(delivered: Sequence[Fill]) -> list[Fill]:
    """Each (broker, fill id) once: the copy delivered first, in first-delivery order."""
    first: dict[tuple[str, str], Fill] = {}
    for fill in delivered:
        first.setdefault((fill.broker, fill.fill_id), fill)
    return list(first.values())


def reference(delivered: Sequence[Fill]) -> dict[tuple[str, str], Book]:
    unique = first_delivered(delivered)
    ordered = sorted(range(len(unique)), key=lambda i: (unique[i].time, i))
    books: dict[tuple[str, str], Book] = {}
    for i in ordered:
        fill = unique[i]
        book = books.setdefault((fill.broker, fill.instrument), Book())
        quantity, price = Fraction(fill.quantity), Fraction(fill.price)
        signed = quantity if fill.side is Side.BUY else -quantity
        book.volume += quantity * price
        book.fees[fill.fee_currency] = book.fees.get(fill.fee_currency, Fraction(0)) + Fraction(
            fill.fee
        )
        book.fills += 1
        book.last_time = fill.time if book.last_time is None else max(book.last_time, fill.time)
        held = book.quantity
        if held == 0 or (held > 0) == (signed > 0):  # opens or adds: weighted average
            total = abs(held) + quantity
            average = book.average if book.average is not None else Fraction(0)
            book.average = (average * abs(held) + price * quantity) / total
            book.quantity = held + signed
            continue
        assert book.average is not None
        closing = min(quantity, abs(held))
        long = held > 0
        book.realized += closing * (price - book.average) * (1 if long else -1)
        if closing < abs(held):
            share = book.average * closing  # the part of the cost this reduction takes
            if not terminates_in_34_digits(share):
                book.slack += abs(share) * TINY
        book.quantity = held - closing if long else held + closing
        rest = quantity - closing
        if rest:  # through zero: the rest opens the other way at the fill price
            book.quantity = rest if signed > 0 else -rest
            book.average = price
        if book.quantity == 0 or rest:
            book.slack = Fraction(0)  # a closed position has realized exactly what it made
        if book.quantity == 0:
            book.average = None
    return books


def assert_matches(positions: list[NetPosition], books: dict[tuple[str, str], Book]) -> None:
    assert [(p.broker, p.instrument) for p in positions] == sorted(books)
    for position in positions:
        book = books[(position.broker, position.instrument)]
        where = f"{position.broker} {position.instrument}"
        assert Fraction(position.quantity) == book.quantity, where
        assert position.quote_currency == (
            position.instrument.split("_")[1] if "_" in position.instrument else ""
        )
        assert {c: Fraction(a) for c, a in position.fees.items()} == book.fees, where
        assert Fraction(position.volume) == book.volume, where
        assert position.fills == book.fills, where
        assert position.last_fill_time == book.last_time, where
        error = abs(Fraction(position.realized_pnl) - book.realized)
        assert error <= book.slack, (
            f"{where}: realized {position.realized_pnl}, not {book.realized}"
        )
        if book.average is None:
            assert position.average_price is None and position.is_flat, where
            continue
        assert position.average_price is not None, where
        expected = ROUND34.divide(D(book.average.numerator), D(book.average.denominator))
        if book.slack == 0:
            assert position.average_price == expected, where
        else:
            off = abs(Fraction(position.average_price) - book.average)
            assert off <= abs(book.average) * TINY * 10 + book.slack / abs(book.quantity), where


# ---------------------------------------------------------------------------
# fills

BROKERS = ("paper", "oanda")
INSTRUMENTS = ("EUR_USD", "BTC_USD", "AAPL")
quantities = st.one_of(
    st.sampled_from([D(1), D(2), D(3), D("0.5"), D("1.5"), D(10), D(7)]),
    st.integers(1, 10**6).map(lambda n: D(n).scaleb(-3)),
)
prices = st.one_of(
    st.sampled_from([D(1), D(2), D(3), D("1.0850"), D(100), D("99.99")]),
    st.integers(1, 10**8).map(lambda n: D(n).scaleb(-4)),
)
fees = st.integers(-100, 10**4).map(lambda n: D(n).scaleb(-4))


@st.composite
def fill_sets(draw: st.DrawFn, *, distinct_times: bool = False) -> list[Fill]:
    """Fills with unique (broker, fill id); times may tie unless ``distinct_times``."""
    count = draw(st.integers(1, 30))
    seconds = st.integers(0, 10**6) if distinct_times else st.integers(0, 40)
    times = draw(st.lists(seconds, min_size=count, max_size=count, unique=distinct_times))
    fills = []
    for i, second in enumerate(times):
        broker = draw(st.sampled_from(BROKERS))
        fills.append(
            Fill(
                fill_id=f"{broker}-{i}",
                client_order_id=f"rk-{draw(st.integers(1, 5))}",
                instrument=draw(st.sampled_from(INSTRUMENTS)),
                side=draw(st.sampled_from(list(Side))),
                quantity=draw(quantities),
                price=draw(prices),
                time=T0 + timedelta(seconds=second),
                broker=broker,
                fee=draw(fees),
                fee_currency=draw(st.sampled_from(["USD", "BNB", ""])),
            )
        )
    if draw(st.booleans()):  # close some positions to flat, after everything else
        net: dict[tuple[str, str], Decimal] = {}
        for f in fills:
            key = (f.broker, f.instrument)
            net[key] = net.get(key, D(0)) + (f.quantity if f.side is Side.BUY else -f.quantity)
        last = max(times) + 1
        for n, ((broker, instrument), held) in enumerate(sorted(net.items())):
            if held and draw(st.booleans()):
                fills.append(
                    Fill(
                        fill_id=f"{broker}-close-{n}",
                        client_order_id="rk-close",
                        instrument=instrument,
                        side=Side.SELL if held > 0 else Side.BUY,
                        quantity=abs(held),
                        price=draw(prices),
                        time=T0 + timedelta(seconds=last + n),
                        broker=broker,
                    )
                )
    return fills


@st.composite
def with_repeats(draw: st.DrawFn, fills: list[Fill]) -> list[Fill]:
    """``fills`` in any order, some delivered again (identical), as venues repeat them."""
    repeats = draw(st.lists(st.sampled_from(fills), max_size=len(fills)))
    return list(draw(st.permutations([*fills, *repeats])))


@st.composite
def batches(draw: st.DrawFn, delivered: list[Fill]) -> list[list[Fill]]:
    """``delivered`` cut into consecutive batches (one write each)."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(delivered) - 1)), max_size=6)))
    bounds = [0, *(c for c in cuts if c < len(delivered)), len(delivered)]
    return [delivered[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@contextmanager
def temp_store() -> Iterator[Store]:
    with tempfile.TemporaryDirectory() as folder, Store.open(Path(folder) / "rick.db") as store:
        yield store


Recorder = Callable[[Store, list[Fill]], list[Fill]]


def by_store(store: Store, batch: list[Fill]) -> list[Fill]:
    return store.record(fills=batch)


def by_order_manager(store: Store, batch: list[Fill]) -> list[Fill]:
    told: list[Fill] = []

    def listener(owner: str | None, event: Order | Fill) -> None:
        assert isinstance(event, Fill) and owner is None  # no stored order owns these fills
        told.append(event)

    oms = OrderManager(store, {}, listener)
    new = oms.apply(batch)
    assert new == told, "the listener hears exactly the new fills"
    assert oms.fills_seen == len(new)
    return [e for e in new if isinstance(e, Fill)]


RECORDERS = {"Store.record": by_store, "OrderManager.apply": by_order_manager}


def record_all(store: Store, recorder: Recorder, parts: list[list[Fill]]) -> list[Fill]:
    new: list[Fill] = []
    for batch in parts:
        new += recorder(store, batch)
    return new


# ---------------------------------------------------------------------------
# the properties


@pytest.mark.parametrize("recorder", RECORDERS.values(), ids=RECORDERS.keys())
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_positions_and_pnl_from_stored_fills_match_the_reference(
    recorder: Recorder, data: st.DataObject
) -> None:
    fills = data.draw(fill_sets())
    delivered = data.draw(with_repeats(fills))
    with temp_store() as store:
        new = record_all(store, recorder, data.draw(batches(delivered)))
        stored = store.fills()
        # Each fill is new exactly once, on its first delivery.
        assert new == first_delivered(delivered)
        assert len(stored) == len(fills)
        positions = net_positions(stored)
    books = reference(delivered)
    assert_matches(positions, books)
    # A position is the sum of its fills.
    for position in positions:
        signed = sum(
            (
                f.quantity if f.side is Side.BUY else -f.quantity
                for f in fills
                if (f.broker, f.instrument) == (position.broker, position.instrument)
            ),
            D(0),
        )
        assert position.quantity == signed
    # Per broker, P&L sums its positions' per quote currency.
    for summary in pnl_summary(stored, []):
        realized: dict[str, Fraction] = {}
        fees_paid: dict[str, Fraction] = {}
        for (broker, instrument), book in books.items():
            if broker == summary.broker:
                currency = instrument.split("_")[1] if "_" in instrument else ""
                realized[currency] = realized.get(currency, Fraction(0)) + book.realized
                for fee_currency, amount in book.fees.items():
                    fees_paid[fee_currency] = fees_paid.get(fee_currency, Fraction(0)) + amount
        assert {c: Fraction(a) for c, a in summary.fees.items()} == fees_paid
        assert summary.realized_pnl.keys() == realized.keys()
        slack = sum((b.slack for (k, _), b in books.items() if k == summary.broker), Fraction(0))
        for currency, amount in summary.realized_pnl.items():
            assert abs(Fraction(amount) - realized[currency]) <= slack


@pytest.mark.parametrize("recorder", RECORDERS.values(), ids=RECORDERS.keys())
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_repeats_change_nothing(recorder: Recorder, data: st.DataObject) -> None:
    fills = data.draw(fill_sets())
    delivered = data.draw(with_repeats(fills))
    with temp_store() as once, temp_store() as repeated:
        record_all(once, recorder, [first_delivered(delivered)])
        record_all(repeated, recorder, data.draw(batches(delivered)))
        assert repeated.fills() == once.fills()
        expected = net_positions(once.fills())
        assert net_positions(repeated.fills()) == expected
        # The whole history delivered again (a reconnect, a reconciliation): nothing new.
        assert record_all(repeated, recorder, [list(reversed(delivered))]) == []
        assert net_positions(repeated.fills()) == expected


@pytest.mark.parametrize("recorder", RECORDERS.values(), ids=RECORDERS.keys())
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_delivery_order_does_not_matter_when_fills_carry_their_times(
    recorder: Recorder, data: st.DataObject
) -> None:
    fills = data.draw(fill_sets(distinct_times=True))
    first = data.draw(with_repeats(fills))
    second = data.draw(with_repeats(fills))
    with temp_store() as a, temp_store() as b:
        record_all(a, recorder, data.draw(batches(first)))
        record_all(b, recorder, data.draw(batches(second)))
        in_time_order = sorted(fills, key=lambda f: f.time)
        assert a.fills() == b.fills() == in_time_order
        positions = net_positions(a.fills())
        assert net_positions(b.fills()) == positions  # exactly, roundings included
    assert positions == net_positions(in_time_order)
    assert_matches(positions, reference(in_time_order))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_a_changed_repeat_keeps_the_fill_first_stored(data: st.DataObject) -> None:
    fills = data.draw(fill_sets())
    changed = [
        attrs.evolve(f, price=f.price + 1, quantity=f.quantity * 2, fee=D(0))
        for f in data.draw(st.lists(st.sampled_from(fills), min_size=1, unique_by=id))
    ]
    delivered = list(data.draw(st.permutations([*fills, *changed])))
    with temp_store() as store:
        new = record_all(store, by_store, data.draw(batches(delivered)))
        assert new == first_delivered(delivered)
        kept = {(f.broker, f.fill_id): f for f in store.fills()}
        assert kept == {(f.broker, f.fill_id): f for f in first_delivered(delivered)}
        assert_matches(net_positions(store.fills()), reference(delivered))


# ---------------------------------------------------------------------------
# the reference itself, on numbers worked by hand


def fill(
    fill_id: str, side: str, quantity: str, price: str, second: int, *, fee: str = "0"
) -> Fill:
    return Fill(
        fill_id=fill_id,
        client_order_id="rk-1",
        instrument="EUR_USD",
        side=side,
        quantity=D(quantity),
        price=D(price),
        time=T0 + timedelta(seconds=second),
        broker="paper",
        fee=D(fee),
        fee_currency="USD",
    )


def test_average_cost_through_zero_worked_by_hand() -> None:
    fills = [
        fill("1", "buy", "10", "100", 1, fee="0.5"),
        fill("2", "buy", "10", "110", 2, fee="0.5"),  # 20 at 105
        fill("3", "sell", "15", "120", 3, fee="0.25"),  # realizes 15 x 15 = 225; 5 at 105
        fill("4", "sell", "10", "100", 4),  # realizes 5 x -5 = -25; opens 5 short at 100
        fill("5", "buy", "2", "90", 5),  # realizes 2 x 10 = 20; 3 short at 100
    ]
    book = reference(fills)[("paper", "EUR_USD")]
    assert (book.quantity, book.average, book.realized) == (-3, 100, 220)
    assert book.fees == {"USD": Fraction(5, 4)} and book.slack == 0
    (position,) = net_positions(list(reversed(fills)))  # booked in time order
    assert (position.quantity, position.average_price, position.realized_pnl) == (
        D(-3),
        D(100),
        D(220),
    )
    assert position.fees == {"USD": D("1.25")}
    with temp_store() as store:
        store.record(fills=[*reversed(fills), fills[2]])
        assert net_positions(store.fills()) == [position]


def test_a_third_of_a_cost_is_rounded_and_a_closed_position_is_exact() -> None:
    fills = [
        fill("1", "buy", "1", "1", 1),
        fill("2", "buy", "2", "2", 2),  # 3 at 5/3
        fill("3", "sell", "1", "2", 3),  # realizes 1/3
    ]
    book = reference(fills)[("paper", "EUR_USD")]
    assert book.realized == Fraction(1, 3) and book.average == Fraction(5, 3)
    assert 0 < book.slack < Fraction(1, 10**30)
    (partly,) = net_positions(fills)
    share = ROUND34.divide(D(5), D(3))  # the third of the cost 5 sold, to 34 digits
    assert Fraction(partly.realized_pnl) == 2 - Fraction(share) != Fraction(1, 3)
    assert partly.average_price == ROUND34.divide(ROUND34.subtract(D(5), share), D(2))
    assert_matches([partly], reference(fills))
    closed = [*fills, fill("4", "sell", "2", "2", 4)]  # realizes the rest: 1 in all
    (flat,) = net_positions(closed)
    assert flat.realized_pnl == 1 and flat.is_flat and flat.average_price is None
    assert reference(closed)[("paper", "EUR_USD")].slack == 0
    assert_matches([flat], reference(closed))


def test_fills_at_the_same_time_are_booked_in_the_order_stored() -> None:
    # The documented tie-break: same time, the order stored. The reference follows it.
    low = fill("1", "buy", "1", "100", 1)
    high = fill("2", "buy", "1", "120", 1)
    sell = fill("3", "sell", "1", "110", 1)
    cases = (
        ([low, high, sell], D(0), D(110)),  # 2 at 110, one sold at 110
        ([low, sell, high], D(10), D(120)),  # 1 at 100 sold at 110, then 1 at 120
    )
    for delivered, realized, average in cases:
        with temp_store() as store:
            store.record(fills=delivered[:2])
            store.record(fills=delivered[2:])
            (position,) = net_positions(store.fills())
        assert (position.quantity, position.realized_pnl, position.average_price) == (
            1,
            realized,
            average,
        )
        assert_matches([position], reference(delivered))
