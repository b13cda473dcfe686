"""The audit log's two hot paths, each against the raw SQLite cost of the same rows.

1. Append: ``AuditLog.append_many`` in batches (redaction, canonical JSON,
   SHA-256 chain, one ``BEGIN IMMEDIATE`` transaction per batch, synchronous=FULL),
   against a raw ``executemany`` INSERT of the same, precomputed rows into the
   same table, batch for batch, same pragmas.
   Goal: >= 50,000 records/s sustained over 200,000 records.

2. Verify: ``AuditLog.verify`` (every hash recomputed, every link and the head
   checked), against a raw read of the same rows in the same order.
   Goal: >= 200,000 records/s.

3. For information: the engine's path, ``AuditTrail.emit`` -> writer task ->
   ``append_many`` in a worker thread -> a ``jsonl`` sink, fsynced at the end.

Run: ``python bench/bench_audit.py [records] [batch]``.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import trio

from rick_core.components import ComponentSetup
from rick_core.security.audit import _SCHEMA, INLINE_BATCH, AuditLog, AuditTrail, JsonlSink
from rick_core.security.records import Actor, AuditRecord

ENGINE = Actor(kind="strategy", name="momentum", source="engine")


def records(n: int) -> list[AuditRecord]:
    """Order fills as the engine audits them: a handful of details, Decimals included."""
    return [
        AuditRecord(
            type="ORDER_FILLED",
            actor=ENGINE,
            details={
                "broker": "paper",
                "client_order_id": f"rk{i:026d}",
                "instrument": "EUR_USD",
                "side": "buy" if i % 2 else "sell",
                "quantity": Decimal("1000"),
                "price": Decimal("1.10234"),
                "fee": Decimal("0.02"),
            },
        )
        for i in range(n)
    ]


def append_rate(path: Path, recs: list[AuditRecord], batch: int) -> float:
    with AuditLog.open(path) as log:
        start = time.perf_counter()
        for i in range(0, len(recs), batch):
            log.append_many(recs[i : i + batch])
        return len(recs) / (time.perf_counter() - start)


def stored_rows(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT * FROM audit ORDER BY sequence").fetchall()
    conn.close()
    return rows


def raw_insert_rate(path: Path, rows: list[tuple[object, ...]], batch: int) -> float:
    """The same rows, already hashed, into the same table: batched executemany."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(_SCHEMA[0])  # the audit table, no triggers
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows[i : i + batch]
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(rows) / elapsed


def verify_rate(path: Path) -> tuple[float, int]:
    with AuditLog.open(path, read_only=True) as log:
        start = time.perf_counter()
        result = log.verify()
        elapsed = time.perf_counter() - start
    if not result.ok:
        raise SystemExit(f"bench log did not verify: {result}")
    return result.records / elapsed, result.records


def raw_read_rate(path: Path) -> float:
    """The same rows read in the same order, each unpacked, nothing computed."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    start = time.perf_counter()
    count = 0
    for row in conn.execute(
        "SELECT sequence, time, type, severity, actor_kind, actor_name, actor_source, "
        "details, previous_hash, hash FROM audit ORDER BY sequence"
    ):
        _seq, _t, _ty, _sev, _k, _n, _so, _d, _prev, _h = row
        count += 1
    elapsed = time.perf_counter() - start
    conn.close()
    return count / elapsed


async def trail_rate(folder: Path, recs: list[AuditRecord], inline_batch: int) -> float:
    with AuditLog.open(folder / f"trail-{inline_batch}.db") as log:
        sink = JsonlSink(
            ComponentSetup(
                name="copy", options={"path": f"trail-{inline_batch}.jsonl"}, home=folder
            )
        )
        trail = AuditTrail(log, [sink], inline_batch=inline_batch)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            await nursery.start(trail.run)
            for record in recs:
                if not trail.emit_nowait(record):
                    await trail.emit(record)
            await trail.aclose()
        elapsed = time.perf_counter() - start
    if trail.failed.is_set():
        raise SystemExit(f"bench trail failed: {trail.failure}")
    return len(recs) / elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000
    recs = records(n)
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        folder = Path(tmp)
        append = append_rate(folder / "audit.db", recs, batch)
        rows = stored_rows(folder / "audit.db")
        raw_insert = raw_insert_rate(folder / "raw.db", rows, batch)
        verify, count = verify_rate(folder / "audit.db")
        raw_read = raw_read_rate(folder / "audit.db")
        trail = trio.run(trail_rate, folder, recs[: min(n, 100_000)], INLINE_BATCH)
        threaded = trio.run(trail_rate, folder, recs[: min(n, 100_000)], 0)

        print(f"Audit log ({n:,} records, batches of {batch:,}, files in {folder.parent})")
        print(f"  append_many       {append:10,.0f}/s   (goal >= 50,000/s)")
        print(f"  raw INSERT        {raw_insert:10,.0f}/s   (same rows precomputed, executemany)")
        print(f"  ratio             {append / raw_insert:10.2f}x")
        print(f"  verify            {verify:10,.0f}/s   ({count:,} records; goal >= 200,000/s)")
        print(f"  raw read          {raw_read:10,.0f}/s   (same rows, same order)")
        print(f"  ratio             {verify / raw_read:10.2f}x")
        print(f"  AuditTrail        {trail:10,.0f}/s   (emit -> log -> jsonl sink, fsynced)")
        print(f"    all in a thread {threaded:10,.0f}/s   (inline_batch=0)")


if __name__ == "__main__":
    main()
