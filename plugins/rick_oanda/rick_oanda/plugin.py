"""The entry point of rick-oanda: registers the ``oanda`` broker kind.

The broker's module (and httpx) is imported only when a broker is built, so
listing plugins stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rick_core.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    from rick_core.broker import Broker, BrokerFactory
    from rick_core.components import ComponentSetup


def oanda(setup: ComponentSetup) -> Broker:
    """Build an OANDA v20 broker (options: :mod:`rick_oanda.options`)."""
    from rick_oanda.broker import OandaBroker

    return OandaBroker(setup)


@hookimpl
def register_brokers(register: Register[BrokerFactory]) -> None:
    register("oanda", oanda, description="OANDA v20: FX and CFDs (practice and live accounts)")
