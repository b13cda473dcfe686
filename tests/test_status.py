"""The live status of `rick run`: one line on a terminal, log lines stay above it."""

from __future__ import annotations

import io
from decimal import Decimal

from rick_core.engine.status import StatusLine, render_status

STATUS = {
    "brokers": [
        {
            "broker": "paper",
            "connected": True,
            "equity": Decimal("100012.5"),
            "currency": "USD",
            "positions": 2,
            "quotes": 10,
        },
        {
            "broker": "oanda",
            "connected": False,
            "equity": None,
            "currency": None,
            "positions": 0,
            "quotes": 0,
        },
    ],
    "strategies": {},
    "orders": 7,
    "fills": 5,
    "rejections": 1,
}


def test_status_line_shows_brokers_equity_positions_and_counts() -> None:
    line = render_status(STATUS, 75.9)
    assert line == (
        "rick 01:15 | paper 100,012.50 USD pos 2 | oanda (down) pos 0 | "
        "orders 7 fills 5 rejected 1 | Ctrl-C stops"
    )


def test_log_lines_are_written_above_the_status_line() -> None:
    out = io.StringIO()
    status = StatusLine(out)
    status.show("rick 00:01 | status")
    status.write("a log line\n")
    status.clear()
    # The status line is erased before the log line and drawn again after it.
    assert out.getvalue() == (
        "\r\x1b[2Krick 00:01 | status" + "\r\x1b[2K" + "a log line\n" + "rick 00:01 | status"
        "\r\x1b[2K"
    )
