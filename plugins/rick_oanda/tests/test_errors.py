"""http.venue_error: v20 error answers onto rick's broker errors (pure, no server)."""

from __future__ import annotations

import pytest

from rick_core.broker import (
    AuthenticationFailed,
    BrokerError,
    Disconnected,
    NotFound,
    RateLimited,
    TemporarilyUnavailable,
)
from rick_oanda.http import V20Error, venue_error

UNAUTHORIZED = {"errorMessage": "Insufficient authorization to perform request."}

REJECT_BODY = {
    "orderRejectTransaction": {
        "id": "2320",
        "type": "MARKET_ORDER_REJECT",
        "accountID": "101-004-1435156-001",
        "time": "2016-10-24T21:48:18.593753865Z",
        "instrument": "EUR_USD",
        "units": "0.5",
        "timeInForce": "FOK",
        "positionFill": "DEFAULT",
        "reason": "CLIENT_ORDER",
        "rejectReason": "UNITS_PRECISION_EXCEEDED",
    },
    "relatedTransactionIDs": ["2320"],
    "lastTransactionID": "2320",
    "errorCode": "UNITS_PRECISION_EXCEEDED",
    "errorMessage": "The units specified contain more precision than is allowed",
}


@pytest.mark.parametrize("status", [401, 403])
def test_auth_statuses_are_authentication_failed_with_advice(status: int) -> None:
    error = venue_error(status, UNAUTHORIZED, broker="fx", what="account summary")
    assert type(error) is AuthenticationFailed
    assert error.broker == "fx"
    assert not error.retryable
    text = str(error)
    assert text.startswith("fx: account summary: Insufficient authorization")
    assert "rick creds set fx token" in text


def test_not_found_keeps_the_code() -> None:
    body = {"errorCode": "NO_SUCH_ORDER", "errorMessage": "The Order specified does not exist"}
    error = venue_error(404, body, broker="fx", what="order @rk1")
    assert type(error) is NotFound
    assert error.code == "NO_SUCH_ORDER"  # type: ignore[attr-defined]
    assert str(error) == "fx: order @rk1: The Order specified does not exist (NO_SUCH_ORDER)"


def test_too_many_requests_is_rate_limited() -> None:
    error = venue_error(429, {}, broker="fx", what="pricing")
    assert type(error) is RateLimited
    assert error.retryable
    assert "pricing: HTTP 429" in str(error)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_temporarily_unavailable(status: int) -> None:
    error = venue_error(status, {"errorMessage": "oops"}, broker="fx", what="open trades")
    assert type(error) is TemporarilyUnavailable  # not Disconnected: the answer arrived
    assert not isinstance(error, Disconnected)
    assert error.retryable
    assert "open trades: oops" in str(error)


def test_bad_request_is_a_v20_error_keeping_the_venues_words() -> None:
    body = {"errorCode": "INVALID_INSTRUMENT", "errorMessage": "Invalid value for 'instrument'"}
    error = venue_error(400, body, broker="fx", what="pricing")
    assert type(error) is V20Error
    assert isinstance(error, BrokerError)
    assert not error.retryable
    assert error.status == 400
    assert error.code == "INVALID_INSTRUMENT"
    assert error.body == body
    assert str(error) == "fx: pricing: Invalid value for 'instrument' (INVALID_INSTRUMENT)"


def test_a_reject_transactions_reason_is_the_code() -> None:
    body = dict(REJECT_BODY, errorCode="SOMETHING_ELSE")
    error = venue_error(400, body, broker="fx", what="place order")
    assert isinstance(error, V20Error)
    assert error.code == "UNITS_PRECISION_EXCEEDED"
    assert "The units specified contain more precision than is allowed" in str(error)
    assert error.body["orderRejectTransaction"]["id"] == "2320"


def test_the_code_is_not_repeated_when_the_message_already_says_it() -> None:
    body = {"errorCode": "PRICE_INVALID", "errorMessage": "PRICE_INVALID"}
    error = venue_error(400, body, broker="fx", what="replace order")
    assert str(error) == "fx: replace order: PRICE_INVALID"


def test_an_empty_or_blank_body_says_the_status() -> None:
    error = venue_error(400, {}, broker="fx", what="positions")
    assert isinstance(error, V20Error)
    assert error.code is None
    assert error.body == {}
    assert str(error) == "fx: positions: HTTP 400"
    blank = venue_error(405, {"errorMessage": "  "}, broker="fx", what="positions")
    assert isinstance(blank, V20Error)
    assert blank.status == 405
    assert str(blank) == "fx: positions: HTTP 405"


def test_message_is_trimmed_and_a_numeric_code_becomes_text() -> None:
    error = venue_error(400, {"errorCode": 22, "errorMessage": " bad \n"}, broker="fx", what="x")
    assert isinstance(error, V20Error)
    assert error.code == "22"
    assert str(error) == "fx: x: bad (22)"


def test_other_client_errors_are_v20_errors_too() -> None:
    error = venue_error(416, {"errorMessage": "Range not satisfiable"}, broker="fx", what="tx")
    assert isinstance(error, V20Error)
    assert error.status == 416
    assert not isinstance(error, NotFound | AuthenticationFailed | RateLimited)
