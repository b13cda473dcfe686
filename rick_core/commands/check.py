"""``rick check``: is everything the configuration needs here and usable?"""

from __future__ import annotations

from pathlib import Path

import click

from rick_core.commands._common import (
    config_option,
    current_plugin_set,
    load_config_or_exit,
    start_logging,
)


@click.command()
@config_option
def check(config_path: Path | None) -> None:
    """Validate the config, the plugins it needs and the store.

    Exits 0 when rick can start; otherwise names each problem and exits 1.
    Plugins that failed to load matter only if the config needs them.
    """
    config = load_config_or_exit(config_path)
    log = start_logging(config)
    source = config.source or "embedded defaults (no rick.toml found; `rick init` writes one)"
    click.echo(f"config: {source}")
    click.echo(f"mode: {config.mode.value}")

    plugin_set = current_plugin_set()
    required = config.required_components()
    for kind, name, configured in required:
        component = plugin_set.components.get((kind, name))
        if component is not None:
            click.echo(f"{kind.replace('_', ' ')} {configured}: {name} (from {component.plugin})")
    problems = plugin_set.problems(required)
    if plugin_set.failed and not problems:
        names = ", ".join(p.name for p in plugin_set.failed)
        click.echo(f"note: plugin(s) {names} failed to load; this config does not need them")

    from rick_core.store import Store, StoreError

    try:
        with Store.open(config.store_path) as store:
            click.echo(f"store: {config.store_path} (schema version {store.schema_version})")
    except StoreError as exc:
        problems.append(f"store: {exc}")

    log.info("check finished", config=str(source), problems=len(problems))
    if problems:
        for problem in problems:
            text = problem.replace("\n", "\n    ")
            click.secho(f"problem: {text}", fg="red", err=True)
        raise SystemExit(1)
    click.echo("ok: rick can start with this configuration")
