"""Audit records and the audit sink contract.

Every security-relevant event becomes one :class:`AuditRecord`; the core hands
each record to every configured audit sink (``register_audit_sinks`` in
:mod:`rick_core.hookspecs`). Sinks must not lose records: ``write`` returns
only once the record is accepted (buffered is fine), ``flush`` only once it
is durable.
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

__all__ = ["Actor", "AuditRecord", "AuditSink", "AuditSinkFactory", "EventType", "Severity"]


class EventType(enum.Enum):
    USER_LOGIN = "USER_LOGIN"
    USER_LOGOUT = "USER_LOGOUT"
    FAILED_AUTHENTICATION = "FAILED_AUTHENTICATION"
    API_KEY_CREATED = "API_KEY_CREATED"
    API_KEY_ROTATED = "API_KEY_ROTATED"
    API_KEY_REVOKED = "API_KEY_REVOKED"
    CREDENTIAL_STORED = "CREDENTIAL_STORED"
    CREDENTIAL_ACCESSED = "CREDENTIAL_ACCESSED"
    CREDENTIAL_ROTATED = "CREDENTIAL_ROTATED"
    MODE_SWITCHED = "MODE_SWITCHED"
    CONFIGURATION_CHANGED = "CONFIGURATION_CHANGED"
    LARGE_TRADE_EXECUTED = "LARGE_TRADE_EXECUTED"
    ORDER_SUBMITTED = "ORDER_SUBMITTED"
    ORDER_REJECTED = "ORDER_REJECTED"
    ORDER_FILLED = "ORDER_FILLED"
    ORDER_CANCELED = "ORDER_CANCELED"
    TRADING_HALTED = "TRADING_HALTED"
    TRADING_RESUMED = "TRADING_RESUMED"
    ENGINE_STARTED = "ENGINE_STARTED"
    ENGINE_STOPPED = "ENGINE_STOPPED"
    BROKER_RECONCILED = "BROKER_RECONCILED"
    RECONCILIATION_MISMATCH = "RECONCILIATION_MISMATCH"
    FEED_DISCONNECTED = "FEED_DISCONNECTED"
    FEED_STALE = "FEED_STALE"
    FEED_RECONNECTED = "FEED_RECONNECTED"
    FEED_RECOVERED = "FEED_RECOVERED"


class Severity(enum.Enum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@frozen
class Actor:
    """Who did it (``kind``: user, api_key, strategy, system) and through what
    (``source``: cli, api, telegram, engine)."""

    kind: str
    name: str
    source: str


@frozen
class AuditRecord:
    """One audited event. ``sequence`` and the hashes are set by the audit log
    when it appends the record; sinks receive them filled in."""

    type: EventType = field(converter=EventType)
    actor: Actor
    severity: Severity = field(default=Severity.INFO, converter=Severity)
    time: datetime = field(factory=utc_now, converter=to_utc)
    details: Mapping[str, Any] = field(factory=dict)
    sequence: int | None = None
    previous_hash: str | None = None
    hash: str | None = None


class AuditSink(abc.ABC):
    """Receives every audit record, in sequence order."""

    name: str

    @abc.abstractmethod
    async def write(self, record: AuditRecord) -> None:
        """Accept ``record``. Raise if it cannot be accepted: the core fails closed."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Make every accepted record durable."""

    async def close(self) -> None:
        """Flush and release resources."""
        await self.flush()


class AuditSinkFactory(Protocol):
    def __call__(self, setup: ComponentSetup) -> AuditSink: ...
