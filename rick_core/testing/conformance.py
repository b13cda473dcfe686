"""The broker conformance suite: the :class:`~rick_core.broker.Broker` contract as tests.

A broker plugin runs the whole suite by subclassing :class:`BrokerConformance`
in a test module and providing one fixture, ``rick_broker_target``, that
returns a :class:`BrokerTarget`. Enable the pytest plugin
(``pytest_plugins = ["rick_core.testing.plugin"]`` in your top-level
``conftest.py``) for the marker and a helpful error when the fixture is
missing. See ``docs/testing-plugins.md``.

Every test builds a fresh broker with ``BrokerTarget.make_broker``, connects
it, and always closes it; orders it placed are cancelled and a position it
opened is closed again, so the account is left as it was found (flat in the
target instrument, no working orders of the suite's). Waits for an
asynchronous outcome are bounded by ``BrokerTarget.timeout``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, suppress
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from types import TracebackType
from typing import Any, ClassVar, NoReturn, TypeVar

import pytest
import trio
from attrs import field, frozen

from rick_core.broker import (
    KEEP,
    AuthenticationFailed,
    Broker,
    BrokerError,
    Capabilities,
    Heartbeat,
    NotFound,
    OrderRejected,
    Unsupported,
)
from rick_core.model import (
    Account,
    Fill,
    Instrument,
    ModelError,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Quote,
    Side,
    TimeInForce,
    check_symbol,
    utc_now,
)
from rick_core.symbols import SymbolMap

__all__ = ["BrokerConformance", "BrokerTarget"]

T = TypeVar("T")

POLL_INTERVAL = 0.05
"""Seconds between two polls of the broker while waiting for an outcome."""

QUOTES_TO_COLLECT = 3
"""Quotes taken from ``stream_quotes`` before leaving the block."""

TAG = "rick-conformance"
"""The ``tag`` of every order the suite places."""

FILLS_LOOKBACK = timedelta(minutes=10)
"""How long before placing its order the fills test asks ``fills(since=...)`` from:
room for a venue clock that runs behind the local one."""

FILLS_AFTER = timedelta(seconds=1)
"""How long after its order's last fill the fills test expects ``fills()`` to be empty
of it (room for a venue that stores times at a coarser precision)."""


# ---------------------------------------------------------------------------
# the target


def _decimal(value: Decimal | int | str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise TypeError(
            f"expected a Decimal (or an int or a numeric string), got {type(value).__name__} "
            f"{value!r}: use Decimal('{value}')"
        )
    result = Decimal(value)
    if not result.is_finite() or result <= 0:
        raise ValueError(f"expected a positive finite number, got {value!r}")
    return result


def _optional_decimal(value: Decimal | int | str | None) -> Decimal | None:
    return None if value is None else _decimal(value)


def _symbol(instance: object, attribute: Any, value: str) -> None:
    check_symbol(value)


def _secrets(values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError("secrets must be a sequence of strings, not one string")
    result = tuple(values)
    for value in result:
        if not isinstance(value, str) or not value:
            raise ValueError("every secret must be a non-empty string")
    return result


def _positive_timeout(instance: object, attribute: Any, value: float) -> None:
    if not value > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {value!r}")


@frozen(kw_only=True)
class BrokerTarget:
    """What the conformance suite tests, and how.

    ``make_broker`` builds a new, not yet connected broker on every call (the
    suite connects and closes it itself). ``instrument`` is a canonical symbol
    the account can trade, ``quantity`` a small quantity of it that fills.
    ``far_limit_price`` gives, for the current quote, a buy limit price far
    enough below the market to rest (default: half the bid, on the
    instrument's price increment). ``rejected_quantity`` is a quantity the
    venue refuses, ``make_unauthenticated_broker`` builds a broker with bad
    credentials; ``None`` skips their tests. ``unknown_instrument`` is a
    canonical symbol the venue does not list. ``timeout`` bounds every wait
    for an asynchronous outcome, in seconds. ``secrets`` are the credentials
    (good and bad) that no error message may contain.
    """

    make_broker: Callable[[], Broker]
    instrument: str = field(validator=_symbol)
    quantity: Decimal = field(converter=_decimal)
    far_limit_price: Callable[[Quote], Decimal] | None = None
    rejected_quantity: Decimal | None = field(default=None, converter=_optional_decimal)
    make_unauthenticated_broker: Callable[[], Broker] | None = None
    unknown_instrument: str = field(default="ZZZ_QQQ", validator=_symbol)
    timeout: float = field(default=10.0, validator=_positive_timeout)
    secrets: Sequence[str] = field(default=(), converter=_secrets)


# ---------------------------------------------------------------------------
# checks


def _fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


SKIP_REASONS: list[str] = []
"""Reasons of the suite's skips, latest last: pytest-trio 0.8 drops a skip's
reason when it leaves ``trio.run``, and the plugin puts it back from here."""


def _skip(reason: str) -> NoReturn:
    SKIP_REASONS.append(reason)
    pytest.skip(reason)


def _check_target(value: object) -> BrokerTarget:
    if not isinstance(value, BrokerTarget):
        _fail(
            "the rick_broker_target fixture must return a rick_core.testing.BrokerTarget, "
            f"got {type(value).__name__}"
        )
    return value


def _check_decimal(value: object, what: str) -> None:
    assert isinstance(value, Decimal), f"{what} must be a Decimal, got {type(value).__name__}"


def _check_time(value: object, what: str) -> None:
    assert isinstance(value, datetime), f"{what} must be a datetime, got {type(value).__name__}"
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0), (
        f"{what} must be timezone-aware UTC, got {value.isoformat()}"
    )


def _check_quote(quote: object, instrument: str, broker: Broker) -> Quote:
    assert isinstance(quote, Quote), f"expected a Quote, got {type(quote).__name__}"
    assert quote.instrument == instrument, (
        f"asked for a quote of {instrument}, got one of {quote.instrument}"
    )
    _check_decimal(quote.bid, "quote.bid")
    _check_decimal(quote.ask, "quote.ask")
    assert 0 < quote.bid <= quote.ask, f"invalid quote: bid {quote.bid}, ask {quote.ask}"
    _check_time(quote.time, "quote.time")
    assert quote.source == broker.name, (
        f"quote.source must be the broker's name {broker.name!r}, got {quote.source!r}"
    )
    return quote


def _check_order(order: object, request: OrderRequest, broker: Broker) -> Order:
    assert isinstance(order, Order), f"expected an Order, got {type(order).__name__}"
    assert order.client_order_id == request.client_order_id, (
        f"the order must carry the request's client_order_id {request.client_order_id!r}, "
        f"got {order.client_order_id!r}"
    )
    assert order.instrument == request.instrument, (
        f"order of {request.instrument} came back as {order.instrument}"
    )
    assert order.request.side is request.side, f"{request.side} order came back as {order}"
    assert order.request.quantity == request.quantity, (
        f"order of {request.quantity} came back with quantity {order.request.quantity}"
    )
    assert order.broker == broker.name, (
        f"order.broker must be the broker's name {broker.name!r}, got {order.broker!r}"
    )
    assert order.status is not OrderStatus.NEW, (
        "a venue's order is never NEW (that state is rick's alone)"
    )
    _check_decimal(order.request.quantity, "order.request.quantity")
    _check_decimal(order.filled_quantity, "order.filled_quantity")
    if order.average_fill_price is not None:
        _check_decimal(order.average_fill_price, "order.average_fill_price")
    _check_time(order.created_at, "order.created_at")
    _check_time(order.updated_at, "order.updated_at")
    return order


def _check_position(position: object, broker: Broker) -> Position:
    assert isinstance(position, Position), f"expected a Position, got {type(position).__name__}"
    assert position.broker == broker.name, (
        f"position.broker must be the broker's name {broker.name!r}, got {position.broker!r}"
    )
    _check_decimal(position.quantity, "position.quantity")
    _check_decimal(position.average_price, "position.average_price")
    _check_decimal(position.unrealized_pnl, "position.unrealized_pnl")
    assert position.quantity != 0, f"positions() must list only open positions, got {position}"
    return position


def _check_fill(fill: Fill, request: OrderRequest, broker: Broker) -> None:
    assert fill.instrument == request.instrument, f"fill of the wrong instrument: {fill}"
    assert fill.side is request.side, f"fill of the wrong side: {fill}"
    assert fill.broker == broker.name, (
        f"fill.broker must be the broker's name {broker.name!r}, got {fill.broker!r}"
    )
    for name in ("quantity", "price", "fee"):
        _check_decimal(getattr(fill, name), f"fill.{name}")
    _check_time(fill.time, "fill.time")


def _check_fills_since(found: object, since: datetime, broker: Broker) -> None:
    """``found`` is what ``fills(since)`` may return: Fills of this broker at or
    after ``since``, oldest first, each id once."""
    assert isinstance(found, list), f"fills() must return a list, got {found!r}"
    seen: set[str] = set()
    previous: datetime | None = None
    for fill in found:
        assert isinstance(fill, Fill), f"fills() must return Fill objects, got {fill!r}"
        assert fill.broker == broker.name, (
            f"fill.broker must be the broker's name {broker.name!r}, got {fill.broker!r}"
        )
        _check_time(fill.time, "fill.time")
        assert fill.time >= since, (
            f"fills(since={since.isoformat()}) returned a fill of {fill.time.isoformat()}, "
            f"before since: {fill}"
        )
        assert previous is None or fill.time >= previous, (
            f"fills() must list oldest first: {fill.fill_id} at {fill.time.isoformat()} comes "
            f"after a fill at {previous.isoformat()}"
        )
        assert fill.fill_id not in seen, f"fills() lists fill {fill.fill_id!r} twice"
        seen.add(fill.fill_id)
        previous = fill.time


def _error_texts(error: BaseException) -> Iterator[str]:
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield from (repr(arg) for arg in current.args)
        yield from getattr(current, "__notes__", ())
        for name in ("reason", "code", "broker"):
            value = getattr(current, name, None)
            if isinstance(value, str):
                yield value
        pending += [current.__cause__, current.__context__]


def _leaked_secret(error: BaseException, secrets: Sequence[str]) -> int | None:
    """The index of the first secret ``error`` (or an exception chained to it) shows."""
    for index, secret in enumerate(secrets):
        if any(secret in text for text in _error_texts(error)):
            return index
    return None


def _leak_message(error: BaseException, index: int) -> str:
    return (
        f"{type(error).__name__} (or an exception chained to it) contains secrets[{index}] of "
        "the BrokerTarget: an error message must never carry a credential"
    )


class _Caught:
    """What :func:`_expect` caught."""

    error: BrokerError | None = None


@contextmanager
def _expect(
    target: BrokerTarget, expected: type[BrokerError] | tuple[type[BrokerError], ...], what: str
) -> Iterator[_Caught]:
    """Like ``pytest.raises``, with the suite's rules: the error must be a
    :class:`BrokerError` of the expected kind and carry no credential."""
    names = (
        expected.__name__
        if isinstance(expected, type)
        else " or ".join(kind.__name__ for kind in expected)
    )
    caught = _Caught()
    try:
        yield caught
    except Exception as error:
        leaked = _leaked_secret(error, target.secrets)
        if leaked is not None:
            problem = f"{what}: {_leak_message(error, leaked)}"  # failed below: no chained secret
        elif isinstance(error, expected):
            caught.error = error
            return
        elif isinstance(error, BrokerError):
            _fail(f"{what}: expected {names}, got {type(error).__name__}: {error}")
        else:
            _fail(
                f"{what}: expected {names}, got {type(error).__module__}.{type(error).__name__}, "
                "which is not a rick_core.broker.BrokerError: a broker raises only BrokerError "
                f"subclasses for venue-side problems ({error})"
            )
    else:
        problem = f"{what}: expected {names}, but nothing was raised"
    # from None: the error that leaked a credential must not be shown again
    raise pytest.fail.Exception(problem, pytrace=False) from None


@asynccontextmanager
async def _closing(stream: AsyncIterator[T]) -> AsyncIterator[None]:
    """Close an async generator the suite stopped reading, as a careful consumer does."""
    try:
        yield
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


@contextmanager
def _within(target: BrokerTarget, what: str) -> Iterator[None]:
    """Fail the test, naming ``what``, when the block takes longer than the target's timeout."""
    try:
        with trio.fail_after(target.timeout):
            yield
    except trio.TooSlowError:
        _fail(f"{what} took longer than {target.timeout:g}s (BrokerTarget.timeout)")


def _round(value: Decimal, step: Decimal | None, like: Decimal, rounding: str) -> Decimal:
    """``value`` on the price grid ``step`` (or at ``like``'s precision), never zero."""
    if step is None:
        exponent = like.as_tuple().exponent
        step = Decimal(1).scaleb(exponent if isinstance(exponent, int) and exponent < 0 else 0)
    result = (value / step).to_integral_value(rounding=rounding) * step
    return result if result > 0 else step


def _resting_time_in_force(capabilities: Capabilities) -> tuple[TimeInForce, datetime | None]:
    """A time in force that lets an order rest, with its expire time if it needs one."""
    supported = capabilities.time_in_force
    for tif in (TimeInForce.GTC, TimeInForce.DAY):
        if tif in supported:
            return tif, None
    if TimeInForce.GTD in supported:
        return TimeInForce.GTD, utc_now() + timedelta(days=1)
    _skip("the broker supports no time in force that lets an order rest (GTC, DAY, GTD)")


def _market_time_in_force(capabilities: Capabilities) -> TimeInForce:
    for tif in (TimeInForce.IOC, TimeInForce.FOK, TimeInForce.GTC, TimeInForce.DAY):
        if tif in capabilities.time_in_force:
            return tif
    _skip("the broker supports no time in force for market orders (IOC, FOK, GTC, DAY)")


# ---------------------------------------------------------------------------
# one connected broker, cleaned up after


class _Session:
    """A connected broker for one test; on exit cancels the orders it placed,
    closes the position it opened, and closes the broker."""

    def __init__(self, target: BrokerTarget) -> None:
        self.target = target
        self.broker = target.make_broker()
        self.placed: list[str] = []
        self._instrument: Instrument | None = None

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> _Session:
        try:
            with self.within("connect()"):
                await self.broker.connect()
        except BaseException:
            with self.shielded() as scope:
                await self.broker.close()
            if scope.cancelled_caught:
                _fail(f"close() after a failed connect() took longer than {self.target.timeout}s")
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        problems: list[str] = []
        with self.shielded() as scope:
            try:
                await self.cleanup()
            except Exception as error:
                problems.append(f"cleaning up raised {type(error).__name__}: {error}")
            except pytest.fail.Exception as error:
                problems.append(f"cleaning up failed: {error}")
        if scope.cancelled_caught:
            problems.append(f"cleaning up took longer than {self.target.timeout}s")
        with self.shielded() as scope:
            try:
                await self.broker.close()
            except Exception as error:
                problems.append(f"close() raised {type(error).__name__}: {error}")
        if scope.cancelled_caught:
            problems.append(f"close() took longer than {self.target.timeout}s")
        if problems:
            if exc is not None:
                for problem in problems:
                    exc.add_note(f"then, leaving the test: {problem}")
                return False
            _fail("; ".join(problems) + " (check the account for leftovers of the suite)")
        return False

    async def cleanup(self) -> None:
        if not self.placed:
            return
        broker = self.broker
        for order in await broker.open_orders():
            if order.client_order_id in self.placed:
                with suppress(NotFound):  # it finished meanwhile
                    await broker.cancel_order(order)
        position = await self.position()
        if position is not None:
            side = Side.SELL if position.quantity > 0 else Side.BUY
            await broker.place_order(self.market(side, abs(position.quantity)))
            await self.eventually(self.flat, "the suite's position to close when cleaning up")

    @contextmanager
    def shielded(self) -> Iterator[trio.CancelScope]:
        with trio.move_on_after(self.target.timeout) as scope:
            scope.shield = True
            yield scope

    def within(self, what: str) -> AbstractContextManager[None]:
        return _within(self.target, what)

    async def eventually(self, probe: Callable[[], Awaitable[tuple[bool, T]]], what: str) -> T:
        """Poll ``probe`` until it says done; fail after the target's timeout."""
        last = "nothing"
        with trio.move_on_after(self.target.timeout):
            while True:
                done, value = await probe()
                if done:
                    return value
                last = repr(value)
                await trio.sleep(POLL_INTERVAL)
        _fail(f"waited {self.target.timeout:g}s for {what}; last seen: {last}")

    # -- helpers -------------------------------------------------------------

    def expect(
        self, expected: type[BrokerError] | tuple[type[BrokerError], ...], what: str
    ) -> AbstractContextManager[_Caught]:
        return _expect(self.target, expected, what)

    async def place(self, request: OrderRequest) -> Order:
        self.placed.append(request.client_order_id)
        with self.within(f"place_order({request.type.value} {request.side.value})"):
            return await self.broker.place_order(request)

    async def place_and_collect_fills(self, request: OrderRequest) -> list[Fill] | None:
        """Place ``request`` (meant to fill at once) and return its fills as
        ``stream_events()`` delivered them; None without streaming events."""
        broker = self.broker
        if not broker.capabilities.streaming_events:
            await self.place(request)
            return None
        fills: list[Fill] = []
        async with broker.stream_events() as events, _closing(events):
            await self.place(request)
            with self.within(f"the fills of {request.client_order_id} on stream_events()"):
                async for event in events:  # a Heartbeat is neither: skipped
                    if isinstance(event, Fill) and event.client_order_id == request.client_order_id:
                        fills.append(event)
                        if sum(f.quantity for f in fills) >= request.quantity:
                            break
        return fills

    def market(self, side: Side, quantity: Decimal | None = None) -> OrderRequest:
        return OrderRequest(
            instrument=self.target.instrument,
            side=side,
            quantity=self.target.quantity if quantity is None else quantity,
            type=OrderType.MARKET,
            time_in_force=_market_time_in_force(self.broker.capabilities),
            tag=TAG,
        )

    async def instrument(self) -> Instrument:
        if self._instrument is None:
            listed = {i.symbol: i for i in await self.broker.instruments()}
            found = listed.get(self.target.instrument)
            if found is None:
                _fail(f"instruments() does not list the target instrument {self.target.instrument}")
            self._instrument = found
        assert self._instrument is not None
        return self._instrument

    async def quote(self) -> Quote:
        return await self.broker.quote(self.target.instrument)

    async def far_limit(self) -> OrderRequest:
        """A buy limit far below the market, meant to rest."""
        quote = await self.quote()
        instrument = await self.instrument()
        if self.target.far_limit_price is not None:
            price = self.target.far_limit_price(quote)
        else:
            price = _round(
                quote.bid * Decimal("0.5"), instrument.price_increment, quote.bid, ROUND_FLOOR
            )
        assert price < quote.bid, f"the far limit price {price} is not below the bid {quote.bid}"
        tif, expire_time = _resting_time_in_force(self.broker.capabilities)
        return OrderRequest(
            instrument=self.target.instrument,
            side=Side.BUY,
            quantity=self.target.quantity,
            type=OrderType.LIMIT,
            limit_price=price,
            time_in_force=tif,
            expire_time=expire_time,
            tag=TAG,
        )

    async def price(self, value: Decimal, rounding: str) -> Decimal:
        quote = await self.quote()
        instrument = await self.instrument()
        return _round(value, instrument.price_increment, quote.bid, rounding)

    async def position(self) -> Position | None:
        found = [p for p in await self.broker.positions() if p.instrument == self.target.instrument]
        assert len(found) <= 1, f"positions() lists {self.target.instrument} twice: {found}"
        return found[0] if found else None

    async def flat(self) -> tuple[bool, Position | None]:
        position = await self.position()
        return position is None, position

    async def require_flat(self) -> None:
        position = await self.position()
        if position is not None:
            _fail(
                f"the account must be flat in {self.target.instrument} before this test, but "
                f"holds {position.quantity}: close it (a previous run may have left it)"
            )

    async def holding(self, quantity: Decimal) -> Position:
        """Wait until the position in the target instrument is ``quantity`` (signed)."""

        async def probe() -> tuple[bool, Position | None]:
            position = await self.position()
            return position is not None and position.quantity == quantity, position

        position = await self.eventually(
            probe, f"positions() to show {quantity} {self.target.instrument}"
        )
        assert position is not None
        return _check_position(position, self.broker)

    async def open_order(self, client_order_id: str, instrument: str | None = None) -> Order:
        """Wait until ``open_orders`` lists the order as working, and return it."""

        async def probe() -> tuple[bool, Order | None]:
            found = [
                o
                for o in await self.broker.open_orders(instrument)
                if o.client_order_id == client_order_id
            ]
            assert len(found) <= 1, f"open_orders() lists {client_order_id} twice: {found}"
            return bool(found) and found[0].status is OrderStatus.ACCEPTED, (
                found[0] if found else None
            )

        where = f"open_orders({instrument})" if instrument else "open_orders()"
        order = await self.eventually(probe, f"{where} to list order {client_order_id} as ACCEPTED")
        assert order is not None
        return order

    async def no_open_order(self, client_order_id: str) -> None:
        async def probe() -> tuple[bool, list[Order]]:
            found = [
                o for o in await self.broker.open_orders() if o.client_order_id == client_order_id
            ]
            return not found, found

        await self.eventually(probe, f"order {client_order_id} to leave open_orders()")


# ---------------------------------------------------------------------------
# the suite


class BrokerConformance:
    """The broker contract as tests: subclass it in a test module and provide a
    ``rick_broker_target`` fixture returning a :class:`BrokerTarget`.

    Subclasses are collected whatever their name (``__test__`` is set on them);
    set ``__test__ = False`` on an intermediate base class to stop that.
    """

    __test__: ClassVar[bool] = False
    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.trio]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__test__" not in cls.__dict__:
            cls.__test__ = True

    # -- lifecycle -----------------------------------------------------------

    async def test_connect_and_close(self, rick_broker_target: BrokerTarget) -> None:
        target = _check_target(rick_broker_target)
        session = _Session(target)
        async with session:
            await session.broker.account()  # usable once connect returned

    async def test_close_is_idempotent(self, rick_broker_target: BrokerTarget) -> None:
        target = _check_target(rick_broker_target)
        session = _Session(target)
        async with session:
            pass
        with session.within("a second close()"):
            await session.broker.close()

    async def test_close_without_connect_is_safe(self, rick_broker_target: BrokerTarget) -> None:
        target = _check_target(rick_broker_target)
        broker = target.make_broker()
        with _within(target, "close() of a broker never connected"):
            await broker.close()
            await broker.close()

    async def test_close_after_failed_connect(self, rick_broker_target: BrokerTarget) -> None:
        target = _check_target(rick_broker_target)
        if target.make_unauthenticated_broker is None:
            _skip("BrokerTarget.make_unauthenticated_broker is not given")
        broker = target.make_unauthenticated_broker()
        what = "connect() with bad credentials"
        with _expect(target, BrokerError, what), _within(target, what):
            await broker.connect()
        with _within(target, "close() after a failed connect()"):
            await broker.close()
            await broker.close()

    # -- identity and reference data -----------------------------------------

    async def test_name_capabilities_and_symbols(self, rick_broker_target: BrokerTarget) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            broker = session.broker
            assert isinstance(broker.name, str) and broker.name.strip(), (
                f"broker.name must be a non-empty string (the setup's name), got {broker.name!r}"
            )
            assert isinstance(broker.capabilities, Capabilities), (
                f"broker.capabilities must be a Capabilities, got {broker.capabilities!r}"
            )
            assert isinstance(broker.symbols, SymbolMap), (
                f"broker.symbols must be a SymbolMap, got {broker.symbols!r}"
            )
            native = broker.symbols.to_venue(target.instrument)
            assert broker.symbols.from_venue(native) == target.instrument, (
                f"symbols.from_venue(symbols.to_venue({target.instrument!r})) is "
                f"{broker.symbols.from_venue(native)!r}"
            )
            for attribute in ("quote_silence", "event_silence"):
                silence = getattr(broker, attribute)
                assert silence is None or (
                    isinstance(silence, int | float)
                    and not isinstance(silence, bool)
                    and math.isfinite(silence)
                    and silence > 0
                ), (
                    f"broker.{attribute} must be None (no watchdog) or a positive finite "
                    f"number of seconds, got {silence!r}"
                )

    async def test_instruments(self, rick_broker_target: BrokerTarget) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            with session.within("instruments()"):
                instruments = await session.broker.instruments()
            assert instruments, "instruments() returned nothing"
            symbols = session.broker.symbols
            seen: set[str] = set()
            for instrument in instruments:
                assert isinstance(instrument, Instrument), (
                    f"instruments() must return Instrument objects, got {instrument!r}"
                )
                try:
                    check_symbol(instrument.symbol)
                except ModelError as error:
                    _fail(f"instruments() listed a symbol that is not canonical: {error}")
                assert instrument.symbol not in seen, f"{instrument.symbol} is listed twice"
                seen.add(instrument.symbol)
                native = symbols.to_venue(instrument.symbol)
                assert symbols.from_venue(native) == instrument.symbol, (
                    f"the symbol map does not round-trip {instrument.symbol} (venue: {native!r})"
                )
            assert target.instrument in seen, (
                f"instruments() does not list the target instrument {target.instrument}"
            )
            assert target.unknown_instrument not in seen, (
                f"BrokerTarget.unknown_instrument {target.unknown_instrument} is listed: "
                "pick a symbol the venue does not know"
            )

    # -- market data ---------------------------------------------------------

    async def test_quote(self, rick_broker_target: BrokerTarget) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            with session.within(f"quote({target.instrument!r})"):
                quote = await session.broker.quote(target.instrument)
            _check_quote(quote, target.instrument, session.broker)

    async def test_quote_of_unknown_instrument_raises_not_found(
        self, rick_broker_target: BrokerTarget
    ) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            what = f"quote({target.unknown_instrument!r})"
            with session.expect(NotFound, what), session.within(what):
                await session.broker.quote(target.unknown_instrument)

    async def test_stream_quotes(self, rick_broker_target: BrokerTarget) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            broker = session.broker
            for round_ in ("first", "second"):
                quotes: list[Quote] = []
                what = f"the {round_} subscription to stream_quotes([{target.instrument!r}])"
                with session.within(what):
                    try:
                        async with (
                            broker.stream_quotes([target.instrument]) as stream,
                            _closing(stream),
                        ):
                            async for quote in stream:
                                if isinstance(quote, Heartbeat):
                                    continue  # a keep-alive: no data
                                quotes.append(_check_quote(quote, target.instrument, broker))
                                if len(quotes) >= QUOTES_TO_COLLECT:
                                    break
                    except Unsupported:
                        if broker.capabilities.streaming_quotes:
                            raise
                        _skip("no streaming quotes (capabilities.streaming_quotes)")
                assert len(quotes) == QUOTES_TO_COLLECT, (
                    f"stream_quotes ended after {len(quotes)} quote(s)"
                )
                # unsubscribed: the broker still answers, and may be subscribed again
                with session.within("quote() after leaving stream_quotes"):
                    _check_quote(await session.quote(), target.instrument, broker)

    async def test_stream_events_delivers_fill_and_order(
        self, rick_broker_target: BrokerTarget
    ) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            broker = session.broker
            await session.require_flat()
            request = session.market(Side.BUY)
            fills: list[Fill] = []
            orders: list[Order] = []
            try:
                async with broker.stream_events() as events, _closing(events):
                    await session.place(request)
                    with session.within(
                        f"the Fill and the FILLED Order of {request.client_order_id} on "
                        "stream_events()"
                    ):
                        async for event in events:
                            if isinstance(event, Heartbeat):
                                continue  # a keep-alive: no data
                            if isinstance(event, Fill):
                                if event.client_order_id == request.client_order_id:
                                    _check_fill(event, request, broker)
                                    fills.append(event)
                            elif isinstance(event, Order):
                                if event.client_order_id == request.client_order_id:
                                    orders.append(_check_order(event, request, broker))
                            else:
                                _fail(f"stream_events() yielded {event!r}: not an Order or Fill")
                            filled = sum((f.quantity for f in fills), Decimal(0))
                            if filled >= request.quantity and any(
                                o.status is OrderStatus.FILLED for o in orders
                            ):
                                break
            except Unsupported:
                if broker.capabilities.streaming_events:
                    raise
                _skip("no streaming events (capabilities.streaming_events)")
            assert sum(f.quantity for f in fills) == request.quantity, (
                f"fills on stream_events() add up to {sum(f.quantity for f in fills)}, "
                f"not {request.quantity}"
            )
            assert any(o.status is OrderStatus.FILLED for o in orders), (
                f"stream_events() delivered no FILLED Order of {request.client_order_id}: {orders}"
            )

    # -- orders and positions ------------------------------------------------

    async def test_market_buy_then_sell(self, rick_broker_target: BrokerTarget) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            await session.require_flat()
            buy = session.market(Side.BUY)
            _check_order(await session.place(buy), buy, session.broker)
            position = await session.holding(target.quantity)
            assert position.average_price > 0
            sell = session.market(Side.SELL)
            _check_order(await session.place(sell), sell, session.broker)
            await session.eventually(session.flat, f"the position in {target.instrument} to close")

    async def test_fills_since_returns_the_fills_of_an_order(
        self, rick_broker_target: BrokerTarget
    ) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            broker = session.broker
            await session.require_flat()
            before = utc_now() - FILLS_LOOKBACK
            buy, sell = session.market(Side.BUY), session.market(Side.SELL)
            streamed = await session.place_and_collect_fills(buy)
            await session.holding(target.quantity)
            streamed_sell = await session.place_and_collect_fills(sell)
            if streamed is not None and streamed_sell is not None:
                streamed += streamed_sell
            await session.eventually(session.flat, f"the position in {target.instrument} to close")
            ours = {buy.client_order_id: buy, sell.client_order_id: sell}

            def of(fills: list[Fill], request: OrderRequest) -> list[Fill]:
                return [f for f in fills if f.client_order_id == request.client_order_id]

            async def probe() -> tuple[bool, list[Fill]]:
                with session.within("fills()"):
                    found = await broker.fills(before)
                assert isinstance(found, list), f"fills() must return a list, got {found!r}"
                done = all(
                    sum((f.quantity for f in of(found, r)), Decimal(0)) >= r.quantity
                    for r in (buy, sell)
                )
                return done, found

            what = "fills(since=before the orders) to list the fills of the suite's buy and sell"
            found = await session.eventually(probe, what)
            _check_fills_since(found, before, broker)
            mine = [f for f in found if f.client_order_id in ours]
            for request in (buy, sell):
                for fill in of(found, request):
                    _check_fill(fill, request, broker)
                total = sum(f.quantity for f in of(found, request))
                assert total == request.quantity, (
                    f"fills() lists fills of {request.client_order_id} adding up to {total}, "
                    f"not {request.quantity}"
                )
            if streamed is not None:
                listed = {f.fill_id: f for f in mine}
                for fill in streamed:
                    again = listed.get(fill.fill_id)
                    assert again is not None, (
                        f"fill {fill.fill_id!r} of stream_events() is not in fills() (which has "
                        f"{sorted(listed)}): the engine deduplicates by fill id, so both must "
                        "carry the venue's same id"
                    )
                    assert (again.quantity, again.price) == (fill.quantity, fill.price), (
                        f"fill {fill.fill_id!r} differs between stream_events() ({fill}) and "
                        f"fills() ({again})"
                    )
            latest = max(f.time for f in mine)
            with session.within("fills(since=the time of the last fill)"):
                at = await broker.fills(latest)
            _check_fills_since(at, latest, broker)
            assert any(f.client_order_id in ours and f.time == latest for f in at), (
                f"fills(since={latest.isoformat()}) must include the fill made at that time "
                "(fills at or after since)"
            )
            after = latest + FILLS_AFTER
            with session.within("fills(since=after the last fill)"):
                later = await broker.fills(after)
            _check_fills_since(later, after, broker)
            stale = [f for f in later if f.client_order_id in ours]
            assert not stale, (
                f"fills(since={after.isoformat()}) lists fills made before that time: {stale}"
            )

    async def test_account(self, rick_broker_target: BrokerTarget) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            with session.within("account()"):
                account = await session.broker.account()
            assert isinstance(account, Account), f"expected an Account, got {account!r}"
            assert account.broker == session.broker.name, (
                f"account.broker must be the broker's name {session.broker.name!r}, "
                f"got {account.broker!r}"
            )
            assert account.currency.strip(), "account.currency is empty"
            for name in ("balance", "equity", "margin_used", "margin_available"):
                _check_decimal(getattr(account, name), f"account.{name}")
            _check_time(account.time, "account.time")

    async def test_far_limit_order_rests_and_cancels(
        self, rick_broker_target: BrokerTarget
    ) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            broker = session.broker
            request = await session.far_limit()
            if OrderType.LIMIT not in broker.capabilities.order_types:
                with session.expect(Unsupported, "a limit order (not in capabilities)"):
                    await session.place(request)
                await session.no_open_order(request.client_order_id)
                return
            placed = _check_order(await session.place(request), request, broker)
            assert not placed.status.is_final, f"a far limit order must rest, got {placed}"
            _check_order(await session.open_order(request.client_order_id), request, broker)
            _check_order(
                await session.open_order(request.client_order_id, target.instrument),
                request,
                broker,
            )
            with session.within("cancel_order()"):
                canceled = await broker.cancel_order(placed)
            _check_order(canceled, request, broker)
            assert canceled.status is OrderStatus.CANCELED, (
                f"cancel_order() must return the CANCELED order, got {canceled.status.value}"
            )
            await session.no_open_order(request.client_order_id)
            with session.within("cancel_order() of a canceled order"):
                again = await broker.cancel_order(canceled)
            _check_order(again, request, broker)
            assert again.status is OrderStatus.CANCELED, (
                f"cancelling a final order must return it unchanged, got {again.status.value}"
            )
            assert again.filled_quantity == canceled.filled_quantity

    async def test_cancel_unknown_order_raises_not_found(
        self, rick_broker_target: BrokerTarget
    ) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            request = await session.far_limit()
            never_sent = Order(request=request, broker=session.broker.name, status="submitted")
            what = "cancel_order() of an order the venue never saw"
            with session.expect(NotFound, what), session.within(what):
                await session.broker.cancel_order(never_sent)

    async def test_get_order_finds_an_order_by_client_order_id(
        self, rick_broker_target: BrokerTarget
    ) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            broker = session.broker
            if OrderType.LIMIT not in broker.capabilities.order_types:
                _skip("needs a resting order (LIMIT in capabilities.order_types)")
            await session.require_flat()
            request = await session.far_limit()
            placed = await session.place(request)
            _check_order(placed, request, broker)
            with session.within("get_order()"):
                found = await broker.get_order(request.client_order_id)
            _check_order(found, request, broker)
            assert found.venue_order_id == placed.venue_order_id, (
                "get_order() returned another order than the one placed"
            )
            unknown = (await session.far_limit()).client_order_id
            what = "get_order() of a client order id the venue never saw"
            with session.expect(NotFound, what), session.within(what):
                await broker.get_order(unknown)

    async def test_same_request_twice_creates_one_order(
        self, rick_broker_target: BrokerTarget
    ) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            broker = session.broker
            if not broker.capabilities.client_order_ids:
                _skip("the venue takes no client order ids (capabilities.client_order_ids)")
            await session.require_flat()
            if OrderType.LIMIT in broker.capabilities.order_types:
                request = await session.far_limit()
                _check_order(await session.place(request), request, broker)
                _check_order(await session.place(request), request, broker)
                await session.open_order(request.client_order_id)
                working = [
                    o
                    for o in await broker.open_orders()
                    if o.client_order_id == request.client_order_id
                ]
                assert len(working) == 1, f"the same request made {len(working)} orders"
            else:
                request = session.market(Side.BUY)
                _check_order(await session.place(request), request, broker)
                _check_order(await session.place(request), request, broker)
                await session.holding(target.quantity)

    async def test_unsupported_requests_raise_unsupported(
        self, rick_broker_target: BrokerTarget
    ) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            capabilities = session.broker.capabilities
            quote = await session.quote()
            below = await session.price(quote.bid * Decimal("0.5"), ROUND_FLOOR)
            above = await session.price(quote.ask * Decimal("1.5"), ROUND_CEILING)
            cases: list[tuple[str, OrderRequest]] = []

            def case(what: str, **fields: Any) -> None:
                fields.setdefault("quantity", target.quantity)
                fields.setdefault("tag", TAG)
                cases.append((what, OrderRequest(instrument=target.instrument, **fields)))

            if OrderType.LIMIT not in capabilities.order_types:
                case("a limit order", side=Side.BUY, type=OrderType.LIMIT, limit_price=below)
            if OrderType.STOP not in capabilities.order_types:
                case("a stop order", side=Side.BUY, type=OrderType.STOP, stop_price=above)
            if OrderType.STOP_LIMIT not in capabilities.order_types:
                case(
                    "a stop-limit order",
                    side=Side.BUY,
                    type=OrderType.STOP_LIMIT,
                    stop_price=above,
                    limit_price=above,
                )
            if OrderType.TRAILING_STOP not in capabilities.order_types:
                case(
                    "a trailing stop order",
                    side=Side.BUY,
                    type=OrderType.TRAILING_STOP,
                    trail_percent=Decimal(1),
                )
            if OrderType.MARKET_IF_TOUCHED not in capabilities.order_types:
                case(
                    "a market-if-touched order",
                    side=Side.BUY,
                    type=OrderType.MARKET_IF_TOUCHED,
                    stop_price=below,  # a buy touches from above: it rests below the market
                )
            for tif in TimeInForce:
                if tif not in capabilities.time_in_force:
                    expire = utc_now() + timedelta(days=1) if tif is TimeInForce.GTD else None
                    case(
                        f"time in force {tif.value}",
                        side=Side.BUY,
                        time_in_force=tif,
                        expire_time=expire,
                    )
            if not capabilities.attached_stop_loss:
                case("an attached stop loss", side=Side.BUY, stop_loss=below)
            if not capabilities.attached_take_profit:
                case("an attached take profit", side=Side.BUY, take_profit=above)
            if not capabilities.attached_trailing_stop:
                distance = await session.price(quote.bid * Decimal("0.01"), ROUND_CEILING)
                case("an attached trailing stop", side=Side.BUY, trailing_stop=distance)
            if not capabilities.fractional_quantity:
                fractional = target.quantity.to_integral_value(ROUND_FLOOR) + Decimal("0.5")
                case("a fractional quantity", side=Side.BUY, quantity=fractional)
            if not cases:
                _skip("the capabilities claim every order type, time in force and option")
            await session.require_flat()
            for what, request in cases:
                assert capabilities.supports(request) is not None
                with session.expect(Unsupported, f"{what} (not in capabilities)"):
                    await session.place(request)
            for _, request in cases:
                await session.no_open_order(request.client_order_id)
            await session.require_flat()

    async def test_rejected_quantity_raises_order_rejected(
        self, rick_broker_target: BrokerTarget
    ) -> None:
        target = _check_target(rick_broker_target)
        if target.rejected_quantity is None:
            _skip("BrokerTarget.rejected_quantity is not given")
        async with _Session(target) as session:
            await session.require_flat()
            request = session.market(Side.BUY, target.rejected_quantity)
            with session.expect(OrderRejected, "an order of BrokerTarget.rejected_quantity") as got:
                await session.place(request)
            assert isinstance(got.error, OrderRejected)
            assert isinstance(got.error.reason, str) and got.error.reason.strip(), (
                "OrderRejected must carry the venue's reason"
            )
            await session.no_open_order(request.client_order_id)
            await session.require_flat()

    # -- protection ----------------------------------------------------------

    async def test_replace_order_protection(self, rick_broker_target: BrokerTarget) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            broker = session.broker
            capabilities = broker.capabilities
            if OrderType.LIMIT not in capabilities.order_types:
                _skip("needs a resting limit order (capabilities.order_types)")
            request = await session.far_limit()
            assert request.limit_price is not None
            order = _check_order(await session.place(request), request, broker)
            order = await session.open_order(request.client_order_id)
            stop = await session.price(request.limit_price * Decimal("0.8"), ROUND_FLOOR)
            take = await session.price(request.limit_price * Decimal("1.2"), ROUND_CEILING)
            if not capabilities.modify_order_protection:
                what = "replace_order_protection() (not in capabilities)"
                with session.expect(Unsupported, what):
                    await broker.replace_order_protection(order, stop_loss=stop)
                return
            with session.within("replace_order_protection(stop_loss=price)"):
                order = await broker.replace_order_protection(order, stop_loss=stop)
            _check_order(order, request, broker)
            assert order.request.stop_loss == stop, f"stop loss not set: {order.request}"
            kept_take: Decimal | None = None
            if capabilities.attached_take_profit:
                with session.within("replace_order_protection(take_profit=price)"):
                    order = await broker.replace_order_protection(order, take_profit=take)
                assert order.request.take_profit == take, f"take profit not set: {order.request}"
                kept_take = take
            else:
                with session.within("replace_order_protection() with both KEEP"):
                    order = await broker.replace_order_protection(
                        order, stop_loss=KEEP, take_profit=KEEP
                    )
            _check_order(order, request, broker)
            assert order.request.stop_loss == stop, f"KEEP did not keep the stop loss: {order}"
            with session.within("replace_order_protection(stop_loss=None)"):
                order = await broker.replace_order_protection(order, stop_loss=None)
            _check_order(order, request, broker)
            assert order.request.stop_loss is None, f"stop loss not removed: {order.request}"
            assert order.request.take_profit == kept_take, (
                f"KEEP did not keep the take profit: {order.request}"
            )
            assert not order.status.is_final, f"the order stopped working: {order}"

    async def test_replace_position_protection(self, rick_broker_target: BrokerTarget) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            broker = session.broker
            capabilities = broker.capabilities
            await session.require_flat()
            buy = session.market(Side.BUY)
            _check_order(await session.place(buy), buy, broker)
            await session.holding(target.quantity)
            quote = await session.quote()
            stop = await session.price(quote.bid * Decimal("0.5"), ROUND_FLOOR)
            take = await session.price(quote.ask * Decimal("1.5"), ROUND_CEILING)
            instrument = target.instrument
            if not capabilities.modify_position_protection:
                what = "replace_position_protection() (not in capabilities)"
                with session.expect(Unsupported, what):
                    await broker.replace_position_protection(instrument, stop_loss=stop)
                return
            with session.within("replace_position_protection(stop_loss=price)"):
                position = await broker.replace_position_protection(instrument, stop_loss=stop)
            _check_position(position, broker)
            assert position.instrument == instrument, f"wrong position returned: {position}"
            assert position.stop_loss == stop, f"stop loss not set: {position}"
            listed = await session.position()
            assert listed is not None and listed.stop_loss == stop, (
                f"positions() does not show the stop loss: {listed}"
            )
            kept_take: Decimal | None = None
            if capabilities.attached_take_profit:
                with session.within("replace_position_protection(take_profit=price)"):
                    position = await broker.replace_position_protection(
                        instrument, take_profit=take
                    )
                assert position.take_profit == take, f"take profit not set: {position}"
                kept_take = take
            else:
                with session.within("replace_position_protection() with both KEEP"):
                    position = await broker.replace_position_protection(
                        instrument, stop_loss=KEEP, take_profit=KEEP
                    )
            _check_position(position, broker)
            assert position.stop_loss == stop, f"KEEP did not keep the stop loss: {position}"
            with session.within("replace_position_protection(stop_loss=None)"):
                position = await broker.replace_position_protection(instrument, stop_loss=None)
            _check_position(position, broker)
            assert position.stop_loss is None, f"stop loss not removed: {position}"
            assert position.take_profit == kept_take, (
                f"KEEP did not keep the take profit: {position}"
            )
            assert position.quantity == target.quantity, f"the position changed: {position}"

    async def test_replace_position_protection_when_flat_raises_not_found(
        self, rick_broker_target: BrokerTarget
    ) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            await session.require_flat()
            stop = await session.price((await session.quote()).bid * Decimal("0.5"), ROUND_FLOOR)
            expected: type[BrokerError] | tuple[type[BrokerError], ...] = NotFound
            if not session.broker.capabilities.modify_position_protection:
                expected = (NotFound, Unsupported)
            what = "replace_position_protection() without a position"
            with session.expect(expected, what), session.within(what):
                await session.broker.replace_position_protection(target.instrument, stop_loss=stop)

    # -- errors --------------------------------------------------------------

    async def test_errors_are_broker_errors_without_credentials(
        self, rick_broker_target: BrokerTarget
    ) -> None:
        target = _check_target(rick_broker_target)
        async with _Session(target) as session:
            broker = session.broker
            unknown = target.unknown_instrument
            request = await session.far_limit()
            with session.expect(BrokerError, f"quote({unknown!r})"):
                await broker.quote(unknown)
            with session.expect(BrokerError, "cancel_order() of an order the venue never saw"):
                never_sent = Order(request=request, broker=broker.name, status="submitted")
                await broker.cancel_order(never_sent)
            with session.expect(BrokerError, f"replace_position_protection({unknown!r})"):
                await broker.replace_position_protection(unknown, stop_loss=None)
            with session.expect(BrokerError, f"place_order() of {unknown}"):
                await session.place(
                    OrderRequest(
                        instrument=unknown,
                        side=Side.BUY,
                        quantity=target.quantity,
                        time_in_force=_market_time_in_force(broker.capabilities),
                        tag=TAG,
                    )
                )
            if target.rejected_quantity is not None:
                await session.require_flat()
                rejected = session.market(Side.BUY, target.rejected_quantity)
                with session.expect(BrokerError, "an order of BrokerTarget.rejected_quantity"):
                    await session.place(rejected)
        if target.make_unauthenticated_broker is not None:
            bad = target.make_unauthenticated_broker()
            what = "connect() with bad credentials"
            try:
                with _expect(target, BrokerError, what), _within(target, what):
                    await bad.connect()
            finally:
                with _within(target, "close() after a failed connect()"):
                    await bad.close()

    async def test_unauthenticated_connect_raises_authentication_failed(
        self, rick_broker_target: BrokerTarget
    ) -> None:
        target = _check_target(rick_broker_target)
        if target.make_unauthenticated_broker is None:
            _skip("BrokerTarget.make_unauthenticated_broker is not given")
        bad = target.make_unauthenticated_broker()
        try:
            what = "connect() with bad credentials"
            with _expect(target, AuthenticationFailed, what), _within(target, what):
                await bad.connect()
        finally:
            with _within(target, "close() after a failed connect()"):
                await bad.close()
