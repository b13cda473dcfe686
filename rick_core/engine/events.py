"""Order and fill events for consumers outside the strategies (the WebSocket
proxy's clients): every event the order manager applies, fanned out to each
subscriber's bounded queue.

Unlike quotes, events cannot be conflated: a missing fill is a wrong
position. So a subscriber that falls ``capacity`` events behind is marked
``overflowed`` and gets nothing more; its owner must drop it (the proxy
closes the connection, saying why) and the client reads the state again.
Publishing never blocks and never waits for a subscriber.
"""

from __future__ import annotations

from collections import deque

import trio

from rick_core.model import Fill, Order

__all__ = ["EVENT_BUFFER", "EventHub", "EventSubscriber"]

EVENT_BUFFER = 10_000
"""Events a subscriber may fall behind by before it is cut off."""

Event = tuple[str | None, Order | Fill]
"""``(strategy, event)``: the strategy that owns the order (None: not rick's)."""


class EventSubscriber:
    """One consumer's queue of ``(strategy, order or fill)``."""

    __slots__ = ("_items", "_wakeup", "capacity", "closed", "overflowed")

    def __init__(self, capacity: int = EVENT_BUFFER) -> None:
        self.capacity = capacity
        self._items: deque[Event] = deque()
        self._wakeup: trio.Event | None = None
        self.overflowed = False
        self.closed = False

    def put(self, item: Event) -> None:
        if self.overflowed or self.closed:
            return
        if len(self._items) >= self.capacity:
            self.overflowed = True
        else:
            self._items.append(item)
        self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def close(self) -> None:
        self.closed = True
        self._wake()

    async def wait(self) -> None:
        """Return once an event is queued, or the subscriber overflowed or closed."""
        while not self._items and not self.overflowed and not self.closed:
            if self._wakeup is None:
                self._wakeup = trio.Event()
            await self._wakeup.wait()

    def take(self) -> list[Event]:
        items = list(self._items)
        self._items.clear()
        return items

    def __len__(self) -> int:
        return len(self._items)


class EventHub:
    """Fans every order and fill event out to the subscribers."""

    def __init__(self) -> None:
        self._subscribers: list[EventSubscriber] = []

    def subscribe(self, capacity: int = EVENT_BUFFER) -> EventSubscriber:
        subscriber = EventSubscriber(capacity)
        self._subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: EventSubscriber) -> None:
        subscriber.close()
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)

    def publish(self, owner: str | None, event: Order | Fill) -> None:
        for subscriber in self._subscribers:
            subscriber.put((owner, event))

    def __len__(self) -> int:
        return len(self._subscribers)
