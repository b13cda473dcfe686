"""PaperFiles: the paper venue's snapshot and append-only journal, including what a
kill at any moment can leave on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rick_core.paper.journal import JOURNAL_FORMAT, JournalError, PaperFiles


def files(tmp_path: Path) -> PaperFiles:
    return PaperFiles(tmp_path / "paper", "sim")


def record(n: int) -> str:
    return json.dumps({"n": n, "text": 'é "quoted"'}, separators=(",", ":"))


def test_nothing_saved_loads_nothing(tmp_path: Path) -> None:
    assert files(tmp_path).load() == (None, [])


def test_compact_then_append_then_load(tmp_path: Path) -> None:
    f = files(tmp_path)
    f.compact({"version": 2, "balance": "1.00"})
    assert f.generation == 1
    for n in range(3):
        f.append(record(n))
    f.close()
    lines = f.journal_path.read_bytes().split(b"\n")
    assert json.loads(lines[0]) == {"paper_journal": JOURNAL_FORMAT, "generation": 1}
    assert f.size == f.journal_path.stat().st_size

    again = files(tmp_path)
    data, records = again.load()
    assert data == {"version": 2, "balance": "1.00"}
    assert records == [
        (2, json.loads(record(0))),
        (3, json.loads(record(1))),
        (4, json.loads(record(2))),
    ]
    assert again.generation == 1
    # compaction: a new snapshot of the next generation, an empty journal after it
    again.compact({"version": 2, "balance": "2.00"})
    again.close()
    data, records = files(tmp_path).load()
    assert (data, records) == ({"version": 2, "balance": "2.00"}, [])
    snapshot = json.loads(again.snapshot_path.read_text())
    assert snapshot["journal_generation"] == 2
    assert not list((tmp_path / "paper").glob("*.tmp"))


def test_the_journal_survives_without_close(tmp_path: Path) -> None:
    """Each record is one unbuffered write: nothing waits in a buffer for close()."""
    f = files(tmp_path)
    f.compact({"version": 2})
    f.append(record(7))
    # no close, no flush: another reader sees the line at once
    assert files(tmp_path).load()[1] == [(2, json.loads(record(7)))]
    f.close()


@pytest.mark.parametrize(
    "tail",
    [
        b'{"n":3,"te',  # a kill in the middle of the write
        b'{"n":3,"te\n',  # garbage that happens to end a line
        b"\x00\x00\x00\x00",  # a file system that extended the file but not the data
    ],
)
def test_a_damaged_last_line_is_dropped(tmp_path: Path, tail: bytes) -> None:
    f = files(tmp_path)
    f.compact({"version": 2})
    f.append(record(1))
    f.append(record(2))
    f.close()
    with open(f.journal_path, "ab") as out:
        out.write(tail)
    _, records = files(tmp_path).load()
    assert [n for n, _ in records] == [2, 3]
    assert [r["n"] for _, r in records] == [1, 2]


def test_a_complete_last_line_without_its_newline_is_kept(tmp_path: Path) -> None:
    """All of the record reached the file, only the line break did not: the change
    happened (in memory) and is kept, as a venue keeps an order whose answer was lost."""
    f = files(tmp_path)
    f.compact({"version": 2})
    f.close()
    with open(f.journal_path, "ab") as out:
        out.write(record(5).encode())
    assert [r["n"] for _, r in files(tmp_path).load()[1]] == [5]


def test_a_damaged_line_in_the_middle_is_reported_not_guessed(tmp_path: Path) -> None:
    f = files(tmp_path)
    f.compact({"version": 2})
    f.append(record(1))
    f.close()
    header, first = f.journal_path.read_bytes().splitlines()[:2]
    damaged = b'{"n":2,"te'
    f.journal_path.write_bytes(b"\n".join([header, first, damaged, record(3).encode(), b""]))
    with pytest.raises(
        JournalError, match=r"sim\.journal:3: damaged paper journal \(a line in the middle"
    ):
        files(tmp_path).load()
    # a JSON value that is not a record is as damaged
    f.journal_path.write_bytes(b"\n".join([header, first, b"[1, 2]", record(3).encode(), b""]))
    with pytest.raises(
        JournalError, match=r"sim\.journal:3: damaged paper journal \(expected a JSON object"
    ):
        files(tmp_path).load()


def test_a_journal_the_snapshot_already_holds_is_ignored(tmp_path: Path) -> None:
    """A kill between the two steps of a compaction: the new snapshot is written, the
    old journal not yet replaced. Its changes are in the snapshot: replaying them again
    would be wrong, so they are not."""
    f = files(tmp_path)
    f.compact({"version": 2, "balance": "1"})
    f.append(record(1))
    f.close()
    stale_journal = f.journal_path.read_bytes()
    f.compact({"version": 2, "balance": "2"})  # holds record 1's change
    f.close()
    f.journal_path.write_bytes(stale_journal)  # as if killed before the journal's rename
    assert files(tmp_path).load() == ({"version": 2, "balance": "2"}, [])


def test_a_journal_without_its_snapshot_is_ignored(tmp_path: Path) -> None:
    """Moving the snapshot away starts a fresh account, whatever journal is left."""
    f = files(tmp_path)
    f.compact({"version": 2})
    f.append(record(1))
    f.close()
    f.snapshot_path.unlink()
    assert files(tmp_path).load() == (None, [])


def test_a_foreign_header_is_reported(tmp_path: Path) -> None:
    f = files(tmp_path)
    f.compact({"version": 2})
    f.close()
    f.journal_path.write_bytes(b'{"something": "else"}\n' + record(1).encode() + b"\n")
    with pytest.raises(JournalError, match=r"sim\.journal:1: not a paper journal header"):
        files(tmp_path).load()


def test_a_snapshot_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    f = files(tmp_path)
    f.snapshot_path.parent.mkdir(parents=True)
    f.snapshot_path.write_text("[1]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        f.load()
    f.snapshot_path.write_text('{"journal_generation": "one"}')
    with pytest.raises(ValueError, match="journal_generation must be an integer"):
        f.load()


def test_append_needs_an_open_journal_and_close_is_idempotent(tmp_path: Path) -> None:
    f = files(tmp_path)
    with pytest.raises(OSError, match="is not open"):
        f.append(record(1))
    f.compact({"version": 2})
    f.close()
    f.close()
