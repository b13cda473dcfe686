"""Options and helpers shared by core commands."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from pathlib import Path

    from rick_core.config import RickConfig
    from rick_core.plugins import PluginSet

F = TypeVar("F", bound=Callable[..., Any])


def config_option(command: F) -> F:
    """``--config FILE``; without it, $RICK_CONFIG, then $RICK_HOME/rick.toml, then defaults."""
    from pathlib import Path  # here, not at import: `rick plugins` needs no paths

    decorated: F = click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Config file (default: $RICK_CONFIG, then $RICK_HOME/rick.toml).",
    )(command)
    return decorated


def load_config_or_exit(config_path: Path | None) -> RickConfig:
    """The configuration, or a clear message and exit status 2."""
    from rick_core.config import ConfigError, find_config, load_config, rick_home

    try:
        return load_config(find_config(config_path, os.environ), home=rick_home(os.environ))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def current_plugin_set() -> PluginSet:
    """The plugins the running ``rick`` loaded (loaded once per process)."""
    ctx = click.get_current_context()
    root = ctx.find_root().command
    plugin_set = getattr(root, "plugin_set", None)
    if callable(plugin_set):
        loaded: PluginSet = plugin_set()
        return loaded
    from rick_core.plugins import load_plugins

    return load_plugins()


def start_logging(config: RickConfig) -> Any:
    """Configure logging from ``config`` (stderr + $RICK_HOME/logs) and return a logger
    that has already reported every plugin that failed to load."""
    import structlog

    from rick_core.logs import configure_logging

    try:
        configure_logging(home=config.home, level=config.log.level)
    except OSError as exc:
        raise click.ClickException(
            f"cannot write logs under {config.home / 'logs'}: {exc}. "
            "Set RICK_HOME to a folder rick can write to."
        ) from None
    log = structlog.get_logger("rick.cli")
    for plugin in current_plugin_set().failed:
        log.warning("plugin failed to load", plugin=plugin.name, error=plugin.error)
    return log
