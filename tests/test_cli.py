"""The core CLI, driven through click's runner and, where start-up matters, a real process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rick_core import __version__
from rick_core.cli import CORE_COMMANDS, _build_cli, main
from rick_core.config import default_config_text
from rick_core.store import MIGRATIONS


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CLI runner whose rick sees only the built-in plugins, whatever is installed."""
    from rick_core import plugins

    real = plugins.load_plugins
    monkeypatch.setattr(
        plugins, "load_plugins", lambda *a, **kw: real(*a, **{"entry_points": (), **kw})
    )
    return CliRunner()


def test_version_fast_path_and_click_agree(
    capsys: pytest.CaptureFixture[str], runner: CliRunner
) -> None:
    assert main(["--version"]) == 0
    fast = capsys.readouterr().out
    assert fast.startswith(f"rick {__version__} (Python ")
    assert runner.invoke(_build_cli(), ["--version"]).output == fast


def test_version_does_not_import_click_or_plugins() -> None:
    code = (
        "import sys; from rick_core.cli import main; main(['--version']); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('click', 'pluggy', 'attrs', 'attr', 'rick_core') and m != 'rick_core.cli' "
        "and m != 'rick_core'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "[]"


def test_help_lists_every_command_with_one_line(runner: CliRunner) -> None:
    result = runner.invoke(_build_cli(), ["--help"])
    assert result.exit_code == 0
    listed = dict(re.findall(r"^  (\w+)\s+(.+)$", result.output.split("Commands:")[1], re.M))
    assert listed == {name: help_text for name, (_, _, help_text) in CORE_COMMANDS.items()}


@pytest.mark.parametrize("name", sorted(CORE_COMMANDS))
def test_each_core_command_has_help(runner: CliRunner, name: str) -> None:
    result = runner.invoke(_build_cli(), [name, "--help"])
    assert result.exit_code == 0 and f"Usage: rick {name}" in result.output


def test_init_writes_the_default_config_and_refuses_to_overwrite(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RICK_HOME", str(tmp_path / "home"))
    result = runner.invoke(_build_cli(), ["init"])
    target = tmp_path / "home" / "rick.toml"
    assert result.exit_code == 0 and f"wrote {target}" in result.output
    assert target.read_text() == default_config_text()
    target.write_text("mode = 'paper'\n")
    again = runner.invoke(_build_cli(), ["init"])
    assert again.exit_code == 1 and "already exists; use --force" in again.output
    assert target.read_text() == "mode = 'paper'\n"
    assert runner.invoke(_build_cli(), ["init", "--force"]).exit_code == 0
    assert target.read_text() == default_config_text()


def test_check_on_embedded_defaults_creates_the_store(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RICK_HOME", str(tmp_path))
    result = runner.invoke(_build_cli(), ["check"])
    assert result.exit_code == 0, result.output
    assert "config: embedded defaults" in result.output
    latest = MIGRATIONS[-1].version
    assert f"store: {tmp_path / 'rick.db'} (schema version {latest})" in result.output
    assert (tmp_path / "rick.db").exists()


def test_check_reports_a_config_error_with_file_and_key(runner: CliRunner, tmp_path: Path) -> None:
    config = tmp_path / "rick.toml"
    config.write_text('[log]\nlevel = "loud"\n')
    result = runner.invoke(_build_cli(), ["check", "--config", str(config)])
    assert result.exit_code == 1
    assert f"Error: {config}: key 'log.level': expected one of" in result.output
    assert "found 'loud' (string)" in result.output


def test_check_refuses_a_store_from_a_newer_rick(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    monkeypatch.setenv("RICK_HOME", str(tmp_path))
    with sqlite3.connect(tmp_path / "rick.db") as db:
        db.execute("PRAGMA user_version = 999")
    result = runner.invoke(_build_cli(), ["check"])
    assert result.exit_code == 1
    assert "has schema version 999" in result.output


def test_unknown_command_is_an_error(runner: CliRunner) -> None:
    result = runner.invoke(_build_cli(), ["trade-everything"])
    assert result.exit_code == 2 and "No such command 'trade-everything'" in result.output


def test_check_reports_options_a_plugin_refuses(runner: CliRunner, tmp_path: Path) -> None:
    config = tmp_path / "rick.toml"
    config.write_text('[notifiers.ops]\nkind = "log"\nmin_level = "loud"\n')
    result = runner.invoke(_build_cli(), ["check", "--config", str(config)])
    assert result.exit_code == 1
    assert f"problem: {config} [notifiers.ops]: ValueError: notifier 'ops': option min_level" in (
        result.output
    )
    assert "(raised by plugin 'rick_core.builtins.log_notifier')" in result.output


def test_check_with_an_unusable_home_says_what_to_do(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("RICK_HOME", str(not_a_folder))
    result = runner.invoke(_build_cli(), ["check"])
    assert result.exit_code == 1
    assert "Set RICK_HOME to a folder rick can write to" in result.output
