"""``rick mode``: show and switch the trading mode (off, ghost, canary, live), and
set the PIN that switching to canary or live needs. Every switch is audited
before it happens; every wrong PIN too."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rick_core.commands._common import config_option, load_config_or_exit

if TYPE_CHECKING:
    from rick_core.config import RickConfig
    from rick_core.engine.modes import TradingMode
    from rick_core.security.records import Actor

_PIN_STDIN_HELP = "Read the PIN from the first line of stdin instead of a hidden prompt."


@click.group(invoke_without_command=True)
@config_option
@click.pass_context
def mode(ctx: click.Context, config_path: Path | None) -> None:
    """Show the trading mode, or switch it: off, ghost (the default), canary, live.

    \b
    off     no order goes to a real broker
    ghost   live quotes from real brokers, simulated orders (nothing is sent)
    canary  REAL orders, capped by [canary] in rick.toml (PIN)
    live    REAL orders (PIN)

    The built-in paper broker simulates in every mode. Switching down (off,
    ghost, live to canary) needs no PIN and reaches a running rick within a
    second; switching up applies when rick next starts.
    """
    if ctx.invoked_subcommand is None:
        _show(load_config_or_exit(config_path))


def _show(config: RickConfig) -> None:
    from rick_core.engine.modes import (
        LOCKOUT,
        MAX_FAILURES,
        ModeError,
        lockout_status,
        pin_info,
        read_mode,
    )

    state = read_mode(config.home)
    click.echo(f"trading mode: {state.mode.value}: {state.mode.describe()}")
    if state.problem:
        click.echo(f"  problem: {state.problem}")
    elif state.is_default:
        click.echo("  the default: `rick mode` was never used in this rick home")
    else:
        assert state.time is not None
        line = f"  set by {state.actor} at {_when(state.time)}"
        if state.previous is not None:
            line += f" (was {state.previous.value})"
        click.echo(line + (f": {state.reason}" if state.reason else ""))
    canary = config.canary
    overrides = ", ".join(f"{s} {q:f}" for s, q in sorted(canary.instrument_max_quantity.items()))
    click.echo(
        f"canary caps: max_quantity {canary.max_quantity:f} per order"
        + (f" ({overrides})" if overrides else "")
        + f", max_orders_per_day {canary.max_orders_per_day} (UTC day)"
        + f"; from {config.source or 'the embedded defaults'}"
    )
    try:
        info = pin_info(config.home)
    except ModeError as exc:
        click.echo(f"PIN: unusable: {exc}")
        return
    if info is None:
        click.echo(
            "PIN: not set; `rick mode set-pin` sets one (switching to canary or live needs it)"
        )
        return
    click.echo(f"PIN: set by {info.set_by} at {_when(info.set_at)}")
    failures, until = lockout_status(config.home)
    if until is not None:
        click.echo(f"  locked after {MAX_FAILURES} wrong PINs until {_when(until)}")
    elif failures:
        minutes = int(LOCKOUT.total_seconds() // 60)
        click.echo(
            f"  {failures} wrong PIN(s) in a row; {MAX_FAILURES - failures} more lock "
            f"switching up for {minutes} minutes"
        )


def _when(moment: Any) -> str:
    return str(moment.strftime("%Y-%m-%d %H:%M:%S UTC"))


@mode.command("set-pin")
@config_option
@click.option(
    "--pin-stdin",
    is_flag=True,
    help="Read from stdin, one per line: the current PIN (if one is set), then the new PIN.",
)
def set_pin_command(config_path: Path | None, pin_stdin: bool) -> None:
    """Set the PIN that switching to canary or live asks for (at least 6 characters;
    the current PIN is needed to change it). Only an scrypt hash is kept."""
    from rick_core.engine.modes import MIN_PIN_LENGTH, ModeError, check_new_pin, pin_info, set_pin
    from rick_core.security.audit import AuditError, append_now, cli_actor
    from rick_core.security.records import EventType, Severity

    config = load_config_or_exit(config_path)
    home = config.home
    actor = cli_actor()
    read = _stdin_reader() if pin_stdin else None
    try:
        existing = pin_info(home)
    except ModeError as exc:
        raise click.ClickException(str(exc)) from None
    if existing is not None:
        current = read("the current PIN") if read else _prompt("Current PIN")
        _verify_or_exit(home, current, actor, {"action": "set-pin"})
    if read:
        new = read("the new PIN")
    else:
        new = click.prompt(
            f"New PIN (at least {MIN_PIN_LENGTH} characters)",
            hide_input=True,
            confirmation_prompt="Repeat the new PIN",
            err=True,
        )
    _register(new)
    try:
        check_new_pin(new)
    except ModeError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        # Audited first: a PIN change that cannot be audited does not happen.
        append_now(
            home,
            EventType.CREDENTIAL_ROTATED if existing else EventType.CREDENTIAL_STORED,
            actor=actor,
            details={"component": "trading-mode", "name": "pin"},
            severity=Severity.WARNING,
        )
    except (AuditError, OSError) as exc:
        raise click.ClickException(f"PIN not set: it could not be audited: {exc}") from None
    try:
        set_pin(home, new, actor=actor.name)
    except (ModeError, OSError) as exc:
        raise click.ClickException(f"PIN not set: {exc}") from None
    click.echo(
        "PIN "
        + ("changed" if existing else "set")
        + ": `rick mode canary` and `rick mode live` ask for it"
    )


def _switch_command(target_name: str, summary: str) -> click.Command:
    def command(config_path: Path | None, reason: str, pin_stdin: bool = False) -> None:
        from rick_core.engine.modes import TradingMode

        _switch(config_path, TradingMode(target_name), reason, pin_stdin)

    command.__doc__ = summary
    decorated: Callable[..., Any] = command
    if target_name in ("canary", "live"):
        decorated = click.option("--pin-stdin", is_flag=True, help=_PIN_STDIN_HELP)(decorated)
    decorated = click.option("--reason", default="", help="Why (audited).")(decorated)
    decorated = config_option(decorated)
    return click.command(target_name)(decorated)


mode.add_command(
    _switch_command(
        "off",
        "No order goes to a real broker (no PIN needed; a running rick refuses them at once).",
    )
)
mode.add_command(
    _switch_command(
        "ghost",
        "Live quotes, simulated orders: nothing is sent to a venue (no PIN needed).",
    )
)
mode.add_command(
    _switch_command(
        "canary",
        "REAL orders under the [canary] caps of rick.toml (asks for the PIN).",
    )
)
mode.add_command(_switch_command("live", "REAL orders, no canary caps (asks for the PIN)."))


def _switch(config_path: Path | None, target: TradingMode, reason: str, pin_stdin: bool) -> None:
    from rick_core.engine.modes import ModeError, pin_info, read_mode, write_mode
    from rick_core.security.audit import AuditError, append_now, cli_actor
    from rick_core.security.records import EventType, Severity

    config = load_config_or_exit(config_path)
    home = config.home
    actor = cli_actor()
    current = read_mode(home)
    if current.mode is target and not current.problem:
        click.echo(f"trading mode is already {target.value}: nothing changed")
        return
    if target.real:
        try:
            has_pin = pin_info(home) is not None
        except ModeError as exc:
            raise click.ClickException(str(exc)) from None
        if not has_pin:
            raise click.ClickException(
                f"not switched to {target.value}: no PIN is set; set one with "
                f"`rick mode set-pin`, then run `rick mode {target.value}` again"
            )
        pin = (
            _stdin_reader()("the PIN")
            if pin_stdin
            else _prompt(f"PIN to switch to {target.value.upper()}")
        )
        _verify_or_exit(
            home,
            pin,
            actor,
            {"action": f"switch to {target.value}", "from": current.mode.value, "to": target.value},
        )
    details: dict[str, Any] = {"from": current.mode.value, "to": target.value, "reason": reason}
    if target.value == "canary":
        details["max_quantity"] = str(config.canary.max_quantity)
        details["max_orders_per_day"] = config.canary.max_orders_per_day
    try:
        # Audited before the file changes: a switch to real orders that cannot
        # be audited does not happen.
        append_now(
            home,
            EventType.MODE_SWITCHED,
            actor=actor,
            details=details,
            severity=Severity.WARNING if target.real else Severity.INFO,
        )
    except (AuditError, OSError) as exc:
        if target.real:
            raise click.ClickException(
                f"not switched to {target.value}: the switch could not be audited: {exc}"
            ) from None
        # A switch down only closes risk: it goes ahead, and says what was not recorded.
        click.echo(f"warning: the switch to {target.value} could not be audited: {exc}", err=True)
    try:
        write_mode(home, target, actor=actor.name, previous=current.mode, reason=reason)
    except OSError as exc:
        raise click.ClickException(
            f"not switched: cannot write {home}: {exc.strerror or exc}"
        ) from None
    down = target.rank < current.mode.rank
    click.echo(f"trading mode: {target.value}: {target.describe()}")
    if down:
        click.echo("a running rick applies it within a second")
    else:
        click.echo("a running rick keeps its mode until it is restarted: restart it to apply this")
    if target.value == "canary":
        click.echo(
            f"caps: max_quantity {config.canary.max_quantity:f} per order, "
            f"max_orders_per_day {config.canary.max_orders_per_day} (set in [canary])"
        )


def _verify_or_exit(home: Path, pin: str, actor: Actor, attempt: dict[str, Any]) -> None:
    """Check the PIN; a refusal is audited (what was attempted, never the PIN) and exits 1."""
    from rick_core.engine.modes import ModeError, PinError, verify_pin
    from rick_core.security.audit import AuditError, append_now
    from rick_core.security.records import EventType, Severity

    _register(pin)
    try:
        verify_pin(home, pin)
    except PinError as exc:
        details: dict[str, Any] = {
            **attempt,
            "component": "trading-mode",
            "reason": exc.kind,
            "failures_in_a_row": exc.failures,
        }
        if exc.locked_until is not None:
            details["locked_until"] = exc.locked_until.isoformat()
        try:
            append_now(
                home,
                EventType.FAILED_AUTHENTICATION,
                actor=actor,
                details=details,
                severity=Severity.WARNING,
            )
        except (AuditError, OSError) as audit_exc:
            click.echo(f"warning: the refused PIN could not be audited: {audit_exc}", err=True)
        raise click.ClickException(f"{exc}; nothing was changed") from None
    except ModeError as exc:
        raise click.ClickException(str(exc)) from None


def _prompt(text: str) -> str:
    value: str = click.prompt(text, hide_input=True, err=True)
    return value


def _stdin_reader() -> Callable[[str], str]:
    stream = sys.stdin

    def read(what: str) -> str:
        line: str = stream.readline()
        if not line:
            raise click.ClickException(f"--pin-stdin: no line with {what} on stdin")
        return line.rstrip("\r\n")

    return read


def _register(pin: str) -> None:
    """Keep the PIN out of every log line, should anything try to log it."""
    if pin:
        from rick_core.logs import register_secret

        register_secret(pin)
