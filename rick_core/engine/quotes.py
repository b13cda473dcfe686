"""The quote multiplexer: every quote in rick flows through here.

- **One upstream subscription per (broker, instrument)**, shared by every
  consumer (strategies, the WebSocket proxy's clients, the order emulator) and
  reference-counted: a broker's quote stream is opened with the union of what
  its consumers want, and an instrument leaves it when its last consumer does.
  Each broker's stream is supervised (:class:`~rick_core.feeds.FeedSupervisor`):
  silence watchdog, reconnect with backoff, resubscription.
- **Consumers never block the feed.** Delivery is a synchronous ``put_quote``
  into the consumer's own :class:`QuoteQueue`: a FIFO up to its capacity, and
  beyond it the latest quote per (source, instrument), with a count of what
  was skipped. A consumer that stops reading costs at most one quote per
  instrument it follows.
- **Best quote**: for an instrument quoted by several brokers, the best bid
  and best ask with the brokers that quote them, and the broker with the
  tightest spread (:class:`BestQuote`), over the quotes that are not stale.
- **Staleness**: each (broker, instrument) keeps the time of its last update
  (trio's clock); a quote older than ``stale_after`` seconds is stale. Market
  orders are refused on a stale price (:meth:`QuoteMux.check_fresh`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import structlog
import trio

from rick_core.feeds import Backoff, FeedEvent, FeedSupervisor
from rick_core.model import BEST, BestQuote, Quote

if TYPE_CHECKING:
    from rick_core.broker import Broker

__all__ = [
    "BEST",
    "DEFAULT_STALE_AFTER",
    "BestQuote",
    "BrokerFeed",
    "QuoteConsumer",
    "QuoteMux",
    "QuoteQueue",
    "QuoteSink",
    "StalePrice",
]

log = structlog.get_logger("rick.quotes")

DEFAULT_STALE_AFTER = 15.0
"""Seconds after its last update that a quote is stale (``[quotes] stale_after``)."""

QUOTE_BUFFER = 1024
"""Quotes a consumer may fall behind by before older ones are conflated away."""


Item = Quote | BestQuote


class QuoteSink(Protocol):
    """Anything the multiplexer delivers to: never blocks, never raises."""

    def put_quote(self, quote: Any, /) -> None: ...


def best_of(
    instrument: str, quotes: Iterable[Quote], stale: Iterable[str] = ()
) -> BestQuote | None:
    """The best bid and ask over ``quotes`` (one per broker, its ``source``),
    or None without any. Ties go to the freshest quote, then the first name."""
    chosen = sorted(quotes, key=lambda q: (-q.time.timestamp(), q.source))
    if not chosen:
        return None
    bid = max(q.bid for q in chosen)
    ask = min(q.ask for q in chosen)
    at_bid = [q for q in chosen if q.bid == bid]
    at_ask = [q for q in chosen if q.ask == ask]
    tight = min(chosen, key=lambda q: q.spread)  # min keeps the first of equals
    return BestQuote(
        instrument=instrument,
        bid=bid,
        ask=ask,
        bid_broker=at_bid[0].source,
        ask_broker=at_ask[0].source,
        bid_brokers=tuple(sorted(q.source for q in at_bid)),
        ask_brokers=tuple(sorted(q.source for q in at_ask)),
        tightest=tight.source,
        time=max(q.time for q in chosen),
        sources=tuple(sorted(q.source for q in chosen)),
        stale=tuple(sorted(stale)),
        bid_size=_total(q.bid_size for q in at_bid),
        ask_size=_total(q.ask_size for q in at_ask),
    )


def _total(sizes: Iterable[Decimal | None]) -> Decimal | None:
    known = [s for s in sizes if s is not None]
    return sum(known, Decimal(0)) if known else None


class QuoteQueue:
    """A consumer's buffer: a FIFO of up to ``capacity`` quotes; past that, the
    latest quote per (source, instrument), in the order they were first due.

    So a consumer that keeps up sees every update, one that falls behind sees
    fresh prices rather than a backlog (``skipped`` counts what it missed),
    and the memory held is bounded by the capacity plus the number of
    instruments followed, however long it stops reading.
    """

    __slots__ = ("_items", "capacity", "skipped")

    def __init__(self, capacity: int = QUOTE_BUFFER) -> None:
        if capacity < 1:
            raise ValueError("a quote buffer holds at least one quote")
        self.capacity = capacity
        self._items: deque[Any] = deque()
        self.skipped = 0

    def put(self, item: Any) -> None:
        items = self._items
        items.append(item)
        if len(items) > self.capacity:
            latest = {(q.source, q.instrument): q for q in items}
            self.skipped += len(items) - len(latest)
            items.clear()
            items.extend(latest.values())

    def pop(self) -> Any:
        """The oldest item (IndexError when empty)."""
        return self._items.popleft()

    def take(self, limit: int | None = None) -> list[Any]:
        """Up to ``limit`` (default all) items, oldest first."""
        items = self._items
        if limit is None or limit >= len(items):
            taken = list(items)
            items.clear()
            return taken
        return [items.popleft() for _ in range(limit)]

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)


class QuoteConsumer:
    """A consumer of the multiplexer with its own bounded, conflating buffer:
    ``async for quote in consumer`` or :meth:`take`. Used by the WebSocket
    proxy (one per client) and by tools."""

    __slots__ = ("_wakeup", "closed", "name", "queue")

    def __init__(self, name: str, capacity: int = QUOTE_BUFFER) -> None:
        self.name = name
        self.queue = QuoteQueue(capacity)
        self._wakeup: trio.Event | None = None
        self.closed = False

    @property
    def skipped(self) -> int:
        return self.queue.skipped

    def put_quote(self, quote: Any) -> None:
        self.queue.put(quote)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def close(self) -> None:
        """Wake any waiter; the iterator ends once the buffer is empty."""
        self.closed = True
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    async def wait(self) -> None:
        """Return once something is buffered (or the consumer is closed)."""
        while not self.queue and not self.closed:
            if self._wakeup is None:
                self._wakeup = trio.Event()
            await self._wakeup.wait()

    def take(self, limit: int | None = None) -> list[Any]:
        return self.queue.take(limit)

    async def get(self) -> Any:
        """The next quote, waiting for one. Raises trio.EndOfChannel once closed and empty."""
        await self.wait()
        if not self.queue:
            raise trio.EndOfChannel
        return self.queue.pop()

    def __aiter__(self) -> QuoteConsumer:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.get()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class StalePrice(Exception):
    """A market order met a stale price; the message says which and how old."""


class BrokerFeed:
    """One broker's quotes: the supervised upstream stream over the union of
    what consumers hold, the last quote and update time per instrument, and
    the consumers to deliver each quote to."""

    def __init__(
        self,
        mux: QuoteMux,
        name: str,
        broker: Broker,
        *,
        on_event: Callable[[FeedEvent], None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.mux = mux
        self.name = name
        self.broker = broker
        self.last: dict[str, Quote] = {}
        """The last quote of each instrument (also seeded by snapshots)."""
        self.updated: dict[str, float] = {}
        """trio time of the last update of each instrument."""
        self.received = 0
        self.instruments: frozenset[str] | None = None
        """What the broker lists (None: unknown, anything is tried)."""
        self._sinks: dict[str, list[QuoteSink]] = {}
        self._holders: dict[str, dict[object, None]] = {}
        self.taps: list[Callable[[str, Quote], None]] = []
        """Called with every quote, whatever is subscribed (the order emulator)."""
        self.supervisor: FeedSupervisor[Quote] = FeedSupervisor(
            f"{name} quotes",
            broker.stream_quotes,
            silence=broker.quote_silence,
            backoff=backoff or Backoff(),
            on_event=on_event,
        )

    # -- holding -------------------------------------------------------------

    def holders(self, instrument: str) -> int:
        """How many consumers hold ``instrument`` (its reference count)."""
        return len(self._holders.get(instrument, ()))

    @property
    def subscribed(self) -> tuple[str, ...]:
        """The instruments the upstream stream is (to be) opened with."""
        return self.supervisor.keys

    def hold(self, holder: object, instruments: Iterable[str], sink: QuoteSink | None) -> int:
        """Count ``holder`` in on ``instruments``, delivering their quotes to
        ``sink`` (None: hold the subscription without delivery, for best
        quotes). Returns the supervisor generation that includes them."""
        for instrument in instruments:
            self._holders.setdefault(instrument, {})[holder] = None
            if sink is not None:
                sinks = self._sinks.setdefault(instrument, [])
                if sink not in sinks:
                    sinks.append(sink)
        return self.supervisor.set_keys(self._holders)

    def release(self, holder: object, instruments: Iterable[str] | None = None) -> None:
        """Count ``holder`` out of ``instruments`` (None: all it holds); an
        instrument nobody holds leaves the upstream subscription."""
        names = list(self._holders) if instruments is None else list(instruments)
        for instrument in names:
            held = self._holders.get(instrument)
            if held is None or holder not in held:
                continue
            del held[holder]
            sinks = self._sinks.get(instrument)
            if sinks is not None and holder in sinks:
                sinks.remove(holder)
                if not sinks:
                    del self._sinks[instrument]
            if not held:
                del self._holders[instrument]
        self.supervisor.set_keys(self._holders)

    def seed(self, quote: Quote) -> None:
        """Record a snapshot (``Broker.quote``) as the last quote, if none is newer."""
        if quote.instrument not in self.updated:
            self.last[quote.instrument] = quote
            self.updated[quote.instrument] = trio.current_time()

    # -- running -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.supervisor.run(self._deliver, task_status=task_status)

    def _deliver(self, quote: Quote) -> None:
        instrument = quote.instrument
        self.last[instrument] = quote
        self.updated[instrument] = trio.current_time()
        self.received += 1
        for tap in self.taps:
            tap(self.name, quote)
        sinks = self._sinks.get(instrument)
        if sinks is not None:
            for sink in sinks:
                sink.put_quote(quote)
        if instrument in self.mux._best_sinks:
            self.mux._best_update(instrument)


class QuoteMux:
    """Every broker's quotes, shared by every consumer (see the module docs)."""

    def __init__(self, *, stale_after: float = DEFAULT_STALE_AFTER) -> None:
        if not stale_after > 0:
            raise ValueError("stale_after must be a positive number of seconds")
        self.stale_after = stale_after
        self.feeds: dict[str, BrokerFeed] = {}
        self._best_sinks: dict[str, list[QuoteSink]] = {}
        self._best_last: dict[str, BestQuote] = {}

    def add_broker(
        self,
        name: str,
        broker: Broker,
        *,
        on_event: Callable[[FeedEvent], None] | None = None,
        backoff: Backoff | None = None,
    ) -> BrokerFeed:
        feed = BrokerFeed(self, name, broker, on_event=on_event, backoff=backoff)
        self.feeds[name] = feed
        return feed

    def feed(self, broker: str) -> BrokerFeed:
        try:
            return self.feeds[broker]
        except KeyError:
            known = ", ".join(sorted(self.feeds)) or "none"
            raise ValueError(f"no broker named {broker!r} (running: {known})") from None

    # -- subscribing ---------------------------------------------------------

    def _check(self, feed: BrokerFeed, instruments: list[str]) -> None:
        listed = feed.instruments
        if listed:
            unknown = [i for i in instruments if i not in listed]
            if unknown:
                raise ValueError(
                    f"broker {feed.name!r} does not list {', '.join(unknown)}; "
                    f"it trades {', '.join(sorted(listed))}"
                )

    def quoting(self, instrument: str) -> list[BrokerFeed]:
        """The brokers that list ``instrument`` (or list nothing, so might)."""
        return [f for f in self.feeds.values() if not f.instruments or instrument in f.instruments]

    async def subscribe(
        self,
        sink: QuoteSink,
        instruments: Iterable[str],
        *,
        broker: str = BEST,
        confirm_within: float = 10.0,
    ) -> bool:
        """Deliver quotes of ``instruments`` from ``broker`` to ``sink``; with
        ``broker="best"``, deliver a :class:`BestQuote` whenever the best bid or
        ask (or who quotes it) changes, subscribing the instruments on every
        broker that lists them.

        Raises ValueError for an unknown broker, or an instrument the broker
        (or, for best, every broker) does not list. Returns once the upstream
        subscriptions include the instruments, or False after
        ``confirm_within`` seconds while a feed is down (the quotes then come
        once it is back).
        """
        wanted = list(dict.fromkeys(instruments))
        waits: list[tuple[BrokerFeed, int]] = []
        if broker != BEST:
            feed = self.feed(broker)
            self._check(feed, wanted)
            waits.append((feed, feed.hold(sink, wanted, sink)))
        else:
            by_feed: dict[str, list[str]] = {}
            for instrument in wanted:
                feeds = self.quoting(instrument)
                if not feeds:
                    raise ValueError(f"no running broker lists {instrument}")
                for feed in feeds:
                    by_feed.setdefault(feed.name, []).append(instrument)
            for instrument in wanted:
                sinks = self._best_sinks.setdefault(instrument, [])
                if sink not in sinks:
                    sinks.append(sink)
            for name, held in by_feed.items():
                feed = self.feeds[name]
                waits.append((feed, feed.hold(_BestHold(sink), held, None)))
            for instrument in wanted:  # what is known now, at once
                best = self.best(instrument)
                if best is not None:
                    sink.put_quote(best)
        confirmed = True
        with trio.move_on_after(confirm_within) as waiting:
            for feed, generation in waits:
                confirmed = (
                    await feed.supervisor.wait_open(generation, confirm_within) and confirmed
                )
        return confirmed and not waiting.cancelled_caught

    def unsubscribe(
        self, sink: QuoteSink, instruments: Iterable[str] | None = None, *, broker: str = BEST
    ) -> None:
        """Stop delivering ``instruments`` (None: all) from ``broker`` to ``sink``."""
        names = None if instruments is None else list(instruments)
        if broker != BEST:
            self.feed(broker).release(sink, names)
            return
        hold = _BestHold(sink)
        for feed in self.feeds.values():
            feed.release(hold, names)
        for instrument in list(self._best_sinks) if names is None else names:
            sinks = self._best_sinks.get(instrument)
            if sinks is not None and sink in sinks:
                sinks.remove(sink)
                if not sinks:
                    del self._best_sinks[instrument]
                    self._best_last.pop(instrument, None)

    def leave(self, sink: QuoteSink) -> None:
        """Everything ``sink`` holds, on every broker and best: a consumer leaving."""
        for feed in self.feeds.values():
            feed.release(sink)
        self.unsubscribe(sink)

    # -- reading -------------------------------------------------------------

    def last(self, broker: str, instrument: str) -> Quote | None:
        feed = self.feeds.get(broker)
        return None if feed is None else feed.last.get(instrument)

    def age(self, broker: str, instrument: str) -> float | None:
        """Seconds since ``instrument``'s last update from ``broker`` (None: never)."""
        feed = self.feeds.get(broker)
        updated = None if feed is None else feed.updated.get(instrument)
        return None if updated is None else trio.current_time() - updated

    def is_stale(self, broker: str, instrument: str) -> bool:
        """Whether the last quote is older than ``stale_after`` (or missing)."""
        age = self.age(broker, instrument)
        return age is None or age > self.stale_after

    def check_fresh(self, broker: str, instrument: str) -> None:
        """Raise :class:`StalePrice` if ``broker``'s subscribed price of
        ``instrument`` is stale. An instrument nobody subscribes to has no
        stream to go stale: its price comes from a snapshot when needed."""
        feed = self.feeds.get(broker)
        if feed is None or not feed.holders(instrument):
            return
        age = self.age(broker, instrument)
        if age is None:
            raise StalePrice(
                f"no price of {instrument} from {broker} yet: the quote stream has "
                "not delivered one; market orders wait for a fresh quote"
            )
        if age > self.stale_after:
            raise StalePrice(
                f"the price of {instrument} from {broker} is {age:.1f} s old (stale after "
                f"{self.stale_after:g} s, [quotes] stale_after): the feed may be down; "
                "market orders wait for a fresh quote"
            )

    def best(self, instrument: str) -> BestQuote | None:
        """The best quote of ``instrument`` over the brokers with a fresh quote."""
        fresh: list[Quote] = []
        stale: list[str] = []
        now = trio.current_time()
        limit = self.stale_after
        for feed in self.feeds.values():
            quote = feed.last.get(instrument)
            if quote is None:
                continue
            if now - feed.updated[instrument] > limit:
                stale.append(feed.name)
            else:
                fresh.append(quote)
        return best_of(instrument, fresh, stale)

    def stale(self) -> Iterator[tuple[str, str, float]]:
        """``(broker, instrument, age)`` of every subscribed instrument gone stale
        (none outside a trio run: ages are on trio's clock)."""
        try:
            now = trio.current_time()
        except RuntimeError:
            return
        for feed in self.feeds.values():
            for instrument in feed.subscribed:
                updated = feed.updated.get(instrument)
                if updated is not None and now - updated > self.stale_after:
                    yield feed.name, instrument, now - updated

    def _best_update(self, instrument: str) -> None:
        best = self.best(instrument)
        if best is None:
            return
        previous = self._best_last.get(instrument)
        if previous is not None and _same_top(previous, best):
            return
        self._best_last[instrument] = best
        for sink in self._best_sinks.get(instrument, ()):
            sink.put_quote(best)

    def stats(self) -> dict[str, Any]:
        return {
            name: {
                "subscribed": len(feed.subscribed),
                "received": feed.received,
                "connected": feed.supervisor.connected,
                "reconnects": feed.supervisor.reconnects,
                "failures": feed.supervisor.failures,
            }
            for name, feed in self.feeds.items()
        }


def _same_top(a: BestQuote, b: BestQuote) -> bool:
    return (
        a.bid == b.bid
        and a.ask == b.ask
        and a.bid_brokers == b.bid_brokers
        and a.ask_brokers == b.ask_brokers
        and a.bid_size == b.bid_size
        and a.ask_size == b.ask_size
        and a.tightest == b.tightest
    )


class _BestHold:
    """The hold a best-quote subscription of ``sink`` keeps on each broker
    (equal for the same sink, so releasing it finds it)."""

    __slots__ = ("sink",)

    def __init__(self, sink: QuoteSink) -> None:
        self.sink = sink

    def __hash__(self) -> int:
        return hash(self.sink)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _BestHold) and bool(other.sink == self.sink)
