"""Test helpers for rick plugin authors.

:class:`BrokerConformance` is the broker contract as a test suite and
:class:`BrokerTarget` says what to run it against; enable the pytest plugin
with ``pytest_plugins = ["rick_core.testing.plugin"]`` in your top-level
``conftest.py``. See ``docs/testing-plugins.md``.

Importing this package is cheap: pytest and trio load only when one of the
names is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rick_core.testing.conformance import BrokerConformance, BrokerTarget

__all__ = ["BrokerConformance", "BrokerTarget"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rick_core.testing import conformance

        return getattr(conformance, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
