"""The engine the crash test kills: run as ``python tests/crash_child.py HOME
SECONDS [--no-strategy]``.

A strategy trades without pause against a persisting paper broker: market
orders that fill, limit orders that rest, cancels. After every venue answer
the broker waits a little before returning it to rick (and reports its events
late), and says so on stdout (``INFLIGHT <client order id>``), so the test can
kill the process while the venue has an order whose answer rick has not
recorded yet. ``--no-strategy``
runs the engine with no strategy: start-up reconciliation only.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import trio

from rick_core.broker import BrokerEvent
from rick_core.components import ComponentSetup
from rick_core.engine.runtime import Engine
from rick_core.model import Order, OrderRequest, Quote
from rick_core.paper.broker import PaperBroker
from rick_core.store import Store
from rick_core.strategy import Strategy, StrategySetup, TradingHalted

INSTRUMENTS = ("EUR_USD", "GBP_USD")


class SlowAnswers(PaperBroker):
    """Answers a submit 0.2 s after the venue took the order, and reports every
    event 0.05 s late: a kill right after ``INFLIGHT`` always finds an order the
    venue has and rick's store still shows as new."""

    async def place_order(self, request: OrderRequest) -> Order:
        order = await super().place_order(request)
        print(f"INFLIGHT {request.client_order_id}", flush=True)
        await trio.sleep(0.2)
        return order

    @contextlib.asynccontextmanager
    async def stream_events(self) -> AsyncIterator[AsyncIterator[BrokerEvent]]:
        async with super().stream_events() as events:

            async def late() -> AsyncIterator[BrokerEvent]:
                async for event in events:
                    await trio.sleep(0.05)
                    yield event

            yield late()


class Churn(Strategy):
    """Buys and sells without pause; keeps a few limit orders resting and cancels them."""

    count = 0

    async def on_quote(self, quote: Quote) -> None:
        ctx = self.ctx
        self.count += 1
        try:
            if self.count % 5 == 0:
                resting = ctx.open_orders(quote.instrument)
                if len(resting) >= 3:
                    await ctx.cancel(resting[0])
                    return
                below = (quote.bid * Decimal("0.99")).quantize(Decimal("0.00001"))
                await ctx.buy(quote.instrument, 1000, limit=below)
                return
            side = ctx.buy if self.count % 2 else ctx.sell
            await side(quote.instrument, 1000)
        except TradingHalted:
            pass  # the engine is stopping


def main() -> None:
    home = Path(sys.argv[1])
    seconds = float(sys.argv[2])
    broker = SlowAnswers(
        ComponentSetup(
            name="paper",
            options={"persist": True, "seed": 11, "instruments": list(INSTRUMENTS), "speed": 50},
            home=home,
        )
    )
    strategies = []
    if "--no-strategy" not in sys.argv:
        setup = StrategySetup(name="churn", broker="paper", instruments=INSTRUMENTS)
        strategies.append((Churn(setup), "paper", INSTRUMENTS))
    with Store.open(home / "rick.db") as store:
        engine = Engine(store=store, brokers={"paper": broker}, strategies=strategies)
        trio.run(functools.partial(engine.run, duration=seconds))
    print("STOPPED", flush=True)


if __name__ == "__main__":
    main()
