"""rick.toml: locating, loading, defaults, and errors a user can act on."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import attrs
import pytest

from rick_core.config import (
    ComponentConfig,
    ConfigError,
    LogConfig,
    Mode,
    RickConfig,
    StoreConfig,
    StrategyConfig,
    default_config_text,
    find_config,
    load_config,
    rick_home,
    write_default_config,
)

FULL = """
mode = "ghost"

[log]
level = "debug"

[store]
path = "/var/lib/rick/rick.db"

[brokers.oanda]
kind = "oanda"
account_id = "101-001-1234567-001"
max_risk = 0.1
limits = { daily = 2.50 }

[brokers.paper]
kind = "paper"

[strategies.trend]
kind = "sma_cross"
broker = "oanda"
instruments = ["EUR_USD", "USD_JPY"]

[strategies.trend.params]
fast = 10
threshold = 0.0002

[strategies.idle]
kind = "sma_cross"
broker = "paper"
instruments = ["BTC_USD"]
enabled = false

[notifiers.log]
kind = "log"

[audit_sinks.copy]
kind = "jsonl"
path = "audit.jsonl"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rick.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> RickConfig:
    return load_config(write(tmp_path, text), home=tmp_path)


# ---------------------------------------------------------------------------
# defaults


def test_no_file_gives_the_defaults(tmp_path: Path) -> None:
    config = load_config(None, home=tmp_path)

    # With no file, rick runs the commented default file itself.
    written = load_config(write_default_config(tmp_path / "d" / "rick.toml"), home=tmp_path)
    assert config == attrs.evolve(written, source=None)
    assert config.source is None
    assert config.mode is Mode.PAPER
    assert config.log == LogConfig(level="info")
    assert config.store == StoreConfig(path=Path("rick.db"))
    assert config.store_path == tmp_path / "rick.db"
    assert {n: b.kind for n, b in config.brokers.items()} == {"paper": "paper"}
    assert {n: (s.kind, s.broker) for n, s in config.strategies.items()} == {
        "example": ("momentum", "paper")
    }
    assert config.notifiers == config.audit_sinks == {}
    assert config.source is None
    assert config.required_components() == [
        ("broker", "paper", "paper"),
        ("strategy", "momentum", "example"),
    ]


def test_the_shipped_default_file_is_the_defaults(tmp_path: Path) -> None:
    path = write_default_config(tmp_path / "rick.toml")

    from_file = load_config(path, home=tmp_path)

    assert from_file.source == path
    assert attrs.evolve(from_file, source=None) == load_config(None, home=tmp_path)


def test_the_commented_examples_are_valid_once_uncommented(tmp_path: Path) -> None:
    # "## " lines explain; "# " lines are examples meant to be uncommented as they are.
    lines = [
        re.sub(r"^# ?", "", line)
        for line in default_config_text().splitlines()
        if not line.startswith("##")
    ]

    config = load_text(tmp_path, "\n".join(lines))

    assert config.brokers["oanda"].options == {"account_id": "101-001-1234567-001"}
    assert config.strategies["example"].broker in config.brokers
    assert {kind for kind, _, _ in config.required_components()} == {
        "broker",
        "strategy",
        "notifier",
        "audit_sink",
    }


def test_a_full_config(tmp_path: Path) -> None:
    config = load_text(tmp_path, FULL)

    assert config.mode is Mode.PAPER  # ghost is paper; real trading is `rick mode`'s
    assert config.log.level == "debug"
    assert config.store_path == Path("/var/lib/rick/rick.db")
    assert config.brokers["paper"] == ComponentConfig(name="paper", kind="paper", options={})
    assert config.strategies["trend"] == StrategyConfig(
        name="trend",
        kind="sma_cross",
        broker="oanda",
        instruments=("EUR_USD", "USD_JPY"),
        params={"fast": 10, "threshold": Decimal("0.0002")},
        enabled=True,
    )
    assert config.strategies["idle"].enabled is False
    assert config.audit_sinks["copy"].options == {"path": "audit.jsonl"}


def test_toml_floats_arrive_as_exact_decimals(tmp_path: Path) -> None:
    options = load_text(tmp_path, FULL).brokers["oanda"].options

    assert options == {
        "account_id": "101-001-1234567-001",
        "max_risk": Decimal("0.1"),
        "limits": {"daily": Decimal("2.50")},
    }
    assert type(options["max_risk"]) is Decimal


def test_required_components_lists_enabled_strategies_only(tmp_path: Path) -> None:
    assert load_text(tmp_path, FULL).required_components() == [
        ("broker", "oanda", "oanda"),
        ("broker", "paper", "paper"),
        ("strategy", "sma_cross", "trend"),
        ("notifier", "log", "log"),
        ("audit_sink", "jsonl", "copy"),
    ]


def test_a_relative_store_path_is_under_home(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[store]\npath = "data/orders.db"\n')

    assert config.store_path == tmp_path / "data" / "orders.db"


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    assert load_text(tmp_path, '[log]\nlevel = "WARNING"\n').log.level == "warning"


# ---------------------------------------------------------------------------
# finding the file


def test_rick_home(tmp_path: Path) -> None:
    assert rick_home({"RICK_HOME": str(tmp_path)}) == tmp_path
    assert rick_home({}) == Path.home() / ".rick"


def test_find_config_precedence(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    in_home = write(home, "")
    from_env = tmp_path / "env.toml"
    from_env.write_text("")
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("")
    environ = {"RICK_HOME": str(home), "RICK_CONFIG": str(from_env)}

    assert find_config(explicit, environ) == explicit
    assert find_config(None, environ) == from_env
    assert find_config(None, {"RICK_HOME": str(home)}) == in_home
    assert find_config(None, {"RICK_HOME": str(home), "RICK_CONFIG": ""}) == in_home


def test_no_file_in_home_means_defaults(tmp_path: Path) -> None:
    assert find_config(None, {"RICK_HOME": str(tmp_path)}) is None


@pytest.mark.parametrize(
    ("explicit", "variable", "origin"),
    [(True, "", "--config"), (False, "RICK_CONFIG", "$RICK_CONFIG")],
)
def test_a_named_file_that_does_not_exist_is_an_error(
    tmp_path: Path, explicit: bool, variable: str, origin: str
) -> None:
    missing = tmp_path / "nope.toml"
    environ = {"RICK_HOME": str(tmp_path)} | ({variable: str(missing)} if variable else {})

    with pytest.raises(ConfigError) as info:
        find_config(missing if explicit else None, environ)

    assert str(missing) in str(info.value)
    assert origin in str(info.value)


# ---------------------------------------------------------------------------
# errors


def test_a_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'mode = "paper"\n[log]\nlevel = \n')

    with pytest.raises(ConfigError) as info:
        load_config(path, home=tmp_path)

    message = str(info.value)
    assert message.startswith(f"{path}: invalid TOML")
    assert "line 3" in message


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path, home=tmp_path)


STRATEGY = '[brokers.paper]\nkind = "paper"\n[strategies.trend]\nkind = "sma"\nbroker = "paper"\n'


@pytest.mark.parametrize(
    ("text", "key", "expected", "found"),
    [
        pytest.param(
            'mode = "demo"',
            "mode",
            "expected one of paper, ghost",
            "found 'demo' (string)",
            id="bad-mode",
        ),
        pytest.param(
            '[log]\nlevel = "verbose"',
            "log.level",
            "expected one of debug, info, warning, error, critical",
            "found 'verbose' (string)",
            id="bad-level",
        ),
        pytest.param(
            "[log]\nlevel = 10",
            "log.level",
            "expected one of debug",
            "found 10 (integer)",
            id="level-not-a-string",
        ),
        pytest.param(
            'brokerz = "x"',
            "brokerz",
            "expected one of the top-level keys: mode, log, store, audit, risk, brokers",
            "found unknown key 'brokerz'; did you mean 'brokers'?",
            id="unknown-top-level-key",
        ),
        pytest.param(
            '[log]\nlevle = "info"',
            "log.levle",
            "expected one of the keys of [log]: level",
            "did you mean 'level'?",
            id="unknown-log-key",
        ),
        pytest.param(
            "[store]\npath = 3",
            "store.path",
            "expected a non-empty string",
            "found 3 (integer)",
            id="store-path-not-a-string",
        ),
        pytest.param(
            'brokers = "x"',
            "brokers",
            "expected a table [brokers]",
            "found 'x' (string)",
            id="brokers-not-a-table",
        ),
        pytest.param(
            '[brokers.oanda]\naccount_id = "1"',
            "brokers.oanda.kind",
            "expected a string: the name a broker plugin registered",
            "found nothing (the key is missing)",
            id="broker-without-kind",
        ),
        pytest.param(
            '[notifiers.tg]\nkind = ""',
            "notifiers.tg.kind",
            "expected a string: the name a notifier plugin registered",
            "found '' (string)",
            id="empty-notifier-kind",
        ),
        pytest.param(
            '[brokers."my broker"]\nkind = "paper"',
            'brokers."my broker"',
            "expected a name of letters, digits, '-' and '_'",
            "found the name 'my broker'",
            id="bad-component-name",
        ),
        pytest.param(
            STRATEGY.replace('broker = "paper"', 'broker = "papr"') + 'instruments = ["EUR_USD"]',
            "strategies.trend.broker",
            "expected the name of a configured broker (defined: paper)",
            "found 'papr' (string); did you mean 'paper'?",
            id="strategy-with-unknown-broker",
        ),
        pytest.param(
            '[strategies.trend]\nkind = "sma"\nbroker = "paper"\ninstruments = ["EUR_USD"]',
            "strategies.trend.broker",
            "no [brokers.<name>] table is defined",
            "found 'paper' (string)",
            id="strategy-with-no-brokers-defined",
        ),
        pytest.param(
            STRATEGY + 'instruments = ["EUR_USD", "eur-usd"]',
            "strategies.trend.instruments[1]",
            "expected a canonical instrument symbol",
            "found 'eur-usd' (string): 'eur-usd' is not a canonical instrument symbol",
            id="bad-instrument-symbol",
        ),
        pytest.param(
            STRATEGY + "instruments = [1]",
            "strategies.trend.instruments[0]",
            "expected a canonical instrument symbol",
            "found 1 (integer)",
            id="instrument-not-a-string",
        ),
        pytest.param(
            STRATEGY + 'instruments = ["EUR_USD", "EUR_USD"]',
            "strategies.trend.instruments[1]",
            "expected each instrument once",
            "listed twice",
            id="duplicate-instrument",
        ),
        pytest.param(
            STRATEGY + 'instruments = "EUR_USD"',
            "strategies.trend.instruments",
            "expected an array of instrument symbols",
            "found 'EUR_USD' (string)",
            id="instruments-not-a-list",
        ),
        pytest.param(
            STRATEGY,
            "strategies.trend.instruments",
            "expected an array of instrument symbols",
            "found nothing (the key is missing)",
            id="instruments-missing",
        ),
        pytest.param(
            STRATEGY + 'instruments = ["EUR_USD"]\nenabled = "yes"',
            "strategies.trend.enabled",
            "expected a boolean (true or false, without quotes)",
            "found 'yes' (string)",
            id="enabled-not-a-bool",
        ),
        pytest.param(
            STRATEGY + 'instruments = ["EUR_USD"]\nenabeld = true',
            "strategies.trend.enabeld",
            "expected one of the keys of [strategies.trend]: kind, broker",
            "did you mean 'enabled'?",
            id="misspelt-strategy-key",
        ),
        pytest.param(
            STRATEGY + 'instruments = ["EUR_USD"]\nfast = 10',
            "strategies.trend.fast",
            "expected one of the keys of [strategies.trend]",
            "strategy parameters go in [strategies.trend.params]",
            id="parameter-outside-params",
        ),
        pytest.param(
            STRATEGY + 'instruments = ["EUR_USD"]\nparams = 0.5',
            "strategies.trend.params",
            "expected a table [strategies.trend.params]",
            "found 0.5 (float)",
            id="params-not-a-table",
        ),
        pytest.param(
            '[brokers.paper]\nkind = "paper"\n[strategies.trend]\nbroker = "paper"',
            "strategies.trend.kind",
            "expected a string: the name a strategy plugin registered",
            "found nothing",
            id="strategy-without-kind",
        ),
    ],
)
def test_bad_values_name_the_file_key_expectation_and_finding(
    tmp_path: Path, text: str, key: str, expected: str, found: str
) -> None:
    path = write(tmp_path, text + "\n")

    with pytest.raises(ConfigError) as info:
        load_config(path, home=tmp_path)

    message = str(info.value)
    assert message.startswith(f"{path}: key {key!r}: "), message
    assert expected in message
    assert found in message


def test_a_table_is_shown_by_its_keys_only(tmp_path: Path) -> None:
    # options may hold something secret: an error never echoes a table's values
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, 'mode = { token = "hunter2" }\n')

    assert "found {token = ...} (table)" in str(info.value)
    assert "hunter2" not in str(info.value)


# ---------------------------------------------------------------------------
# secrets belong in the vault, not in rick.toml

_PAPER = '[brokers.paper]\nkind = "paper"\n'
_STRATEGY = (
    _PAPER + '[strategies.s]\nkind = "momentum"\nbroker = "paper"\ninstruments = ["EUR_USD"]\n'
)


@pytest.mark.parametrize(
    ("text", "key", "command"),
    [
        (
            '[brokers.oanda]\nkind = "oanda"\ntoken = "hunter2-token"\n',
            "brokers.oanda.token",
            "rick creds set oanda token",
        ),
        (
            '[brokers.oanda]\nkind = "oanda"\noanda_token = "hunter2-token"\n',
            "brokers.oanda.oanda_token",
            "rick creds set oanda oanda_token",
        ),
        (
            '[brokers.cb]\nkind = "coinbase"\napiKey = "hunter2-token"\n',
            "brokers.cb.apiKey",
            "rick creds set cb apikey",
        ),
        (
            '[brokers.cb]\nkind = "coinbase"\n[brokers.cb.auth]\nPRIVATE_KEY = "hunter2-token"\n',
            "brokers.cb.auth.PRIVATE_KEY",
            "rick creds set cb private_key",
        ),
        (
            '[brokers.ib]\nkind = "ib"\n[[brokers.ib.accounts]]\npassword = "hunter2-token"\n',
            "brokers.ib.accounts[0].password",
            "rick creds set ib password",
        ),
        (
            '[notifiers.tg]\nkind = "telegram"\nbot-token = "hunter2-token"\n',
            "notifiers.tg.bot-token",
            "rick creds set tg bot_token",
        ),
        (
            '[audit_sinks.s3]\nkind = "s3"\nsecret_access_key = ["hunter2-token"]\n',
            "audit_sinks.s3.secret_access_key",
            "rick creds set s3 secret_access_key",
        ),
        (
            _STRATEGY + '[strategies.s.params]\nwebhook_secret = "hunter2-token"\n',
            "strategies.s.params.webhook_secret",
            "rick creds set s webhook_secret",
        ),
        (
            _STRATEGY + '[strategies.s.params]\nPassPhrase = "hunter2-token"\n',
            "strategies.s.params.PassPhrase",
            "rick creds set s passphrase",
        ),
        (
            '[brokers.b]\nkind = "binance"\napi_secret = "vault:"\n',
            "brokers.b.api_secret",
            "rick creds set b api_secret",
        ),
    ],
)
def test_a_literal_secret_is_refused_with_the_command_that_stores_it(
    tmp_path: Path, text: str, key: str, command: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)

    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'rick.toml'}: key {key!r}: "), message
    assert f"`{command}`" in message
    assert '"vault:' in message
    assert "hunter2" not in message


def test_vault_references_numbers_and_other_keys_are_fine(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        _STRATEGY
        + '[strategies.s.params]\napi_key = "vault:api_key"\n'
        + '[brokers.oanda]\nkind = "oanda"\ntoken = "vault:oanda.token-2"\n'
        + 'token_refresh = 30\ntoken_url = "https://api.example.com/token/new"\n'
        + 'max_token = 5\nuse_password = true\npassword = ""\n',
    )

    assert config.brokers["oanda"].options["token"] == "vault:oanda.token-2"
    assert config.brokers["oanda"].options["token_refresh"] == 30
    assert config.strategies["s"].params["api_key"] == "vault:api_key"


def test_the_defaults_and_their_examples_hold_no_secret() -> None:
    assert "vault:<name>" in default_config_text()
    assert "rick creds set" in default_config_text()


# ---------------------------------------------------------------------------
# rick init


def test_write_default_config_creates_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "rick.toml"

    assert write_default_config(path) == path
    assert path.read_text(encoding="utf-8") == default_config_text()


def test_write_default_config_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = write(tmp_path, 'mode = "live"\n')

    with pytest.raises(FileExistsError, match="--force"):
        write_default_config(path)
    assert path.read_text(encoding="utf-8") == 'mode = "live"\n'

    write_default_config(path, force=True)
    assert path.read_text(encoding="utf-8") == default_config_text()


def test_config_and_logging_accept_the_same_level_names() -> None:
    from rick_core.config import LOG_LEVELS
    from rick_core.logs import LEVELS

    assert tuple(LEVELS) == LOG_LEVELS


def test_large_trade_threshold_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "rick.toml"
    path.write_text("[audit]\nlarge_trade = 25000.50\n", "utf-8")
    assert load_config(path, home=tmp_path).audit.large_trade == Decimal("25000.50")
    assert load_config(None, home=tmp_path).audit.large_trade == Decimal(100000)
    path.write_text('[audit]\nlarge_trade = "lots"\n', "utf-8")
    with pytest.raises(ConfigError, match=r"rick.toml: key 'audit.large_trade': expected a number"):
        load_config(path, home=tmp_path)


@pytest.mark.parametrize(
    ("entry", "found"),
    [
        ("password = 84736251", "a literal number"),
        ('pin = "1234"', "a literal string"),
        ('access_key = "AKIAIOSFODNN7EXAMPLE"', "a literal string"),
        ('auth = "Bearer abc.def"', "a literal string"),
        ('tokens = ["t1-abcdef"]', "a literal string"),
        ('url = "https://user:hunter2@api.example.com/v3"', "a URL with user:password"),
    ],
)
def test_more_forms_of_a_secret_are_refused(tmp_path: Path, entry: str, found: str) -> None:
    with pytest.raises(ConfigError, match=found) as refused:
        load_text(tmp_path, _STRATEGY + f'[brokers.oanda]\nkind = "oanda"\n{entry}\n')
    assert "hunter2" not in str(refused.value) and "84736251" not in str(refused.value)


def test_a_bad_risk_limit_is_refused_when_the_config_is_read(tmp_path: Path) -> None:
    path = tmp_path / "rick.toml"
    path.write_text('[risk.instruments.EUR_USD]\nmax_order_quantity = "lots"\n', "utf-8")
    with pytest.raises(ConfigError, match=r"risk.instruments.EUR_USD.max_order_quantity"):
        load_config(path, home=tmp_path)
    path.write_text("[risk]\nmax_order_quantity = 1000\n", "utf-8")
    assert load_config(path, home=tmp_path).risk == {"max_order_quantity": 1000}
