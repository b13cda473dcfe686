"""The encrypted credential vault and `rick creds`: no secret ever in clear on disk,
in an output or in a log line; a wrong key or a damaged file changes nothing."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner, Result

from rick_core.commands.creds import EnvFileError, creds, parse_env
from rick_core.components import Credentials
from rick_core.logs import close_logging, configure_logging, forget_secrets, redact
from rick_core.security.vault import (
    CredentialNotFound,
    InvalidMasterKey,
    NoMasterKey,
    ScryptParams,
    Vault,
    VaultCorrupted,
    VaultError,
    VaultNotFound,
    WrongMasterKey,
    generate_master_key,
)

SECRET = "oanda-token-9f8e7d6c5b4a"
ROTATED = "oanda-token-rotated-0a1b2c3d"
FAST = ScryptParams(n=2**4, r=8, p=1)


@pytest.fixture(autouse=True)
def _no_secrets_left() -> Iterator[None]:
    forget_secrets()
    yield
    close_logging()
    forget_secrets()
    structlog.reset_defaults()


@pytest.fixture
def home() -> Path:
    return Path(os.environ["RICK_HOME"])


@pytest.fixture
def key() -> str:
    return generate_master_key()


@pytest.fixture
def env(key: str) -> dict[str, str]:
    return {"RICK_MASTER_KEY": key}


def vault_path(home: Path) -> Path:
    return home / "vault.json"


def every_byte(home: Path) -> bytes:
    """The bytes of every file under ``home`` (vault, lock, audit db and WAL, logs)."""
    return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())


def assert_nowhere(home: Path, *values: str) -> None:
    data = every_byte(home)
    for value in values:
        assert value.encode("utf-8") not in data
        assert value.encode("utf-16-le") not in data


def edit(path: Path, change: Any) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


# --------------------------------------------------------------------------- the API


def test_round_trip_set_get_list_rotate_delete(home: Path, env: dict[str, str]) -> None:
    vault = Vault.open(home, environ=env)
    assert vault.created
    assert vault.set("oanda", "token", SECRET) is True
    assert vault.set("oanda", "account_pin", "1234-5678") is True
    assert vault.set("telegram", "bot_token", "bot-token-value") is True

    again = Vault.open(home, environ=env)
    assert not again.created
    assert again.get("oanda", "token") == SECRET
    assert again.names("oanda") == ["account_pin", "token"]

    [pin, token, bot] = again.list()
    assert (token.component, token.name, token.rotated_at) == ("oanda", "token", None)
    assert (pin.name, bot.component) == ("account_pin", "telegram")
    assert (
        token.created_at.utcoffset() is not None
        and token.created_at.utcoffset().total_seconds() == 0
    )

    assert again.set("oanda", "token", ROTATED) is False  # a replacement is a rotation
    assert vault.get("oanda", "token") == ROTATED
    [_, token, _] = vault.list()
    assert token.rotated_at is not None and token.rotated_at >= token.created_at

    vault.rotate("oanda", "account_pin", "8765-4321")
    assert vault.get("oanda", "account_pin") == "8765-4321"
    vault.delete("oanda", "account_pin")
    assert [c.name for c in vault.list()] == ["token", "bot_token"]
    with pytest.raises(KeyError, match="account_pin"):
        vault.get("oanda", "account_pin")


def test_missing_credentials_are_key_errors_naming_them(home: Path, env: dict[str, str]) -> None:
    vault = Vault.open(home, environ=env)
    vault.set("oanda", "token", SECRET)
    with pytest.raises(KeyError) as info:
        vault.get("oanda", "api_key")
    assert isinstance(info.value, CredentialNotFound)
    assert str(info.value).startswith("no credential 'api_key' is stored for 'oanda'")
    assert "rick creds set oanda api_key" in str(info.value)
    assert SECRET not in str(info.value)
    with pytest.raises(CredentialNotFound, match="rick creds set oanda nope"):
        vault.rotate("oanda", "nope", "value-1234")
    with pytest.raises(CredentialNotFound):
        vault.delete("binance", "token")


def test_bad_names_and_empty_values_are_refused_without_echo(
    home: Path, env: dict[str, str]
) -> None:
    vault = Vault.open(home, environ=env)
    with pytest.raises(VaultError, match="empty value"):
        vault.set("oanda", "token", "")
    with pytest.raises(VaultError, match="name is not valid") as info:
        vault.set("oanda", "sk live 123456", SECRET)  # a value typed as a name
    assert "sk live" not in str(info.value)
    with pytest.raises(VaultError, match="component name"):
        vault.set("oanda broker", "token", SECRET)
    assert vault.list() == []


def test_the_file_is_private_and_leaves_no_temporary_files(home: Path, env: dict[str, str]) -> None:
    vault = Vault.open(home, environ=env)
    for i in range(3):
        vault.set("oanda", f"token{i}", SECRET)
    assert stat.S_IMODE(vault_path(home).stat().st_mode) == 0o600
    assert sorted(p.name for p in home.iterdir()) == ["vault.json", "vault.json.lock"]


def test_the_format_has_a_header_and_one_encrypted_blob(home: Path, env: dict[str, str]) -> None:
    vault = Vault.open(home, environ=env)
    vault.set("oanda", "token", SECRET)
    document = json.loads(vault_path(home).read_text())
    assert set(document) == {"format", "version", "kdf", "key_check", "nonce", "data"}
    assert (document["format"], document["version"], document["kdf"]) == (
        "rick-vault",
        1,
        {"name": "raw"},
    )
    assert len(base64.b64decode(document["nonce"])) == 12
    # names are encrypted too
    assert b"oanda" not in vault_path(home).read_bytes()
    nonce = document["nonce"]
    vault.set("oanda", "token", ROTATED)
    assert json.loads(vault_path(home).read_text())["nonce"] != nonce  # fresh nonce per write


@pytest.mark.parametrize("passphrase", [False, True])
def test_no_secret_in_any_file_after_set_and_rotate(home: Path, passphrase: bool) -> None:
    environ = (
        {"RICK_MASTER_PASSPHRASE": "correct horse battery"}
        if passphrase
        else {"RICK_MASTER_KEY": generate_master_key()}
    )
    vault = Vault.open(home, environ=environ, scrypt=FAST)
    vault.set("oanda", "token", SECRET)
    assert_nowhere(home, SECRET)
    vault.rotate("oanda", "token", ROTATED)
    assert_nowhere(home, SECRET, ROTATED, *environ.values())
    assert Vault.open(home, environ=environ).get("oanda", "token") == ROTATED


def test_master_keys_are_checked(home: Path) -> None:
    key = generate_master_key()
    assert len(key) == 44 and len(base64.urlsafe_b64decode(key)) == 32
    assert generate_master_key() != key
    for bad in ("not-a-key", base64.urlsafe_b64encode(b"x" * 16).decode(), key[:-2] + "!!"):
        with pytest.raises(InvalidMasterKey, match="rick creds genkey") as info:
            Vault.open(home, environ={"RICK_MASTER_KEY": bad})
        assert bad not in str(info.value)
    assert not vault_path(home).exists()


def test_no_key_and_no_terminal_says_how_to_make_one(home: Path) -> None:
    with pytest.raises(NoMasterKey) as info:
        Vault.open(home, environ={})
    message = str(info.value)
    assert "RICK_MASTER_KEY" in message and "rick creds genkey" in message
    assert not vault_path(home).exists()


def test_open_without_create_does_not_create(home: Path, env: dict[str, str]) -> None:
    with pytest.raises(VaultNotFound, match="rick creds set"):
        Vault.open(home, environ=env, create=False)
    assert not vault_path(home).exists()


# --------------------------------------------------------------------------- wrong keys


def test_a_wrong_key_changes_nothing_and_says_so(home: Path, env: dict[str, str]) -> None:
    Vault.open(home, environ=env).set("oanda", "token", SECRET)
    before = vault_path(home).read_bytes()
    other = generate_master_key()
    with pytest.raises(WrongMasterKey) as info:
        Vault.open(home, environ={"RICK_MASTER_KEY": other})
    message = str(info.value)
    assert message.startswith(
        f"the master key (or passphrase) does not open {vault_path(home)}; nothing was changed"
    )
    assert other not in message and SECRET not in message
    assert vault_path(home).read_bytes() == before


def test_a_vault_replaced_under_an_open_instance_is_refused(
    home: Path, env: dict[str, str]
) -> None:
    vault = Vault.open(home, environ=env)
    vault.set("oanda", "token", SECRET)
    vault_path(home).unlink()
    Vault.open(home, environ={"RICK_MASTER_KEY": generate_master_key()}).set("x", "y", "zzzz-1")
    before = vault_path(home).read_bytes()
    with pytest.raises(WrongMasterKey):
        vault.set("oanda", "token", ROTATED)
    with pytest.raises(WrongMasterKey):
        vault.get("x", "y")
    assert vault_path(home).read_bytes() == before


# --------------------------------------------------------------------------- damage


def _flip_data(document: dict[str, Any]) -> None:
    data = bytearray(base64.b64decode(document["data"]))
    data[len(data) // 2] ^= 0x01
    document["data"] = base64.b64encode(bytes(data)).decode()


def _flip_key_check(document: dict[str, Any]) -> None:
    check = bytearray(base64.b64decode(document["key_check"]))
    check[-1] ^= 0x01
    document["key_check"] = base64.b64encode(bytes(check)).decode()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


DAMAGE: dict[str, Any] = {
    "flipped ciphertext byte": lambda p: edit(p, _flip_data),
    "flipped nonce": lambda p: edit(
        p, lambda d: d.update(nonce=base64.b64encode(b"\0" * 12).decode())
    ),
    "truncated file": _truncate,
    "truncated ciphertext": lambda p: edit(p, lambda d: d.update(data=d["data"][:24])),
    "garbage JSON": lambda p: p.write_bytes(b"{not json at all"),
    "empty file": lambda p: p.write_bytes(b""),
    "not an object": lambda p: p.write_text("[1, 2]"),
    "unknown version": lambda p: edit(p, lambda d: d.update(version=2)),
    "edited kdf": lambda p: edit(p, lambda d: d.update(kdf={"name": "raw", "extra": 1})),
    "unknown kdf": lambda p: edit(p, lambda d: d.update(kdf={"name": "argon9"})),
    "extra header field": lambda p: edit(p, lambda d: d.update(comment="hi")),
    "edited key check": lambda p: edit(p, _flip_key_check),
    "scrypt cost too high": lambda p: edit(
        p,
        lambda d: d.update(
            kdf={"name": "scrypt", "salt": "c2FsdHNhbHRzYWx0c2FsdA==", "n": 2**20, "r": 32, "p": 1}
        ),
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_vault_is_reported_and_never_half_read(
    home: Path, env: dict[str, str], damage: str
) -> None:
    vault = Vault.open(home, environ=env)
    vault.set("oanda", "token", SECRET)
    vault.set("oanda", "account", "acct-1234")
    DAMAGE[damage](vault_path(home))
    before = vault_path(home).read_bytes()

    with pytest.raises(VaultCorrupted) as info:
        Vault.open(home, environ=env)
    message = str(info.value)
    assert str(vault_path(home)) in message and "backup" in message
    assert SECRET not in message
    for read in (
        lambda: vault.get("oanda", "token"),
        vault.list,
        lambda: vault.fingerprint("oanda"),
        lambda: vault.set("oanda", "other", "value-5678"),
        lambda: vault.delete("oanda", "token"),
    ):
        with pytest.raises(VaultCorrupted):
            read()
    assert vault_path(home).read_bytes() == before


def test_a_header_swapped_from_another_vault_is_refused(tmp_path: Path) -> None:
    environ = {"RICK_MASTER_PASSPHRASE": "same passphrase"}
    first, second = tmp_path / "a", tmp_path / "b"
    Vault.open(first, environ=environ, scrypt=FAST).set("oanda", "token", SECRET)
    Vault.open(second, environ=environ, scrypt=FAST).set("oanda", "token", ROTATED)
    a = json.loads(vault_path(first).read_text())
    edit(vault_path(second), lambda d: d.update(kdf=a["kdf"], key_check=a["key_check"]))
    with pytest.raises(VaultCorrupted, match="altered"):
        Vault.open(second, environ=environ)


# --------------------------------------------------------------------------- passphrases


def test_a_passphrase_vault_uses_scrypt_with_its_parameters_in_the_header(home: Path) -> None:
    environ = {"RICK_MASTER_PASSPHRASE": "correct horse battery"}
    vault = Vault.open(home, environ=environ, scrypt=FAST)
    assert vault.created and vault.passphrase
    vault.set("oanda", "token", SECRET)
    kdf = json.loads(vault_path(home).read_text())["kdf"]
    assert (kdf["name"], kdf["n"], kdf["r"], kdf["p"]) == ("scrypt", 16, 8, 1)
    assert len(base64.b64decode(kdf["salt"])) == 16

    # the header's parameters are used, whatever the caller's defaults
    assert Vault.open(home, environ=environ).get("oanda", "token") == SECRET
    before = vault_path(home).read_bytes()
    with pytest.raises(WrongMasterKey):
        Vault.open(home, environ={"RICK_MASTER_PASSPHRASE": "wrong horse"})
    with pytest.raises(NoMasterKey, match="passphrase, not a master key"):
        Vault.open(home, environ={"RICK_MASTER_KEY": generate_master_key()})
    assert vault_path(home).read_bytes() == before


def test_a_passphrase_is_prompted_for_twice_when_creating(home: Path) -> None:
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "typed passphrase"

    vault = Vault.open(home, environ={}, prompt=prompt, scrypt=FAST)
    vault.set("oanda", "token", SECRET)
    assert len(asked) == 2 and "new credential vault" in asked[0]

    asked.clear()
    assert Vault.open(home, environ={}, prompt=prompt).get("oanda", "token") == SECRET
    assert len(asked) == 1

    with pytest.raises(NoMasterKey):
        Vault.open(home, environ={})


def test_mismatched_or_empty_passphrases_create_nothing(tmp_path: Path) -> None:
    answers = iter(["one", "two"])
    with pytest.raises(VaultError, match="differ"):
        Vault.open(tmp_path, environ={}, prompt=lambda _: next(answers), scrypt=FAST)
    with pytest.raises(VaultError, match="empty passphrase"):
        Vault.open(tmp_path, environ={}, prompt=lambda _: "", scrypt=FAST)
    assert not vault_path(tmp_path).exists()


def test_a_key_vault_does_not_take_a_passphrase(home: Path, env: dict[str, str]) -> None:
    Vault.open(home, environ=env)
    with pytest.raises(NoMasterKey, match="master key, not a passphrase"):
        Vault.open(home, environ={"RICK_MASTER_PASSPHRASE": "anything"})


# --------------------------------------------------------------------------- concurrency

_WRITER = textwrap.dedent(
    """
    import sys
    import time
    from pathlib import Path
    from rick_core.security.vault import Vault

    home, tag, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    while not go.exists():  # start together, so the writes (and the creation) race
        time.sleep(0.001)
    vault = Vault.open(home)
    for i in range(20):
        vault.set(f"broker-{tag}", f"key{i:02d}", f"value-{tag}-{i:02d}")
    """
)


def test_two_processes_storing_at_once_lose_nothing(home: Path, key: str, tmp_path: Path) -> None:
    environ = {**os.environ, "RICK_MASTER_KEY": key}
    go = tmp_path / "go"
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(home), tag, str(go)], env=environ)
        for tag in ("a", "b")
    ]
    time.sleep(0.5)  # both processes started and waiting
    go.touch()
    assert [w.wait(timeout=60) for w in writers] == [0, 0]

    vault = Vault.open(home, environ={"RICK_MASTER_KEY": key})
    stored = {(c.component, c.name) for c in vault.list()}
    assert len(stored) == 40
    for tag in ("a", "b"):
        for i in range(20):
            assert vault.get(f"broker-{tag}", f"key{i:02d}") == f"value-{tag}-{i:02d}"


# --------------------------------------------------------------------------- for components


def test_credentials_for_sees_a_rotation_made_by_another_vault(
    home: Path, env: dict[str, str]
) -> None:
    engine_side = Vault.open(home, environ=env)
    engine_side.set("oanda", "token", SECRET)
    credentials: Credentials = engine_side.credentials_for("oanda")
    assert credentials.get("token") == SECRET
    assert list(credentials.names()) == ["token"]

    Vault.open(home, environ=env).rotate("oanda", "token", ROTATED)
    assert credentials.get("token") == ROTATED
    with pytest.raises(KeyError, match="'password'"):
        credentials.get("password")


def test_the_fingerprint_changes_with_the_component_secrets_only(
    home: Path, env: dict[str, str]
) -> None:
    vault = Vault.open(home, environ=env)
    empty = vault.fingerprint("oanda")
    vault.set("oanda", "token", SECRET)
    vault.set("telegram", "bot_token", "bot-token-value")
    seen = {empty, vault.fingerprint("oanda")}
    telegram = vault.fingerprint("telegram")

    vault.get("oanda", "token")
    assert vault.fingerprint("oanda") in seen  # reading changes nothing

    other = Vault.open(home, environ=env)
    for change in (
        lambda: other.rotate("oanda", "token", ROTATED),
        lambda: other.set("oanda", "token", ROTATED),  # even the same value again
        lambda: other.set("oanda", "pin", "pin-12345"),
        lambda: other.delete("oanda", "pin"),
        lambda: other.delete("oanda", "token"),
        lambda: other.set("oanda", "token", SECRET),  # back to the start
    ):
        change()
        fingerprint = vault.fingerprint("oanda")
        assert fingerprint not in seen
        seen.add(fingerprint)
        assert SECRET not in fingerprint
    assert vault.fingerprint("telegram") == telegram


def test_values_read_are_registered_and_never_logged(home: Path, env: dict[str, str]) -> None:
    Vault.open(home, environ=env).set("oanda", "token", SECRET)
    forget_secrets()  # a fresh process: only what it reads is registered
    assert redact(SECRET) == SECRET

    stream = io.StringIO()
    configure_logging(home=home, console=False, stream=stream)
    value = Vault.open(home, environ=env).credentials_for("oanda").get("token")
    structlog.get_logger("test").info(f"connecting with {value}", token=value)
    assert SECRET not in stream.getvalue() and "***" in stream.getvalue()
    close_logging()
    assert_nowhere(home, SECRET)


def test_on_event_reports_every_access_and_change(home: Path, env: dict[str, str]) -> None:
    events: list[tuple[str, str, str]] = []
    vault = Vault.open(home, environ=env, on_event=lambda *e: events.append(e))
    vault.set("oanda", "token", SECRET)
    vault.set("oanda", "token", ROTATED)
    vault.credentials_for("oanda").get("token")
    vault.rotate("oanda", "token", SECRET)
    vault.delete("oanda", "token")
    with pytest.raises(KeyError):
        vault.delete("oanda", "token")
    assert events == [
        ("stored", "oanda", "token"),
        ("rotated", "oanda", "token"),
        ("accessed", "oanda", "token"),
        ("rotated", "oanda", "token"),
        ("deleted", "oanda", "token"),
    ]


def test_set_many_is_all_or_nothing(home: Path, env: dict[str, str]) -> None:
    vault = Vault.open(home, environ=env)
    vault.set("oanda", "a", "value-aaaa")
    assert vault.set_many("oanda", {"a": "value-a2", "b": "value-bbbb"}) == {"a": False, "b": True}
    with pytest.raises(VaultError):
        vault.set_many("oanda", {"c": "value-cccc", "d": ""})
    assert vault.names("oanda") == ["a", "b"]


# --------------------------------------------------------------------------- .env files


def test_parse_env_understands_export_quotes_and_comments() -> None:
    text = textwrap.dedent(
        """\
        # OANDA practice account
        OANDA_TOKEN=plain-value  # trailing comment
        export ACCOUNT_ID = "101-001-1"
        export\tSINGLE='literal \\n # not a comment'
        DOUBLE="line1\\nline2 \\"quoted\\" # kept" # comment
        HASH=abc#def

        EMPTY=
        MULTI="first
        second"
        OANDA_TOKEN=last-wins
        """
    )
    assert parse_env(text) == [
        ("ACCOUNT_ID", "101-001-1"),
        ("SINGLE", "literal \\n # not a comment"),
        ("DOUBLE", 'line1\nline2 "quoted" # kept'),
        ("HASH", "abc#def"),
        ("EMPTY", ""),
        ("MULTI", "first\nsecond"),
        ("OANDA_TOKEN", "last-wins"),
    ]


def test_parse_env_literal_single_quotes() -> None:
    assert parse_env("A='x \\n y' # c\nB='#no'") == [("A", "x \\n y"), ("B", "#no")]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("just-a-secret-value-123\n", "line 1: expected KEY=VALUE"),
        ("A=1\n9X=secret-value-123\n", "line 2: expected KEY=VALUE"),
        ('A="secret-value-123\n', "never closed"),
        ('A="secret-value-123" tail\n', "after the closing quote"),
    ],
)
def test_parse_env_errors_name_the_line_not_its_text(text: str, problem: str) -> None:
    with pytest.raises(EnvFileError, match=problem) as info:
        parse_env(text, "prod.env")
    assert "prod.env" in str(info.value)
    assert "secret-value-123" not in str(info.value)


# --------------------------------------------------------------------------- the CLI


def run(args: list[str], env: dict[str, str], stdin: str | None = None) -> Result:
    return CliRunner().invoke(creds, args, input=stdin, env=env)


def outputs(result: Result) -> str:
    return result.stdout + result.stderr


def test_cli_set_list_rotate_delete_never_show_values(home: Path, env: dict[str, str]) -> None:
    first = run(["set", "oanda", "token"], env, SECRET + "\n")
    assert first.exit_code == 0, outputs(first)
    assert first.stdout == "stored oanda token\n"
    assert "Created the credential vault" in first.stderr
    assert "Back that key up" in first.stderr and "Never commit it" in first.stderr
    assert Vault.open(home, environ=env).get("oanda", "token") == SECRET  # newline stripped

    again = run(["set", "oanda", "token"], env, SECRET + "\n")
    assert again.stdout == "replaced (rotated) oanda token\n"
    assert "Created" not in again.stderr

    rotated = run(["rotate", "oanda", "token"], env, ROTATED)
    assert rotated.exit_code == 0 and rotated.stdout == "rotated oanda token\n"
    listed = run(["list"], env)
    assert listed.exit_code == 0
    assert listed.stdout.splitlines()[0].split() == [
        "component",
        "name",
        "stored",
        "(UTC)",
        "rotated",
        "(UTC)",
    ]
    assert listed.stdout.splitlines()[1].startswith("oanda      token")
    as_json = json.loads(run(["list", "--json"], env).stdout)
    assert [(c["component"], c["name"]) for c in as_json] == [("oanda", "token")]
    assert as_json[0]["rotated_at"].endswith("+00:00")
    deleted = run(["delete", "oanda", "token"], env)
    assert deleted.exit_code == 0 and deleted.stdout == "deleted oanda token\n"
    assert run(["list"], env).stdout == "no credentials stored\n"

    for result in (first, again, rotated, listed, deleted):
        assert SECRET not in outputs(result) and ROTATED not in outputs(result)
    assert_nowhere(home, SECRET, ROTATED, env["RICK_MASTER_KEY"])


def test_cli_changes_are_audited_without_values(home: Path, env: dict[str, str]) -> None:
    from rick_core.security.audit import AuditLog

    run(["set", "oanda", "token"], env, SECRET)
    run(["set", "oanda", "token"], env, SECRET)
    run(["rotate", "oanda", "token"], env, ROTATED)
    run(["delete", "oanda", "token"], env)
    run(["list"], env)
    with AuditLog.open(home / "audit.db", read_only=True) as log:
        records = log.query()
    assert [(r.type.value, dict(r.details)) for r in records] == [
        (
            "CONFIGURATION_CHANGED",
            {"change": "credential vault created", "path": str(vault_path(home))},
        ),
        ("CREDENTIAL_STORED", {"component": "oanda", "name": "token"}),
        ("CREDENTIAL_ROTATED", {"component": "oanda", "name": "token"}),
        ("CREDENTIAL_ROTATED", {"component": "oanda", "name": "token"}),
        ("CREDENTIAL_ROTATED", {"component": "oanda", "name": "token", "deleted": True}),
    ]
    assert {r.actor.source for r in records} == {"cli"}
    assert_nowhere(home, SECRET, ROTATED)


def test_cli_prompts_twice_without_echo_in_a_terminal(
    home: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rick_core.commands.creds._stdin_is_terminal", lambda: True)
    result = run(["set", "oanda", "token"], env, f"{SECRET}\n{SECRET}\n")
    assert result.exit_code == 0, outputs(result)
    assert "Value of oanda token" in result.stderr and "Repeat for confirmation" in result.stderr
    assert SECRET not in outputs(result)
    assert Vault.open(home, environ=env).get("oanda", "token") == SECRET

    result = run(["set", "oanda", "token"], env, f"{SECRET}\nsomething-else\n")
    assert result.exit_code != 0
    assert SECRET not in outputs(result) and "something-else" not in outputs(result)


def test_cli_refuses_empty_values(home: Path, env: dict[str, str]) -> None:
    for stdin in ("", "\n", "  \n"):
        result = run(["set", "oanda", "token"], env, stdin)
        assert result.exit_code == 1
        assert "refusing an empty value" in result.stderr
    assert Vault.open(home, environ=env).list() == []


def test_cli_strips_one_trailing_newline_only(home: Path, env: dict[str, str]) -> None:
    run(["set", "oanda", "token"], env, "two-newlines\n\n")
    run(["set", "oanda", "crlf"], env, "windows-value\r\n")
    vault = Vault.open(home, environ=env)
    assert vault.get("oanda", "token") == "two-newlines\n"
    assert vault.get("oanda", "crlf") == "windows-value"


def test_cli_rotate_and_delete_need_an_existing_credential(home: Path, env: dict[str, str]) -> None:
    result = run(["rotate", "oanda", "token"], env, SECRET)
    assert result.exit_code == 1 and "no credential vault" in result.stderr
    run(["set", "oanda", "token"], env, SECRET)
    result = run(["rotate", "oanda", "api_key"], env, ROTATED)
    assert result.exit_code == 1
    assert "nothing to rotate" in result.stderr and "rick creds set oanda api_key" in result.stderr
    result = run(["delete", "oanda", "api_key"], env)
    assert result.exit_code == 1 and "no credential 'api_key'" in result.stderr
    assert Vault.open(home, environ=env).get("oanda", "token") == SECRET


def test_cli_list_without_a_vault(home: Path, env: dict[str, str]) -> None:
    result = run(["list", "--json"], env)
    assert result.exit_code == 0 and result.stdout == "[]\n"
    assert "no credentials stored yet" in result.stderr
    assert not vault_path(home).exists()


def test_cli_wrong_key_changes_nothing(home: Path, env: dict[str, str]) -> None:
    run(["set", "oanda", "token"], env, SECRET)
    before = vault_path(home).read_bytes()
    wrong = {"RICK_MASTER_KEY": generate_master_key()}
    for args in (["set", "oanda", "token"], ["rotate", "oanda", "token"], ["list"]):
        result = run(args, wrong, ROTATED)
        assert result.exit_code == 1
        assert "does not open" in result.stderr and "nothing was changed" in result.stderr
    assert vault_path(home).read_bytes() == before


def test_cli_without_any_key_says_how_to_make_one(home: Path) -> None:
    result = run(["set", "oanda", "token"], {"RICK_MASTER_KEY": ""}, SECRET)
    assert result.exit_code == 1
    assert "RICK_MASTER_KEY" in result.stderr and "rick creds genkey" in result.stderr
    assert not vault_path(home).exists()


def test_cli_with_a_damaged_vault(home: Path, env: dict[str, str]) -> None:
    run(["set", "oanda", "token"], env, SECRET)
    _truncate(vault_path(home))
    result = run(["list"], env)
    assert result.exit_code == 1 and "damaged" in result.stderr and "backup" in result.stderr


def test_cli_passphrase_from_the_environment(home: Path) -> None:
    environ = {"RICK_MASTER_KEY": "", "RICK_MASTER_PASSPHRASE": "cli passphrase"}
    result = run(["set", "oanda", "token"], environ, SECRET)
    assert result.exit_code == 0, outputs(result)
    assert "your passphrase" in result.stderr
    assert Vault.open(home, environ=environ).get("oanda", "token") == SECRET
    assert_nowhere(home, SECRET, "cli passphrase")


def test_cli_import_env(home: Path, env: dict[str, str], tmp_path: Path) -> None:
    file = tmp_path / "oanda creds.env"
    file.write_text(
        f'# from the OANDA portal\nexport OANDA_TOKEN="{SECRET}"\nACCOUNT_PIN=pin-98765 # mine\n'
        "UNUSED=\n",
        encoding="utf-8",
    )
    run(["set", "oanda", "account_pin"], env, "old-pin-0000")
    result = run(["import-env", str(file), "--broker", "oanda"], env)
    assert result.exit_code == 0, outputs(result)
    assert "stored for oanda: oanda_token" in result.stdout
    assert "replaced (rotated) for oanda: account_pin" in result.stdout
    assert "skipped, no value: unused" in result.stdout
    assert f"shred -u '{file}'" in result.stdout and f"rm '{file}'" in result.stdout
    assert SECRET not in outputs(result) and "pin-98765" not in outputs(result)
    vault = Vault.open(home, environ=env)
    assert vault.get("oanda", "oanda_token") == SECRET
    assert vault.get("oanda", "account_pin") == "pin-98765"
    assert_nowhere(home, SECRET, "pin-98765")


def test_cli_import_env_needs_the_broker_and_a_valid_file(
    home: Path, env: dict[str, str], tmp_path: Path
) -> None:
    file = tmp_path / ".env"
    file.write_text(f"OANDA_TOKEN={SECRET}\n{SECRET}\n")
    assert run(["import-env", str(file)], env).exit_code == 2  # --broker is required
    result = run(["import-env", str(file), "--broker", "oanda"], env)
    assert result.exit_code == 1
    assert "line 2" in result.stderr and "nothing was stored" in result.stderr
    assert SECRET not in outputs(result)
    assert not vault_path(home).exists()


def test_cli_genkey(home: Path) -> None:
    result = run(["genkey"], {})
    assert result.exit_code == 0
    key = result.stdout.strip()
    assert result.stdout == key + "\n" and len(base64.urlsafe_b64decode(key)) == 32
    assert "export RICK_MASTER_KEY=" in result.stderr and "Back it up" in result.stderr
    assert key not in result.stderr
    Vault.open(home, environ={"RICK_MASTER_KEY": key})  # a key the vault takes


@pytest.mark.parametrize("command", ["set", "rotate"])
def test_a_value_typed_on_the_command_line_is_refused_and_not_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    from click.testing import CliRunner

    from rick_core.cli import _build_cli

    monkeypatch.setenv("RICK_HOME", str(tmp_path))
    monkeypatch.setenv("RICK_MASTER_KEY", generate_master_key())
    secret = "hunter2-on-the-command-line"
    result = CliRunner().invoke(_build_cli(), ["creds", command, "oanda", "token", secret])
    assert result.exit_code == 1
    assert "never given on the command line" in result.output
    assert secret not in result.output
    assert not (tmp_path / "vault.json").exists() or command == "rotate"
