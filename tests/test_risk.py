from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rick_core.config import ConfigError
from rick_core.engine.risk import (
    Charter,
    Limits,
    ReasonCode,
    RiskContext,
    RiskDenied,
    TradingHours,
    TradingState,
    parse_risk,
)
from rick_core.model import OrderRequest
from rick_core.strategy import TradingHalted

D = Decimal
# A Wednesday, 12:00 UTC.
NOON = datetime(2024, 6, 12, 12, 0, tzinfo=UTC)


def ctx(
    side: str = "buy",
    quantity: Any = 1000,
    *,
    instrument: str = "EUR_USD",
    strategy: str = "s1",
    broker: str = "paper",
    position: Any = 0,
    open_positions: int = 0,
    daily_pnl: Any = 0,
    price: Any = "1.10",
    now: datetime = NOON,
    rate: Any = 1,
    **request: Any,
) -> RiskContext:
    return RiskContext(
        request=OrderRequest(instrument=instrument, side=side, quantity=quantity, **request),
        strategy=strategy,
        broker=broker,
        reference_price=D(price),
        position=D(position),
        open_positions=open_positions,
        daily_pnl=D(daily_pnl),
        rate_to_account=D(rate),
        now=now,
    )


def denied(charter: Charter, context: RiskContext, code: ReasonCode) -> str:
    with pytest.raises(RiskDenied) as info:
        charter.check(context)
    assert info.value.code is code, str(info.value)
    return str(info.value)


def test_risk_denied_is_trading_halted() -> None:
    assert issubclass(RiskDenied, TradingHalted)


def test_max_order_quantity_boundary_and_message() -> None:
    charter = Charter(instruments={"EUR_USD": Limits(max_order_quantity=D(1000))})
    charter.check(ctx(quantity=1000))
    message = denied(charter, ctx(quantity=5000), ReasonCode.MAX_ORDER_QUANTITY)
    assert "order quantity 5000 exceeds max_order_quantity 1000 ([risk.instruments.EUR_USD])" in (
        message
    )
    # applies to a closing order too (fat finger)
    denied(charter, ctx("sell", 5000, position=5000), ReasonCode.MAX_ORDER_QUANTITY)


def test_max_order_notional_uses_entry_or_reference_and_rate() -> None:
    charter = Charter(Limits(max_order_notional=D(1100)))
    charter.check(ctx(quantity=1000, price="1.10"))  # 1100 == limit
    message = denied(charter, ctx(quantity=1000, price="1.11"), ReasonCode.MAX_ORDER_NOTIONAL)
    assert "max_order_notional 1100 ([risk])" in message
    charter.check(ctx(quantity=1000, type="limit", limit_price="1.05", price="2"))
    denied(charter, ctx(quantity=1000, rate="1.5"), ReasonCode.MAX_ORDER_NOTIONAL)


def test_market_if_touched_orders_are_judged_at_their_touch_price() -> None:
    # stop_price is a market-if-touched order's touch price: its entry, as a stop's is
    charter = Charter(Limits(max_order_notional=D(1100), min_reward_to_risk=D(2)))
    mit = {"type": "market_if_touched"}
    charter.check(ctx(quantity=1000, stop_price="1.05", price="2", **mit))  # 1050 <= 1100
    message = denied(
        charter,
        ctx(quantity=1000, stop_price="1.11", price="1", **mit),
        ReasonCode.MAX_ORDER_NOTIONAL,
    )
    assert "order notional 1110" in message
    # reward to risk from the touch price 1.00, not the reference 1.10: 0.02 / 0.01
    charter.check(ctx(stop_price="1.00", stop_loss="0.99", take_profit="1.02", price="1.10", **mit))
    denied(
        charter,
        ctx("sell", stop_price="1.10", stop_loss="1.11", take_profit="1.09", price="1", **mit),
        ReasonCode.REWARD_TO_RISK,
    )


def test_max_position_absolute_after_order() -> None:
    charter = Charter(Limits(max_position=D(2000)))
    charter.check(ctx(quantity=1000, position=1000))  # 2000 == limit
    denied(charter, ctx(quantity=1001, position=1000), ReasonCode.MAX_POSITION)
    denied(charter, ctx("sell", 1500, position=-1000), ReasonCode.MAX_POSITION)
    # a flip from +1000 to -2500 is over; to -2000 is not
    denied(charter, ctx("sell", 3500, position=1000), ReasonCode.MAX_POSITION)
    charter.check(ctx("sell", 3000, position=1000))
    # reducing an over-limit position (the limit was lowered) is allowed
    charter.check(ctx("sell", 1000, position=5000))


def test_max_open_positions_counts_the_one_opened() -> None:
    charter = Charter(brokers={"paper": Limits(max_open_positions=3)})
    charter.check(ctx(open_positions=2))  # becomes the 3rd
    message = denied(charter, ctx(open_positions=3), ReasonCode.MAX_OPEN_POSITIONS)
    assert "[risk.brokers.paper]" in message
    charter.check(ctx(open_positions=3, position=500))  # adds to an open one
    charter.check(ctx(open_positions=3, broker="other"))  # other broker: no limit


def test_require_stop_loss_for_new_or_increased_positions() -> None:
    charter = Charter(strategies={"s1": Limits(require_stop_loss=True)})
    message = denied(charter, ctx(), ReasonCode.STOP_LOSS_REQUIRED)
    assert "[risk.strategies.s1]" in message
    charter.check(ctx(stop_loss="1.09"))
    denied(charter, ctx(position=1000), ReasonCode.STOP_LOSS_REQUIRED)
    charter.check(ctx("sell", 1000, position=1000))  # closing needs none
    charter.check(ctx(strategy="s2"))


def test_reward_to_risk() -> None:
    charter = Charter(Limits(min_reward_to_risk=D(2)))
    # entry = reference 1.10, risk 0.01, reward 0.02: exactly 2
    charter.check(ctx(stop_loss="1.09", take_profit="1.12"))
    message = denied(charter, ctx(stop_loss="1.09", take_profit="1.115"), ReasonCode.REWARD_TO_RISK)
    assert "min_reward_to_risk 2 ([risk])" in message
    assert "1.50" in message
    # entry is the limit price when there is one
    charter.check(
        ctx(type="limit", limit_price="1.00", stop_loss="0.99", take_profit="1.02", price="1.10")
    )
    denied(
        charter,
        ctx("sell", stop_loss="1.11", take_profit="1.09", price="1.10"),
        ReasonCode.REWARD_TO_RISK,
    )
    charter.check(ctx(stop_loss="1.09"))  # no take profit: nothing to compare


def test_halted_denies_everything_and_resume() -> None:
    charter = Charter()
    charter.halt("operator")
    assert charter.state is TradingState.HALTED
    message = denied(charter, ctx("sell", 1000, position=1000), ReasonCode.HALTED)
    assert "operator" in message
    charter.resume()
    assert charter.state is TradingState.ACTIVE
    charter.check(ctx())


def test_reducing_allows_only_reducing_orders_and_denies_flips() -> None:
    charter = Charter()
    charter.reduce("end of day")
    assert charter.state is TradingState.REDUCING
    assert charter.reason == "end of day"
    charter.check(ctx("sell", 1000, position=1000))  # close
    charter.check(ctx("sell", 400, position=1000))  # partial
    charter.check(ctx("buy", 1000, position=-1000))  # cover a short
    assert "end of day" in denied(charter, ctx(), ReasonCode.REDUCE_ONLY)
    denied(charter, ctx("buy", 1, position=1000), ReasonCode.REDUCE_ONLY)
    denied(charter, ctx("sell", 1001, position=1000), ReasonCode.REDUCE_ONLY)  # flip


def test_daily_loss_moves_to_reducing() -> None:
    charter = Charter(Limits(daily_loss_limit=D(500)))
    charter.check(ctx(daily_pnl="-499.99"))
    charter.check(ctx("sell", 1000, position=1000, daily_pnl=-500))  # reducing: allowed
    assert charter.state is TradingState.ACTIVE
    message = denied(charter, ctx(daily_pnl=-500), ReasonCode.DAILY_LOSS)
    assert "daily_loss_limit 500 ([risk])" in message
    assert charter.state is TradingState.REDUCING
    assert "-500" in charter.reason
    # stays reducing when the P&L recovers, until resumed
    denied(charter, ctx(daily_pnl=100), ReasonCode.DAILY_LOSS)
    charter.check(ctx("sell", 1000, position=1000, daily_pnl=100))
    charter.resume()
    charter.check(ctx(daily_pnl=100))


def test_rate_limit_per_broker_strategy_window() -> None:
    charter = Charter(strategies={"s1": Limits(max_orders_per_second=3)})
    for i in range(3):
        charter.check(ctx(now=NOON + timedelta(milliseconds=100 * i)))
    message = denied(charter, ctx(now=NOON + timedelta(milliseconds=999)), ReasonCode.ORDER_RATE)
    assert "max_orders_per_second 3 ([risk.strategies.s1])" in message
    charter.check(ctx(strategy="s2", now=NOON + timedelta(milliseconds=999)))  # other window
    charter.check(ctx(broker="b2", now=NOON + timedelta(milliseconds=999)))
    # the first order leaves the window exactly one second later
    charter.check(ctx(now=NOON + timedelta(seconds=1)))
    denied(charter, ctx(now=NOON + timedelta(seconds=1)), ReasonCode.ORDER_RATE)
    # a denied order is not counted
    charter.check(ctx(now=NOON + timedelta(seconds=1, milliseconds=100)))


def test_rate_limit_global_window_over_all_strategies() -> None:
    charter = Charter(Limits(max_orders_per_second=2))
    charter.check(ctx(strategy="a"))
    charter.check(ctx(strategy="b"))
    message = denied(charter, ctx(strategy="c"), ReasonCode.ORDER_RATE)
    assert "over all strategies" in message
    assert "([risk])" in message


def test_trading_hours_in_named_timezone() -> None:
    hours = TradingHours.parse(["mon-fri 08:00-17:00"], timezone="America/New_York")
    charter = Charter(instruments={"EUR_USD": Limits(trading_hours=hours)})
    ny_open = datetime(2024, 6, 12, 12, 0, tzinfo=UTC)  # 08:00 EDT
    charter.check(ctx(now=ny_open))
    message = denied(charter, ctx(now=ny_open - timedelta(minutes=1)), ReasonCode.TRADING_HOURS)
    assert "[risk.instruments.EUR_USD]" in message
    assert "America/New_York" in message
    charter.check(ctx(now=ny_open + timedelta(hours=8, minutes=59, seconds=59)))  # 16:59:59
    denied(charter, ctx(now=ny_open + timedelta(hours=9)), ReasonCode.TRADING_HOURS)  # 17:00
    saturday = datetime(2024, 6, 15, 15, 0, tzinfo=UTC)  # 11:00 EDT Saturday
    denied(charter, ctx(now=saturday), ReasonCode.TRADING_HOURS)
    charter.check(ctx("sell", 1000, position=1000, now=saturday))  # reducing: allowed
    denied(charter, ctx("sell", 2000, position=1000, now=saturday), ReasonCode.TRADING_HOURS)
    # winter: 08:00 EST is 13:00 UTC
    denied(charter, ctx(now=datetime(2024, 1, 10, 12, 30, tzinfo=UTC)), ReasonCode.TRADING_HOURS)
    charter.check(ctx(now=datetime(2024, 1, 10, 13, 0, tzinfo=UTC)))


def test_trading_hours_parse_errors() -> None:
    with pytest.raises(ValueError, match="past midnight"):
        TradingHours.parse(["mon 22:00-02:00"])
    with pytest.raises(ValueError, match="not a weekday"):
        TradingHours.parse(["mun-fri 08:00-17:00"])
    with pytest.raises(ValueError, match="unknown timezone"):
        TradingHours.parse(["mon 08:00-17:00"], timezone="Mars/Olympus")
    hours = TradingHours.parse(["mon,wed 09:30-16:00", "sun 00:00-24:00"])
    assert hours.allows(datetime(2024, 6, 16, 23, 59, tzinfo=UTC))
    assert not hours.allows(datetime(2024, 6, 11, 10, 0, tzinfo=UTC))  # tuesday


def test_strictest_of_names_the_table() -> None:
    charter = Charter(
        Limits(max_order_quantity=D(10_000), max_position=D(3000)),
        brokers={"paper": Limits(max_order_quantity=D(5000))},
        instruments={"EUR_USD": Limits(max_order_quantity=D(2000))},
        strategies={"s1": Limits(max_order_quantity=D(3000), max_position=D(50_000))},
    )
    message = denied(charter, ctx(quantity=2500), ReasonCode.MAX_ORDER_QUANTITY)
    assert "max_order_quantity 2000 ([risk.instruments.EUR_USD])" in message
    message = denied(
        charter, ctx(instrument="GBP_USD", quantity=2500, position=1000), ReasonCode.MAX_POSITION
    )
    assert "max_position 3000 ([risk])" in message  # the looser strategy value loses
    message = denied(
        charter,
        ctx(instrument="GBP_USD", quantity=3500, position=-3000),
        ReasonCode.MAX_ORDER_QUANTITY,
    )
    assert "([risk.strategies.s1])" in message
    message = denied(
        charter,
        ctx(instrument="GBP_USD", quantity=6000, strategy="x", position=-6000),
        ReasonCode.MAX_ORDER_QUANTITY,
    )
    assert "([risk.brokers.paper])" in message
    assert charter.rules_active() == 6


def test_limits_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="max_position"):
        Limits(max_position=D(0))
    with pytest.raises(ValueError, match="float"):
        Limits(max_position=1.5)  # type: ignore[arg-type]
    assert Limits(max_order_quantity=10).max_order_quantity == D(10)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# parse_risk


def test_parse_risk_builds_the_charter() -> None:
    charter = parse_risk(
        {
            "max_order_quantity": 100_000,
            "daily_loss_limit": D("250.5"),
            "require_stop_loss": True,
            "trading_hours": {"timezone": "Europe/London", "windows": ["mon-fri 08:00-17:00"]},
            "brokers": {"paper": {"max_open_positions": 5}},
            "instruments": {"EUR_USD": {"max_order_quantity": 1000}},
            "strategies": {"s1": {"max_orders_per_second": 10, "min_reward_to_risk": D("1.5")}},
        },
        "rick.toml",
    )
    assert charter.rules_active() == 8
    message = denied(charter, ctx(quantity=5000, stop_loss="1.0"), ReasonCode.MAX_ORDER_QUANTITY)
    assert "order quantity 5000 exceeds max_order_quantity 1000 ([risk.instruments.EUR_USD])" in (
        message
    )


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"max_order_qty": 1}, "risk.max_order_qty", "did you mean 'max_order_quantity'?"),
        (
            {"instruments": {"EUR_USD": {"max_order_quantity": "lots"}}},
            "risk.instruments.EUR_USD.max_order_quantity",
            "expected a positive number; found 'lots' (string)",
        ),
        ({"max_position": -1}, "risk.max_position", "expected a positive number"),
        ({"max_open_positions": D("2.5")}, "risk.max_open_positions", "a positive integer"),
        ({"max_open_positions": True}, "risk.max_open_positions", "found true (boolean)"),
        ({"require_stop_loss": "yes"}, "risk.require_stop_loss", "a boolean"),
        (
            {"strategies": {"s1": {"max_postion": 1}}},
            "risk.strategies.s1.max_postion",
            "did you mean 'max_position'?",
        ),
        ({"instruments": {"eur/usd": {}}}, "risk.instruments.eur/usd", "canonical"),
        ({"brokers": {"paper": 3}}, "risk.brokers.paper", "a table"),
        (
            {"trading_hours": {"timezone": "Europe/London", "windows": ["weekdays"]}},
            "risk.trading_hours.windows[0]",
            "mon-fri 08:00-17:00",
        ),
        (
            {"trading_hours": {"timezone": "Nowhere", "windows": ["mon 08:00-09:00"]}},
            "risk.trading_hours.timezone",
            "unknown timezone",
        ),
        ({"trading_hours": ["mon 08:00-09:00"]}, "risk.trading_hours", "a table"),
    ],
)
def test_parse_risk_errors_name_the_key(data: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_risk(data, "/home/x/.rick/rick.toml")
    message = str(info.value)
    assert message.startswith(f"/home/x/.rick/rick.toml: key {key!r}"), message
    assert fragment in message, message
    assert isinstance(info.value, ValueError)


def test_parse_risk_unknown_key_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="max_order_notional, max_position"):
        parse_risk({"bogus": 1}, "rick.toml")


# ---------------------------------------------------------------------------
# property: an allowed order never breaks a quantity or position limit

quantities = st.decimals(min_value=D("0.01"), max_value=D(10_000), places=2)


@settings(max_examples=300, deadline=None)
@given(
    global_qty=st.none() | quantities,
    inst_qty=st.none() | quantities,
    strat_pos=st.none() | quantities,
    global_pos=st.none() | quantities,
    side=st.sampled_from(["buy", "sell"]),
    quantity=quantities,
    position=st.decimals(min_value=D(-20_000), max_value=D(20_000), places=2),
    reducing_state=st.booleans(),
)
def test_allowed_orders_respect_quantity_and_position_limits(
    global_qty: Decimal | None,
    inst_qty: Decimal | None,
    strat_pos: Decimal | None,
    global_pos: Decimal | None,
    side: str,
    quantity: Decimal,
    position: Decimal,
    reducing_state: bool,
) -> None:
    charter = Charter(
        Limits(max_order_quantity=global_qty, max_position=global_pos),
        instruments={"EUR_USD": Limits(max_order_quantity=inst_qty)},
        strategies={"s1": Limits(max_position=strat_pos)},
    )
    if reducing_state:
        charter.reduce("test")
    context = ctx(side, quantity, position=position)
    try:
        charter.check(context)
    except RiskDenied:
        return
    for limit in (global_qty, inst_qty):
        assert limit is None or quantity <= limit
    after = position + quantity if side == "buy" else position - quantity
    reduced = abs(after) <= abs(position) and (after == 0 or (after > 0) == (position > 0))
    for limit in (strat_pos, global_pos):
        assert limit is None or abs(after) <= limit or reduced
    if reducing_state:
        assert reduced
