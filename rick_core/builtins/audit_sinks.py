"""Built-in plugin: the ``jsonl`` and ``sqlite`` audit sinks.

Every audit record goes to rick's own hash-chained log (``$RICK_HOME/audit.db``);
a sink keeps another copy, which is what catches someone rewriting that log
whole. Configure one with, for example::

    [audit_sinks.copy]
    kind = "jsonl"
    path = "/mnt/other-disk/rick-audit.jsonl"   # relative paths are under RICK_HOME

- ``jsonl``: one JSON line per record, fsynced on flush; option ``path``
  (default ``audit.jsonl``);
- ``sqlite``: a second hash-chained audit log file, verifiable on its own;
  option ``path`` (default ``audit-copy.db``).

Like every built-in plugin, the factories import their implementation
(:mod:`rick_core.security.audit`) only when first called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rick_core.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    from rick_core.components import ComponentSetup
    from rick_core.security.records import AuditSink, AuditSinkFactory


def jsonl_sink(setup: ComponentSetup) -> AuditSink:
    """Build the ``jsonl`` sink (see :class:`rick_core.security.audit.JsonlSink`)."""
    from rick_core.security.audit import JsonlSink

    return JsonlSink(setup)


def sqlite_sink(setup: ComponentSetup) -> AuditSink:
    """Build the ``sqlite`` sink (see :class:`rick_core.security.audit.AuditLogSink`)."""
    from rick_core.security.audit import AuditLogSink

    return AuditLogSink(setup)


@hookimpl
def register_audit_sinks(register: Register[AuditSinkFactory]) -> None:
    register("jsonl", jsonl_sink, description="append audit records to a JSON-lines file")
    register("sqlite", sqlite_sink, description="keep a second hash-chained audit log file")
