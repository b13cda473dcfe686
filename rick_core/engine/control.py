"""The trading switch a person flips from outside the engine: ``rick halt`` and
``rick resume`` write ``$RICK_HOME/trading-state.json``; a running engine
watches it (and reads it at start), so a halt reaches every strategy within a
second and survives a restart."""

from __future__ import annotations

import json
import os
from pathlib import Path

from attrs import frozen

from rick_core.model import utc_now

__all__ = ["STATE_FILENAME", "TradingSwitch", "read_switch", "write_switch"]

STATE_FILENAME = "trading-state.json"


@frozen
class TradingSwitch:
    """``halted`` or not, why, who flipped it and when (ISO 8601 UTC)."""

    halted: bool
    reason: str
    actor: str
    time: str


def write_switch(home: Path, *, halted: bool, reason: str, actor: str) -> TradingSwitch:
    """Record the switch atomically (a reader never sees half a file)."""
    switch = TradingSwitch(halted=halted, reason=reason, actor=actor, time=utc_now().isoformat())
    home.mkdir(parents=True, exist_ok=True)
    path = home / STATE_FILENAME
    temp = path.with_suffix(".tmp")
    temp.write_text(
        json.dumps(
            {"halted": halted, "reason": reason, "actor": actor, "time": switch.time}, indent=1
        ),
        "utf-8",
    )
    os.replace(temp, path)
    return switch


def read_switch(home: Path) -> TradingSwitch | None:
    """The recorded switch, or None when there is none (trading is on).

    A file that cannot be read counts as halted: when in doubt, rick opens no risk.
    """
    path = home / STATE_FILENAME
    try:
        data = json.loads(path.read_text("utf-8"))
        return TradingSwitch(
            halted=bool(data["halted"]),
            reason=str(data.get("reason", "")),
            actor=str(data.get("actor", "")),
            time=str(data.get("time", "")),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return TradingSwitch(
            halted=True,
            reason=f"{path} cannot be read ({type(exc).__name__}); fix or delete it, then "
            "`rick resume`",
            actor="system",
            time=utc_now().isoformat(),
        )
