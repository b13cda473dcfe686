"""``rick.toml`` -> typed, validated, immutable configuration.

Where the file is (:func:`find_config`): the ``--config`` path, else
``$RICK_CONFIG``, else ``$RICK_HOME/rick.toml`` (``$RICK_HOME`` defaults to
``~/.rick``). Without a file rick runs on the embedded defaults, which are
exactly what the commented ``default_config.toml`` (written by ``rick init``)
sets.

Numbers are read exactly: TOML floats become :class:`~decimal.Decimal`, never
binary floats, because plugin options and strategy parameters carry prices
and amounts.

Every problem raises :class:`ConfigError` naming the file, the dotted key,
what was found (value and TOML type) and what was expected::

    /home/x/.rick/rick.toml: key 'log.level': expected one of debug, info,
    warning, error, critical; found 'verbose' (string)

The fixed sections (the top level, ``[log]``, ``[store]``, each
``[strategies.<name>]``) refuse unknown keys; broker, notifier and audit sink
tables pass every key but ``kind`` to their plugin untouched.
"""

from __future__ import annotations

import difflib
import enum
import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

from attrs import field, frozen

from rick_core.model import ModelError, check_symbol

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULTS_SOURCE",
    "LOG_LEVELS",
    "VAULT_REFERENCE",
    "CanaryConfig",
    "ComponentConfig",
    "ComponentKind",
    "ConfigError",
    "LogConfig",
    "Mode",
    "RickConfig",
    "StoreConfig",
    "StrategyConfig",
    "default_config_text",
    "find_config",
    "load_config",
    "rick_home",
    "write_default_config",
]

CONFIG_FILENAME: Final = "rick.toml"
DEFAULTS_SOURCE: Final = "<embedded defaults>"
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")

ComponentKind = Literal["broker", "strategy", "notifier", "audit_sink"]


class ConfigError(ValueError):
    """The configuration cannot be used. The message names the file, the dotted
    key, what was found and what was expected."""


class Mode(enum.Enum):
    """What ``mode`` in rick.toml may say: ``paper`` (or ``ghost``), the simulated default.

    The trading mode that sends real orders (canary, live) is not set in the file,
    so that editing it cannot bypass the PIN: ``rick mode`` sets it in ``$RICK_HOME``
    (:mod:`rick_core.engine.modes`)."""

    PAPER = "paper"


# ---------------------------------------------------------------------------
# the configuration


@frozen
class LogConfig:
    """``[log]``: ``level`` is the lowest level written, one of :data:`LOG_LEVELS`."""

    level: str = "info"


@frozen
class AuditConfig:
    """``[audit]``: ``large_trade`` is the value, in a broker account's currency, from
    which a fill is audited as ``LARGE_TRADE_EXECUTED``."""

    large_trade: Decimal = Decimal(100_000)


@frozen
class CanaryConfig:
    """``[canary]``: the caps on real orders in canary mode (``rick mode canary``).

    ``max_quantity`` is the largest quantity of one order (units of the instrument),
    ``instrument_max_quantity`` overrides it per symbol, ``max_orders_per_day`` the
    most real orders sent in one UTC day over every real broker."""

    max_quantity: Decimal = Decimal(1)
    max_orders_per_day: int = 10
    instrument_max_quantity: Mapping[str, Decimal] = field(factory=dict)

    def max_quantity_for(self, instrument: str) -> Decimal:
        """The per-order cap of ``instrument``."""
        return self.instrument_max_quantity.get(instrument, self.max_quantity)


@frozen
class QuotesConfig:
    """``[quotes]``: ``stale_after`` is how many seconds after its last update a
    broker's quote of an instrument is stale: left out of the best quote, and
    no market order is sent on it."""

    stale_after: float = 15.0


@frozen
class ProxyConfig:
    """``[proxy]``: the WebSocket proxy that serves quotes and order events to
    local programs (see docs/websocket-protocol.md)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8787
    auth_timeout: float = 5.0
    """Seconds a new connection has to send its auth message."""
    send_timeout: float = 10.0
    """A client that takes nothing from the socket for this long is disconnected."""
    buffer: int = 256
    """Quotes buffered per client before older ones are conflated away."""
    max_subscriptions: int = 500
    """Instruments one connection may subscribe to (per broker, best included)."""
    max_connections_per_key: int = 10


@frozen
class StoreConfig:
    """``[store]``: ``path`` of the SQLite database, relative to the rick home
    unless absolute."""

    path: Path = Path("rick.db")

    def resolve(self, home: Path) -> Path:
        """The database path, absolute when ``home`` is."""
        return home / self.path.expanduser()


@frozen
class ComponentConfig:
    """A ``[brokers.<name>]``, ``[notifiers.<name>]`` or ``[audit_sinks.<name>]`` table.

    ``kind`` is the name a plugin registered the component under; ``options``
    is every other key of the table, for that plugin to validate.
    """

    name: str
    kind: str
    options: Mapping[str, Any] = field(factory=dict)


@frozen
class StrategyConfig:
    """A ``[strategies.<name>]`` table: which registered strategy (``kind``) runs
    on which configured broker and instruments, with its ``params``."""

    name: str
    kind: str
    broker: str
    instruments: tuple[str, ...]
    params: Mapping[str, Any] = field(factory=dict)
    enabled: bool = True


@frozen(kw_only=True)
class RickConfig:
    """The whole configuration. ``source`` is the file it was read from (None
    for the embedded defaults); ``home`` is the rick home folder."""

    home: Path
    mode: Mode = Mode.PAPER
    log: LogConfig = field(factory=LogConfig)
    audit: AuditConfig = field(factory=lambda: AuditConfig())
    canary: CanaryConfig = field(factory=CanaryConfig)
    risk: Mapping[str, Any] = field(factory=dict)
    """The ``[risk]`` table as written (checked); :func:`rick_core.engine.risk.parse_risk`
    turns it into the engine's charter."""
    store: StoreConfig = field(factory=StoreConfig)
    quotes: QuotesConfig = field(factory=QuotesConfig)
    proxy: ProxyConfig = field(factory=ProxyConfig)
    brokers: Mapping[str, ComponentConfig] = field(factory=dict)
    strategies: Mapping[str, StrategyConfig] = field(factory=dict)
    notifiers: Mapping[str, ComponentConfig] = field(factory=dict)
    audit_sinks: Mapping[str, ComponentConfig] = field(factory=dict)
    source: Path | None = None

    @property
    def store_path(self) -> Path:
        """The database path, resolved against :attr:`home`."""
        return self.store.resolve(self.home)

    def required_components(self) -> list[tuple[ComponentKind, str, str]]:
        """``(component kind, registered name, configured name)`` of every
        configured component (enabled strategies only), for checking against
        the installed plugins."""
        needed: list[tuple[ComponentKind, str, str]] = []
        needed += [("broker", c.kind, c.name) for c in self.brokers.values()]
        needed += [("strategy", s.kind, s.name) for s in self.strategies.values() if s.enabled]
        needed += [("notifier", c.kind, c.name) for c in self.notifiers.values()]
        needed += [("audit_sink", c.kind, c.name) for c in self.audit_sinks.values()]
        return needed


# ---------------------------------------------------------------------------
# finding, loading and writing the file


def rick_home(environ: Mapping[str, str]) -> Path:
    """``$RICK_HOME``, or ``~/.rick``."""
    return Path(environ.get("RICK_HOME") or "~/.rick").expanduser()


def find_config(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The config file to read: ``explicit`` (``--config``), else ``$RICK_CONFIG``,
    else ``$RICK_HOME/rick.toml`` if it exists; None means the embedded defaults.

    Raises:
        ConfigError: ``explicit`` or ``$RICK_CONFIG`` names a file that does not exist.
    """
    if explicit is not None:
        path, origin = explicit.expanduser(), "--config"
    elif environ.get("RICK_CONFIG"):
        path, origin = Path(environ["RICK_CONFIG"]).expanduser(), "$RICK_CONFIG"
    else:
        default = rick_home(environ) / CONFIG_FILENAME
        return default if default.exists() else None
    if not path.exists():
        raise ConfigError(
            f"{path}: config file not found (given by {origin}); fix the path, "
            f"or write a commented default config there with `rick init`"
        )
    return path


def load_config(path: Path | None, *, home: Path) -> RickConfig:
    """Read and validate ``path``; None gives the embedded defaults.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or holds a bad value.
    """
    if path is None:
        data = tomllib.loads(default_config_text(), parse_float=Decimal)
        return _build(_Table(DEFAULTS_SOURCE, "", data), source=None, home=home)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f, parse_float=Decimal)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
    return _build(_Table(str(path), "", data), source=path, home=home)


def default_config_text() -> str:
    """The commented default ``rick.toml`` shipped with rick-core."""
    return resources.files("rick_core").joinpath("default_config.toml").read_text("utf-8")


def write_default_config(path: Path, *, force: bool = False) -> Path:
    """Write the commented default config to ``path`` (creating its folders).

    Raises:
        FileExistsError: ``path`` exists and ``force`` is false.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("w" if force else "x", encoding="utf-8") as f:
            f.write(default_config_text())
    except FileExistsError:
        raise FileExistsError(
            f"{path} already exists; use --force to overwrite it (your settings will be lost)"
        ) from None
    return path


# ---------------------------------------------------------------------------
# building the config from parsed TOML

_TOP_KEYS: Final = (
    "mode",
    "log",
    "store",
    "audit",
    "risk",
    "brokers",
    "strategies",
    "notifiers",
    "audit_sinks",
    "canary",
    "quotes",
    "proxy",
)
_STRATEGY_KEYS: Final = ("kind", "broker", "instruments", "enabled", "params")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _build(top: _Table, *, source: Path | None, home: Path) -> RickConfig:
    top.check_keys(_TOP_KEYS)
    mode = _mode(top)
    log = top.table("log", required=False)
    log.check_keys(("level",))
    level = log.string("level", "info", choices=LOG_LEVELS)
    store = top.table("store", required=False)
    store.check_keys(("path",))
    store_path = Path(store.string("path", "rick.db"))
    audit = top.table("audit", required=False)
    audit.check_keys(("large_trade",))
    large_trade = audit.data.get("large_trade", AuditConfig().large_trade)
    if isinstance(large_trade, bool) or not isinstance(large_trade, int | Decimal):
        raise audit.error(
            "large_trade", "a number: the account-currency value of a large trade", large_trade
        )
    if large_trade <= 0:
        raise audit.error("large_trade", "a positive number", large_trade)
    canary = _canary(top.table("canary", required=False))
    risk = top.table("risk", required=False).data
    if risk:
        # Checked now, so `rick check` reports a bad limit before anything runs.
        from rick_core.engine.risk import parse_risk

        parse_risk(risk, str(source) if source else DEFAULTS_SOURCE)
    quotes = _quotes(top.table("quotes", required=False))
    proxy = _proxy(top.table("proxy", required=False))
    brokers = _components(top, "brokers", "broker")
    strategies = {
        name: _strategy(table, brokers) for name, table in top.tables("strategies").items()
    }
    return RickConfig(
        home=home,
        mode=mode,
        log=LogConfig(level=level),
        store=StoreConfig(path=store_path),
        audit=AuditConfig(large_trade=Decimal(large_trade)),
        canary=canary,
        quotes=quotes,
        proxy=proxy,
        risk=risk,
        brokers=brokers,
        strategies=strategies,
        notifiers=_components(top, "notifiers", "notifier"),
        audit_sinks=_components(top, "audit_sinks", "audit sink"),
        source=source,
    )


_MODES_SET_BY_COMMAND: Final = ("off", "canary", "live")


def _mode(top: _Table) -> Mode:
    """``mode``: paper or ghost (the same: simulated). A mode that trades real money
    is refused here, pointing to `rick mode`, so no file edit can arm it."""
    value = top.data.get("mode", "paper")
    wanted = value.strip().lower() if isinstance(value, str) else ""
    if wanted in _MODES_SET_BY_COMMAND:
        pin = " (it asks for the PIN; `rick mode set-pin` sets one)" if wanted != "off" else ""
        raise top.error(
            "mode",
            "paper or ghost (the simulated default), or no mode key at all",
            value,
            detail=(
                f"the trading mode is not set in rick.toml, so that editing the file cannot "
                f"arm real trading: delete this line and run `rick mode {wanted}`{pin}"
            ),
        )
    top.string("mode", "paper", choices=("paper", "ghost"))
    return Mode.PAPER


def _quotes(table: _Table) -> QuotesConfig:
    table.check_keys(("stale_after",))
    return QuotesConfig(
        stale_after=table.number("stale_after", QuotesConfig().stale_after, what="seconds")
    )


def _proxy(table: _Table) -> ProxyConfig:
    default = ProxyConfig()
    table.check_keys(
        (
            "enabled",
            "host",
            "port",
            "auth_timeout",
            "send_timeout",
            "buffer",
            "max_subscriptions",
            "max_connections_per_key",
        )
    )
    port = table.data.get("port", default.port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise table.error("port", "a TCP port number from 0 to 65535 (0: any free port)", port)
    return ProxyConfig(
        enabled=table.boolean("enabled", default.enabled),
        host=table.string("host", default.host),
        port=port,
        auth_timeout=table.number("auth_timeout", default.auth_timeout, what="seconds"),
        send_timeout=table.number("send_timeout", default.send_timeout, what="seconds"),
        buffer=table.count("buffer", default.buffer, what="quotes per client"),
        max_subscriptions=table.count(
            "max_subscriptions", default.max_subscriptions, what="instruments per connection"
        ),
        max_connections_per_key=table.count(
            "max_connections_per_key", default.max_connections_per_key, what="connections"
        ),
    )


def _canary(table: _Table) -> CanaryConfig:
    """``[canary]``: checked caps, defaults for what is not set."""
    table.check_keys(("max_quantity", "max_orders_per_day", "instrument_max_quantity"))
    default = CanaryConfig()
    max_quantity = _quantity(table, "max_quantity", default.max_quantity)
    per_day = table.data.get("max_orders_per_day", default.max_orders_per_day)
    if isinstance(per_day, bool) or not isinstance(per_day, int) or per_day <= 0:
        raise table.error(
            "max_orders_per_day", "a positive whole number: real orders per UTC day", per_day
        )
    overrides = table.table("instrument_max_quantity", required=False)
    by_instrument = {}
    for symbol in overrides.data:
        try:
            check_symbol(symbol)
        except ModelError as e:
            raise overrides.error(
                symbol, "a canonical instrument symbol", found_text=repr(symbol), detail=str(e)
            ) from None
        by_instrument[symbol] = _quantity(overrides, symbol, None)
    return CanaryConfig(
        max_quantity=max_quantity,
        max_orders_per_day=per_day,
        instrument_max_quantity=by_instrument,
    )


def _quantity(table: _Table, name: str, default: Decimal | None) -> Decimal:
    """A positive quantity, written as a number or a numeric string ("0.001")."""
    expected = 'a positive quantity, e.g. 1000 or "0.001"'
    value = table.data.get(name, _MISSING if default is None else default)
    if value is _MISSING:
        raise table.error(name, expected)
    number: Decimal | None = None
    if isinstance(value, Decimal | int) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except ArithmeticError:
            number = None
    if number is None or not number.is_finite() or number <= 0:
        raise table.error(name, expected, value)
    return number


def _components(top: _Table, section: str, what: str) -> dict[str, ComponentConfig]:
    components = {}
    for name, table in top.tables(section).items():
        _refuse_secrets(table, name)
        components[name] = ComponentConfig(
            name=name,
            kind=table.string("kind", expected=_kind_expected(what)),
            options={k: v for k, v in table.data.items() if k != "kind"},
        )
    return components


def _kind_expected(what: str) -> str:
    return f"a string: the name a {what} plugin registered (`rick plugins` lists them)"


def _strategy(table: _Table, brokers: Mapping[str, ComponentConfig]) -> StrategyConfig:
    table.check_keys(_STRATEGY_KEYS, hint=f"strategy parameters go in [{table.key}.params]")
    kind = table.string("kind", expected=_kind_expected("strategy"))
    broker = table.string("broker", expected="a string: the <name> of a [brokers.<name>] table")
    if broker not in brokers:
        defined = ", ".join(brokers) if brokers else "none: no [brokers.<name>] table is defined"
        raise table.error(
            "broker",
            f"the name of a configured broker (defined: {defined})",
            broker,
            suggest=brokers,
        )
    params = table.table("params", required=False)
    _refuse_secrets(params, table.name)
    return StrategyConfig(
        name=table.name,
        kind=kind,
        broker=broker,
        instruments=table.symbols("instruments"),
        params=params.data,
        enabled=table.boolean("enabled", True),
    )


# ---------------------------------------------------------------------------
# secrets do not belong in the file

#: A string option of the form ``"vault:<name>"`` names credential <name> of the
#: component in the encrypted vault (``rick creds set <component> <name>``), read
#: through the component's credentials; the secret itself is never in rick.toml.
VAULT_REFERENCE: Final = "vault:"

# A key named like a secret, on its own or as a suffix (oanda_token, client-secret,
# apiKey), after lower-casing and reading "-" as "_".
_SECRET_KEY: Final = re.compile(
    r"(^|_)(tokens?|secrets?|passwords?|passwd|pwd|pin|pass_?phrases?|api_?keys?|"
    r"private_?keys?|access_?keys?|secret_?(access_?)?keys?|auth|authorization|bearer|"
    r"credentials?)$"
)
_URL_WITH_PASSWORD: Final = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
_NUMERIC_SECRET_KEY: Final = re.compile(r"(^|_)(passwords?|passwd|pwd|pin|pass_?phrases?)$")
"""Keys whose number is a secret too (``password = 1234``); ``max_token = 5`` is not."""
_CREDENTIAL_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def _refuse_secrets(table: _Table, component: str) -> None:
    """Refuse a literal string under a key that looks like a secret, anywhere in
    ``table`` (nested tables and arrays of tables too). Only strings are refused
    (``token_ttl = 30`` is fine), and ``"vault:<name>"`` references are allowed.
    The message never shows the value."""
    for name, value in table.data.items():
        if isinstance(value, dict):
            _refuse_secrets(_Table(table.source, table.path(name), value), component)
            continue
        if isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    nested = _Table(table.source, table.path(name, index), item)
                    _refuse_secrets(nested, component)
        if isinstance(value, str) and _URL_WITH_PASSWORD.search(value):
            raise table.error(
                name,
                "a URL without a password in it (secrets do not belong in rick.toml)",
                found_text="a URL with user:password (not shown)",
                detail=(
                    f"remove the password from the URL and store it with "
                    f"`rick creds set {component} <name>`"
                ),
            )
        if not _SECRET_KEY.search(name.lower().replace("-", "_")):
            continue
        if (
            isinstance(value, int | Decimal)
            and not isinstance(value, bool)
            and _NUMERIC_SECRET_KEY.search(name.lower().replace("-", "_"))
        ):
            raise table.error(
                name,
                f'a reference to the encrypted vault, "{VAULT_REFERENCE}<name>" '
                "(secrets do not belong in rick.toml)",
                found_text="a literal number (not shown: it looks like a secret)",
                detail=f"store it with `rick creds set {component} {name.lower()}`",
            )
        strings = [value] if isinstance(value, str) else []
        if isinstance(value, list):
            strings = [item for item in value if isinstance(item, str)]
        for text in strings:
            if not text.strip():
                continue
            credential = name.lower().replace("-", "_")
            if not _CREDENTIAL_NAME.fullmatch(credential):
                credential = "<name>"
            reference = text.removeprefix(VAULT_REFERENCE)
            if text.startswith(VAULT_REFERENCE) and _CREDENTIAL_NAME.fullmatch(reference):
                continue
            if text.startswith(VAULT_REFERENCE):
                found = "a malformed vault reference (not shown)"
            else:
                found = "a literal string (not shown: it looks like a secret)"
            raise table.error(
                name,
                f'a reference to the encrypted vault, "{VAULT_REFERENCE}<name>" '
                "(secrets do not belong in rick.toml)",
                found_text=found,
                detail=(
                    f"store the secret with `rick creds set {component} {credential}`, then "
                    f'write {name} = "{VAULT_REFERENCE}{credential}" in [{table.key}] '
                    "instead (or delete the key)"
                ),
            )


# ---------------------------------------------------------------------------
# reading typed values with errors that say where, what and why


class _Missing(enum.Enum):
    MISSING = "missing"


_MISSING: Final = _Missing.MISSING


class _Table:
    """A TOML table being read: the file it came from and its dotted key."""

    def __init__(self, source: str, key: str, data: Mapping[str, Any]) -> None:
        self.source = source
        self.key = key
        self.name = key.rpartition(".")[2]
        self.data = dict(data)

    def path(self, name: str, index: int | None = None) -> str:
        """The dotted key of ``name`` (or of its item ``index``) in this table,
        quoted if it is no bare key."""
        part = name if _NAME.match(name) else json.dumps(name)
        part += "" if index is None else f"[{index}]"
        return f"{self.key}.{part}" if self.key else part

    def error(
        self,
        name: str,
        expected: str,
        found: object = _MISSING,
        *,
        index: int | None = None,
        found_text: str = "",
        suggest: Sequence[str] | Mapping[str, Any] = (),
        detail: str = "",
    ) -> ConfigError:
        """A :class:`ConfigError` about key ``name`` (or its item ``index``) of this table."""
        if not found_text:
            found_text = "nothing (the key is missing)" if found is _MISSING else _describe(found)
        key = self.path(name, index)
        message = f"{self.source}: key {key!r}: expected {expected}; found {found_text}"
        close = (
            difflib.get_close_matches(found, list(suggest), n=1) if isinstance(found, str) else []
        )
        if close:
            message += f"; did you mean {close[0]!r}?"
        return ConfigError(message + (f": {detail}" if detail else ""))

    def check_keys(self, allowed: Sequence[str], *, hint: str = "") -> None:
        """Refuse any key not in ``allowed``, suggesting the closest allowed one."""
        for name in self.data:
            if name not in allowed:
                where = f"the keys of [{self.key}]" if self.key else "the top-level keys"
                close = difflib.get_close_matches(name, allowed, n=1)
                advice = f"; did you mean {close[0]!r}?" if close else (f"; {hint}" if hint else "")
                raise ConfigError(
                    f"{self.source}: key {self.path(name)!r}: expected one of {where}: "
                    f"{', '.join(allowed)}; found unknown key {name!r}{advice}"
                )

    def _get(self, name: str, default: object, expected: str) -> object:
        value = self.data.get(name, default)
        if value is _MISSING:
            raise self.error(name, expected)
        return value

    def string(
        self,
        name: str,
        default: str | _Missing = _MISSING,
        *,
        choices: Sequence[str] = (),
        expected: str = "a non-empty string",
    ) -> str:
        """A string; with ``choices``, one of them (matched case-insensitively)."""
        if choices:
            expected = f"one of {', '.join(choices)}"
        value = self._get(name, default, expected)
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, expected, value)
        if choices:
            if value.lower() not in choices:
                raise self.error(name, expected, value, suggest=choices)
            return value.lower()
        return value

    def boolean(self, name: str, default: bool | _Missing = _MISSING) -> bool:
        """A TOML boolean (``true`` or ``false``)."""
        expected = "a boolean (true or false, without quotes)"
        value = self._get(name, default, expected)
        if not isinstance(value, bool):
            raise self.error(name, expected, value)
        return value

    def number(self, name: str, default: float, *, what: str) -> float:
        """A positive, finite number (integer or decimal) of ``what``."""
        expected = f"a positive number of {what}"
        value = self._get(name, default, expected)
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise self.error(name, expected, value)
        number = float(value)
        if not (number > 0 and math.isfinite(number)):
            raise self.error(name, expected, value)
        return number

    def count(self, name: str, default: int, *, what: str) -> int:
        """A positive whole number of ``what``."""
        expected = f"a positive whole number of {what}"
        value = self._get(name, default, expected)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.error(name, expected, value)
        return value

    def symbols(self, name: str) -> tuple[str, ...]:
        """An array of distinct canonical instrument symbols."""
        expected = 'an array of instrument symbols, e.g. ["EUR_USD", "BTC_USD"]'
        value = self._get(name, _MISSING, expected)
        if not isinstance(value, list):
            raise self.error(name, expected, value)
        for index, symbol in enumerate(value):
            try:
                check_symbol(symbol)
            except ModelError as e:
                raise self.error(
                    name, "a canonical instrument symbol", symbol, index=index, detail=str(e)
                ) from None
            if symbol in value[:index]:
                raise self.error(
                    name, "each instrument once", symbol, index=index, detail="listed twice"
                )
        return tuple(value)

    def table(self, name: str, *, required: bool = True) -> _Table:
        """The sub-table ``name`` (empty if absent and not ``required``)."""
        value = self._get(name, _MISSING if required else {}, f"a table [{self.path(name)}]")
        if not isinstance(value, dict):
            raise self.error(name, f"a table [{self.path(name)}]", value)
        return _Table(self.source, self.path(name), value)

    def tables(self, name: str) -> dict[str, _Table]:
        """The optional table ``name`` of named tables, e.g. ``[brokers.<name>]``."""
        section = self.table(name, required=False)
        result = {}
        for key in section.data:
            if not _NAME.match(key):
                raise section.error(
                    key,
                    "a name of letters, digits, '-' and '_'",
                    found_text=f"the name {key!r}",
                )
            result[key] = section.table(key)
        return result


def _describe(value: object) -> str:
    """``value`` as TOML would spell it, with its TOML type; a table shows only its keys,
    so no option value (which might be a secret) lands in an error message."""
    return f"{_show(value)} ({_toml_type(value)})"


def _show(value: object) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k} = ..." for k in value) + "}"
    elif isinstance(value, list):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, date | time):
        text = value.isoformat()
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _toml_type(value: object) -> str:
    if isinstance(value, datetime):
        return "offset date-time" if value.tzinfo is not None else "local date-time"
    types: list[tuple[type, str]] = [
        (bool, "boolean"),
        (int, "integer"),
        (Decimal, "float"),
        (str, "string"),
        (list, "array"),
        (dict, "table"),
        (date, "local date"),
        (time, "local time"),
    ]
    return next((name for t, name in types if isinstance(value, t)), type(value).__name__)
