"""``rick apikey``: create, list, rotate and revoke API keys for rick's interfaces."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    from rick_core.security.apikeys import ApiKeyInfo, ApiKeys
    from rick_core.security.records import EventType

_SCOPES = ("read", "trade", "admin")
_SHOWN_ONCE = (
    "This is the only time the key is shown: store it now (a password manager, the "
    "client's secret store). rick keeps only a hash of it."
)


def _stdin_is_terminal() -> bool:
    """Whether a person can type at a prompt (not piped input, not a test runner)."""
    stream = sys.stdin
    return stream is not None and stream.isatty()


def _home() -> Path:
    from rick_core.config import rick_home

    return rick_home(os.environ)


def _existing_key_home(name: str) -> Path:
    """The home folder, once it is known to hold the key ``name`` (checked without the
    vault, so a mistyped name neither needs the master key nor creates a vault)."""
    from rick_core.security.apikeys import APIKEYS_FILENAME, ApiKeyError, read_api_keys

    home = _home()
    try:
        known = [info.name for info in read_api_keys(home / APIKEYS_FILENAME)]
    except ApiKeyError as exc:
        raise click.ClickException(str(exc)) from None
    if name not in known:
        raise click.ClickException(f"no API key named {name!r}; `rick apikey list` shows them")
    return home


def _hidden_prompt(text: str) -> str:
    value: str = click.prompt(text, hide_input=True, err=True)
    return value


def _open_keys(home: Path) -> ApiKeys:
    """The key set in ``home``, with its pepper from the vault (opened with the master
    key in RICK_MASTER_KEY or RICK_MASTER_PASSPHRASE, or a passphrase typed in a
    terminal); a ClickException otherwise.

    Creating the vault and storing the pepper (the first time) are audited.
    """
    from rick_core.security.apikeys import ApiKeyError, open_api_keys
    from rick_core.security.records import EventType
    from rick_core.security.vault import Vault, VaultError

    stored: list[tuple[str, str]] = []

    def on_event(event: str, component: str, name: str) -> None:
        if event in ("stored", "rotated"):
            stored.append((component, name))

    prompt = _hidden_prompt if _stdin_is_terminal() else None
    try:
        vault = Vault.open(home, environ=os.environ, prompt=prompt, on_event=on_event)
        keys = open_api_keys(home, vault)
    except (VaultError, ApiKeyError) as exc:
        raise click.ClickException(str(exc)) from None
    changes: list[tuple[EventType, dict[str, str]]] = []
    if vault.created:
        click.secho(
            f"Created the credential vault {vault.path}. Keep the master key (or passphrase) "
            "safe, away from this machine: without it no API key made here can be checked.",
            err=True,
            fg="yellow",
        )
        changes.append(
            (
                EventType.CONFIGURATION_CHANGED,
                {"change": "credential vault created", "path": str(vault.path)},
            )
        )
    changes += [
        (EventType.CREDENTIAL_STORED, {"component": component, "name": name})
        for component, name in stored
    ]
    if changes:
        from rick_core.security.audit import AuditError, append_now, cli_actor

        try:
            for kind, details in changes:
                append_now(home, kind, actor=cli_actor(), details=details)
        except AuditError as exc:
            keys.close()
            raise click.ClickException(
                f"the vault was changed (the API key pepper was stored), but the audit "
                f"record could not be written: {exc}. Fix that, then check the audit log "
                "with `rick audit`."
            ) from None
    return keys


def _auditor(home: Path, event: EventType) -> Callable[[ApiKeyInfo], None]:
    """An ``on_change`` hook appending ``event`` to the audit log; if the record cannot
    be written the change is rolled back and the command fails."""
    from rick_core.security.audit import AuditError, append_now, cli_actor

    def record(info: ApiKeyInfo) -> None:
        try:
            append_now(home, event, actor=cli_actor(), details=info.audit_details())
        except AuditError as exc:
            raise click.ClickException(
                f"cannot write the audit record ({exc}); nothing was changed. "
                f"Check that {home} is writable and `rick audit` works, then try again."
            ) from exc

    return record


def _time(value: datetime | None, empty: str = "-") -> str:
    from rick_core.reports import format_time

    return empty if value is None else format_time(value)


def _describe(info: ApiKeyInfo) -> str:
    if info.expires_at is None:
        expires = "never expires"
    else:
        expires = f"expires {_time(info.expires_at)} UTC"
    return f"key id {info.key_id}, scope {info.scope.value}, {expires}"


def _show_key(key: str) -> None:
    # The key alone on stdout (so `KEY=$(rick apikey create ...)` works); the rest on stderr.
    click.echo(key)
    click.secho(_SHOWN_ONCE, err=True, fg="yellow")


@click.group()
def apikey() -> None:
    """Create and revoke API keys for rick's interfaces (the REST API, the WebSocket proxy).

    A key is shown once, when it is created or rotated; rick stores only a hash
    of it, checked with a secret kept in the vault. Commands that change keys
    need the master key: set RICK_MASTER_KEY (or RICK_MASTER_PASSPHRASE). Every
    change is recorded in the audit log.
    """


@apikey.command()
@click.argument("name")
@click.option(
    "--scope",
    type=click.Choice(_SCOPES, case_sensitive=False),
    required=True,
    help="What the key may do: read < trade < admin (each allows the ones before it).",
)
@click.option(
    "--expires",
    "expires_days",
    type=click.IntRange(min=1, max=36500),
    default=None,
    metavar="DAYS",
    help="Stop working after DAYS days (default: never).",
)
def create(name: str, scope: str, expires_days: int | None) -> None:
    """Create the API key NAME (letters, digits, - and _) and print it, once."""
    from rick_core.security.apikeys import ApiKeyError, check_name
    from rick_core.security.records import EventType

    try:
        check_name(name)  # before the vault is opened, or created
    except ApiKeyError as exc:
        raise click.ClickException(str(exc)) from None
    home = _home()
    created: list[ApiKeyInfo] = []

    def on_change(info: ApiKeyInfo) -> None:
        _auditor(home, EventType.API_KEY_CREATED)(info)
        created.append(info)

    with _open_keys(home) as keys:
        try:
            key = keys.create(name, scope, expires_days=expires_days, on_change=on_change)
        except ApiKeyError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"Created API key {name!r}: {_describe(created[0])}.", err=True)
    _show_key(key)


@apikey.command()
@click.argument("name")
def rotate(name: str) -> None:
    """Give the API key NAME a new key id and secret, and print the new key, once.

    The old key stops working at once; scope and expiry stay.
    """
    from rick_core.security.apikeys import ApiKeyError
    from rick_core.security.records import EventType

    home = _existing_key_home(name)
    rotated: list[ApiKeyInfo] = []

    def on_change(info: ApiKeyInfo) -> None:
        _auditor(home, EventType.API_KEY_ROTATED)(info)
        rotated.append(info)

    with _open_keys(home) as keys:
        try:
            key = keys.rotate(name, on_change=on_change)
        except ApiKeyError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(
        f"Rotated API key {name!r}: {_describe(rotated[0])}. The old key no longer works.",
        err=True,
    )
    _show_key(key)


@apikey.command()
@click.argument("name")
def revoke(name: str) -> None:
    """Revoke the API key NAME: it stops working at once."""
    from rick_core.security.apikeys import ApiKeyError
    from rick_core.security.records import EventType

    home = _existing_key_home(name)
    with _open_keys(home) as keys:
        try:
            info = keys.revoke(name, on_change=_auditor(home, EventType.API_KEY_REVOKED))
        except ApiKeyError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"Revoked API key {name!r} (key id {info.key_id}).")


@apikey.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of keys.")
def list_keys(as_json: bool) -> None:
    """List the API keys: name, scope, key id, times (UTC) and status. Never the keys.

    Needs no master key: nothing secret is shown.
    """
    from rick_core.security.apikeys import APIKEYS_FILENAME, ApiKeyError, read_api_keys

    try:
        found = read_api_keys(_home() / APIKEYS_FILENAME)
    except ApiKeyError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        import json

        click.echo(json.dumps([_jsonable(info) for info in found], indent=2))
        return
    if not found:
        click.echo("no API keys yet: `rick apikey create NAME --scope read` makes one")
        return
    from rick_core.reports import format_table

    headers = ("name", "scope", "key id", "status", "created", "expires", "rotated", "revoked")
    rows = (
        (
            info.name,
            info.scope.value,
            info.key_id,
            info.status(),
            _time(info.created_at),
            _time(info.expires_at, "never"),
            _time(info.rotated_at),
            _time(info.revoked_at),
        )
        for info in found
    )
    for line in format_table(headers, rows):
        click.echo(line)
    click.echo("(times in UTC)")


def _jsonable(info: ApiKeyInfo) -> dict[str, str | None]:
    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "name": info.name,
        "scope": info.scope.value,
        "key_id": info.key_id,
        "status": info.status(),
        "created_at": iso(info.created_at),
        "expires_at": iso(info.expires_at),
        "rotated_at": iso(info.rotated_at),
        "revoked_at": iso(info.revoked_at),
    }
