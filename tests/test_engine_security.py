"""The engine with the vault and the audit trail: secrets stay secret, rotations
take effect without a restart, every order is audited, and rick fails closed."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.lowlevel
import trio.testing

from rick_core.components import ComponentSetup, Credentials
from rick_core.config import load_config
from rick_core.engine.runtime import Engine
from rick_core.hookspecs import hookimpl
from rick_core.logs import close_logging, configure_logging, forget_secrets
from rick_core.model import OrderStatus
from rick_core.paper.broker import PaperBroker
from rick_core.plugins import load_plugins
from rick_core.security.audit import AuditLog, AuditTrail
from rick_core.security.records import AuditRecord, AuditSink, EventType
from rick_core.security.vault import Vault, generate_master_key
from rick_core.store import Store
from rick_core.strategy import Strategy, StrategySetup, TradingHalted

SECRET = "tok-9f8e7d6c5b4a3928-do-not-leak"
ROTATED = "tok-1a2b3c4d5e6f7081-rotated-one"


class TokenBroker(PaperBroker):
    """A paper broker that, like a live one, reads its token at every connect."""

    def __init__(self, setup: ComponentSetup) -> None:
        super().__init__(setup)
        self.credentials: Credentials = setup.credentials
        self.tokens: list[str] = []

    async def connect(self) -> None:
        token = self.credentials.get("token")
        self.tokens.append(token)
        # A careless plugin: it logs the token, and puts it in an error's text.
        structlog.get_logger("rick.plugin.token").info("connecting", token=token)
        try:
            raise RuntimeError(f"handshake hiccup with token {token}")
        except RuntimeError:
            structlog.get_logger("rick.plugin.token").exception("recovered")
        await super().connect()


class TokenPlugin:
    @hookimpl
    def register_brokers(self, register: Any) -> None:
        register("tokenpaper", TokenBroker)


CONFIG = """
[brokers.live]
kind = "tokenpaper"
persist = false
instruments = ["EUR_USD", "BTC_USD", "ETH_USD", "AAPL"]

[strategies.example]
kind = "momentum"
broker = "live"
instruments = ["EUR_USD", "BTC_USD", "ETH_USD", "AAPL"]
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("RICK_MASTER_KEY", generate_master_key())
    monkeypatch.setenv("RICK_HOME", str(tmp_path))
    # These brokers stand for real venues: only live mode sends them orders (the
    # default, ghost, would simulate the orders and never call place_order).
    from rick_core.engine.modes import TradingMode, write_mode

    write_mode(tmp_path, TradingMode.LIVE, actor="test")
    yield tmp_path
    close_logging()
    forget_secrets()


def every_byte_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


async def test_a_vault_secret_used_by_a_full_run_is_nowhere_in_rick_home(
    home: Path, autojump_clock: trio.testing.MockClock
) -> None:
    Vault.open(home).set("live", "token", SECRET)
    forget_secrets()  # as in a fresh process: only the engine's own read registers it
    console = io.StringIO()
    configure_logging(home=home, level="debug", console=False, stream=console)
    (home / "rick.toml").write_text(CONFIG, "utf-8")
    config = load_config(home / "rick.toml", home=home)
    plugins = load_plugins(entry_points=(), extra=[("token", TokenPlugin())])
    audit_log = AuditLog.open(home / "audit.db")
    vault = Vault.open(home, create=False)
    with Store.open(home / "rick.db") as store:
        engine = Engine.from_config(
            config, plugins, store=store, audit=AuditTrail(audit_log), vault=vault
        )
        await engine.run(duration=120)
    audit_log.close()
    close_logging()
    broker = engine.services["live"].broker
    assert isinstance(broker, TokenBroker) and broker.tokens == [SECRET]
    blob = every_byte_under(home)
    assert SECRET.encode() not in blob
    log_text = console.getvalue() + "".join(p.read_text() for p in (home / "logs").glob("*.jsonl"))
    assert "connecting" in log_text and "recovered" in log_text  # the lines are there...
    assert "***" in log_text  # ...with the token redacted
    with AuditLog.open(home / "audit.db") as log:
        kinds = [r.type for r in log.query()]
        assert log.verify().ok
    assert kinds[0] is EventType.CREDENTIAL_ACCESSED or EventType.CREDENTIAL_ACCESSED in kinds
    assert EventType.ENGINE_STARTED in kinds and kinds[-1] is EventType.ENGINE_STOPPED
    assert kinds.count(EventType.ORDER_SUBMITTED) == len(store_orders(home))


def store_orders(home: Path) -> list[Any]:
    with Store.open(home / "rick.db") as store:
        return [o for o in store.orders() if store.strategy_of(o.client_order_id)]


async def test_a_rotated_credential_reconnects_the_broker_without_a_restart(
    home: Path, autojump_clock: trio.testing.MockClock
) -> None:
    Vault.open(home).set("live", "token", SECRET)
    (home / "rick.toml").write_text(CONFIG, "utf-8")
    config = load_config(home / "rick.toml", home=home)
    plugins = load_plugins(entry_points=(), extra=[("token", TokenPlugin())])
    audit_log = AuditLog.open(home / "audit.db")
    with Store.open(home / "rick.db") as store:
        engine = Engine.from_config(
            config,
            plugins,
            store=store,
            audit=AuditTrail(audit_log),
            vault=Vault.open(home, create=False),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run)
            await engine.started.wait()
            await trio.sleep(5)
            Vault.open(home).rotate("live", "token", ROTATED)  # `rick creds rotate`, elsewhere
            await trio.sleep(10)
            engine.request_stop("test")
    broker = engine.services["live"].broker
    assert isinstance(broker, TokenBroker)
    assert broker.tokens == [SECRET, ROTATED]
    accessed = [r for r in audit_log.query() if r.type is EventType.CREDENTIAL_ACCESSED]
    assert len(accessed) == 2 and accessed[0].details == {"component": "live", "name": "token"}
    audit_log.close()


class FailingSink(AuditSink):
    name = "broken"

    async def write(self, record: AuditRecord) -> None:
        raise OSError("disk full")

    async def flush(self) -> None:
        pass


class Buyer(Strategy):
    def __init__(self) -> None:
        super().__init__(StrategySetup(name="b", broker="paper", instruments=("EUR_USD",)))
        self.outcomes: list[object] = []

    async def on_start(self) -> None:
        self.ctx.schedule(1.0, "buy")

    async def on_timer(self, name: str) -> None:
        try:
            self.outcomes.append(await self.ctx.buy("EUR_USD", 1000))
        except TradingHalted as exc:
            self.outcomes.append(exc)


def paper(home: Path) -> PaperBroker:
    return PaperBroker(
        ComponentSetup(
            name="paper", options={"persist": False, "instruments": ["EUR_USD"]}, home=home
        )
    )


async def test_an_audit_log_that_cannot_be_written_stops_new_orders(
    home: Path, autojump_clock: trio.testing.MockClock
) -> None:
    strategy = Buyer()
    audit_log = AuditLog.open(home / "audit.db")
    with Store.open(home / "rick.db") as store:
        engine = Engine(
            store=store,
            brokers={"paper": paper(home)},
            strategies=[(strategy, "paper", ("EUR_USD",))],
            audit=AuditTrail(audit_log, [FailingSink()]),
        )
        await engine.run(duration=5)
        orders = store.orders()
    audit_log.close()
    halted = [o for o in strategy.outcomes if isinstance(o, TradingHalted)]
    assert halted, "orders kept going with a broken audit log"
    assert "audit log cannot be written" in str(halted[0]) and "disk full" in str(halted[0])
    # Refused orders are on record, never sent: rejected, with the reason.
    refused = [o for o in orders if o.status is OrderStatus.REJECTED]
    assert refused and all("audit log" in (o.reject_reason or "") for o in refused)
    assert engine.status()["halted"]
    # What the log could not take is kept beside it, ENGINE_STOPPED included.
    (kept,) = [p for p in os.listdir(home) if p.startswith("audit-unwritten-")]
    lines = (home / kept).read_text().splitlines()
    assert lines and '"ENGINE_STOPPED"' in lines[-1]


class SlowSink(AuditSink):
    name = "slow"

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    async def write(self, record: AuditRecord) -> None:
        await trio.sleep(0.05)
        self.records.append(record)

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_a_slow_audit_sink_slows_new_orders_but_loses_nothing(
    home: Path, autojump_clock: trio.testing.MockClock
) -> None:
    strategy = Buyer()
    sink = SlowSink()
    audit_log = AuditLog.open(home / "audit.db")
    with Store.open(home / "rick.db") as store:
        engine = Engine(
            store=store,
            brokers={"paper": paper(home)},
            strategies=[(strategy, "paper", ("EUR_USD",))],
            audit=AuditTrail(audit_log, [sink], capacity=1),
            large_trade=Decimal(500),  # every 1,000 EUR_USD fill is "large" here
        )
        await engine.run(duration=10)
        orders = store.orders()
    stored = audit_log.query()
    audit_log.close()
    kinds = [r.type for r in stored]
    assert [r.sequence for r in sink.records] == [r.sequence for r in stored]
    assert kinds.count(EventType.ORDER_SUBMITTED) == len(orders)
    assert kinds.count(EventType.ORDER_FILLED) == len(orders)
    assert kinds.count(EventType.LARGE_TRADE_EXECUTED) == len(orders)
    large = next(r for r in stored if r.type is EventType.LARGE_TRADE_EXECUTED)
    assert large.details["currency"] == "USD" and Decimal(large.details["value"]) >= 500


class LeakyBroker(PaperBroker):
    """A venue library that quotes the token in its error texts."""

    fail_connect = False

    def __init__(self, setup: ComponentSetup) -> None:
        super().__init__(setup)
        self.credentials = setup.credentials
        self.token = ""

    async def connect(self) -> None:
        self.token = self.credentials.get("token")
        if self.fail_connect:
            raise RuntimeError(f"401 Unauthorized for https://api.example/v3?token={self.token}")
        await super().connect()

    async def place_order(self, request: Any) -> Any:
        from rick_core.broker import BrokerError

        raise BrokerError(f"POST https://api.example/orders?access_token={self.token} -> 400")


class LeakyConnect(LeakyBroker):
    fail_connect = True


class LeakyPlugin:
    @hookimpl
    def register_brokers(self, register: Any) -> None:
        register("leaky", LeakyBroker)
        register("leakyconnect", LeakyConnect)


LEAKY = """
[brokers.live]
kind = "{kind}"
persist = false
instruments = ["EUR_USD", "BTC_USD", "ETH_USD"]

[strategies.example]
kind = "momentum"
broker = "live"
instruments = ["EUR_USD", "BTC_USD", "ETH_USD"]
"""


async def test_a_venue_error_quoting_the_token_is_stored_redacted(
    home: Path, autojump_clock: trio.testing.MockClock
) -> None:
    Vault.open(home).set("live", "token", SECRET)
    (home / "rick.toml").write_text(LEAKY.format(kind="leaky"), "utf-8")
    config = load_config(home / "rick.toml", home=home)
    audit_log = AuditLog.open(home / "audit.db")
    with Store.open(home / "rick.db") as store:
        engine = Engine.from_config(
            config,
            load_plugins(entry_points=(), extra=[("leaky", LeakyPlugin())]),
            store=store,
            audit=AuditTrail(audit_log),
            vault=Vault.open(home, create=False),
        )
        await engine.run(duration=120)
        rejected = [o for o in store.orders() if o.status is OrderStatus.REJECTED]
    audit_log.close()
    assert rejected and all("access_token=***" in (o.reject_reason or "") for o in rejected)
    assert SECRET.encode() not in every_byte_under(home)


def test_rick_run_never_prints_a_token_a_broker_error_quotes(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    import rick_core.commands.run as run_command

    Vault.open(home).set("live", "token", SECRET)
    (home / "rick.toml").write_text(LEAKY.format(kind="leakyconnect"), "utf-8")
    monkeypatch.setattr(
        run_command,
        "current_plugin_set",
        lambda: load_plugins(entry_points=(), extra=[("leaky", LeakyPlugin())]),
    )
    result = CliRunner().invoke(run_command.run, ["--duration", "1"])
    assert result.exit_code == 1
    assert "failed to connect: 401 Unauthorized" in result.output
    assert "token=***" in result.output and SECRET not in result.output


class EagerBroker(TokenBroker):
    """Reads its token while being built, before the engine exists."""

    def __init__(self, setup: ComponentSetup) -> None:
        super().__init__(setup)
        self.early_token = setup.credentials.get("token")


class EagerPlugin:
    @hookimpl
    def register_brokers(self, register: Any) -> None:
        register("tokenpaper", EagerBroker)


async def test_a_credential_read_while_brokers_are_built_is_audited_too(
    home: Path, autojump_clock: trio.testing.MockClock
) -> None:
    Vault.open(home).set("live", "token", SECRET)
    (home / "rick.toml").write_text(CONFIG, "utf-8")
    audit_log = AuditLog.open(home / "audit.db")
    with Store.open(home / "rick.db") as store:
        engine = Engine.from_config(
            load_config(home / "rick.toml", home=home),
            load_plugins(entry_points=(), extra=[("eager", EagerPlugin())]),
            store=store,
            audit=AuditTrail(audit_log),
            vault=Vault.open(home, create=False),
        )
        await engine.run(duration=1)
    accessed = [r for r in audit_log.query() if r.type is EventType.CREDENTIAL_ACCESSED]
    audit_log.close()
    assert len(accessed) == 2  # once in the constructor, once at connect
