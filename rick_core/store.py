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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar, cast

from sqlite_utils import Database

from rick_core.model import Fill, Order, OrderRequest, OrderStatus

__all__ = ["MIGRATIONS", "Migration", "SchemaTooNewError", "Store", "StoreError"]


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


_ORDER_COLUMNS = (
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
        dict.fromkeys(_ORDER_COLUMNS, "TEXT"),
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


MIGRATIONS: tuple[Migration, ...] = (Migration(1, "orders and fills", _create_orders_and_fills),)
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


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _time_text(value: datetime | None) -> str | None:
    # Fixed microsecond precision keeps text order equal to time order.
    return None if value is None else value.astimezone(UTC).isoformat(timespec="microseconds")


def _order_row(order: Order) -> dict[str, str | None]:
    request = order.request
    return {
        "client_order_id": request.client_order_id,
        "broker": order.broker,
        "instrument": request.instrument,
        "side": request.side.value,
        "quantity": _text(request.quantity),
        "type": request.type.value,
        "limit_price": _text(request.limit_price),
        "stop_price": _text(request.stop_price),
        "time_in_force": request.time_in_force.value,
        "expire_time": _time_text(request.expire_time),
        "stop_loss": _text(request.stop_loss),
        "take_profit": _text(request.take_profit),
        "tag": request.tag,
        "status": order.status.value,
        "venue_order_id": order.venue_order_id,
        "filled_quantity": _text(order.filled_quantity),
        "average_fill_price": _text(order.average_fill_price),
        "created_at": _time_text(order.created_at),
        "updated_at": _time_text(order.updated_at),
        "reject_reason": order.reject_reason,
    }


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


def _fill_row(fill: Fill) -> dict[str, str | None]:
    return {
        "broker": fill.broker,
        "fill_id": fill.fill_id,
        "client_order_id": fill.client_order_id,
        "instrument": fill.instrument,
        "side": fill.side.value,
        "quantity": _text(fill.quantity),
        "price": _text(fill.price),
        "time": _time_text(fill.time),
        "fee": _text(fill.fee),
        "fee_currency": fill.fee_currency,
        "venue_order_id": fill.venue_order_id,
    }


def _fill_from_row(row: Mapping[str, Any]) -> Fill:
    return Fill(**{name: row[name] for name in _FILL_COLUMNS})


_WORKING_STATUSES = tuple(s.value for s in OrderStatus if not s.is_final)


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

    @property
    def schema_version(self) -> int:
        """The schema version of the open store (``PRAGMA user_version``)."""
        return _user_version(self._db.conn)

    # -- orders --------------------------------------------------------------

    @_locked
    def insert_order(self, order: Order) -> None:
        """Store a new order. Raises :class:`StoreError` if its client order id is taken."""
        try:
            self._db.table("orders").insert(_order_row(order))
        except sqlite3.IntegrityError:
            raise StoreError(
                f"{self.path}: order {order.client_order_id} is already stored; "
                "use update_order to change it"
            ) from None

    @_locked
    def update_order(self, order: Order) -> None:
        """Store the new state of an order, found by its client order id.

        Only what changes over an order's life is written (status, fills,
        venue id, protection, reject reason, update time). Raises
        :class:`StoreError` if no order with that id is stored, or if the rest
        of ``order`` differs from what is stored: a stored request never changes.
        """
        row = _order_row(order)
        del row["client_order_id"]
        client_order_id = order.client_order_id
        fixed = [c for c in row if c not in _MUTABLE_ORDER_COLUMNS]
        with self._db.atomic():
            cursor = self._db.execute(
                "UPDATE orders SET "
                + ", ".join(f"[{c}] = ?" for c in _MUTABLE_ORDER_COLUMNS)
                + " WHERE client_order_id = ? AND "
                + " AND ".join(f"[{c}] IS ?" for c in fixed),
                [row[c] for c in _MUTABLE_ORDER_COLUMNS]
                + [client_order_id]
                + [row[c] for c in fixed],
            )
            if cursor.rowcount == 1:
                return
            stored = self.get_order(client_order_id)
        if stored is None:
            raise StoreError(
                f"{self.path}: cannot update order {client_order_id}: it is not stored; "
                "use insert_order first"
            )
        stored_row = _order_row(stored)
        changed = sorted(c for c in fixed if stored_row[c] != row[c])
        raise StoreError(
            f"{self.path}: cannot update order {client_order_id}: {', '.join(changed)} "
            "differ from the stored order, and a stored request never changes"
        )

    @_locked
    def get_order(self, client_order_id: str) -> Order | None:
        """The stored order with this client order id, or None."""
        rows = self._db.table("orders").rows_where("client_order_id = ?", [client_order_id])
        row = next(iter(rows), None)
        return None if row is None else _order_from_row(row)

    @_locked
    def orders(self, *, broker: str | None = None, open_only: bool = False) -> list[Order]:
        """Stored orders, oldest first (by ``created_at``, then client order id).

        ``broker`` keeps one broker's orders; ``open_only`` keeps the orders not in
        a final state (pending, submitted, open, partially filled).
        """
        where: list[str] = []
        params: list[str] = []
        if broker is not None:
            where.append("broker = ?")
            params.append(broker)
        if open_only:
            where.append(f"status IN ({', '.join('?' for _ in _WORKING_STATUSES)})")
            params.extend(_WORKING_STATUSES)
        rows = self._db.table("orders").rows_where(
            " AND ".join(where) or None, params, order_by="created_at, client_order_id"
        )
        return [_order_from_row(row) for row in rows]

    # -- fills ---------------------------------------------------------------

    @_locked
    def insert_fill(self, fill: Fill) -> bool:
        """Store a fill once: True if it was new, False if this broker's fill id is stored.

        Venues repeat fills (reconnects, reconciliation), so a repeat is a no-op
        and the fill first stored is kept.
        """
        row = _fill_row(fill)
        columns = list(row)
        with self._db.atomic():
            cursor = self._db.execute(
                f"INSERT OR IGNORE INTO fills ({', '.join(f'[{c}]' for c in columns)}) "
                f"VALUES ({', '.join('?' for _ in columns)})",
                [row[c] for c in columns],
            )
        return cursor.rowcount == 1

    @_locked
    def fills(self, *, client_order_id: str | None = None) -> list[Fill]:
        """Stored fills in time order (then in the order stored), optionally of one order."""
        if client_order_id is None:
            rows = self._db.table("fills").rows_where(order_by="time, rowid")
        else:
            rows = self._db.table("fills").rows_where(
                "client_order_id = ?", [client_order_id], order_by="time, rowid"
            )
        return [_fill_from_row(row) for row in rows]
