"""``rick run`` end to end on an OANDA account: the real CLI in a child process,
its ``oanda`` broker pointed at the fake v20 server in this test's nursery, the
token in the vault, the example momentum strategy trading on prices the test
moves. Ghost mode (the default) sends nothing; canary mode sends real orders,
and rick's store then agrees with the venue's transactions."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import ACCOUNT, TOKEN

from rick_core.engine.modes import TradingMode, read_mode, set_pin
from rick_core.model import Fill, Order
from rick_core.paper.ghost import is_ghost_order
from rick_core.store import Store
from rick_oanda.fake import FakeV20

PIN = "735194"
INSTRUMENT = "EUR_USD"
STEP = Decimal("0.00005")
"""One move of the test's price path: 5 display steps of EUR_USD."""

# lookback 4, threshold 1: four quotes rising 3 x 0.00005 beat the 0.00012
# spread, so the strategy buys after three rises in a row. The cooldown keeps
# it to one entry per run (after the stop loss closes it, no second one).
CONFIG = """
[proxy]
enabled = false

[canary]
max_quantity = 5000
max_orders_per_day = 5

[brokers.oanda]
kind = "oanda"
account_id = "{account}"
rest_url = "{url}"
stream_url = "{url}"
timeout = 5

[strategies.trend]
kind = "momentum"
broker = "oanda"
instruments = ["EUR_USD"]

[strategies.trend.params]
notional = 2000
lookback = 4
threshold = 1
trail = 0.001
target = 0.002
cooldown = 10000
"""


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeV20:
    """A fake v20 server whose prices move only when the test says (no random walk)."""
    server = FakeV20(token=TOKEN, account_id=ACCOUNT, heartbeat=0.5, price_interval=0)
    await nursery.start(server.serve)
    return server


def environment(home: Path, master_key: str = "") -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RICK_")  # nothing of the developer's rick leaks in
    }
    env.update({"RICK_HOME": str(home), "RICK_LOAD_PLUGINS": "oanda"})
    if master_key:
        env["RICK_MASTER_KEY"] = master_key
    return env


async def rick(
    env: Mapping[str, str], *args: str, stdin: str = "", within: float = 30
) -> subprocess.CompletedProcess[bytes]:
    """The real ``rick`` command (this interpreter's) as a child process, killed
    (and the test failed) after ``within`` seconds."""
    with trio.fail_after(within):
        return await trio.run_process(
            [sys.executable, "-m", "rick_core", *args],
            env=env,
            stdin=stdin.encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def output(result: subprocess.CompletedProcess[bytes]) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")


async def setup_home(home: Path, fake: FakeV20) -> dict[str, str]:
    """rick.toml pointing at the fake, a vault with the token (`rick creds`)."""
    (home / "rick.toml").write_text(CONFIG.format(account=ACCOUNT, url=fake.url), "utf-8")
    genkey = await rick(environment(home), "creds", "genkey")
    assert genkey.returncode == 0, output(genkey)
    key = genkey.stdout.decode().strip()
    env = environment(home, key)
    stored = await rick(env, "creds", "set", "oanda", "token", stdin=TOKEN + "\n")
    assert stored.returncode == 0, output(stored)
    assert TOKEN.encode() not in (home / "vault.json").read_bytes()
    return env


async def drive_prices(
    fake: FakeV20, asks: list[Decimal], *, rises: int = 14, interval: float = 0.1
) -> None:
    """Once rick's pricing stream is open: a steady rise (the strategy buys, then
    trails its stop), a fall through the stop (the position closes), then small
    ticks so the feed stays busy. The asks of the rise go to ``asks``."""
    for _ in itertools.count():
        if fake.open_streams("pricing"):
            break
        await trio.sleep(0.02)
    await trio.sleep(0.5)  # the strategy starts once its instruments are subscribed
    bid, ask = fake.price(INSTRUMENT)
    for _ in range(rises):
        bid, ask = bid + STEP, ask + STEP
        fake.set_price(INSTRUMENT, bid, ask)
        asks.append(ask)
        await trio.sleep(interval)
    bid, ask = bid - 60 * STEP, ask - 60 * STEP  # 0.003: through any stop loss
    fake.set_price(INSTRUMENT, bid, ask)
    tick = Decimal("0.00001")
    while True:
        await trio.sleep(interval)
        tick = -tick
        bid, ask = bid + tick, ask + tick
        fake.set_price(INSTRUMENT, bid, ask)


async def run_rick(
    nursery: trio.Nursery, fake: FakeV20, env: Mapping[str, str], duration: float = 8
) -> list[Decimal]:
    """``rick run --duration`` while the prices move; the asks of the rise."""
    asks: list[Decimal] = []
    nursery.start_soon(drive_prices, fake, asks)
    result = await rick(env, "run", "--duration", str(duration), within=duration + 40)
    assert result.returncode == 0, output(result)
    assert "stopped (duration reached)" in output(result)
    return asks


def stored(home: Path) -> tuple[list[Order], list[Fill]]:
    with Store.open(home / "rick.db") as store:
        orders = [o for o in store.orders() if store.strategy_of(o.client_order_id) == "trend"]
        return orders, store.fills()


async def test_ghost_mode_trades_on_oanda_prices_and_sends_nothing(
    tmp_path: Path, fake: FakeV20, nursery: trio.Nursery
) -> None:
    env = await setup_home(tmp_path, fake)
    assert read_mode(tmp_path).mode is TradingMode.GHOST

    asks = await run_rick(nursery, fake, env)

    # It traded: the entry and the stop loss's exit, both simulated.
    orders, fills = stored(tmp_path)
    assert orders, "the strategy enters on the rise"
    assert all(o.broker == "oanda" for o in orders)
    assert all(is_ghost_order(o) for o in orders)
    assert len(fills) >= 2, fills  # the entry and the exit through the stop
    listed = await rick(env, "fills", "--json")
    assert listed.returncode == 0, output(listed)
    shown: list[dict[str, Any]] = json.loads(listed.stdout)
    assert {f["fill_id"] for f in shown} == {f.fill_id for f in fills}
    assert all(f["broker"] == "oanda" and f["fill_id"].startswith("ghost-") for f in shown)
    entries = {o.client_order_id for o in orders}
    assert {f["strategy"] for f in shown if f["client_order_id"] in entries} == {"trend"}
    # Simulated on the venue's prices: the entry filled at an ask the test set.
    entry = next(f for f in fills if f.client_order_id in entries)
    assert entry.price in asks
    # Nothing was sent: no order, no protection change, no close. The prices
    # came from the venue's stream.
    assert fake.count("POST", "/orders") == 0
    assert fake.count("PUT", "/v3/accounts") == 0
    assert [t["type"] for t in fake.transactions] == ["CREATE", "TRANSFER_FUNDS"]
    assert fake.stream_connections["pricing"] >= 1
    assert fake.count("GET", "/pricing/stream") >= 1
    assert (tmp_path / "ghost" / "oanda.json").exists()


async def test_canary_mode_sends_the_orders_and_the_store_matches_the_venue(
    tmp_path: Path, fake: FakeV20, nursery: trio.Nursery
) -> None:
    env = await setup_home(tmp_path, fake)
    set_pin(tmp_path, PIN, actor="test")
    switched = await rick(env, "mode", "canary", "--pin-stdin", stdin=PIN + "\n")
    assert switched.returncode == 0, output(switched)
    assert read_mode(tmp_path).mode is TradingMode.CANARY

    await run_rick(nursery, fake, env)

    orders, fills = stored(tmp_path)
    assert orders and not any(is_ghost_order(o) for o in orders)
    assert fake.count("POST", "/orders") >= 1
    venue_fills = [t for t in fake.transactions if t["type"] == "ORDER_FILL"]
    assert len(venue_fills) >= 2, venue_fills  # the entry and the stop loss
    # The entries went out with rick's client order ids...
    entry_ids = {o.client_order_id for o in orders}
    assert entry_ids <= {t.get("clientOrderID") for t in venue_fills}
    for order in orders:
        venue = fake.order("@" + order.client_order_id)
        assert venue is not None and venue["state"] == "FILLED"
        assert order.venue_order_id == venue["id"]
    # ...and every venue fill is in rick's store once, under its transaction id.
    assert sorted(f.fill_id for f in fills) == sorted(str(t["id"]) for t in venue_fills)
    by_id = {f.fill_id: f for f in fills}
    for tx in venue_fills:
        fill = by_id[str(tx["id"])]
        assert fill.broker == "oanda" and fill.instrument == INSTRUMENT
        assert fill.price == Decimal(tx["fullVWAP"])
        assert abs(fill.quantity) == abs(Decimal(tx["units"]))
        if tx.get("clientOrderID") in entry_ids:
            assert fill.client_order_id == tx["clientOrderID"]
    # The trailing stop went to the venue too, and the stop loss closed the trade.
    assert fake.count("PUT", "/orders") >= 1
    assert fake.trades and all(t["state"] == "CLOSED" for t in fake.trades.values())
