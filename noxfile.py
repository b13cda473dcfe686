"""Every check a person runs, one session each. `nox` alone runs the test sessions.

nox -s tests        core test suite
nox -s plugins      each package under plugins/, with the core, in its own venv
nox -s docs         docs meta-tests (hooks documented, tested; walkthrough works)
nox -s lint         ruff check + ruff format --check
nox -s typecheck    mypy, strict on rick_core
nox -s bench        benchmarks in bench/ (ratios against raw costs, see bench/README.md)
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PLUGINS = sorted(p.parent.name for p in ROOT.glob("plugins/*/pyproject.toml"))

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "plugins", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


def junit(session: nox.Session, name: str) -> list[str]:
    """--junitxml into $RICK_REPORTS when set, so CI can print one closing tally."""
    reports = os.environ.get("RICK_REPORTS")
    return [f"--junitxml={reports}/{name}.xml"] if reports else []


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The core test suite (docs meta-tests run in their own session)."""
    session.install("-e", ".[test]")
    session.run("pytest", "--ignore=tests/docs", *junit(session, "tests"), *session.posargs)


@nox.session(python=PYTHON)
@nox.parametrize("plugin", PLUGINS or [None])
def plugins(session: nox.Session, plugin: str | None) -> None:
    """One run per package under plugins/: the core plus that plugin, nothing else."""
    if plugin is None:
        session.skip("no packages under plugins/ yet")
    session.install("-e", ".[test]", "-e", f"plugins/{plugin}[test]")
    session.run(
        "pytest", f"plugins/{plugin}/tests", *junit(session, f"plugin-{plugin}"), *session.posargs
    )


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Docs meta-tests: every hook documented with its exact signature and tested."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/docs", *junit(session, "docs"), *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test]", "mypy")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks: print figures and ratios; they inform, they do not pass or fail."""
    editable_plugins = [arg for p in PLUGINS for arg in ("-e", f"plugins/{p}")]
    session.install("-e", ".[test]", *editable_plugins)
    for script in sorted(ROOT.glob("bench/bench_*.py")):
        session.run("python", str(script), *session.posargs)
