"""``rick run``: start the engine on the configuration (or the embedded defaults)."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from rick_core.commands._common import config_option, current_plugin_set, load_config_or_exit

if TYPE_CHECKING:
    from rick_core.config import RickConfig
    from rick_core.plugins import PluginSet
    from rick_core.security.audit import AuditLog
    from rick_core.security.records import AuditSink
    from rick_core.security.vault import Vault


@click.command()
@config_option
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop gracefully after this many seconds (default: run until Ctrl-C).",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds allowed, when stopping, for strategies and broker calls to finish.",
)
def run(config_path: Path | None, duration: float | None, drain_timeout: float) -> None:
    """Run the configured strategies on their brokers.

    With no config file, rick runs the example momentum strategy on the paper
    broker. Ctrl-C (or SIGTERM) stops gracefully: no new orders, work in
    progress drained, the store flushed. A second Ctrl-C stops at once, still
    leaving every order in a final or resumable state.
    """
    import structlog
    import trio

    from rick_core.engine.runtime import Engine, EngineError, first_leaf
    from rick_core.engine.status import StatusLine, show_status
    from rick_core.logs import close_logging, configure_logging, redact
    from rick_core.plugins import ComponentInvalid, ComponentMissing
    from rick_core.security.audit import AUDIT_GATHER, AuditTrail
    from rick_core.store import Store, StoreError

    config = load_config_or_exit(config_path)
    if not any(s.enabled for s in config.strategies.values()):
        raise click.ClickException(
            f"{config.source}: no enabled [strategies.<name>] table: nothing to run. "
            "See `rick init` for an example."
        )
    line = StatusLine(sys.stderr) if sys.stderr.isatty() else None
    try:
        configure_logging(home=config.home, level=config.log.level, stream=line)  # type: ignore[arg-type]
    except OSError as exc:
        raise click.ClickException(
            f"cannot write logs under {config.home / 'logs'}: {exc}. "
            "Set RICK_HOME to a folder rick can write to."
        ) from None
    log = structlog.get_logger("rick.run")
    plugins = current_plugin_set()
    for plugin in plugins.failed:
        log.warning("plugin failed to load", plugin=plugin.name, error=plugin.error)
    lock = _lock(config.store_path)
    try:
        try:
            store = Store.open(config.store_path)
        except StoreError as exc:
            raise click.ClickException(redact(str(exc))) from None
        audit_log = _open_audit_log(config)
        try:
            vault = _open_vault(config, log)
            try:
                # Every batch appended in a worker thread: the audit log syncs each
                # commit to disk, and the event loop must not wait for that.
                trail = AuditTrail(
                    audit_log, _audit_sinks(config, plugins), inline_batch=0, gather=AUDIT_GATHER
                )
                engine = Engine.from_config(
                    config,
                    plugins,
                    store=store,
                    drain_timeout=drain_timeout,
                    audit=trail,
                    vault=vault,
                    large_trade=config.audit.large_trade,
                )
            except (EngineError, ComponentMissing, ComponentInvalid) as exc:
                raise click.ClickException(redact(str(exc))) from None
            source = config.source or "embedded defaults (no rick.toml; `rick init` writes one)"
            log.info(
                "rick run",
                config=str(source),
                store=str(config.store_path),
                mode=engine.modes.summary() if engine.modes else None,
            )

            async def main() -> None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(functools.partial(show_status, engine, line=line))
                    try:
                        await engine.run(duration=duration, handle_signals=True)
                    finally:
                        nursery.cancel_scope.cancel()

            try:
                trio.run(main)
            except EngineError as exc:
                raise click.ClickException(redact(str(exc))) from None
            except BaseExceptionGroup as group:  # the status task's nursery wraps it
                startup, rest = group.split(EngineError)
                if startup is None or rest is not None:
                    raise
                raise click.ClickException(redact(str(first_leaf(startup)))) from None
            finally:
                if line is not None:
                    line.clear()
        finally:
            audit_log.close()
            store.close()
    finally:
        lock.close()
        close_logging()
    status = engine.status()
    click.echo(
        f"stopped ({engine.stop_reason}): {status['orders']} orders, {status['fills']} fills "
        f"this run. `rick orders`, `rick fills`, `rick positions` and `rick pnl` show the store.",
        err=True,
    )
    if engine.forced:
        sys.exit(130)


def _open_audit_log(config: RickConfig) -> AuditLog:
    from rick_core.security.audit import AuditError, AuditLog

    try:
        return AuditLog.open(config.home / "audit.db")
    except (AuditError, OSError) as exc:
        raise click.ClickException(
            f"cannot open the audit log: {exc}. rick does not trade without one."
        ) from None


def _audit_sinks(config: RickConfig, plugins: PluginSet) -> list[AuditSink]:
    """Every configured ``[audit_sinks.<name>]``, built by its plugin."""
    from rick_core.components import ComponentSetup

    where = str(config.source) if config.source else "<embedded defaults>"
    return [
        plugins.build(
            "audit_sink",
            sink.kind,
            ComponentSetup(
                name=name,
                options=sink.options,
                home=config.home,
                source=f"{where} [audit_sinks.{name}]",
            ),
        )
        for name, sink in config.audit_sinks.items()
    ]


def _open_vault(config: RickConfig, log: Any) -> Vault | None:
    """The credential vault, if there is one (the engine audits each read)."""
    from rick_core.security.vault import VAULT_FILENAME, Vault, VaultError

    if not (config.home / VAULT_FILENAME).exists():
        return None
    try:
        return Vault.open(config.home, create=False)
    except VaultError as exc:
        # Paper trading needs no credentials: carry on, and say why brokers
        # that need one will not find it.
        log.warning("the credential vault is not open; brokers get no credentials", error=str(exc))
        return None


def _lock(store_path: Path) -> IO[Any]:
    """Hold an exclusive lock beside the store for the whole run: one writer."""
    import fcntl

    store_path.parent.mkdir(parents=True, exist_ok=True)
    path = store_path.with_name(store_path.name + ".lock")
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise click.ClickException(
            f"{store_path} is in use by {owner}: another `rick run` is writing to it. "
            "Stop it first, or give this run its own [store] path."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"rick run (pid {os.getpid()})\n")
    handle.flush()
    return handle
