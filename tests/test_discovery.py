"""End to end: real plugin distributions, built into wheels and installed into
a private site directory, found through the ``rick`` entry-point group by a
``rick`` process of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HELLO = '''
"""A throwaway rick plugin: a notifier and a command. It chatters on import."""
from rick_core.hookspecs import hookimpl

print("rick-hello loaded")


class HelloNotifier:
    def __init__(self, setup):
        self.name = setup.name


@hookimpl
def register_notifiers(register):
    register("hello", HelloNotifier, description="says hello")


@hookimpl
def register_commands(register):
    import click

    @click.command()
    @click.option("--name", default="world")
    def hello(name):
        """Greet someone (from the rick-hello plugin)."""
        click.echo(f"hello, {name}")

    register(hello)
'''

BROKEN = """
import os
import pathlib

if "BROKEN_IMPORT_MARKER" in os.environ:  # lets a test prove whether it was imported
    pathlib.Path(os.environ["BROKEN_IMPORT_MARKER"]).touch()
raise RuntimeError("rick-broken cannot import: missing native library")
"""

OURS = {"hello", "broken"}  # other plugins installed in the environment are ignored


def _write_distribution(root: Path, dist: str, module: str, entry: str, source: str) -> Path:
    folder = root / dist
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text(textwrap.dedent(source))
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(f'''
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [project]
        name = "{dist}"
        version = "1.2.3"
        dependencies = ["rick-core"]

        [project.entry-points.rick]
        {entry} = "{module}"
        ''')
    )
    return folder


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site directory holding two installed plugin distributions."""
    root = tmp_path_factory.mktemp("dists")
    sources = [
        _write_distribution(root, "rick-hello", "rick_hello", "hello", HELLO),
        _write_distribution(root, "rick-broken", "rick_broken", "broken", BROKEN),
    ]
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), *map(str, sources)],
        check=True,
    )
    site = root / "site"
    subprocess.run(
        [
            *pip,
            "install",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            *map(str, sorted(wheels.glob("*.whl"))),
        ],
        check=True,
    )
    return site


def rick(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RICK_")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), environ.get("PYTHONPATH")]))
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "rick_core", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def listed(site: Path, **env: str) -> dict[str, dict[str, object]]:
    result = rick(site, "plugins", "--json", **env)
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout) if p["name"] in OURS}


def test_installed_plugins_are_listed_with_version_hooks_and_failures(plugin_site: Path) -> None:
    plugins = listed(plugin_site)
    assert list(plugins) == ["broken", "hello"]  # entry points load in sorted order
    hello = plugins["hello"]
    assert (hello["distribution"], hello["version"], hello["status"]) == (
        "rick-hello",
        "1.2.3",
        "ok",
    )
    assert hello["hooks"] == ["register_commands", "register_notifiers"]
    assert hello["registered"] == {"notifier": ["hello"], "command": ["hello"]}
    broken = plugins["broken"]
    assert broken["status"] == "failed"
    assert broken["error"] == (
        "import failed: RuntimeError: rick-broken cannot import: missing native library"
    )


def test_human_listing_shows_the_failure_and_exits_zero(plugin_site: Path) -> None:
    result = rick(plugin_site, "plugins")
    assert result.returncode == 0
    assert "broken (rick-broken 1.2.3)  FAILED" in result.stdout
    assert "missing native library" in result.stdout
    assert "hello (rick-hello 1.2.3)" in result.stdout


def test_a_plugin_command_runs_and_is_in_help(plugin_site: Path) -> None:
    result = rick(plugin_site, "hello", "--name", "trader")
    assert (result.returncode, result.stdout) == (0, "hello, trader\n")
    assert "Greet someone (from the rick-hello plugin)." in rick(plugin_site, "--help").stdout


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RICK_LOAD_PLUGINS": ""}, {"hello": "disabled", "broken": "disabled"}),
        ({"RICK_LOAD_PLUGINS": "hello"}, {"hello": "ok", "broken": "disabled"}),
        ({"RICK_LOAD_PLUGINS": "rick-hello, rick_broken"}, {"hello": "ok", "broken": "failed"}),
        ({"RICK_DISABLE_PLUGINS": "broken"}, {"hello": "ok", "broken": "disabled"}),
        (
            {"RICK_LOAD_PLUGINS": "hello,broken", "RICK_DISABLE_PLUGINS": "rick-hello"},
            {"hello": "disabled", "broken": "failed"},
        ),
    ],
)
def test_allow_and_block_lists(
    plugin_site: Path, env: dict[str, str], expected: dict[str, str]
) -> None:
    plugins = listed(plugin_site, **env)
    assert {name: p["status"] for name, p in plugins.items()} == expected


def test_a_disabled_plugin_is_not_even_imported(plugin_site: Path, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    plugins = listed(plugin_site, RICK_DISABLE_PLUGINS="broken", BROKEN_IMPORT_MARKER=str(marker))
    assert plugins["broken"]["error"] == "listed in RICK_DISABLE_PLUGINS"
    assert not marker.exists()
    listed(plugin_site, BROKEN_IMPORT_MARKER=str(marker))
    assert marker.exists()  # the marker works: enabled, the module is imported


def test_check_passes_when_the_failed_plugin_is_not_needed(
    plugin_site: Path, tmp_path: Path
) -> None:
    config = tmp_path / "rick.toml"
    config.write_text('[notifiers.desk]\nkind = "hello"\n')
    result = rick(plugin_site, "check", "--config", str(config), RICK_HOME=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "notifier desk: hello (from hello)" in result.stdout
    assert "plugin(s) broken failed to load; this config does not need them" in result.stdout
    (log_file,) = (tmp_path / "logs").glob("rick-*.jsonl")
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    warning = next(e for e in events if e["event"] == "plugin failed to load")
    assert (warning["plugin"], warning["level"]) == ("broken", "warning")
    assert "missing native library" in warning["error"]
    assert result.stderr.splitlines()[0] == "rick-hello loaded"  # a plugin's print: not stdout
    assert json.loads(result.stderr.splitlines()[1])["event"] == "plugin failed to load"


def test_check_refuses_when_a_needed_plugin_failed(plugin_site: Path, tmp_path: Path) -> None:
    config = tmp_path / "rick.toml"
    config.write_text('[notifiers.desk]\nkind = "hello"\n\n[brokers.main]\nkind = "broken"\n')
    result = rick(plugin_site, "check", "--config", str(config), RICK_HOME=str(tmp_path))
    assert result.returncode == 1
    assert "problem: broker 'main' (kind = 'broken'): no installed plugin provides" in result.stderr
    assert (
        "plugin 'broken' failed to load: import failed: RuntimeError: rick-broken cannot import"
        in result.stderr
    )
