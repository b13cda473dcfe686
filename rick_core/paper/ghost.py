"""The ghost broker: a real broker's live market, with simulated orders.

In ghost mode (``rick mode ghost``, the default) the engine wraps every broker
other than the built-in paper broker in a :class:`GhostBroker`. It passes
``connect``, ``close``, ``instruments``, ``quote`` and ``stream_quotes``
through to the real broker, and simulates everything that would change or
report the account (orders, cancels, protection, open orders, positions, the
account itself, the event stream) with a
:class:`~rick_core.paper.account.PaperAccount` fed by the real broker's quotes.
Nothing is ever sent to the venue.

The ghost account starts with the real account's currency and balance (the
paper defaults when the venue reports none) and is kept between runs in
``$RICK_HOME/ghost/<broker>.json`` (mode 0600), so positions and resting orders
survive a restart. What the ghost account reports is marked: venue order ids
start with ``ghost-``, fill ids with ``ghost-<run>-``, and the reason of an
order the ghost account refuses with ``ghost:``; so the store tells simulated
orders from real ones (:func:`is_ghost_order`), and the canary cap never
counts a simulated order.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import attrs
import structlog
import trio

from rick_core.broker import (
    KEEP,
    Broker,
    BrokerError,
    BrokerEvent,
    Disconnected,
    Heartbeat,
    Keep,
    NotFound,
    OrderRejected,
    Unsupported,
)
from rick_core.model import (
    Account,
    Fill,
    Instrument,
    Order,
    OrderRequest,
    Position,
    Quote,
    utc_now,
)
from rick_core.paper.account import PaperAccount, PaperSettings
from rick_core.paper.broker import EventFeed

__all__ = ["GHOST_ID_PREFIX", "GHOST_REJECT_PREFIX", "GhostBroker", "is_ghost_order"]

GHOST_ID_PREFIX: Final = "ghost-"
"""Starts every venue order id and fill id the ghost account makes."""
GHOST_REJECT_PREFIX: Final = "ghost: "
"""Starts the reason of every order the ghost account refuses."""

log = structlog.get_logger("rick.ghost")


def is_ghost_order(order: Order) -> bool:
    """Whether a stored order was simulated by a ghost broker (never sent to a venue)."""
    return (order.venue_order_id or "").startswith(GHOST_ID_PREFIX) or (
        order.reject_reason or ""
    ).startswith(GHOST_REJECT_PREFIX)


class GhostBroker(Broker):
    """``real``'s market data, a paper account's orders. ``name`` is the broker's
    name in rick.toml; ``home`` keeps the ghost account between runs (None: not
    kept); ``settings`` replaces the account settings taken from the real account."""

    def __init__(
        self,
        real: Broker,
        *,
        name: str | None = None,
        home: Path | None = None,
        settings: PaperSettings | None = None,
    ) -> None:
        self.real = real
        self.name = name or real.name
        self.capabilities = real.capabilities
        self.symbols = real.symbols
        # The quotes (and their heartbeats) are the real broker's; the events are
        # simulated here and never go silent, so they need no watchdog.
        self.quote_silence = real.quote_silence
        self.event_silence = None
        self._settings = settings
        self._state_path = None if home is None else home / "ghost" / f"{self.name}.json"
        self._account: PaperAccount | None = None
        self._instruments: dict[str, Instrument] = {}
        self._streaming: Counter[str] = Counter()
        self._events = EventFeed(broker=self.name)
        self._run = secrets.token_hex(4)  # fill ids stay unique across runs

    @property
    def account_state(self) -> PaperAccount | None:
        """The simulated account (None before the first connect)."""
        return self._account

    def now(self) -> datetime:
        """The real broker's clock if it keeps one (a simulated venue), else UTC now."""
        clock = getattr(self.real, "now", None)
        return clock() if callable(clock) else utc_now()

    # -- lifecycle -----------------------------------------------------------

    async def connect(self) -> None:
        await self.real.connect()
        self.quote_silence = self.real.quote_silence  # a plugin may set it on connect
        self._instruments = {i.symbol: i for i in await self.real.instruments()}
        if self._account is None:  # a reconnect keeps the ghost account as it is
            settings = self._settings or await self._settings_from_real()
            instruments = list(self._instruments.values())
            self._account = self._restore(settings, instruments) or PaperAccount(
                self.name, settings, instruments
            )
            log.info("ghost mode: orders are simulated", broker=self.name)

    async def close(self) -> None:
        try:
            self._save()
        finally:
            self._events.end()
            await self.real.close()

    async def _settings_from_real(self) -> PaperSettings:
        try:
            account = await self.real.account()
            if account.balance > 0:
                return PaperSettings(currency=account.currency, balance=account.balance)
            return PaperSettings(currency=account.currency)
        except (BrokerError, ValueError) as exc:
            log.warning(
                "ghost account: the real account cannot be read; paper defaults used",
                broker=self.name,
                error=str(exc),
            )
            return PaperSettings()

    def _restore(
        self, settings: PaperSettings, instruments: list[Instrument]
    ) -> PaperAccount | None:
        path = self._state_path
        if path is None or not path.exists():
            return None
        try:
            data = json.loads(path.read_text("utf-8"))
            return PaperAccount.restore(self.name, settings, instruments, data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "ghost account cannot be restored; starting a fresh one (the old file is "
                "replaced when rick stops)",
                broker=self.name,
                path=str(path),
                error=str(exc),
            )
            return None

    def _save(self) -> None:
        if self._state_path is None or self._account is None:
            return
        from rick_core.engine.modes import _write_private

        try:
            _write_private(self._state_path, self._account.snapshot())
        except OSError as exc:
            log.warning("ghost account not saved", broker=self.name, error=str(exc))

    def _live(self) -> PaperAccount:
        if self._account is None:
            raise Disconnected("the ghost broker is not connected", broker=self.name)
        return self._account

    # -- market data: the real broker's ------------------------------------

    async def instruments(self) -> list[Instrument]:
        return await self.real.instruments()

    async def quote(self, instrument: str) -> Quote:
        quote = await self.real.quote(instrument)
        self._feed(quote)
        return quote

    @asynccontextmanager
    async def stream_quotes(
        self, instruments: Sequence[str]
    ) -> AsyncIterator[AsyncIterator[Quote | Heartbeat]]:
        async with self.real.stream_quotes(instruments) as quotes:
            self._streaming.update(instruments)
            fed = self._fed(quotes)
            try:
                yield fed
            finally:
                self._streaming.subtract(instruments)
                self._streaming += Counter()  # drop the zeros
                await fed.aclose()

    async def _fed(
        self, quotes: AsyncIterator[Quote | Heartbeat]
    ) -> AsyncGenerator[Quote | Heartbeat, None]:
        async for quote in quotes:
            if not isinstance(quote, Heartbeat):
                self._feed(quote)
            yield quote  # a heartbeat too: the engine's watchdog counts it

    def _feed(self, quote: Quote) -> None:
        if self._account is not None:
            self._publish(self._account.on_quote(quote))

    async def _fresh_quotes(self, instrument: str) -> None:
        """Make sure the ghost account prices ``instrument`` at the market now: a
        quote from the real broker unless its stream already delivers them, and
        one of the pair that converts its currency to the account's if missing."""
        account = self._live()
        wanted = []
        if instrument not in self._streaming or account.last_quote(instrument) is None:
            wanted.append(instrument)
        spec = self._instruments.get(instrument)
        currency = account.settings.currency
        if spec is not None and spec.quote_currency != currency:
            pairs = [f"{spec.quote_currency}_{currency}", f"{currency}_{spec.quote_currency}"]
            if all(account.last_quote(p) is None for p in pairs):
                wanted += [p for p in pairs if p in self._instruments][:1]
        for symbol in wanted:
            try:
                self._feed(await self.real.quote(symbol))
            except BrokerError as exc:
                raise OrderRejected(
                    f"{GHOST_REJECT_PREFIX}no quote of {symbol} from the venue to simulate "
                    f"the order at ({exc})",
                    broker=self.name,
                ) from None

    # -- orders: simulated ---------------------------------------------------

    async def place_order(self, request: OrderRequest) -> Order:
        account = self._live()
        reason = self.capabilities.supports(request)
        if reason is not None:
            raise Unsupported(reason, broker=self.name)
        await self._fresh_quotes(request.instrument)
        try:
            order, events = account.submit(request, self.now())
        except OrderRejected as exc:
            raise OrderRejected(
                f"{GHOST_REJECT_PREFIX}{exc.reason}", broker=self.name, code=exc.code
            ) from None
        self._publish(events)
        return self._mark(order)

    async def cancel_order(self, order: Order) -> Order:
        await trio.lowlevel.checkpoint()
        account = self._live()
        try:
            result, events = account.cancel(order.client_order_id, self.now())
        except NotFound:
            raise NotFound(
                f"{order.client_order_id} is not a simulated order: in ghost mode rick sends "
                "nothing to the venue; cancel a real order at the venue, or in live mode",
                broker=self.name,
            ) from None
        self._publish(events)
        return self._mark(result)

    async def replace_order_protection(
        self,
        order: Order,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
    ) -> Order:
        await trio.lowlevel.checkpoint()
        result, events = self._live().replace_order_protection(
            order.client_order_id, stop_loss=stop_loss, take_profit=take_profit, now=self.now()
        )
        self._publish(events)
        return self._mark(result)

    async def replace_position_protection(
        self,
        instrument: str,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
    ) -> Position:
        await trio.lowlevel.checkpoint()
        return self._live().replace_position_protection(
            instrument, stop_loss=stop_loss, take_profit=take_profit, now=self.now()
        )

    async def open_orders(self, instrument: str | None = None) -> list[Order]:
        return [self._mark(o) for o in self._live().open_orders(instrument)]

    async def get_order(self, client_order_id: str) -> Order:
        try:
            return self._mark(self._live().get_order(client_order_id))
        except NotFound:
            # A real order of an earlier run: looking it up sends nothing.
            return await self.real.get_order(client_order_id)

    async def fills(self, since: datetime) -> list[Fill]:
        """Executions at the venue since ``since`` (reconciliation): the real broker's,
        since simulated fills are reported as they happen. Reading sends nothing."""
        return await self.real.fills(since)

    # -- the account: simulated ----------------------------------------------

    async def positions(self) -> list[Position]:
        return self._live().positions()

    async def account(self) -> Account:
        return self._live().account(self.now())

    def stream_events(
        self,
    ) -> AbstractAsyncContextManager[AsyncIterator[BrokerEvent | Heartbeat]]:
        self._live()
        return self._events.stream()

    # -- marking -------------------------------------------------------------

    def _publish(self, events: Sequence[Order | Fill]) -> None:
        if not events:
            return
        marked = [self._mark(e) if isinstance(e, Order) else self._mark_fill(e) for e in events]
        self._events.publish(marked)

    def _mark(self, order: Order) -> Order:
        venue_id = order.venue_order_id
        if venue_id is None or venue_id.startswith(GHOST_ID_PREFIX):
            return order
        return attrs.evolve(order, venue_order_id=GHOST_ID_PREFIX + venue_id)

    def _mark_fill(self, fill: Fill) -> Fill:
        changes: dict[str, Any] = {"fill_id": f"{GHOST_ID_PREFIX}{self._run}-{fill.fill_id}"}
        if fill.venue_order_id is not None and not fill.venue_order_id.startswith(GHOST_ID_PREFIX):
            changes["venue_order_id"] = GHOST_ID_PREFIX + fill.venue_order_id
        return attrs.evolve(fill, **changes)
