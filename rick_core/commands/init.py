"""``rick init``: write a commented default configuration."""

from __future__ import annotations

import os
from pathlib import Path

import click


@click.command()
@click.option(
    "--path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Where to write it (default: $RICK_HOME/rick.toml).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path | None, force: bool) -> None:
    """Write a commented default rick.toml to edit.

    The file sets exactly the embedded defaults, with every setting explained
    and examples to uncomment.
    """
    from rick_core.config import CONFIG_FILENAME, rick_home, write_default_config
    from rick_core.security.audit import AuditError, append_now, cli_actor
    from rick_core.security.records import EventType

    home = rick_home(os.environ)
    target = path if path is not None else home / CONFIG_FILENAME
    try:
        written = write_default_config(target, force=force)
    except (FileExistsError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        append_now(
            home,
            EventType.CONFIGURATION_CHANGED,
            actor=cli_actor(),
            details={"file": str(written), "change": "default config written", "force": force},
        )
    except (AuditError, OSError) as exc:
        click.echo(f"warning: the change could not be audited: {exc}", err=True)
    click.echo(f"wrote {written}")
    click.echo("edit it, then run `rick check` to validate it")
