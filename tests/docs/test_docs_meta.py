"""Meta-tests: the docs stay true to the code.

- every hookspec is documented in docs/plugin-hooks.md with its exact
  signature, and nothing there documents a hook that does not exist;
- every hookspec has a test of its own (``def test_hook_<name>`` under tests/);
- the walkthrough in docs/writing-plugins.md builds, installs and is listed.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rick_core import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS_DOC = ROOT / "docs" / "plugin-hooks.md"
WALKTHROUGH = ROOT / "docs" / "writing-plugins.md"


def hookspec_names() -> list[str]:
    return sorted(
        name for name, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, "rick_spec")
    )


def signature_of(name: str) -> str:
    signature = str(inspect.signature(getattr(hookspecs, name))).replace("'", "")
    return f"def {name}{signature}"


def test_there_are_hooks_to_check() -> None:
    assert {
        "register_brokers",
        "register_strategies",
        "register_notifiers",
        "register_audit_sinks",
        "register_commands",
    } <= set(hookspec_names())


@pytest.mark.parametrize("name", hookspec_names())
def test_hook_is_documented_with_its_exact_signature(name: str) -> None:
    doc = HOOKS_DOC.read_text()
    assert re.search(rf"^## {name}$", doc, re.M), f"docs/plugin-hooks.md has no '## {name}' section"
    section = doc.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
    assert f"```python\n{signature_of(name)}\n```" in section, (
        f"the {name} section must show the exact signature:\n{signature_of(name)}"
    )


def test_no_documented_hook_is_missing_from_the_code() -> None:
    documented = set(re.findall(r"^## (register_\w+)$", HOOKS_DOC.read_text(), re.M))
    assert documented == set(hookspec_names())


@pytest.mark.parametrize("name", hookspec_names())
def test_hook_has_a_test_of_its_own(name: str) -> None:
    pattern = re.compile(rf"^\s*(async )?def test_hook_{name}\b", re.M)
    files = [p for p in (ROOT / "tests").rglob("test_*.py") if pattern.search(p.read_text())]
    assert files, f"no test named test_hook_{name} under tests/"


def walkthrough_files() -> dict[str, str]:
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", WALKTHROUGH.read_text(), re.S)
    return dict(blocks)


@pytest.mark.slow
def test_the_walkthrough_builds_installs_and_is_listed(tmp_path: Path) -> None:
    files = walkthrough_files()
    assert set(files) == {"rick-hello/pyproject.toml", "rick-hello/rick_hello/__init__.py"}
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "-q",
            "--disable-pip-version-check",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(tmp_path / "rick-hello"),
        ],
        check=True,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RICK_")}
    env["PYTHONPATH"] = str(site)
    run = [sys.executable, "-m", "rick_core"]
    listing = subprocess.run(
        [*run, "plugins", "--json"], env=env, capture_output=True, text=True, check=True
    )
    (hello,) = json.loads(listing.stdout)
    assert (hello["name"], hello["distribution"], hello["status"]) == ("hello", "rick-hello", "ok")
    assert hello["registered"] == {"command": ["hello"], "notifier": ["print"]}
    human = subprocess.run([*run, "plugins"], env=env, capture_output=True, text=True, check=True)
    shown = WALKTHROUGH.read_text().split("rick plugins\n```\n\n```\n", 1)[1].split("```", 1)[0]
    assert human.stdout == shown, "the output shown in step 4 is not what rick prints"
    said = subprocess.run([*run, "hello"], env=env, capture_output=True, text=True, check=True)
    assert said.stdout == "hello from rick-hello\n"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text.split("\n---\n", 1)[0])


def test_readme_opens_with_the_two_commands_and_ci_runs_them_as_written() -> None:
    commands = readme_commands()
    assert len(commands) == 2, "README.md must open with install-and-run, then the test command"
    install, test = commands
    assert "tools/install.py" in install and "rick " in install
    assert "nox" in test
    ci = (ROOT / ".ci" / "run").read_text()
    for command in commands:
        assert f"\n{command} || status=$?\n" in ci, f".ci/run does not run: {command}"
