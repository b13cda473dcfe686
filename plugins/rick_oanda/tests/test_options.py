"""OandaOptions: the checked options of one ``oanda`` broker."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from rick_core.components import ComponentSetup
from rick_oanda.options import OandaOptions

SOURCE = "/home/x/.rick/rick.toml [brokers.fx]"
ACCOUNT = "101-004-1234567-001"


def options(source: str = SOURCE, **raw: Any) -> OandaOptions:
    return OandaOptions(ComponentSetup(name="fx", options=raw, source=source))


def refused(**raw: Any) -> str:
    with pytest.raises(ValueError, match=r" must be |unknown option") as caught:
        options(**raw)
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: "), message
    return message


def test_defaults_are_practice_and_oandas_documented_limits() -> None:
    opts = options(account_id=ACCOUNT)
    assert opts.account_id == ACCOUNT
    assert opts.environment.name == "practice"
    assert opts.rest_url == "https://api-fxpractice.oanda.com"
    assert opts.stream_url == "https://stream-fxpractice.oanda.com"
    assert opts.real_money is False
    assert opts.timeout == 10
    assert opts.requests_per_second == 100
    assert opts.connections_per_second == 2
    assert opts.rate_limit_retries == 4
    assert opts.quote_silence == 10
    assert opts.event_silence == 20


def test_live_environment_uses_the_fxtrade_hosts_and_real_money() -> None:
    opts = options(account_id=ACCOUNT, environment="live")
    assert opts.environment.name == "live"
    assert opts.rest_url == "https://api-fxtrade.oanda.com"
    assert opts.stream_url == "https://stream-fxtrade.oanda.com"
    assert opts.real_money is True


def test_explicit_practice_is_not_real_money() -> None:
    assert options(account_id=ACCOUNT, environment="practice").real_money is False


def test_unknown_environment_is_refused() -> None:
    message = refused(account_id=ACCOUNT, environment="demo")
    assert "environment" in message
    assert "'demo'" in message


def test_unhashable_environment_is_refused_naming_the_source() -> None:
    message = refused(account_id=ACCOUNT, environment=["live"])
    assert "environment" in message


def test_url_overrides_strip_the_trailing_slash() -> None:
    opts = options(
        account_id=ACCOUNT,
        rest_url="http://127.0.0.1:8080/",
        stream_url="https://proxy.example/oanda-stream/",
    )
    assert opts.rest_url == "http://127.0.0.1:8080"
    assert opts.stream_url == "https://proxy.example/oanda-stream"


def test_url_overrides_keep_the_environment_for_real_money() -> None:
    opts = options(account_id=ACCOUNT, environment="live", rest_url="https://proxy.example")
    assert opts.rest_url == "https://proxy.example"
    assert opts.stream_url == "https://stream-fxtrade.oanda.com"
    assert opts.real_money is True


def test_describe_shows_where_the_broker_goes() -> None:
    opts = options(account_id=ACCOUNT, rest_url="http://127.0.0.1:9/")
    assert opts.describe() == {
        "account_id": ACCOUNT,
        "environment": "practice",
        "rest_url": "http://127.0.0.1:9",
        "stream_url": "https://stream-fxpractice.oanda.com",
    }


@pytest.mark.parametrize("key", ["rest_url", "stream_url"])
@pytest.mark.parametrize(
    "url",
    [
        "ftp://api-fxpractice.oanda.com",
        "ws://stream-fxpractice.oanda.com",
        "api-fxpractice.oanda.com",  # no scheme
        "https://",  # no host
        "https://api-fxpractice.oanda.com/v3?token=abc",  # a query
        42,
    ],
)
def test_bad_urls_are_refused(key: str, url: object) -> None:
    message = refused(account_id=ACCOUNT, **{key: url})
    assert f"{key} must be" in message
    assert "http" in message


def test_missing_account_id_is_refused() -> None:
    message = refused()
    assert "account_id must be" in message
    assert "got nothing" in message


@pytest.mark.parametrize(
    "account_id", ["", "10", "101 004 1234567 001", "-101-004", "101/004", 1010041234567001, None]
)
def test_bad_account_ids_are_refused(account_id: object) -> None:
    message = refused() if account_id is None else refused(account_id=account_id)
    assert "account_id" in message


def test_account_id_with_a_trailing_newline_is_refused() -> None:
    refused(account_id=ACCOUNT + "\n")


def test_unknown_options_are_named_and_the_token_goes_to_the_vault() -> None:
    message = refused(account_id=ACCOUNT, token="s3cr3t-value", acount_id="x")
    assert "unknown option(s) acount_id, token" in message
    assert "rick creds set fx token" in message
    assert "s3cr3t-value" not in message  # the value of a misplaced token is never echoed


def test_requests_per_second_above_oandas_limit_is_refused() -> None:
    message = refused(account_id=ACCOUNT, requests_per_second=101)
    assert "requests_per_second" in message
    assert "at most 100" in message


def test_rates_up_to_the_limits_are_accepted() -> None:
    opts = options(account_id=ACCOUNT, requests_per_second=100, connections_per_second=0.5)
    assert opts.requests_per_second == 100
    assert opts.connections_per_second == 0.5
    assert options(account_id=ACCOUNT, requests_per_second=Decimal("20")).requests_per_second == 20


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("connections_per_second", 3),
        ("requests_per_second", 0),
        ("requests_per_second", -5),
        ("requests_per_second", True),
        ("requests_per_second", "100"),
        ("requests_per_second", float("inf")),
        ("timeout", 0),
        ("timeout", -1),
        ("timeout", float("nan")),
        ("timeout", "10"),
        ("timeout", False),
        ("rate_limit_retries", -1),
        ("rate_limit_retries", 21),
        ("rate_limit_retries", 1.5),
        ("rate_limit_retries", True),
        ("quote_silence", 0),
        ("quote_silence", True),
        ("event_silence", "20"),
        ("event_silence", -3),
    ],
)
def test_bad_numbers_are_refused_naming_the_key(key: str, value: object) -> None:
    message = refused(account_id=ACCOUNT, **{key: value})
    assert f"{key} must be" in message


def test_numbers_within_bounds_are_kept() -> None:
    opts = options(account_id=ACCOUNT, timeout=2.5, rate_limit_retries=0)
    assert opts.timeout == 2.5
    assert opts.rate_limit_retries == 0
    assert options(account_id=ACCOUNT, rate_limit_retries=20).rate_limit_retries == 20


def test_silence_false_means_no_watchdog() -> None:
    opts = options(account_id=ACCOUNT, quote_silence=False, event_silence=False)
    assert opts.quote_silence is None
    assert opts.event_silence is None
    opts = options(account_id=ACCOUNT, quote_silence=3, event_silence=7.5)
    assert opts.quote_silence == 3
    assert opts.event_silence == 7.5


def test_errors_name_the_broker_when_the_setup_has_no_source() -> None:
    with pytest.raises(ValueError, match=r"^broker 'fx': account_id must be"):
        options(source="")
