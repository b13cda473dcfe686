"""The tamper-evident audit log: the chain, tampering, concurrency, the trail, the sinks
and ``rick audit``."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from rick_core.cli import _build_cli
from rick_core.components import ComponentSetup
from rick_core.logs import forget_secrets, register_secret
from rick_core.plugins import ComponentInvalid, load_plugins
from rick_core.security.audit import (
    _TRIGGER_SQL,
    GENESIS_HASH,
    AuditError,
    AuditLog,
    AuditLogSink,
    AuditTrail,
    AuditUnavailable,
    JsonlSink,
    append_now,
    cli_actor,
    record_to_json,
)
from rick_core.security.records import Actor, AuditRecord, AuditSink, EventType, Severity

ALICE = Actor(kind="user", name="alice", source="cli")
ENGINE = Actor(kind="strategy", name="momentum", source="engine")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def rec(
    n: int, *, actor: Actor = ENGINE, type: str = "ORDER_FILLED", **details: Any
) -> AuditRecord:
    return AuditRecord(
        type=type,
        actor=actor,
        time=T0 + timedelta(minutes=n),
        details={"n": n, **details},
    )


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RICK_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def log(home: Path) -> Iterator[AuditLog]:
    with AuditLog.open(home / "audit.db") as opened:
        yield opened


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CLI runner whose rick sees only the built-in plugins."""
    from rick_core import plugins

    real = plugins.load_plugins
    monkeypatch.setattr(
        plugins, "load_plugins", lambda *a, **kw: real(*a, **{"entry_points": (), **kw})
    )
    return CliRunner()


@pytest.fixture
def secrets() -> Iterator[None]:
    forget_secrets()
    yield
    forget_secrets()


def expected_hash(row: dict[str, Any]) -> str:
    """The documented chain hash, recomputed independently from an exported line."""
    actor = row["actor"]
    text = json.dumps(
        [
            row["sequence"],
            row["time"],
            row["type"],
            row["severity"],
            actor["kind"],
            actor["name"],
            actor["source"],
            row["details"],
            row["previous_hash"],
        ],
        separators=(",", ":"),
        ensure_ascii=False,
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def raw(path: Path) -> sqlite3.Connection:
    """A raw connection, as an attacker with file access would use."""
    return sqlite3.connect(path, isolation_level=None)


def drop_triggers(conn: sqlite3.Connection) -> None:
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")


def fill(log: AuditLog, n: int = 10) -> list[AuditRecord]:
    return log.append_many(rec(i) for i in range(1, n + 1))


# --------------------------------------------------------------------------- the chain


def test_hash_chain_content(log: AuditLog, tmp_path: Path) -> None:
    first = log.append(
        rec(1, price=Decimal("1.10"), when=T0, note="café ✓", nested={"b": [1, Decimal("2.50")]})
    )
    second, third = log.append_many([rec(2, actor=ALICE, type="MODE_SWITCHED"), rec(3)])

    assert (first.sequence, second.sequence, third.sequence) == (1, 2, 3)
    assert first.previous_hash == GENESIS_HASH == "0" * 64
    assert second.previous_hash == first.hash and third.previous_hash == second.hash
    assert len({first.hash, second.hash, third.hash}) == 3

    assert log.export(tmp_path / "out.jsonl") == 3
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    for line, record in zip(lines, (first, second, third), strict=True):
        assert line["hash"] == record.hash == expected_hash(line)
    assert lines[0]["time"] == "2024-05-01T12:01:00.000000+00:00"
    # Decimals exact, as text; datetimes as UTC ISO text; keys sorted
    assert lines[0]["details"] == {
        "n": 1,
        "nested": {"b": [1, "2.50"]},
        "note": "café ✓",
        "price": "1.10",
        "when": "2024-05-01T12:00:00+00:00",
    }
    stored = raw(log.path).execute("SELECT details FROM audit WHERE sequence = 1").fetchone()[0]
    assert stored == (
        '{"n":1,"nested":{"b":[1,"2.50"]},"note":"café ✓","price":"1.10",'
        '"when":"2024-05-01T12:00:00+00:00"}'
    )
    assert log.verify().ok


def test_append_returns_records_as_stored_and_query_reads_them_back(log: AuditLog) -> None:
    appended = log.append(
        AuditRecord(type="API_KEY_CREATED", actor=ALICE, severity="warning", details={"k": "v"})
    )
    (read,) = log.query()
    assert read == appended
    assert read.severity is Severity.WARNING and read.time.tzinfo is UTC


def test_append_many_is_all_or_nothing(log: AuditLog) -> None:
    fill(log, 2)
    bad = AuditRecord(type="ORDER_FILLED", actor=ENGINE, details={"mixed": {1: "a", "b": 2}})
    with pytest.raises(ValueError, match="ORDER_FILLED: details cannot be stored as JSON"):
        log.append_many([rec(3), bad])
    assert [r.sequence for r in log.query()] == [1, 2]
    assert log.append(rec(3)).sequence == 3
    assert log.verify().ok


def test_the_triggers_refuse_update_and_delete(log: AuditLog) -> None:
    fill(log, 3)
    conn = raw(log.path)
    for statement in (
        "UPDATE audit SET details = '{}' WHERE sequence = 2",
        "DELETE FROM audit WHERE sequence = 3",
        "DELETE FROM head",
        "UPDATE head SET sequence = 2",
    ):
        with pytest.raises(sqlite3.DatabaseError, match="audit log is append-only"):
            conn.execute(statement)
    conn.close()
    assert log.verify().ok and log.verify().records == 3


SCRIPT = """
import sys
from pathlib import Path
from rick_core.security.audit import AuditLog
from rick_core.security.records import Actor, AuditRecord

path, who, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
actor = Actor(kind="user", name=who, source="cli")
with AuditLog.open(path) as log:
    for i in range(n):
        log.append(AuditRecord(type="CONFIGURATION_CHANGED", actor=actor, details={"i": i}))
"""


def test_two_processes_appending_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"  # created by whichever process gets there first
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(path), who, "500"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("a", "b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    with AuditLog.open(path, read_only=True) as log:
        assert log.verify() == log.verify().__class__(ok=True, records=1000)
        records = log.query()
    assert [r.sequence for r in records] == list(range(1, 1001))
    for who in ("a", "b"):
        assert [r.details["i"] for r in records if r.actor.name == who] == list(range(500))


def test_secrets_never_reach_the_log(log: AuditLog, secrets: None, tmp_path: Path) -> None:
    secret = "sk-live-0123456789abcdef"
    register_secret(secret)

    class Leaky:
        def __str__(self) -> str:
            return f"token={secret}"

    stored = log.append(
        AuditRecord(
            type="CREDENTIAL_STORED",
            actor=Actor(kind="user", name=f"alice {secret}", source="cli"),
            details={
                "value": secret,
                "nested": {"list": [f"Bearer {secret}"], secret: 1},
                "object": Leaky(),
            },
        )
    )
    log.export(tmp_path / "out.jsonl")
    dump = "\n".join(raw(log.path).iterdump())
    for text in (dump, (tmp_path / "out.jsonl").read_text(), repr(stored), record_to_json(stored)):
        assert secret not in text
    assert stored.details["value"] == "***"
    assert log.verify().ok


def test_a_newer_or_foreign_file_is_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(AuditError, match=r"schema version 99.*newer rick-core"):
        AuditLog.open(newer)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(AuditError, match=r"junk\.db: not an audit log"):
        AuditLog.open(junk)
    with pytest.raises(AuditError, match="no audit log there"):
        AuditLog.open(tmp_path / "missing.db", read_only=True)
    assert not (tmp_path / "missing.db").exists()


def test_append_now_and_cli_actor(home: Path) -> None:
    actor = cli_actor()
    assert (actor.kind, actor.source) == ("user", "cli") and actor.name
    record = append_now(home, EventType.API_KEY_REVOKED, actor=actor, details={"key": "ops"})
    assert (record.sequence, record.type, record.severity) == (
        1,
        EventType.API_KEY_REVOKED,
        Severity.INFO,
    )
    again = append_now(
        home, "MODE_SWITCHED", actor=actor, details={"to": "live"}, severity=Severity.CRITICAL
    )
    assert again.previous_hash == record.hash
    with AuditLog.open(home / "audit.db", read_only=True) as log:
        assert log.verify().records == 2


# --------------------------------------------------------------------------- tampering


def _swap(conn: sqlite3.Connection, a: int, b: int) -> None:
    cols = (
        "time, type, severity, actor_kind, actor_name, actor_source, details, previous_hash, hash"
    )
    row_a = conn.execute(f"SELECT {cols} FROM audit WHERE sequence = ?", (a,)).fetchone()
    row_b = conn.execute(f"SELECT {cols} FROM audit WHERE sequence = ?", (b,)).fetchone()
    sets = ", ".join(f"{c.strip()} = ?" for c in cols.split(","))
    conn.execute(f"UPDATE audit SET {sets} WHERE sequence = ?", (*row_b, a))
    conn.execute(f"UPDATE audit SET {sets} WHERE sequence = ?", (*row_a, b))


def _forge(conn: sqlite3.Connection, sequence: int, previous: str) -> None:
    """Insert a record with a correctly computed hash, as someone knowing the format would."""
    from rick_core.security.audit import record_hash

    fields = (sequence, "2024-05-01T13:00:00.000000+00:00", "ORDER_FILLED", "info")
    actor = ("user", "mallory", "cli")
    details = '{"n":99}'
    digest = record_hash(*fields, *actor, details, previous)
    conn.execute(
        "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*fields, *actor, details, previous, digest),
    )


def _hash_of(conn: sqlite3.Connection, sequence: int) -> str:
    value: str = conn.execute("SELECT hash FROM audit WHERE sequence = ?", (sequence,)).fetchone()[
        0
    ]
    return value


def _insert_in_the_middle(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE audit SET sequence = sequence + 1000 WHERE sequence > 5")
    conn.execute("UPDATE audit SET sequence = sequence - 999 WHERE sequence > 1000")
    _forge(conn, 6, _hash_of(conn, 5))


TAMPERS = {
    "change details": (
        lambda c: c.execute("UPDATE audit SET details = '{\"n\":500}' WHERE sequence = 5"),
        5,
        "it was changed",
    ),
    "change only the time": (
        lambda c: c.execute(
            "UPDATE audit SET time = '2024-05-01T12:05:00.000001+00:00' WHERE sequence = 5"
        ),
        5,
        "it was changed",
    ),
    "delete one in the middle": (
        lambda c: c.execute("DELETE FROM audit WHERE sequence = 5"),
        5,
        "record 5 is missing",
    ),
    "delete the last": (
        lambda c: c.execute("DELETE FROM audit WHERE sequence = 10"),
        10,
        "the last records were deleted",
    ),
    "delete the first": (
        lambda c: c.execute("DELETE FROM audit WHERE sequence = 1"),
        1,
        "record 1 is missing",
    ),
    "append a forged record": (
        lambda c: _forge(c, 11, _hash_of(c, 10)),
        11,
        "added outside the audit log",
    ),
    "insert one in the middle": (_insert_in_the_middle, 7, "previous_hash does not match"),
    "swap two": (lambda c: _swap(c, 3, 4), 3, "previous_hash does not match"),
    "replace the last record and its hash": (
        lambda c: (
            c.execute("DELETE FROM audit WHERE sequence = 10"),
            _forge(c, 10, _hash_of(c, 9)),
        ),
        10,
        "does not match the hash kept in the head",
    ),
}


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_verify_catches_tampering(runner: CliRunner, log: AuditLog, home: Path, name: str) -> None:
    fill(log, 10)
    tamper, bad, reason = TAMPERS[name]
    conn = raw(log.path)
    drop_triggers(conn)
    tamper(conn)
    conn.close()

    result = log.verify()
    assert (result.ok, result.first_bad_sequence, result.records) == (False, bad, bad - 1)
    assert reason in result.reason

    cli = runner.invoke(_build_cli(), ["audit", "verify"])
    assert cli.exit_code == 1, cli.output
    assert f"audit log verification FAILED at record {bad}: " in cli.output
    assert reason in cli.output and f"the {bad - 1} record(s) before it are intact" in cli.output


def test_verify_reports_dropped_triggers_even_with_an_intact_chain(
    runner: CliRunner, log: AuditLog
) -> None:
    fill(log, 3)
    conn = raw(log.path)
    drop_triggers(conn)
    conn.close()
    result = log.verify()
    assert (result.ok, result.records, result.first_bad_sequence) == (False, 3, None)
    assert "append-only triggers were removed" in result.reason
    cli = runner.invoke(_build_cli(), ["audit", "verify"])
    assert cli.exit_code == 1 and "FAILED at the log" in cli.output


def test_appending_after_the_tail_was_cut_keeps_the_evidence(log: AuditLog) -> None:
    fill(log, 5)
    conn = raw(log.path)
    drop_triggers(conn)
    conn.execute("DELETE FROM audit WHERE sequence = 5")
    conn.close()
    # the next record continues from the head, so the gap stays visible
    assert log.append(rec(6)).sequence == 6
    assert log.verify().first_bad_sequence == 5


def test_rewriting_records_and_head_together_needs_an_external_copy(
    log: AuditLog, tmp_path: Path
) -> None:
    """The documented limit: only a copy kept elsewhere (a jsonl sink) shows this."""
    fill(log, 5)
    log.export(tmp_path / "copy.jsonl")
    conn = raw(log.path)
    drop_triggers(conn)
    conn.execute("DELETE FROM audit WHERE sequence = 5")
    conn.execute("UPDATE head SET sequence = 4, hash = ?", (_hash_of(conn, 4),))
    # An attacker who also puts back the exact triggers leaves a log that verifies.
    for statement in _TRIGGER_SQL.values():
        conn.execute(statement)
    conn.close()
    assert log.verify().ok
    copy = [json.loads(line) for line in (tmp_path / "copy.jsonl").read_text().splitlines()]
    assert len(copy) == 5 and copy[-1]["sequence"] == 5  # the copy still has it


def test_triggers_put_back_altered_are_caught(log: AuditLog) -> None:
    fill(log, 3)
    conn = raw(log.path)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit WHEN 0 BEGIN SELECT 1; END")
    conn.commit()
    conn.close()
    result = log.verify()
    assert not result.ok and "audit_no_update" in result.reason


def test_insert_or_replace_cannot_rewrite_history(log: AuditLog) -> None:
    fill(log, 3)
    conn = raw(log.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute(
            "INSERT OR REPLACE INTO audit SELECT sequence, time, type, severity, actor_kind, "
            "actor_name, actor_source, '{}', previous_hash, hash FROM audit WHERE sequence = 2"
        )
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("INSERT OR REPLACE INTO head (id, sequence, hash) VALUES (1, 1, 'x')")
    conn.close()
    assert log.verify().ok


def test_a_value_of_the_wrong_type_is_named_not_a_crash(log: AuditLog) -> None:
    fill(log, 4)
    conn = raw(log.path)
    drop_triggers(conn)
    conn.execute("UPDATE audit SET actor_name = X'41' WHERE sequence = 3")
    conn.commit()
    conn.close()
    result = log.verify()
    assert (result.ok, result.first_bad_sequence) == (False, 3)


# --------------------------------------------------------------------------- query and export


def test_query_filters(log: AuditLog) -> None:
    log.append_many(
        [
            rec(1),
            rec(2, actor=ALICE, type="MODE_SWITCHED"),
            rec(3, type="ORDER_REJECTED"),
            rec(4, actor=ALICE, type="API_KEY_CREATED"),
            rec(5),
        ]
    )

    def ns(**kw: Any) -> list[int]:
        return [r.details["n"] for r in log.query(**kw)]

    assert ns() == [1, 2, 3, 4, 5]
    assert ns(type="ORDER_FILLED") == [1, 5]
    assert ns(type=[EventType.MODE_SWITCHED, "ORDER_REJECTED"]) == [2, 3]
    assert ns(actor="alice") == [2, 4]
    assert ns(since=T0 + timedelta(minutes=2)) == [2, 3, 4, 5]
    assert ns(until=T0 + timedelta(minutes=2, seconds=30)) == [1, 2]
    # another offset means the same instant
    tokyo = datetime(2024, 5, 1, 21, 3, tzinfo=timezone(timedelta(hours=9)))
    assert ns(since=tokyo) == [3, 4, 5]
    assert ns(limit=2) == [4, 5]
    assert ns(type="ORDER_FILLED", limit=1) == [5]
    assert ns(actor="nobody") == []


def test_export_writes_every_field(log: AuditLog, tmp_path: Path) -> None:
    records = fill(log, 4)
    assert log.export(tmp_path / "all.jsonl") == 4
    lines = (tmp_path / "all.jsonl").read_text().splitlines()
    assert lines == [record_to_json(r) for r in records]
    first = json.loads(lines[0])
    assert set(first) == {
        "sequence",
        "time",
        "type",
        "severity",
        "actor",
        "details",
        "previous_hash",
        "hash",
    }
    assert first["actor"] == {"kind": "strategy", "name": "momentum", "source": "engine"}


# --------------------------------------------------------------------------- rick audit


def test_cli_without_a_log_creates_nothing(runner: CliRunner, home: Path) -> None:
    cli = _build_cli()
    result = runner.invoke(cli, ["audit", "verify"])
    assert result.exit_code == 0 and "no audit log yet" in result.output
    result = runner.invoke(cli, ["audit", "query", "--json"])
    assert result.exit_code == 0 and result.stdout.strip() == "[]"
    result = runner.invoke(cli, ["audit", "query"])
    assert result.exit_code == 0 and "no audit log yet" in result.output
    result = runner.invoke(cli, ["audit", "export", str(home / "out.jsonl")])
    assert result.exit_code == 0 and "no audit log yet" in result.output
    assert not (home / "audit.db").exists() and not (home / "out.jsonl").exists()


def test_cli_verify_query_export(runner: CliRunner, log: AuditLog, home: Path) -> None:
    log.append_many([rec(1), rec(2, actor=ALICE, type="MODE_SWITCHED", to="live"), rec(3)])
    cli = _build_cli()

    result = runner.invoke(cli, ["audit", "verify"])
    assert result.exit_code == 0 and result.output == "ok: 3 records, chain intact\n"

    result = runner.invoke(cli, ["audit", "query", "--type", "mode_switched"])
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split() == ["seq", "time", "(UTC)", "type", "severity", "actor", "via", "details"]
    assert row.split() == [
        "2",
        "2024-05-01",
        "12:02:00",
        "MODE_SWITCHED",
        "info",
        "user:alice",
        "cli",
        '{"n":2,"to":"live"}',
    ]

    result = runner.invoke(
        cli,
        ["audit", "query", "--json", "--type", "ORDER_FILLED", "--since", "2024-05-01T12:02"],
    )
    assert result.exit_code == 0, result.output
    assert [r["sequence"] for r in json.loads(result.output)] == [3]
    result = runner.invoke(cli, ["audit", "query", "--json", "--actor", "alice", "--limit", "1"])
    assert [r["details"]["to"] for r in json.loads(result.output)] == ["live"]
    result = runner.invoke(cli, ["audit", "query", "--until", "2024-05-01 12:01:30"])
    assert len(result.output.splitlines()) == 2
    result = runner.invoke(cli, ["audit", "query", "--actor", "nobody"])
    assert result.output == "no audit records match\n"

    bad = runner.invoke(cli, ["audit", "query", "--type", "ORDERS"])
    assert bad.exit_code == 2 and "'ORDERS' is not an event type; use one of" in bad.output
    bad = runner.invoke(cli, ["audit", "query", "--since", "yesterday"])
    assert bad.exit_code == 2 and "'yesterday' is not an ISO 8601 date" in bad.output

    out = home / "export.jsonl"
    result = runner.invoke(cli, ["audit", "export", str(out)])
    assert result.exit_code == 0 and f"exported 3 records to {out}" in result.output
    assert [json.loads(line)["sequence"] for line in out.read_text().splitlines()] == [1, 2, 3]


# --------------------------------------------------------------------------- the trail


class MemorySink(AuditSink):
    def __init__(self, name: str = "mem", fail_on: int | None = None) -> None:
        self.name = name
        self.fail_on = fail_on
        self.written: list[AuditRecord] = []
        self.events: list[str] = []
        self.flushed = trio.Event()

    async def write(self, record: AuditRecord) -> None:
        if self.fail_on is not None and record.details["n"] == self.fail_on:
            raise OSError("disk full")
        self.written.append(record)
        self.events.append("write")

    async def flush(self) -> None:
        self.events.append("flush")
        self.flushed.set()

    async def close(self) -> None:
        self.events.append("close")


async def test_trail_backpressure_never_drops(log: AuditLog) -> None:
    trail = AuditTrail(log, capacity=2)
    await trail.emit(rec(1))
    assert trail.emit_nowait(rec(2))
    assert not trail.emit_nowait(rec(3))  # full: the caller must await emit
    with trio.move_on_after(0.05) as waited:
        await trail.emit(rec(3))
    assert waited.cancelled_caught  # emit waited for room

    async with trio.open_nursery() as nursery:
        await nursery.start(trail.run)
        for n in range(3, 50):
            await trail.emit(rec(n))  # waits for the writer each time the queue is full
        await trail.aclose()
    assert [r.details["n"] for r in log.query()] == list(range(1, 50))
    assert trail.written == 49 and not trail.failed.is_set()


@pytest.mark.parametrize("inline_batch", [0, 64, 10_000])
async def test_trail_aclose_drains_and_flushes_and_sinks_get_every_record_in_order(
    log: AuditLog, inline_batch: int
) -> None:
    sinks = [MemorySink("a"), MemorySink("b")]
    trail = AuditTrail(log, sinks, max_batch=7, inline_batch=inline_batch)
    async with trio.open_nursery() as nursery:
        await nursery.start(trail.run)
        for n in range(1, 101):
            assert trail.emit_nowait(rec(n))
        await trail.aclose()
    stored = log.query()
    assert len(stored) == 100 and log.verify().ok
    for sink in sinks:
        assert sink.written == stored  # filled in: sequence and hashes, in order
        assert sink.events[-2:] == ["flush", "close"]
    with pytest.raises(AuditUnavailable, match="closed"):
        await trail.emit(rec(101))
    with pytest.raises(AuditUnavailable):
        trail.emit_nowait(rec(101))


async def test_trail_aclose_without_a_writer_still_drains(log: AuditLog) -> None:
    sink = MemorySink()
    trail = AuditTrail(log, [sink])
    for n in range(1, 6):
        await trail.emit(rec(n))
    await trail.aclose()
    assert [r.sequence for r in sink.written] == [1, 2, 3, 4, 5]
    assert sink.events[-2:] == ["flush", "close"]


async def test_trail_flushes_sinks_periodically(log: AuditLog) -> None:
    sink = MemorySink()
    trail = AuditTrail(log, [sink], flush_interval=0.01)
    async with trio.open_nursery() as nursery:
        await nursery.start(trail.run)
        await trail.emit(rec(1))
        with trio.fail_after(5):
            await sink.flushed.wait()
        await trail.aclose()


async def test_a_failing_sink_fails_the_trail_closed(log: AuditLog) -> None:
    sink = MemorySink("siem", fail_on=3)
    trail = AuditTrail(log, [sink], max_batch=2)
    for n in range(1, 11):
        await trail.emit(rec(n))  # queued before the writer starts
    async with trio.open_nursery() as nursery:
        await nursery.start(trail.run)
        with trio.fail_after(5):
            await trail.failed.wait()
    assert "audit sink 'siem' failed: OSError: disk full" in trail.failure
    assert "2 record(s) stored in the audit log did not reach it" in trail.failure
    assert "6 record(s) could not be written to the audit log" in trail.failure
    assert [r.details["n"] for r in trail.unwritten] == [5, 6, 7, 8, 9, 10]
    assert [r.details["n"] for r in log.query()] == [1, 2, 3, 4]
    assert [r.details["n"] for r in sink.written] == [1, 2]
    with pytest.raises(AuditUnavailable, match="disk full"):
        await trail.emit(rec(11))
    with pytest.raises(AuditUnavailable, match="disk full"):
        trail.emit_nowait(rec(11))
    await trail.aclose()  # returns at once


async def test_a_failing_log_fails_the_trail_and_releases_waiting_emitters(
    home: Path,
) -> None:
    log = AuditLog.open(home / "audit.db")
    log.close()  # every append now raises
    trail = AuditTrail(log, capacity=1)
    await trail.emit(rec(1))
    outcome: list[str] = []

    async def blocked_emit() -> None:
        try:
            await trail.emit(rec(2))  # waits: the queue is full
            outcome.append("queued")
        except AuditUnavailable:
            outcome.append("refused")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_emit)
        await trio.sleep(0.01)
        await nursery.start(trail.run)
    assert trail.failed.is_set()
    assert "the audit log refused a record: AuditError" in trail.failure
    # rec(2) was either taken into the queue (then kept as unwritten) or refused: never lost
    kept = [r.details["n"] for r in trail.unwritten]
    assert kept == ([1, 2] if outcome == ["queued"] else [1])
    assert f"{len(kept)} record(s) could not be written" in trail.failure


# --------------------------------------------------------------------------- built-in sinks


def test_the_builtin_sinks_are_registered_and_validate_options(home: Path) -> None:
    plugins = load_plugins({}, entry_points=())
    assert {n: c.plugin for n, c in plugins.of_kind("audit_sink").items()} == {
        "jsonl": "rick_core.builtins.audit_sinks",
        "sqlite": "rick_core.builtins.audit_sinks",
    }
    source = f"{home / 'rick.toml'} [audit_sinks.copy]"

    def build(kind: str, **options: Any) -> Any:
        setup = ComponentSetup(name="copy", options=options, home=home, source=source)
        return plugins.build("audit_sink", kind, setup)

    assert isinstance(build("jsonl"), JsonlSink)
    assert build("jsonl").path == home / "audit.jsonl"
    assert build("sqlite", path="/elsewhere/copy.db").path == Path("/elsewhere/copy.db")
    assert isinstance(build("sqlite"), AuditLogSink)
    with pytest.raises(
        ComponentInvalid, match=r"\[audit_sinks.copy\]: unknown option\(s\) \['pth'\]"
    ):
        build("jsonl", pth="x")
    with pytest.raises(ComponentInvalid, match="option 'path' must be a file name"):
        build("jsonl", path=3)
    with pytest.raises(ComponentInvalid, match="option 'path' is the main audit log"):
        build("sqlite", path="audit.db")
    assert not list(home.iterdir())  # factories do no I/O


async def test_jsonl_and_sqlite_sinks_keep_verifiable_copies(log: AuditLog, home: Path) -> None:
    jsonl = JsonlSink(ComponentSetup(name="j", options={"path": "copies/a.jsonl"}, home=home))
    copy = AuditLogSink(ComponentSetup(name="s", options={"path": "copies/b.db"}, home=home))
    trail = AuditTrail(log, [jsonl, copy], max_batch=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(trail.run)
        for n in range(1, 2501):
            await trail.emit(rec(n, price=Decimal("1.10")))
        await trail.aclose()
    assert not trail.failed.is_set()
    stored = log.query()
    lines = (home / "copies" / "a.jsonl").read_text().splitlines()
    assert lines == [record_to_json(r) for r in stored]
    with AuditLog.open(home / "copies" / "b.db", read_only=True) as second:
        assert second.verify().ok
        copied = second.query()
    assert [(r.sequence, r.hash, r.details) for r in copied] == [
        (r.sequence, r.hash, r.details) for r in stored
    ]


async def test_jsonl_sink_never_writes_a_secret(home: Path, secrets: None) -> None:
    register_secret("hunter2-very-secret")
    sink = JsonlSink(ComponentSetup(name="j", home=home))
    await sink.write(rec(1, password="hunter2-very-secret"))
    await sink.close()
    text = (home / "audit.jsonl").read_text()
    assert "hunter2" not in text and '"password":"***"' in text


async def test_records_gathered_for_a_batch_survive_a_cancelled_writer(log: AuditLog) -> None:
    trail = AuditTrail(log, gather=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(trail.run)
        for i in range(3):
            await trail.emit(rec(i))
        await trio.sleep(0.1)  # the writer waits inside its gather window
        nursery.cancel_scope.cancel()
    await trail.aclose()
    assert trail.written == 3 and len(log.query()) == 3 and not trail.failure


async def test_a_log_held_by_another_process_shows_as_lag(log: AuditLog) -> None:
    trail = AuditTrail(log, inline_batch=0)
    blocker = raw(log.path)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    async with trio.open_nursery() as nursery:
        await nursery.start(trail.run)
        assert trail.lag() == 0
        await trail.emit(rec(1))
        await trio.sleep(0.6)
        assert trail.lag() >= 0.5  # the engine refuses new orders past MAX_AUDIT_LAG
        blocker.rollback()
        await trio.sleep(1.0)  # the writer's retry (busy timeout) now goes through
        assert trail.written == 1 and trail.lag() == 0
        await trail.aclose()
    blocker.close()


def test_verify_fails_when_the_log_is_gone_but_rick_has_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from rick_core.cli import _build_cli
    from rick_core.store import Store

    monkeypatch.setenv("RICK_HOME", str(tmp_path))
    result = CliRunner().invoke(_build_cli(), ["audit", "verify"])
    assert result.exit_code == 0 and "no audit log yet" in result.output  # a fresh home
    Store.open(tmp_path / "rick.db").close()
    result = CliRunner().invoke(_build_cli(), ["audit", "verify"])
    assert result.exit_code == 1 and "the audit log is missing although rick.db" in result.output
