"""What ``rick run`` shows while it runs: a live status line on a terminal,
periodic structured ``status`` log lines elsewhere."""

from __future__ import annotations

from typing import Any, TextIO

import structlog
import trio

__all__ = ["StatusLine", "render_status", "show_status"]


def render_status(status: dict[str, Any], elapsed: float) -> str:
    """One compact line: brokers with equity and positions, then order counts."""
    parts = []
    for b in status["brokers"]:
        state = "" if b["connected"] else " (down)"
        if b["connected"] and b.get("subscribed") and not b.get("quote_feed", True):
            state = " (quotes down)"
        equity = "" if b["equity"] is None else f" {b['equity']:,.2f} {b['currency']}"
        parts.append(f"{b['broker']}{state}{equity} pos {b['positions']}")
    minutes, seconds = divmod(int(elapsed), 60)
    mode = f" mode {status['mode']}" if status.get("mode") else ""
    return (
        f"rick {minutes:02d}:{seconds:02d}{mode} | "
        + " | ".join(parts)
        + f" | orders {status['orders']} fills {status['fills']}"
        + (f" rejected {status['rejections']}" if status["rejections"] else "")
        + (f" | stale {len(status['stale'])}" if status.get("stale") else "")
        + (" | HALTED: audit log down, no new orders" if status.get("halted") else "")
        + " | Ctrl-C stops"
    )


class StatusLine:
    """A text stream wrapper for a terminal that keeps one status line at the
    bottom: whatever is written (log lines) goes above it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._line = ""

    def write(self, text: str) -> int:
        if self._line:
            self._stream.write("\r\x1b[2K")
        written = self._stream.write(text)
        if self._line and text.endswith("\n"):
            self._stream.write(self._line)
        self._stream.flush()
        return written

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return True

    def show(self, line: str) -> None:
        width = 200
        self._line = line[:width]
        self._stream.write("\r\x1b[2K" + self._line)
        self._stream.flush()

    def clear(self) -> None:
        if self._line:
            self._stream.write("\r\x1b[2K")
            self._stream.flush()
        self._line = ""


async def show_status(
    engine: Any, *, line: StatusLine | None, every_tty: float = 0.5, every_log: float = 10.0
) -> None:
    """Refresh the status line (``line`` given) or log a ``status`` event, until cancelled."""
    log = structlog.get_logger("rick.status")
    start = trio.current_time()
    await engine.started.wait()
    while True:
        status = engine.status()
        if line is not None:
            line.show(render_status(status, trio.current_time() - start))
            await trio.sleep(every_tty)
        else:
            log.info(
                "status",
                brokers=[
                    {k: (str(v) if v is not None and k == "equity" else v) for k, v in b.items()}
                    for b in status["brokers"]
                ],
                orders=status["orders"],
                fills=status["fills"],
                rejections=status["rejections"],
                halted=status.get("halted"),
                mode=status.get("mode"),
                strategies=status["strategies"],
            )
            await trio.sleep(every_log)
