"""`rick mode`: showing the mode, setting the PIN, switching up (PIN) and down (no
PIN), wrong PINs and the lockout, and the audit record of each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from rick_core.cli import _build_cli
from rick_core.engine.modes import MAX_FAILURES, PIN_FILENAME, TradingMode, read_mode
from rick_core.security.audit import AuditLog, cli_actor
from rick_core.security.records import AuditRecord, EventType

PIN = "482915"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


def rick(home: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(_build_cli(), list(args), input=input, env={"RICK_HOME": str(home)})


def records(home: Path, *types: EventType) -> list[AuditRecord]:
    if not (home / "audit.db").exists():
        return []
    with AuditLog.open(home / "audit.db") as log:
        return log.query(type=list(types) or None)


def every_byte_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def with_pin(home: Path) -> None:
    result = rick(home, "mode", "set-pin", input=f"{PIN}\n{PIN}\n")
    assert result.exit_code == 0, result.output


def test_rick_mode_shows_the_default(home: Path) -> None:
    result = rick(home, "mode")

    assert result.exit_code == 0, result.output
    assert "trading mode: ghost: " in result.output
    assert "never used" in result.output
    assert "max_quantity 1 per order, max_orders_per_day 10" in result.output
    assert "PIN: not set; `rick mode set-pin`" in result.output


def test_switching_up_without_a_pin_is_refused(home: Path) -> None:
    for target in ("canary", "live"):
        result = rick(home, "mode", target, "--pin-stdin", input="anything\n")
        assert result.exit_code == 1
        assert "no PIN is set; set one with `rick mode set-pin`" in result.output
    assert read_mode(home).mode is TradingMode.GHOST
    assert records(home, EventType.MODE_SWITCHED) == []


def test_set_pin_asks_twice_hidden_and_audits_without_the_pin(home: Path) -> None:
    result = rick(home, "mode", "set-pin", input=f"{PIN}\n{PIN}\n")

    assert result.exit_code == 0, result.output
    assert PIN not in result.output  # hidden input is not echoed
    assert "Repeat the new PIN" in result.output
    assert (home / PIN_FILENAME).exists()
    [stored] = records(home, EventType.CREDENTIAL_STORED)
    assert stored.details == {"component": "trading-mode", "name": "pin"}
    assert stored.actor == cli_actor()
    assert PIN.encode() not in every_byte_under(home)
    assert "PIN: set by" in rick(home, "mode").output


@pytest.mark.parametrize(
    ("typed", "message"),
    [("12345\n12345\n", "at least 6 characters"), (f"{PIN}\n{PIN}x\n", "do not match")],
)
def test_set_pin_refuses_a_short_or_mistyped_pin(home: Path, typed: str, message: str) -> None:
    result = rick(home, "mode", "set-pin", input=typed)

    assert result.exit_code != 0
    assert message in result.output
    assert not (home / PIN_FILENAME).exists()


def test_changing_the_pin_needs_the_current_one(home: Path) -> None:
    with_pin(home)
    wrong = rick(home, "mode", "set-pin", "--pin-stdin", input="999999\nnew-pin-1\n")
    assert wrong.exit_code == 1 and "wrong PIN" in wrong.output
    [failed] = records(home, EventType.FAILED_AUTHENTICATION)
    assert failed.details["action"] == "set-pin" and failed.details["reason"] == "wrong_pin"

    right = rick(home, "mode", "set-pin", "--pin-stdin", input=f"{PIN}\nnew-pin-1\n")
    assert right.exit_code == 0, right.output
    assert records(home, EventType.CREDENTIAL_ROTATED)
    old = rick(home, "mode", "live", "--pin-stdin", input=f"{PIN}\n")
    assert old.exit_code == 1 and "wrong PIN" in old.output
    new = rick(home, "mode", "live", "--pin-stdin", input="new-pin-1\n")
    assert new.exit_code == 0, new.output


def test_a_wrong_pin_is_refused_and_audited_never_the_pin(home: Path) -> None:
    with_pin(home)

    result = rick(home, "mode", "live", "--pin-stdin", input="111111\n")

    assert result.exit_code == 1
    assert "wrong PIN" in result.output and "nothing was changed" in result.output
    assert read_mode(home).mode is TradingMode.GHOST
    [failed] = records(home, EventType.FAILED_AUTHENTICATION)
    assert failed.actor == cli_actor()
    assert failed.details == {
        "action": "switch to live",
        "component": "trading-mode",
        "from": "ghost",
        "to": "live",
        "reason": "wrong_pin",
        "failures_in_a_row": 1,
    }
    assert records(home, EventType.MODE_SWITCHED) == []
    blob = every_byte_under(home)
    assert b"111111" not in blob and PIN.encode() not in blob


def test_switching_up_with_the_pin_is_audited_from_to_and_actor(home: Path) -> None:
    with_pin(home)

    canary = rick(home, "mode", "canary", "--reason", "first real orders", input=f"{PIN}\n")
    live = rick(home, "mode", "live", "--pin-stdin", input=f"{PIN}\n")

    assert canary.exit_code == 0, canary.output
    assert PIN not in canary.output
    assert "max_quantity 1 per order, max_orders_per_day 10" in canary.output
    assert "restart" in canary.output  # a running rick takes a switch up at its next start
    assert live.exit_code == 0, live.output
    state = read_mode(home)
    assert state.mode is TradingMode.LIVE and state.previous is TradingMode.CANARY
    assert state.actor == cli_actor().name
    switched = records(home, EventType.MODE_SWITCHED)
    assert [(r.details["from"], r.details["to"]) for r in switched] == [
        ("ghost", "canary"),
        ("canary", "live"),
    ]
    assert switched[0].details["reason"] == "first real orders"
    assert switched[0].details["max_orders_per_day"] == 10
    assert all(r.actor == cli_actor() for r in switched)
    shown = rick(home, "mode").output
    assert "trading mode: live" in shown and "(was canary)" in shown


def test_switching_down_needs_no_pin(home: Path) -> None:
    with_pin(home)
    assert rick(home, "mode", "live", "--pin-stdin", input=f"{PIN}\n").exit_code == 0

    off = rick(home, "mode", "off")
    ghost = rick(home, "mode", "ghost")

    assert off.exit_code == 0 and "within a second" in off.output
    assert ghost.exit_code == 0
    assert read_mode(home).mode is TradingMode.GHOST
    switched = records(home, EventType.MODE_SWITCHED)
    assert [(r.details["from"], r.details["to"]) for r in switched][1:] == [
        ("live", "off"),
        ("off", "ghost"),
    ]
    again = rick(home, "mode", "ghost")
    assert again.exit_code == 0 and "already ghost" in again.output
    assert len(records(home, EventType.MODE_SWITCHED)) == 3


def test_five_wrong_pins_lock_switching_even_with_the_right_pin(home: Path) -> None:
    with_pin(home)
    for attempt in range(1, MAX_FAILURES + 1):
        result = rick(home, "mode", "canary", "--pin-stdin", input=f"wrong-{attempt}\n")
        assert result.exit_code == 1
    assert "locked until" in result.output

    locked = rick(home, "mode", "canary", "--pin-stdin", input=f"{PIN}\n")

    assert locked.exit_code == 1 and "locked until" in locked.output
    assert read_mode(home).mode is TradingMode.GHOST
    failed = records(home, EventType.FAILED_AUTHENTICATION)
    assert [r.details["failures_in_a_row"] for r in failed] == [1, 2, 3, 4, 5, 5]
    assert failed[-2].details["reason"] == "wrong_pin" and "locked_until" in failed[-2].details
    assert failed[-1].details["reason"] == "locked"
    assert "locked after 5 wrong PINs" in rick(home, "mode").output
    assert b"wrong-" not in every_byte_under(home)


def test_a_switch_up_that_cannot_be_audited_does_not_happen_a_switch_down_does(
    home: Path,
) -> None:
    with_pin(home)
    os.rename(home / "audit.db", home / "audit.kept")
    (home / "audit.db").mkdir()  # the audit log cannot be opened

    up = rick(home, "mode", "live", "--pin-stdin", input=f"{PIN}\n")
    assert up.exit_code == 1 and "could not be audited" in up.output
    assert read_mode(home).mode is TradingMode.GHOST

    down = rick(home, "mode", "off")
    assert down.exit_code == 0
    assert "warning: the switch to off could not be audited" in down.output
    assert read_mode(home).mode is TradingMode.OFF


def test_a_real_mode_in_rick_toml_is_refused_with_the_command_to_use(home: Path) -> None:
    (home / "rick.toml").write_text('mode = "live"\n', "utf-8")

    result = rick(home, "check")

    assert result.exit_code == 1
    assert "key 'mode'" in result.output and "`rick mode live`" in result.output


def test_rick_mode_live_in_a_separate_process(home: Path) -> None:
    with_pin(home)
    env: dict[str, Any] = {**os.environ, "RICK_HOME": str(home)}

    def run(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rick_core", "mode", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    wrong = run("live", "--pin-stdin", stdin="000000\n")
    right = run("live", "--pin-stdin", stdin=f"{PIN}\n")

    assert wrong.returncode == 1 and "wrong PIN" in wrong.stderr
    assert right.returncode == 0, right.stderr
    assert read_mode(home).mode is TradingMode.LIVE
    assert PIN not in wrong.stdout + wrong.stderr + right.stdout + right.stderr
