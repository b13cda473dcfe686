"""``rick plugins``: what is installed, what it offers, and what failed."""

from __future__ import annotations

import click

from rick_core.commands._common import current_plugin_set
from rick_core.plugins import PLURALS


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
@click.option("--all", "show_all", is_flag=True, help="Include built-in plugins.")
def plugins(as_json: bool, show_all: bool) -> None:
    """List installed plugins: distribution, version, hooks and status.

    A plugin that failed to load is listed with its error; rick still runs,
    and refuses to start only if the configuration needs that plugin.
    """
    plugin_set = current_plugin_set()
    shown = [p for p in plugin_set.plugins if show_all or not p.builtin]
    if as_json:
        import json

        click.echo(json.dumps([p.as_json() for p in shown], indent=2))
        return
    if not shown:
        click.echo("No plugins installed. (rick plugins --all shows the built-in ones.)")
        return
    for info in shown:
        version = f" {info.version}" if info.version else ""
        dist = f" ({info.distribution}{version})" if info.distribution else ""
        status = {"ok": "", "failed": "  FAILED", "disabled": "  disabled"}[info.status]
        click.echo(f"{info.name}{dist}{status}")
        if info.error:
            color = "red" if info.status == "failed" else None
            click.secho(f"    {info.error}", fg=color, err=False)
        if info.hooks:
            click.echo(f"    hooks: {', '.join(info.hooks)}")
        for kind, names in sorted(info.registered.items()):
            click.echo(f"    {PLURALS[kind]}: {', '.join(sorted(names))}")
