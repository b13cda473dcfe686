"""The risk charter in the engine: a denied order never reaches the broker, is on
record with its reason code, and the strategy hears why."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import trio
import trio.testing

from rick_core.config import load_config
from rick_core.engine.risk import ReasonCode, RiskDenied
from rick_core.engine.runtime import Engine
from rick_core.model import OrderStatus
from rick_core.plugins import load_plugins
from rick_core.security.audit import AuditLog, AuditTrail
from rick_core.security.records import EventType
from rick_core.store import Store
from rick_core.strategy import Strategy, StrategySetup

CONFIG = """
[risk]
max_order_quantity = 5000

[risk.instruments.EUR_USD]
max_position = 3000

[brokers.paper]
kind = "paper"
persist = false
instruments = ["EUR_USD"]

[strategies.s]
kind = "momentum"
broker = "paper"
instruments = ["EUR_USD"]
enabled = true
"""


class Orders(Strategy):
    def __init__(self) -> None:
        super().__init__(StrategySetup(name="s", broker="paper", instruments=("EUR_USD",)))
        self.outcomes: list[object] = []

    async def on_start(self) -> None:
        for quantity in (2000, 6000, 2000, 1000):
            try:
                self.outcomes.append(await self.ctx.buy("EUR_USD", quantity))
            except RiskDenied as denied:
                self.outcomes.append(denied)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "rick.toml").write_text(CONFIG, "utf-8")
    return tmp_path


async def test_denied_orders_never_reach_the_broker_and_say_why(
    home: Path, autojump_clock: trio.testing.MockClock
) -> None:
    config = load_config(home / "rick.toml", home=home)
    built = Engine.from_config(
        config, load_plugins(entry_points=()), store=Store.open(home / "x.db")
    )
    assert built.risk is not None and built.risk.rules_active() == 2
    built.store.close()
    strategy = Orders()
    audit_log = AuditLog.open(home / "audit.db")
    with Store.open(home / "rick.db") as store:
        engine = Engine(
            store=store,
            brokers={"paper": built.services["paper"].broker},
            strategies=[(strategy, "paper", ("EUR_USD",))],
            audit=AuditTrail(audit_log),
            risk=built.risk,
        )
        await engine.run(duration=5)
        orders = store.orders()
    filled, too_big, over_position, last = strategy.outcomes
    assert getattr(filled, "status", None) is OrderStatus.FILLED
    assert isinstance(too_big, RiskDenied) and too_big.code is ReasonCode.MAX_ORDER_QUANTITY
    assert isinstance(over_position, RiskDenied) and over_position.code is ReasonCode.MAX_POSITION
    assert "[risk.instruments.EUR_USD]" in str(over_position)
    assert getattr(last, "status", None) is OrderStatus.FILLED  # 3000 in all: at the limit
    # Denied orders are on record, never sent: rejected with the code leading the reason.
    rejected = [o for o in orders if o.status is OrderStatus.REJECTED]
    assert [o.reject_reason.split(":")[0] for o in rejected if o.reject_reason] == [
        "risk max_order_quantity",
        "risk max_position",
    ]
    assert all(o.venue_order_id is None for o in rejected)
    kinds = [r.type for r in audit_log.query()]
    audit_log.close()
    assert kinds.count(EventType.ORDER_REJECTED) == 2
    assert kinds.count(EventType.ORDER_SUBMITTED) == 2  # only what passed the charter


class Rester(Strategy):
    """Leaves a limit order resting, then keeps trying to buy every second."""

    def __init__(self) -> None:
        super().__init__(StrategySetup(name="r", broker="paper", instruments=("EUR_USD",)))
        self.resting: object = None
        self.tries: list[object] = []

    async def on_start(self) -> None:
        quote = self.ctx.last_quote("EUR_USD")
        assert quote is not None
        self.resting = await self.ctx.buy("EUR_USD", 1000, limit=quote.bid - Decimal("0.01"))
        self.ctx.schedule(1.0, "try")

    async def on_timer(self, name: str) -> None:
        try:
            self.tries.append(await self.ctx.buy("EUR_USD", 1000))
        except RiskDenied as denied:
            self.tries.append(denied)


async def test_rick_halt_cancels_open_orders_and_rick_resume_lifts_it(
    home: Path, autojump_clock: trio.testing.MockClock
) -> None:
    from rick_core.components import ComponentSetup
    from rick_core.engine.control import write_switch
    from rick_core.paper.broker import PaperBroker

    strategy = Rester()
    broker = PaperBroker(
        ComponentSetup(
            name="paper", options={"persist": False, "instruments": ["EUR_USD"]}, home=home
        )
    )
    audit_log = AuditLog.open(home / "audit.db")
    with Store.open(home / "rick.db") as store:
        engine = Engine(
            store=store,
            brokers={"paper": broker},
            strategies=[(strategy, "paper", ("EUR_USD",))],
            audit=AuditTrail(audit_log),
            home=home,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run)
            await engine.started.wait()
            await trio.sleep(2.5)
            write_switch(home, halted=True, reason="test", actor="tester")  # `rick halt`
            await trio.sleep(3)
            resting = store.get_order(strategy.resting.client_order_id)  # type: ignore[attr-defined]
            assert resting is not None and resting.status is OrderStatus.CANCELED
            assert await broker.open_orders() == []
            write_switch(home, halted=False, reason="", actor="tester")  # `rick resume`
            await trio.sleep(2)
            engine.request_stop("test")
    kinds = [r.type for r in audit_log.query()]
    audit_log.close()
    outcomes = ["denied" if isinstance(t, RiskDenied) else "filled" for t in strategy.tries]
    # filled before the halt, denied while halted, filled again after the resume
    assert outcomes[0] == "filled" and "denied" in outcomes and outcomes[-1] == "filled"
    denied = next(t for t in strategy.tries if isinstance(t, RiskDenied))
    assert denied.code is ReasonCode.HALTED and "rick resume" in str(denied)
    assert EventType.TRADING_HALTED in kinds and EventType.TRADING_RESUMED in kinds


def test_rick_halt_and_resume_commands_are_audited(home: Path) -> None:
    from click.testing import CliRunner

    from rick_core.cli import _build_cli
    from rick_core.engine.control import read_switch

    env = {"RICK_HOME": str(home)}
    result = CliRunner().invoke(_build_cli(), ["halt", "--reason", "news"], env=env)
    assert result.exit_code == 0, result.output
    switch = read_switch(home)
    assert switch is not None and switch.halted and switch.reason == "news"
    result = CliRunner().invoke(_build_cli(), ["resume"], env=env)
    assert result.exit_code == 0, result.output
    switch = read_switch(home)
    assert switch is not None and not switch.halted
    with AuditLog.open(home / "audit.db") as log:
        records = log.query()
    assert [r.type for r in records] == [EventType.TRADING_HALTED, EventType.TRADING_RESUMED]
    assert records[0].actor.source == "cli" and records[0].details == {"reason": "news"}
