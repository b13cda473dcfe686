"""Trading modes: the mode and PIN files, the [canary] config, the ghost broker, and
the engine in each mode with a broker that stands for a real venue."""

from __future__ import annotations

import stat
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from rick_core.broker import NotFound
from rick_core.components import ComponentSetup
from rick_core.config import CanaryConfig, ConfigError, Mode, load_config
from rick_core.engine.modes import (
    LOCKOUT,
    LOCKOUT_FILENAME,
    MAX_FAILURES,
    MODE_FILENAME,
    PIN_FILENAME,
    ModeError,
    ModeGate,
    PinError,
    PinScrypt,
    TradingMode,
    check_new_pin,
    lockout_status,
    pin_info,
    read_mode,
    set_pin,
    verify_pin,
    write_mode,
)
from rick_core.engine.risk import ReasonCode, RiskDenied
from rick_core.engine.runtime import Engine
from rick_core.engine.status import render_status
from rick_core.hookspecs import hookimpl
from rick_core.model import Order, OrderRequest, OrderStatus, utc_now
from rick_core.paper.broker import PaperBroker
from rick_core.paper.ghost import GhostBroker, is_ghost_order
from rick_core.plugins import load_plugins
from rick_core.security.audit import AuditLog, AuditTrail
from rick_core.security.records import EventType
from rick_core.store import Store
from rick_core.strategy import Strategy, StrategySetup

FAST = PinScrypt(n=2**10)  # the PIN tests check logic, not scrypt's cost


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


# ---------------------------------------------------------------------------
# the mode file


def test_the_default_mode_is_ghost_and_a_switch_is_kept_privately(tmp_path: Path) -> None:
    state = read_mode(tmp_path)
    assert state.mode is TradingMode.GHOST and state.is_default and not state.problem

    write_mode(tmp_path, TradingMode.CANARY, actor="alice", previous=state.mode, reason="test")

    again = read_mode(tmp_path)
    assert again.mode is TradingMode.CANARY and not again.is_default
    assert (again.actor, again.previous, again.reason) == ("alice", TradingMode.GHOST, "test")
    assert again.time is not None and again.time.utcoffset() == timedelta(0)
    assert private(tmp_path / MODE_FILENAME)
    assert [p.name for p in tmp_path.iterdir()] == [MODE_FILENAME]  # no temp file left


@pytest.mark.parametrize("text", ["{", '{"mode": "yolo", "time": "2024-01-01T00:00:00+00:00"}'])
def test_a_mode_file_that_cannot_be_read_means_off(tmp_path: Path, text: str) -> None:
    (tmp_path / MODE_FILENAME).write_text(text, "utf-8")

    state = read_mode(tmp_path)

    assert state.mode is TradingMode.OFF
    assert MODE_FILENAME in state.problem and "rick mode" in state.problem


# ---------------------------------------------------------------------------
# the PIN


def test_a_pin_is_kept_as_a_salted_scrypt_hash(tmp_path: Path) -> None:
    set_pin(tmp_path, "correct horse", actor="alice")  # the default cost
    first = (tmp_path / PIN_FILENAME).read_text("utf-8")
    set_pin(tmp_path, "correct horse", actor="alice", scrypt=FAST)
    second = (tmp_path / PIN_FILENAME).read_text("utf-8")

    assert "correct horse" not in first + second
    assert '"name": "scrypt"' in first and '"n": 32768' in first and '"salt"' in first
    assert first.split('"hash"')[1] != second.split('"hash"')[1]  # a new salt each time
    assert private(tmp_path / PIN_FILENAME)
    info = pin_info(tmp_path)
    assert info is not None and info.set_by == "alice"
    verify_pin(tmp_path, "correct horse")  # the stored parameters are used to check it


def test_no_pin_and_a_wrong_pin_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PinError, match="rick mode set-pin") as none:
        verify_pin(tmp_path, "123456")
    assert none.value.kind == "no_pin"

    set_pin(tmp_path, "123456", actor="alice", scrypt=FAST)
    with pytest.raises(PinError, match="wrong PIN") as wrong:
        verify_pin(tmp_path, "654321")
    assert wrong.value.kind == "wrong_pin" and wrong.value.failures == 1
    assert "654321" not in str(wrong.value)
    verify_pin(tmp_path, "123456")
    assert lockout_status(tmp_path) == (0, None)  # the right PIN resets the count


@pytest.mark.parametrize("pin", ["12345", " 123456", "1234567\n", "x" * 129])
def test_a_pin_that_is_too_short_or_odd_is_refused(pin: str) -> None:
    with pytest.raises(ModeError) as info:
        check_new_pin(pin)
    assert pin.strip() not in str(info.value)


def test_five_wrong_pins_lock_switching_across_processes(tmp_path: Path) -> None:
    set_pin(tmp_path, "123456", actor="alice", scrypt=FAST)
    for attempt in range(1, MAX_FAILURES):
        with pytest.raises(PinError) as info:
            verify_pin(tmp_path, f"bad-{attempt}")
        assert info.value.failures == attempt and info.value.locked_until is None
    # The fifth wrong PIN comes from another process: the count is on disk.
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path\n"
            "from rick_core.engine.modes import PinError, verify_pin\n"
            "try:\n    verify_pin(Path(sys.argv[1]), 'bad-5')\n"
            "except PinError as e:\n    print(e.kind, e.failures, e.locked_until is not None)\n",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.split() == ["wrong_pin", str(MAX_FAILURES), "True"]
    assert private(tmp_path / LOCKOUT_FILENAME)

    with pytest.raises(PinError, match="locked until") as locked:
        verify_pin(tmp_path, "123456")  # even the right PIN, while locked
    assert locked.value.kind == "locked"
    until = locked.value.locked_until
    assert until is not None and until - utc_now() <= LOCKOUT

    verify_pin(tmp_path, "123456", now=until + timedelta(seconds=1))
    assert lockout_status(tmp_path) == (0, None)


def test_a_new_pin_clears_nothing_but_its_own_lockout_count(tmp_path: Path) -> None:
    set_pin(tmp_path, "123456", actor="alice", scrypt=FAST)
    with pytest.raises(PinError):
        verify_pin(tmp_path, "000000")
    set_pin(tmp_path, "abcdef", actor="alice", scrypt=FAST)
    assert lockout_status(tmp_path) == (0, None)
    with pytest.raises(PinError):
        verify_pin(tmp_path, "123456")
    verify_pin(tmp_path, "abcdef")


def test_a_damaged_pin_file_says_how_to_recover(tmp_path: Path) -> None:
    (tmp_path / PIN_FILENAME).write_text('{"format": "rick-mode-pin"}', "utf-8")
    with pytest.raises(ModeError, match="Delete the file and set a new PIN"):
        verify_pin(tmp_path, "123456")


# ---------------------------------------------------------------------------
# rick.toml


def load_text(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "rick.toml"
    path.write_text(text, "utf-8")
    return load_config(path, home=tmp_path)


@pytest.mark.parametrize("mode", ["live", "canary", "off", "LIVE"])
def test_a_real_mode_in_rick_toml_points_to_rick_mode(tmp_path: Path, mode: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, f'mode = "{mode}"\n')

    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'rick.toml'}: key 'mode': ")
    assert f"`rick mode {mode.lower()}`" in message
    assert ("PIN" in message) is (mode.lower() != "off")


@pytest.mark.parametrize("mode", ["paper", "ghost"])
def test_paper_and_ghost_are_accepted(tmp_path: Path, mode: str) -> None:
    assert load_text(tmp_path, f'mode = "{mode}"\n').mode is Mode.PAPER


def test_canary_caps_are_read_exactly_with_defaults(tmp_path: Path) -> None:
    assert load_text(tmp_path, "").canary == CanaryConfig(Decimal(1), 10, {})
    config = load_text(
        tmp_path,
        '[canary]\nmax_quantity = "1000"\nmax_orders_per_day = 20\n'
        "[canary.instrument_max_quantity]\nBTC_USD = 0.001\n",
    )
    assert config.canary.max_quantity == Decimal(1000)
    assert config.canary.max_orders_per_day == 20
    assert config.canary.max_quantity_for("BTC_USD") == Decimal("0.001")
    assert config.canary.max_quantity_for("EUR_USD") == Decimal(1000)


@pytest.mark.parametrize(
    ("text", "key", "found"),
    [
        ("max_quantity = -1", "canary.max_quantity", "found -1 (integer)"),
        ('max_quantity = "lots"', "canary.max_quantity", "found 'lots' (string)"),
        ("max_orders_per_day = 0", "canary.max_orders_per_day", "found 0 (integer)"),
        ("max_orders_per_day = 2.5", "canary.max_orders_per_day", "found 2.5 (float)"),
        ("max_order = 1", "canary.max_order", "unknown key 'max_order'"),
        (
            '[canary.instrument_max_quantity]\n"eur/usd" = 1',
            'canary.instrument_max_quantity."eur/usd"',
            "canonical instrument symbol",
        ),
    ],
)
def test_bad_canary_caps_name_the_file_and_key(
    tmp_path: Path, text: str, key: str, found: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, f"[canary]\n{text}\n")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'rick.toml'}: key {key!r}: "), message
    assert found in message


# ---------------------------------------------------------------------------
# a broker that stands for a real venue, and a strategy that places orders


class Venue(PaperBroker):
    """A 'real' venue: the paper market under another plugin name, counting orders sent."""

    made: list[Venue] = []

    def __init__(self, setup: ComponentSetup) -> None:
        super().__init__(setup)
        self.placed: list[OrderRequest] = []
        self.quoted: list[str] = []
        Venue.made.append(self)

    async def place_order(self, request: OrderRequest) -> Order:
        self.placed.append(request)
        return await super().place_order(request)

    async def quote(self, instrument: str) -> Any:
        self.quoted.append(instrument)
        return await super().quote(instrument)


class Orderer(Strategy):
    """Buys each of ``params["quantities"]`` at start, then ``params["every"]`` one
    more of ``params["then"]`` each second; records what came of each order."""

    def __init__(self, setup: StrategySetup) -> None:
        super().__init__(setup)
        self.outcomes: list[Order | RiskDenied] = []

    async def on_start(self) -> None:
        for quantity in self.params.get("quantities", []):
            await self._buy(quantity)
        if "then" in self.params:
            self.ctx.schedule(1.0, "more")

    async def on_timer(self, name: str) -> None:
        await self._buy(self.params["then"])

    async def _buy(self, quantity: int) -> None:
        try:
            self.outcomes.append(await self.ctx.buy("EUR_USD", quantity))
        except RiskDenied as denied:
            self.outcomes.append(denied)


class VenuePlugin:
    @hookimpl
    def register_brokers(self, register: Any) -> None:
        register("venue", Venue)

    @hookimpl
    def register_strategies(self, register: Any) -> None:
        register("orderer", Orderer)


def rick_toml(
    venue_quantities: list[int],
    *,
    then: int | None = None,
    canary: str = "",
    paper_quantities: list[int] | None = None,
) -> str:
    text = f"""
{canary}
[brokers.venue]
kind = "venue"
persist = false
instruments = ["EUR_USD"]

[brokers.paper]
kind = "paper"
persist = false
instruments = ["EUR_USD"]

[strategies.v]
kind = "orderer"
broker = "venue"
instruments = ["EUR_USD"]
params = {{ quantities = {venue_quantities}{"" if then is None else f", then = {then}"} }}
"""
    if paper_quantities is not None:
        text += f"""
[strategies.p]
kind = "orderer"
broker = "paper"
instruments = ["EUR_USD"]
params = {{ quantities = {paper_quantities} }}
"""
    return text


def build(home: Path, text: str, store: Store, audit: AuditLog | None = None) -> Engine:
    (home / "rick.toml").write_text(text, "utf-8")
    Venue.made.clear()
    return Engine.from_config(
        load_config(home / "rick.toml", home=home),
        load_plugins(entry_points=(), extra=[("venue", VenuePlugin())]),
        store=store,
        audit=None if audit is None else AuditTrail(audit),
    )


def outcomes(engine: Engine, name: str = "v") -> list[Order | RiskDenied]:
    runner = next(r for r in engine.runners if r.name == name)
    assert isinstance(runner.strategy, Orderer)
    return runner.strategy.outcomes


def statuses(items: list[Order | RiskDenied]) -> list[str]:
    return [i.code.value if isinstance(i, RiskDenied) else i.status.value for i in items]


# ---------------------------------------------------------------------------
# the engine in each mode


async def test_ghost_simulates_orders_on_live_quotes_and_sends_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    audit = AuditLog.open(tmp_path / "audit.db")
    with Store.open(tmp_path / "rick.db") as store:
        engine = build(tmp_path, rick_toml([1000, 2000]), store, audit)  # no `rick mode`: ghost
        await engine.run(duration=5)
        stored = store.orders(broker="venue")
        fills = store.fills(broker="venue")
    venue = Venue.made[0]
    ghost = engine.services["venue"].broker
    assert isinstance(ghost, GhostBroker) and ghost.real is venue
    assert venue.placed == []  # the venue never saw an order...
    assert statuses(outcomes(engine)) == ["filled", "filled"]  # ...yet they filled
    assert "EUR_USD" in venue.quoted  # at the venue's own quotes
    assert all(is_ghost_order(o) for o in stored) and len(stored) == 2
    assert {f.fill_id.split("-")[0] for f in fills} == {"ghost"} and len(fills) == 2
    assert engine.final_positions["venue"] == {"EUR_USD": Decimal(3000)}
    started = audit.query(type=EventType.ENGINE_STARTED)
    audit.close()
    assert started[0].details["mode"] == "ghost"
    assert engine.status()["mode"] == "ghost"
    assert render_status(engine.status(), 61).startswith("rick 01:01 mode ghost | venue ")


async def test_off_refuses_every_real_order_but_the_paper_broker_still_simulates(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    write_mode(tmp_path, TradingMode.OFF, actor="alice")
    with Store.open(tmp_path / "rick.db") as store:
        engine = build(tmp_path, rick_toml([1000], paper_quantities=[1000]), store)
        await engine.run(duration=3)
        rejected = store.orders(broker="venue")
    venue = Venue.made[0]
    assert venue.placed == [] and engine.services["venue"].broker is venue  # not simulated
    denied = outcomes(engine)[0]
    assert isinstance(denied, RiskDenied) and denied.code is ReasonCode.MODE_OFF
    assert "`rick mode ghost`" in str(denied) and "set by alice" in str(denied)
    assert [o.status for o in rejected] == [OrderStatus.REJECTED]
    assert (rejected[0].reject_reason or "").startswith("risk mode_off:")
    assert statuses(outcomes(engine, "p")) == ["filled"]  # the built-in paper broker


async def test_live_sends_every_order_to_the_venue(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    write_mode(tmp_path, TradingMode.LIVE, actor="alice")
    with Store.open(tmp_path / "rick.db") as store:
        engine = build(tmp_path, rick_toml([1000, 5000, 20000]), store)
        await engine.run(duration=3)
    venue = Venue.made[0]
    assert engine.services["venue"].broker is venue
    assert [r.quantity for r in venue.placed] == [1000, 5000, 20000]
    assert statuses(outcomes(engine)) == ["filled", "filled", "filled"]


CANARY = '[canary]\nmax_quantity = "1000"\nmax_orders_per_day = 2\n'


async def test_canary_caps_quantity_and_orders_per_day_across_a_restart(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    write_mode(tmp_path, TradingMode.CANARY, actor="alice")
    with Store.open(tmp_path / "rick.db") as store:
        engine = build(tmp_path, rick_toml([500, 2000, 1000, 500], canary=CANARY), store)
        await engine.run(duration=3)
        first = outcomes(engine)
        sent = [r.quantity for r in Venue.made[0].placed]

        # A restart the same UTC day: the store says two real orders went already.
        again = build(tmp_path, rick_toml([1], canary=CANARY), store)
        assert again.modes is not None and again.modes.sent_today == 2
        await again.run(duration=2)
        second = outcomes(again)
        sent_again = Venue.made[0].placed
    assert statuses(first) == ["filled", "canary_quantity", "filled", "canary_orders"]
    assert sent == [500, 1000]
    too_big, too_many = first[1], first[3]
    assert isinstance(too_big, RiskDenied) and "max_quantity" in str(too_big)
    assert "[canary]" in str(too_big) and "1000" in str(too_big)
    assert isinstance(too_many, RiskDenied) and "max_orders_per_day is 2" in str(too_many)
    assert statuses(second) == ["canary_orders"] and sent_again == []


async def test_simulated_and_refused_orders_do_not_count_against_the_canary_cap(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with Store.open(tmp_path / "rick.db") as store:
        ghost = build(tmp_path, rick_toml([100, 100, 100], canary=CANARY), store)
        await ghost.run(duration=2)  # ghost: three simulated orders
        write_mode(tmp_path, TradingMode.CANARY, actor="alice")
        canary = build(tmp_path, rick_toml([5000, 100, 100, 100], canary=CANARY), store)
        assert canary.modes is not None and canary.modes.sent_today == 0
        await canary.run(duration=2)
    assert statuses(outcomes(ghost)) == ["filled"] * 3
    assert statuses(outcomes(canary)) == ["canary_quantity", "filled", "filled", "canary_orders"]
    assert len(Venue.made[0].placed) == 2


async def test_a_switch_down_applies_at_once_and_a_switch_up_waits_for_a_restart(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    write_mode(tmp_path, TradingMode.LIVE, actor="alice")
    with Store.open(tmp_path / "rick.db") as store:
        engine = build(tmp_path, rick_toml([], then=2000, canary=CANARY), store)
        gate = engine.modes
        assert gate is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run)
            await engine.started.wait()
            await trio.sleep(2.5)  # two orders at 1 s and 2 s: live
            write_mode(tmp_path, TradingMode.CANARY, actor="bob")  # down: caps now
            await trio.sleep(2)
            write_mode(tmp_path, TradingMode.LIVE, actor="bob")  # up: not while running
            await trio.sleep(2)
            assert gate.pending is TradingMode.LIVE and "live after a restart" in gate.summary()
            write_mode(tmp_path, TradingMode.GHOST, actor="bob")  # down: no real orders
            await trio.sleep(2)
            write_mode(tmp_path, TradingMode.OFF, actor="bob")
            await trio.sleep(2)
            engine.request_stop()
    seen = statuses(outcomes(engine))
    assert seen[:2] == ["filled", "filled"]
    assert seen[2:6] == ["canary_quantity"] * 4  # canary, then still canary after `live`
    assert seen[6:8] == ["mode_ghost"] * 2
    assert seen[8:10] == ["mode_off"] * 2
    assert len(Venue.made[0].placed) == 2
    ghost = next(
        o for o in outcomes(engine) if isinstance(o, RiskDenied) and o.code.value == "mode_ghost"
    )
    assert "restart" in str(ghost)


# ---------------------------------------------------------------------------
# the ghost broker on its own


def venue(tmp_path: Path) -> Venue:
    return Venue(ComponentSetup(name="venue", options={"persist": False, "seed": 5}, home=tmp_path))


async def test_a_market_order_without_a_quote_yet_fetches_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    real = venue(tmp_path)
    ghost = GhostBroker(real, home=tmp_path)
    await ghost.connect()
    assert real.quoted == []

    order = await ghost.place_order(OrderRequest(instrument="USD_JPY", side="buy", quantity=100))

    assert real.placed == [] and "USD_JPY" in real.quoted
    assert order.status is OrderStatus.FILLED and (order.venue_order_id or "").startswith("ghost-")
    assert [p.instrument for p in await ghost.positions()] == ["USD_JPY"]
    assert await real.positions() == []
    with pytest.raises(NotFound, match="in ghost mode rick sends nothing"):
        await ghost.cancel_order(
            Order(
                request=OrderRequest(instrument="USD_JPY", side="sell", quantity=1),
                broker="venue",
            )
        )
    await ghost.close()


async def test_the_ghost_account_is_kept_between_runs(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ghost = GhostBroker(venue(tmp_path), home=tmp_path)
    await ghost.connect()
    await ghost.place_order(OrderRequest(instrument="EUR_USD", side="buy", quantity=1000))
    await ghost.close()
    saved = tmp_path / "ghost" / "venue.json"
    assert private(saved)

    again = GhostBroker(venue(tmp_path), home=tmp_path)
    await again.connect()
    assert [(p.instrument, p.quantity) for p in await again.positions()] == [
        ("EUR_USD", Decimal(1000))
    ]
    await again.close()


def test_only_the_built_in_paper_broker_escapes_the_mode(tmp_path: Path) -> None:
    gate = ModeGate(read_mode(tmp_path), CanaryConfig())
    paper = PaperBroker(ComponentSetup(name="paper", options={"persist": False}, home=tmp_path))

    prepared = gate.prepare({"paper": paper, "venue": venue(tmp_path)})

    assert prepared["paper"] is paper and isinstance(prepared["venue"], GhostBroker)
    assert gate.governed == {"venue"} and gate.summary() == "ghost"
    only_paper = ModeGate(read_mode(tmp_path), CanaryConfig())
    assert only_paper.prepare({"paper": paper}) == {"paper": paper}
    assert only_paper.summary() == "ghost (paper only)"


class StopThenMarket(Strategy):
    """A buy stop just above the market (rick holds it: the venue lacks stops), then a
    market order; records every order state."""

    def __init__(self, setup: StrategySetup) -> None:
        super().__init__(setup)
        self.orders: list[Order] = []

    async def on_start(self) -> None:
        quote = self.ctx.last_quote("EUR_USD")
        assert quote is not None
        await self.ctx.buy("EUR_USD", 100, stop=quote.ask + Decimal("0.00001"))
        await self.ctx.buy("EUR_USD", 100)

    async def on_order(self, order: Order) -> None:
        self.orders.append(order)


async def test_a_held_stop_fires_in_canary_past_the_daily_count(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    write_mode(tmp_path, TradingMode.CANARY, actor="alice")
    real = Venue(
        ComponentSetup(
            name="venue",
            options={"persist": False, "seed": 5, "order_types": ["market"]},
            home=tmp_path,
        )
    )
    canary = CanaryConfig(Decimal(1000), 2, {})
    with Store.open(tmp_path / "rick.db") as store:
        strategy = StopThenMarket(StrategySetup("s", "venue", ("EUR_USD",)))
        engine = Engine(
            store=store,
            brokers={"venue": real},
            strategies=[(strategy, "venue", ("EUR_USD",))],
            modes=ModeGate.load(tmp_path, canary),
            home=tmp_path,
        )
        await engine.run(duration=60)
    assert engine.modes is not None and engine.modes.sent_today == 2  # the stop and the market
    # The stop fired after both were counted: its child still went to the venue.
    assert [r.client_order_id.endswith(".x") for r in real.placed] == [False, True]
    assert any(o.status is OrderStatus.FILLED and o.request.stop_price for o in strategy.orders)
