"""The ``rick`` command line.

Start-up time matters (``rick`` is run by hand, by cron and by systemd), so
this module imports almost nothing: each core command lives in its own
module, imported only when that command runs or ``--help`` lists it, and
plugins load only when a command or the command list needs them.
"""

from __future__ import annotations

import sys

# Not typing.TYPE_CHECKING: importing typing alone costs `rick --version` a third of
# its start-up. Type checkers treat a module-level TYPE_CHECKING = False the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

    import click

    from rick_core.plugins import PluginSet

# name -> (module, attribute, one-line help). The help is here so that listing the
# commands does not mean importing them all.
CORE_COMMANDS: Final[dict[str, tuple[str, str, str]]] = {
    "check": ("rick_core.commands.check", "check", "Validate the config and the plugins it needs."),
    "init": ("rick_core.commands.init", "init", "Write a commented default rick.toml."),
    "plugins": ("rick_core.commands.plugins", "plugins", "List installed plugins and their hooks."),
    "run": ("rick_core.commands.run", "run", "Run the strategies (paper trading by default)."),
    "creds": (
        "rick_core.commands.creds",
        "creds",
        "Store broker credentials in the encrypted vault.",
    ),
    "apikey": (
        "rick_core.commands.apikey",
        "apikey",
        "Create and revoke API keys for rick's interfaces.",
    ),
    "audit": ("rick_core.commands.audit", "audit", "Verify, query and export the audit log."),
    "halt": (
        "rick_core.commands.halt",
        "halt",
        "Stop trading: cancel open orders, refuse new ones.",
    ),
    "resume": ("rick_core.commands.halt", "resume", "Lift a halt: take orders again."),
    "mode": (
        "rick_core.commands.mode",
        "mode",
        "Show or switch the trading mode: off, ghost, canary, live.",
    ),
    "orders": ("rick_core.commands.orders", "orders", "List stored orders, newest last."),
    "fills": ("rick_core.commands.fills", "fills", "List stored fills, newest last."),
    "positions": ("rick_core.commands.positions", "positions", "Show net positions from fills."),
    "pnl": ("rick_core.commands.pnl", "pnl", "Show realized P&L, fees, volume and equity."),
    "quotes": (
        "rick_core.commands.quotes",
        "quotes",
        "Show live quotes from a running rick (its WebSocket proxy).",
    ),
}


def _version_text() -> str:
    from rick_core import __version__

    return f"rick {__version__} (Python {sys.version.split()[0]})"


def _build_cli() -> click.Group:
    import click

    class RickGroup(click.Group):
        """Core commands imported on demand; plugin commands loaded on demand."""

        _plugin_set: PluginSet | None = None

        def plugin_set(self) -> PluginSet:
            if self._plugin_set is None:
                from rick_core.plugins import load_plugins

                self._plugin_set = load_plugins(reserved_commands=CORE_COMMANDS)
            return self._plugin_set

        def list_commands(self, ctx: click.Context) -> list[str]:
            plugin_commands = self.plugin_set().of_kind("command")
            return sorted(set(CORE_COMMANDS) | set(plugin_commands))

        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            if cmd_name in CORE_COMMANDS:
                import importlib

                module, attribute, _ = CORE_COMMANDS[cmd_name]
                command: click.Command = getattr(importlib.import_module(module), attribute)
                return command
            found = self.plugin_set().of_kind("command").get(cmd_name)
            if found is None:
                return None
            plugin_command: click.Command = found.factory
            return plugin_command

        def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
            rows = []
            for name in self.list_commands(ctx):
                if name in CORE_COMMANDS:
                    rows.append((name, CORE_COMMANDS[name][2]))
                else:
                    command = self.get_command(ctx, name)
                    if command is not None and not command.hidden:
                        rows.append((name, command.get_short_help_str(limit=70)))
            if rows:
                with formatter.section("Commands"):
                    formatter.write_dl(rows)

    @click.group(
        name="rick", cls=RickGroup, context_settings={"help_option_names": ["-h", "--help"]}
    )
    @click.version_option(message=_version_text(), package_name="rick-core")
    def cli() -> None:
        """rick: run trading strategies on several brokers from one place.

        Paper trading is the default; configuration lives in $RICK_HOME/rick.toml
        (RICK_HOME defaults to ~/.rick).
        """

    return cli


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``rick`` console script."""
    args = sys.argv[1:] if argv is None else argv
    # The one command that must be instant answers before click is even imported.
    if args == ["--version"]:
        print(_version_text())
        return 0
    import os

    # Everything rick writes (stores, logs, audit copies, exports) is for its
    # owner only: it may hold positions, account data and audit trails.
    os.umask(0o077)
    return _build_cli().main(args=args, prog_name="rick")


if __name__ == "__main__":  # pragma: no cover
    main()
