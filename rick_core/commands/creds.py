"""``rick creds``: store, list, rotate and delete credentials in the encrypted vault.

The vault is ``$RICK_HOME/vault.json`` (see :mod:`rick_core.security.vault`),
opened with ``$RICK_MASTER_KEY`` (``rick creds genkey`` makes one) or a
passphrase (``$RICK_MASTER_PASSPHRASE``, or typed when rick runs in a terminal).

No command prints a credential's value. A value is typed at a hidden prompt
(twice) in a terminal, or read from stdin when it is piped in
(``pass show oanda | rick creds set oanda token``).

Every change is audited, with the component and the credential's name, never
its value: a new credential as ``CREDENTIAL_STORED``; a replaced one (``set`` of
an existing name, or ``rotate``) as ``CREDENTIAL_ROTATED``; a deletion as
``CREDENTIAL_ROTATED`` with ``"deleted": true`` (the end of the credential's
life, found with every other credential event); the creation of the vault as
``CONFIGURATION_CHANGED``.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rick_core.security.vault import Vault

__all__ = ["EnvFileError", "creds", "parse_env"]

# One audit event: (vault event, component, name).
_Event = tuple[str, str, str]


# --------------------------------------------------------------------------- helpers


def _stdin_is_terminal() -> bool:
    """Whether a person can type at a prompt (not piped input, not a test runner)."""
    stream = sys.stdin
    return stream is not None and stream.isatty()


def _home() -> Path:
    from rick_core.config import rick_home

    return rick_home(os.environ)


def _hidden_prompt(text: str) -> str:
    value: str = click.prompt(text, hide_input=True, err=True)
    return value


@contextmanager
def _vault(*, create: bool, changes: bool = True) -> Iterator[tuple[Vault, list[_Event]]]:
    """The vault and the list its changes are recorded in; on leaving, each change
    is appended to the audit log. A VaultError becomes a ClickException (exit 1).

    With ``changes``, the audit log is opened first: a command that cannot audit
    what it would do stops before doing it.
    """
    from rick_core.security.vault import Vault, VaultError

    home = _home()
    if changes:
        _check_audit_log(home)
    events: list[_Event] = []
    prompt = _hidden_prompt if _stdin_is_terminal() else None
    try:
        vault = Vault.open(
            home,
            environ=os.environ,
            prompt=prompt,
            create=create,
            on_event=lambda *event: events.append(event),
        )
    except VaultError as exc:
        raise click.ClickException(str(exc)) from None
    if vault.created:
        _audit(home, [("created", "", "")])
        _explain_new_vault(vault)
    try:
        yield vault, events
    except VaultError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if events:
            _audit(home, events)


def _check_audit_log(home: Path) -> None:
    from rick_core.security.audit import AUDIT_FILENAME, AuditError, AuditLog

    try:
        AuditLog.open(home / AUDIT_FILENAME).close()
    except AuditError as exc:
        raise click.ClickException(f"{exc}; nothing was changed") from None


def _audit(home: Path, events: list[_Event]) -> None:
    """Append one audit record per change; say so clearly if that fails (the change
    itself is made by then)."""
    from rick_core.security.audit import AuditError, append_now, cli_actor
    from rick_core.security.records import EventType

    for event, component, name in events:
        details: dict[str, Any] = {"component": component, "name": name}
        if event == "stored":
            kind = EventType.CREDENTIAL_STORED
        elif event == "rotated":
            kind = EventType.CREDENTIAL_ROTATED
        elif event == "deleted":
            kind = EventType.CREDENTIAL_ROTATED
            details["deleted"] = True
        elif event == "created":
            kind = EventType.CONFIGURATION_CHANGED
            details = {"change": "credential vault created", "path": str(home / "vault.json")}
        else:  # "accessed": this command reads no values
            continue
        try:
            append_now(home, kind, actor=cli_actor(), details=details)
        except AuditError as exc:
            what = f"{component} {name}".strip() or "the vault"
            raise click.ClickException(
                f"the change to {what} was made, but its audit record could not be written: "
                f"{exc}. Fix that, then check the audit log with `rick audit`."
            ) from None


def _explain_new_vault(vault: Vault) -> None:
    if vault.passphrase:
        how = "your passphrase"
        keep = (
            "Remember the passphrase, or keep it in a password manager: without it the "
            "credentials in the vault cannot be read by anyone, you included."
        )
    else:
        how = "the master key in $RICK_MASTER_KEY"
        keep = (
            "Back that key up somewhere safe, away from this machine (a password manager): "
            "losing it loses every credential in the vault. Never commit it to git or write "
            "it in rick.toml; give it to rick through the environment only (for a service, "
            "an EnvironmentFile readable only by you)."
        )
    click.echo(f"Created the credential vault {vault.path}, encrypted with {how}.", err=True)
    click.echo(keep, err=True)


def _read_value(component: str, name: str) -> str:
    """A value from a hidden prompt (asked twice) in a terminal, else from stdin,
    without one trailing newline. Empty values are refused."""
    if _stdin_is_terminal():
        value: str = click.prompt(
            f"Value of {component} {name}",
            hide_input=True,
            confirmation_prompt=True,
            err=True,
        )
    else:
        value = sys.stdin.read()
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
    if not value.strip():
        raise click.ClickException(
            f"refusing an empty value for {component} {name}; nothing was stored. Type the "
            f"value at the prompt, or pipe it in: `... | rick creds set {component} {name}`"
        )
    return value


def _time_text(value: Any) -> str:
    from rick_core.reports import format_time

    return "-" if value is None else format_time(value)


# --------------------------------------------------------------------------- .env files


class EnvFileError(ValueError):
    """A ``.env`` file cannot be parsed. The message names the file and line,
    never the line's text (it may hold a secret)."""


_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def parse_env(text: str, source: str = ".env") -> list[tuple[str, str]]:
    """``(KEY, value)`` pairs of a ``.env`` file, in file order (a repeated key: the last wins).

    Understood: ``KEY=VALUE`` lines, an ``export`` prefix, blank lines and
    ``#`` comments (whole lines, or after a space following an unquoted value
    or a closing quote), single quotes (literal), double quotes (with ``\\n``,
    ``\\t``, ``\\"`` and ``\\\\`` escapes); quoted values may span lines.

    Raises:
        EnvFileError: a line is not ``KEY=VALUE``, or a quote is not closed.
    """
    found: dict[str, str] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        number = index + 1
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        if re.match(r"export\s", line):
            line = line[len("export") :].lstrip()
        key, equals, rest = line.partition("=")
        key = key.strip()
        if not equals or not _ENV_KEY.fullmatch(key):
            raise EnvFileError(
                f"{source} line {number}: expected KEY=VALUE (a name of letters, digits and "
                "'_', then '='); the line is not shown, in case it holds a secret"
            )
        rest = rest.lstrip()
        if rest[:1] in ('"', "'"):
            quote, body = rest[0], rest[1:]
            chars: list[str] = []
            while True:
                end, closed = _scan_quoted(body, quote, chars)
                if closed:
                    break
                if index >= len(lines):
                    raise EnvFileError(
                        f"{source} line {number}: the value of {key} opens a {quote} quote "
                        "that is never closed"
                    )
                chars.append("\n")
                body = lines[index]
                index += 1
            after = body[end:].strip()
            if after and not after.startswith("#"):
                raise EnvFileError(
                    f"{source} line {number}: unexpected text after the closing quote of {key}"
                )
            value = "".join(chars)
        else:
            value = re.split(r"\s#", rest, maxsplit=1)[0].strip()
        found.pop(key, None)
        found[key] = value
    return list(found.items())


def _scan_quoted(body: str, quote: str, chars: list[str]) -> tuple[int, bool]:
    """Append the characters of ``body`` up to the closing ``quote`` to ``chars``;
    return the index after the quote and True, or ``len(body)`` and False."""
    i = 0
    while i < len(body):
        c = body[i]
        if c == quote:
            return i + 1, True
        if c == "\\" and quote == '"' and i + 1 < len(body):
            nxt = body[i + 1]
            chars.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        chars.append(c)
        i += 1
    return i, False


# --------------------------------------------------------------------------- commands


@click.group()
def creds() -> None:
    """Store broker credentials in the encrypted vault ($RICK_HOME/vault.json).

    The vault is opened with the master key in $RICK_MASTER_KEY (make one with
    `rick creds genkey`) or a passphrase ($RICK_MASTER_PASSPHRASE, or typed when
    asked). Values are typed at a hidden prompt, or piped in on stdin; no
    command ever prints one. Plugins read a component's credentials by name;
    in rick.toml, refer to one as "vault:<name>".
    """


def _refuse_values_on_the_command_line(extra: tuple[str, ...]) -> None:
    # Never echoed: the extra word is most likely the secret itself.
    if extra:
        raise click.ClickException(
            "a credential's value is never given on the command line (it would stay in your "
            "shell history and in the process list): run the command without it and type the "
            "value at the hidden prompt, or pipe it in. If you just typed a secret, rotate it."
        )


_EXTRA = click.argument("extra", nargs=-1, metavar="")


@creds.command("set")
@click.argument("component", metavar="BROKER")
@click.argument("name")
@_EXTRA
def set_(component: str, name: str, extra: tuple[str, ...]) -> None:
    """Store credential NAME of BROKER (or of any component in rick.toml).

    The value is typed twice at a hidden prompt, or read from stdin when it is
    piped in (one trailing newline is removed). Replacing a stored value is a
    rotation.
    """
    _refuse_values_on_the_command_line(extra)
    with _vault(create=True) as (vault, _):
        value = _read_value(component, name)
        new = vault.set(component, name, value)
    click.echo(f"{'stored' if new else 'replaced (rotated)'} {component} {name}")


@creds.command("rotate")
@click.argument("component", metavar="BROKER")
@click.argument("name")
@_EXTRA
def rotate(component: str, name: str, extra: tuple[str, ...]) -> None:
    """Replace the value of stored credential NAME of BROKER.

    The new value is read like `rick creds set` reads one. A running rick uses
    it at the broker's next connection.
    """
    _refuse_values_on_the_command_line(extra)
    with _vault(create=False) as (vault, _):
        if name not in vault.names(component):
            raise click.ClickException(
                f"no credential {name!r} is stored for {component!r}, so there is nothing to "
                f"rotate; store it with `rick creds set {component} {name}`"
            )
        value = _read_value(component, name)
        vault.rotate(component, name, value)
    click.echo(f"rotated {component} {name}")


@creds.command("delete")
@click.argument("component", metavar="BROKER")
@click.argument("name")
def delete(component: str, name: str) -> None:
    """Delete stored credential NAME of BROKER."""
    with _vault(create=False) as (vault, _):
        vault.delete(component, name)
    click.echo(f"deleted {component} {name}")


@creds.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def list_(as_json: bool) -> None:
    """List stored credentials: component, name, when stored and last rotated (UTC).

    Values are never shown.
    """
    path = _home() / "vault.json"
    if not path.exists():
        click.echo(f"no credentials stored yet (no vault at {path})", err=True)
        if as_json:
            click.echo("[]")
        return
    with _vault(create=False, changes=False) as (vault, _):
        found = vault.list()
    if as_json:
        import json

        rows = [
            {
                "component": c.component,
                "name": c.name,
                "created_at": c.created_at.isoformat(),
                "rotated_at": None if c.rotated_at is None else c.rotated_at.isoformat(),
            }
            for c in found
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    if not found:
        click.echo("no credentials stored")
        return
    from rick_core.reports import format_table

    headers = ["component", "name", "stored (UTC)", "rotated (UTC)"]
    cells = (
        (c.component, c.name, _time_text(c.created_at), _time_text(c.rotated_at)) for c in found
    )
    for line in format_table(headers, cells):
        click.echo(line)


@creds.command("import-env")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--broker",
    "component",
    required=True,
    help="The component (its name in rick.toml) the credentials belong to.",
)
def import_env(file: Path, component: str) -> None:
    """Store every KEY=VALUE of a .env FILE as a credential of --broker.

    Each credential is named after its key, lower-cased (OANDA_TOKEN ->
    oanda_token). All are stored in one change, or none. Delete the file
    afterwards: it still holds the secrets in clear.
    """
    try:
        pairs = parse_env(file.read_text(encoding="utf-8"), str(file))
    except EnvFileError as exc:
        raise click.ClickException(f"{exc}; nothing was stored") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read {file}: {exc}") from None
    values = {key.lower(): value for key, value in pairs if value}
    empty = [key.lower() for key, value in pairs if not value]
    if not values:
        raise click.ClickException(f"{file} holds no KEY=VALUE line with a value; nothing stored")
    with _vault(create=True) as (vault, _):
        result = vault.set_many(component, values)
    stored = [name for name, new in result.items() if new]
    replaced = [name for name, new in result.items() if not new]
    if stored:
        click.echo(f"stored for {component}: {', '.join(stored)}")
    if replaced:
        click.echo(f"replaced (rotated) for {component}: {', '.join(replaced)}")
    if empty:
        click.echo(f"skipped, no value: {', '.join(empty)}")
    quoted = shlex.quote(str(file))
    click.echo(
        f"{file} still holds these secrets in clear: delete it now with\n"
        f"  shred -u {quoted}\n"
        f"(or `rm {quoted}` where shred is unavailable), and remove it from any backup or git."
    )


@creds.command("genkey")
def genkey() -> None:
    """Print a new random master key for the vault.

    Only the key goes to stdout, so `export RICK_MASTER_KEY=$(rick creds genkey)`
    works; how to keep it goes to stderr.
    """
    from rick_core.security.vault import generate_master_key

    click.echo(generate_master_key())
    click.echo(
        "This is a new master key for rick's credential vault. Give it to rick in the\n"
        "environment before the first `rick creds set`:\n"
        "  export RICK_MASTER_KEY=<the key>\n"
        "Back it up somewhere safe, away from this machine (a password manager): losing it\n"
        "loses every credential in the vault. Never commit it to git or write it in rick.toml.",
        err=True,
    )
