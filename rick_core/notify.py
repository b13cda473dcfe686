"""Notifiers: where rick tells a person what happened (a log, Telegram, ...).

A notifier plugin registers a factory (``register_notifiers`` in
:mod:`rick_core.hookspecs`) called with a
:class:`~rick_core.components.ComponentSetup`; the object it returns is a
:class:`Notifier`.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from attrs import field, frozen

from rick_core.components import ComponentSetup
from rick_core.model import to_utc, utc_now

__all__ = ["Level", "Notification", "Notifier", "NotifierFactory"]


class Level(enum.Enum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@frozen
class Notification:
    """One message for people. ``data`` holds machine-readable details."""

    title: str
    text: str = ""
    level: Level = field(default=Level.INFO, converter=Level)
    time: datetime = field(factory=utc_now, converter=to_utc)
    data: Mapping[str, Any] = field(factory=dict)


class Notifier(abc.ABC):
    """Delivers notifications. ``send`` must not raise for a delivery failure
    that a retry could fix: log it and keep going, the engine must not stop
    because a chat service is down."""

    name: str

    @abc.abstractmethod
    async def send(self, notification: Notification) -> None:
        """Deliver ``notification``."""

    async def close(self) -> None:
        """Release connections. The default has none to release."""
        return None


class NotifierFactory(Protocol):
    def __call__(self, setup: ComponentSetup) -> Notifier: ...
