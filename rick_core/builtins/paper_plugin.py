"""Built-in plugin: the ``paper`` broker and the ``momentum`` example strategy.

Both are registered through the same hooks as any third-party plugin, and both
import their implementation only when first built, so loading plugins stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rick_core.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    from rick_core.broker import Broker, BrokerFactory
    from rick_core.components import ComponentSetup
    from rick_core.strategy import Strategy, StrategyFactory, StrategySetup


def paper(setup: ComponentSetup) -> Broker:
    """Build the paper broker (see :mod:`rick_core.paper.broker` for its options)."""
    from rick_core.paper.broker import PaperBroker

    return PaperBroker(setup)


def momentum(setup: StrategySetup) -> Strategy:
    """Build the momentum example strategy (see :mod:`rick_core.builtins.momentum`)."""
    from rick_core.builtins.momentum import Momentum

    return Momentum(setup)


@hookimpl
def register_brokers(register: Register[BrokerFactory]) -> None:
    register("paper", paper, description="simulated market and account (no venue needed)")


@hookimpl
def register_strategies(register: Register[StrategyFactory]) -> None:
    register(
        "momentum",
        momentum,
        description="example: momentum entries, trailing stop, lets winners run",
    )
