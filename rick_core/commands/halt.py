"""``rick halt`` and ``rick resume``: stop and restart trading, audited."""

from __future__ import annotations

from pathlib import Path

import click

from rick_core.commands._common import config_option, load_config_or_exit


@click.command()
@config_option
@click.option("--reason", default="halted by hand", show_default=True, help="Why (audited).")
def halt(config_path: Path | None, reason: str) -> None:
    """Stop trading: a running rick cancels every open order and takes no new one
    until `rick resume` (a rick started later stays halted too)."""
    _switch(config_path, halted=True, reason=reason)
    click.echo("halted: open orders are being canceled; new orders are refused until `rick resume`")


@click.command()
@config_option
@click.option("--reason", default="resumed by hand", show_default=True, help="Why (audited).")
def resume(config_path: Path | None, reason: str) -> None:
    """Lift a `rick halt`: orders are taken again."""
    _switch(config_path, halted=False, reason=reason)
    click.echo("resumed: orders are taken again")


def _switch(config_path: Path | None, *, halted: bool, reason: str) -> None:
    from rick_core.engine.control import write_switch
    from rick_core.security.audit import AuditError, append_now, cli_actor
    from rick_core.security.records import EventType, Severity

    config = load_config_or_exit(config_path)
    actor = cli_actor()
    try:
        # Audited first: a resume that cannot be audited does not happen.
        append_now(
            config.home,
            EventType.TRADING_HALTED if halted else EventType.TRADING_RESUMED,
            actor=actor,
            details={"reason": reason},
            severity=Severity.WARNING if halted else Severity.INFO,
        )
    except (AuditError, OSError) as exc:
        if not halted:  # resuming opens risk again: never unaudited
            raise click.ClickException(f"not resumed: {exc}") from None
        # Halting only closes risk: it goes ahead, and says what could not be recorded.
        click.echo(f"warning: the halt could not be audited: {exc}", err=True)
    write_switch(config.home, halted=halted, reason=reason, actor=actor.name)
