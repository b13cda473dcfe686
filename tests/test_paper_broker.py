"""The paper broker's own behaviour: options, the simulated clock, replay, persistence.
(Every Broker operation is covered by the conformance suite in test_conformance_paper.py.)"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from rick_core.broker import NotFound
from rick_core.components import ComponentSetup
from rick_core.model import AssetClass, OrderRequest, OrderStatus
from rick_core.paper.broker import PaperBroker


def broker(tmp_path: Path, **options: Any) -> PaperBroker:
    return PaperBroker(
        ComponentSetup(name="sim", options=options, home=tmp_path, source="rick.toml [brokers.sim]")
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"intervall": 1}, r"unknown option\(s\) intervall; the paper broker takes seed, interval"),
        ({"interval": 0}, r"interval must be a positive number, got 0"),
        ({"speed": -1}, r"speed must be zero or more"),
        ({"seed": Decimal("1.5")}, r"seed must be a whole number"),
        (
            {"instruments": ["EUR_USD", "DOGE_EUR"]},
            r"instruments: DOGE_EUR not in the simulated universe",
        ),
        ({"leverage": {"fx": 50, "bonds": 2}}, r"leverage.bonds: unknown asset class"),
        ({"currency": "US Dollar"}, r"currency must be a currency code"),
        ({"persist": "yes"}, r"persist must be true or false"),
        ({"balance": -5}, r"paper settings: balance must not be negative, got -5"),
    ],
)
def test_bad_options_name_the_table_and_the_key(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=r"rick.toml \[brokers.sim\]: " + message):
        broker(tmp_path, **options)


def test_options_reach_the_account(tmp_path: Path) -> None:
    b = broker(
        tmp_path,
        currency="eur",
        balance=5000,
        leverage={"fx": 30},
        fees={"crypto": Decimal("0.001")},
        instrument_fees={"BTC_USD": Decimal("0.002")},
        slippage=Decimal("0.0001"),
    )
    s = b.options.settings
    assert s.currency == "EUR" and s.balance == Decimal(5000)
    assert s.leverage[AssetClass.FX] == Decimal(30)
    assert s.fees[AssetClass.CRYPTO] == Decimal("0.001")
    assert s.instrument_fees == {"BTC_USD": Decimal("0.002")}
    assert s.slippage == Decimal("0.0001")


async def test_quotes_follow_the_simulated_clock(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    b = broker(tmp_path, persist=False, instruments=["EUR_USD", "BTC_USD"], interval=0.5)
    await b.connect()
    start = trio.current_time()
    seen = []
    async with b.stream_quotes(["EUR_USD"]) as quotes:
        async for quote in quotes:
            seen.append((trio.current_time() - start, quote))
            if len(seen) == 10:
                break
    await b.close()
    assert {q.instrument for _, q in seen} == {"EUR_USD"}
    # about one quote per interval, in time order, the quote times matching the clock
    assert 4.0 <= seen[-1][0] <= 6.0
    times = [q.time for _, q in seen]
    assert times == sorted(times)
    assert all(abs((q.time - b.now()).total_seconds()) < 6 for _, q in seen)


async def test_replay_drives_the_market(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    recording = tmp_path / "eurusd.jsonl"
    rows = [
        {
            "instrument": "EUR_USD",
            "bid": "1.10000",
            "ask": "1.10010",
            "time": "2026-03-02T10:00:00+00:00",
            "bid_size": "1000000",
            "ask_size": "1000000",
        },
        {
            "instrument": "EUR_USD",
            "bid": "1.10100",
            "ask": "1.10110",
            "time": "2026-03-02T10:00:01+00:00",
            "bid_size": "1000000",
            "ask_size": "1000000",
        },
        {
            "instrument": "EUR_USD",
            "bid": "1.10200",
            "ask": "1.10210",
            "time": "2026-03-02T10:00:02+00:00",
            "bid_size": "1000000",
            "ask_size": "1000000",
        },
    ]
    recording.write_text("\n".join(json.dumps(r) for r in rows) + "\n", "utf-8")
    b = broker(tmp_path, persist=False, replay="eurusd.jsonl")
    await b.connect()
    buy = await b.place_order(OrderRequest(instrument="EUR_USD", side="buy", quantity=1000))
    assert buy.status is OrderStatus.FILLED and buy.average_fill_price == Decimal("1.10010")
    async with b.stream_quotes(["EUR_USD"]) as quotes:
        bids = [q.bid async for q in quotes]
    # the stream ends with the recording
    assert bids[-2:] == [Decimal("1.10100"), Decimal("1.10200")]
    (position,) = await b.positions()
    # long 1000 from 1.10010, marked at the last bid 1.10200: +1.90 USD
    assert position.unrealized_pnl == Decimal("1.90")
    await b.close()


async def test_the_account_survives_a_restart(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    first = broker(tmp_path, instruments=["EUR_USD"], seed=4)
    await first.connect()
    await first.place_order(OrderRequest(instrument="EUR_USD", side="buy", quantity=2000))
    before = await first.account()
    await first.close()
    saved = tmp_path / "paper" / "sim.json"
    assert saved.exists()

    second = broker(tmp_path, instruments=["EUR_USD"], seed=4)
    await second.connect()
    (position,) = await second.positions()
    assert position.quantity == Decimal(2000)
    assert (await second.account()).balance == before.balance
    await second.close()


async def test_a_damaged_saved_account_is_reported_not_guessed(tmp_path: Path) -> None:
    saved = tmp_path / "paper" / "sim.json"
    saved.parent.mkdir()
    saved.write_text("{not json", "utf-8")
    b = broker(tmp_path, instruments=["EUR_USD"])
    with pytest.raises(
        ValueError, match=r"sim.json: the saved paper account cannot be read .*move the file away"
    ):
        await b.connect()


async def test_unknown_instruments_are_not_found(tmp_path: Path) -> None:
    b = broker(tmp_path, persist=False, instruments=["EUR_USD"])
    await b.connect()
    with pytest.raises(NotFound, match="GBP_USD"):
        await b.quote("GBP_USD")
    with pytest.raises(NotFound, match="GBP_USD"):
        async with b.stream_quotes(["GBP_USD"]):
            pass
    await b.close()
