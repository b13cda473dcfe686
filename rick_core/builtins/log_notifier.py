"""Built-in plugin: the ``log`` notifier, which writes notifications to rick's log.

Configure it with ``[notifiers.log] kind = "log"``; option ``min_level``
(info, warning, critical; default info) drops quieter notifications.

The factory imports the implementation when it is first called, so that
loading plugins (``rick plugins``, ``rick --help``) stays cheap: the pattern we
recommend to every plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rick_core.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    from rick_core.components import ComponentSetup
    from rick_core.notify import Notifier, NotifierFactory


def log_notifier(setup: ComponentSetup) -> Notifier:
    """Build the ``log`` notifier (see :class:`rick_core.builtins._log.LogNotifier`)."""
    from rick_core.builtins._log import LogNotifier

    return LogNotifier(setup)


@hookimpl
def register_notifiers(register: Register[NotifierFactory]) -> None:
    register("log", log_notifier, description="write notifications to rick's log")
