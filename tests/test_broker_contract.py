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
from rick_core.model import OrderType, TimeInForce


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


def test_capabilities_default_to_the_conservative_choice() -> None:
    caps = Capabilities()
    assert caps.order_types == frozenset(OrderType)
    assert TimeInForce.GTC in caps.time_in_force and TimeInForce.GTD not in caps.time_in_force
    assert not (caps.attached_stop_loss or caps.client_order_ids or caps.modify_position_protection)
    assert Capabilities(order_types=[OrderType.MARKET]).order_types == frozenset({OrderType.MARKET})
    assert repr(KEEP) == "KEEP" and type(KEEP)() is KEEP
