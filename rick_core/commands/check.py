"""``rick check``: is everything the configuration needs here and usable?"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import click

from rick_core.commands._common import (
    config_option,
    current_plugin_set,
    load_config_or_exit,
    start_logging,
)

if TYPE_CHECKING:
    from rick_core.config import ComponentConfig, RickConfig
    from rick_core.plugins import PluginSet


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
    from rick_core.engine.modes import read_mode

    state = read_mode(config.home)
    click.echo(f"trading mode: {state.mode.value} ({state.problem or '`rick mode` shows it'})")

    plugin_set = current_plugin_set()
    required = config.required_components()
    for kind, name, configured in required:
        component = plugin_set.components.get((kind, name))
        if component is not None:
            click.echo(f"{kind.replace('_', ' ')} {configured}: {name} (from {component.plugin})")
    problems = plugin_set.problems(required)
    problems += _invalid_components(config, plugin_set)
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


def _invalid_components(config: RickConfig, plugin_set: PluginSet) -> list[str]:
    """Build every configured broker, notifier and audit sink (factories do no I/O)
    so that a plugin refusing its options is reported now, not at run time."""
    from rick_core.components import ComponentSetup, NoCredentials
    from rick_core.config import DEFAULTS_SOURCE
    from rick_core.plugins import ComponentInvalid, Kind

    origin = str(config.source) if config.source else DEFAULTS_SOURCE
    sections: list[tuple[Kind, str, Mapping[str, ComponentConfig]]] = [
        ("broker", "brokers", config.brokers),
        ("notifier", "notifiers", config.notifiers),
        ("audit_sink", "audit_sinks", config.audit_sinks),
    ]
    problems = []
    for kind, section, components in sections:
        for component in components.values():
            if (kind, component.kind) not in plugin_set.components:
                continue  # reported as missing already
            setup = ComponentSetup(
                name=component.name,
                options=component.options,
                credentials=NoCredentials(component.name),
                home=config.home,
                source=f"{origin} [{section}.{component.name}]",
            )
            try:
                plugin_set.build(kind, component.kind, setup)
            except ComponentInvalid as exc:
                problems.append(str(exc))
    return problems
