"""The engine: the trio service tree that connects brokers, hosts strategies and
moves orders, fills and quotes between them.

Start-up order: every broker is connected and its event stream subscribed
(``nursery.start``: a broker counts as ready only then), then every strategy
is started (its quotes subscribed, its ``on_start`` run).

Stopping (:meth:`Engine.request_stop`, a signal, or the end of ``duration``):
no new orders are taken, each strategy handles what is already in its inbox
and runs ``on_stop``, broker calls under way are drained, all under one
deadline (``drain_timeout``); then account snapshots are saved, brokers are
closed and the store is left consistent. :meth:`Engine.force_stop` (a second
Ctrl-C) cancels at once; the order manager still records every interrupted
order in a final or resumable state, under a shield.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import signal
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog
import trio

from rick_core.broker import Broker, BrokerError
from rick_core.components import ComponentSetup, Credentials, NoCredentials
from rick_core.engine.auditing import DEFAULT_LARGE_TRADE, ENGINE, EngineAudit
from rick_core.engine.control import STATE_FILENAME, TradingSwitch, read_switch
from rick_core.engine.events import EventHub
from rick_core.engine.hosting import StrategyRunner
from rick_core.engine.modes import ModeGate
from rick_core.engine.notifying import Notifications
from rick_core.engine.oms import OrderManager, describe
from rick_core.engine.quotes import DEFAULT_STALE_AFTER, QuoteMux, StalePrice
from rick_core.engine.reconcile import Reconciliation, Report, reconcile
from rick_core.engine.risk import Charter, ReasonCode, RiskContext, RiskDenied, parse_risk
from rick_core.feeds import DEFAULT_BACKOFF, FeedEvent, FeedEventKind, FeedSupervisor
from rick_core.logs import redact
from rick_core.model import (
    Account,
    Fill,
    Instrument,
    Order,
    OrderType,
    Position,
    Quote,
    utc_now,
)
from rick_core.notify import Level, Notification, Notifier
from rick_core.security.audit import record_to_json
from rick_core.security.records import AuditRecord, EventType, Severity
from rick_core.strategy import Strategy, StrategySetup

if TYPE_CHECKING:
    from rick_core.api.ws import QuoteProxy
    from rick_core.config import ProxyConfig, RickConfig
    from rick_core.plugins import PluginSet
    from rick_core.security.apikeys import KeySource
    from rick_core.security.audit import AuditTrail
    from rick_core.security.vault import Vault
    from rick_core.store import Store

__all__ = ["BrokerService", "Engine", "EngineError"]

log = structlog.get_logger("rick.engine")

SUBSCRIBE_TIMEOUT = 10.0
ACCOUNT_POLL = 1.0
CHECKPOINT_EVERY = 1.0
ACCOUNT_SAVE_EVERY = 10.0
VAULT_POLL = 2.0
SWITCH_POLL = 0.5


class EngineError(RuntimeError):
    """The engine cannot start: a component failed to build or a broker to connect.

    The message is redacted: a venue's error text may quote a credential."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class BrokerService:
    """One connected broker: its event stream, its quote stream (fanned out to
    the strategies subscribed), its positions and account as last seen."""

    def __init__(
        self,
        name: str,
        broker: Broker,
        oms: OrderManager,
        *,
        store: Store | None = None,
        report: Report | None = None,
        quotes: QuoteMux | None = None,
        on_feed_event: Callable[[FeedEvent], None] | None = None,
    ) -> None:
        """``store``: reconcile with the venue on every connect (None: never);
        ``report``: where reconciliation's audit records go; ``quotes``: the
        multiplexer this broker's quotes go through (None: one of its own);
        ``on_feed_event``: told when a stream of this broker drops or recovers."""
        self.name = name
        self.broker = broker
        self._oms = oms
        self._store = store
        self._report = report
        self.reconciliation: Reconciliation | None = None
        """What the last reconciliation found (None before the first succeeds)."""
        self.clock: Callable[[], datetime] = getattr(broker, "now", utc_now)
        self.covered: OrderedDict[str, None] = OrderedDict()
        """Orders filled completely when their submit returned, the positions
        refreshed after that: their fill events need no second refresh."""
        self.connected = False
        self.positions: dict[str, Position] = {}
        self.account: Account | None = None
        self.instruments: dict[str, Instrument] = {}
        self._on_feed_event = on_feed_event
        self.mux = quotes if quotes is not None else QuoteMux()
        self.feed = self.mux.add_broker(name, broker, on_event=on_feed_event)
        emulator = oms.emulator

        def watch(broker_name: str, quote: Quote) -> None:
            if emulator.watching:
                emulator.on_quote(broker_name, quote)

        self.feed.taps.append(watch)
        self.event_feed: FeedSupervisor[Order | Fill] = FeedSupervisor(
            f"{name} events",
            lambda _keys: broker.stream_events(),
            silence=broker.event_silence,
            keyed=False,
            on_event=self._event_feed_event,
        )
        self._session: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._reconciling = trio.Lock()

    @property
    def last_quotes(self) -> dict[str, Quote]:
        """The last quote of each instrument (streamed, or a first snapshot)."""
        return self.feed.last

    @property
    def quotes_received(self) -> int:
        return self.feed.received

    # -- subscriptions -------------------------------------------------------

    def unknown(self, instruments: Iterable[str]) -> list[str]:
        """Which of ``instruments`` this broker does not list (none if it lists nothing)."""
        if not self.instruments:
            return []
        return [i for i in instruments if i not in self.instruments]

    async def subscribe(
        self,
        runner: StrategyRunner,
        instruments: Iterable[str],
        *,
        confirm_within: float = SUBSCRIBE_TIMEOUT,
    ) -> None:
        """Deliver quotes of ``instruments`` to ``runner``; return once the venue
        subscription includes them, or after ``confirm_within`` seconds while the feed
        is down (the quotes then arrive when it is back).

        Raises ValueError for an instrument the broker does not list.
        """
        instruments = list(instruments)
        unknown = self.unknown(instruments)
        if unknown:
            raise ValueError(
                f"broker {self.name!r} does not list {', '.join(unknown)}; "
                f"it trades {', '.join(sorted(self.instruments))}"
            )
        for instrument in instruments:
            if instrument not in self.feed.last:
                # So that last_quote() answers from on_start on, before the stream does.
                try:
                    self.feed.seed(await self.broker.quote(instrument))
                except BrokerError as exc:
                    log.debug(
                        "no first quote", broker=self.name, instrument=instrument, error=str(exc)
                    )
        confirmed = await self.mux.subscribe(
            runner.inbox, instruments, broker=self.name, confirm_within=confirm_within
        )
        if not confirmed:
            log.warning(
                "quote subscription not confirmed; quotes arrive once the feed is back",
                broker=self.name,
                strategy=runner.name,
            )

    def unsubscribe(self, runner: StrategyRunner) -> None:
        """Stop delivering quotes to ``runner``; an instrument no one else
        follows leaves the venue subscription."""
        self.mux.leave(runner.inbox)

    # -- running -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, subscribe to events, and serve until cancelled; reconnect
        when :meth:`request_reconnect` asks (a rotated credential, say)."""
        try:
            await self._connect()
        except Exception as exc:  # a venue error, or a plugin's own (a missing file, say)
            raise EngineError(f"broker {self.name!r} failed to connect: {exc}") from exc
        started = False
        while True:
            with trio.CancelScope() as session:
                self._session = session
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(
                        functools.partial(
                            self.event_feed.run, self._on_broker_event, must_open_first=not started
                        )
                    )
                    # After the event stream is up, so nothing falls in between.
                    await self._reconcile(nursery)
                    nursery.start_soon(self.feed.run)
                    nursery.start_soon(self._poll_account)
                    if not started:
                        started = True
                        task_status.started()
            self._session = None
            self._nursery = None
            await self._reconnect()

    def request_reconnect(self, why: str) -> None:
        """Close and reopen the connection (streams resubscribe on their own)."""
        if self._session is not None:
            log.info("reconnecting", broker=self.name, reason=why)
            self._session.cancel()

    async def _connect(self) -> None:
        await self.broker.connect()
        self.connected = True
        self.instruments = {i.symbol: i for i in await self.broker.instruments()}
        self.feed.instruments = frozenset(self.instruments)
        await self.refresh_positions()
        self.account = await self.broker.account()
        log.info("broker connected", broker=self.name)

    async def _reconnect(self) -> None:
        self.connected = False
        with trio.move_on_after(10):
            try:
                await self.broker.close()
            except Exception:
                log.exception("broker close failed", broker=self.name)
        attempt = 0
        while True:
            try:
                await self._connect()
                return
            except Exception as exc:
                log.warning("reconnect failed", broker=self.name, error=str(exc))
            attempt += 1
            await _back_off(attempt)

    async def _reconcile(self, nursery: trio.Nursery) -> None:
        """Reconcile with the venue; orders to this broker wait until it succeeds
        (a failure is retried in the background, with backoff)."""
        if self._store is None:
            return
        self._oms.block(self.name, "reconciling with the venue")
        if await self._try_reconcile():
            return

        async def retry() -> None:
            attempt = 1
            while not await self._try_reconcile():
                await _back_off(attempt)
                attempt += 1

        nursery.start_soon(retry)

    async def _try_reconcile(self) -> bool:
        assert self._store is not None
        try:
            async with self._reconciling:  # one at a time: a reconnect may ask again
                self.reconciliation = await reconcile(
                    self.name, self.broker, self._oms, self._store, self._report
                )
                await self.refresh_positions()
        except BrokerError as exc:
            reason = f"reconciliation with the venue failed ({exc}); retrying"
            self._oms.block(self.name, reason)
            log.error(
                "reconciliation failed; no orders until it succeeds",
                broker=self.name,
                error=str(exc),
            )
            return False
        self._oms.unblock(self.name)
        return True

    def cover(self, client_order_id: str) -> None:
        """Note that the positions were refreshed after ``client_order_id`` filled completely."""
        covered = self.covered
        covered[client_order_id] = None
        if len(covered) > 1024:
            covered.popitem(last=False)

    async def refresh_positions(self) -> None:
        self.positions = {p.instrument: p for p in await self.broker.positions()}

    def _event_feed_event(self, event: FeedEvent) -> None:
        if self._on_feed_event is not None:
            self._on_feed_event(event)
        if event.kind is FeedEventKind.RECONNECTED and self._nursery is not None:
            # Whatever the venue did while the stream was down is caught up
            # from its fills and open orders, before new orders go to it.
            self._nursery.start_soon(self._reconcile, self._nursery)

    async def _on_broker_event(self, event: Order | Fill) -> None:
        if isinstance(event, Fill) and event.client_order_id not in self.covered:
            # The broker booked the fill before reporting it: the strategy sees
            # the position that includes it. A failed refresh must not cost the
            # fill itself.
            try:
                await self.refresh_positions()
            except BrokerError as exc:
                log.warning("positions not refreshed", broker=self.name, error=str(exc))
        self._oms.apply((event,))

    async def _poll_account(self) -> None:
        while True:
            await trio.sleep(ACCOUNT_POLL)
            try:
                self.account = await self.broker.account()
                await self.refresh_positions()
            except BrokerError as exc:
                log.debug("account poll failed", broker=self.name, error=str(exc))


async def _back_off(attempt: int) -> None:
    """Wait before retry ``attempt`` (1, 2, ...): the same backoff as the streams'."""
    await trio.sleep(DEFAULT_BACKOFF.delay(attempt, _RANDOM))


_RANDOM = random.Random()


class Engine:
    """One run of rick: brokers, strategies and the order manager over one store."""

    def __init__(
        self,
        *,
        store: Store,
        brokers: Mapping[str, Broker],
        strategies: Sequence[tuple[Strategy, str, tuple[str, ...]]],
        drain_timeout: float = 5.0,
        clock: Callable[[], datetime] = utc_now,
        audit: AuditTrail | None = None,
        large_trade: Decimal = DEFAULT_LARGE_TRADE,
        vault: Vault | None = None,
        risk: Charter | None = None,
        home: Path | None = None,
        modes: ModeGate | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
        notifiers: Sequence[Notifier] = (),
        proxy: ProxyConfig | None = None,
        api_keys: KeySource | None = None,
    ) -> None:
        """``strategies`` are ``(strategy, broker name, instruments)``. ``audit`` is
        the trail every order event goes to (None: no auditing); ``vault`` is
        watched for rotated broker credentials (None: no vault); ``modes`` is the
        trading mode (None: no mode applies; :meth:`from_config` reads it);
        ``stale_after`` is when a quote goes stale; ``notifiers`` are told when
        a feed drops or recovers; ``proxy`` starts the WebSocket proxy (None:
        none), checking clients' keys with ``api_keys``."""
        self.store = store
        self.drain_timeout = drain_timeout
        self.trail = audit
        self.vault = vault
        self.services: dict[str, BrokerService] = {}
        self.audit = EngineAudit(audit, services=self.services, large_trade=large_trade)
        self.risk = risk
        self.home = home
        self.halted: TradingSwitch | None = None
        """Set while `rick halt` is in force: no new orders, open ones canceled."""
        self._day_start: dict[str, tuple[date, Decimal]] = {}  # broker -> (UTC date, equity)
        self.modes = modes
        if modes is not None:  # ghost mode wraps real brokers; canary counts today's orders
            brokers = modes.prepare(brokers, store=store)
        self.oms = OrderManager(store, dict(brokers), self._dispatch, before_send=self._before_send)
        self.oms.emulator.last_quote = self._last_quote
        self.quotes = QuoteMux(stale_after=stale_after)
        """Every quote of the run: shared subscriptions, best quotes, staleness."""
        self.events = EventHub()
        """Every order and fill event, for the WebSocket proxy's clients."""
        self.notifications = Notifications(notifiers)
        self.proxy_config = proxy
        self.api_keys = api_keys
        self.proxy: QuoteProxy | None = None
        self._feeds_down: dict[str, FeedEvent] = {}
        self.services.update(
            {
                name: BrokerService(
                    name,
                    b,
                    self.oms,
                    store=store,
                    report=self.audit.system,
                    quotes=self.quotes,
                    on_feed_event=functools.partial(self._feed_event, name),
                )
                for name, b in brokers.items()
            }
        )
        self.runners = [
            StrategyRunner(
                strategy,
                broker=self.services[broker],
                instruments=instruments,
                oms=self.oms,
                # A simulated venue keeps its own time; strategies live by it.
                clock=getattr(brokers[broker], "now", clock),
            )
            for strategy, broker, instruments in strategies
        ]
        self._by_name = {r.name: r for r in self.runners}
        self._stop = trio.Event()
        self._startup_scopes: list[trio.CancelScope] = []
        self._force = trio.CancelScope()
        self.started = trio.Event()
        self.finished = trio.Event()
        self.stopped = False
        self.forced = False
        self.final_positions: dict[str, dict[str, Decimal]] = {}
        """Each broker's positions (instrument -> quantity) when the account was last saved."""
        self.stop_reason = ""

    @classmethod
    def from_config(
        cls,
        config: RickConfig,
        plugins: PluginSet,
        *,
        store: Store,
        drain_timeout: float = 5.0,
        audit: AuditTrail | None = None,
        vault: Vault | None = None,
        large_trade: Decimal = DEFAULT_LARGE_TRADE,
    ) -> Engine:
        """Build every configured broker and enabled strategy through the plugins.

        Each broker reads its credentials from ``vault`` at connect time.
        Raises :class:`EngineError` naming what is missing or refused its settings.
        """
        problems = plugins.problems(config.required_components())
        if problems:
            raise EngineError("cannot start:\n  " + "\n  ".join(problems))
        where = str(config.source) if config.source else "<embedded defaults>"
        brokers: dict[str, Broker] = {}
        audits: list[EngineAudit] = []  # the engine's, once it exists
        credentials: list[_AuditedCredentials] = []
        used = {s.broker for s in config.strategies.values() if s.enabled}
        modes = ModeGate.load(config.home, config.canary, canary_source=f"{where} [canary]")
        for name, cfg in config.brokers.items():
            if name not in used:
                log.info("broker not used by any enabled strategy; not connecting", broker=name)
                continue
            setup = ComponentSetup(
                name=name,
                options=cfg.options,
                credentials=(
                    _remember(
                        credentials,
                        _AuditedCredentials(vault.credentials_for(name), name, audits),
                    )
                    if vault
                    else NoCredentials(name)
                ),
                home=config.home,
                source=f"{where} [brokers.{name}]",
                real_orders=modes.started.real,
            )
            brokers[name] = _build(plugins, "broker", cfg.kind, setup, f"broker {name!r}")
        strategies: list[tuple[Strategy, str, tuple[str, ...]]] = []
        for name, scfg in config.strategies.items():
            if not scfg.enabled:
                continue
            ssetup = StrategySetup(
                name=name,
                broker=scfg.broker,
                instruments=scfg.instruments,
                params=scfg.params,
                source=f"{where} [strategies.{name}]",
            )
            strategy = _build(plugins, "strategy", scfg.kind, ssetup, f"strategy {name!r}")
            if not isinstance(strategy, Strategy):
                raise EngineError(
                    f"strategy {name!r}: kind {scfg.kind!r} built a "
                    f"{type(strategy).__name__}, not a rick_core.strategy.Strategy"
                )
            strategies.append((strategy, scfg.broker, scfg.instruments))
        notifiers: list[Notifier] = []
        for name, ncfg in config.notifiers.items():
            nsetup = ComponentSetup(
                name=name,
                options=ncfg.options,
                credentials=(
                    _remember(
                        credentials,
                        _AuditedCredentials(vault.credentials_for(name), name, audits),
                    )
                    if vault
                    else NoCredentials(name)
                ),
                home=config.home,
                source=f"{where} [notifiers.{name}]",
            )
            notifiers.append(_build(plugins, "notifier", ncfg.kind, nsetup, f"notifier {name!r}"))
        api_keys = None
        if config.proxy.enabled:
            from rick_core.security.apikeys import KeyChecker

            api_keys = KeyChecker(config.home, vault)  # the proxy audits each check
        engine = cls(
            store=store,
            brokers=brokers,
            strategies=strategies,
            drain_timeout=drain_timeout,
            audit=audit,
            vault=vault,
            large_trade=large_trade,
            risk=parse_risk(config.risk, where) if config.risk else None,
            home=config.home,
            modes=modes,
            stale_after=config.quotes.stale_after,
            notifiers=notifiers,
            proxy=config.proxy,
            api_keys=api_keys,
        )
        audits.append(engine.audit)
        for early in credentials:
            for record in early.early:
                engine.audit.offer(record)
        return engine

    # -- running -------------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        """Begin a graceful stop."""
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()
            for scope in self._startup_scopes:  # stopping while still starting
                scope.cancel()

    def force_stop(self) -> None:
        """Cancel everything now; interrupted orders are still recorded."""
        self.forced = True
        self.stop_reason = self.stop_reason or "forced"
        self._force.cancel()

    async def run(self, *, duration: float | None = None, handle_signals: bool = False) -> None:
        """Run until stopped (or ``duration`` seconds after start-up)."""
        try:
            async with trio.open_nursery() as audit_nursery:
                # The audit trail starts first and is closed last, after the
                # brokers: every record of the run is written before run() returns.
                if self.trail is not None:
                    await audit_nursery.start(self.trail.run)
                try:
                    with self._force:
                        async with trio.open_nursery() as root:
                            if handle_signals:
                                root.start_soon(self._watch_signals)
                            root.start_soon(self.audit.run)
                            root.start_soon(self._watch_audit)
                            try:
                                await self._serve(duration)
                            finally:
                                root.cancel_scope.cancel()
                                self.oms.flush()
                                with trio.CancelScope(shield=True) as cleanup:
                                    cleanup.deadline = trio.current_time() + min(
                                        self.drain_timeout, 5
                                    )
                                    await self._close_brokers()
                                if self.notifications:
                                    with trio.CancelScope(shield=True) as closing:
                                        closing.deadline = trio.current_time() + 3
                                        with trio.move_on_after(2):
                                            await self.notifications.flush()
                                        await self.notifications.aclose()
                finally:
                    # No deadline: every record is written before rick exits, even
                    # after a forced stop (a hung disk is the one thing that can hold it).
                    with trio.CancelScope(shield=True):
                        await self._close_audit()
                    audit_nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Nurseries wrap errors in groups; a start-up failure is one clear error.
            startup, _ = group.split(EngineError)
            if startup is None:
                raise
            raise first_leaf(startup) from group
        self.stopped = True
        self.finished.set()
        log.info("engine stopped", reason=self.stop_reason or "done")

    async def _serve(self, duration: float | None) -> None:
        async with trio.open_nursery() as services:
            await services.start(self.oms.run)
            await services.start(self.oms.emulator.run)
            services.start_soon(self._checkpoints)
            if self.notifications:
                services.start_soon(self.notifications.run)
            self._apply_switch(read_switch(self.home) if self.home else None, cancel=False)
            with self._until_stop():
                for service in self.services.values():
                    await services.start(service.run)
                self._check_instruments()
                # The equity at start is what `rick pnl` measures the run against.
                await self._save_accounts()
            if not self._stop.is_set():
                if self.proxy_config is not None and self.proxy_config.enabled:
                    await self._start_proxy(services)
                services.start_soon(self._save_accounts_every, ACCOUNT_SAVE_EVERY)
                services.start_soon(self._watch_vault)
                services.start_soon(self._watch_switch)
                if self.modes is not None:
                    services.start_soon(self.modes.watch)
            strategies_scope = trio.CancelScope()
            with strategies_scope:
                async with trio.open_nursery() as strategies:
                    with self._until_stop():
                        for runner in self.runners:
                            await strategies.start(runner.run)
                    if not self._stop.is_set():
                        self.started.set()
                        log.info(
                            "engine started",
                            brokers=sorted(self.services),
                            strategies=[r.name for r in self.runners],
                            mode=self.modes.summary() if self.modes else None,
                        )
                        self.audit.system(
                            EventType.ENGINE_STARTED,
                            {
                                "brokers": sorted(self.services),
                                "strategies": [r.name for r in self.runners],
                                "mode": self.modes.summary() if self.modes else None,
                            },
                        )
                        with trio.move_on_after(math.inf if duration is None else duration):
                            await self._stop.wait()
                    self.stop_reason = self.stop_reason or "duration reached"
                    log.info("engine stopping", reason=self.stop_reason)
                    self.oms.stop_accepting()
                    # One deadline for the whole drain: strategies, broker calls, snapshots.
                    deadline = trio.current_time() + self.drain_timeout
                    strategies_scope.deadline = deadline
                    for runner in self.runners:
                        runner.stop()
            if strategies_scope.cancelled_caught:
                log.warning("strategies did not finish within the drain deadline; cancelled")
            with trio.move_on_at(deadline):
                await self.oms.wait_idle()
            self.oms.flush()
            with trio.move_on_at(max(deadline, trio.current_time() + 1.0)):
                await self._save_accounts()
            services.cancel_scope.cancel()

    async def _start_proxy(self, nursery: trio.Nursery) -> None:
        """Serve quotes and events over WebSocket; a port already taken is
        logged, and trading goes on without the proxy."""
        from rick_core.api.ws import ProxyError, QuoteProxy

        assert self.proxy_config is not None
        config = self.proxy_config
        self.proxy = QuoteProxy(
            self.quotes, self.events, config, keys=self.api_keys, audit=self.audit.offer
        )
        try:
            port = await nursery.start(self.proxy.serve)
        except ProxyError as exc:  # the port is taken, say: trading goes on
            self.proxy = None
            log.error("running without the WebSocket proxy", error=str(exc))
            return
        log.info("WebSocket proxy listening", url=f"ws://{config.host}:{port}")

    @contextlib.contextmanager
    def _until_stop(self) -> Iterator[trio.CancelScope]:
        """A scope that a stop request cancels: start-up never outlives a Ctrl-C."""
        with trio.CancelScope() as scope:
            if self._stop.is_set():
                scope.cancel()
            self._startup_scopes.append(scope)
            try:
                yield scope
            finally:
                self._startup_scopes.remove(scope)

    def _check_instruments(self) -> None:
        for runner in self.runners:
            service = self.services[runner.broker]
            unknown = service.unknown(runner.instruments)
            if unknown:
                raise EngineError(
                    f"strategy {runner.name!r}: broker {service.name!r} does not list "
                    f"{', '.join(unknown)}; it trades {', '.join(sorted(service.instruments))}"
                )

    async def _watch_switch(self) -> None:
        """Follow `rick halt` / `rick resume` (run in another process) within a second."""
        if self.home is None:
            return
        path = self.home / STATE_FILENAME
        seen: float | None = None
        while True:
            try:
                stamp = path.stat().st_mtime_ns
            except FileNotFoundError:
                stamp = None
            if stamp != seen:
                seen = stamp
                await self._cancel_all(self._apply_switch(read_switch(self.home), cancel=True))
            await trio.sleep(SWITCH_POLL)

    def _apply_switch(self, switch: TradingSwitch | None, *, cancel: bool) -> bool:
        """Take the switch's state; True when open orders must now be canceled."""
        halted = switch is not None and switch.halted
        if halted and self.halted is None:
            assert switch is not None
            self.halted = switch
            log.warning("trading halted", reason=switch.reason, by=switch.actor)
            self.audit.system(
                EventType.TRADING_HALTED,
                {"reason": switch.reason, "by": switch.actor},
                Severity.WARNING,
            )
            return cancel
        if not halted and self.halted is not None:
            self.halted = None
            log.info("trading resumed", by=switch.actor if switch else "")
            self.audit.system(
                EventType.TRADING_RESUMED, {"by": switch.actor if switch else "", "reason": ""}
            )
        return False

    async def _cancel_all(self, needed: bool) -> None:
        if not needed:
            return
        for order in self.oms.all_working():
            try:
                await self.oms.cancel(None, order)
            except BrokerError as exc:
                log.error(
                    "halt: could not cancel an order",
                    client_order_id=order.client_order_id,
                    error=str(exc),
                )

    async def _watch_vault(self) -> None:
        """Reconnect a broker whose credentials were rotated (by `rick creds` in
        another process, say): it reads the new value as it connects."""
        vault = self.vault
        if vault is None:
            return
        seen: dict[str, str] = {}
        while True:
            for name, service in self.services.items():
                try:
                    fingerprint = await trio.to_thread.run_sync(
                        vault.fingerprint, name, abandon_on_cancel=True
                    )
                except Exception as exc:  # a vault being rewritten, or damaged
                    log.warning("cannot read the vault", error=str(exc))
                    continue
                if name in seen and seen[name] != fingerprint:
                    service.request_reconnect("credentials rotated")
                seen[name] = fingerprint
            await trio.sleep(VAULT_POLL)

    async def _close_audit(self) -> None:
        if self.trail is None:
            return
        self.audit.system(
            EventType.ENGINE_STOPPED,
            {"reason": self.stop_reason or "done", "forced": self.forced},
        )
        try:
            await self.audit.flush_backlog()
            await self.trail.aclose()
        except Exception as exc:
            log.critical("the audit log could not be closed cleanly", error=str(exc))
        self._keep_unwritten()

    def _keep_unwritten(self) -> None:
        """Records the audit log could not take go to a file beside it, never lost."""
        trail = self.trail
        if trail is None:
            return
        records = [*trail.unwritten, *self.audit.backlog()]
        if not records:
            return
        stamp = utc_now().strftime("%Y%m%dT%H%M%S")
        path = trail.log.path.with_name(f"audit-unwritten-{stamp}.jsonl")
        try:
            with path.open("a", encoding="utf-8") as out:
                for record in records:
                    out.write(record_to_json(record) + "\n")
                out.flush()
                os.fsync(out.fileno())
            log.critical(
                "audit records the log could not take were saved beside it",
                path=str(path),
                records=len(records),
            )
        except OSError as exc:
            for record in records:  # the last resort: the log stream
                log.critical("unwritten audit record", record=record_to_json(record))
            log.critical("cannot save unwritten audit records", path=str(path), error=str(exc))

    async def _watch_audit(self) -> None:
        if self.trail is None:
            return
        await self.trail.failed.wait()
        log.critical(
            "the audit log cannot be written: no new orders until it can",
            reason=self.trail.failure,
        )

    async def _save_accounts_every(self, seconds: float) -> None:
        while True:
            await trio.sleep(seconds)
            await self._save_accounts()

    async def _checkpoints(self) -> None:
        # Commits on the order path never pay for a checkpoint: a worker thread does.
        self.store.defer_checkpoints()
        while True:
            await trio.sleep(CHECKPOINT_EVERY)
            # Abandoned on cancel: a stop never waits for a checkpoint in progress.
            await trio.to_thread.run_sync(self.store.checkpoint, abandon_on_cancel=True)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if not self._stop.is_set():
                    self.request_stop(signal.Signals(signum).name)
                else:
                    log.warning("second signal: stopping now")
                    self.force_stop()

    async def _save_accounts(self) -> None:
        for service in self.services.values():
            if not service.connected:
                continue
            try:
                service.account = await service.broker.account()
                self.store.save_account(service.account)
                self.final_positions[service.name] = {
                    p.instrument: p.quantity for p in await service.broker.positions()
                }
            except BrokerError as exc:
                log.warning("could not read the account", broker=service.name, error=str(exc))

    async def _close_brokers(self) -> None:
        for service in self.services.values():
            try:
                await service.broker.close()
            except Exception:
                log.exception("broker close failed", broker=service.name)
            service.connected = False

    # -- events --------------------------------------------------------------

    _FEED_AUDIT: Final = {
        FeedEventKind.DISCONNECTED: EventType.FEED_DISCONNECTED,
        FeedEventKind.STALE: EventType.FEED_STALE,
        FeedEventKind.RECONNECTED: EventType.FEED_RECONNECTED,
        FeedEventKind.RECOVERED: EventType.FEED_RECOVERED,
    }

    def _feed_event(self, broker: str, event: FeedEvent) -> None:
        """A stream dropped, went silent, came back: audit it and tell people.

        Once per outage: the first failure, the first reconnect, the recovery
        (with how long it lasted). A venue down for an hour makes one record of
        each, not one per reconnect attempt; the log has every attempt."""
        down = self._feeds_down
        kind = event.kind
        if kind in (FeedEventKind.DISCONNECTED, FeedEventKind.STALE):
            if event.feed in down:
                return
            down[event.feed] = event
        elif kind is FeedEventKind.RECONNECTED:
            first = down.get(event.feed)
            if first is None or first.kind is FeedEventKind.RECONNECTED:
                return
            down[event.feed] = event
        elif down.pop(event.feed, None) is None:
            return
        details: dict[str, Any] = {"broker": broker, "feed": event.feed, "reason": event.reason}
        if event.outage is not None:
            details["outage_seconds"] = round(event.outage, 3)
        if event.attempt:
            details["attempts"] = event.attempt
        failing = kind in (FeedEventKind.DISCONNECTED, FeedEventKind.STALE)
        self.audit.system(
            self._FEED_AUDIT[kind], details, Severity.WARNING if failing else Severity.INFO
        )
        if kind is FeedEventKind.RECONNECTED:
            return  # people hear of the recovery, once data flows again
        outage = f" after {event.outage:.1f} s" if event.outage is not None else ""
        text = event.reason if failing else f"data flows again{outage}"
        self.notifications.notify(
            Notification(
                title=f"{event.feed}: {kind.value}",
                text=text,
                level=Level.WARNING if failing else Level.INFO,
                data=details,
            )
        )

    def _last_quote(self, broker: str, instrument: str) -> Quote | None:
        service = self.services.get(broker)
        return None if service is None else service.last_quotes.get(instrument)

    async def _before_send(self, strategy: str, order: Order) -> None:
        """The halt switch, the trading mode, the risk charter's pre-trade check,
        then the audit record, then the send."""
        if self.halted is not None:
            raise RiskDenied(
                ReasonCode.HALTED,
                f"trading is halted ({self.halted.reason}, by {self.halted.actor}); "
                "`rick resume` lifts it",
            )
        modes = self.modes
        # A trigger order rick fired was capped when placed: off still stops it.
        capped = not self.oms.emulator.is_child(order.client_order_id)
        if modes is not None:
            modes.check(order, caps=capped)  # the trading mode: off, ghost, canary caps
        # A fired trigger order was checked when it was placed: a stop must not
        # be held back now (by the order rate, say).
        child = self.oms.emulator.is_child(order.client_order_id)
        if order.request.type is OrderType.MARKET and not child:
            try:  # a market order trades at whatever the price is now: know it
                self.quotes.check_fresh(order.broker, order.instrument)
            except StalePrice as exc:
                raise RiskDenied(ReasonCode.STALE_PRICE, str(exc)) from None
        if self.risk is not None and not child:
            self.risk.check(await self._risk_context(strategy, order))
        if modes is not None and capped:
            modes.admit(order)  # checked again and counted, with no await between
        await self.audit.before_send(strategy, order)

    async def _risk_context(self, strategy: str, order: Order) -> RiskContext:
        service = self.services[order.broker]
        request = order.request
        position = service.positions.get(request.instrument)
        price = request.entry_price
        if price is None:
            quote = service.last_quotes.get(request.instrument)
            if quote is None:
                quote = await service.broker.quote(request.instrument)
            price = quote.price_for(request.side)
        instrument = service.instruments.get(request.instrument)
        account = service.account
        # The venue's clock (a simulated broker keeps its own), as strategies see it.
        now = service.clock()
        rate = Decimal(1)
        daily_pnl = Decimal(0)
        if account is not None:
            quote_currency = instrument.quote_currency if instrument else account.currency
            rate = EngineAudit.rate(service, quote_currency, account.currency) or Decimal(1)
            today = now.date()
            day, start = self._day_start.get(order.broker, (None, account.equity))
            if day != today:  # the first look of a UTC day sets its starting equity
                self._day_start[order.broker] = (today, account.equity)
                start = account.equity
            daily_pnl = account.equity - start
        return RiskContext(
            request=request,
            strategy=strategy,
            broker=order.broker,
            reference_price=price,
            position=position.quantity if position is not None else Decimal(0),
            open_positions=len(service.positions),
            daily_pnl=daily_pnl,
            rate_to_account=rate,
            now=now,
        )

    def _dispatch(self, owner: str | None, event: Order | Fill) -> None:
        self.audit.observe(owner, event)
        # Debug level: the store holds every order and fill, and a log line each
        # would cost more than the rest of the order path.
        if _debug_logging():
            kind = "fill" if isinstance(event, Fill) else "order"
            log.debug(kind, strategy=owner, broker=event.broker, **describe(event))
        if self.events:
            self.events.publish(owner, event)
        if owner is not None:
            runner = self._by_name.get(owner)
            if runner is not None and runner.running:
                runner.inbox.put_event(event)
            return
        # A venue-made order (a margin close-out, say): every strategy trading
        # that instrument on that broker hears of it.
        for runner in self.runners:
            if runner.broker == event.broker and event.instrument in runner.instruments:
                runner.inbox.put_event(event)

    # -- status --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A summary for the live status display and status log lines."""
        brokers = []
        for service in self.services.values():
            account = service.account
            brokers.append(
                {
                    "broker": service.name,
                    "connected": service.connected,
                    "equity": None if account is None else account.equity,
                    "currency": None if account is None else account.currency,
                    "positions": len(service.positions),
                    "quotes": service.quotes_received,
                    "quote_feed": service.feed.supervisor.healthy,
                    "event_feed": service.event_feed.healthy,
                    "subscribed": len(service.feed.subscribed),
                }
            )
        return {
            "brokers": brokers,
            "strategies": {
                r.name: {
                    "running": r.running,
                    "errors": r.errors,
                    # quotes dropped because the strategy fell 1,024 behind: it is too slow
                    "quotes_conflated": r.inbox.quotes_conflated,
                }
                for r in self.runners
            },
            "orders": self.oms.orders_sent,
            "fills": self.oms.fills_seen,
            "rejections": self.oms.rejections,
            "halted": self.audit.failure,
            "mode": self.modes.summary() if self.modes else None,
            "stale": [f"{broker}:{instrument}" for broker, instrument, _ in self.quotes.stale()],
            "proxy": self.proxy.stats() if self.proxy is not None else None,
        }


def _debug_logging() -> bool:
    return logging.getLogger("rick").isEnabledFor(logging.DEBUG)


def _remember(kept: list[_AuditedCredentials], item: _AuditedCredentials) -> _AuditedCredentials:
    kept.append(item)
    return item


class _AuditedCredentials:
    """A broker's vault credentials; each value read is an audit record."""

    def __init__(self, inner: Credentials, component: str, audit: list[EngineAudit]) -> None:
        self._inner = inner
        self._component = component
        self._audit = audit
        self.early: list[AuditRecord] = []

    def get(self, name: str) -> str:
        value = self._inner.get(name)
        record = AuditRecord(
            type=EventType.CREDENTIAL_ACCESSED,
            actor=ENGINE,
            details={"component": self._component, "name": name},
        )
        if self._audit:
            for audit in self._audit:
                audit.offer(record)
        else:  # read while the engine is still being built: audited once it is
            self.early.append(record)
        return value

    def names(self) -> Sequence[str]:
        return self._inner.names()


def first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first exception in ``group``, however deeply nested."""
    first = group.exceptions[0]
    return first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _build(plugins: PluginSet, kind: Any, name: str, setup: Any, what: str) -> Any:
    try:
        return plugins.build(kind, name, setup)
    except Exception as exc:
        raise EngineError(f"{what}: {exc}") from exc
