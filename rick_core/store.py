"""rick's embedded store: SQLite through sqlite-utils, in WAL mode, with one writer.

The schema is versioned with ``PRAGMA user_version`` and grown by the ordered
:data:`MIGRATIONS`, applied on open. Each migration runs in its own transaction
together with its version bump, so a crash part-way leaves the store at the
version before it. A store written by a newer rick-core (a version this code does
not know) is refused before anything is written to it.

How values are stored, so they come back exactly as they went in:

- every Decimal as TEXT, ``str(d)``: exact, exponent kept (``1.10`` stays ``1.10``);
- every datetime as ISO 8601 TEXT in UTC with ``+00:00``, read back timezone-aware;
- every enum as its ``.value``.

Every column is declared TEXT explicitly, so SQLite's type affinity never turns
``'1.10'`` into the number ``1.1``.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar, cast

import attrs
from sqlite_utils import Database

from rick_core.model import Account, Fill, Order, OrderRequest, OrderStatus, to_utc

__all__ = [
    "MIGRATIONS",
    "AccountSnapshot",
    "Migration",
    "SchemaTooNewError",
    "Store",
    "StoreError",
]


class StoreError(Exception):
    """Something is wrong with the store; the message names the file and what to do."""


class SchemaTooNewError(StoreError):
    """The store was written by a newer rick-core than this one. It was left untouched."""

    def __init__(self, path: Path, found: int, latest: int) -> None:
        self.path = path
        self.found = found
        self.latest = latest
        super().__init__(
            f"{path}: the store has schema version {found}, but this rick-core knows "
            f"schema versions up to {latest} only; it was written by a newer rick-core. "
            "Upgrade rick-core (pip install --upgrade rick-core), or set RICK_HOME to "
            "another folder to use a separate store. The file was not modified."
        )


# ---------------------------------------------------------------------------
# migrations
#
# Append only: never edit or reorder a migration that has shipped. Each one
# spells out its columns instead of deriving them from the model, so that it
# does the same thing forever, whatever the model becomes.


class Migration(NamedTuple):
    """One schema step: ``apply`` brings a store from ``version - 1`` to ``version``."""

    version: int
    description: str
    apply: Callable[[Database], None]


_ORDER_COLUMNS_V1 = (
    "client_order_id",
    "broker",
    "instrument",
    "side",
    "quantity",
    "type",
    "limit_price",
    "stop_price",
    "time_in_force",
    "expire_time",
    "stop_loss",
    "take_profit",
    "tag",
    "status",
    "venue_order_id",
    "filled_quantity",
    "average_fill_price",
    "created_at",
    "updated_at",
    "reject_reason",
)
_ORDER_COLUMNS = (*_ORDER_COLUMNS_V1, "trail_distance", "trail_percent", "trailing_stop")
"""Every order column but ``strategy``: migration 1's, migration 3's trailing stop
orders, and migration 4's attached trailing stop."""
_ORDER_REQUIRED = (
    "client_order_id",
    "broker",
    "instrument",
    "side",
    "quantity",
    "type",
    "time_in_force",
    "tag",
    "status",
    "filled_quantity",
    "created_at",
    "updated_at",
)
_FILL_COLUMNS = (
    "broker",
    "fill_id",
    "client_order_id",
    "instrument",
    "side",
    "quantity",
    "price",
    "time",
    "fee",
    "fee_currency",
    "venue_order_id",
)


def _create_orders_and_fills(db: Database) -> None:
    # Fills carry no foreign key to orders: a venue can report fills of orders
    # placed outside rick, and reconciliation must be able to record them.
    orders = db.create_table(
        "orders",
        dict.fromkeys(_ORDER_COLUMNS_V1, "TEXT"),
        pk="client_order_id",
        not_null=_ORDER_REQUIRED,
    )
    fills = db.create_table(
        "fills",
        dict.fromkeys(_FILL_COLUMNS, "TEXT"),
        pk=("broker", "fill_id"),
        not_null=[c for c in _FILL_COLUMNS if c != "venue_order_id"],
    )
    orders.create_index(["status"])
    orders.create_index(["broker"])
    fills.create_index(["client_order_id"])


def _add_strategies_and_accounts(db: Database) -> None:
    # NULL strategy: an order rick did not place (a venue's stop-loss close, a
    # margin close-out, an order placed by hand), recorded from the venue's reports.
    db.execute("ALTER TABLE orders ADD COLUMN [strategy] TEXT")
    # Every index costs the engine's hot path a page write on each order's insert
    # and status change (measured: a partial index of working orders alone took
    # a sixth of the order round trip). The running engine keeps working orders
    # in memory; start-up and `rick orders --open` find them with one scan, and
    # listings by broker or strategy scan too.
    db.execute("DROP INDEX IF EXISTS [idx_orders_status]")
    db.execute("DROP INDEX IF EXISTS [idx_orders_broker]")
    # The latest snapshot per broker, plus the equity first seen (kept on update).
    db.execute(
        """
        CREATE TABLE [accounts] (
            [broker] TEXT NOT NULL PRIMARY KEY,
            [currency] TEXT NOT NULL,
            [balance] TEXT NOT NULL,
            [equity] TEXT NOT NULL,
            [margin_used] TEXT NOT NULL,
            [margin_available] TEXT NOT NULL,
            [time] TEXT NOT NULL,
            [first_equity] TEXT NOT NULL,
            [first_time] TEXT NOT NULL
        )
        """
    )


def _rename_order_states(db: Database) -> None:
    # The explicit order state machine (issue #5) names the first states "new"
    # and "accepted"; rows written by earlier versions are renamed in place.
    db.execute("UPDATE [orders] SET [status] = 'new' WHERE [status] = 'pending'")
    db.execute("UPDATE [orders] SET [status] = 'accepted' WHERE [status] = 'open'")
    # Trailing stops (issue #5): the distance or percent they trail by.
    db.execute("ALTER TABLE [orders] ADD COLUMN [trail_distance] TEXT")
    db.execute("ALTER TABLE [orders] ADD COLUMN [trail_percent] TEXT")


def _add_attached_trailing_stop(db: Database) -> None:
    # An entry order's attached trailing stop (a price distance); NULL for every
    # order stored before, which had none.
    db.execute("ALTER TABLE [orders] ADD COLUMN [trailing_stop] TEXT")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "orders and fills", _create_orders_and_fills),
    Migration(2, "order strategies and account snapshots", _add_strategies_and_accounts),
    Migration(3, "order state machine names, trailing stops", _rename_order_states),
    Migration(4, "attached trailing stops", _add_attached_trailing_stop),
)
"""Every schema step, in order; versions are 1, 2, 3, ... with no gaps."""


# ---------------------------------------------------------------------------
# opening and migrating


def _latest_version(migrations: tuple[Migration, ...]) -> int:
    return migrations[-1].version if migrations else 0


def _user_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def _version_on_disk(path: Path) -> int:
    """The schema version of the file at ``path`` (0 if there is none), read without writing.

    A read-only connection never checkpoints a WAL nor rolls back a hot journal,
    so the file is left byte for byte as found (SQLite may add empty ``-wal`` and
    ``-shm`` files beside a WAL-mode file, as any reader does).
    """
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open the store to read it: {e}") from None
    try:
        return _user_version(conn)
    except sqlite3.DatabaseError as e:
        raise StoreError(
            f"{path}: not a rick store ({e}). Move the file away, or set RICK_HOME "
            "to another folder."
        ) from None
    finally:
        conn.close()


@contextmanager
def _write_transaction(db: Database) -> Iterator[None]:
    """BEGIN IMMEDIATE (take the write lock now), COMMIT on success, ROLLBACK on error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.commit()
    except BaseException:
        db.rollback()
        raise


def _configure(db: Database, path: Path) -> None:
    # journal_mode can only change outside a transaction; WAL persists in the file.
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(
            f"{path}: SQLite refused WAL mode (journal mode is {mode!r}); keep RICK_HOME "
            "on a local disk, not a network share"
        )
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")


def _migrate(db: Database, path: Path, migrations: tuple[Migration, ...]) -> None:
    expected = list(range(1, len(migrations) + 1))
    if [m.version for m in migrations] != expected:
        raise StoreError(f"bug in rick-core: migration versions must be {expected}")
    latest = _latest_version(migrations)
    for migration in migrations:
        if _user_version(db.conn) >= migration.version:
            continue
        with _write_transaction(db):
            # Read again under the write lock: another process may have moved on.
            current = _user_version(db.conn)
            if current > latest:
                raise SchemaTooNewError(path, current, latest)
            if current >= migration.version:
                continue
            try:
                migration.apply(db)
            except Exception as e:
                raise StoreError(
                    f"{path}: migration {migration.version} ({migration.description}) "
                    f"failed: {e}. The store was left at schema version {current}."
                ) from e
            db.execute(f"PRAGMA user_version = {int(migration.version)}")


# ---------------------------------------------------------------------------
# rows <-> model values
#
# The write path (insert_order, record) runs for every order event, so rows are
# plain tuples bound to SQL built once, here, rather than dicts fed to the
# sqlite-utils table API.


def _time_text(value: datetime | None) -> str | None:
    # Fixed microsecond precision keeps text order equal to time order.
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def _order_values(order: Order) -> tuple[str | None, ...]:
    """An order's column values, in :data:`_ORDER_COLUMNS` order."""
    request = order.request
    limit_price = request.limit_price
    stop_price = request.stop_price
    expire_time = request.expire_time
    stop_loss = request.stop_loss
    take_profit = request.take_profit
    average_fill_price = order.average_fill_price
    return (
        request.client_order_id,
        order.broker,
        request.instrument,
        request.side.value,
        str(request.quantity),
        request.type.value,
        None if limit_price is None else str(limit_price),
        None if stop_price is None else str(stop_price),
        request.time_in_force.value,
        None if expire_time is None else _time_text(expire_time),
        None if stop_loss is None else str(stop_loss),
        None if take_profit is None else str(take_profit),
        request.tag,
        order.status.value,
        order.venue_order_id,
        str(order.filled_quantity),
        None if average_fill_price is None else str(average_fill_price),
        _time_text(order.created_at),
        _time_text(order.updated_at),
        order.reject_reason,
        None if request.trail_distance is None else str(request.trail_distance),
        None if request.trail_percent is None else str(request.trail_percent),
        None if request.trailing_stop is None else str(request.trailing_stop),
    )


def _order_from_row(row: Mapping[str, Any]) -> Order:
    # The model converts numeric strings to Decimal and ISO text to UTC datetimes exactly.
    request = OrderRequest(
        instrument=row["instrument"],
        side=row["side"],
        quantity=row["quantity"],
        type=row["type"],
        limit_price=row["limit_price"],
        stop_price=row["stop_price"],
        time_in_force=row["time_in_force"],
        expire_time=row["expire_time"],
        stop_loss=row["stop_loss"],
        take_profit=row["take_profit"],
        client_order_id=row["client_order_id"],
        tag=row["tag"],
        trail_distance=row["trail_distance"],
        trail_percent=row["trail_percent"],
        trailing_stop=row["trailing_stop"],
    )
    return Order(
        request=request,
        broker=row["broker"],
        status=row["status"],
        venue_order_id=row["venue_order_id"],
        filled_quantity=row["filled_quantity"],
        average_fill_price=row["average_fill_price"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        reject_reason=row["reject_reason"],
    )


def _fill_values(fill: Fill) -> tuple[str | None, ...]:
    """A fill's column values, in :data:`_FILL_COLUMNS` order."""
    return (
        fill.broker,
        fill.fill_id,
        fill.client_order_id,
        fill.instrument,
        fill.side.value,
        str(fill.quantity),
        str(fill.price),
        _time_text(fill.time),
        str(fill.fee),
        fill.fee_currency,
        fill.venue_order_id,
    )


def _fill_from_row(row: Mapping[str, Any]) -> Fill:
    return Fill(**{name: row[name] for name in _FILL_COLUMNS})


_WORKING_STATUSES = tuple(s.value for s in OrderStatus if not s.is_final)
_WORKING_CLAUSE = (
    "status IN ('new', 'submitted', 'unknown', 'accepted', 'partially_filled', "
    "'pending_modify', 'pending_cancel')"
)
"""The same statuses as SQL (a test keeps them equal)."""

_MUTABLE_ORDER_COLUMNS = (
    "status",
    "venue_order_id",
    "filled_quantity",
    "average_fill_price",
    "updated_at",
    "reject_reason",
    "stop_loss",
    "take_profit",
)
"""What an order update may change; the rest of the request is fixed once stored."""

_FIXED_ORDER_COLUMNS = tuple(
    c for c in _ORDER_COLUMNS if c not in _MUTABLE_ORDER_COLUMNS and c != "client_order_id"
)


def _param(column: str) -> str:
    """``?N``: the SQL parameter of ``column`` in an :func:`_order_values` tuple."""
    return f"?{_ORDER_COLUMNS.index(column) + 1}"


# Numbered parameters let the INSERT and the UPDATE bind the same values tuple.
_INSERT_ORDER_SQL = (
    f"INSERT INTO orders ({', '.join(f'[{c}]' for c in (*_ORDER_COLUMNS, 'strategy'))}) "
    f"VALUES ({', '.join(f'?{i}' for i in range(1, len(_ORDER_COLUMNS) + 2))})"
)
_UPDATE_ORDER_SQL = (
    "UPDATE orders SET "
    + ", ".join(f"[{c}] = {_param(c)}" for c in _MUTABLE_ORDER_COLUMNS)
    + f" WHERE client_order_id = {_param('client_order_id')} AND "
    + " AND ".join(f"[{c}] IS {_param(c)}" for c in _FIXED_ORDER_COLUMNS)
)
_ORDER_BY_ID_SQL = "SELECT * FROM orders WHERE client_order_id = ?"
_INSERT_FILL_SQL = (
    f"INSERT OR IGNORE INTO fills ({', '.join(f'[{c}]' for c in _FILL_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _FILL_COLUMNS)})"
)
_SAVE_ACCOUNT_SQL = """
INSERT INTO accounts (broker, currency, balance, equity, margin_used, margin_available, time,
                      first_equity, first_time)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?4, ?7)
ON CONFLICT (broker) DO UPDATE SET
    currency = excluded.currency,
    balance = excluded.balance,
    equity = excluded.equity,
    margin_used = excluded.margin_used,
    margin_available = excluded.margin_available,
    time = excluded.time,
    first_equity = iif(currency = excluded.currency, first_equity, excluded.first_equity),
    first_time = iif(currency = excluded.currency, first_time, excluded.first_time)
WHERE excluded.time >= time
"""


@attrs.frozen
class AccountSnapshot:
    """The latest stored snapshot of a broker account, and the equity rick first saw.

    ``first_equity`` and ``first_time`` come from the first snapshot ever saved
    for the broker (or the first after its account currency changed).
    """

    account: Account
    first_equity: Decimal
    first_time: datetime

    @property
    def equity_change(self) -> Decimal:
        """Equity now minus equity first seen, in the account currency."""
        return self.account.equity - self.first_equity


def _rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def _newest(sql: str, order_by: str, descending: str, limit: int | None) -> str:
    """``sql`` ordered oldest first; with ``limit``, only the newest ``limit`` rows of it."""
    if limit is None:
        return f"{sql} ORDER BY {order_by}"
    return f"SELECT * FROM ({sql} ORDER BY {descending} LIMIT {int(limit)}) ORDER BY {order_by}"


# ---------------------------------------------------------------------------
# the store


F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """Serialise a :class:`Store` method on the store's lock."""

    @functools.wraps(method)
    def locked(self: Store, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return cast(F, locked)


class Store:
    """The one writer of a rick store. Open it with :meth:`Store.open`.

    Calls are serialised by a lock, and the connection is not tied to the
    thread that opened it, so the engine may run them in a worker thread
    (``trio.to_thread.run_sync``) as long as one ``Store`` does the writing.
    """

    def __init__(self, db: Database, path: Path) -> None:
        """Wrap an open, migrated database; use :meth:`Store.open` instead."""
        self._db = db
        self._lock = threading.RLock()
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Self:
        """Open (or create) the store at ``path`` and bring its schema up to date.

        Creates missing parent folders. Raises :class:`SchemaTooNewError`, leaving
        the file untouched, if a newer rick-core wrote it, and :class:`StoreError`
        if the file is not a store or a migration fails.
        """
        path = Path(path)
        migrations = MIGRATIONS
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            found = _version_on_disk(path)
            latest = _latest_version(migrations)
            if found > latest:
                raise SchemaTooNewError(path, found, latest)
            conn = sqlite3.connect(path, check_same_thread=False)
        except (OSError, ValueError) as e:  # a file where a folder should be, a NUL in the path
            raise StoreError(
                f"{path}: cannot open the store: {e}. Check [store] path in rick.toml "
                "and RICK_HOME."
            ) from None
        # execute_plugins=False: no sqlite-utils plugin gets a hand on this connection.
        db = Database(conn, execute_plugins=False)
        try:
            _configure(db, path)
            _migrate(db, path, migrations)
        except sqlite3.Error as e:
            db.close()
            raise StoreError(f"{path}: cannot open the store: {e}") from e
        except BaseException:
            db.close()
            raise
        return cls(db, path)

    @classmethod
    def open_existing(cls, path: Path) -> Self | None:
        """Like :meth:`open`, but None if there is no file at ``path``: never creates one.

        For commands that only read. An up-to-date store is not written to; an
        older one is migrated, as by every other command.
        """
        path = Path(path)
        if not path.is_file():
            return None
        return cls.open(path)

    @_locked
    def close(self) -> None:
        """Close the connection. Everything written is already committed."""
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def defer_checkpoints(self) -> None:
        """Stop commits from checkpointing the WAL into the database file.

        A checkpoint writes and syncs the database file: milliseconds that would
        land on whichever commit crosses the threshold. A long-running writer
        (the engine) calls this and then :meth:`checkpoint` from a worker thread
        every second or so.
        """
        with self._lock:
            self._db.conn.execute("PRAGMA wal_autocheckpoint=0")

    def checkpoint(self) -> None:
        """Copy the WAL into the database file without blocking the writer.

        Opens its own connection, so it may run in another thread while this
        store keeps writing (SQLite's passive checkpoint takes no write lock).
        """
        conn = sqlite3.connect(self.path)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    @property
    def schema_version(self) -> int:
        """The schema version of the open store (``PRAGMA user_version``)."""
        return _user_version(self._db.conn)

    # -- orders --------------------------------------------------------------

    def insert_order(self, order: Order, *, strategy: str | None = None) -> None:
        """Store a new order placed by ``strategy`` (None: not placed by a rick strategy).

        Raises :class:`StoreError` if its client order id is taken.
        """
        values = (*_order_values(order), strategy)
        with self._lock:
            conn = self._db.conn
            try:
                conn.execute(_INSERT_ORDER_SQL, values)
            except sqlite3.IntegrityError:
                conn.rollback()
                raise StoreError(
                    f"{self.path}: order {order.client_order_id} is already stored; "
                    "use update_order to change it"
                ) from None
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    @_locked
    def update_order(self, order: Order) -> None:
        """Store the new state of an order, found by its client order id.

        Only what changes over an order's life is written (status, fills,
        venue id, protection, reject reason, update time). Raises
        :class:`StoreError` if no order with that id is stored, or if the rest
        of ``order`` differs from what is stored: a stored request never changes.
        """
        values = _order_values(order)
        conn = self._db.conn
        try:
            updated = conn.execute(_UPDATE_ORDER_SQL, values).rowcount == 1
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        if not updated:
            raise self._refusal(order, values)

    def _refusal(self, order: Order, values: tuple[str | None, ...]) -> StoreError:
        """Why ``order`` (with column ``values``) cannot update the stored order."""
        client_order_id = order.client_order_id
        stored = self._db.conn.execute(_ORDER_BY_ID_SQL, (client_order_id,))
        found = _rows(stored)
        if not found:
            return StoreError(
                f"{self.path}: cannot update order {client_order_id}: it is not stored; "
                "use insert_order first"
            )
        row = dict(zip(_ORDER_COLUMNS, values, strict=True))
        changed = sorted(c for c in _FIXED_ORDER_COLUMNS if found[0][c] != row[c])
        return StoreError(
            f"{self.path}: cannot update order {client_order_id}: {', '.join(changed)} "
            "differ from the stored order, and a stored request never changes"
        )

    @_locked
    def get_order(self, client_order_id: str) -> Order | None:
        """The stored order with this client order id, or None."""
        found = _rows(self._db.conn.execute(_ORDER_BY_ID_SQL, (client_order_id,)))
        return _order_from_row(found[0]) if found else None

    @_locked
    def strategy_of(self, client_order_id: str) -> str | None:
        """The strategy that placed this order; None if no strategy did or it is not stored."""
        row = self._db.conn.execute(
            "SELECT strategy FROM orders WHERE client_order_id = ?", (client_order_id,)
        ).fetchone()
        return None if row is None else cast(str | None, row[0])

    @_locked
    def orders(
        self,
        *,
        broker: str | None = None,
        open_only: bool = False,
        strategy: str | None = None,
        instrument: str | None = None,
        limit: int | None = None,
    ) -> list[Order]:
        """Stored orders, oldest first (by ``created_at``, then client order id).

        Each filter given keeps only the matching orders: ``broker``, ``strategy``
        (the strategy that placed the order), ``instrument``, and ``open_only`` for
        the orders not in a final state (pending, submitted, open, partially
        filled). ``limit`` keeps the newest ``limit`` of them, still oldest first.
        """
        return [
            order
            for order, _ in self.orders_with_strategy(
                broker=broker,
                open_only=open_only,
                strategy=strategy,
                instrument=instrument,
                limit=limit,
            )
        ]

    @_locked
    def orders_with_strategy(
        self,
        *,
        broker: str | None = None,
        open_only: bool = False,
        strategy: str | None = None,
        instrument: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[Order, str | None]]:
        """Like :meth:`orders`, each order with the strategy that placed it (or None)."""
        where: list[str] = []
        params: list[str] = []
        for column, value in (("broker", broker), ("strategy", strategy)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if instrument is not None:
            where.append("instrument = ?")
            params.append(instrument)
        if open_only:
            where.append(_WORKING_CLAUSE)
        sql = "SELECT * FROM orders" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql = _newest(
            sql,
            "created_at, client_order_id",
            "created_at DESC, client_order_id DESC",
            limit,
        )
        return [
            (_order_from_row(row), row["strategy"])
            for row in _rows(self._db.conn.execute(sql, params))
        ]

    @_locked
    def first_order_time(self, broker: str) -> datetime | None:
        """When the first stored order on ``broker`` was created, or None."""
        row = self._db.conn.execute(
            "SELECT MIN(created_at) FROM orders WHERE broker = ?", (broker,)
        ).fetchone()
        return None if row[0] is None else to_utc(row[0])

    @_locked
    def orders_created_since(self, since: datetime) -> list[tuple[Order, str | None]]:
        """Orders created at or after ``since`` (aware), oldest first, each with the
        strategy that placed it (or None). The canary cap counts a day's orders so."""
        rows = self._db.conn.execute(
            "SELECT * FROM orders WHERE created_at >= ? ORDER BY created_at, client_order_id",
            (_time_text(since),),
        )
        return [(_order_from_row(row), row["strategy"]) for row in _rows(rows)]

    # -- fills ---------------------------------------------------------------

    @_locked
    def insert_fill(self, fill: Fill) -> bool:
        """Store a fill once: True if it was new, False if this broker's fill id is stored.

        Venues repeat fills (reconnects, reconciliation), so a repeat is a no-op
        and the fill first stored is kept.
        """
        conn = self._db.conn
        try:
            new = conn.execute(_INSERT_FILL_SQL, _fill_values(fill)).rowcount == 1
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        return new

    @_locked
    def fills(
        self,
        *,
        client_order_id: str | None = None,
        broker: str | None = None,
        strategy: str | None = None,
        instrument: str | None = None,
        limit: int | None = None,
    ) -> list[Fill]:
        """Stored fills in time order (then in the order stored).

        Each filter given keeps only the matching fills: ``client_order_id``,
        ``broker``, ``instrument``, and ``strategy``, the strategy of the stored
        order the fill belongs to. ``limit`` keeps the newest ``limit`` of them.
        """
        return [
            fill
            for fill, _ in self.fills_with_strategy(
                client_order_id=client_order_id,
                broker=broker,
                strategy=strategy,
                instrument=instrument,
                limit=limit,
            )
        ]

    @_locked
    def fills_with_strategy(
        self,
        *,
        client_order_id: str | None = None,
        broker: str | None = None,
        strategy: str | None = None,
        instrument: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[Fill, str | None]]:
        """Like :meth:`fills`, each fill with the strategy of its order (None if no
        strategy placed it, or the order is not stored)."""
        where: list[str] = []
        params: list[str] = []
        for column, value in (
            ("f.client_order_id", client_order_id),
            ("f.broker", broker),
            ("o.strategy", strategy),
            ("f.instrument", instrument),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        # A fill belongs to the order with its client order id on the same broker.
        sql = (
            "SELECT f.*, o.strategy AS strategy, f.rowid AS seq FROM fills AS f "
            "LEFT JOIN orders AS o "
            "ON o.client_order_id = f.client_order_id AND o.broker = f.broker"
            + (f" WHERE {' AND '.join(where)}" if where else "")
        )
        sql = _newest(sql, "time, seq", "time DESC, seq DESC", limit)
        return [
            (_fill_from_row(row), row["strategy"])
            for row in _rows(self._db.conn.execute(sql, params))
        ]

    # -- orders and fills together: the engine's hot path -------------------

    def record(
        self,
        *,
        new_orders: Sequence[tuple[Order, str | None]] = (),
        orders: Sequence[Order] = (),
        fills: Sequence[Fill] = (),
    ) -> list[Fill]:
        """Store new orders and what a venue reported, in one transaction; return
        the fills that were new.

        ``new_orders`` are ``(order, strategy)`` inserted as by :meth:`insert_order`
        (a taken client order id is a :class:`StoreError`). Each of ``orders`` is
        a new state written as by :meth:`update_order`; an order not stored yet
        is inserted with no strategy (venues report orders rick did not place).
        Then each fill is stored once, as by :meth:`insert_fill`. If anything is
        refused, :class:`StoreError` is raised and nothing at all is written.
        """
        if not new_orders and not orders and not fills:
            return []
        with self._lock:
            conn = self._db.conn
            execute = conn.execute
            new: list[Fill] = []
            execute("BEGIN IMMEDIATE")
            try:
                for order, strategy in new_orders:
                    try:
                        execute(_INSERT_ORDER_SQL, (*_order_values(order), strategy))
                    except sqlite3.IntegrityError:
                        raise StoreError(
                            f"{self.path}: order {order.client_order_id} is already stored; "
                            "use update_order to change it"
                        ) from None
                for order in orders:
                    values = _order_values(order)
                    if execute(_UPDATE_ORDER_SQL, values).rowcount != 1:
                        if execute(_ORDER_BY_ID_SQL, (values[0],)).fetchone() is not None:
                            raise self._refusal(order, values)
                        execute(_INSERT_ORDER_SQL, (*values, None))
                for fill in fills:
                    if execute(_INSERT_FILL_SQL, _fill_values(fill)).rowcount == 1:
                        new.append(fill)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            return new

    # -- accounts ------------------------------------------------------------

    @_locked
    def save_account(self, account: Account) -> None:
        """Store ``account`` as its broker's latest snapshot.

        The first snapshot saved for a broker is remembered as its first equity
        and time (again after a change of account currency). A snapshot older
        than the stored one is ignored.
        """
        conn = self._db.conn
        values = (
            account.broker,
            account.currency,
            str(account.balance),
            str(account.equity),
            str(account.margin_used),
            str(account.margin_available),
            _time_text(account.time),
        )
        try:
            conn.execute(_SAVE_ACCOUNT_SQL, values)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    @_locked
    def accounts(self) -> list[AccountSnapshot]:
        """The latest snapshot of each broker's account, by broker name."""
        rows = _rows(self._db.conn.execute("SELECT * FROM accounts ORDER BY broker"))
        return [
            AccountSnapshot(
                account=Account(
                    broker=row["broker"],
                    currency=row["currency"],
                    balance=row["balance"],
                    equity=row["equity"],
                    margin_used=row["margin_used"],
                    margin_available=row["margin_available"],
                    time=row["time"],
                ),
                first_equity=Decimal(row["first_equity"]),
                first_time=datetime.fromisoformat(row["first_time"]),
            )
            for row in rows
        ]
