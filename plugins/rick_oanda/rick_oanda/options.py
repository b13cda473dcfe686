"""The options of an ``oanda`` broker (``[brokers.<name>]`` with ``kind = "oanda"``).

=========================  ======================================================
``account_id``             the v20 account, as OANDA shows it (``101-004-1234567-001``);
                           required
``environment``            ``"practice"`` (the default: OANDA's demo accounts) or
                           ``"live"`` (real money; orders go out only in rick's
                           canary or live trading mode)
``rest_url``               the REST base URL, instead of the environment's
                           (a proxy, or a test's fake server)
``stream_url``             the streaming base URL, likewise
``timeout``                seconds a REST call may take before it counts as
                           unanswered (default 10)
``requests_per_second``    most REST requests sent in any one second (default and
                           largest: 100, OANDA's documented rate)
``connections_per_second`` most new connections opened in any one second
                           (default and largest: 2)
``rate_limit_retries``     times a request answered 429 is sent again, with
                           backoff, before the call fails with ``RateLimited``
                           (default 4)
``quote_silence``          seconds without a price or heartbeat after which the
                           engine reopens the pricing stream (default 10: OANDA
                           heartbeats every 5 s); false: no watchdog
``event_silence``          the same for the transactions stream (default 20)
=========================  ======================================================

The API token is never an option: store it in rick's vault with
``rick creds set <name> token``. It is read at each connect, so a rotated
token takes effect on the next connection.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

from attrs import frozen

from rick_core.components import ComponentSetup

__all__ = ["ENVIRONMENTS", "Environment", "OandaOptions"]


@frozen
class Environment:
    """One of OANDA's two v20 environments and its documented hosts."""

    name: str
    rest_url: str
    stream_url: str
    real_money: bool


ENVIRONMENTS: Final = {
    "practice": Environment(
        "practice",
        "https://api-fxpractice.oanda.com",
        "https://stream-fxpractice.oanda.com",
        real_money=False,
    ),
    "live": Environment(
        "live",
        "https://api-fxtrade.oanda.com",
        "https://stream-fxtrade.oanda.com",
        real_money=True,
    ),
}

MAX_REQUESTS_PER_SECOND: Final = 100
"""OANDA's recommended most REST requests per second on one connection (its
hard limit, 120 per second per IP address, is answered 429)."""

MAX_CONNECTIONS_PER_SECOND: Final = 2
"""OANDA's documented limit of new connections per second."""

_ACCOUNT_ID: Final = re.compile(r"^[0-9A-Za-z][0-9A-Za-z-]{2,63}$")

_KEYS: Final = (
    "account_id",
    "environment",
    "rest_url",
    "stream_url",
    "timeout",
    "requests_per_second",
    "connections_per_second",
    "rate_limit_retries",
    "quote_silence",
    "event_silence",
)


class OandaOptions:
    """The options of one ``oanda`` broker, checked; errors name the key and the file."""

    def __init__(self, setup: ComponentSetup) -> None:
        self._where = setup.source or f"broker {setup.name!r}"
        raw: dict[str, Any] = dict(setup.options)
        unknown = sorted(set(raw) - set(_KEYS))
        if unknown:
            raise ValueError(
                f"{self._where}: unknown option(s) {', '.join(unknown)}; an oanda broker takes "
                f"{', '.join(_KEYS)} (the token goes in the vault: rick creds set "
                f"{setup.name} token)"
            )
        account_id = raw.get("account_id")
        if account_id is None:
            self._fail(
                "account_id",
                "your v20 account id, as OANDA shows it (101-004-1234567-001)",
                "nothing",
            )
        if not isinstance(account_id, str) or not _ACCOUNT_ID.fullmatch(account_id):
            self._fail("account_id", "a v20 account id such as 101-004-1234567-001", account_id)
        self.account_id: str = account_id
        env_name = raw.get("environment", "practice")
        if not isinstance(env_name, str) or env_name not in ENVIRONMENTS:
            self._fail("environment", '"practice" or "live"', env_name)
        self.environment: Environment = ENVIRONMENTS[env_name]
        self.rest_url = self._url(raw.get("rest_url"), "rest_url", self.environment.rest_url)
        self.stream_url = self._url(
            raw.get("stream_url"), "stream_url", self.environment.stream_url
        )
        self.timeout = self._seconds(raw.get("timeout", 10), "timeout")
        self.requests_per_second = self._count(
            raw.get("requests_per_second", MAX_REQUESTS_PER_SECOND),
            "requests_per_second",
            MAX_REQUESTS_PER_SECOND,
        )
        self.connections_per_second = self._count(
            raw.get("connections_per_second", MAX_CONNECTIONS_PER_SECOND),
            "connections_per_second",
            MAX_CONNECTIONS_PER_SECOND,
        )
        retries = raw.get("rate_limit_retries", 4)
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 20:
            self._fail("rate_limit_retries", "a whole number from 0 to 20", retries)
        self.rate_limit_retries: int = retries
        self.quote_silence = self._silence(raw.get("quote_silence", 10), "quote_silence")
        self.event_silence = self._silence(raw.get("event_silence", 20), "event_silence")

    @property
    def real_money(self) -> bool:
        """Whether orders move real money (the live environment)."""
        return self.environment.real_money

    def _fail(self, key: str, expected: str, value: object) -> NoReturn:
        found = value if isinstance(value, str) and value == "nothing" else repr(value)
        raise ValueError(f"{self._where}: {key} must be {expected}, got {found}")

    def _url(self, value: object, key: str, default: str) -> str:
        if value is None:
            return default
        if not isinstance(value, str):
            self._fail(key, "an http:// or https:// URL", value)
        parts = urlsplit(value)
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.query
            or parts.fragment
        ):
            self._fail(key, "an http:// or https:// URL with no query or fragment", value)
        return value.rstrip("/")

    def _number(self, value: object, key: str, expected: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            self._fail(key, expected, value)
        number = float(value)
        if not math.isfinite(number) or number <= 0:
            self._fail(key, expected, value)
        return number

    def _seconds(self, value: object, key: str) -> float:
        return self._number(value, key, "a positive number of seconds")

    def _count(self, value: object, key: str, largest: int) -> float:
        number = self._number(value, key, f"a positive number up to {largest}")
        if number > largest:
            self._fail(key, f"at most {largest} (OANDA's documented limit; above it, 429s)", value)
        return number

    def _silence(self, value: object, key: str) -> float | None:
        if value is False:
            return None
        return self._number(value, key, "a positive number of seconds, or false for none")

    def describe(self) -> Mapping[str, object]:
        """What the log may show of these options (nothing secret is an option)."""
        return {
            "account_id": self.account_id,
            "environment": self.environment.name,
            "rest_url": self.rest_url,
            "stream_url": self.stream_url,
        }
