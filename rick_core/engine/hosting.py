"""Running strategies: one task per strategy, its inbox, and the context it acts through."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Any

import attrs
import structlog
import trio

from rick_core.broker import KEEP, BrokerError, Keep
from rick_core.engine.quotes import QUOTE_BUFFER, QuoteQueue
from rick_core.model import (
    Account,
    BestQuote,
    Fill,
    Instrument,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Quote,
    Side,
    TimeInForce,
    check_symbol,
    new_client_order_id,
    utc_now,
)
from rick_core.strategy import Strategy, TradingHalted

if TYPE_CHECKING:
    from rick_core.engine.oms import OrderManager
    from rick_core.engine.runtime import BrokerService

__all__ = ["StrategyRunner", "split_quantity"]

log = structlog.get_logger("rick.strategy")


def split_quantity(
    total: Decimal, max_quantity: Decimal | None, instrument: Instrument | None
) -> list[Decimal]:
    """``total`` as child sizes of at most ``max_quantity`` each, every one a
    multiple of the instrument's size increment (and at least its minimum size
    where it has one); the first children carry the larger sizes."""
    if max_quantity is None or max_quantity <= 0:
        raise ValueError(f"max_quantity must be greater than zero, got {max_quantity}")
    step = instrument.size_increment if instrument is not None else None
    if step is not None:
        max_quantity = (max_quantity // step) * step
        if max_quantity <= 0:
            raise ValueError(f"max_quantity is below the size increment {step}")
    count = (total / max_quantity).to_integral_value(rounding=ROUND_CEILING)
    if step is None:
        sizes = [max_quantity] * int(count)
        sizes[-1] = total - max_quantity * (count - 1)
    else:
        units = total / step
        if units != units.to_integral_value():
            raise ValueError(f"{total} is not a multiple of the size increment {step}")
        each, extra = divmod(int(units), int(count))
        sizes = [(each + (1 if i < extra else 0)) * step for i in range(int(count))]
    minimum = instrument.min_size if instrument is not None else None
    if minimum is not None and any(size < minimum for size in sizes):
        raise ValueError(f"a child of {min(sizes)} would be below the minimum size {minimum}")
    return sizes


class _Inbox:
    """Events for one strategy: order events in a FIFO (never dropped), quotes in
    a :class:`~rick_core.engine.quotes.QuoteQueue` (past 1,024 behind, the latest
    per instrument: a slow strategy sees fresh prices, not a backlog), timers as
    a set of due names."""

    __slots__ = ("_events", "_quotes", "_timers", "_wakeup", "closed")

    def __init__(self) -> None:
        self._events: deque[Order | Fill] = deque()
        self._quotes = QuoteQueue(QUOTE_BUFFER)
        self._timers: dict[str, None] = {}
        self._wakeup = trio.Event()
        self.closed = False

    @property
    def quotes_conflated(self) -> int:
        return self._quotes.skipped

    def put_event(self, event: Order | Fill) -> None:
        self._events.append(event)
        self._wakeup.set()

    def put_quote(self, quote: Quote) -> None:
        self._quotes.put(quote)
        self._wakeup.set()

    def put_timer(self, name: str) -> None:
        self._timers[name] = None
        self._wakeup.set()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()

    async def take(self) -> Order | Fill | Quote | str | None:
        """The next thing to handle: events first, then quotes (oldest first),
        then timers; None once closed and empty of events."""
        while True:
            if self._events:
                return self._events.popleft()
            if self.closed:
                return None
            if self._quotes:
                quote: Quote = self._quotes.pop()
                return quote
            if self._timers:
                name = next(iter(self._timers))
                del self._timers[name]
                return name
            self._wakeup = trio.Event()
            await self._wakeup.wait()


class _Watch:
    """A strategy's hold on best quotes: subscribed everywhere, delivered nowhere
    (the strategy reads them with ``best_quote``)."""

    __slots__ = ()

    def put_quote(self, quote: object) -> None:
        return None


_HANDLERS = {Quote: "on_quote", Fill: "on_fill", Order: "on_order"}


def _price(value: Decimal | int | str | None) -> Decimal | None:
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        raise TypeError(f"prices are Decimal, not float: write Decimal({str(value)!r})")
    return Decimal(value)


class StrategyRunner:
    """Hosts one strategy: feeds it events from its inbox, one at a time, and
    implements its :class:`~rick_core.strategy.StrategyContext`."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        broker: BrokerService,
        instruments: tuple[str, ...],
        oms: OrderManager,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.strategy = strategy
        self._service = broker
        self._oms = oms
        self._clock = clock
        self._instruments = instruments
        self.inbox = _Inbox()
        self._watch = _Watch()
        self._log = structlog.get_logger("rick.strategy").bind(strategy=strategy.name)
        self._timers: list[tuple[float, str]] = []
        self._nursery: trio.Nursery | None = None
        self.errors = 0
        self.running = False
        strategy.ctx = self

    # -- running -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, report started, call ``on_start``, then handle the inbox
        until it is closed; then call ``on_stop``."""
        await self._service.subscribe(self, self._instruments)
        # Started once subscribed: a slow on_start (one that places orders, say)
        # holds up neither the other strategies nor the engine.
        task_status.started()
        self.running = True
        try:
            try:
                await self.strategy.on_start()
            except TradingHalted as exc:
                self._log.info("order refused", reason=str(exc))
            except Exception:
                self._log.exception("strategy failed to start; it will not run")
                self.errors += 1
                return
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for every, name in self._timers:
                    nursery.start_soon(self._tick, every, name)
                await self._loop()
                nursery.cancel_scope.cancel()
            try:
                await self.strategy.on_stop()
            except Exception:
                self._log.exception("strategy on_stop failed")
        finally:
            self.running = False
            self._service.unsubscribe(self)
            self._service.mux.unsubscribe(self._watch)

    async def _loop(self) -> None:
        strategy = self.strategy
        take = self.inbox.take
        while True:
            item = await take()
            if item is None:
                break
            try:
                if isinstance(item, Quote):
                    await strategy.on_quote(item)
                elif isinstance(item, Fill):
                    await strategy.on_fill(item)
                elif isinstance(item, Order):
                    await strategy.on_order(item)
                else:
                    await strategy.on_timer(item)
            except TradingHalted as exc:
                self._log.info("order refused", reason=str(exc))
            except Exception:
                self.errors += 1
                self._log.exception(
                    "strategy handler failed", handler=_HANDLERS.get(type(item), "on_timer")
                )

    def stop(self) -> None:
        """Let the strategy finish what is in its inbox, then run ``on_stop`` and end."""
        self.inbox.close()

    async def _tick(self, every: float, name: str) -> None:
        next_at = trio.current_time() + every
        while True:
            await trio.sleep_until(next_at)
            self.inbox.put_timer(name)
            next_at += every

    # -- the context ---------------------------------------------------------

    @property
    def name(self) -> str:
        return self.strategy.name

    @property
    def broker(self) -> str:
        return self._service.name

    @property
    def instruments(self) -> tuple[str, ...]:
        return self._instruments

    @property
    def log(self) -> Any:
        return self._log

    def now(self) -> datetime:
        return self._clock()

    async def buy(self, instrument: str, quantity: Decimal | int | str, **kw: Any) -> Order:
        return await self._order(Side.BUY, instrument, quantity, **kw)

    async def sell(self, instrument: str, quantity: Decimal | int | str, **kw: Any) -> Order:
        return await self._order(Side.SELL, instrument, quantity, **kw)

    def request(
        self,
        side: Side | str,
        instrument: str,
        quantity: Decimal | int | str,
        *,
        limit: Decimal | int | str | None = None,
        stop: Decimal | int | str | None = None,
        trail_distance: Decimal | int | str | None = None,
        trail_percent: Decimal | int | str | None = None,
        if_touched: Decimal | int | str | None = None,
        stop_loss: Decimal | int | str | None = None,
        take_profit: Decimal | int | str | None = None,
        trailing_stop: Decimal | int | str | None = None,
        time_in_force: TimeInForce | str | None = None,
        expire_time: datetime | None = None,
        tag: str = "",
    ) -> OrderRequest:
        trailing = trail_distance is not None or trail_percent is not None
        if trailing and (limit is not None or stop is not None):
            raise ValueError("a trailing stop takes trail_distance= or trail_percent= only")
        touched = if_touched is not None
        if touched and (limit is not None or stop is not None or trailing):
            raise ValueError(
                "a market-if-touched order takes if_touched= (its touch price) only: "
                "it fills at market once touched"
            )
        kind = (
            OrderType.MARKET_IF_TOUCHED
            if touched
            else OrderType.TRAILING_STOP
            if trailing
            else OrderType.STOP_LIMIT
            if limit is not None and stop is not None
            else OrderType.LIMIT
            if limit is not None
            else OrderType.STOP
            if stop is not None
            else OrderType.MARKET
        )
        fields: dict[str, Any] = {}
        if time_in_force is not None:
            fields["time_in_force"] = time_in_force
        return OrderRequest(
            instrument=instrument,
            side=side,
            quantity=_price(quantity),  # type: ignore[arg-type]  # never None here
            type=kind,
            limit_price=_price(limit),
            stop_price=_price(if_touched if touched else stop),  # MIT: the touch price
            trail_distance=_price(trail_distance),
            trail_percent=_price(trail_percent),
            stop_loss=_price(stop_loss),
            take_profit=_price(take_profit),
            trailing_stop=_price(trailing_stop),
            expire_time=expire_time,
            tag=tag,
            **fields,
        )

    async def _order(
        self, side: Side, instrument: str, quantity: Decimal | int | str, **kw: Any
    ) -> Order:
        return await self.place(self.request(side, instrument, quantity, **kw))

    async def place(self, request: OrderRequest) -> Order:
        order = await self._oms.submit(self.name, self._service.name, request)
        if order.filled_quantity:
            # The position must include this fill as soon as the call returns,
            # or a strategy checking it would enter twice.
            try:
                await self._service.refresh_positions()
            except BrokerError as exc:  # the order stands; the next fill event refreshes
                self._log.warning("positions not refreshed", error=str(exc))
            else:
                if order.status is OrderStatus.FILLED:
                    self._service.cover(order.client_order_id)
        return order

    async def oco(self, first: OrderRequest, second: OrderRequest) -> tuple[Order, Order]:
        for request in (first, second):
            if request.type is OrderType.MARKET:
                raise ValueError("an OCO pair is two resting orders (limit, stop ...), not market")
        emulator = self._oms.emulator
        emulator.link(first.client_order_id, second.client_order_id)
        try:
            a = await self.place(first)
        except BaseException:
            emulator.unlink(first.client_order_id)  # the pair never formed: send no leg
            raise
        b = await self.place(second)
        return a, b

    async def basket(self, requests: Sequence[OrderRequest]) -> list[Order | Exception]:
        results: list[Order | Exception] = [Exception("not attempted")] * len(requests)

        async def leg(index: int, request: OrderRequest) -> None:
            try:
                results[index] = await self.place(request)
            except (TradingHalted, BrokerError, ValueError) as exc:
                results[index] = exc

        async with trio.open_nursery() as nursery:
            for index, request in enumerate(requests):
                nursery.start_soon(leg, index, request)
        return results

    async def split(
        self, request: OrderRequest, max_quantity: Decimal | int | str
    ) -> list[Order | Exception]:
        sizes = split_quantity(
            request.quantity, _price(max_quantity), self.instrument(request.instrument)
        )
        results: list[Order | Exception] = []
        for index, size in enumerate(sizes, 1):
            child = attrs.evolve(
                request,
                quantity=size,
                client_order_id=new_client_order_id(),
                tag=f"split {request.client_order_id} {index}/{len(sizes)}"
                + (f" {request.tag}" if request.tag else ""),
            )
            try:
                order = await self.place(child)
            except (TradingHalted, BrokerError) as exc:
                results.append(exc)
                break
            results.append(order)
            if order.status is OrderStatus.REJECTED:
                break  # the venue refuses: do not keep sending the rest
        return results

    async def target_position(self, instrument: str, quantity: Decimal | int | str) -> Order | None:
        target = _price(quantity)
        assert target is not None
        service = self._service
        async with self._oms.instrument_lock(service.name, instrument):
            await service.refresh_positions()
            position = service.positions.get(instrument)
            current = position.quantity if position is not None else Decimal(0)
            difference = target - current
            if difference == 0:
                return None
            side = Side.BUY if difference > 0 else Side.SELL
            return await self.place(
                self.request(side, instrument, abs(difference), tag=f"target {target}")
            )

    async def close_position(self, instrument: str) -> Order | None:
        return await self.target_position(instrument, 0)

    async def close_all_positions(self) -> list[Order | Exception]:
        await self._service.refresh_positions()
        instruments = list(self._service.positions)
        results: list[Order | Exception] = []
        for instrument in instruments:
            try:
                order = await self.close_position(instrument)
            except (TradingHalted, BrokerError) as exc:
                results.append(exc)
                continue
            if order is not None:
                results.append(order)
        return results

    async def cancel_all(self, instrument: str | None = None) -> list[Order | BaseException]:
        return await self._oms.cancel_all(
            broker=self._service.name, strategy=self.name, instrument=instrument
        )

    def _find(self, order: Order | str) -> Order:
        if isinstance(order, Order):
            return order
        found = self._oms.known(order)
        if found is None:
            raise KeyError(f"no order with client order id {order!r}")
        return found

    async def cancel(self, order: Order | str) -> Order:
        return await self._oms.cancel(self.name, self._find(order))

    async def set_protection(
        self,
        instrument: str,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
    ) -> Position:
        position = await self._oms.replace_position_protection(
            self._service.name, instrument, stop_loss=stop_loss, take_profit=take_profit
        )
        self._service.positions[instrument] = position
        return position

    async def set_order_protection(
        self,
        order: Order | str,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
    ) -> Order:
        return await self._oms.replace_order_protection(
            self._find(order), stop_loss=stop_loss, take_profit=take_profit
        )

    def position(self, instrument: str) -> Position | None:
        return self._service.positions.get(instrument)

    def positions(self) -> Sequence[Position]:
        return list(self._service.positions.values())

    def open_orders(self, instrument: str | None = None) -> Sequence[Order]:
        return self._oms.working(self.name, instrument)

    def last_quote(self, instrument: str) -> Quote | None:
        return self._service.last_quotes.get(instrument)

    def best_quote(self, instrument: str) -> BestQuote | None:
        return self._service.mux.best(instrument)

    def quote_age(self, instrument: str) -> float | None:
        return self._service.mux.age(self._service.name, instrument)

    async def watch_best(self, *instruments: str) -> None:
        for instrument in instruments:
            check_symbol(instrument)
        await self._service.mux.subscribe(self._watch, instruments)

    def instrument(self, symbol: str) -> Instrument | None:
        return self._service.instruments.get(symbol)

    async def account(self) -> Account:
        return await self._service.broker.account()

    async def subscribe(self, *instruments: str) -> None:
        for instrument in instruments:
            check_symbol(instrument)
        new = tuple(i for i in instruments if i not in self._instruments)
        self._instruments += new
        await self._service.subscribe(self, self._instruments)

    def schedule(self, every: float, name: str = "timer") -> None:
        if not (every > 0 and math.isfinite(every)):
            raise ValueError(f"timer {name!r}: every must be a positive number of seconds")
        self._timers.append((every, name))
        if self._nursery is not None:
            self._nursery.start_soon(self._tick, every, name)
