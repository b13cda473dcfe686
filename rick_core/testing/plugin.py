"""The pytest plugin of rick's test helpers. Opt-in: enable it in your
top-level ``conftest.py`` with::

    pytest_plugins = ["rick_core.testing.plugin"]

It is deliberately not registered through the ``pytest11`` entry point, so
installing rick never changes another project's test session.

The conformance tests themselves are methods of
:class:`~rick_core.testing.conformance.BrokerConformance`: a test module
collects them by subclassing it. This plugin adds what a base class cannot:

- the ``rick_conformance`` marker on every conformance test (select or
  deselect the suite with ``-m rick_conformance``);
- a default ``rick_broker_target`` fixture that fails with instructions, so
  a forgotten fixture is explained rather than reported as "not found";
- a usage error when the suite is collected without pytest-trio;
- the reason and place of a skip inside a trio test, which pytest-trio 0.8
  reports as its own (or drops).
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from rick_core.testing import conformance
from rick_core.testing.conformance import BrokerConformance, BrokerTarget

__all__ = ["rick_broker_target"]

MARKER = "rick_conformance"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: a test of rick's broker conformance suite (rick_core.testing)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    found = False
    for item in items:
        if _is_conformance(item):
            item.add_marker(MARKER)
            found = True
    if found and not config.pluginmanager.hasplugin("trio"):
        raise pytest.UsageError(
            "the rick broker conformance suite runs on trio: install pytest-trio "
            "(pip install pytest-trio) and do not disable it (-p no:trio)"
        )


def _is_conformance(item: pytest.Item) -> bool:
    cls = getattr(item, "cls", None)
    return isinstance(cls, type) and issubclass(cls, BrokerConformance)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.when == "call" and _is_conformance(item):
        reasons = list(conformance.SKIP_REASONS)
        conformance.SKIP_REASONS.clear()
        test = getattr(getattr(item, "cls", None), getattr(item, "originalname", ""), None)
        code = getattr(test, "__code__", None)  # item.obj is pytest-trio's wrapper by now
        if report.skipped and reasons and code is not None:
            report.longrepr = (code.co_filename, code.co_firstlineno, f"Skipped: {reasons[-1]}")
    return report


@pytest.fixture
def rick_broker_target() -> BrokerTarget:
    """Override me: the broker the conformance suite tests."""
    pytest.fail(
        "the broker conformance suite needs a rick_broker_target fixture: define one in your "
        "conftest.py or test module that returns a rick_core.testing.BrokerTarget "
        "(see docs/testing-plugins.md in rick)",
        pytrace=False,
    )
