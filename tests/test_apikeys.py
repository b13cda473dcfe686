"""API keys: creation, verification, rotation, revocation, auditing and `rick apikey`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rick_core.security.apikeys import (
    PEPPER_COMPONENT,
    PEPPER_NAME,
    ApiKeyError,
    ApiKeyInfo,
    ApiKeyRejected,
    ApiKeys,
    RejectReason,
    Scope,
    audit_to_home,
    open_api_keys,
    read_api_keys,
)
from rick_core.security.records import EventType, Severity

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
KEY_FORMAT = re.compile(r"rk_[a-z2-7]{10}_[A-Za-z0-9_-]{43}")

Event = tuple[EventType, Mapping[str, Any], Severity]


class DictVault:
    """The two vault calls the pepper needs, in memory."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], str] = {}

    def get(self, component: str, name: str) -> str:
        return self.entries[component, name]

    def set(self, component: str, name: str, value: str) -> bool:
        created = (component, name) not in self.entries
        self.entries[component, name] = value
        return created


@pytest.fixture
def events() -> list[Event]:
    return []


@pytest.fixture
def pepper() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def keys(tmp_path: Path, pepper: bytes, events: list[Event]) -> Iterator[ApiKeys]:
    def audit(type: EventType, details: Mapping[str, Any], severity: Severity) -> None:
        events.append((type, dict(details), severity))

    with ApiKeys(tmp_path / "apikeys.db", pepper, audit=audit) as api_keys:
        yield api_keys


def _secret(key: str) -> str:
    return key.split("_", 2)[2]


def _key_id(key: str) -> str:
    return key.split("_", 2)[1]


def _rejected(
    keys: ApiKeys, events: list[Event], presented: str, required: Scope | str, **kw: Any
) -> tuple[RejectReason, Mapping[str, Any]]:
    """Verify ``presented``, expecting a rejection with exactly one audit event."""
    before = len(events)
    with pytest.raises(ApiKeyRejected) as caught:
        keys.verify(presented, required, **kw)
    new = events[before:]
    assert len(new) == 1, new
    type_, details, severity = new[0]
    assert type_ is EventType.FAILED_AUTHENTICATION
    assert severity is Severity.WARNING
    assert details["reason"] == caught.value.reason.value
    if len(presented) > 8:  # never repeated: not in the audit details, not in the message
        for text in (json.dumps(details), str(caught.value)):
            assert presented not in text
            if presented.count("_") >= 2 and len(_secret(presented)) > 8:
                assert _secret(presented) not in text
    return caught.value.reason, details


# ---------------------------------------------------------------------------
# keys and scopes


def test_key_format_and_listing(keys: ApiKeys) -> None:
    key = keys.create("reporting-bot", "read", now=T0)
    assert KEY_FORMAT.fullmatch(key)
    [info] = keys.list()
    assert info == ApiKeyInfo(
        name="reporting-bot",
        scope=Scope.READ,
        key_id=_key_id(key),
        created_at=T0,
        expires_at=None,
        revoked_at=None,
        rotated_at=None,
    )
    assert not hasattr(info, "hash")
    assert keys.create("other_1", Scope.ADMIN) != key
    assert [i.name for i in keys.list()] == ["other_1", "reporting-bot"]
    assert read_api_keys(keys.path) == keys.list()


def test_scopes_are_ordered() -> None:
    assert Scope.ADMIN.allows("trade") and Scope.ADMIN.allows(Scope.READ)
    assert Scope.TRADE.allows("read") and not Scope.TRADE.allows("admin")
    assert not Scope.READ.allows(Scope.TRADE)
    with pytest.raises(ApiKeyError, match="read, trade, admin"):
        Scope.READ.allows("root")


@pytest.mark.parametrize("scope", list(Scope))
def test_a_key_verifies_with_its_scope_and_every_lower_one(
    keys: ApiKeys, events: list[Event], scope: Scope
) -> None:
    key = keys.create("k", scope)
    for required in Scope:
        if required.rank <= scope.rank:
            info = keys.verify(key, required)
            assert (info.name, info.scope, info.key_id) == ("k", scope, _key_id(key))
            assert keys.verify(key, required.value) == info
        else:
            reason, details = _rejected(keys, events, key, required)
            assert reason is RejectReason.INSUFFICIENT_SCOPE
            assert details == {
                "reason": "insufficient_scope",
                "key_id": _key_id(key),
                "key_name": "k",
                "scope": scope.value,
                "required_scope": required.value,
            }
    assert len(events) == sum(1 for r in Scope if r.rank > scope.rank)


def test_a_revoked_key_fails(keys: ApiKeys, events: list[Event]) -> None:
    key = keys.create("k", "trade", now=T0)
    keys.verify(key, "trade")
    info = keys.revoke("k", now=T0 + timedelta(hours=1))
    assert info.revoked_at == T0 + timedelta(hours=1)
    assert keys.list() == [info]
    reason, details = _rejected(keys, events, key, "read")
    assert reason is RejectReason.REVOKED
    assert details == {"reason": "revoked", "key_id": _key_id(key), "key_name": "k"}
    with pytest.raises(ApiKeyError, match="already revoked"):
        keys.revoke("k")
    with pytest.raises(ApiKeyError, match="it is revoked"):
        keys.rotate("k")


def test_an_expired_key_fails(keys: ApiKeys, events: list[Event]) -> None:
    key = keys.create("k", "read", expires_days=30, now=T0)
    [info] = keys.list()
    assert info.expires_at == T0 + timedelta(days=30)
    keys.verify(key, "read", now=T0 + timedelta(days=30) - timedelta(seconds=1))
    assert not events
    reason, details = _rejected(keys, events, key, "read", now=T0 + timedelta(days=30))
    assert reason is RejectReason.EXPIRED
    assert details == {"reason": "expired", "key_id": _key_id(key), "key_name": "k"}
    assert info.status(T0 + timedelta(days=31)) == "expired"


def test_rotation_replaces_the_key(keys: ApiKeys, events: list[Event]) -> None:
    old = keys.create("k", "trade", expires_days=10, now=T0)
    new = keys.rotate("k", now=T0 + timedelta(days=1))
    assert KEY_FORMAT.fullmatch(new)
    assert _key_id(new) != _key_id(old) and _secret(new) != _secret(old)
    info = keys.verify(new, "trade", now=T0 + timedelta(days=2))
    assert info.scope is Scope.TRADE
    assert info.created_at == T0
    assert info.expires_at == T0 + timedelta(days=10)
    assert info.rotated_at == T0 + timedelta(days=1)
    reason, details = _rejected(keys, events, old, "read", now=T0 + timedelta(days=2))
    assert reason is RejectReason.UNKNOWN
    assert details == {"reason": "unknown", "key_id": _key_id(old)}
    assert len(events) == 1


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "hello",
        "rk_",
        "rk_abcdefghij",
        "rk_abcdefghij_short",
        "xx_abcdefghij_" + "A" * 43,
        "rk_ABCDEFGHIJ_" + "A" * 43,
        "rk_abcdefghij_" + "A" * 42 + "!",
        " rk_abcdefghij_" + "A" * 43,
        "rk_abcdefghij_" + "A" * 1000,
        "Bearer rk_abcdefghij_" + "A" * 43,
    ],
)
def test_malformed_keys_fail(keys: ApiKeys, events: list[Event], presented: str) -> None:
    keys.create("k", "admin")
    reason, details = _rejected(keys, events, presented, "read")
    assert reason is RejectReason.MALFORMED
    assert details == {"reason": "malformed"}


def test_unknown_keys_fail_and_still_cost_an_hmac(
    keys: ApiKeys, events: list[Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = keys.create("k", "admin")
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)

    unknown = "rk_" + "a" * 10 + "_" + _secret(key)
    reason, details = _rejected(keys, events, unknown, "read")
    assert reason is RejectReason.UNKNOWN
    assert details == {"reason": "unknown", "key_id": "a" * 10}
    # real HMACs were computed: the secret's and the record seal's, as for a known key
    assert len(compared) == 2 and all(len(a) == 64 for a, _ in compared)

    # The right key id with a wrong secret looks the same to the caller.
    wrong = f"rk_{_key_id(key)}_{secrets.token_urlsafe(32)}"
    reason, details = _rejected(keys, events, wrong, "read")
    assert reason is RejectReason.UNKNOWN
    assert details == {"reason": "unknown", "key_id": _key_id(key), "key_name": "k"}
    assert len(compared) == 4
    assert len(events) == 2


def test_only_an_hmac_with_the_pepper_is_stored(
    keys: ApiKeys, pepper: bytes, tmp_path: Path, events: list[Event]
) -> None:
    made = [keys.create(f"k{i}", "trade", expires_days=5) for i in range(3)]
    made.append(keys.rotate("k0"))
    keys.revoke("k1")
    for key in made[2:]:
        keys.verify(key, "read")
    with pytest.raises(ApiKeyRejected):
        keys.verify(made[1], "read")  # revoked; audited
    # Read while the writer's connection is open, so the WAL still holds the pages.
    files = [p for p in tmp_path.iterdir() if p.name.startswith("apikeys.db")]
    assert {p.name for p in files} >= {"apikeys.db", "apikeys.db-wal"}
    blob = b"".join(p.read_bytes() for p in files)
    for key in made:
        secret = _secret(key)
        for needle in (key, secret, base64.urlsafe_b64decode(secret + "=")):
            assert needle.encode() not in blob if isinstance(needle, str) else needle not in blob
        digest = hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()
        assert digest.encode() in blob or key == made[0]  # k0's first key was replaced
    assert pepper not in blob
    assert base64.urlsafe_b64encode(pepper) not in blob
    assert not any(key in json.dumps(e[1]) for e in events for key in made)

    # The database alone, with another pepper, verifies nothing.
    with ApiKeys(keys.path, secrets.token_bytes(32)) as stolen, pytest.raises(ApiKeyRejected):
        stolen.verify(made[2], "read")


def test_names_expiry_and_duplicates(keys: ApiKeys) -> None:
    for bad in ["", "has space", "semi;colon", "ü", "x" * 65, "a/b"]:
        with pytest.raises(ApiKeyError, match="letters, digits"):
            keys.create(bad, "read")
    for days in [0, -1]:
        with pytest.raises(ApiKeyError, match="1 or more"):
            keys.create("k", "read", expires_days=days)
    with pytest.raises(ApiKeyError, match="unknown scope 'root'"):
        keys.create("k", "root")
    keys.create("k", "read", expires_days=1, now=T0)
    with pytest.raises(ApiKeyError, match=r"named 'k' already exists.*rick apikey rotate k"):
        keys.create("k", "admin", now=T0)
    assert [i.scope for i in keys.list()] == [Scope.READ]
    # Once expired (or revoked), the name may be used again.
    replacement = keys.create("k", "admin", now=T0 + timedelta(days=2))
    assert keys.verify(replacement, "admin", now=T0 + timedelta(days=3)).name == "k"
    keys.revoke("k")
    keys.create("k", "trade")
    with pytest.raises(ApiKeyError, match="no API key named 'nope'"):
        keys.rotate("nope")
    with pytest.raises(ApiKeyError, match="no API key named 'nope'"):
        keys.revoke("nope")


def test_a_failing_change_hook_leaves_nothing_changed(keys: ApiKeys) -> None:
    key = keys.create("k", "read")
    seen: list[ApiKeyInfo] = []

    def refuse(info: ApiKeyInfo) -> None:
        seen.append(info)
        raise RuntimeError("audit log unavailable")

    with pytest.raises(RuntimeError):
        keys.create("j", "read", on_change=refuse)
    with pytest.raises(RuntimeError):
        keys.rotate("k", on_change=refuse)
    with pytest.raises(RuntimeError):
        keys.revoke("k", on_change=refuse)
    assert [i.name for i in seen] == ["j", "k", "k"]
    assert [i.name for i in keys.list()] == ["k"]
    keys.verify(key, "read")


def test_a_failing_audit_still_refuses(keys: ApiKeys) -> None:
    def broken(type: EventType, details: Mapping[str, Any], severity: Severity) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        keys.verify("garbage", "read", audit=broken)


def test_the_pepper_is_created_once_in_the_vault(tmp_path: Path) -> None:
    vault = DictVault()
    with open_api_keys(tmp_path, vault) as keys:
        key = keys.create("k", "read")
    pepper_text = vault.entries[PEPPER_COMPONENT, PEPPER_NAME]
    assert len(base64.urlsafe_b64decode(pepper_text)) == 32
    with open_api_keys(tmp_path, vault) as keys:
        assert keys.verify(key, "read").name == "k"
    assert vault.entries[PEPPER_COMPONENT, PEPPER_NAME] == pepper_text

    # A vault that lost the pepper must not silently get a new one.
    with pytest.raises(ApiKeyError, match="can no longer be verified"):
        open_api_keys(tmp_path, DictVault())
    vault.entries[PEPPER_COMPONENT, PEPPER_NAME] = "not base64!"
    with pytest.raises(ApiKeyError, match="changed by hand"):
        open_api_keys(tmp_path, vault)


def test_not_a_key_database(tmp_path: Path) -> None:
    path = tmp_path / "apikeys.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ApiKeyError, match="not an API key database"):
        ApiKeys(path, secrets.token_bytes(32))


# ---------------------------------------------------------------------------
# with the real vault and audit log, and through `rick apikey`


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    from rick_core.security.vault import generate_master_key

    home = tmp_path / "home"
    monkeypatch.setenv("RICK_HOME", str(home))
    monkeypatch.setenv("RICK_MASTER_KEY", generate_master_key())
    monkeypatch.delenv("RICK_MASTER_PASSPHRASE", raising=False)
    return home


@pytest.fixture
def rick(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run ``rick ARGS...`` (built-in plugins only) and return click's result."""
    from rick_core import plugins
    from rick_core.cli import _build_cli

    real = plugins.load_plugins
    monkeypatch.setattr(
        plugins, "load_plugins", lambda *a, **kw: real(*a, **{"entry_points": (), **kw})
    )
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(_build_cli(), list(args))

    return run


def _open(home: Path) -> ApiKeys:
    import os

    from rick_core.security.vault import Vault

    return open_api_keys(home, Vault.open(home, environ=os.environ, create=False))


def _audit(home: Path, type: EventType | None = None) -> list[Any]:
    from rick_core.security.audit import AUDIT_FILENAME, AuditLog

    path = home / AUDIT_FILENAME
    if not path.exists():
        return []
    with AuditLog.open(path, read_only=True) as log:
        return log.query(type=type)


def test_each_failure_is_one_audit_record_in_the_log(home: Path) -> None:
    from rick_core.security.records import Actor

    with open_api_keys(home, _new_vault(home)) as keys:
        key = keys.create("bot", "read", expires_days=1, now=T0)
        audit = audit_to_home(home, source="api")
        attempts = [
            ("not a key", "read", T0),
            (f"rk_{'b' * 10}_{_secret(key)}", "read", T0),  # unknown key id
            (key, "trade", T0),  # scope too low
            (key, "read", T0 + timedelta(days=2)),  # expired
        ]
        for presented, required, now in attempts:
            with pytest.raises(ApiKeyRejected):
                keys.verify(presented, required, now=now, audit=audit)
        keys.verify(key, "read", now=T0, audit=audit)  # success: not audited
        keys.revoke("bot")
        with pytest.raises(ApiKeyRejected):
            keys.verify(key, "read", now=T0, audit=audit)

    records = _audit(home)
    assert [r.type for r in records] == [EventType.FAILED_AUTHENTICATION] * 5
    assert [r.details["reason"] for r in records] == [
        "malformed",
        "unknown",
        "insufficient_scope",
        "expired",
        "revoked",
    ]
    assert [r.actor for r in records] == [Actor("api_key", "unknown", "api")] * 2 + [
        Actor("api_key", "bot", "api")
    ] * 3
    assert all(r.severity is Severity.WARNING for r in records)
    blob = (home / "audit.db").read_bytes() + _wal(home / "audit.db")
    assert _secret(key).encode() not in blob
    for record in records:
        assert _secret(key) not in json.dumps(dict(record.details))


def _new_vault(home: Path) -> Any:
    import os

    from rick_core.security.vault import Vault

    return Vault.open(home, environ=os.environ, create=True)


def _wal(path: Path) -> bytes:
    wal = path.with_name(path.name + "-wal")
    return wal.read_bytes() if wal.exists() else b""


def _only_key(output: str) -> str:
    [key] = KEY_FORMAT.findall(output)
    return str(key)


def test_cli_create_list_rotate_revoke(home: Path, rick: Any) -> None:
    created = rick("apikey", "create", "dashboard", "--scope", "trade", "--expires", "30")
    assert created.exit_code == 0, created.output
    key = _only_key(created.output)  # printed exactly once
    assert created.stdout.strip() == key  # alone on stdout: KEY=$(rick apikey create ...)
    assert "only time the key is shown" in created.stderr
    assert "scope trade" in created.stderr

    with _open(home) as keys:
        info = keys.verify(key, "trade")
        assert info.expires_at is not None
        assert timedelta(days=29) < info.expires_at - info.created_at <= timedelta(days=30)

    listed = rick("apikey", "list")
    assert listed.exit_code == 0, listed.output
    assert "dashboard" in listed.output and _key_id(key) in listed.output
    assert "active" in listed.output
    assert _secret(key) not in listed.output
    as_json = rick("apikey", "list", "--json")
    [entry] = json.loads(as_json.stdout)
    assert entry["name"] == "dashboard" and entry["scope"] == "trade"
    assert entry["key_id"] == _key_id(key) and entry["status"] == "active"
    assert entry["rotated_at"] is None and entry["revoked_at"] is None
    assert datetime.fromisoformat(entry["created_at"]).tzinfo is not None
    assert _secret(key) not in as_json.output

    again = rick("apikey", "create", "dashboard", "--scope", "read")
    assert again.exit_code == 1
    assert "already exists" in again.output and "rick apikey rotate dashboard" in again.output

    rotated = rick("apikey", "rotate", "dashboard")
    assert rotated.exit_code == 0, rotated.output
    new = _only_key(rotated.output)
    assert rotated.stdout.strip() == new and new != key
    assert "old key no longer works" in rotated.stderr
    with _open(home) as keys:
        with pytest.raises(ApiKeyRejected):
            keys.verify(key, "read")
        assert keys.verify(new, "trade").rotated_at is not None

    revoked = rick("apikey", "revoke", "dashboard")
    assert revoked.exit_code == 0, revoked.output
    assert _key_id(new) in revoked.output
    with _open(home) as keys, pytest.raises(ApiKeyRejected):
        keys.verify(new, "read")
    listed = rick("apikey", "list")
    assert "revoked" in listed.output
    assert _secret(new) not in listed.output and _secret(key) not in listed.output

    records = _audit(home)
    # The first command created the vault and stored the pepper in it.
    assert [r.type for r in records[:2]] == [
        EventType.CONFIGURATION_CHANGED,
        EventType.CREDENTIAL_STORED,
    ]
    assert records[1].details == {"component": "rick", "name": "apikey-pepper"}
    records = records[2:]
    assert [r.type for r in records] == [
        EventType.API_KEY_CREATED,
        EventType.API_KEY_ROTATED,
        EventType.API_KEY_REVOKED,
    ]
    assert all(r.actor.kind == "user" and r.actor.source == "cli" for r in records)
    assert records[0].details["name"] == "dashboard"
    assert records[0].details["scope"] == "trade"
    assert records[0].details["key_id"] == _key_id(key)
    assert records[0].details["expires_at"] is not None
    assert records[1].details["key_id"] == _key_id(new)
    assert records[2].details["key_id"] == _key_id(new)
    blob = b"".join(
        p.read_bytes() for p in home.iterdir() if p.name.startswith(("audit.db", "apikeys.db"))
    )
    for secret in (_secret(key), _secret(new)):
        assert secret.encode() not in blob


def test_cli_errors_are_clear(home: Path, rick: Any) -> None:
    assert rick("apikey", "list").output.startswith("no API keys yet")
    assert json.loads(rick("apikey", "list", "--json").stdout) == []
    for args, message in [
        (("revoke", "ghost"), "no API key named 'ghost'"),
        (("rotate", "ghost"), "no API key named 'ghost'"),
        (("create", "bad name", "--scope", "read"), "letters, digits"),
    ]:
        result = rick("apikey", *args)
        assert result.exit_code == 1, result.output
        assert message in result.output
        assert "Traceback" not in result.output
    bad_scope = rick("apikey", "create", "x", "--scope", "root")
    assert bad_scope.exit_code == 2 and "read" in bad_scope.output
    assert _audit(home) == []
    assert not (home / "vault.json").exists()  # nothing was made for nothing


@pytest.mark.parametrize(
    "args",
    [
        ("create", "k", "--scope", "read"),
        ("rotate", "k"),
        ("revoke", "k"),
    ],
)
def test_cli_needs_a_master_key(
    home: Path, rick: Any, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    assert rick("apikey", "create", "k", "--scope", "read").exit_code == 0
    monkeypatch.delenv("RICK_MASTER_KEY")
    result = rick("apikey", *args)
    assert result.exit_code == 1
    assert "RICK_MASTER_KEY" in result.output
    assert "Traceback" not in result.output
    assert not KEY_FORMAT.search(result.output)
    # A wrong key is refused too, and nothing changed.
    from rick_core.security.vault import generate_master_key

    monkeypatch.setenv("RICK_MASTER_KEY", generate_master_key())
    wrong = rick("apikey", *args)
    assert wrong.exit_code == 1 and "does not open" in wrong.output
    assert [i.status() for i in read_api_keys(home / "apikeys.db")] == ["active"]
    assert [r.type for r in _audit(home)][-1] == EventType.API_KEY_CREATED
    assert len(_audit(home, EventType.API_KEY_CREATED)) == 1
    assert _audit(home, EventType.API_KEY_ROTATED) == _audit(home, EventType.API_KEY_REVOKED) == []


def test_cli_without_any_vault_fails_clearly(
    rick: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RICK_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("RICK_MASTER_KEY", raising=False)
    monkeypatch.delenv("RICK_MASTER_PASSPHRASE", raising=False)
    result = rick("apikey", "create", "k", "--scope", "admin")
    assert result.exit_code == 1
    assert "RICK_MASTER_KEY" in result.output and "rick creds genkey" in result.output
    assert not (tmp_path / "empty" / "apikeys.db").exists()


def test_editing_a_key_record_in_the_file_does_not_grant_anything(tmp_path: Path) -> None:
    keys = ApiKeys(tmp_path / "apikeys.db", b"p" * 32)
    reader = keys.create("reader", "read")
    revoked = keys.create("old", "admin")
    keys.revoke("old")
    conn = sqlite3.connect(tmp_path / "apikeys.db")
    conn.execute("UPDATE api_keys SET scope = 'admin' WHERE name = 'reader'")
    conn.execute("UPDATE api_keys SET revoked_at = NULL WHERE name = 'old'")
    conn.commit()
    conn.close()
    for key in (reader, revoked):
        with pytest.raises(ApiKeyRejected) as rejected:
            keys.verify(key, "read")
        assert rejected.value.reason is RejectReason.TAMPERED
