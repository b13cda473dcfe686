"""Crash durability of the paper venue: a snapshot plus an append-only journal.

A real venue keeps its orders, fills and balances whatever happens to rick; the
paper venue does the same on disk, so that a rick killed at any moment (even by
``SIGKILL``) finds the simulated venue exactly as it was when it died, and
reconciles against it on restart.

Two files, in ``$RICK_HOME/paper/``:

``<name>.json``
    the snapshot: :meth:`PaperAccount.snapshot` plus ``journal_generation``,
    the generation of the journal that continues it. Written to a temporary
    file, flushed to disk and renamed over the old one, so it is always whole.
``<name>.journal``
    JSON lines: a header ``{"paper_journal": 1, "generation": G}``, then one
    record per state change of the account (:meth:`PaperAccount.take_changes`:
    the *new* state of every order, position and total an operation touched,
    and its new fills). Each record is one ``os.write`` of a whole line on an
    ``O_APPEND`` descriptor, unbuffered: once the call returns, the line is in
    the operating system's page cache and survives the death of the process
    (not a power cut: there is no ``fsync`` on this path, which is what keeps
    it cheap).

Loading reads the snapshot and replays the journal over it when its
generation matches (each record overwrites what it names). *Compaction* then
writes a new snapshot of generation ``G + 1`` and replaces the journal with an
empty one of that generation; a kill between the two leaves a journal whose
generation the snapshot no longer names, which is therefore ignored (its
changes are in the snapshot). The broker compacts on connect, on close and
whenever the journal grows past :data:`COMPACT_BYTES`.

One process at a time: while a broker is connected its process holds an
exclusive lock on ``<name>.lock`` (POSIX ``flock``; the operating system drops
it when the process dies, so a crash never leaves it behind). A second process
opening the same paper account is refused instead of writing over the first
one's journal. Within one process the lock is shared (a broker abandoned
without ``close`` and a new one, as a crash test does).

Damage: a last line that is not a JSON object (a kill in the middle of a
write) is dropped with a warning: its change was never confirmed to anyone. A
last line that is whole but for its line break is kept (the venue did make the
change; only the answer was lost). A damaged line anywhere else is an error
naming the file and line; nothing is guessed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import structlog

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

__all__ = ["COMPACT_BYTES", "JOURNAL_FORMAT", "AccountInUse", "JournalError", "PaperFiles"]

log = structlog.get_logger("rick.paper")

JOURNAL_FORMAT: Final = 1
"""The ``paper_journal`` version in a journal's header."""

COMPACT_BYTES: Final = 32 * 1024 * 1024
"""A journal longer than this is compacted into the snapshot (some 30,000 orders)."""

_APPEND_FLAGS: Final = os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0)


class JournalError(ValueError):
    """The journal cannot be replayed without guessing; the message says where and why."""


class AccountInUse(OSError):
    """Another process has this paper account open."""


_HELD: dict[Path, int] = {}
"""Lock files this process holds, with their descriptors."""


class PaperFiles:
    """The snapshot and journal of one paper account (see the module documentation)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.snapshot_path: Final = folder / f"{name}.json"
        self.journal_path: Final = folder / f"{name}.journal"
        self.generation = 0
        """The generation of the journal being written (0: none yet)."""
        self.size = 0
        """Bytes in the journal being written."""
        self.lock_path: Final = folder / f"{name}.lock"
        self._fd: int | None = None

    # -- one process at a time -----------------------------------------------

    def lock(self) -> None:
        """Take the account's lock for this process; :class:`AccountInUse` if another
        process holds it. Without ``fcntl`` (Windows) nothing is locked."""
        path = self.lock_path
        if path in _HELD or fcntl is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise AccountInUse(
                f"{path}: another process has this paper account open (a second rick run?); "
                "stop it first, or give this broker another name"
            ) from None
        _HELD[path] = fd

    def unlock(self) -> None:
        """Let the lock go (idempotent)."""
        fd = _HELD.pop(self.lock_path, None)
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    # -- loading -------------------------------------------------------------

    def load(self) -> tuple[dict[str, Any] | None, list[tuple[int, dict[str, Any]]]]:
        """The snapshot (None when there is none) and the journal records to replay over
        it, each with its line number, oldest first.

        Without a snapshot the journal is ignored: it belongs to an account that was
        moved away. Raises ``OSError`` or ``ValueError`` for a snapshot that cannot be
        read, :class:`JournalError` for a journal that cannot be replayed.
        """
        if not self.snapshot_path.exists():
            return None, []
        data = json.loads(self.snapshot_path.read_text("utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        generation = data.pop("journal_generation", None)
        if generation is None:  # written before the journal existed
            return data, []
        if isinstance(generation, bool) or not isinstance(generation, int):
            raise ValueError(f"journal_generation must be an integer, got {generation!r}")
        self.generation = generation
        return data, self._read_journal(generation)

    def _read_journal(self, generation: int) -> list[tuple[int, dict[str, Any]]]:
        path = self.journal_path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return []  # killed after the snapshot, before the journal's first write
        lines = raw.split(b"\n")
        complete = lines[-1] == b""  # the file ends with a newline
        if complete:
            lines.pop()
        if not lines:
            return []
        header = self._parse(lines[0], 1, last=False)
        if header.get("paper_journal") != JOURNAL_FORMAT or not isinstance(
            header.get("generation"), int
        ):
            raise JournalError(
                f"{path}:1: not a paper journal header (expected paper_journal "
                f"{JOURNAL_FORMAT} and a generation), got {lines[0][:80]!r}"
            )
        if header["generation"] != generation:
            # The snapshot was written after this journal (a kill between the two
            # steps of a compaction): every change in it is in the snapshot.
            log.info(
                "paper journal already in the snapshot",
                journal=str(path),
                generation=header["generation"],
                snapshot_generation=generation,
            )
            return []
        records = []
        last = len(lines)
        for number, line in enumerate(lines[1:], start=2):
            is_last = number == last
            try:
                record = self._parse(line, number, last=is_last)
            except JournalError:
                if not is_last:
                    raise
                log.warning(
                    "paper journal: dropped a damaged last line (the process stopped while "
                    "writing it; its change was never confirmed)",
                    journal=str(path),
                    line=number,
                    complete=complete,
                )
                break
            records.append((number, record))
        return records

    def _parse(self, line: bytes, number: int, *, last: bool) -> dict[str, Any]:
        try:
            value = json.loads(line)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            where = "the last line" if last else "a line in the middle"
            raise JournalError(
                f"{self.journal_path}:{number}: damaged paper journal ({where} is not JSON: "
                f"{exc}); the paper account cannot be restored without guessing: repair or "
                "remove that line, or move the journal and the snapshot away to start a "
                "fresh paper account"
            ) from None
        if not isinstance(value, dict):
            raise JournalError(
                f"{self.journal_path}:{number}: damaged paper journal (expected a JSON "
                f"object, got {type(value).__name__})"
            )
        return value

    # -- writing -------------------------------------------------------------

    def compact(self, snapshot: Mapping[str, Any]) -> None:
        """Write ``snapshot`` as the new snapshot and start an empty journal after it."""
        generation = self.generation + 1
        folder = self.snapshot_path.parent
        folder.mkdir(parents=True, exist_ok=True)
        data = {**snapshot, "journal_generation": generation}
        temp = self.snapshot_path.with_name(self.snapshot_path.name + ".tmp")
        text = json.dumps(data, separators=(",", ":"))  # dumps: the C encoder, not dump's
        with open(temp, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, self.snapshot_path)  # atomic: never a half-written account
        # From here the old journal is stale (its generation is no longer named).
        self.close()
        header = json.dumps({"paper_journal": JOURNAL_FORMAT, "generation": generation}) + "\n"
        temp = self.journal_path.with_name(self.journal_path.name + ".tmp")
        temp.write_bytes(header.encode())
        os.replace(temp, self.journal_path)
        self._fd = os.open(self.journal_path, _APPEND_FLAGS)
        self.generation = generation
        self.size = len(header)

    def append(self, record: str) -> None:
        """Append one record (JSON text without a line break, as
        :meth:`PaperAccount.take_changes` gives it) as one line, with one unbuffered
        write."""
        fd = self._fd
        if fd is None:
            raise OSError(f"{self.journal_path} is not open: compact() first")
        data = (record + "\n").encode()
        written = os.write(fd, data)
        while written < len(data):  # a short write (a full disk): finish the line or raise
            written += os.write(fd, data[written:])
        self.size += written

    def close(self) -> None:
        """Close the journal (idempotent; a descriptor already broken is let go quietly)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
