"""The tamper-evident audit log, and the trail that feeds it from the engine.

:class:`AuditLog` is rick's own audit store: a SQLite file of its own
(``$RICK_HOME/audit.db``), in WAL mode, written append-only. Every record is
chained to the one before it by a SHA-256 hash, so a record changed, removed,
inserted or moved afterwards is found by :meth:`AuditLog.verify`
(``rick audit verify``), even if whoever did it first dropped the database
triggers that refuse ``UPDATE`` and ``DELETE``.

The chain, so that anyone can check it without rick:

- records are numbered 1, 2, 3, ... with no gaps (``sequence``);
- ``details`` is stored as canonical JSON: keys sorted, no spaces, UTF-8 kept as
  it is, every Decimal as its exact text (``"1.10"``), every datetime as ISO 8601
  text; registered secrets (:func:`rick_core.logs.register_secret`) are replaced
  by ``***`` before anything is hashed or stored;
- ``time`` is ISO 8601 in UTC with microseconds (``2024-05-01T12:00:00.000000+00:00``);
- ``hash`` is the SHA-256 (lower-case hex) of the UTF-8 bytes of the compact JSON
  array ``[sequence, time, type, severity, actor_kind, actor_name, actor_source,
  details, previous_hash]`` where ``details`` is the canonical details object
  itself (``json.dumps(..., separators=(",", ":"), ensure_ascii=False)``);
- ``previous_hash`` is the hash of the record before; the first record's is
  :data:`GENESIS_HASH`, 64 zeros.

A chain alone cannot show that its *last* records were cut off. The log
therefore also keeps its head (the last sequence and hash) in a one-row table
updated in the same transaction as every append, and ``verify`` checks the
records against it. Someone able to rewrite both the records and the head
consistently (recomputing every hash) can only be caught by comparing with a
copy kept elsewhere: configure an audit sink (the built-in ``jsonl`` sink, on
another disk or shipped off the machine) for that.

:class:`AuditTrail` is the asynchronous front the engine uses: a bounded queue
and a writer task that appends in batches, hands every record to the
configured audit sinks, and fails closed (:attr:`AuditTrail.failed`) if the log
or a sink breaks.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import math
import os
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from json.encoder import encode_basestring
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

import trio
from attrs import frozen

from rick_core.components import ComponentSetup
from rick_core.logs import redact, redact_processor
from rick_core.model import to_utc
from rick_core.security.records import Actor, AuditRecord, AuditSink, EventType, Severity

__all__ = [
    "AUDIT_FILENAME",
    "GENESIS_HASH",
    "INLINE_BATCH",
    "AuditError",
    "AuditLog",
    "AuditLogSink",
    "AuditTrail",
    "AuditUnavailable",
    "JsonlSink",
    "VerifyResult",
    "append_now",
    "canonical_details",
    "cli_actor",
    "record_hash",
    "record_to_json",
]

AUDIT_FILENAME: Final = "audit.db"
"""The audit log's file name in the rick home folder."""

GENESIS_HASH: Final = "0" * 64
"""The ``previous_hash`` of the first record."""

SCHEMA_VERSION: Final = 1

_BUSY_TIMEOUT_S: Final = 10.0

_SCHEMA: Final = (
    """
    CREATE TABLE audit (
        sequence INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        type TEXT NOT NULL,
        severity TEXT NOT NULL,
        actor_kind TEXT NOT NULL,
        actor_name TEXT NOT NULL,
        actor_source TEXT NOT NULL,
        details TEXT NOT NULL,
        previous_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        sequence INTEGER NOT NULL,
        hash TEXT NOT NULL
    )
    """,
    f"INSERT INTO head (id, sequence, hash) VALUES (1, 0, '{GENESIS_HASH}')",
    """
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END
    """,
    """
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END
    """,
    """
    CREATE TRIGGER head_no_delete BEFORE DELETE ON head
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END
    """,
    """
    CREATE TRIGGER head_forward_only BEFORE UPDATE ON head
    WHEN NEW.sequence <= OLD.sequence OR NEW.id != OLD.id
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END
    """,
    # INSERT OR REPLACE deletes without firing DELETE triggers: refuse any insert
    # that would land on or before the head, and any second head.
    """
    CREATE TRIGGER audit_no_rewrite BEFORE INSERT ON audit
    WHEN NEW.sequence <= (SELECT sequence FROM head WHERE id = 1)
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END
    """,
    """
    CREATE TRIGGER head_no_insert BEFORE INSERT ON head
    WHEN (SELECT COUNT(*) FROM head) > 0
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END
    """,
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
_TRIGGER_SQL: Final = {
    statement.split()[2]: " ".join(statement.split())
    for statement in _SCHEMA
    if statement.split()[:2] == ["CREATE", "TRIGGER"]
}
"""Each append-only trigger's exact text: verify refuses a trigger that was swapped."""
_TRIGGERS: Final = frozenset(_TRIGGER_SQL)

_COLUMNS: Final = (
    "sequence, time, type, severity, actor_kind, actor_name, actor_source, "
    "details, previous_hash, hash"
)
_INSERT: Final = f"INSERT INTO audit ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_SELECT: Final = f"SELECT {_COLUMNS} FROM audit"

_Row = tuple[int, str, str, str, str, str, str, str, str, str]
# record, redacted details, then the stored text of time ... details
_Prepared = tuple[AuditRecord, Mapping[str, Any], str, str, str, str, str, str, str]


class AuditError(Exception):
    """The audit log cannot be used; the message names the file and what to do."""


class AuditUnavailable(RuntimeError):
    """The audit trail cannot take records (it failed, or it is closed): the
    caller must not do what it wanted to audit (fail closed)."""


@frozen
class VerifyResult:
    """What :meth:`AuditLog.verify` found.

    ``records`` is how many records were found intact: all of them when ``ok``;
    otherwise those before ``first_bad_sequence``, the first record found wrong
    (None when the problem is not one record, e.g. missing triggers), and
    ``reason`` says why.
    """

    ok: bool
    records: int
    first_bad_sequence: int | None = None
    reason: str = ""


# --------------------------------------------------------------------------- encoding


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


_encode_details = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
).encode


def _redacted_details(details: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """``details`` with every registered secret replaced by ``***``, and its canonical JSON."""
    redacted: Mapping[str, Any] = redact_processor(None, "", dict(details))
    text = _encode_details(redacted)
    # A secret can still be there only inside text the JSON default made (str() of
    # an unknown object); redact_processor checks those too, so this is a backstop.
    # Redacting the decoded structure, not the text, keeps the JSON valid.
    if redact(text) != text:
        redacted = redact_processor(None, "", json.loads(text))
        text = _encode_details(redacted)
    return redacted, text


def canonical_details(details: Mapping[str, Any]) -> str:
    """``details`` as canonical JSON (sorted keys, no spaces, UTF-8, Decimal as exact
    text), with every registered secret replaced by ``***``."""
    return _redacted_details(details)[1]


def record_hash(
    sequence: int,
    time: str,
    type: str,
    severity: str,
    actor_kind: str,
    actor_name: str,
    actor_source: str,
    details: str,
    previous_hash: str,
) -> str:
    """The chain hash of one record, from its stored (text) fields; see the module doc."""
    e = encode_basestring
    text = (
        f"[{sequence},{e(time)},{e(type)},{e(severity)},{e(actor_kind)},"
        f"{e(actor_name)},{e(actor_source)},{details},{e(previous_hash)}]"
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="microseconds")


def _row_to_record(row: _Row) -> AuditRecord:
    sequence, time, type_, severity, kind, name, source, details, previous, digest = row
    return AuditRecord(
        type=type_,
        actor=Actor(kind=kind, name=name, source=source),
        severity=severity,
        time=datetime.fromisoformat(time),
        details=json.loads(details),
        sequence=sequence,
        previous_hash=previous,
        hash=digest,
    )


def _row_json(row: _Row) -> str:
    sequence, time, type_, severity, kind, name, source, details, previous, digest = row
    e = encode_basestring
    return (
        f'{{"sequence":{sequence},"time":{e(time)},"type":{e(type_)},'
        f'"severity":{e(severity)},"actor":{{"kind":{e(kind)},"name":{e(name)},'
        f'"source":{e(source)}}},"details":{details},"previous_hash":{e(previous)},'
        f'"hash":{e(digest)}}}'
    )


def record_to_json(record: AuditRecord) -> str:
    """One record as one line of JSON (no newline): every field, details canonical.

    The format of ``rick audit export``, ``rick audit query --json`` and the
    ``jsonl`` sink. Unset fields (a record not yet appended) are ``null``.
    """
    e = encode_basestring
    actor = record.actor
    return (
        f'{{"sequence":{json.dumps(record.sequence)},"time":{e(_iso(record.time))},'
        f'"type":{e(record.type.value)},"severity":{e(record.severity.value)},'
        f'"actor":{{"kind":{e(redact(actor.kind))},"name":{e(redact(actor.name))},'
        f'"source":{e(redact(actor.source))}}},"details":{canonical_details(record.details)},'
        f'"previous_hash":{json.dumps(record.previous_hash)},"hash":{json.dumps(record.hash)}}}'
    )


# --------------------------------------------------------------------------- the log


class AuditLog:
    """The hash-chained, append-only audit store (one SQLite file).

    Safe to share between threads, and between processes: every append is
    one ``BEGIN IMMEDIATE`` transaction that reads the head of the chain inside
    it, so a CLI command can append while the engine runs. Use
    :meth:`open` to get one, :meth:`close` (or ``with``) when done.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, *, read_only: bool) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path
        self.read_only = read_only

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: Path | str, *, read_only: bool = False) -> AuditLog:
        """Open the audit log at ``path``, creating it (and its folder) if needed.

        With ``read_only`` the file must exist and is never written: for
        ``rick audit`` commands. Raises :class:`AuditError` naming the file.
        """
        path = Path(path)
        try:
            if read_only:
                if not path.exists():
                    raise AuditError(f"{path}: no audit log there")
                conn = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=ro",
                    uri=True,
                    timeout=_BUSY_TIMEOUT_S,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    path,
                    timeout=_BUSY_TIMEOUT_S,
                    isolation_level=None,
                    check_same_thread=False,
                )
        except (OSError, sqlite3.Error) as exc:
            raise AuditError(
                f"{path}: cannot open the audit log: {exc}. Check that RICK_HOME is a "
                "folder rick can write to."
            ) from None
        try:
            version = cls._check_version(conn, path)
            if not read_only:
                cls._configure(conn, path)
                if version == 0:
                    cls._create(conn)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, read_only=read_only)

    @staticmethod
    def _check_version(conn: sqlite3.Connection, path: Path) -> int:
        try:
            version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise AuditError(
                f"{path}: not an audit log ({exc}). Move the file away to start a new one."
            ) from None
        if version > SCHEMA_VERSION:
            raise AuditError(
                f"{path}: the audit log has schema version {version}, but this rick-core "
                f"knows versions up to {SCHEMA_VERSION}; it was written by a newer "
                "rick-core. Upgrade rick-core. The file was not modified."
            )
        return version

    @staticmethod
    def _configure(conn: sqlite3.Connection, path: Path) -> None:
        for attempt in range(50):  # another process may be creating the file right now
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise AuditError(f"{path}: cannot open the audit log: {exc}") from None
                threading.Event().wait(0.05)
        if str(mode).lower() != "wal":
            raise AuditError(
                f"{path}: SQLite refused WAL mode (journal mode is {mode!r}); keep "
                "RICK_HOME on a local disk, not a network share"
            )
        # FULL: a committed audit record survives a power cut, not just a crash.
        # Batched appends amortise the extra fsync.
        conn.execute("PRAGMA synchronous=FULL")

    @staticmethod
    def _create(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # another process may have created it while we waited for the lock
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the file. Idempotent."""
        with self._lock:
            self._conn.close()

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
        return f"AuditLog({str(self.path)!r})"

    # ----------------------------------------------------------------- appending

    def append(self, record: AuditRecord) -> AuditRecord:
        """Append one record; returns it with ``sequence`` and the hashes filled in
        (and its details as stored: secrets redacted)."""
        return self.append_many((record,))[0]

    def append_many(self, records: Iterable[AuditRecord]) -> list[AuditRecord]:
        """Append ``records`` in order, in one transaction: all of them or none.

        Any ``sequence``/hash already set on a record is ignored: the log numbers
        and chains what it stores. Returns the records as stored.
        """
        prepared = [self._prepare(r) for r in records]
        if not prepared:
            return []
        if self.read_only:
            raise AuditError(f"{self.path}: opened read-only; cannot append")
        out: list[AuditRecord] = []
        rows: list[_Row] = []
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise AuditError(f"{self.path}: cannot append to the audit log: {exc}") from None
            try:
                head = conn.execute("SELECT sequence, hash FROM head WHERE id = 1").fetchone()
                if head is None:
                    raise AuditError(
                        f"{self.path}: the audit log's head record is missing: the file was "
                        "tampered with or damaged. Run `rick audit verify`, keep the file "
                        "as evidence and move it away to start a new log."
                    )
                sequence, previous = head
                for record, mapping, time, type_, severity, kind, name, source, details in prepared:
                    sequence += 1
                    digest = record_hash(
                        sequence, time, type_, severity, kind, name, source, details, previous
                    )
                    rows.append(
                        (sequence, time, type_, severity, kind, name, source, details, previous,
                         digest)
                    )  # fmt: skip
                    out.append(
                        AuditRecord(
                            type=record.type,
                            actor=Actor(kind=kind, name=name, source=source),
                            severity=record.severity,
                            time=record.time,
                            details=mapping,
                            sequence=sequence,
                            previous_hash=previous,
                            hash=digest,
                        )
                    )
                    previous = digest
                conn.executemany(_INSERT, rows)
                conn.execute(
                    "UPDATE head SET sequence = ?, hash = ? WHERE id = 1", (sequence, previous)
                )
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise AuditError(
                        f"{self.path}: cannot append to the audit log: {exc}"
                    ) from None
                raise
        return out

    @staticmethod
    def _prepare(record: AuditRecord) -> _Prepared:
        if not isinstance(record, AuditRecord):
            raise TypeError(f"expected an AuditRecord, got {type(record).__name__}")
        try:
            details, text = _redacted_details(record.details)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"audit record {record.type.value}: details cannot be stored as JSON: {exc}"
            ) from None
        actor = record.actor
        return (
            record,
            details,
            _iso(record.time),
            record.type.value,
            record.severity.value,
            redact(actor.kind),
            redact(actor.name),
            redact(actor.source),
            text,
        )

    # ----------------------------------------------------------------- reading

    def _read(self, sql: str, params: Sequence[Any] = ()) -> Iterator[_Row]:
        """Rows of ``sql`` in one read transaction (a consistent snapshot), streamed."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN")
                try:
                    yield from conn.execute(sql, params)
                finally:
                    conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise AuditError(f"{self.path}: cannot read the audit log: {exc}") from None

    def verify(self) -> VerifyResult:
        """Recompute every hash and link, and check the head and the triggers.

        Finds a record changed, removed (in the middle or at the end), inserted
        or moved, even if the triggers were dropped first. Streams the rows.
        """
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN")
                try:
                    return self._verify(conn)
                finally:
                    conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise AuditError(f"{self.path}: cannot read the audit log: {exc}") from None

    @staticmethod
    def _verify(conn: sqlite3.Connection) -> VerifyResult:
        head = conn.execute("SELECT sequence, hash FROM head WHERE id = 1").fetchone()
        e = encode_basestring
        sha256 = hashlib.sha256
        expected = 1
        previous = GENESIS_HASH
        for row in conn.execute(f"{_SELECT} ORDER BY sequence"):
            seq, time, type_, severity, kind, name, source, details, prev, digest = row
            if type(seq) is not int or not all(type(v) is str for v in row[1:]):
                at = seq if type(seq) is int else expected
                return VerifyResult(
                    False, at - 1, at, "a value has the wrong type: it was changed directly"
                )
            if seq != expected:
                return VerifyResult(
                    False,
                    expected - 1,
                    expected,
                    f"record {expected} is missing (the next one is {seq}): records were deleted",
                )
            if prev != previous:
                before = f"record {seq - 1}" if seq > 1 else "the start of the chain"
                return VerifyResult(
                    False,
                    seq - 1,
                    seq,
                    f"its previous_hash does not match the hash of {before}: a record was "
                    "inserted, deleted, replaced or moved",
                )
            text = (
                f"[{seq},{e(time)},{e(type_)},{e(severity)},{e(kind)},"
                f"{e(name)},{e(source)},{details},{e(prev)}]"
            )
            if sha256(text.encode()).hexdigest() != digest:
                return VerifyResult(
                    False, seq - 1, seq, "its contents do not match its hash: it was changed"
                )
            previous = digest
            expected += 1
        count = expected - 1
        if head is None:
            return VerifyResult(
                False, count, None, "the head record is missing: the log was tampered with"
            )
        head_seq, head_hash = head
        if head_seq > count:
            return VerifyResult(
                False,
                count,
                count + 1,
                f"the log ends at record {count} but its head says {head_seq}: "
                "the last records were deleted",
            )
        if head_seq < count:
            return VerifyResult(
                False,
                head_seq,
                head_seq + 1,
                f"the head says the log ends at record {head_seq}: records after it were "
                "added outside the audit log",
            )
        if head_hash != previous:
            return VerifyResult(
                False,
                count - 1,
                count,
                "the last record does not match the hash kept in the head: it was replaced",
            )
        triggers = {
            name
            for name, sql in conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
            )
            if isinstance(sql, str) and " ".join(sql.split()) == _TRIGGER_SQL.get(name)
        }
        missing = sorted(_TRIGGERS - triggers)
        if missing:
            return VerifyResult(
                False,
                count,
                None,
                f"the chain is intact but the append-only triggers were removed or altered "
                f"({', '.join(missing)}): someone modified the database directly",
            )
        return VerifyResult(True, count)

    def query(
        self,
        *,
        type: EventType | str | Collection[EventType | str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        actor: str | None = None,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        """Records in sequence order, filtered.

        ``type``: one event type or several; ``since``/``until``: times (aware),
        inclusive; ``actor``: the actor's name; ``limit``: only the last N matches.
        """
        where: list[str] = []
        params: list[Any] = []
        if type is not None:
            kinds = [type] if isinstance(type, EventType | str) else list(type)
            values = [EventType(t).value for t in kinds]
            where.append(f"type IN ({', '.join('?' * len(values))})")
            params += values
        if since is not None:
            where.append("time >= ?")
            params.append(_iso(to_utc(since)))
        if until is not None:
            where.append("time <= ?")
            params.append(_iso(to_utc(until)))
        if actor is not None:
            where.append("actor_name = ?")
            params.append(actor)
        sql = _SELECT + (f" WHERE {' AND '.join(where)}" if where else "")
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY sequence DESC LIMIT ?) ORDER BY sequence"
            params.append(limit)
        else:
            sql += " ORDER BY sequence"
        return [_row_to_record(row) for row in self._read(sql, params)]

    def export(self, path: Path | str) -> int:
        """Write every record to ``path`` as JSON lines (see :func:`record_to_json`);
        returns how many. The file is replaced."""
        path = Path(path)
        count = 0
        with path.open("w", encoding="utf-8") as out:
            for row in self._read(f"{_SELECT} ORDER BY sequence"):
                out.write(_row_json(row))
                out.write("\n")
                count += 1
        return count


# --------------------------------------------------------------------------- CLI helpers


def cli_actor() -> Actor:
    """The actor of a ``rick`` command: the OS user, through the CLI."""
    # The account the process runs as, not $USER (which anyone can set).
    try:
        import pwd

        user = f"{pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()})"
    except (ImportError, KeyError):
        user = f"uid {os.geteuid()}" if hasattr(os, "geteuid") else getpass.getuser()
    return Actor(kind="user", name=user, source="cli")


def append_now(
    home: Path,
    type: EventType | str,
    *,
    actor: Actor,
    details: Mapping[str, Any],
    severity: Severity | str = Severity.INFO,
) -> AuditRecord:
    """Append one record to ``home/audit.db`` now (opening and closing it): for CLI
    commands. Safe while the engine is appending to the same file.

    Raises :class:`AuditError` if the log cannot be written; the command must then
    fail rather than act unaudited.
    """
    record = AuditRecord(type=type, actor=actor, severity=severity, details=details)
    with AuditLog.open(Path(home) / AUDIT_FILENAME) as log:
        return log.append(record)


# --------------------------------------------------------------------------- the trail


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


INLINE_BATCH: Final = 64
"""By default, :class:`AuditTrail` appends batches up to this size in the trio
thread, larger ones in a worker thread, so that a burst never stalls the engine."""


AUDIT_GATHER = 0.01
"""Seconds the engine's audit trail waits to group records into one commit (one
fsync, one thread hand-off). Measured on the order round trip (bench/): 2 ms
costs the order path a fifth of its throughput in thread hand-offs, 10 ms about
half of that; records reach the disk within this window plus the fsync."""


class AuditTrail:
    """The engine's way into the audit log: queue records, never lose one.

    Start :meth:`run` in a nursery (``await nursery.start(trail.run)``); it
    appends whatever is queued (up to ``max_batch`` at a time) to ``log`` in a
    worker thread, then hands each stored record to every sink in order, and
    flushes the sinks at least every ``flush_interval`` seconds while records
    arrive. Batches of up to ``inline_batch`` records are appended on the trio
    thread instead: a few records commit in well under a millisecond, with no
    thread hand-off (and trio's autojumping ``MockClock``, which jumps ahead
    while a worker thread runs, stays exact). ``inline_batch=0`` sends every
    batch to a worker thread, so the event loop never waits for a commit's
    fsync nor for another process's write lock (up to 10 s); a large value
    never uses a thread. :meth:`emit` waits while ``capacity`` records are queued
    (backpressure; nothing is ever dropped). :meth:`aclose` drains the queue,
    flushes and closes the sinks; the trail does not close ``log``.

    If the log or a sink raises, the trail fails closed: :attr:`failed` is set,
    :attr:`failure` says why and how many records could not be written (those
    are kept in :attr:`unwritten`), and every later :meth:`emit` raises
    :class:`AuditUnavailable`. The engine then opens no new risk.
    """

    def __init__(
        self,
        log: AuditLog,
        sinks: Sequence[AuditSink] = (),
        capacity: int = 10_000,
        *,
        max_batch: int = 1_000,
        flush_interval: float = 1.0,
        inline_batch: int = INLINE_BATCH,
        gather: float = 0.0,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"AuditTrail capacity must be at least 1, got {capacity}")
        if max_batch < 1:
            raise ValueError(f"AuditTrail max_batch must be at least 1, got {max_batch}")
        self.log = log
        self.sinks = tuple(sinks)
        self.capacity = capacity
        self.max_batch = max_batch
        self.flush_interval = flush_interval
        self.inline_batch = inline_batch
        self.gather = gather
        """Seconds the writer waits for more records to share a batch (0: none)."""
        self._send, self._receive = trio.open_memory_channel[AuditRecord](capacity)
        self.failed = trio.Event()
        """Set when the trail failed (see :attr:`failure`)."""
        self.failure = ""
        """Why the trail failed; empty while it works."""
        self.unwritten: list[AuditRecord] = []
        """Records that could not be appended to the log because the trail failed."""
        self.written = 0
        """How many records were appended to the log so far."""
        self.accepted = 0
        """How many records were queued so far."""
        self._progress_at: float | None = None
        self._closing = False
        self._running = False
        self._stopped = trio.Event()
        self._finished = trio.Event()

    # ----------------------------------------------------------------- producers

    def _unavailable(self) -> AuditUnavailable:
        return AuditUnavailable(self.failure or "the audit trail is closed")

    async def emit(self, record: AuditRecord) -> None:
        """Queue ``record``; waits while the queue is full. Raises
        :class:`AuditUnavailable` once the trail failed or was closed."""
        if self.failure or self._closing:
            raise self._unavailable()
        try:
            await self._send.send(record)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self._unavailable() from None
        self._accepted()

    def emit_nowait(self, record: AuditRecord) -> bool:
        """Queue ``record`` without waiting: False if the queue is full (then
        ``await emit(record)``). Raises :class:`AuditUnavailable` like :meth:`emit`."""
        if self.failure or self._closing:
            raise self._unavailable()
        try:
            self._send.send_nowait(record)
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self._unavailable() from None
        self._accepted()
        return True

    def _accepted(self) -> None:
        if self.accepted == self.written:  # the queue was empty: the wait starts now
            self._progress_at = trio.current_time()
        self.accepted += 1

    def lag(self) -> float:
        """Seconds since the log last accepted a batch while records wait (0 when
        none wait): a stuck log shows here long before it fails."""
        if self.accepted <= self.written or self._progress_at is None:
            return 0.0
        return trio.current_time() - self._progress_at

    # ----------------------------------------------------------------- the writer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: runs until :meth:`aclose` (or failure), then returns."""
        if self._running or self._finished.is_set():
            raise RuntimeError("AuditTrail.run is already running or has finished")
        self._running = True
        self._stopped = trio.Event()
        task_status.started()
        try:
            await self._write_loop()
        finally:
            self._running = False
            self._stopped.set()

    async def aclose(self) -> None:
        """Stop taking records, write every queued one, flush and close the sinks.

        Shielded from cancellation: it returns once the queue is drained (or the
        trail failed). Idempotent.
        """
        with trio.CancelScope(shield=True):
            self._closing = True
            await self._send.aclose()
            if self._running:
                await self._stopped.wait()
            if not self._finished.is_set():  # run never started, or was cancelled
                await self._write_loop()

    async def _gather(
        self, receive: trio.MemoryReceiveChannel[AuditRecord], batch: list[AuditRecord]
    ) -> None:
        """Add to ``batch`` what is queued, and (with :attr:`gather`) what arrives
        within that many seconds, up to :attr:`max_batch`."""
        with trio.move_on_after(self.gather):
            while len(batch) < self.max_batch:
                try:
                    batch.append(receive.receive_nowait())
                    continue
                except trio.EndOfChannel:
                    return
                except trio.WouldBlock:
                    if not self.gather:
                        return
                try:
                    batch.append(await receive.receive())
                except trio.EndOfChannel:
                    return

    async def _write_loop(self) -> None:
        receive = self._receive
        next_flush = math.inf  # records were written since the last flush: flush by then
        try:
            while True:
                with trio.move_on_at(next_flush) as wait:
                    first = await receive.receive()
                if wait.cancelled_caught:
                    if not await self._flush_sinks():
                        return
                    next_flush = math.inf
                    continue
                batch = [first]
                # Group commit: give the records of the next moments a chance to
                # share this commit (one fsync and one thread hand-off per batch,
                # not per record), unless the queue already holds a full batch.
                try:
                    await self._gather(receive, batch)
                except BaseException:
                    # Cancelled while gathering: what was taken off the queue is
                    # written before the cancellation goes on.
                    with trio.CancelScope(shield=True):
                        await self._write(batch)
                    raise
                # Shielded: a batch is appended and handed to every sink, or not started.
                with trio.CancelScope(shield=True):
                    if not await self._write(batch):
                        return
                now = trio.current_time()
                if next_flush == math.inf:
                    next_flush = now + self.flush_interval
                elif now >= next_flush:
                    if not await self._flush_sinks():
                        return
                    next_flush = math.inf
        except (trio.EndOfChannel, trio.ClosedResourceError):
            pass
        with trio.CancelScope(shield=True):
            if await self._flush_sinks():
                for sink in self.sinks:
                    try:
                        await sink.close()
                    except Exception as exc:
                        await self._fail(
                            f"audit sink {sink.name!r} failed to close: {_describe(exc)}"
                        )
                        return
            self._finished.set()

    async def _write(self, batch: list[AuditRecord]) -> bool:
        try:
            if len(batch) > self.inline_batch:
                stored = await trio.to_thread.run_sync(self.log.append_many, batch)
            else:
                stored = self.log.append_many(batch)
        except Exception as exc:
            await self._fail(f"the audit log refused a record: {_describe(exc)}", batch)
            return False
        self.written += len(stored)
        self._progress_at = trio.current_time()
        for sink in self.sinks:
            done = 0
            try:
                for record in stored:
                    await sink.write(record)
                    done += 1
            except Exception as exc:
                missed = len(stored) - done
                await self._fail(
                    f"audit sink {sink.name!r} failed: {_describe(exc)} ({missed} record(s) "
                    "stored in the audit log did not reach it)"
                )
                return False
        return True

    async def _flush_sinks(self) -> bool:
        for sink in self.sinks:
            try:
                await sink.flush()
            except Exception as exc:
                await self._fail(f"audit sink {sink.name!r} failed to flush: {_describe(exc)}")
                return False
        return True

    async def _fail(self, why: str, unwritten: Sequence[AuditRecord] = ()) -> None:
        kept = list(unwritten)
        while True:
            try:
                kept.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        # Producers waiting in emit() now get AuditUnavailable instead of waiting forever.
        self._receive.close()
        self.unwritten.extend(kept)
        self.failure = (
            f"{why}; {len(kept)} record(s) could not be written to the audit log "
            "(kept in AuditTrail.unwritten)"
        )
        self.failed.set()
        self._finished.set()
        import structlog

        structlog.get_logger("rick.audit").critical(
            "audit trail failed: refusing new audited actions", reason=self.failure
        )
        for sink in self.sinks:  # keep what the sinks did accept
            # already failing: the first failure is the one reported
            with contextlib.suppress(Exception):
                await sink.close()


# --------------------------------------------------------------------------- built-in sinks


def _sink_path(setup: ComponentSetup, default: str) -> Path:
    where = setup.source or f"audit sink {setup.name!r}"
    unknown = sorted(set(setup.options) - {"path"})
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; the only option is 'path'")
    raw = setup.options.get("path", default)
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(
            f"{where}: option 'path' must be a file name (relative to the rick home "
            f"{setup.home}), found {raw!r}"
        )
    path: Path = setup.home / Path(raw).expanduser()
    return path


class JsonlSink(AuditSink):
    """The ``jsonl`` audit sink: appends each record as one JSON line to a file.

    Option ``path`` (relative to the rick home; default ``audit.jsonl``). Each
    line is :func:`record_to_json`; ``flush`` writes the buffer and fsyncs. Keep
    this file elsewhere (another disk, shipped off the machine) to catch a
    rewrite of the whole audit log.
    """

    def __init__(self, setup: ComponentSetup) -> None:
        self.name = setup.name
        self.path = _sink_path(setup, "audit.jsonl")
        self._file: IO[str] | None = None

    def _open(self) -> IO[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.path.open("a", encoding="utf-8")

    async def write(self, record: AuditRecord) -> None:
        """Buffer one line (the file is opened on the first record)."""
        if self._file is None:
            self._file = await trio.to_thread.run_sync(self._open)
        self._file.write(record_to_json(record) + "\n")

    @staticmethod
    def _sync(file: IO[str]) -> None:
        file.flush()
        os.fsync(file.fileno())

    async def flush(self) -> None:
        """Write the buffered lines and fsync the file."""
        if self._file is not None:
            await trio.to_thread.run_sync(self._sync, self._file)

    async def close(self) -> None:
        """Flush, fsync and close the file."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                await trio.to_thread.run_sync(self._sync, file)
            finally:
                file.close()


class AuditLogSink(AuditSink):
    """The ``sqlite`` audit sink: a second hash-chained :class:`AuditLog` file.

    Option ``path`` (relative to the rick home; default ``audit-copy.db``; not
    the main ``audit.db``). The copy numbers and chains the records itself, so
    it verifies on its own (``AuditLog.open(path).verify()``); its sequences
    match the main log's if both started together. Records are buffered and
    appended in one transaction on ``flush`` (or every 1,000 records).
    """

    batch = 1_000

    def __init__(self, setup: ComponentSetup) -> None:
        self.name = setup.name
        self.path = _sink_path(setup, "audit-copy.db")
        main = setup.home / AUDIT_FILENAME
        if self.path.absolute() == main.absolute():
            where = setup.source or f"audit sink {setup.name!r}"
            raise ValueError(
                f"{where}: option 'path' is the main audit log {main}; give the copy "
                "another file (better, on another disk)"
            )
        self._log: AuditLog | None = None
        self._buffer: list[AuditRecord] = []

    async def write(self, record: AuditRecord) -> None:
        """Buffer the record; appends once ``batch`` records are buffered."""
        self._buffer.append(record)
        if len(self._buffer) >= self.batch:
            await self.flush()

    def _append(self, records: list[AuditRecord]) -> None:
        if self._log is None:
            self._log = AuditLog.open(self.path)
        self._log.append_many(records)

    async def flush(self) -> None:
        """Append every buffered record to the copy (durable once this returns)."""
        if not self._buffer:
            return
        records, self._buffer = self._buffer, []
        try:
            await trio.to_thread.run_sync(self._append, records)
        except BaseException:
            self._buffer[:0] = records  # not appended: keep them for the next try
            raise

    async def close(self) -> None:
        """Flush, then close the copy."""
        try:
            await self.flush()
        finally:
            if self._log is not None:
                log, self._log = self._log, None
                log.close()
