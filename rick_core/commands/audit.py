"""``rick audit``: verify, query and export the tamper-evident audit log.

The log is ``$RICK_HOME/audit.db`` (the ``home`` of the loaded configuration).
These commands only read it: they never create it, nor write to it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from rick_core.commands._common import config_option, load_config_or_exit
from rick_core.commands.orders import limit_option

if TYPE_CHECKING:
    from rick_core.security.audit import AuditLog
    from rick_core.security.records import EventType


def _open_for_reading(config_path: Path | None, *, quiet: bool = False) -> AuditLog | None:
    """The configured audit log, read-only, or None (after saying so) if there is none yet."""
    config = load_config_or_exit(config_path)
    from rick_core.security.audit import AUDIT_FILENAME, AuditError, AuditLog

    path = config.home / AUDIT_FILENAME
    if not path.exists():
        click.echo(f"no audit log yet ({path} does not exist)", err=quiet)
        return None
    try:
        return AuditLog.open(path, read_only=True)
    except AuditError as exc:
        raise click.ClickException(str(exc)) from None


def _event_types(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[EventType]:
    from rick_core.security.records import EventType

    found = []
    for value in values:
        try:
            found.append(EventType(value.strip().upper()))
        except ValueError:
            allowed = ", ".join(t.value for t in EventType)
            raise click.BadParameter(
                f"{value!r} is not an event type; use one of {allowed}"
            ) from None
    return found


def _utc_time(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    from datetime import UTC

    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or time (e.g. 2024-05-01 or "
            "2024-05-01T12:00:00+00:00)"
        ) from None
    # Without an offset the time is taken as UTC, like every time rick shows.
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@click.group()
def audit() -> None:
    """Verify, query and export the audit log ($RICK_HOME/audit.db).

    Every security-relevant event (logins, API keys, credentials, mode
    switches, orders, halts) is one record, hash-chained to the one before, so
    that a record changed, removed or inserted afterwards is detected by
    `rick audit verify`. Times are UTC.
    """


@audit.command()
@config_option
def verify(config_path: Path | None) -> None:
    """Check every record's hash and link, and the head of the chain.

    Exits 0 if the chain is intact, 1 naming the first bad record and why.
    """
    log = _open_for_reading(config_path)
    if log is None:
        config = load_config_or_exit(config_path)
        traces = [p.name for p in (config.store_path, config.home / "vault.json") if p.exists()]
        if traces:
            # rick has run or stored credentials here, so a log should exist: it
            # may have been deleted to hide what happened.
            raise click.ClickException(
                f"the audit log is missing although {' and '.join(traces)} exist(s) in "
                f"{config.home}: it may have been deleted; restore it from a backup or from "
                "an audit sink's copy"
            )
        return
    from rick_core.security.audit import AuditError

    with log:
        try:
            result = log.verify()
        except AuditError as exc:
            raise click.ClickException(str(exc)) from None
    if result.ok:
        click.echo(f"ok: {result.records} records, chain intact")
        return
    if result.first_bad_sequence is None:
        where = "the log"
        intact = f"all {result.records} record(s) chain correctly"
    else:
        where = f"record {result.first_bad_sequence}"
        intact = f"the {result.records} record(s) before it are intact"
    raise click.ClickException(
        f"{log.path}: audit log verification FAILED at {where}: {result.reason} "
        f"({intact}). Keep the file as evidence, and compare it with an audit sink's copy."
    )


@audit.command()
@config_option
@click.option(
    "--type",
    "types",
    multiple=True,
    callback=_event_types,
    help="Only records of this event type (repeat for several), e.g. ORDER_FILLED.",
)
@click.option("--since", callback=_utc_time, help="Only records at or after this time (UTC).")
@click.option("--until", callback=_utc_time, help="Only records at or before this time (UTC).")
@click.option("--actor", help="Only records of this actor (user, API key or strategy name).")
@limit_option("records")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of records.")
def query(
    config_path: Path | None,
    types: list[EventType],
    since: datetime | None,
    until: datetime | None,
    actor: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List audit records, oldest first."""
    log = _open_for_reading(config_path, quiet=as_json)
    if log is None:
        if as_json:
            click.echo("[]")
        return
    from rick_core.security.audit import AuditError, record_to_json

    with log:
        try:
            found = log.query(
                type=types or None, since=since, until=until, actor=actor, limit=limit or None
            )
        except AuditError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo("[" + ",\n".join(record_to_json(r) for r in found) + "]")
        return
    if not found:
        filtered = types or since or until or actor
        click.echo("no audit records match" if filtered else "no audit records yet")
        return
    from rick_core.reports import format_table, format_time
    from rick_core.security.audit import canonical_details

    rows = (
        (
            str(r.sequence),
            format_time(r.time),
            r.type.value,
            r.severity.value,
            f"{r.actor.kind}:{r.actor.name}",
            r.actor.source,
            canonical_details(r.details),
        )
        for r in found
    )
    headers = ["seq", "time (UTC)", "type", "severity", "actor", "via", "details"]
    for line in format_table(headers, rows):
        click.echo(line)
    if limit and len(found) == limit:
        click.echo(f"(the last {limit}; --limit 0 shows all)")


@audit.command()
@config_option
@click.argument("file", type=click.Path(dir_okay=False, writable=True, path_type=Path))
def export(config_path: Path | None, file: Path) -> None:
    """Write every audit record to FILE as JSON lines (one record per line, all fields)."""
    log = _open_for_reading(config_path)
    if log is None:
        return
    from rick_core.security.audit import AuditError

    with log:
        try:
            count = log.export(file)
        except AuditError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(f"cannot write {file}: {exc}") from None
    click.echo(f"exported {count} records to {file}")
