"""API keys for rick's own interfaces (the REST API, the WebSocket proxy).

A key looks like ``rk_<key id>_<secret>``:

- the key id is 10 random lowercase base32 characters (``a-z2-7``). It is not
  secret: it names the key in listings and audit records and lets
  :meth:`ApiKeys.verify` find the one row to check with an index lookup,
  without scanning or hashing every stored key;
- the secret is 32 random bytes from :mod:`secrets`, urlsafe base64 (43 characters).

Only ``HMAC-SHA256(pepper, secret)`` is stored, in ``$RICK_HOME/apikeys.db``. The
pepper is 32 random bytes held in the encrypted vault (component ``rick``, name
``apikey-pepper``), created on first use by ``rick apikey``. Why an HMAC with a
vault-held pepper, and not a password hash such as scrypt:

- the secret has 256 bits of entropy, so nobody can guess it, whatever the hash;
  a slow hash protects *low*-entropy secrets (passwords) against guessing, and
  buys nothing here;
- it would cost every request: scrypt takes tens of milliseconds and megabytes
  per check, an HMAC microseconds, and the REST API verifies a key per request;
- the pepper never touches ``apikeys.db``: a stolen ``apikeys.db`` (a backup, a
  copied home folder) cannot be checked offline against anything, nor used to
  forge a key, without also opening the vault with the master key.

Every failed :meth:`ApiKeys.verify` is audited as ``FAILED_AUTHENTICATION``
(see :func:`audit_to_home`), with the key id when the presented key could be
parsed, the key's name when the id is known and the reason; never the presented
secret nor the key. Successful checks are not audited: the REST API checks a
key per request, and one audit record per request would bury the records that
matter. An interface that opens sessions records its own ``USER_LOGIN``.

Creating, rotating and revoking keys is audited by the caller (``rick apikey``)
through the ``on_change`` hook of each method, called before the change is
committed: if the audit record cannot be written, the change is rolled back.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

from attrs import frozen

from rick_core.model import ModelError, to_utc, utc_now
from rick_core.security.records import EventType, Severity

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "APIKEYS_FILENAME",
    "PEPPER_COMPONENT",
    "PEPPER_NAME",
    "ApiKeyError",
    "ApiKeyInfo",
    "ApiKeyRejected",
    "ApiKeys",
    "AuditCallback",
    "KeyChecker",
    "KeySource",
    "PepperVault",
    "RejectReason",
    "Scope",
    "audit_to_home",
    "check_name",
    "open_api_keys",
    "read_api_keys",
]

APIKEYS_FILENAME = "apikeys.db"
PEPPER_COMPONENT = "rick"
PEPPER_NAME = "apikey-pepper"

KEY_PREFIX = "rk"
KEY_ID_LENGTH = 10
_KEY_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
SECRET_BYTES = 32
PEPPER_BYTES = 32
# At most this many characters are looked at: a longer "key" is malformed.
_MAX_PRESENTED = 200
_KEY = re.compile(r"rk_([a-z2-7]{8,12})_([A-Za-z0-9_-]{43,128})")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Compared against when the key id is unknown, so that an unknown key id costs
# the same HMAC and comparison as a known one.
_DUMMY_HASH = "0" * 64
_DUMMY_ROW = ("", "read", "", _DUMMY_HASH, "", None, None, None, _DUMMY_HASH)

AuditCallback = Callable[[EventType, Mapping[str, Any], Severity], None]
"""Receives one audit event: its type, details and severity."""


class Scope(enum.Enum):
    """What a key may do: ``read < trade < admin``; a scope allows every lower one."""

    READ = "read"
    TRADE = "trade"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, required: Scope | str) -> bool:
        """Whether a key with this scope may do what needs ``required``."""
        return self.rank >= _RANKS[parse_scope(required)]


_RANKS = {Scope.READ: 0, Scope.TRADE: 1, Scope.ADMIN: 2}


def parse_scope(value: Scope | str) -> Scope:
    """``value`` as a :class:`Scope`; :class:`ApiKeyError` if it is not one."""
    if isinstance(value, Scope):
        return value
    try:
        return Scope(value.strip().lower())
    except (ValueError, AttributeError):
        allowed = ", ".join(s.value for s in Scope)
        raise ApiKeyError(f"unknown scope {value!r}: use one of {allowed}") from None


class ApiKeyError(Exception):
    """An API key cannot be created, changed or stored; the message says what to do."""


class RejectReason(enum.StrEnum):
    """Why :meth:`ApiKeys.verify` refused a key."""

    NO_KEYS = "no_keys"
    """No key can exist here: no key file, or no vault to hold the pepper."""
    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    REVOKED = "revoked"
    EXPIRED = "expired"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    TAMPERED = "tampered"


class ApiKeyRejected(Exception):
    """A presented key does not grant access. ``reason`` says why; the message is
    safe to show to whoever presented the key (it never repeats the key).

    A wrong secret for an existing key id is reported as ``UNKNOWN``, like an
    unknown key id, so that callers cannot learn which key ids exist.
    """

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@frozen
class ApiKeyInfo:
    """What is known about a stored key; never its hash nor its secret."""

    name: str
    scope: Scope
    key_id: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_at: datetime | None

    def status(self, now: datetime | None = None) -> str:
        """``revoked``, ``expired`` or ``active`` at ``now`` (default: the current time)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and _now(now) >= self.expires_at:
            return "expired"
        return "active"

    def is_live(self, now: datetime | None = None) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.status(now) == "active"

    def audit_details(self) -> dict[str, Any]:
        """The details of a created/rotated/revoked audit record (never the key)."""
        return {
            "name": self.name,
            "scope": self.scope.value,
            "key_id": self.key_id,
            "expires_at": _time_text(self.expires_at),
        }


class PepperVault(Protocol):
    """The part of :class:`rick_core.security.vault.Vault` the pepper needs."""

    def get(self, component: str, name: str, /) -> str: ...

    def set(self, component: str, name: str, value: str, /) -> bool: ...


# ---------------------------------------------------------------------------
# helpers


def _now(now: datetime | None) -> datetime:
    if now is None:
        return utc_now()
    try:
        return to_utc(now)
    except ModelError as exc:
        raise ApiKeyError(f"bad time {now!r}: {exc}") from None


def _time_text(value: datetime | None) -> str | None:
    # Fixed microsecond precision keeps text order equal to time order (as in store.py).
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _time_value(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).astimezone(UTC)


def _new_key_id() -> str:
    return "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))


def _new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def _format_key(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}_{key_id}_{secret}"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ApiKeyError(
            f"bad API key name {name!r}: use 1 to 64 letters, digits, '-' and '_' "
            "(for example reporting-bot)"
        )
    return name


def _check_expires_days(expires_days: int | None) -> int | None:
    if expires_days is None:
        return None
    if isinstance(expires_days, bool) or not isinstance(expires_days, int) or expires_days < 1:
        raise ApiKeyError(
            f"bad expiry {expires_days!r}: give a whole number of days, 1 or more "
            "(or none for a key that does not expire)"
        )
    if expires_days > 36500:
        raise ApiKeyError(f"bad expiry {expires_days} days: at most 36500 (100 years)")
    return expires_days


def decode_pepper(text: str) -> bytes:
    """The pepper stored in the vault (urlsafe base64 text) as bytes."""
    try:
        pepper = base64.urlsafe_b64decode(text.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        pepper = b""
    if len(pepper) != PEPPER_BYTES:
        raise ApiKeyError(
            f"the vault entry {PEPPER_COMPONENT}/{PEPPER_NAME} is not a {PEPPER_BYTES}-byte "
            "urlsafe base64 value; it was changed by hand. Restore the vault from a backup, "
            "or remove the entry and apikeys.db and create the API keys again."
        )
    return pepper


# ---------------------------------------------------------------------------
# the database

_SCHEMA_VERSION = 1
_COLUMNS = "name, scope, key_id, hash, created_at, expires_at, revoked_at, rotated_at"
_INFO_COLUMNS = "name, scope, key_id, created_at, expires_at, revoked_at, rotated_at"


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE [api_keys] (
            [name] TEXT NOT NULL PRIMARY KEY,
            [scope] TEXT NOT NULL,
            [key_id] TEXT NOT NULL UNIQUE,
            [hash] TEXT NOT NULL,
            [created_at] TEXT NOT NULL,
            [expires_at] TEXT,
            [revoked_at] TEXT,
            [rotated_at] TEXT,
            [seal] TEXT NOT NULL DEFAULT ''
        )
        """
    )


def _info(row: tuple[Any, ...]) -> ApiKeyInfo:
    name, scope, key_id, created_at, expires_at, revoked_at, rotated_at = row
    created = _time_value(created_at)
    assert created is not None
    return ApiKeyInfo(
        name=name,
        scope=Scope(scope),
        key_id=key_id,
        created_at=created,
        expires_at=_time_value(expires_at),
        revoked_at=_time_value(revoked_at),
        rotated_at=_time_value(rotated_at),
    )


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """A connection to the key database at ``path``, WAL, schema in place."""
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                # Owner-only from the start; SQLite gives -wal and -shm the same mode.
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except (OSError, ValueError, sqlite3.Error) as exc:
        raise ApiKeyError(
            f"{path}: cannot open the API key database: {exc}. Set RICK_HOME to a folder "
            "rick can write to."
        ) from None
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ApiKeyError(
                f"{path}: SQLite refused WAL mode (journal mode is {mode!r}); keep RICK_HOME "
                "on a local disk, not a network share"
            )
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise ApiKeyError(
                f"{path}: the API key database has schema version {version}, but this "
                f"rick-core knows version {_SCHEMA_VERSION} only; upgrade rick-core"
            )
        if version < _SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                    _create_schema(conn)
                    conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ApiKeyError(
            f"{path}: not an API key database ({exc}). Move the file away to start afresh "
            "(every API key in it stops working)."
        ) from None
    except BaseException:
        conn.close()
        raise
    return conn


def read_api_keys(path: Path) -> list[ApiKeyInfo]:
    """The keys in the database at ``path`` (none if there is no file), by name.

    Needs no pepper, hence no vault: listing keys shows no secret.
    """
    if not Path(path).is_file():
        return []
    conn = _connect(Path(path), create=False)
    try:
        rows = conn.execute(f"SELECT {_INFO_COLUMNS} FROM api_keys ORDER BY name").fetchall()
    finally:
        conn.close()
    return [_info(row) for row in rows]


# ---------------------------------------------------------------------------
# the key set


class ApiKeys:
    """The API keys in one database, checked with one pepper.

    ``audit`` receives every failed :meth:`verify` (a ``FAILED_AUTHENTICATION``
    event, WARNING severity); see :func:`audit_to_home`. Calls are serialised by
    a lock, so one instance may serve several threads.
    """

    def __init__(self, path: Path, pepper: bytes, *, audit: AuditCallback | None = None) -> None:
        if len(pepper) < 16:
            raise ApiKeyError(f"the API key pepper must be at least 16 bytes, not {len(pepper)}")
        self.path = Path(path)
        self._pepper = bytes(pepper)
        self._audit = audit
        self._lock = threading.RLock()
        self._conn = _connect(self.path, create=True)

    def close(self) -> None:
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
        return f"ApiKeys({str(self.path)!r})"

    def _hash(self, secret: str) -> str:
        return hmac.new(self._pepper, secret.encode("ascii"), hashlib.sha256).hexdigest()

    def _seal_of(self, row: Sequence[Any]) -> str:
        """An HMAC of a key's whole record (``_COLUMNS`` order): scope, expiry and
        revocation edited in the file directly no longer verify."""
        text = json.dumps(["apikey-record", *row], separators=(",", ":"))
        return hmac.new(self._pepper, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def _reseal(self, conn: sqlite3.Connection, name: str) -> None:
        row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE name = ?", (name,)).fetchone()
        conn.execute("UPDATE api_keys SET seal = ? WHERE name = ?", (self._seal_of(row), name))

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE, COMMIT on success, ROLLBACK on error."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise ApiKeyError(f"{self.path}: cannot write: {exc}") from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _row(self, conn: sqlite3.Connection, name: str) -> ApiKeyInfo | None:
        row = conn.execute(f"SELECT {_INFO_COLUMNS} FROM api_keys WHERE name = ?", (name,))
        found = row.fetchone()
        return None if found is None else _info(found)

    def _free_key_id(self, conn: sqlite3.Connection) -> str:
        while True:
            key_id = _new_key_id()
            taken = conn.execute("SELECT 1 FROM api_keys WHERE key_id = ?", (key_id,))
            if taken.fetchone() is None:
                return key_id

    # -- managing keys -------------------------------------------------------

    def create(
        self,
        name: str,
        scope: Scope | str,
        *,
        expires_days: int | None = None,
        now: datetime | None = None,
        on_change: Callable[[ApiKeyInfo], None] | None = None,
    ) -> str:
        """Create a key and return it, whole: the only time it is available.

        ``name`` may be reused once the key that had it is revoked or expired (the
        old entry is replaced). ``on_change`` gets the new key's info before the
        change is committed; if it raises, nothing changes.
        """
        check_name(name)
        scope = parse_scope(scope)
        days = _check_expires_days(expires_days)
        created = _now(now)
        expires = None if days is None else created + timedelta(days=days)
        secret = _new_secret()
        with self._write() as conn:
            existing = self._row(conn, name)
            if existing is not None:
                if existing.is_live(created):
                    raise ApiKeyError(
                        f"an API key named {name!r} already exists (key id "
                        f"{existing.key_id}, scope {existing.scope.value}). Rotate it with "
                        f"`rick apikey rotate {name}`, revoke it with `rick apikey revoke "
                        f"{name}`, or choose another name."
                    )
                conn.execute("DELETE FROM api_keys WHERE name = ?", (name,))
            key_id = self._free_key_id(conn)
            conn.execute(
                f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
                (name, scope.value, key_id, self._hash(secret), _time_text(created),
                 _time_text(expires)),
            )  # fmt: skip
            self._reseal(conn, name)
            info = ApiKeyInfo(name, scope, key_id, created, expires, None, None)
            if on_change is not None:
                on_change(info)
        return _format_key(key_id, secret)

    def rotate(
        self,
        name: str,
        now: datetime | None = None,
        *,
        on_change: Callable[[ApiKeyInfo], None] | None = None,
    ) -> str:
        """Give the key ``name`` a new key id and secret, and return the new key.

        Name, scope and expiry stay; the old key stops working at once. A revoked
        or expired key cannot be rotated: create a new one. ``on_change`` gets the
        new info before the change is committed.
        """
        check_name(name)
        rotated = _now(now)
        secret = _new_secret()
        with self._write() as conn:
            existing = self._live(conn, name, rotated, "rotate")
            key_id = self._free_key_id(conn)
            conn.execute(
                "UPDATE api_keys SET key_id = ?, hash = ?, rotated_at = ? WHERE name = ?",
                (key_id, self._hash(secret), _time_text(rotated), name),
            )
            self._reseal(conn, name)
            info = ApiKeyInfo(
                name,
                existing.scope,
                key_id,
                existing.created_at,
                existing.expires_at,
                None,
                rotated,
            )
            if on_change is not None:
                on_change(info)
        return _format_key(key_id, secret)

    def revoke(
        self,
        name: str,
        now: datetime | None = None,
        *,
        on_change: Callable[[ApiKeyInfo], None] | None = None,
    ) -> ApiKeyInfo:
        """Revoke the key ``name``: it stops working at once. Returns its info.

        An expired key may still be revoked; a revoked one may not (again).
        """
        check_name(name)
        revoked = _now(now)
        with self._write() as conn:
            existing = self._row(conn, name)
            if existing is None:
                raise self._no_such_key(name)
            if existing.revoked_at is not None:
                raise ApiKeyError(
                    f"the API key {name!r} was already revoked at {_time_text(existing.revoked_at)}"
                )
            conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ?", (_time_text(revoked), name)
            )
            self._reseal(conn, name)
            info = ApiKeyInfo(
                name,
                existing.scope,
                existing.key_id,
                existing.created_at,
                existing.expires_at,
                revoked,
                existing.rotated_at,
            )
            if on_change is not None:
                on_change(info)
        return info

    def _live(self, conn: sqlite3.Connection, name: str, now: datetime, what: str) -> ApiKeyInfo:
        existing = self._row(conn, name)
        if existing is None:
            raise self._no_such_key(name)
        status = existing.status(now)
        if status != "active":
            raise ApiKeyError(
                f"cannot {what} the API key {name!r}: it is {status}. Create a new one "
                f"with `rick apikey create {name} --scope {existing.scope.value}`."
            )
        return existing

    def _no_such_key(self, name: str) -> ApiKeyError:
        return ApiKeyError(f"no API key named {name!r}; `rick apikey list` shows them")

    def get(self, name: str) -> ApiKeyInfo | None:
        """The key named ``name``, or None."""
        with self._lock:
            return self._row(self._conn, name)

    def list(self) -> list[ApiKeyInfo]:
        """Every key, revoked and expired ones included, by name."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {_INFO_COLUMNS} FROM api_keys ORDER BY name")
            return [_info(row) for row in rows.fetchall()]

    # -- checking keys -------------------------------------------------------

    def verify(
        self,
        presented: str,
        required: Scope | str,
        *,
        now: datetime | None = None,
        audit: AuditCallback | None = None,
    ) -> ApiKeyInfo:
        """The info of the key ``presented`` if it may do what needs ``required``.

        Raises :class:`ApiKeyRejected` if it is malformed, unknown (or its secret
        is wrong), revoked, expired or its scope too low; each rejection is handed
        to ``audit`` (default: the one given to the constructor) as one
        ``FAILED_AUTHENTICATION`` event before the exception is raised. If the
        audit callback raises, that error propagates instead: the key is refused
        either way.
        """
        required_scope = parse_scope(required)
        checked_at = _now(now)
        sink = self._audit if audit is None else audit
        key_id: str | None = None
        info: ApiKeyInfo | None = None
        try:
            match = (
                _KEY.fullmatch(presented)
                if isinstance(presented, str) and len(presented) <= _MAX_PRESENTED
                else None
            )
            if match is None:
                raise ApiKeyRejected(
                    RejectReason.MALFORMED,
                    "malformed API key: expected rk_<key id>_<secret>, as printed by "
                    "`rick apikey create`",
                )
            key_id, secret = match.group(1), match.group(2)
            with self._lock:
                row = self._conn.execute(
                    f"SELECT {_COLUMNS}, seal FROM api_keys WHERE key_id = ?", (key_id,)
                ).fetchone()
            stored = _DUMMY_ROW if row is None else row
            # Always two HMACs and two constant-time comparisons (the secret, then the
            # record's seal), known key id or not: timing tells nothing.
            matches = hmac.compare_digest(self._hash(secret), stored[3])
            sealed = hmac.compare_digest(self._seal_of(stored[:8]), stored[8])
            if row is not None:
                info = _info((*row[:3], *row[4:8]))
            if row is not None and matches and not sealed:
                raise ApiKeyRejected(
                    RejectReason.TAMPERED,
                    f"API key {key_id}: its record was changed outside rick (scope, "
                    "expiry or revocation edited in the file); it is refused",
                )
            if row is None or not matches:
                raise ApiKeyRejected(
                    RejectReason.UNKNOWN,
                    "unknown API key: it may have been rotated or mistyped; "
                    "`rick apikey list` shows the current key ids",
                )
            assert info is not None
            if info.revoked_at is not None:
                raise ApiKeyRejected(
                    RejectReason.REVOKED,
                    f"API key {info.key_id} was revoked; ask for a new one",
                )
            if info.expires_at is not None and checked_at >= info.expires_at:
                raise ApiKeyRejected(
                    RejectReason.EXPIRED,
                    f"API key {info.key_id} expired at {_time_text(info.expires_at)}; "
                    "ask for a new one",
                )
            if not info.scope.allows(required_scope):
                raise ApiKeyRejected(
                    RejectReason.INSUFFICIENT_SCOPE,
                    f"API key {info.key_id} has scope {info.scope.value}; this needs "
                    f"{required_scope.value}",
                )
        except ApiKeyRejected as rejected:
            if sink is not None:
                details: dict[str, Any] = {"reason": rejected.reason.value}
                if key_id is not None:
                    details["key_id"] = key_id
                if info is not None:
                    details["key_name"] = info.name
                if rejected.reason is RejectReason.INSUFFICIENT_SCOPE and info is not None:
                    details["scope"] = info.scope.value
                    details["required_scope"] = required_scope.value
                sink(EventType.FAILED_AUTHENTICATION, details, Severity.WARNING)
            raise
        return info


# ---------------------------------------------------------------------------
# wiring: the audit log and the vault


def audit_to_home(home: Path, *, source: str = "api") -> AuditCallback:
    """An audit callback appending to the audit log in ``home``.

    The actor is ``Actor(kind="api_key", name=<the key's name, or "unknown">,
    source=source)``; ``source`` names the interface (``api``, ``websocket``).
    """
    from rick_core.security.audit import append_now
    from rick_core.security.records import Actor

    def record(type: EventType, details: Mapping[str, Any], severity: Severity) -> None:
        name = details.get("key_name") or "unknown"
        actor = Actor(kind="api_key", name=str(name), source=source)
        append_now(home, type, actor=actor, details=dict(details), severity=severity)

    return record


def open_api_keys(home: Path, vault: PepperVault, *, audit: AuditCallback | None = None) -> ApiKeys:
    """The API keys in ``home/apikeys.db``, with the pepper from ``vault``.

    Creates the pepper (32 random bytes) in the vault on first use. If the vault
    has no pepper but ``apikeys.db`` already holds keys, those keys could never be
    verified again, so this refuses rather than silently replacing the pepper.
    """
    path = Path(home) / APIKEYS_FILENAME
    try:
        text = vault.get(PEPPER_COMPONENT, PEPPER_NAME)
    except KeyError:
        existing = read_api_keys(path)
        if existing:
            raise ApiKeyError(
                f"the vault has no {PEPPER_COMPONENT}/{PEPPER_NAME} entry, but {path} holds "
                f"{len(existing)} API key(s) made with one: the vault was replaced or that "
                "entry removed, and those keys can no longer be verified. Restore the vault "
                f"from a backup, or move {path} away and create the keys again."
            ) from None
        text = base64.urlsafe_b64encode(secrets.token_bytes(PEPPER_BYTES)).decode("ascii")
        vault.set(PEPPER_COMPONENT, PEPPER_NAME, text)
    return ApiKeys(path, decode_pepper(text), audit=audit)


class KeySource(Protocol):
    """What checks a presented key: :class:`ApiKeys` or :class:`KeyChecker`."""

    def verify(
        self,
        presented: str,
        required: Scope | str,
        *,
        now: datetime | None = None,
        audit: AuditCallback | None = None,
    ) -> ApiKeyInfo: ...


class KeyChecker:
    """Checks keys against ``home/apikeys.db`` for a long-running service,
    opening it when first needed: a key made with ``rick apikey create`` while
    rick runs works at once. It never creates the pepper or the file: without
    them no key can exist, and every key is refused (``NO_KEYS``), saying how
    to make one."""

    def __init__(
        self, home: Path, vault: PepperVault | None, *, audit: AuditCallback | None = None
    ) -> None:
        self.path = Path(home) / APIKEYS_FILENAME
        self._vault = vault
        self._audit = audit
        self._keys: ApiKeys | None = None
        self._lock = threading.Lock()

    def _open(self) -> ApiKeys | None:
        with self._lock:
            if self._keys is None and self._vault is not None and self.path.exists():
                try:
                    text = self._vault.get(PEPPER_COMPONENT, PEPPER_NAME)
                except KeyError:
                    return None
                self._keys = ApiKeys(self.path, decode_pepper(text), audit=self._audit)
            return self._keys

    def verify(
        self,
        presented: str,
        required: Scope | str,
        *,
        now: datetime | None = None,
        audit: AuditCallback | None = None,
    ) -> ApiKeyInfo:
        keys = self._open()
        if keys is not None:
            return keys.verify(presented, required, now=now, audit=audit)
        sink = self._audit if audit is None else audit
        if sink is not None:
            sink(
                EventType.FAILED_AUTHENTICATION,
                {"reason": RejectReason.NO_KEYS.value},
                Severity.WARNING,
            )
        vault_hint = (
            ""
            if self._vault is not None
            else " (it needs the credential vault: `rick creds genkey`, then export "
            "RICK_MASTER_KEY before starting rick)"
        )
        raise ApiKeyRejected(
            RejectReason.NO_KEYS,
            "no API key exists on this machine: make one with "
            f"`rick apikey create --scope read <name>`{vault_hint}",
        )

    def close(self) -> None:
        with self._lock:
            if self._keys is not None:
                self._keys.close()
                self._keys = None
