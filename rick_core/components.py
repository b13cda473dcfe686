"""What the core hands the factory of every configured component (broker,
notifier, audit sink): its name, its options from ``rick.toml`` and a way to
read its secrets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from attrs import field, frozen

__all__ = ["ComponentSetup", "Credentials", "NoCredentials"]


class Credentials(Protocol):
    """Secrets of one configured component, read at connect time.

    ``get`` raises ``KeyError`` naming the missing secret (never a value). Read
    a secret each time you (re)connect rather than keeping it, so a rotated
    credential takes effect on the next connection.
    """

    def get(self, name: str) -> str: ...

    def names(self) -> Sequence[str]: ...


class NoCredentials:
    """The credentials of a component that has none stored."""

    def __init__(self, component: str = "") -> None:
        self.component = component

    def get(self, name: str) -> str:
        raise KeyError(f"no credential {name!r} is stored for {self.component or 'this component'}")

    def names(self) -> Sequence[str]:
        return ()


@frozen
class ComponentSetup:
    """Handed to a broker, notifier or audit sink factory.

    ``name`` is the component's name in ``rick.toml`` (``[brokers.<name>]``,
    ``[notifiers.<name>]``, ``[audit_sinks.<name>]``); a broker uses it as the
    ``broker``/``source`` of every value it produces. ``options`` is the rest
    of that table for the plugin to validate (``kind`` removed), ``home``
    the rick home folder for any state the plugin keeps. ``source`` says where
    the component is configured (``/home/x/.rick/rick.toml [brokers.main]``):
    name it in errors about options, so the user knows what to edit.

    ``real_orders`` is True when the engine started in a trading mode that
    sends real orders (``canary`` or ``live``, see
    :mod:`rick_core.engine.modes`). The engine already keeps orders from real
    venues in the other modes; a broker whose account moves real money (as
    opposed to a venue's demo account) may refuse orders when it is False, a
    second lock for code that drives the broker without the engine.
    """

    name: str
    options: Mapping[str, Any] = field(factory=dict)
    credentials: Credentials = field(factory=NoCredentials)
    home: Path = field(factory=Path.cwd)
    source: str = ""
    real_orders: bool = False
