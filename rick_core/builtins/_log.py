"""The ``log`` notifier's implementation (imported only when one is configured)."""

from __future__ import annotations

from typing import Any

import structlog

from rick_core.components import ComponentSetup
from rick_core.notify import Level, Notification, Notifier

_ORDER = {Level.INFO: 0, Level.WARNING: 1, Level.CRITICAL: 2}


class LogNotifier(Notifier):
    """Sends each notification to the structured log, at the matching level."""

    def __init__(self, setup: ComponentSetup) -> None:
        self.name = setup.name
        raw = setup.options.get("min_level", "info")
        try:
            self.min_level = Level(raw)
        except ValueError:
            allowed = ", ".join(level.value for level in Level)
            raise ValueError(
                f"notifier {setup.name!r}: option min_level must be one of {allowed}, found {raw!r}"
            ) from None
        unknown = set(setup.options) - {"min_level"}
        if unknown:
            raise ValueError(f"notifier {setup.name!r}: unknown option(s) {sorted(unknown)}")

    async def send(self, notification: Notification) -> None:
        if _ORDER[notification.level] < _ORDER[self.min_level]:
            return
        log: Any = structlog.get_logger("rick.notify").bind(notifier=self.name)
        method = {Level.INFO: log.info, Level.WARNING: log.warning, Level.CRITICAL: log.critical}
        # data goes under its own key: a data key named "text" or "event" must not
        # collide with the log call's own arguments (send must not raise)
        method[notification.level](
            notification.title, text=notification.text, data=dict(notification.data)
        )
