"""The plugin contract: every hook a rick plugin can implement.

A plugin is a module (or object) with functions decorated by
:data:`hookimpl` whose names are hook names below, found through an entry
point in the ``rick`` group::

    # pyproject.toml
    [project.entry-points.rick]
    hello = "rick_hello"

    # rick_hello.py
    from rick_core.hookspecs import hookimpl

    @hookimpl
    def register_notifiers(register):
        register("hello", HelloNotifier)

Every hook here is a *registration* hook: synchronous, called once while
plugins load, handed a ``register`` callback. Do no I/O in it (no network,
no files, no heavy imports at module level either: ``rick --help`` loads
every plugin). The things you register are factories; the core calls them
when the configuration asks for them, and their async methods do the work.

Names are registered per kind; a name may be taken once. A plugin that
registers a name twice, or a name another plugin already took, is listed as
failed by ``rick plugins`` and none of its registrations are used. Built-in
plugins load first, so a third party cannot take over a built-in name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar

import pluggy

if TYPE_CHECKING:
    import click

    from rick_core.broker import BrokerFactory
    from rick_core.notify import NotifierFactory
    from rick_core.security.records import AuditSinkFactory
    from rick_core.strategy import StrategyFactory

__all__ = [
    "PROJECT",
    "Register",
    "RegisterCommand",
    "hookimpl",
    "hookspec",
]

PROJECT = "rick"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

F_contra = TypeVar("F_contra", contravariant=True)


class Register(Protocol[F_contra]):
    """The ``register`` callback of a registration hook.

    ``name`` is what ``kind = "..."`` in ``rick.toml`` refers to: lower case,
    letters, digits, ``-`` and ``_``. ``description`` is one line shown by
    ``rick plugins``.
    """

    def __call__(self, name: str, factory: F_contra, *, description: str = "") -> None: ...


class RegisterCommand(Protocol):
    """The ``register`` callback of :func:`register_commands`: takes a click command
    (or group); its ``name`` becomes the ``rick`` sub-command."""

    def __call__(self, command: click.Command) -> None: ...


@hookspec
def register_brokers(register: Register[BrokerFactory]) -> None:
    """Register broker factories.

    Call ``register(name, factory)`` once per venue this plugin connects to.
    ``factory(setup)`` receives a :class:`rick_core.components.ComponentSetup`
    for each ``[brokers.<name>]`` table whose ``kind`` is ``name``, and returns
    a :class:`rick_core.broker.Broker`. The factory must not do I/O:
    ``Broker.connect`` does.
    """


@hookspec
def register_strategies(register: Register[StrategyFactory]) -> None:
    """Register strategies.

    Call ``register(name, factory)`` once per strategy; ``[strategies.<x>]``
    tables with ``kind = name`` run it. ``factory(setup)`` receives a
    :class:`rick_core.strategy.StrategySetup` and returns a
    :class:`rick_core.strategy.Strategy`; it is usually the strategy class itself.
    """


@hookspec
def register_notifiers(register: Register[NotifierFactory]) -> None:
    """Register notifier factories.

    ``factory(setup)`` receives a :class:`rick_core.components.ComponentSetup`
    for each ``[notifiers.<name>]`` table whose ``kind`` is ``name``, and
    returns a :class:`rick_core.notify.Notifier`.
    """


@hookspec
def register_audit_sinks(register: Register[AuditSinkFactory]) -> None:
    """Register audit sink factories.

    ``factory(setup)`` receives a :class:`rick_core.components.ComponentSetup`
    for each ``[audit_sinks.<name>]`` table whose ``kind`` is ``name``, and
    returns a :class:`rick_core.security.records.AuditSink`, which then
    receives every audit record.
    """


@hookspec
def register_commands(register: RegisterCommand) -> None:
    """Add sub-commands to the ``rick`` CLI.

    Call ``register(command)`` with a ``click.Command`` or ``click.Group``;
    it becomes ``rick <command.name>``. Import click inside the hook. A name
    that a core command already uses is refused. Keep module-level imports
    light: ``rick --help`` loads every plugin.
    """
