"""The order manager: the one path every order takes, and the one writer of
order state.

An order is written to the store (status ``new``) before it is sent, and
every fill is written before anyone hears of it. Order state changes without
a fill (an acknowledgement, a cancel) are written with the next write, or
within :data:`FLUSH_DELAY` seconds: grouping them halves the commits on the
order path, and a crash in between loses nothing the venue does not know: the
venue holds the truth, and reconciliation (:mod:`rick_core.engine.reconcile`)
recovers it on the next connect.
Every reported state is judged by the order state machine
(:mod:`rick_core.orderstate`): a venue's late or repeated message (an
``accepted`` after the ``filled``, a fill seen twice) changes nothing, and a
move the machine does not allow is refused and logged.

Order states after an interruption (see :meth:`OrderManager.submit`): an
order whose send was interrupted, or whose outcome the venue did not tell us
(a timeout, a lost connection), is ``unknown`` and looked up at the venue by
client order id, never sent again; an order that was never sent is
``rejected`` with a reason. A ``new`` order left by a crash is resolved by
reconciliation the same way.

Orders a venue cannot take natively (trigger orders, attached protection) and
OCO pairs are run by the :class:`~rick_core.engine.emulation.Emulator`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs
import structlog
import trio

from rick_core.broker import (
    KEEP,
    Broker,
    BrokerError,
    Keep,
    NotFound,
    OrderRejected,
    TemporarilyUnavailable,
)
from rick_core.engine.emulation import Emulator
from rick_core.logs import redact
from rick_core.model import Fill, Order, OrderRequest, OrderStatus, OrderType, Position, utc_now
from rick_core.orderstate import Verdict, judge
from rick_core.store import StoreError
from rick_core.strategy import TradingHalted

if TYPE_CHECKING:
    from rick_core.store import Store

__all__ = ["OrderManager", "owner_key"]

log = structlog.get_logger("rick.oms")

_NOT_SENT = "not sent: the engine stopped before the order reached the broker"
_UNKNOWN_OUTCOME = "sent, outcome unknown ({}): reconcile with the venue"


def owner_key(client_order_id: str) -> str:
    """The client order id of the order a venue-made order descends from.

    Protective orders that fire for a position are named after the order that
    set the protection (``<id>.sl``, ``<id>.tp``), so their fills reach the
    strategy that owns that order.
    """
    return client_order_id.split(".", 1)[0]


SEND_TIMEOUT = 10.0
"""Seconds a venue has to answer a submit before the order is looked up instead."""

RESOLVE_WITHIN = 30.0
"""Seconds spent looking an unanswered order up before leaving it for reconciliation."""

FLUSH_DELAY = 0.002
"""Longest time, in seconds, an order state change waits to be grouped with another write."""

_FINAL_MEMORY = 10_000
_OWNER_MEMORY = 100_000

_TRIGGERS = frozenset(
    {OrderType.STOP, OrderType.STOP_LIMIT, OrderType.TRAILING_STOP, OrderType.MARKET_IF_TOUCHED}
)

Listener = Callable[[str | None, Order | Fill], None]
"""Told of every stored order change and new fill: (owning strategy or None, event)."""

BeforeSend = Callable[[str, Order], Awaitable[None]]
"""Awaited with (strategy, the stored pending order) just before it is sent; raising
:class:`TradingHalted` stops the send (the order is then recorded as not sent)."""


class OrderManager:
    """Sends orders and records their life. Owned by the engine; one per run.

    ``listener`` is called (synchronously, after the store write) with each
    order state and each new fill, and the owning strategy's name.
    """

    def __init__(
        self,
        store: Store,
        brokers: dict[str, Broker],
        listener: Listener,
        *,
        before_send: BeforeSend | None = None,
    ) -> None:
        self._store = store
        self._brokers = brokers
        self._listener = listener
        self._before_send = before_send
        self.send_timeout = SEND_TIMEOUT
        self._orders: dict[str, Order] = {}  # working orders
        self._final: OrderedDict[str, Order] = OrderedDict()  # recently final, bounded
        self._owners: OrderedDict[str, str | None] = OrderedDict()  # id -> strategy, bounded
        self._pending: list[Order] = []  # order states not yet written
        self._dirty = trio.Event()
        self._accepting = True
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self.orders_sent = 0
        self.fills_seen = 0
        self.rejections = 0
        self.refused = 0
        self._blocked: dict[str, str] = {}
        self.emulator = Emulator(self)
        self._locks: dict[tuple[str, str], trio.Lock] = {}

    # -- state ---------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._accepting

    def stop_accepting(self) -> None:
        """Refuse every new order from now on (cancels and protection changes still go)."""
        self._accepting = False

    @property
    def in_flight(self) -> int:
        """Broker calls under way."""
        return self._in_flight

    async def wait_idle(self) -> None:
        """Return when no broker call is under way."""
        while self._in_flight:
            await self._idle.wait()

    def owner(self, client_order_id: str) -> str | None:
        """The strategy that placed this order (or the order it descends from), if any."""
        key = owner_key(client_order_id)
        try:
            return self._owners[key]
        except KeyError:
            found = self._owners[key] = self._store.strategy_of(key)
            self._trim_owners()
            return found

    def working(self, strategy: str, instrument: str | None = None) -> list[Order]:
        """The strategy's orders that are not final."""
        return [
            o
            for coid, o in self._orders.items()
            if not o.status.is_final
            and self._owners.get(coid) == strategy
            and (instrument is None or o.instrument == instrument)
        ]

    def all_working(self) -> list[Order]:
        """Every order not final that this run knows of, of every strategy."""
        return [o for o in self._orders.values() if not o.status.is_final]

    def known(self, client_order_id: str) -> Order | None:
        """The latest state of an order this run has seen (or the store has), or None."""
        found = self._orders.get(client_order_id) or self._final.get(client_order_id)
        if found is None:
            found = self._store.get_order(client_order_id)
        return found

    # -- reconciliation ------------------------------------------------------

    def block(self, broker_name: str, reason: str) -> None:
        """Refuse new orders to ``broker_name`` (until :meth:`unblock`), saying why."""
        self._blocked[broker_name] = reason

    def unblock(self, broker_name: str) -> None:
        self._blocked.pop(broker_name, None)

    def blocked(self, broker_name: str) -> str | None:
        """Why new orders to ``broker_name`` are refused, or None."""
        return self._blocked.get(broker_name)

    def adopt(self, stored: Iterable[tuple[Order, str | None]]) -> list[Order]:
        """Take stored working orders (of an earlier run) into this run's working
        set, with their strategies; returns them, in their latest known state."""
        adopted = []
        for order, strategy in stored:
            coid = order.client_order_id
            current = self._orders.get(coid)
            if current is None:
                current = self._orders[coid] = order
            self._owners.setdefault(coid, strategy)
            adopted.append(current)
        self._trim_owners()
        return adopted

    def mark_unknown(self, order: Order, why: str) -> None:
        """An order an earlier run left ``new`` or ``submitted``: it may have been
        sent, so it is ``unknown`` until the venue is asked."""
        current = self.known(order.client_order_id) or order
        if current.status is OrderStatus.NEW:
            current = self._orders[current.client_order_id] = attrs.evolve(
                current, status=OrderStatus.SUBMITTED
            )
        self._record_unknown(current, why, template="{}")

    def settle(self, order: Order, status: OrderStatus, reason: str) -> Order:
        """Record a final state rick learned itself (at reconciliation, say)."""
        return self._record_final(order, status, reason)

    def record_external(self, order: Order) -> None:
        """Store a working order the venue has and rick did not place (no strategy)."""
        pending, self._pending = self._pending, []
        try:
            self._store.record(new_orders=[(order, None)], orders=pending)
        except BaseException:
            self._pending[:0] = pending
            raise
        self._orders[order.client_order_id] = order
        self._owners[order.client_order_id] = None
        self._trim_owners()

    # -- actions -------------------------------------------------------------

    async def submit(self, strategy: str, broker_name: str, request: OrderRequest) -> Order:
        """Persist ``request`` as a pending order, send it, record the answer.

        A venue refusal returns the order ``rejected`` with the venue's reason.
        Raises :class:`TradingHalted` when no new orders are taken, and the
        broker's error when the outcome is unknown (the order is then left
        ``submitted``, to be reconciled).
        """
        if not self._accepting:
            raise TradingHalted("rick is stopping: no new orders are taken")
        blocked = self._blocked.get(broker_name)
        if blocked is not None:
            raise TradingHalted(f"no orders to {broker_name} yet: {blocked}")
        broker = self._brokers[broker_name]
        order = Order(request=request, broker=broker_name, status=OrderStatus.NEW)
        pending, self._pending = self._pending, []
        try:
            self._store.record(new_orders=[(order, strategy)], orders=pending)
        except BaseException:
            self._pending[:0] = pending
            raise
        coid = request.client_order_id
        self._orders[coid] = order
        self._owners[coid] = strategy
        self._trim_owners()
        self.orders_sent += 1
        voided = self.emulator.voided(coid) if self.emulator.active else None
        if voided is not None:
            return self._record_final(order, OrderStatus.REJECTED, voided)
        self._enter()
        sent = False
        try:
            if self._before_send is not None:
                await self._before_send(strategy, order)
            await trio.lowlevel.checkpoint_if_cancelled()
            sent = True
            # In memory only: a NEW order found in the store after a crash may
            # have been sent, and is looked up at the venue like an unknown one.
            self._orders[coid] = submitted = attrs.evolve(order, status=OrderStatus.SUBMITTED)
            send = request
            if self.emulator.needs_bracket(broker, request):
                # rick places the protection once the entry has filled.
                self.emulator.bracket(submitted, strategy)
                send = attrs.evolve(request, stop_loss=None, take_profit=None, trailing_stop=None)
            if request.type in _TRIGGERS and self.emulator.emulates(broker, send):
                return self.emulator.hold(submitted, strategy)
            with trio.move_on_after(self.send_timeout) as waiting:
                ack = await broker.place_order(send)
            if waiting.cancelled_caught:
                raise TemporarilyUnavailable(
                    f"no answer to the order within {self.send_timeout:g} s", broker=broker_name
                )
        except OrderRejected as exc:
            self.rejections += 1
            return self._record_final(order, OrderStatus.REJECTED, exc.reason)
        except BrokerError as exc:
            if isinstance(exc, TemporarilyUnavailable):
                # Sent, outcome unknown: ask the venue by client order id, never resend.
                self._record_unknown(order, str(exc))
                resolved = await self._resolve(broker, order)
                if resolved is None:
                    raise
                return resolved
            self.rejections += 1
            return self._record_final(order, OrderStatus.REJECTED, str(exc))
        except BaseException as exc:
            # Cancelled (forced shutdown), halted before the send, or a bug in the
            # broker: never leave it pending. Synchronous store writes: they
            # complete even under cancellation.
            if sent:
                self._record_unknown(order, type(exc).__name__)
            else:
                why = str(exc) if isinstance(exc, TradingHalted) else _NOT_SENT
                self._record_final(order, OrderStatus.REJECTED, why)
            raise
        finally:
            self._exit()
        self.apply([ack])
        return self.known(coid) or ack

    async def _resolve(self, broker: Broker, order: Order) -> Order | None:
        """Look an order whose submit went unanswered up at the venue, a few times
        with backoff. Returns its state (``rejected`` if the venue never got it),
        or None when the venue could not be asked: it stays ``submitted``."""
        coid = order.client_order_id
        delay = 0.5
        deadline = trio.current_time() + RESOLVE_WITHIN
        while True:
            try:
                with trio.move_on_after(self.send_timeout):
                    found = await broker.get_order(coid)
                    self.apply([found], durable=True)
                    log.info(
                        "unknown order resolved", client_order_id=coid, status=found.status.value
                    )
                    return self.known(coid) or found
            except NotFound:
                self.rejections += 1
                return self._record_final(
                    order,
                    OrderStatus.REJECTED,
                    "the venue never received it (looked up by client order id after the "
                    "submit went unanswered); it was not sent again",
                )
            except BrokerError as exc:
                log.warning("cannot look the order up yet", client_order_id=coid, error=str(exc))
            if trio.current_time() + delay > deadline:
                return None
            await trio.sleep(delay)
            delay *= 2

    async def cancel(self, strategy: str | None, order: Order) -> Order:
        """Cancel a working order and record its new state.

        The order is ``pending_cancel`` while the venue is asked; if the venue
        refuses, it goes back to where it was and the error is raised.
        """
        broker = self._brokers[order.broker]
        current = self.known(order.client_order_id) or order
        if current.status.is_final:
            return current
        held = await self.emulator.cancel_held(current) if self.emulator.active else None
        if held is not None:
            return held
        marked = self._mark(current, OrderStatus.PENDING_CANCEL)
        self._enter()
        try:
            result = await broker.cancel_order(current)
        except BaseException:
            self._unmark(marked, current)
            raise
        finally:
            self._exit()
        self.apply([result])
        return self.known(order.client_order_id) or result

    async def cancel_all(
        self,
        *,
        broker: str | None = None,
        strategy: str | None = None,
        instrument: str | None = None,
    ) -> list[Order | BaseException]:
        """Cancel every working order matching the filters given (all of them with
        none), concurrently. Returns each order's new state, or the error that
        kept it from being canceled; one failure does not stop the others."""
        targets = [
            o
            for o in self.all_working()
            if (broker is None or o.broker == broker)
            and (instrument is None or o.instrument == instrument)
            and (strategy is None or self.owner(o.client_order_id) == strategy)
        ]
        results: list[Order | BaseException] = [Exception("not attempted")] * len(targets)

        async def one(index: int, order: Order) -> None:
            try:
                results[index] = await self.cancel(strategy, order)
            except BrokerError as exc:
                log.warning("cancel failed", client_order_id=order.client_order_id, error=str(exc))
                results[index] = exc

        async with trio.open_nursery() as nursery:
            for index, order in enumerate(targets):
                nursery.start_soon(one, index, order)
        return results

    def instrument_lock(self, broker: str, instrument: str) -> trio.Lock:
        """The lock that serialises position-changing decisions on one instrument
        of one broker (smart orders, closes), whichever strategy makes them."""
        lock = self._locks.get((broker, instrument))
        if lock is None:
            lock = self._locks[(broker, instrument)] = trio.Lock()
        return lock

    def _mark(self, current: Order, status: OrderStatus) -> Order | None:
        """Set a local ``pending_*`` state on a working order (written with the next write)."""
        if judge(current, attrs.evolve(current, status=status), local=True) is not Verdict.APPLY:
            return None
        marked = attrs.evolve(current, status=status, updated_at=max(utc_now(), current.updated_at))
        self.apply([marked], local=True)
        return marked

    def _unmark(self, marked: Order | None, before: Order) -> None:
        """Undo :meth:`_mark` if nothing else moved the order since."""
        if marked is None or self._orders.get(marked.client_order_id) is not marked:
            return
        back = attrs.evolve(
            marked, status=before.status, updated_at=max(utc_now(), marked.updated_at)
        )
        self.apply([back], local=True)

    async def replace_order_protection(
        self,
        order: Order,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
    ) -> Order:
        broker = self._brokers[order.broker]
        current = self.known(order.client_order_id) or order
        marked = self._mark(current, OrderStatus.PENDING_MODIFY)
        self._enter()
        try:
            result = await broker.replace_order_protection(
                current, stop_loss=stop_loss, take_profit=take_profit
            )
        except BaseException:
            self._unmark(marked, current)
            raise
        finally:
            self._exit()
        self.apply([result])
        return self.known(order.client_order_id) or result

    async def replace_position_protection(
        self,
        broker_name: str,
        instrument: str,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
    ) -> Position:
        broker = self._brokers[broker_name]
        self._enter()
        try:
            return await broker.replace_position_protection(
                instrument, stop_loss=stop_loss, take_profit=take_profit
            )
        finally:
            self._exit()

    # -- events from brokers -------------------------------------------------

    def apply(
        self, events: Iterable[Order | Fill], *, durable: bool = False, local: bool = False
    ) -> list[Order | Fill]:
        """Record order updates and fills; tell the listener.

        Fills (and, with ``durable``, order states) are committed before this
        returns, with every order state waiting to be written, in one
        transaction; order states alone wait for the next write (at most
        :data:`FLUSH_DELAY`). Returns what was new: order states that moved
        forward and fills not seen before. Each order state is judged by the
        state machine (:func:`rick_core.orderstate.judge`): a move it refuses is
        logged and never applied; ``local`` marks states rick sets itself.
        """
        orders: list[Order] = []
        fills: list[Fill] = []
        for event in events:
            if isinstance(event, Fill):
                fills.append(event)
                continue
            current = self.known(event.client_order_id)
            if current is not None:
                if (
                    event.status.is_final
                    and not current.status.is_final
                    and event.filled_quantity < current.filled_quantity
                ):
                    # A venue's end report that lags its own fill reports (canceled
                    # with 3 filled after fills of 5): the end stands, the fills too.
                    event = attrs.evolve(
                        event,
                        filled_quantity=current.filled_quantity,
                        average_fill_price=current.average_fill_price,
                    )
                verdict = judge(current, event, local=local)
                if verdict is not Verdict.APPLY:
                    if verdict is Verdict.REFUSED:
                        self.refused += 1
                        log.warning(
                            "order state change refused",
                            client_order_id=event.client_order_id,
                            broker=event.broker,
                            current=current.status.value,
                            reported=event.status.value,
                            current_filled=str(current.filled_quantity),
                            reported_filled=str(event.filled_quantity),
                        )
                    continue
            if current is not None:
                # Only protection may change after the fact, and the order was
                # created when rick stored it: keep the rest as stored. (Identity
                # first: venues usually hand back the very request they were given.)
                request = event.request
                if request is current.request or self.emulator.brackets(event.client_order_id):
                    request = current.request  # (an emulated bracket's protection is rick's)
                elif request != current.request:
                    request = attrs.evolve(
                        current.request,
                        stop_loss=request.stop_loss,
                        take_profit=request.take_profit,
                    )
                else:
                    request = current.request
                if request is not event.request or event.created_at != current.created_at:
                    event = attrs.evolve(
                        event,
                        request=request,
                        created_at=current.created_at,
                        updated_at=max(event.updated_at, current.created_at),
                    )
            self._orders[event.client_order_id] = event
            orders.append(event)
        if not orders and not fills:
            return []
        if fills or durable:
            new_fills = self._write(orders, fills)
        else:
            new_fills = []
            self._pending.extend(orders)
            self._dirty.set()
        self.fills_seen += len(new_fills)
        changed: list[Order | Fill] = [*new_fills, *orders]
        for order in orders:
            if order.status.is_final:
                # Final orders leave the working set; a bounded memory of them
                # lets late repeats be recognised without a store read.
                self._orders.pop(order.client_order_id, None)
                self._final[order.client_order_id] = order
                if len(self._final) > _FINAL_MEMORY:
                    self._final.popitem(last=False)
        for event in changed:
            self._listener(self.owner(event.client_order_id), event)
        if self.emulator.active:
            for order in orders:
                self.emulator.on_order(order)
        return changed

    # -- writing -------------------------------------------------------------

    def _write(self, orders: list[Order], fills: list[Fill]) -> list[Fill]:
        pending, self._pending = self._pending, []
        try:
            return self._store.record(orders=[*pending, *orders], fills=fills)
        except StoreError:
            # A venue report the store refuses (it would change a stored request):
            # write the rest one by one so nothing else is lost, and say which.
            new: list[Fill] = []
            for order in [*pending, *orders]:
                try:
                    self._store.record(orders=[order])
                except StoreError as exc:
                    log.error("order update refused by the store", error=str(exc))
            for fill in fills:
                new += self._store.record(fills=[fill])
            return new
        except BaseException:
            # The store could not write (a full disk, say): keep the waiting states
            # for the next attempt and let the caller fail loudly.
            self._pending[:0] = pending
            raise

    def flush(self) -> None:
        """Write every order state still waiting."""
        if self._pending:
            self._write([], [])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write waiting order states within :data:`FLUSH_DELAY`; flush when cancelled."""
        task_status.started()
        try:
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                await trio.sleep(FLUSH_DELAY)
                self.flush()
        finally:
            self.flush()

    # -- helpers -------------------------------------------------------------

    def _trim_owners(self) -> None:
        if len(self._owners) > _OWNER_MEMORY:
            self._owners.popitem(last=False)

    def _enter(self) -> None:
        self._in_flight += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def _exit(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def _record_final(self, order: Order, status: OrderStatus, reason: str) -> Order:
        reason = redact(reason)  # a venue's words may quote a credential
        current = self.known(order.client_order_id) or order
        final = attrs.evolve(
            current,
            status=status,
            reject_reason=reason,
            updated_at=max(utc_now(), current.created_at),
        )
        if judge(current, final, local=True) is not Verdict.APPLY:
            # The venue's stream already told us it has the order: a local error
            # after that (a garbled reply) must not bury a live order as rejected.
            log.warning(
                "order call failed after the venue accepted the order",
                client_order_id=order.client_order_id,
                status=current.status.value,
                error=reason,
            )
            return current
        self.apply([final], durable=True, local=True)
        log.info(
            "order rejected",
            client_order_id=order.client_order_id,
            broker=order.broker,
            instrument=order.instrument,
            reason=reason,
        )
        return final

    def _record_unknown(self, order: Order, why: str, *, template: str = _UNKNOWN_OUTCOME) -> None:
        why = redact(why)
        current = self.known(order.client_order_id) or order
        if current.status is not OrderStatus.SUBMITTED:
            return  # the venue already told us more than "sent"
        unknown = attrs.evolve(
            current,
            status=OrderStatus.UNKNOWN,
            reject_reason=template.format(why),
            updated_at=max(utc_now(), current.created_at),
        )
        self.apply([unknown], durable=True, local=True)
        log.warning(
            "order outcome unknown",
            client_order_id=order.client_order_id,
            broker=order.broker,
            reason=why,
        )


def describe(event: Order | Fill) -> dict[str, Any]:
    """Compact log fields of an order or fill."""
    if isinstance(event, Fill):
        return {
            "client_order_id": event.client_order_id,
            "instrument": event.instrument,
            "side": event.side.value,
            "quantity": str(event.quantity),
            "price": str(event.price),
            "fee": str(event.fee),
        }
    return {
        "client_order_id": event.client_order_id,
        "instrument": event.instrument,
        "side": event.request.side.value,
        "quantity": str(event.request.quantity),
        "type": event.request.type.value,
        "status": event.status.value,
    }
