"""The broker contract itself: the error taxonomy the engine acts on, and the
abstract interface that refuses incomplete implementations."""

from __future__ import annotations

import pytest

from rick_core.broker import (
    KEEP,
    AuthenticationFailed,
    Broker,
    BrokerError,
    Capabilities,
    Disconnected,
    NotFound,
    OrderRejected,
    RateLimited,
    TemporarilyUnavailable,
    Unsupported,
)
from rick_core.model import OrderRequest, OrderType, TimeInForce


@pytest.mark.parametrize(
    ("error", "retryable", "message"),
    [
        (
            OrderRejected("INSUFFICIENT_MARGIN", broker="oanda", code="422"),
            False,
            "oanda: order rejected: INSUFFICIENT_MARGIN (422)",
        ),
        (
            RateLimited(broker="coinbase", retry_after=1.5),
            True,
            "coinbase: rate limited (retry after 1.5s)",
        ),
        (AuthenticationFailed("token refused", broker="oanda"), False, "oanda: token refused"),
        (NotFound("order rk1", broker="ibkr"), False, "ibkr: order rk1"),
        (TemporarilyUnavailable("HTTP 503"), True, "HTTP 503"),
        (Disconnected("stream closed", broker="oanda"), True, "oanda: stream closed"),
        (Unsupported("trailing stops", broker="coinbase"), False, "coinbase: trailing stops"),
    ],
)
def test_error_taxonomy(error: BrokerError, retryable: bool, message: str) -> None:
    assert isinstance(error, BrokerError)
    assert error.retryable is retryable
    assert str(error) == message


def test_rejections_keep_the_venue_reason_and_rate_limits_the_delay() -> None:
    rejected = OrderRejected("MARKET_HALTED", code="MARKET_HALTED")
    assert (rejected.reason, rejected.code) == ("MARKET_HALTED", "MARKET_HALTED")
    assert RateLimited(retry_after=2.0).retry_after == 2.0
    assert isinstance(Disconnected("x"), TemporarilyUnavailable)


def test_an_incomplete_broker_cannot_be_instantiated() -> None:
    class HalfBroker(Broker):
        async def connect(self) -> None:
            return None

    with pytest.raises(TypeError, match="abstract"):
        HalfBroker()  # type: ignore[abstract]


def test_fills_since_is_part_of_the_contract() -> None:
    """A broker must answer fills(since): the engine catches up on missed fills with it."""
    assert "fills" in Broker.__abstractmethods__
    implemented = {
        name: _async_noop for name in Broker.__abstractmethods__ if name not in ("fills",)
    }
    NoFills = type("NoFills", (Broker,), implemented)
    with pytest.raises(TypeError, match=r"abstract method '?fills"):
        NoFills()
    Complete = type("Complete", (Broker,), {**implemented, "fills": _async_noop})
    assert isinstance(Complete(), Broker)


async def _async_noop(*args: object, **kwargs: object) -> None:
    return None


def test_capabilities_default_to_claiming_the_least() -> None:
    caps = Capabilities()
    assert caps.order_types == frozenset({OrderType.MARKET})
    assert caps.time_in_force == frozenset({TimeInForce.GTC, TimeInForce.IOC})
    assert not (caps.attached_stop_loss or caps.client_order_ids or caps.streaming_quotes)
    assert Capabilities(order_types=["limit", "market"]).order_types == frozenset(
        {OrderType.LIMIT, OrderType.MARKET}
    )
    with pytest.raises(ValueError, match="unknown order type 'trailing'"):
        Capabilities(order_types=["trailing"])
    assert repr(KEEP) == "KEEP" and type(KEEP)() is KEEP


@pytest.mark.parametrize(
    ("request_fields", "reason"),
    [
        ({}, None),
        ({"type": "limit", "limit_price": "1.1"}, "limit orders are not supported"),
        (
            {
                "type": "limit",
                "limit_price": "1.1",
                "time_in_force": "gtd",
                "expire_time": "2030-01-01T00:00:00+00:00",
            },
            "limit orders are not supported",
        ),
        ({"stop_loss": "1.0"}, "an attached stop loss is not supported"),
        ({"take_profit": "2.0"}, "an attached take profit is not supported"),
        ({"quantity": "0.5"}, "fractional quantity 0.5 is not supported"),
        ({"time_in_force": "fok"}, "time in force fok is not supported"),
        (
            {"type": "stop_limit", "stop_price": "1.2", "limit_price": "1.21"},
            "stop_limit orders are not supported",
        ),
        ({"type": "trailing_stop", "trail_percent": "1"}, "trailing_stop orders are not supported"),
    ],
)
def test_capabilities_say_why_a_request_is_not_native(
    request_fields: dict[str, object], reason: str | None
) -> None:
    request = OrderRequest(
        **{"instrument": "EUR_USD", "side": "buy", "quantity": 10, **request_fields}
    )  # type: ignore[arg-type]
    assert Capabilities().supports(request) == reason
    everything = Capabilities(
        order_types=OrderType,
        time_in_force=TimeInForce,
        attached_stop_loss=True,
        attached_take_profit=True,
        fractional_quantity=True,
    )
    assert everything.supports(request) is None
