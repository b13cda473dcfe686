"""The risk charter in the engine: a denied order never reaches the broker, is on
record with its reason code, and the strategy hears why."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from rick_core.components import ComponentSetup
from rick_core.config import load_config
from rick_core.engine.risk import (
    Charter,
    Limits,
    ReasonCode,
    RiskDenied,
    TradingHours,
    TradingState,
)
from rick_core.engine.runtime import Engine
from rick_core.model import Account, Order, OrderStatus, utc_now
from rick_core.paper.broker import PaperBroker
from rick_core.plugins import load_plugins
from rick_core.security.audit import AuditLog, AuditTrail
from rick_core.security.records import EventType
from rick_core.store import Store
from rick_core.strategy import Strategy, StrategyContext, StrategySetup

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


# ---------------------------------------------------------------------------
# Every rule of the charter, through a running engine: the strategy's order call
# raises RiskDenied with the rule's code, and the order is on record, rejected
# with that code leading its reason, never sent.

Step = Callable[[StrategyContext], Awaitable[object]]


def buy(instrument: str = "EUR_USD", quantity: int = 1000, **kw: Any) -> Step:
    async def step(ctx: StrategyContext) -> object:
        return await ctx.buy(instrument, quantity, **kw)

    return step


def sell(instrument: str = "EUR_USD", quantity: int = 1000, **kw: Any) -> Step:
    async def step(ctx: StrategyContext) -> object:
        return await ctx.sell(instrument, quantity, **kw)

    return step


def bracket(*, below: str, risk: str, reward: str) -> Step:
    """A limit buy ``below`` the bid (it rests), stop loss ``risk`` under it, take
    profit ``reward`` over it."""

    async def step(ctx: StrategyContext) -> object:
        quote = ctx.last_quote("EUR_USD")
        assert quote is not None
        entry = quote.bid - Decimal(below)
        return await ctx.buy(
            "EUR_USD",
            1000,
            limit=entry,
            stop_loss=entry - Decimal(risk),
            take_profit=entry + Decimal(reward),
        )

    return step


def do(action: Callable[[], object]) -> Step:
    async def step(ctx: StrategyContext) -> object:
        action()
        return None

    return step


def wait(seconds: float) -> Step:
    async def step(ctx: StrategyContext) -> object:
        await trio.sleep(seconds)
        return None

    return step


class Script(Strategy):
    """Runs its steps at start; keeps what each order call returned or raised."""

    def __init__(self, steps: list[Step], instruments: tuple[str, ...]) -> None:
        super().__init__(StrategySetup(name="s", broker="paper", instruments=instruments))
        self.steps = steps
        self.outcomes: list[object] = []

    async def on_start(self) -> None:
        for step in self.steps:
            try:
                outcome = await step(self.ctx)
            except RiskDenied as denied:
                outcome = denied
            if outcome is not None:
                self.outcomes.append(outcome)


def paper_broker(home: Path, cls: type[PaperBroker] = PaperBroker) -> PaperBroker:
    options = {"persist": False, "seed": 7, "instruments": ["EUR_USD", "GBP_USD"]}
    return cls(ComponentSetup(name="paper", options=options, home=home))


async def run_script(
    home: Path,
    charter: Charter,
    steps: list[Step],
    *,
    broker: PaperBroker | None = None,
    instruments: tuple[str, ...] = ("EUR_USD",),
    duration: float = 5,
) -> tuple[list[object], list[Order]]:
    """Run ``steps`` in an engine with ``charter``; the outcomes and the stored orders."""
    strategy = Script(steps, instruments)
    with Store.open(home / "rick.db") as store:
        engine = Engine(
            store=store,
            brokers={"paper": broker or paper_broker(home)},
            strategies=[(strategy, "paper", instruments)],
            risk=charter,
            home=home,
        )
        await engine.run(duration=duration)
        orders = store.orders()
    return strategy.outcomes, orders


def outcome_codes(outcomes: list[object], orders: list[Order]) -> list[ReasonCode | OrderStatus]:
    """Each outcome as the code it was denied with, or the status of the order.

    Checks that every denial is on record: a rejected order with the denial as
    its reason, never sent, nothing filled."""
    denied = [o for o in outcomes if isinstance(o, RiskDenied)]
    rejected = [o for o in orders if o.status is OrderStatus.REJECTED]
    assert [o.reject_reason for o in rejected] == [str(d) for d in denied]
    for order, denial in zip(rejected, denied, strict=True):
        assert str(denial).startswith(f"risk {denial.code.value}: ")
        assert order.venue_order_id is None and order.filled_quantity == 0
    codes: list[ReasonCode | OrderStatus] = []
    for outcome in outcomes:
        if isinstance(outcome, RiskDenied):
            codes.append(outcome.code)
        else:
            assert isinstance(outcome, Order), outcome
            codes.append(outcome.status)
    return codes


FILLED, ACCEPTED = OrderStatus.FILLED, OrderStatus.ACCEPTED


async def test_max_order_notional_denies_through_the_engine(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    charter = Charter(Limits(max_order_notional=Decimal(5000)))
    outcomes, orders = await run_script(
        tmp_path,
        charter,
        [
            buy(quantity=1000),  # about 1165 USD
            buy(quantity=5000),  # about 5825 USD
            buy(quantity=4000, limit=Decimal("1.2")),  # 4800 USD at its limit price
            buy(quantity=4500, limit=Decimal("1.2")),  # 5400 USD at its limit price
        ],
    )
    assert outcome_codes(outcomes, orders) == [
        FILLED,
        ReasonCode.MAX_ORDER_NOTIONAL,
        FILLED,
        ReasonCode.MAX_ORDER_NOTIONAL,
    ]
    assert "max_order_notional 5000 ([risk])" in str(outcomes[1])


async def test_max_open_positions_denies_a_new_instrument_through_the_engine(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    charter = Charter(Limits(max_open_positions=1))
    outcomes, orders = await run_script(
        tmp_path,
        charter,
        [
            buy("EUR_USD"),
            buy("GBP_USD"),  # a second open position
            buy("EUR_USD"),  # adds to the one open: allowed
            sell("EUR_USD", 2000),  # closes it
            buy("GBP_USD"),  # now the only one
        ],
        instruments=("EUR_USD", "GBP_USD"),
    )
    assert outcome_codes(outcomes, orders) == [
        FILLED,
        ReasonCode.MAX_OPEN_POSITIONS,
        FILLED,
        FILLED,
        FILLED,
    ]


async def test_max_orders_per_second_denies_through_the_engine(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    charter = Charter(strategies={"s": Limits(max_orders_per_second=2)})
    outcomes, orders = await run_script(tmp_path, charter, [buy(), buy(), buy()])
    assert outcome_codes(outcomes, orders) == [FILLED, FILLED, ReasonCode.ORDER_RATE]
    assert "max_orders_per_second 2 ([risk.strategies.s])" in str(outcomes[2])


class LosingPaper(PaperBroker):
    """A paper venue whose account reports ``loss`` less equity than it has."""

    loss = Decimal(0)

    async def account(self) -> Account:
        account = await super().account()
        return attrs.evolve(account, equity=account.equity - self.loss)


async def test_daily_loss_limit_moves_to_reducing_through_the_engine(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    broker = paper_broker(tmp_path, LosingPaper)
    assert isinstance(broker, LosingPaper)
    charter = Charter(Limits(daily_loss_limit=Decimal(100)))

    def lose(amount: int) -> Step:
        return do(lambda: setattr(broker, "loss", Decimal(amount)))

    outcomes, orders = await run_script(
        tmp_path,
        charter,
        [
            buy(),  # the day's first look at the account
            lose(500),
            wait(2.5),  # the engine polls the account every second
            buy(),  # adds exposure: the day's loss is past the limit
            sell(quantity=2000),  # past flat: not reducing
            sell(),  # reduces: allowed
            lose(0),
            wait(2.5),
            buy(),  # the P&L recovered, the charter stays reducing
        ],
        broker=broker,
        duration=15,
    )
    assert outcome_codes(outcomes, orders) == [
        FILLED,
        ReasonCode.DAILY_LOSS,
        ReasonCode.DAILY_LOSS,
        FILLED,
        ReasonCode.DAILY_LOSS,
    ]
    assert charter.state is TradingState.REDUCING
    assert "reached daily_loss_limit 100 ([risk])" in charter.reason


async def test_require_stop_loss_denies_through_the_engine(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    charter = Charter(instruments={"EUR_USD": Limits(require_stop_loss=True)})
    outcomes, orders = await run_script(
        tmp_path,
        charter,
        [
            buy(),
            buy(stop_loss=Decimal("1.0")),
            sell(),  # reduces the position: needs no stop loss
        ],
    )
    assert outcome_codes(outcomes, orders) == [ReasonCode.STOP_LOSS_REQUIRED, FILLED, FILLED]
    assert "require_stop_loss is set ([risk.instruments.EUR_USD])" in str(outcomes[0])


async def test_min_reward_to_risk_denies_a_bracket_through_the_engine(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    charter = Charter(Limits(min_reward_to_risk=Decimal(2)))
    outcomes, orders = await run_script(
        tmp_path,
        charter,
        [
            bracket(below="0.005", risk="0.001", reward="0.001"),  # 1 to 1
            bracket(below="0.005", risk="0.001", reward="0.0019"),  # just short of 2
            bracket(below="0.005", risk="0.001", reward="0.002"),  # 2 to 1: at the limit
        ],
    )
    assert outcome_codes(outcomes, orders) == [
        ReasonCode.REWARD_TO_RISK,
        ReasonCode.REWARD_TO_RISK,
        ACCEPTED,  # a limit order under the market rests
    ]
    assert "is below min_reward_to_risk 2 ([risk])" in str(outcomes[0])


async def test_trading_hours_deny_through_the_engine(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Open on one day only, three days from today: closed now whatever the time.
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[(utc_now().weekday() + 3) % 7]
    hours = TradingHours.parse([f"{day} 00:00-24:00"], timezone="UTC")
    charter = Charter(instruments={"EUR_USD": Limits(trading_hours=hours)})
    outcomes, orders = await run_script(
        tmp_path,
        charter,
        [buy("EUR_USD"), buy("GBP_USD")],  # only EUR_USD has trading hours
        instruments=("EUR_USD", "GBP_USD"),
    )
    assert outcome_codes(outcomes, orders) == [ReasonCode.TRADING_HOURS, FILLED]
    assert f"outside trading_hours {day} 00:00-24:00 (UTC) ([risk.instruments.EUR_USD])" in str(
        outcomes[0]
    )


async def test_reduce_only_lets_only_reducing_orders_through_the_engine(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    charter = Charter()
    outcomes, orders = await run_script(
        tmp_path,
        charter,
        [
            buy(quantity=2000),
            do(lambda: charter.reduce("operator: reduce only")),
            buy(),  # adds
            sell(quantity=3000),  # flips to short
            sell(),  # reduces
            do(charter.resume),
            buy(),
        ],
    )
    assert outcome_codes(outcomes, orders) == [
        FILLED,
        ReasonCode.REDUCE_ONLY,
        ReasonCode.REDUCE_ONLY,
        FILLED,
        FILLED,
    ]
    assert "operator: reduce only" in str(outcomes[1])


async def test_a_halted_charter_denies_every_order_through_the_engine(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    charter = Charter()
    outcomes, orders = await run_script(
        tmp_path,
        charter,
        [
            buy(),
            do(lambda: charter.halt("desk closed")),
            buy(),
            sell(),  # even one that reduces
            do(charter.resume),
            sell(),
        ],
    )
    assert outcome_codes(outcomes, orders) == [
        FILLED,
        ReasonCode.HALTED,
        ReasonCode.HALTED,
        FILLED,
    ]
    assert "desk closed" in str(outcomes[1])
