"""CLI start-up: median wall time of `rick --version` and `rick plugins`, each
against a bare `python -c pass` measured in the same run.

Goal (issue #2): under 0.25 s and under 5x bare Python. Runs interleave the
three commands so that machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
    )
    return time.perf_counter() - start


SYNTHETIC = """
from rick_core.hookspecs import hookimpl


@hookimpl
def register_brokers(register):
    register("{name}", dict, description="synthetic broker")


@hookimpl
def register_commands(register):
    import click

    @click.command(name="{name}-status")
    def status():
        \"\"\"Synthetic command.\"\"\"

    register(status)
"""


def synthetic_site(count: int) -> str:
    """A site folder with ``count`` small plugin distributions, built and installed
    for real (wheel + entry point), as the four first-party plugins will be."""
    root = Path(tempfile.mkdtemp(prefix="rick-bench-"))
    sources = []
    for i in range(count):
        name = f"synth{i}"
        folder = root / f"rick-{name}"
        (folder / f"rick_{name}").mkdir(parents=True)
        (folder / f"rick_{name}" / "__init__.py").write_text(SYNTHETIC.format(name=name))
        (folder / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
            f'[project]\nname = "rick-{name}"\nversion = "0.0.1"\n'
            f'[project.entry-points.rick]\n{name} = "rick_{name}"\n'
        )
        sources.append(str(folder))
    site = root / "site"
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
            *sources,
        ],
        check=True,
    )
    return str(site)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--synthetic",
        type=int,
        default=4,
        help="extra throwaway plugins installed for the 'rick plugins +N' row",
    )
    args = parser.parse_args()

    rick = shutil.which("rick", path=os.path.dirname(sys.executable)) or shutil.which("rick")
    if rick is None:
        sys.exit("the rick console script is not installed in this environment")
    # A user's Python writes .pyc files (pip compiles them at install time too); a
    # PYTHONDONTWRITEBYTECODE inherited from a tool would time a cold compile on every run.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RICK_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        # the floor of any click CLI with pluggy plugins: the libraries' own import
        "import click,pluggy": [sys.executable, "-c", "import click, pluggy"],
        "rick --version": [rick, "--version"],
        "rick plugins": [rick, "plugins"],
        "rick --help": [rick, "--help"],
    }
    envs = {name: env for name in commands}
    if args.synthetic:
        label = f"rick plugins +{args.synthetic}"
        commands[label] = [rick, "plugins"]
        envs[label] = env | {"PYTHONPATH": synthetic_site(args.synthetic)}
    for name, command in commands.items():  # warm the file cache and .pyc files
        wall(command, envs[name])
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, command in commands.items():
            samples[name].append(wall(command, envs[name]))

    bare = statistics.median(samples["python -c pass"])
    listing = subprocess.run(
        [rick, "plugins", "--json", "--all"], env=env, capture_output=True, text=True, check=True
    ).stdout
    count = len(json.loads(listing))
    print(f"CLI start-up, median of {args.runs} runs ({count} plugins incl. built-in)")
    for name, values in samples.items():
        median = statistics.median(values)
        goal = (
            ""
            if not name.startswith("rick")
            else ("  ok" if median < 0.25 and median / bare < 5 else "  MISSES GOAL (<0.25 s, <5x)")
        )
        print(f"  {name:18} {median * 1000:7.1f} ms   {median / bare:5.2f}x bare python{goal}")


if __name__ == "__main__":
    main()
