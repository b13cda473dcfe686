"""``rick run`` as a user runs it: a real process, real signals, real time (a few seconds)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rick_core.cli import _build_cli
from rick_core.model import OrderStatus
from rick_core.store import Store

FAST = """
[brokers.paper]
kind = "paper"
seed = 5
speed = 20        # twenty simulated seconds per second: trades come quickly
persist = false

[strategies.example]
kind = "momentum"
broker = "paper"
instruments = ["EUR_USD", "BTC_USD", "ETH_USD", "AAPL"]
"""

# A strategy whose on_stop never returns, registered as a built-in plugin for
# the child process only: the graceful stop then waits for its drain deadline.
STUCK_PLUGIN = """
import trio
from rick_core.hookspecs import hookimpl
from rick_core.strategy import Strategy

class Stuck(Strategy):
    async def on_stop(self):
        await trio.sleep_forever()

@hookimpl
def register_strategies(register):
    register("stuck", Stuck)
"""

STUCK = """
[brokers.paper]
kind = "paper"
persist = false

[strategies.stuck]
kind = "stuck"
broker = "paper"
instruments = ["EUR_USD"]
"""


def start(tmp_path: Path, config: str, *args: str) -> subprocess.Popen[str]:
    (tmp_path / "rick.toml").write_text(config, "utf-8")
    (tmp_path / "stuck_plugin.py").write_text(STUCK_PLUGIN, "utf-8")
    launcher = textwrap.dedent(
        """
        import functools, sys
        import rick_core.plugins as plugins
        import stuck_plugin
        plugins.load_plugins = functools.partial(
            plugins.load_plugins, extra=[("stuck_plugin", stuck_plugin)]
        )
        from rick_core.cli import main
        main(sys.argv[1:])
        """
    )
    env = {
        **os.environ,
        "RICK_HOME": str(tmp_path),
        "RICK_LOAD_PLUGINS": "",  # no installed third-party plugin takes part
        "PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    return subprocess.Popen(
        [sys.executable, "-c", launcher, "run", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(
    proc: subprocess.Popen[str], event: str, timeout: float = 30
) -> list[dict[str, object]]:
    """Read the child's JSON log lines (stderr is not a terminal) until ``event``."""
    assert proc.stderr is not None
    seen: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        try:
            record = json.loads(line)
        except ValueError:
            continue
        seen.append(record)
        if record.get("event") == event:
            return seen
    proc.kill()
    raise AssertionError(f"no {event!r} log line; saw {[r.get('event') for r in seen]}")


def test_sigint_stops_gracefully_with_exit_status_zero(tmp_path: Path) -> None:
    proc = start(tmp_path, FAST)
    wait_for(proc, "engine started")
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped (SIGINT)" in err
    with Store.open(tmp_path / "rick.db") as store:
        orders = store.orders()
        assert orders, "the example strategy trades within three seconds at speed 20"
        assert all(o.status is not OrderStatus.NEW for o in orders)
        assert [s.account.broker for s in store.accounts()] == ["paper"]


def test_sigterm_stops_gracefully_too(tmp_path: Path) -> None:
    proc = start(tmp_path, FAST)
    wait_for(proc, "engine started")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped (SIGTERM)" in err


def test_second_ctrl_c_forces_a_quick_exit(tmp_path: Path) -> None:
    proc = start(tmp_path, STUCK, "--drain-timeout", "120")
    wait_for(proc, "engine started")
    proc.send_signal(signal.SIGINT)
    wait_for(proc, "engine stopping")
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 10, "the second Ctrl-C must not wait for the drain"
    assert proc.returncode == 130, err
    with Store.open(tmp_path / "rick.db") as store:  # consistent: opens and reads
        assert store.orders() == []


def test_a_second_run_on_the_same_store_is_refused(tmp_path: Path) -> None:
    proc = start(tmp_path, FAST)
    try:
        wait_for(proc, "engine started")
        result = CliRunner().invoke(
            _build_cli(),
            ["run", "--config", str(tmp_path / "rick.toml"), "--duration", "1"],
            env={"RICK_HOME": str(tmp_path)},
        )
        assert result.exit_code == 1
        assert "is in use by rick run (pid" in result.output
        assert "another `rick run` is writing to it" in result.output
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


@pytest.mark.parametrize("duration", ["2"])
def test_duration_on_embedded_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, duration: str
) -> None:
    monkeypatch.setenv("RICK_HOME", str(tmp_path))
    started = time.monotonic()
    result = CliRunner().invoke(_build_cli(), ["run", "--duration", duration])
    assert result.exit_code == 0, result.output
    assert 2 <= time.monotonic() - started < 20
    assert "stopped (duration reached)" in result.output
    with Store.open(tmp_path / "rick.db") as store:
        (snapshot,) = store.accounts()
        assert snapshot.account.currency == "USD"
    # The paper account persists between runs on the defaults.
    assert (tmp_path / "paper" / "paper.json").exists()


def test_nothing_to_run_is_an_error_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "rick.toml"
    config.write_text('[brokers.paper]\nkind = "paper"\n', "utf-8")
    result = CliRunner().invoke(
        _build_cli(), ["run", "--config", str(config)], env={"RICK_HOME": str(tmp_path)}
    )
    assert result.exit_code == 1
    assert f"{config}: no enabled [strategies.<name>] table" in result.output


def test_an_unknown_strategy_kind_is_refused_before_anything_starts(tmp_path: Path) -> None:
    config = tmp_path / "rick.toml"
    config.write_text(
        '[brokers.paper]\nkind = "paper"\n\n[strategies.x]\nkind = "momentom"\n'
        'broker = "paper"\ninstruments = ["EUR_USD"]\n',
        "utf-8",
    )
    result = CliRunner().invoke(
        _build_cli(), ["run", "--config", str(config)], env={"RICK_HOME": str(tmp_path)}
    )
    assert result.exit_code == 1
    assert "strategy 'x' (kind = 'momentom')" in result.output
    assert "did you mean 'momentum'?" in result.output
    assert not (tmp_path / "rick.db").exists() or Store.open(tmp_path / "rick.db").orders() == []


def test_a_broker_that_cannot_start_is_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "rick.toml"
    config.write_text(
        '[brokers.paper]\nkind = "paper"\nreplay = "missing.jsonl"\n\n'
        '[strategies.x]\nkind = "momentum"\nbroker = "paper"\ninstruments = ["EUR_USD"]\n',
        "utf-8",
    )
    result = CliRunner().invoke(
        _build_cli(), ["run", "--config", str(config)], env={"RICK_HOME": str(tmp_path)}
    )
    assert result.exit_code == 1
    assert "Error: broker 'paper' failed to connect:" in result.output
    assert "missing.jsonl" in result.output
    assert "Traceback" not in result.output


def test_an_instrument_the_broker_does_not_list_stops_start_up(tmp_path: Path) -> None:
    config = tmp_path / "rick.toml"
    config.write_text(
        '[brokers.paper]\nkind = "paper"\ninstruments = ["EUR_USD"]\npersist = false\n\n'
        '[strategies.x]\nkind = "momentum"\nbroker = "paper"\n'
        'instruments = ["EUR_USD", "GBP_USD"]\n',
        "utf-8",
    )
    result = CliRunner().invoke(
        _build_cli(), ["run", "--config", str(config)], env={"RICK_HOME": str(tmp_path)}
    )
    assert result.exit_code == 1
    assert "strategy 'x': broker 'paper' does not list GBP_USD; it trades EUR_USD" in result.output
