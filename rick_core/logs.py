"""Logging for rick: structlog to the terminal and to a daily JSON-lines file.

:func:`configure_logging` sets structlog up once per process (and again, cleanly,
whenever it is called a second time):

- the *stream* (``sys.stderr`` by default) gets a human-readable rendering on a
  terminal, or one JSON object per line otherwise (a pipe, a service manager);
- every event is also appended, as one JSON line, to
  ``<home>/logs/rick-YYYY-MM-DD.jsonl`` (UTC date; a new file is started when the
  UTC date of an event changes).

No secret may reach a log line (see ``ARCHITECTURE.md``). Code that handles a
credential registers it with :func:`register_secret`; :func:`redact_processor`
then replaces every occurrence of it with ``***`` in every event, before either
output renders it: in the message, in keyword values (nested in dicts, lists
and tuples too), in exception messages and in rendered tracebacks.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "LEVELS",
    "close_logging",
    "configure_logging",
    "forget_secrets",
    "redact",
    "redact_processor",
    "register_secret",
]

#: Level names :func:`configure_logging` accepts, mapped to their numeric values.
LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

REDACTED = "***"

# Secrets shorter than this are not registered: a 2- or 3-character value (a
# short PIN, "ab", "USD") occurs by chance in ordinary text, and replacing it
# everywhere would garble the logs while protecting almost nothing.
MIN_SECRET_LENGTH = 4

# Containers nested deeper than this are not walked (a guard against cycles);
# their str() is still checked, so a secret inside them is still redacted.
_MAX_DEPTH = 32


# --------------------------------------------------------------------------- redaction

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
# Rebuilt under the lock on every change, read without it: rebinding a module
# global is atomic, so a reader sees either the old pattern or the new one.
_secret_pattern: re.Pattern[str] | None = None


def register_secret(value: str) -> None:
    """Make sure ``value`` never appears in a log line from now on.

    Surrounding whitespace is stripped. Values shorter than four characters
    after stripping are ignored: such short strings turn up by chance in
    ordinary text, and redacting them everywhere would garble the logs.
    Registering the same value twice is harmless.
    """
    global _secret_pattern
    secret = value.strip()
    if len(secret) < MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        if secret in _secrets:
            return
        _secrets.add(secret)
        # Longest first: the regex alternation takes the first alternative that
        # matches, so a secret that contains another one is removed whole.
        ordered = sorted(_secrets, key=lambda s: (-len(s), s))
        _secret_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def forget_secrets() -> None:
    """Forget every registered secret (for tests)."""
    global _secret_pattern
    with _secrets_lock:
        _secrets.clear()
        _secret_pattern = None


def redact(text: str) -> str:
    """Return ``text`` with every registered secret replaced by ``***``."""
    pattern = _secret_pattern
    if pattern is None:
        return text
    return pattern.sub(REDACTED, text)


def redact_processor(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact registered secrets from every value of an event.

    Strings are redacted wherever they are: values, nested dicts (keys too),
    lists, tuples and sets. Any other value is kept as it is unless its
    ``str()`` (or ``repr()``, which the JSON renderer falls back to) contains a
    secret, in which case it is replaced by that text, redacted. It must run
    after exceptions and stacks are formatted into strings, and before any
    renderer.
    """
    pattern = _secret_pattern
    if pattern is None:  # the common case: nothing to hide, nothing to copy
        return event_dict
    return {
        _redact_key(key, pattern): _redact_value(value, pattern, 0)
        for key, value in event_dict.items()
    }


def _redact_key(key: Any, pattern: re.Pattern[str]) -> Any:
    if isinstance(key, str):
        return pattern.sub(REDACTED, key)
    # a tuple key such as (account, token) is rendered with repr() by the JSON fallback
    for text in (str(key), repr(key)):
        if pattern.search(text):
            return pattern.sub(REDACTED, text)
    return key


def _redact_value(value: Any, pattern: re.Pattern[str], depth: int) -> Any:
    if isinstance(value, str):
        return pattern.sub(REDACTED, value)
    if value is None or isinstance(value, bool):
        return value
    if depth < _MAX_DEPTH:
        inner = depth + 1
        if isinstance(value, dict):
            return {
                _redact_key(k, pattern): _redact_value(v, pattern, inner) for k, v in value.items()
            }
        if isinstance(value, list):
            return [_redact_value(v, pattern, inner) for v in value]
        if isinstance(value, tuple):
            return tuple(_redact_value(v, pattern, inner) for v in value)
        if isinstance(value, set | frozenset):
            return [_redact_value(v, pattern, inner) for v in value]
    for text in (str(value), repr(value)):
        if pattern.search(text):
            return pattern.sub(REDACTED, text)
    return value


# --------------------------------------------------------------------------- outputs


class _Sink:
    """Where rendered lines go: the stream and the day's JSON-lines file.

    One per process. Loggers bound before a reconfiguration keep a reference to
    it, so they follow the new stream and file instead of writing to a closed one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stream: TextIO = sys.stderr
        self._logs_dir: Path | None = None
        self._file: IO[str] | None = None
        self._day = ""
        self._file_failed = False

    def open(self, stream: TextIO, logs_dir: Path, day: str) -> Path:
        with self._lock:
            self._close_file()
            self.stream = stream
            self._logs_dir = logs_dir
            return self._open_file(day)

    def close(self) -> None:
        with self._lock:
            self._close_file()
            self._logs_dir = None

    def write(self, stream_line: str, file_line: str, day: str) -> None:
        with self._lock:
            self.stream.write(stream_line + "\n")
            self.stream.flush()
            if self._logs_dir is None:
                return
            try:
                if day and day != self._day:
                    self._close_file()
                    self._open_file(day)
                if self._file is not None:
                    self._file.write(file_line + "\n")
            except OSError as exc:
                # A full disk must not turn every log call into a crash of the caller
                # (an order in flight, a stream handler): say so on the stream, keep going.
                if not self._file_failed:
                    self.stream.write(f"rick: cannot write the log file: {exc}\n")
                self._file_failed = True
            else:
                self._file_failed = False

    def _open_file(self, day: str) -> Path:
        assert self._logs_dir is not None
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        path = self._logs_dir / f"rick-{day}.jsonl"
        # Line-buffered: each event is on disk as soon as it is logged.
        self._file = path.open("a", encoding="utf-8", buffering=1)
        self._day = day
        return path

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # a final flush onto a full disk
                self._file.close()
            self._file = None
            self._day = ""


_sink = _Sink()


class _SinkLogger:
    """The wrapped logger structlog calls: hands the rendered lines to the sink."""

    __slots__ = ("name", "sink")

    def __init__(self, sink: _Sink, name: str | None) -> None:
        self.sink = sink
        self.name = name

    def msg(self, *, stream_line: str, file_line: str, day: str) -> None:
        self.sink.write(stream_line, file_line, day)

    debug = info = warning = warn = error = err = critical = fatal = exception = failure = msg


class _SinkLoggerFactory:
    """structlog logger factory: ``structlog.get_logger("rick.engine")`` names the logger."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink

    def __call__(self, *args: Any) -> _SinkLogger:
        name = args[0] if args and isinstance(args[0], str) else None
        return _SinkLogger(self._sink, name)


def _add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name and "logger" not in event_dict:
        event_dict["logger"] = name
    return event_dict


def _json_default(value: Any) -> Any:
    """JSON for what ``json`` cannot encode: prices as ``"1.25"``, times as ISO 8601."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return repr(value)


def _plain(value: Any) -> Any:
    """``value`` with every mapping key made a string, for a JSON encoder that needs that."""
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else repr(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


class _StdlibBridge(logging.Handler):
    """Sends records of the standard ``logging`` module (httpx, ib_insync, warnings)
    through structlog, so they are redacted and written to the same outputs."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            extra: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                extra["exc_info"] = record.exc_info
            structlog.get_logger(record.name).log(record.levelno, message, **extra)
        except Exception:
            self.handleError(record)


_bridge = _StdlibBridge()


class _Fanout:
    """Last processor: render the event once for the file and once for the stream."""

    def __init__(self, console: structlog.dev.ConsoleRenderer | None) -> None:
        self._json = structlog.processors.JSONRenderer(default=_json_default)
        self._console = console

    def __call__(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> dict[str, str]:
        timestamp = event_dict.get("timestamp")
        day = timestamp[:10] if isinstance(timestamp, str) else ""
        try:
            file_line = self._json(logger, method_name, event_dict)
        except (TypeError, ValueError):  # e.g. a dict with tuple keys: never fail the caller
            event_dict = _plain(event_dict)
            file_line = self._json(logger, method_name, event_dict)
        assert isinstance(file_line, str)
        if self._console is None:
            stream_line = file_line
        else:
            # ConsoleRenderer pops keys off the dict it is given.
            stream_line = self._console(logger, method_name, dict(event_dict))
        return {"stream_line": stream_line, "file_line": file_line, "day": day}


# --------------------------------------------------------------------------- configuration


def configure_logging(
    *,
    home: Path,
    level: str = "info",
    console: bool | None = None,
    stream: TextIO | None = None,
) -> Path | None:
    """Configure structlog for rick, and return the path of today's log file.

    ``home`` is the rick home folder; events are appended to
    ``home/logs/rick-YYYY-MM-DD.jsonl`` (UTC date), one JSON object per line.
    ``level`` is one of ``debug``, ``info``, ``warning``, ``error``,
    ``critical`` (case-insensitive); events below it are dropped.
    ``stream`` (default ``sys.stderr``) also gets every event: human-readable
    when ``console`` is true, JSON lines when it is false, and when it is
    ``None`` human-readable exactly when the stream is a terminal. Colours are
    used only on a terminal.

    Calling it again reconfigures cleanly: the previous file is closed.

    Raises:
        ValueError: ``level`` is not one of the names above.
    """
    min_level = _parse_level(level)
    out = sys.stderr if stream is None else stream
    is_tty = _isatty(out)
    use_console = is_tty if console is None else console
    renderer = (
        structlog.dev.ConsoleRenderer(
            colors=is_tty, exception_formatter=structlog.dev.plain_traceback
        )
        if use_console
        else None
    )

    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Exceptions become plain text *before* redaction, for both outputs, so
        # a secret in an exception message or a traceback is redacted too (a
        # pretty console traceback rendered later would bypass it).
        structlog.processors.format_exc_info,
        redact_processor,
        _Fanout(renderer),
    ]

    day = datetime.now(UTC).strftime("%Y-%m-%d")
    path = _sink.open(out, home / "logs", day)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        context_class=dict,
        logger_factory=_SinkLoggerFactory(_sink),
        # Tests (and a reload of the configuration) call configure_logging again.
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard module, and may log a URL or header that
    # carries a secret: route them through the same redaction and outputs.
    root = logging.getLogger()
    if _bridge not in root.handlers:
        root.addHandler(_bridge)
    root.setLevel(min_level)
    # Off then on: re-installs the capture even if something (a test runner's
    # catch_warnings) restored warnings.showwarning behind logging's back.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    return path


def close_logging() -> None:
    """Close the log file. Events still go to the stream until reconfigured."""
    _sink.close()


def _parse_level(level: str) -> int:
    try:
        return LEVELS[level.strip().lower()]
    except KeyError:
        valid = ", ".join(LEVELS)
        raise ValueError(f"unknown log level {level!r}: use one of {valid}") from None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
