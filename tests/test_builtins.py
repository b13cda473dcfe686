"""The built-in plugins, through the same plugin machinery as any other."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import structlog

from rick_core.components import ComponentSetup
from rick_core.logs import close_logging, configure_logging
from rick_core.notify import Notification
from rick_core.plugins import ComponentInvalid, load_plugins


@pytest.fixture
def log_stream(tmp_path: Path) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(home=tmp_path, console=False, stream=stream)
    yield stream  # type: ignore[misc]
    close_logging()
    structlog.reset_defaults()


async def test_log_notifier_writes_notifications_at_their_level(log_stream: io.StringIO) -> None:
    plugin_set = load_plugins({}, entry_points=())
    notifier = plugin_set.build(
        "notifier", "log", ComponentSetup(name="desk", options={"min_level": "warning"})
    )
    await notifier.send(Notification(title="heartbeat"))  # below min_level: dropped
    await notifier.send(
        Notification(
            title="order rejected",
            text="margin",
            level="critical",
            data={"id": "rk1", "text": "collides", "event": "collides too"},
        )
    )
    (record,) = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert record["event"] == "order rejected"
    assert (record["level"], record["notifier"], record["text"]) == ("critical", "desk", "margin")
    assert record["data"] == {"id": "rk1", "text": "collides", "event": "collides too"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_level": "loud"}, "option min_level must be one of info, warning, critical"),
        ({"colour": "red"}, r"unknown option\(s\) \['colour'\]"),
    ],
)
def test_log_notifier_refuses_bad_options(options: dict[str, str], message: str) -> None:
    setup = ComponentSetup(name="desk", options=options, source="rick.toml [notifiers.desk]")
    with pytest.raises(
        ComponentInvalid, match=rf"^rick.toml \[notifiers.desk\]: ValueError: .*{message}"
    ):
        load_plugins({}, entry_points=()).build("notifier", "log", setup)


def test_notification_and_audit_times_are_utc() -> None:
    from datetime import datetime, timedelta, timezone

    from rick_core.model import ModelError
    from rick_core.security.records import Actor, AuditRecord

    paris = timezone(timedelta(hours=1))
    note = Notification(title="x", time=datetime(2026, 1, 1, 13, 0, tzinfo=paris))
    assert note.time.utcoffset() == timedelta(0) and note.time.hour == 12
    with pytest.raises(ModelError, match="naive datetime"):
        Notification(title="x", time=datetime(2026, 1, 1, 12, 0))
    with pytest.raises(ModelError, match="naive datetime"):
        AuditRecord(
            type="ENGINE_STARTED",
            actor=Actor("system", "rick", "engine"),
            time=datetime(2026, 1, 1, 12, 0),
        )
