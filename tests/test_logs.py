"""Tests for rick_core.logs: outputs, levels, and the redaction of secrets."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog

from rick_core import logs
from rick_core.logs import (
    close_logging,
    configure_logging,
    forget_secrets,
    redact,
    redact_processor,
    register_secret,
)

SECRET = "s3cr3t-api-key-0123456789"


@pytest.fixture(autouse=True)
def _clean_logging() -> Iterator[None]:
    forget_secrets()
    yield
    close_logging()
    forget_secrets()
    structlog.reset_defaults()


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _lines(path.read_text(encoding="utf-8"))]


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


# --------------------------------------------------------------------------- outputs


def test_every_event_goes_to_a_json_lines_file_under_home_logs(tmp_path: Path) -> None:
    path = configure_logging(home=tmp_path, console=False, stream=io.StringIO())

    structlog.get_logger().info("order submitted", order_id="o-1")
    structlog.get_logger().warning("slow feed")

    assert path is not None
    assert path.parent == tmp_path / "logs"
    assert path.name == f"rick-{_today()}.jsonl"
    first, second = _records(path)
    assert first["event"] == "order submitted"
    assert first["order_id"] == "o-1"
    assert first["level"] == "info"
    assert second["level"] == "warning"
    timestamp = first["timestamp"]
    assert timestamp.endswith(("Z", "+00:00"))
    moment = datetime.fromisoformat(timestamp)
    assert moment.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - moment) < timedelta(minutes=1)


def test_the_file_is_appended_to_not_truncated(tmp_path: Path) -> None:
    path = configure_logging(home=tmp_path, console=False, stream=io.StringIO())
    structlog.get_logger().info("first run")
    path = configure_logging(home=tmp_path, console=False, stream=io.StringIO())
    structlog.get_logger().info("second run")

    assert path is not None
    assert [r["event"] for r in _records(path)] == ["first run", "second run"]


def test_stream_gets_json_lines_when_not_a_console(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging(home=tmp_path, console=False, stream=stream)

    structlog.get_logger().info("hello", venue="paper")

    (line,) = _lines(stream.getvalue())
    record = json.loads(line)
    assert record["event"] == "hello"
    assert record["venue"] == "paper"
    assert record["level"] == "info"


def test_stream_is_human_readable_on_a_console(tmp_path: Path) -> None:
    stream = io.StringIO()
    path = configure_logging(home=tmp_path, console=True, stream=stream)

    structlog.get_logger().info("hello", venue="paper")

    output = stream.getvalue()
    assert "hello" in output
    assert "venue=paper" in output
    with pytest.raises(json.JSONDecodeError):
        json.loads(output)
    assert "\x1b[" not in output  # a StringIO is not a terminal: no colours
    # The file stays JSON whatever the stream gets.
    assert path is not None
    assert _records(path)[0]["event"] == "hello"


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_is_detected_from_the_stream(tmp_path: Path) -> None:
    terminal = _FakeTerminal()
    configure_logging(home=tmp_path, stream=terminal)
    structlog.get_logger().info("on a terminal")
    assert "on a terminal" in terminal.getvalue()
    assert "\x1b[" in terminal.getvalue()  # colours on a terminal

    pipe = io.StringIO()
    configure_logging(home=tmp_path, stream=pipe)
    structlog.get_logger().info("in a pipe")
    assert json.loads(pipe.getvalue())["event"] == "in a pipe"


def test_the_logger_name_is_recorded(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging(home=tmp_path, console=False, stream=stream)

    structlog.get_logger("rick.engine").info("started")
    structlog.get_logger().info("anonymous")

    named, anonymous = (json.loads(line) for line in _lines(stream.getvalue()))
    assert named["logger"] == "rick.engine"
    assert "logger" not in anonymous


def test_exceptions_are_rendered_in_the_json(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging(home=tmp_path, console=False, stream=stream)

    try:
        raise RuntimeError("venue said no")
    except RuntimeError:
        structlog.get_logger().exception("submit failed")

    record = json.loads(stream.getvalue())
    assert record["level"] == "error"
    assert "Traceback (most recent call last)" in record["exception"]
    assert "RuntimeError: venue said no" in record["exception"]


def test_reconfiguring_closes_the_previous_file(tmp_path: Path) -> None:
    first_home, second_home = tmp_path / "a", tmp_path / "b"
    first = configure_logging(home=first_home, console=False, stream=io.StringIO())
    bound_early = structlog.get_logger().bind(component="oms")
    bound_early.info("before")
    first_file = logs._sink._file

    second = configure_logging(home=second_home, console=False, stream=io.StringIO())
    structlog.get_logger().info("after")
    bound_early.info("still works")  # a logger bound before follows the new file

    assert first_file is not None
    assert first_file.closed
    assert first is not None
    assert second is not None
    assert [r["event"] for r in _records(first)] == ["before"]
    assert [r["event"] for r in _records(second)] == ["after", "still works"]


def test_close_logging_stops_the_file_but_not_the_stream(tmp_path: Path) -> None:
    stream = io.StringIO()
    path = configure_logging(home=tmp_path, console=False, stream=stream)
    structlog.get_logger().info("kept")
    close_logging()
    structlog.get_logger().info("stream only")
    close_logging()  # closing twice is harmless

    assert path is not None
    assert [r["event"] for r in _records(path)] == ["kept"]
    assert "stream only" in stream.getvalue()


def test_a_new_file_is_started_when_the_utc_date_changes(tmp_path: Path) -> None:
    path = configure_logging(home=tmp_path, console=False, stream=io.StringIO())
    logs._sink.write("{}", '{"event": "tomorrow"}', "2999-01-01")

    assert path is not None
    assert (tmp_path / "logs" / "rick-2999-01-01.jsonl").read_text() == '{"event": "tomorrow"}\n'


# --------------------------------------------------------------------------- levels


def test_events_below_the_level_are_dropped(tmp_path: Path) -> None:
    stream = io.StringIO()
    path = configure_logging(home=tmp_path, level="warning", console=False, stream=stream)
    log = structlog.get_logger()

    log.debug("debug")
    log.info("info")
    log.warning("warning")
    log.error("error")
    log.critical("critical")

    events = [json.loads(line)["event"] for line in _lines(stream.getvalue())]
    assert events == ["warning", "error", "critical"]
    assert path is not None
    assert [r["event"] for r in _records(path)] == events


def test_debug_level_keeps_everything_and_names_are_case_insensitive(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging(home=tmp_path, level="DEBUG", console=False, stream=stream)
    structlog.get_logger().debug("details")
    assert json.loads(stream.getvalue())["level"] == "debug"


def test_an_invalid_level_names_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'verbose'") as excinfo:
        configure_logging(home=tmp_path, level="verbose", stream=io.StringIO())
    message = str(excinfo.value)
    for name in ("debug", "info", "warning", "error", "critical"):
        assert name in message


# --------------------------------------------------------------------------- redaction


def _configure_both(tmp_path: Path, *, console: bool) -> tuple[io.StringIO, Path]:
    stream = io.StringIO()
    path = configure_logging(home=tmp_path, console=console, stream=stream)
    assert path is not None
    return stream, path


def _assert_hidden(stream: io.StringIO, path: Path, secret: str = SECRET) -> str:
    """The secret is in neither output, and both show that something was redacted."""
    stream_text = stream.getvalue()
    file_text = path.read_text(encoding="utf-8")
    assert stream_text
    assert file_text
    assert secret not in stream_text
    assert secret not in file_text
    assert "***" in stream_text
    assert "***" in file_text
    return file_text


@pytest.mark.parametrize("console", [False, True])
def test_a_secret_in_the_message_is_redacted(tmp_path: Path, console: bool) -> None:
    stream, path = _configure_both(tmp_path, console=console)
    register_secret(SECRET)

    structlog.get_logger().info(f"connecting with {SECRET}")
    structlog.get_logger().info("connecting with %s", SECRET)

    _assert_hidden(stream, path)
    assert _records(path)[0]["event"] == "connecting with ***"


@pytest.mark.parametrize("console", [False, True])
def test_a_secret_in_a_keyword_is_redacted(tmp_path: Path, console: bool) -> None:
    stream, path = _configure_both(tmp_path, console=console)
    register_secret(SECRET)

    structlog.get_logger().info("login", token=SECRET, header=f"Bearer {SECRET}")

    _assert_hidden(stream, path)
    record = _records(path)[0]
    assert record["token"] == "***"
    assert record["header"] == "Bearer ***"


@pytest.mark.parametrize("console", [False, True])
def test_a_secret_nested_in_containers_is_redacted(tmp_path: Path, console: bool) -> None:
    stream, path = _configure_both(tmp_path, console=console)
    register_secret(SECRET)

    structlog.get_logger().info(
        "request",
        headers={"Authorization": f"Bearer {SECRET}", "nested": [{"key": SECRET}]},
        args=("GET", SECRET),
        keys={SECRET: "as a dict key"},
    )

    _assert_hidden(stream, path)
    record = _records(path)[0]
    assert record["headers"] == {"Authorization": "Bearer ***", "nested": [{"key": "***"}]}
    assert record["args"] == ["GET", "***"]
    assert record["keys"] == {"***": "as a dict key"}


class _Credentials:
    def __init__(self, token: str) -> None:
        self.token = token

    def __repr__(self) -> str:
        return f"_Credentials(token={self.token!r})"


@pytest.mark.parametrize("console", [False, True])
def test_an_object_whose_text_holds_a_secret_is_redacted(tmp_path: Path, console: bool) -> None:
    stream, path = _configure_both(tmp_path, console=console)
    register_secret(SECRET)

    structlog.get_logger().info(
        "objects", creds=_Credentials(SECRET), error=ValueError(f"bad key {SECRET}")
    )

    _assert_hidden(stream, path)
    record = _records(path)[0]
    assert record["creds"] == "_Credentials(token='***')"
    assert record["error"] == "bad key ***"


def _fail_with_secret_in_source() -> None:
    # The literal is the secret itself, so the traceback's source line shows it.
    raise ConnectionError("rejected key s3cr3t-api-key-0123456789")


@pytest.mark.parametrize("console", [False, True])
def test_a_secret_in_an_exception_and_its_traceback_is_redacted(
    tmp_path: Path, console: bool
) -> None:
    stream, path = _configure_both(tmp_path, console=console)
    register_secret(SECRET)

    try:
        try:
            _fail_with_secret_in_source()
        except ConnectionError as cause:
            raise RuntimeError(f"login failed for {SECRET}") from cause
    except RuntimeError:
        structlog.get_logger().exception("broker down", key=SECRET)

    file_text = _assert_hidden(stream, path)
    exception = _records(path)[0]["exception"]
    assert "Traceback (most recent call last)" in exception
    assert "ConnectionError: rejected key ***" in exception
    assert 'raise ConnectionError("rejected key ***")' in exception  # the source line
    assert "RuntimeError: login failed for ***" in exception
    assert "s3cr3t" not in file_text
    assert "s3cr3t" not in stream.getvalue()


def test_values_without_secrets_keep_their_type(tmp_path: Path) -> None:
    _stream, path = _configure_both(tmp_path, console=False)
    register_secret(SECRET)

    structlog.get_logger().info(
        "fill",
        qty=5,
        price=Decimal("1.25"),
        at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        ok=True,
        none=None,
    )

    record = _records(path)[0]
    assert record["qty"] == 5
    assert record["price"] == "1.25"
    assert record["at"] == "2024-01-02T03:04:05+00:00"
    assert record["ok"] is True
    assert record["none"] is None


def test_a_numeric_secret_is_redacted_from_a_number(tmp_path: Path) -> None:
    stream, path = _configure_both(tmp_path, console=False)
    register_secret("918273")

    structlog.get_logger().info("armed", pin=918273)

    assert _records(path)[0]["pin"] == "***"
    assert "918273" not in stream.getvalue()


def test_short_values_are_not_registered() -> None:
    register_secret("abc")
    register_secret("  ab  ")
    register_secret("")

    assert redact("abc ab xyz") == "abc ab xyz"
    assert logs._secret_pattern is None


def test_registered_values_are_stripped() -> None:
    register_secret("  tok-1234\n")
    assert redact("key tok-1234 and  tok-1234\n") == "key *** and  ***\n"


def test_a_secret_containing_another_is_removed_whole() -> None:
    register_secret("abcd")
    register_secret("xx-abcd-yy")

    assert redact("xx-abcd-yy") == "***"
    assert redact("abcd and xx-abcd-yy") == "*** and ***"


def test_regex_characters_in_secrets_are_literal() -> None:
    register_secret("a.b*c+d(e")
    assert redact("a.b*c+d(e axbbbcdde") == "*** axbbbcdde"


def test_forget_secrets_forgets() -> None:
    register_secret(SECRET)
    forget_secrets()
    assert redact(SECRET) == SECRET


def test_the_processor_returns_the_event_untouched_without_secrets() -> None:
    event: dict[str, Any] = {"event": "hello", "key": SECRET}
    assert redact_processor(None, "info", event) is event


def test_secrets_registered_from_many_threads_are_all_redacted() -> None:
    values = [f"secret-{i:04d}-value" for i in range(200)]

    def register(chunk: list[str]) -> None:
        for value in chunk:
            register_secret(value)

    threads = [threading.Thread(target=register, args=(values[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert redact(" ".join(values)) == " ".join(["***"] * len(values))


def test_a_failing_log_file_is_reported_once_and_never_raises(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging(home=tmp_path, console=False, stream=stream)
    logs._sink._file = open("/dev/full", "w", buffering=1)  # noqa: SIM115  # every write: ENOSPC
    log = structlog.get_logger()
    log.info("order sent")  # must not raise into the caller
    log.info("fill received")
    lines = stream.getvalue().splitlines()
    assert sum("cannot write the log file" in line for line in lines) == 1
    assert [json.loads(line)["event"] for line in lines if line.startswith("{")] == [
        "order sent",
        "fill received",
    ]


def test_standard_logging_and_warnings_are_redacted_and_filed(tmp_path: Path) -> None:
    import logging
    import warnings

    stream = io.StringIO()
    path = configure_logging(home=tmp_path, console=False, stream=stream)
    register_secret("tok-Sup3rS3cret")
    logging.getLogger("httpx").info("HTTP Request: GET https://api/x?token=%s", "tok-Sup3rS3cret")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("retrying with tok-Sup3rS3cret", UserWarning, stacklevel=1)
    logging.getLogger("noisy").debug("below the level: dropped")
    assert path is not None
    for text in (stream.getvalue(), path.read_text()):
        assert "tok-Sup3rS3cret" not in text
        records = [json.loads(line) for line in text.splitlines()]
        assert [r["logger"] for r in records] == ["httpx", "py.warnings"]
        assert records[0]["event"] == "HTTP Request: GET https://api/x?token=***"
        assert "retrying with ***" in records[1]["event"]


def test_values_json_cannot_encode_do_not_raise_into_the_caller(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging(home=tmp_path, console=False, stream=stream)
    structlog.get_logger().info("positions", by_key={("EUR_USD", "oanda"): Decimal("1.5")})
    (record,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert record["by_key"] == {"('EUR_USD', 'oanda')": "1.5"}


def test_a_secret_inside_a_non_string_key_is_redacted(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging(home=tmp_path, console=False, stream=stream)
    register_secret(SECRET)
    structlog.get_logger().info("exposure", per_account={("acct-1", SECRET): 3})
    assert SECRET not in stream.getvalue()
    (record,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert record["per_account"] == {"('acct-1', '***')": 3}
