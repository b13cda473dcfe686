"""rick's broker conformance suite against OandaBroker talking to the fake v20
server over loopback (real httpx, real sockets)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from conftest import BAD_TOKEN, TOKEN, MakeBroker

from rick_core.testing import BrokerConformance, BrokerTarget


@pytest.fixture
def rick_broker_target(make_broker: MakeBroker) -> BrokerTarget:
    return BrokerTarget(
        make_broker=make_broker,
        make_unauthenticated_broker=lambda: make_broker(token=BAD_TOKEN),
        instrument="EUR_USD",
        quantity=Decimal(100),
        # The fake lists EUR_USD with maximumOrderUnits 100,000,000: more is
        # refused with UNITS_LIMIT_EXCEEDED (a 400 with a reject transaction).
        rejected_quantity=Decimal(200_000_000),
        secrets=[TOKEN, BAD_TOKEN],
        timeout=5,
    )


class TestOandaConformance(BrokerConformance):
    pass
