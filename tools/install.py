#!/usr/bin/env python3
"""Install rick-core and every plugin under plugins/ into the running Python.

    python3 tools/install.py              # regular install
    python3 tools/install.py --editable   # for development: edits take effect at once

Use a virtual environment unless you mean to install system-wide.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    editable = "--editable" in argv or "-e" in argv
    packages = [ROOT, *sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))]
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]
    for package in packages:
        command += ["-e", str(package)] if editable else [str(package)]
    names = ", ".join(p.name if p != ROOT else "rick-core" for p in packages)
    print(f"installing {names} into {sys.prefix}", flush=True)
    status = subprocess.call(command)
    if status == 0:
        print("installed. Try: rick --help, rick plugins, rick check")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
