"""The paper broker's own behaviour: options, the simulated clock, replay, persistence.
(Every Broker operation is covered by the conformance suite in test_conformance_paper.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from rick_core.broker import NotFound, TemporarilyUnavailable, Unsupported
from rick_core.components import ComponentSetup
from rick_core.model import AssetClass, OrderRequest, OrderStatus, OrderType, Side, TimeInForce
from rick_core.paper.account import PaperAccount
from rick_core.paper.broker import PaperBroker, PaperOptions
from rick_core.paper.journal import PaperFiles


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
        ({"order_types": "market"}, r"order_types must be a list of names among 'market', "),
        ({"order_types": []}, r"order_types must name at least one of 'market', 'limit'"),
        (
            {"order_types": ["market", "iceberg"]},
            r"order_types: unknown name 'iceberg'; the paper broker takes 'market', 'limit', "
            r"'stop', 'stop_limit', 'trailing_stop', 'market_if_touched'",
        ),
        ({"time_in_force": ["gtc", "gtx"]}, r"time_in_force: unknown name 'gtx'"),
        ({"attached_protection": "no"}, r"attached_protection must be true or false"),
        ({"position_protection": 0}, r"position_protection must be true or false"),
        ({"fractional_quantity": None}, r"fractional_quantity must be true or false"),
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


# ---------------------------------------------------------------------------
# capabilities: everything the paper venue does, or what the options leave of it


def test_the_paper_broker_claims_every_order_type_unless_narrowed(tmp_path: Path) -> None:
    native = broker(tmp_path).capabilities
    assert native.order_types == frozenset(OrderType)
    assert native.time_in_force == frozenset(TimeInForce)
    assert native.attached_stop_loss and native.attached_take_profit
    assert native.modify_order_protection and native.modify_position_protection
    narrowed = broker(
        tmp_path,
        order_types=["market", "LIMIT"],
        time_in_force=["gtc", "ioc"],
        attached_protection=False,
        position_protection=False,
        fractional_quantity=False,
    ).capabilities
    assert narrowed.order_types == frozenset({OrderType.MARKET, OrderType.LIMIT})
    assert narrowed.time_in_force == frozenset({TimeInForce.GTC, TimeInForce.IOC})
    assert not (narrowed.attached_stop_loss or narrowed.attached_take_profit)
    assert not (narrowed.modify_order_protection or narrowed.modify_position_protection)
    assert not narrowed.fractional_quantity
    # what is not narrowed stays
    assert narrowed.client_order_ids and narrowed.streaming_events and narrowed.short_selling
    assert PaperBroker.capabilities == native  # the class keeps the native claims


async def test_a_narrowed_broker_refuses_what_it_does_not_claim(tmp_path: Path) -> None:
    b = broker(
        tmp_path,
        persist=False,
        speed=0,
        instruments=["EUR_USD"],
        order_types=["market", "limit"],
        time_in_force=["gtc", "ioc"],
        attached_protection=False,
        position_protection=False,
        fractional_quantity=False,
    )
    await b.connect()
    bid = (await b.quote("EUR_USD")).bid
    below, above = bid - Decimal("0.01"), bid + Decimal("0.01")
    refused = {
        "stop orders": dict(type="stop", stop_price=above),
        "stop_limit orders": dict(type="stop_limit", stop_price=above, limit_price=above),
        "trailing_stop orders": dict(type="trailing_stop", trail_percent=Decimal(1)),
        "market_if_touched orders": dict(type="market_if_touched", stop_price=below),
        "time in force fok": dict(time_in_force="fok"),
        "attached stop loss": dict(stop_loss=below),
        "attached take profit": dict(take_profit=above),
        "fractional quantity": dict(quantity=Decimal("1000.5")),
    }
    for reason, fields in refused.items():
        request = OrderRequest(
            **{"instrument": "EUR_USD", "side": "buy", "quantity": 1000, **fields}
        )
        with pytest.raises(Unsupported, match=reason):
            await b.place_order(request)
    assert await b.open_orders() == [] and await b.positions() == []
    assert await b.fills(EPOCH) == []
    resting = await b.place_order(
        OrderRequest(
            instrument="EUR_USD", side="buy", quantity=1000, type="limit", limit_price=below
        )
    )
    with pytest.raises(Unsupported, match="changing an order's protection is not supported"):
        await b.replace_order_protection(resting, stop_loss=below - Decimal("0.01"))
    bought = await b.place_order(OrderRequest(instrument="EUR_USD", side="buy", quantity=1000))
    assert bought.status is OrderStatus.FILLED
    with pytest.raises(Unsupported, match="a position's stop loss / take profit is not supported"):
        await b.replace_position_protection("EUR_USD", stop_loss=below)
    (position,) = await b.positions()
    assert position.stop_loss is None
    await b.close()


async def test_order_types_can_name_market_if_touched(tmp_path: Path) -> None:
    b = broker(
        tmp_path,
        persist=False,
        speed=0,
        instruments=["EUR_USD"],
        order_types=["market", "Market_If_Touched"],
    )
    assert b.capabilities.order_types == frozenset({OrderType.MARKET, OrderType.MARKET_IF_TOUCHED})
    await b.connect()
    quote = await b.quote("EUR_USD")
    with pytest.raises(Unsupported, match="stop orders are not supported"):
        await b.place_order(
            OrderRequest(
                instrument="EUR_USD",
                side="buy",
                quantity=1000,
                type="stop",
                stop_price=quote.ask + Decimal("0.05000"),
            )
        )
    # a buy rests below the market, a sell above it: both wait to be touched
    dip = OrderRequest(
        instrument="EUR_USD",
        side="buy",
        quantity=1000,
        type="market_if_touched",
        stop_price=quote.ask - Decimal("0.05000"),
    )
    rally = OrderRequest(
        instrument="EUR_USD",
        side="sell",
        quantity=1000,
        type="market_if_touched",
        stop_price=quote.bid + Decimal("0.05000"),
    )
    for request in (dip, rally):
        placed = await b.place_order(request)
        assert (placed.status, placed.filled_quantity) == (OrderStatus.ACCEPTED, 0)
    assert [o.client_order_id for o in await b.open_orders()] == [
        dip.client_order_id,
        rally.client_order_id,
    ]
    # one with the market already through its touch price fills at once, at market
    through = await b.place_order(
        OrderRequest(
            instrument="EUR_USD",
            side="buy",
            quantity=1000,
            type="market_if_touched",
            stop_price=quote.ask + Decimal("0.05000"),
        )
    )
    assert through.status is OrderStatus.FILLED
    assert through.average_fill_price is not None
    assert through.average_fill_price < quote.ask + Decimal("0.05000")
    await b.close()


async def test_stop_limit_and_trailing_stop_orders_through_the_broker(tmp_path: Path) -> None:
    b = broker(tmp_path, persist=False, speed=0, instruments=["EUR_USD"])
    await b.connect()
    quote = await b.quote("EUR_USD")
    trailing = await b.place_order(
        OrderRequest(
            instrument="EUR_USD",
            side="sell",
            quantity=1000,
            type="trailing_stop",
            trail_distance=Decimal("0.00100"),
        )
    )
    breakout = await b.place_order(
        OrderRequest(
            instrument="EUR_USD",
            side="buy",
            quantity=1000,
            type="stop_limit",
            stop_price=quote.ask + Decimal("0.05000"),
            limit_price=quote.ask + Decimal("0.05010"),
        )
    )
    assert [o.client_order_id for o in await b.open_orders()] == [
        trailing.client_order_id,
        breakout.client_order_id,
    ]
    assert b._live()[1].trailing_stop_price(trailing.client_order_id) == (
        quote.bid - Decimal("0.00100")
    )
    await b.close()


# ---------------------------------------------------------------------------
# fills(since), and the venue through restarts and crashes

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

CHILD = '''
import json
import os
import signal
import sys
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path

import trio

from rick_core.components import ComponentSetup
from rick_core.model import OrderRequest, to_jsonable
from rick_core.paper.broker import PaperBroker

OPTIONS = {
    "seed": 5,
    "speed": 0,
    "instruments": ["EUR_USD", "BTC_USD"],
    "slippage": "0.0001",
}
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def make(home):
    return PaperBroker(ComponentSetup(name="venue", options=OPTIONS, home=Path(home)))


async def venue_state(b):
    """What a venue shows: positions (not their marks), open orders, balance, fills."""
    return {
        "positions": [
            [p.instrument, *map(str, (p.quantity, p.average_price, p.stop_loss, p.take_profit))]
            for p in await b.positions()
        ],
        "open_orders": [to_jsonable(o) for o in await b.open_orders()],
        "balance": str((await b.account()).balance),
        "fills": [to_jsonable(f) for f in await b.fills(EPOCH)],
    }


def account_state(account):
    """The whole account but the market's quotes."""
    snapshot = account.snapshot()
    del snapshot["quotes"], snapshot["consumed"]
    return snapshot


def on_grid(value, step):
    return (value / step).to_integral_value(ROUND_FLOOR) * step


async def quotes(b, n):
    async with b.stream_quotes(["EUR_USD", "BTC_USD"]) as stream:
        async for _ in stream:
            n -= 1
            if n == 0:
                break


async def trade(b):
    step = Decimal("0.00001")
    eur = await b.quote("EUR_USD")

    def order(cid, side, quantity, **fields):
        return OrderRequest(
            instrument=fields.pop("instrument", "EUR_USD"),
            side=side,
            quantity=Decimal(quantity),
            client_order_id=cid,
            **fields,
        )

    # placed at the market's first quote: its best bid can only rise from there
    trail = order("trail", "sell", 2000, type="trailing_stop", trail_percent=Decimal(5))
    await b.place_order(trail)
    protected = on_grid(eur.bid * Decimal("0.9"), step)
    await b.place_order(order("long", "buy", 5000, stop_loss=protected))
    await b.place_order(
        order("rest", "buy", 1000, type="limit", limit_price=on_grid(eur.bid / 2, step))
    )
    await b.place_order(
        order(
            "breakout",
            "buy",
            1000,
            type="stop_limit",
            stop_price=on_grid(eur.ask * Decimal("1.5"), step),
            limit_price=on_grid(eur.ask * Decimal("1.6"), step),
        )
    )
    gone = await b.place_order(
        order("gone", "buy", 1000, type="limit", limit_price=on_grid(eur.bid / 3, step))
    )
    await b.cancel_order(gone)
    await b.place_order(order("btc", "buy", "0.01", instrument="BTC_USD"))
    await quotes(b, 300)
    await b.place_order(order("trim", "sell", 1000))
    await quotes(b, 100)
    await b.place_order(order("trim2", "sell", 1500))


async def self_kill(home):
    b = make(home)
    await b.connect()
    await trade(b)
    state = {"venue": await venue_state(b), "account": account_state(b._live()[1])}
    print(json.dumps(state), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush, no atexit: as a crash


async def churn(home):
    """Trade without end, saying which orders the venue confirmed; the test kills it."""
    b = make(home)
    await b.connect()
    step = Decimal("0.00001")
    i = 0
    resting = []
    while True:
        i += 1
        cid = f"o{i}"
        kind = i % 4
        if kind == 2:
            bid = (await b.quote("EUR_USD")).bid
            price = on_grid(bid * Decimal("0.5"), step)
            request = OrderRequest(
                instrument="EUR_USD", side="buy", quantity=1000, type="limit",
                limit_price=price, client_order_id=cid,
            )
            await b.place_order(request)
            resting.append(request)
        elif kind == 3 and len(resting) > 2:
            await b.cancel_order(await b.get_order(resting.pop(0).client_order_id))
            cid = "cancel"
        else:
            side = "buy" if i % 8 < 4 else "sell"
            await b.place_order(
                OrderRequest(instrument="EUR_USD", side=side, quantity=1000, client_order_id=cid)
            )
        print(f"ACK {cid}", flush=True)
        if i % 10 == 0:
            await quotes(b, 5)


async def hold(home):
    """Keep the paper account open until killed."""
    b = make(home)
    await b.connect()
    await b.place_order(OrderRequest(instrument="EUR_USD", side="buy", quantity=1000))
    print("READY", flush=True)
    await trio.sleep_forever()


if __name__ == "__main__":
    modes = {"self_kill": self_kill, "churn": churn, "hold": hold}
    trio.run(modes[sys.argv[1]], sys.argv[2])
'''


def child_namespace() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "child"}
    exec(compile(CHILD, "paper_crash_child", "exec"), namespace)
    return namespace


def run_child(tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "paper_crash_child.py"
    script.write_text(CHILD, "utf-8")
    return subprocess.Popen(
        [sys.executable, str(script), mode, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def restored_account(tmp_path: Path, options: dict[str, Any]) -> PaperAccount:
    """The account as the files hold it, without a market (no quote applied)."""
    setup = ComponentSetup(name="venue", options=options, home=tmp_path)
    opts = PaperOptions(setup)
    data, records = PaperFiles(tmp_path / "paper", "venue").load()
    assert data is not None
    instruments = [spec.instrument for spec in opts.specs]
    account = PaperAccount.restore("venue", opts.settings, instruments, data)
    for _, record in records:
        account.apply_changes(record)
    return account


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
async def test_a_sigkilled_venue_comes_back_exactly_as_it_was(tmp_path: Path) -> None:
    child = run_child(tmp_path, "self_kill")
    out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    at_the_kill = json.loads(out)
    assert at_the_kill["venue"]["open_orders"] and len(at_the_kill["venue"]["fills"]) >= 4
    assert not (tmp_path / "paper" / "venue.json.tmp").exists()
    ns = child_namespace()

    # the files alone hold the whole account (all but the market's quotes)
    account = restored_account(tmp_path, ns["OPTIONS"])
    assert ns["account_state"](account) == at_the_kill["account"]
    assert at_the_kill["account"]["trailing"]  # the trailing stop's best bid came back too

    # and a new broker on the same home shows the same venue
    b = ns["make"](tmp_path)
    await b.connect()
    assert await ns["venue_state"](b) == at_the_kill["venue"]
    assert ns["account_state"](b._live()[1])["trailing"] == at_the_kill["account"]["trailing"]
    # its clock goes on from the latest time the venue saw, never backwards
    last_fill = max(datetime.fromisoformat(f["time"]) for f in at_the_kill["venue"]["fills"])
    assert b.now() >= last_fill
    await b.close()
    # a clean close leaves a snapshot that holds everything and an empty journal
    journal = (tmp_path / "paper" / "venue.journal").read_bytes().splitlines()
    assert len(journal) == 1
    assert (
        ns["account_state"](restored_account(tmp_path, ns["OPTIONS"]))["fills"]
        == (at_the_kill["account"]["fills"])
    )


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
async def test_a_venue_killed_mid_flow_keeps_every_confirmed_order_and_fill(
    tmp_path: Path,
) -> None:
    child = run_child(tmp_path, "churn")
    assert child.stdout is not None
    acked = []
    for line in child.stdout:
        acked.append(line.split()[1])
        if len(acked) == 300:
            break
    os.kill(child.pid, signal.SIGKILL)  # wherever it is now
    rest, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    acked += [line.split()[1] for line in rest.splitlines() if line.startswith("ACK ")]

    ns = child_namespace()
    b = ns["make"](tmp_path)
    await b.connect()
    for cid in acked:
        if cid != "cancel":
            await b.get_order(cid)  # every confirmed order is known (NotFound otherwise)
    fills = await b.fills(EPOCH)
    # fills numbered without a gap: no change in the middle was lost
    assert [f.fill_id for f in fills] == [f"venue-{n}" for n in range(1, len(fills) + 1)]
    net = sum((f.quantity if f.side is Side.BUY else -f.quantity for f in fills), Decimal(0))
    positions = await b.positions()
    assert (positions[0].quantity if positions else Decimal(0)) == net
    account = b._live()[1]
    assert (await b.account()).balance == Decimal(100000) + account.realized_pnl - account.fees_paid
    for order in await b.open_orders():
        assert order.request.type is OrderType.LIMIT and order.status is OrderStatus.ACCEPTED
    await b.close()


async def test_an_abandoned_broker_is_a_crash_too(tmp_path: Path) -> None:
    """The same as a kill, in one process: a broker never closed."""
    ns = child_namespace()
    first = ns["make"](tmp_path)
    await first.connect()
    await ns["trade"](first)
    before = await ns["venue_state"](first)
    before_account = ns["account_state"](first._live()[1])
    # no close()
    second = ns["make"](tmp_path)
    await second.connect()
    assert await ns["venue_state"](second) == before
    assert ns["account_state"](second._live()[1])["trailing"] == before_account["trailing"]
    assert [f.client_order_id for f in await second.fills(EPOCH)][:2] == ["long", "btc"]
    await second.close()


async def test_fills_since_through_the_broker(tmp_path: Path) -> None:
    b = broker(tmp_path, persist=False, speed=0, instruments=["EUR_USD"])
    await b.connect()
    start = b.now()
    await b.place_order(OrderRequest(instrument="EUR_USD", side="buy", quantity=1000))
    await b.place_order(OrderRequest(instrument="EUR_USD", side="sell", quantity=1000))
    buy, sell = await b.fills(start)
    assert (buy.side, sell.side) == (Side.BUY, Side.SELL)
    assert await b.fills(sell.time) == [sell]
    assert await b.fills(sell.time + timedelta(microseconds=1)) == []
    await b.close()


async def test_the_journal_is_compacted_when_it_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rick_core.paper import broker as paper_broker

    monkeypatch.setattr(paper_broker, "COMPACT_BYTES", 3000)  # some two orders
    b = broker(tmp_path, speed=0, instruments=["EUR_USD"])
    await b.connect()
    journal = tmp_path / "paper" / "sim.journal"
    for i in range(10):
        side = "buy" if i % 2 == 0 else "sell"
        await b.place_order(OrderRequest(instrument="EUR_USD", side=side, quantity=1000))
    generation = json.loads(journal.read_bytes().splitlines()[0])["generation"]
    assert generation >= 4  # compacted several times
    assert journal.stat().st_size <= 3000 + 2000
    fills = await b.fills(EPOCH)
    assert len(fills) == 10
    # abandoned: the snapshot and the short journal after it hold everything
    again = broker(tmp_path, speed=0, instruments=["EUR_USD"])
    await again.connect()
    assert await again.fills(EPOCH) == fills
    await again.close()


async def test_a_journal_that_cannot_be_written_is_temporarily_unavailable_then_recovers(
    tmp_path: Path,
) -> None:
    b = broker(tmp_path, speed=0, instruments=["EUR_USD"])
    await b.connect()
    files = b._journal
    assert files is not None and files._fd is not None
    os.close(files._fd)  # the disk goes away under the venue
    first = OrderRequest(instrument="EUR_USD", side="buy", quantity=1000)
    with pytest.raises(TemporarilyUnavailable, match="cannot write its journal"):
        await b.place_order(first)
    # the venue did take the order (in memory): the engine finds it by client order id
    assert (await b.get_order(first.client_order_id)).status is OrderStatus.FILLED
    # the next change writes a whole snapshot (a new journal generation)
    second = OrderRequest(instrument="EUR_USD", side="buy", quantity=1000)
    await b.place_order(second)
    again = broker(tmp_path, speed=0, instruments=["EUR_USD"])  # b abandoned
    await again.connect()
    assert [f.client_order_id for f in await again.fills(EPOCH)] == [
        first.client_order_id,
        second.client_order_id,
    ]
    (position,) = await again.positions()
    assert position.quantity == Decimal(2000)
    await again.close()


async def test_a_journal_damaged_in_the_middle_stops_connect(tmp_path: Path) -> None:
    b = broker(tmp_path, speed=0, instruments=["EUR_USD"])
    await b.connect()
    for _ in range(3):
        await b.place_order(OrderRequest(instrument="EUR_USD", side="buy", quantity=1000))
    journal = tmp_path / "paper" / "sim.journal"
    lines = journal.read_bytes().splitlines()
    lines[2] = lines[2][:40]  # the second record, cut
    journal.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError, match=r"sim\.journal:3: damaged paper journal"):
        await broker(tmp_path, speed=0, instruments=["EUR_USD"]).connect()
    # a record that parses but cannot be applied is as damaged
    record = json.loads(lines[1])
    del record["balance"]
    lines[1] = json.dumps(record).encode()
    lines[2] = lines[3]
    journal.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError, match=r"sim\.journal:2: damaged change record \(missing"):
        await broker(tmp_path, speed=0, instruments=["EUR_USD"]).connect()


async def test_a_snapshot_that_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = broker(tmp_path, speed=0, instruments=["EUR_USD"])
    await b.connect()
    order = await b.place_order(OrderRequest(instrument="EUR_USD", side="buy", quantity=1000))

    def full_disk(self: PaperFiles, snapshot: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PaperFiles, "compact", full_disk)
    await b.close()  # close() does not raise: the journal holds the change
    with pytest.raises(TemporarilyUnavailable, match=r"cannot write its account to .*sim\.json"):
        await broker(tmp_path, speed=0, instruments=["EUR_USD"]).connect()
    monkeypatch.undo()
    again = broker(tmp_path, speed=0, instruments=["EUR_USD"])
    await again.connect()
    assert (await again.get_order(order.client_order_id)).status is OrderStatus.FILLED
    await again.close()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
async def test_one_process_at_a_time_and_a_crash_leaves_no_lock(tmp_path: Path) -> None:
    child = run_child(tmp_path, "hold")
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "READY\n"
        ns = child_namespace()
        second = ns["make"](tmp_path)
        with pytest.raises(
            TemporarilyUnavailable, match="another process has this paper account open"
        ):
            await second.connect()
        await second.close()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=60)
    # the dead process's lock went with it
    third = ns["make"](tmp_path)
    await third.connect()
    (position,) = await third.positions()
    assert position.quantity == Decimal(1000)
    await third.close()
    # in one process, a broker abandoned without close does not lock the next one out
    fourth = ns["make"](tmp_path)
    await fourth.connect()
    fifth = ns["make"](tmp_path)
    await fifth.connect()
    await fifth.close()
