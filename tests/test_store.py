"""Tests of rick_core.store: schema and migrations, exact round trips, the writer API."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

import rick_core.store as store_module
from rick_core.model import Account, Fill, Order, OrderRequest, OrderStatus, Side, to_json
from rick_core.store import (
    _WORKING_CLAUSE,
    _WORKING_STATUSES,
    MIGRATIONS,
    AccountSnapshot,
    Migration,
    SchemaTooNewError,
    Store,
    StoreError,
)

LATEST = MIGRATIONS[-1].version
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def make_order(
    client_order_id: str = "rk-1",
    *,
    broker: str = "paper",
    created_at: datetime = T0,
    status: OrderStatus = OrderStatus.NEW,
) -> Order:
    request = OrderRequest(
        instrument="EUR_USD",
        side=Side.BUY,
        quantity=Decimal("1000.10"),
        type="limit",
        limit_price=Decimal("1.0850"),
        client_order_id=client_order_id,
    )
    filled = request.quantity if status is OrderStatus.FILLED else Decimal(0)
    return Order(
        request=request,
        broker=broker,
        status=status,
        filled_quantity=filled,
        average_fill_price=Decimal("1.08") if filled else None,
        created_at=created_at,
        updated_at=created_at,
    )


def make_fill(
    fill_id: str = "f-1", *, client_order_id: str = "rk-1", broker: str = "paper"
) -> Fill:
    return Fill(
        fill_id=fill_id,
        client_order_id=client_order_id,
        instrument="EUR_USD",
        side="buy",
        quantity=Decimal("500.00"),
        price=Decimal("1.08500"),
        time=T0 + timedelta(seconds=1),
        broker=broker,
        fee=Decimal("-0.010"),
        fee_currency="USD",
        venue_order_id="v-9",
    )


def assert_exactly_equal(got: object, expected: object) -> None:
    """Equal, and equal in serialized form: ``==`` alone says Decimal("1.1") == Decimal("1.10")."""
    assert got == expected
    assert to_json(got) == to_json(expected)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "rick.db") as s:
        yield s


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path)


# ---------------------------------------------------------------------------
# opening, pragmas, schema


def test_open_creates_parent_folders_and_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "rick.db"
    with Store.open(path) as s:
        assert s.schema_version == LATEST
        assert s.path == path
    assert path.exists()


def test_wal_mode_synchronous_normal_foreign_keys(store: Store) -> None:
    conn = store._db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_every_column_is_declared_text(store: Store) -> None:
    for table in ("orders", "fills"):
        types = {r[1]: r[2] for r in store._db.execute(f"PRAGMA table_info({table})")}
        assert types, table
        assert set(types.values()) == {"TEXT"}, (table, types)
    indexed = {r[0] for r in store._db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "idx_fills_client_order_id" in indexed
    # Dropped by migration 2: each index costs the order path a page per write.
    assert not {"idx_orders_status", "idx_orders_broker"} & indexed


def test_the_working_statuses_clause_matches_the_model(store: Store) -> None:
    assert tuple(s.value for s in OrderStatus if not s.is_final) == _WORKING_STATUSES
    for status in _WORKING_STATUSES:
        assert f"'{status}'" in _WORKING_CLAUSE


def test_decimals_are_stored_as_text_with_their_exponent(tmp_path: Path) -> None:
    path = tmp_path / "rick.db"
    with Store.open(path) as s:
        s.insert_order(make_order())
    row = raw(path).execute(
        "SELECT typeof(quantity), quantity, limit_price, created_at FROM orders"
    )
    assert row.fetchone() == ("text", "1000.10", "1.0850", "2024-03-01T12:00:00.000000+00:00")


def test_migration_versions_are_consecutive_from_one() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert all(isinstance(m, tuple) and len(m) == 3 for m in MIGRATIONS)


def test_migrates_a_version_0_database(tmp_path: Path) -> None:
    path = tmp_path / "rick.db"
    conn = raw(path)
    conn.execute("CREATE TABLE unrelated (x TEXT)")
    conn.commit()
    conn.close()
    with Store.open(path) as s:
        assert s.schema_version == LATEST
        s.insert_order(make_order())
        assert s.get_order("rk-1") is not None


def test_reopening_an_up_to_date_store_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "rick.db"
    with Store.open(path) as s:
        s.insert_order(make_order())
        s.insert_fill(make_fill())
    with Store.open(path) as s:
        assert s.schema_version == LATEST
        assert_exactly_equal(s.get_order("rk-1"), make_order())
        assert s.fills() == [make_fill()]


def test_a_later_migration_is_applied_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rick.db"
    Store.open(path).close()

    def add_notes(db: Database) -> None:
        db.create_table("notes", {"text": "TEXT"})

    monkeypatch.setattr(
        store_module, "MIGRATIONS", (*MIGRATIONS, Migration(LATEST + 1, "notes", add_notes))
    )
    with Store.open(path) as s:
        assert s.schema_version == LATEST + 1
        assert s._db.table("notes").exists()


def test_a_failing_migration_leaves_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rick.db"
    Store.open(path).close()

    def half_done(db: Database) -> None:
        db.create_table("notes", {"text": "TEXT"})
        raise RuntimeError("power cut")

    monkeypatch.setattr(
        store_module, "MIGRATIONS", (*MIGRATIONS, Migration(LATEST + 1, "notes", half_done))
    )
    with pytest.raises(StoreError, match=f"migration {LATEST + 1} \\(notes\\) failed: power cut"):
        Store.open(path)
    conn = raw(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'notes'").fetchone() is None


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_a_newer_schema_is_refused_and_the_file_left_unchanged(
    tmp_path: Path, journal_mode: str
) -> None:
    path = tmp_path / "rick.db"
    conn = raw(path)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("CREATE TABLE future (x TEXT)")
    conn.execute("INSERT INTO future VALUES ('from a newer rick')")
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.commit()
    conn.close()
    before = path.read_bytes()

    with pytest.raises(SchemaTooNewError) as excinfo:
        Store.open(path)

    message = str(excinfo.value)
    assert str(path) in message
    assert f"schema version {LATEST + 1}" in message
    assert f"up to {LATEST}" in message
    assert "Upgrade rick-core" in message
    assert "RICK_HOME" in message
    assert (excinfo.value.found, excinfo.value.latest) == (LATEST + 1, LATEST)
    assert isinstance(excinfo.value, StoreError)
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_database_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "rick.db"
    path.write_bytes(b"these are not the bytes of an SQLite database" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a rick store"):
        Store.open(path)
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------
# orders


def test_order_round_trip_with_every_field(store: Store) -> None:
    request = OrderRequest(
        instrument="USD_JPY",
        side="sell",
        quantity=Decimal("2.50"),
        type="stop",
        stop_price=Decimal("150.100"),
        time_in_force="gtd",
        expire_time=datetime(2024, 3, 2, 9, 30, 0, 123456, tzinfo=timezone(timedelta(hours=9))),
        stop_loss=Decimal("151.0"),
        take_profit=Decimal("1.4E+2"),
        client_order_id="rk-all",
        tag="breakout",
    )
    order = Order(
        request=request,
        broker="oanda",
        status="partially_filled",
        venue_order_id="12345",
        filled_quantity=Decimal("1.00"),
        average_fill_price=Decimal("150.0990"),
        created_at=T0,
        updated_at=T0 + timedelta(microseconds=1),
        reject_reason="none really",
    )
    store.insert_order(order)
    got = store.get_order("rk-all")
    assert got is not None
    assert_exactly_equal(got, order)
    assert got.request.expire_time is not None
    assert got.request.expire_time.tzinfo is UTC
    assert str(got.request.take_profit) == "1.4E+2"


def test_market_order_with_defaults_round_trips(store: Store) -> None:
    order = Order(request=OrderRequest("BTC_USD", "buy", "0.00100000"), broker="coinbase")
    store.insert_order(order)
    assert_exactly_equal(store.get_order(order.client_order_id), order)


def test_unknown_order_is_none(store: Store) -> None:
    assert store.get_order("rk-missing") is None


def test_inserting_an_order_twice_is_refused(store: Store) -> None:
    store.insert_order(make_order())
    with pytest.raises(StoreError, match="rk-1 is already stored; use update_order"):
        store.insert_order(make_order())


def test_update_order(store: Store) -> None:
    order = make_order()
    store.insert_order(order)
    updated = attrs.evolve(
        order,
        status=OrderStatus.PARTIALLY_FILLED,
        venue_order_id="v-9",
        filled_quantity=Decimal("500.00"),
        average_fill_price=Decimal("1.08500"),
        updated_at=T0 + timedelta(seconds=2),
    )
    store.update_order(updated)
    assert_exactly_equal(store.get_order("rk-1"), updated)
    assert len(store.orders()) == 1


def test_updating_an_unknown_order_raises(store: Store) -> None:
    with pytest.raises(StoreError, match="rk-1: it is not stored; use insert_order first"):
        store.update_order(make_order())
    assert store.orders() == []


def test_orders_are_listed_oldest_first_then_by_id(store: Store) -> None:
    store.insert_order(make_order("rk-c", created_at=T0 + timedelta(seconds=1)))
    store.insert_order(make_order("rk-b", created_at=T0))
    store.insert_order(make_order("rk-a", created_at=T0 + timedelta(seconds=1)))
    # a whole second and a fraction of one: text order must still be time order
    store.insert_order(make_order("rk-d", created_at=T0 + timedelta(microseconds=500_000)))
    ids = [o.client_order_id for o in store.orders()]
    assert ids == ["rk-b", "rk-d", "rk-a", "rk-c"]


def test_orders_filtered_by_broker_and_open_only(store: Store) -> None:
    statuses = list(OrderStatus)
    for i, status in enumerate(statuses):
        broker = "paper" if i % 2 else "oanda"
        created_at = T0 + timedelta(seconds=i)
        store.insert_order(
            make_order(f"rk-{i}", broker=broker, created_at=created_at, status=status)
        )

    working = [o.status for o in store.orders(open_only=True)]
    assert working == [s for s in statuses if not s.is_final]
    assert {o.broker for o in store.orders(broker="paper")} == {"paper"}
    assert len(store.orders(broker="paper")) == len(statuses) // 2
    both = store.orders(broker="oanda", open_only=True)
    assert [o.status for o in both] == [
        s for i, s in enumerate(statuses) if i % 2 == 0 and not s.is_final
    ]
    assert store.orders(broker="nobody") == []


# ---------------------------------------------------------------------------
# fills


def test_fill_round_trip(store: Store) -> None:
    fill = make_fill()
    assert store.insert_fill(fill) is True
    [got] = store.fills()
    assert_exactly_equal(got, fill)
    assert got.time.tzinfo is UTC


def test_inserting_a_fill_twice_is_a_no_op(store: Store) -> None:
    assert store.insert_fill(make_fill()) is True
    assert store.insert_fill(make_fill()) is False
    assert store.fills() == [make_fill()]


def test_fill_ids_are_unique_per_broker_only(store: Store) -> None:
    assert store.insert_fill(make_fill(broker="paper")) is True
    assert store.insert_fill(make_fill(broker="oanda")) is True
    assert {f.broker for f in store.fills()} == {"paper", "oanda"}


def test_fills_of_one_order(store: Store) -> None:
    store.insert_fill(make_fill("f-1", client_order_id="rk-1"))
    store.insert_fill(make_fill("f-2", client_order_id="rk-2"))
    store.insert_fill(make_fill("f-3", client_order_id="rk-1"))
    assert [f.fill_id for f in store.fills(client_order_id="rk-1")] == ["f-1", "f-3"]
    assert store.fills(client_order_id="rk-none") == []


# ---------------------------------------------------------------------------
# property: any finite Decimal comes back exactly, exponent and all


def finite_decimals() -> st.SearchStrategy[Decimal]:
    """Finite decimals, including ones with trailing zeros and positive exponents."""
    return st.one_of(
        st.decimals(allow_nan=False, allow_infinity=False),
        st.integers(0, 12).flatmap(
            lambda places: st.decimals(allow_nan=False, allow_infinity=False, places=places)
        ),
        st.builds(
            lambda sign, digits, exponent: Decimal((sign, tuple(digits), exponent)),
            st.integers(0, 1),
            st.lists(st.integers(0, 9), min_size=1, max_size=40),
            st.integers(-40, 40),
        ),
    )


positive = finite_decimals().map(Decimal.copy_abs).filter(lambda d: d > 0)
zeros = st.builds(  # every spelling of zero, "-0" and "0E-8" included
    lambda sign, exponent: Decimal((sign, (0,), exponent)), st.integers(0, 1), st.integers(-20, 20)
)


@settings(max_examples=200, deadline=None)
@given(
    quantities=st.lists(positive, min_size=2, max_size=2).map(sorted),
    prices=st.lists(positive, min_size=3, max_size=3),
    protective=st.lists(positive, min_size=2, max_size=2, unique=True).map(sorted),
    fill_quantity=positive,
    fill_price=positive,
    fee=finite_decimals(),
    zero_filled=st.booleans(),
    filled_zero=zeros,
)
def test_decimals_round_trip_exactly(
    quantities: list[Decimal],
    prices: list[Decimal],
    protective: list[Decimal],
    fill_quantity: Decimal,
    fill_price: Decimal,
    fee: Decimal,
    zero_filled: bool,
    filled_zero: Decimal,
) -> None:
    filled, quantity = quantities
    limit_price, average_fill_price, _ = prices
    stop_loss, take_profit = protective  # a market buy: stop below take-profit
    limit = Order(
        request=OrderRequest(
            "EUR_USD",
            "buy",
            quantity,
            type="limit",
            limit_price=limit_price,
            client_order_id="rk-limit",
        ),
        broker="paper",
        status="partially_filled",
        filled_quantity=filled_zero if zero_filled else filled,
        average_fill_price=average_fill_price,
    )
    market = Order(
        request=OrderRequest(
            "EUR_USD",
            "buy",
            quantity,
            stop_loss=stop_loss,
            take_profit=take_profit,
            client_order_id="rk-market",
        ),
        broker="paper",
    )
    fill = Fill(
        fill_id="f-1",
        client_order_id="rk-limit",
        instrument="EUR_USD",
        side="buy",
        quantity=fill_quantity,
        price=fill_price,
        time=T0,
        broker="paper",
        fee=fee,
    )
    with tempfile.TemporaryDirectory() as folder, Store.open(Path(folder) / "rick.db") as s:
        s.insert_order(limit)
        s.insert_order(market)
        s.insert_fill(fill)
        for order in (limit, market):
            assert_exactly_equal(s.get_order(order.client_order_id), order)
        [got_fill] = s.fills()
        assert_exactly_equal(got_fill, fill)
        got_limit = s.get_order("rk-limit")
        assert got_limit is not None
        assert str(got_limit.filled_quantity) == str(limit.filled_quantity)
        assert str(got_fill.fee) == str(fee)


def test_a_stored_request_never_changes(store: Store) -> None:
    order = make_order()
    store.insert_order(order)
    bigger = attrs.evolve(order, request=attrs.evolve(order.request, quantity=Decimal(5000)))
    with pytest.raises(StoreError, match="quantity differ from the stored order"):
        store.update_order(bigger)
    # what may change, does: protection, status, venue id
    moved = attrs.evolve(
        order,
        request=attrs.evolve(order.request, stop_loss=Decimal("1.0800")),
        status=OrderStatus.ACCEPTED,
        venue_order_id="v-1",
    )
    store.update_order(moved)
    assert store.get_order(order.client_order_id) == moved


async def test_the_store_can_be_used_from_a_worker_thread(store: Store) -> None:
    import trio

    order = make_order()
    await trio.to_thread.run_sync(store.insert_order, order)
    assert await trio.to_thread.run_sync(store.get_order, order.client_order_id) == order


@pytest.mark.parametrize("bad", ["file-not-folder/rick.db", "nul\x00byte.db"])
def test_an_unusable_path_is_a_store_error(tmp_path: Path, bad: str) -> None:
    (tmp_path / "file-not-folder").write_text("")
    with pytest.raises(StoreError, match=r"cannot open the store: .*Check \[store\] path"):
        Store.open(tmp_path / bad)


# ---------------------------------------------------------------------------
# migration 2: order strategies and account snapshots


def make_v1_store(path: Path) -> None:
    """A store as rick-core with migration 1 only left it, with one order and one fill."""
    conn = raw(path)
    conn.execute("PRAGMA journal_mode=WAL")
    db = Database(conn, execute_plugins=False)
    MIGRATIONS[0].apply(db)
    db.execute("PRAGMA user_version = 1")
    values = store_module._order_values(make_order())
    row = dict(zip(store_module._ORDER_COLUMNS, values, strict=True))
    for added in set(store_module._ORDER_COLUMNS) - set(store_module._ORDER_COLUMNS_V1):
        assert row.pop(added) is None  # a column of a later migration
    db.table("orders").insert(row)
    db.table("fills").insert(
        dict(zip(store_module._FILL_COLUMNS, store_module._fill_values(make_fill()), strict=True))
    )
    conn.commit()
    conn.close()


def test_migration_2_upgrades_a_version_1_store_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "rick.db"
    make_v1_store(path)
    assert raw(path).execute("PRAGMA user_version").fetchone()[0] == 1
    with Store.open(path) as s:
        assert s.schema_version == LATEST
        assert_exactly_equal(s.get_order("rk-1"), make_order())
        assert s.strategy_of("rk-1") is None  # placed before rick knew strategies
        assert s.orders_with_strategy() == [(make_order(), None)]
        assert s.fills() == [make_fill()]
        assert s.accounts() == []
        s.insert_order(make_order("rk-2"), strategy="breakout")
        assert s.strategy_of("rk-2") == "breakout"
    conn = raw(path)
    columns = {r[1]: r[2] for r in conn.execute("PRAGMA table_info(orders)")}
    assert columns["strategy"] == "TEXT"
    account_columns = {r[1]: r[2] for r in conn.execute("PRAGMA table_info(accounts)")}
    assert account_columns == dict.fromkeys(
        [
            "broker",
            "currency",
            "balance",
            "equity",
            "margin_used",
            "margin_available",
            "time",
            "first_equity",
            "first_time",
        ],
        "TEXT",
    )
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert not {"idx_orders_status", "idx_orders_broker"} & indexes


def test_a_version_1_only_rick_core_refuses_a_version_2_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rick.db"
    Store.open(path).close()
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:1])
    with pytest.raises(
        SchemaTooNewError, match=f"schema version {LATEST}, but this rick-core knows"
    ):
        Store.open(path)


def test_migration_1_alone_then_2_on_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rick.db"
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:1])
    with Store.open(path) as s:
        assert s.schema_version == 1
    monkeypatch.undo()
    with Store.open(path) as s:
        assert s.schema_version == LATEST
        s.insert_order(make_order(), strategy="ma")
        assert s.strategy_of("rk-1") == "ma"


def test_open_existing_never_creates_a_store(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "rick.db"
    assert Store.open_existing(path) is None
    assert not path.parent.exists()
    Store.open(path).close()
    with Store.open_existing(path) as s:  # type: ignore[union-attr]
        assert s.schema_version == LATEST


# ---------------------------------------------------------------------------
# strategies


def test_strategy_is_stored_with_the_order_and_filters(store: Store) -> None:
    store.insert_order(make_order("rk-a", created_at=T0), strategy="ma")
    store.insert_order(make_order("rk-b", created_at=T0 + timedelta(seconds=1)))
    usd_jpy = Order(
        request=OrderRequest("USD_JPY", "sell", "3", client_order_id="rk-c"),
        broker="oanda",
        created_at=T0 + timedelta(seconds=2),
        updated_at=T0 + timedelta(seconds=2),
    )
    store.insert_order(usd_jpy, strategy="ma")
    assert store.strategy_of("rk-a") == "ma"
    assert store.strategy_of("rk-b") is None
    assert store.strategy_of("rk-missing") is None
    assert [o.client_order_id for o in store.orders(strategy="ma")] == ["rk-a", "rk-c"]
    assert [o.client_order_id for o in store.orders(instrument="USD_JPY")] == ["rk-c"]
    assert store.orders(strategy="ma", broker="paper") == [make_order("rk-a")]
    assert store.orders(strategy="nobody") == []
    assert [(o.client_order_id, s) for o, s in store.orders_with_strategy()] == [
        ("rk-a", "ma"),
        ("rk-b", None),
        ("rk-c", "ma"),
    ]
    assert [o.client_order_id for o in store.orders(limit=2)] == ["rk-b", "rk-c"]
    assert [o.client_order_id for o in store.orders(limit=0)] == []
    # an update keeps the strategy
    store.update_order(attrs.evolve(make_order("rk-a"), status=OrderStatus.ACCEPTED))
    assert store.strategy_of("rk-a") == "ma"


def test_fills_with_the_strategy_of_their_order(store: Store) -> None:
    store.insert_order(make_order("rk-1"), strategy="ma")
    store.insert_order(make_order("rk-2", broker="oanda"), strategy="ma")
    store.insert_fill(make_fill("f-1", client_order_id="rk-1"))
    store.insert_fill(make_fill("f-2", client_order_id="rk-unknown"))
    # same client order id, another broker: not that order's fill
    store.insert_fill(make_fill("f-3", client_order_id="rk-2", broker="paper"))
    got = [(f.fill_id, s) for f, s in store.fills_with_strategy()]
    assert got == [("f-1", "ma"), ("f-2", None), ("f-3", None)]
    assert [f.fill_id for f in store.fills(strategy="ma")] == ["f-1"]
    assert [f.fill_id for f in store.fills(broker="oanda")] == []
    assert [f.fill_id for f in store.fills(instrument="EUR_USD", limit=2)] == ["f-2", "f-3"]
    assert store.fills(instrument="USD_JPY") == []


# ---------------------------------------------------------------------------
# accounts


def account(equity: str, seconds: int, *, broker: str = "paper", currency: str = "USD") -> Account:
    return Account(
        broker=broker,
        currency=currency,
        balance=Decimal("1000.00"),
        equity=Decimal(equity),
        margin_used=Decimal("12.50"),
        margin_available=Decimal("987.50"),
        time=T0 + timedelta(seconds=seconds),
    )


def test_save_account_keeps_the_latest_and_the_first_equity(store: Store) -> None:
    assert store.accounts() == []
    store.save_account(account("1000.00", 0))
    store.save_account(account("1010.50", 10))
    store.save_account(account("990.25", 20))
    store.save_account(account("500", 5))  # older than the stored one: ignored
    store.save_account(account("77", 0, broker="oanda", currency="EUR"))
    [oanda, paper] = store.accounts()
    assert_exactly_equal(paper.account, account("990.25", 20))
    assert str(paper.first_equity) == "1000.00"
    assert paper.first_time == T0 and paper.first_time.tzinfo is not None
    assert str(paper.equity_change) == "-9.75"
    assert oanda == AccountSnapshot(
        account("77", 0, broker="oanda", currency="EUR"), Decimal(77), T0
    )


def test_a_new_account_currency_starts_over(store: Store) -> None:
    store.save_account(account("1000", 0))
    store.save_account(account("900", 10, currency="EUR"))
    [snapshot] = store.accounts()
    assert (snapshot.first_equity, snapshot.first_time) == (
        Decimal(900),
        T0 + timedelta(seconds=10),
    )


# ---------------------------------------------------------------------------
# record: the engine's hot path


def test_record_updates_orders_and_stores_new_fills_in_one_go(store: Store) -> None:
    store.insert_order(make_order("rk-1"), strategy="ma")
    filled = attrs.evolve(
        make_order("rk-1"),
        status=OrderStatus.PARTIALLY_FILLED,
        filled_quantity=Decimal("500.00"),
        average_fill_price=Decimal("1.08500"),
        updated_at=T0 + timedelta(seconds=1),
    )
    new = store.record(orders=[filled], fills=[make_fill("f-1"), make_fill("f-1")])
    assert new == [make_fill("f-1")]
    assert_exactly_equal(store.get_order("rk-1"), filled)
    assert store.strategy_of("rk-1") == "ma"
    # a repeat of the same report changes nothing and reports no new fill
    assert store.record(orders=[filled], fills=[make_fill("f-1")]) == []
    assert store.fills() == [make_fill("f-1")]
    assert store.record() == []


def test_record_inserts_orders_rick_did_not_place(store: Store) -> None:
    stop_out = make_order("venue-close-1", status=OrderStatus.FILLED)
    assert store.record(orders=[stop_out], fills=[make_fill(client_order_id="venue-close-1")])
    assert_exactly_equal(store.get_order("venue-close-1"), stop_out)
    assert store.orders_with_strategy() == [(stop_out, None)]


def test_record_is_one_transaction(store: Store) -> None:
    store.insert_order(make_order("rk-1"))
    store.insert_order(make_order("rk-2"))
    ok = attrs.evolve(make_order("rk-1"), status=OrderStatus.ACCEPTED)
    changed = attrs.evolve(
        make_order("rk-2"), request=attrs.evolve(make_order("rk-2").request, quantity=Decimal(7))
    )
    with pytest.raises(StoreError, match="rk-2: quantity differ from the stored order"):
        store.record(orders=[ok, make_order("rk-new"), changed], fills=[make_fill()])
    assert store.get_order("rk-1") == make_order("rk-1")  # rolled back
    assert store.get_order("rk-new") is None
    assert store.fills() == []
    assert not store._db.conn.in_transaction
    # and the store is usable afterwards
    assert store.record(orders=[ok], fills=[make_fill()]) == [make_fill()]
    assert store.get_order("rk-1") == ok


def test_record_rolls_back_when_a_fill_fails(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.insert_order(make_order("rk-1"))
    monkeypatch.setattr(store_module, "_INSERT_FILL_SQL", "INSERT INTO nowhere VALUES (?)")
    store.record(orders=[attrs.evolve(make_order("rk-1"), status=OrderStatus.ACCEPTED)])
    with pytest.raises(sqlite3.OperationalError):
        store.record(
            orders=[attrs.evolve(make_order("rk-1"), status=OrderStatus.CANCELED)],
            fills=[make_fill()],
        )
    assert store.get_order("rk-1") == attrs.evolve(make_order("rk-1"), status=OrderStatus.ACCEPTED)
    assert not store._db.conn.in_transaction


def test_insert_order_failure_leaves_no_transaction_open(store: Store) -> None:
    store.insert_order(make_order())
    with pytest.raises(StoreError):
        store.insert_order(make_order())
    assert not store._db.conn.in_transaction
    store.insert_fill(make_fill())
    assert store.fills() == [make_fill()]


def test_migration_3_renames_the_order_states_of_older_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rick.db"
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:2])
    Store.open(path).close()
    conn = sqlite3.connect(path)
    columns = dict.fromkeys(store_module._ORDER_COLUMNS_V1, "x")
    for coid, status in [("a1", "pending"), ("a2", "open"), ("a3", "filled")]:
        row = {**columns, "client_order_id": coid, "status": status}
        names = ", ".join(f"[{k}]" for k in row)
        conn.execute(
            f"INSERT INTO orders ({names}) VALUES ({', '.join('?' * len(row))})", list(row.values())
        )
    conn.commit()
    conn.close()
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    Store.open(path).close()
    conn = sqlite3.connect(path)
    statuses = dict(conn.execute("SELECT client_order_id, status FROM orders"))
    conn.close()
    assert statuses == {"a1": "new", "a2": "accepted", "a3": "filled"}
