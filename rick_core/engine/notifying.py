"""Telling people: the engine's notifications, delivered to every configured
notifier (``[notifiers.<name>]``) without ever holding up trading.

:meth:`Notifications.notify` never blocks: notifications wait in a bounded
queue, and one task per notifier delivers them in order, each send under a
deadline. A notifier that is down or slow loses the oldest notifications
once its queue is full; that is counted and logged, because a chat service
must never cost an order or an audit record (the audit log has them all).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import structlog
import trio

from rick_core.notify import Notification, Notifier

__all__ = ["NOTIFY_QUEUE", "SEND_TIMEOUT", "Notifications"]

log = structlog.get_logger("rick.notify")

NOTIFY_QUEUE = 100
"""Notifications waiting per notifier before the oldest are dropped."""

SEND_TIMEOUT = 15.0
"""Seconds one delivery may take."""


class _Outbox:
    __slots__ = ("dropped", "items", "notifier", "sent", "wakeup")

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.items: deque[Notification] = deque()
        self.wakeup = trio.Event()
        self.dropped = 0
        self.sent = 0


class Notifications:
    """Fans notifications out to the notifiers."""

    def __init__(
        self,
        notifiers: Sequence[Notifier] = (),
        *,
        capacity: int = NOTIFY_QUEUE,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.capacity = capacity
        self.send_timeout = send_timeout
        self._outboxes = [_Outbox(n) for n in notifiers]

    def __len__(self) -> int:
        return len(self._outboxes)

    def notify(self, notification: Notification) -> None:
        for box in self._outboxes:
            if len(box.items) >= self.capacity:
                box.items.popleft()
                box.dropped += 1
                log.warning(
                    "notification dropped: the notifier is behind",
                    notifier=box.notifier.name,
                    dropped=box.dropped,
                )
            box.items.append(notification)
            box.wakeup.set()

    async def run(self) -> None:
        """Deliver until cancelled."""
        async with trio.open_nursery() as nursery:
            for box in self._outboxes:
                nursery.start_soon(self._deliver, box)

    async def _deliver(self, box: _Outbox) -> None:
        while True:
            await self._drain(box)
            box.wakeup = trio.Event()
            await box.wakeup.wait()

    async def _drain(self, box: _Outbox) -> None:
        """Send what ``box`` holds, oldest first, each send under the deadline."""
        while box.items:
            with trio.move_on_after(self.send_timeout) as scope:
                try:
                    await box.notifier.send(box.items.popleft())
                    box.sent += 1
                except Exception as exc:
                    log.warning("notifier failed", notifier=box.notifier.name, error=str(exc))
            if scope.cancelled_caught:
                log.warning(
                    "notifier timed out", notifier=box.notifier.name, seconds=self.send_timeout
                )

    async def flush(self) -> None:
        """Deliver what is queued (at shutdown, under the caller's deadline)."""
        for box in self._outboxes:
            await self._drain(box)

    async def aclose(self) -> None:
        for box in self._outboxes:
            try:
                await box.notifier.close()
            except Exception as exc:
                log.warning("notifier close failed", notifier=box.notifier.name, error=str(exc))

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            box.notifier.name: {"sent": box.sent, "dropped": box.dropped, "queued": len(box.items)}
            for box in self._outboxes
        }
