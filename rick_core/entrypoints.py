"""Finding the entry points of one group without importing ``importlib.metadata``.

``importlib.metadata`` pulls in the ``email`` package to parse metadata and
costs about a third of ``rick plugins``'s start-up. This scanner reads what it
needs directly: every ``*.dist-info`` and ``*.egg-info`` folder on
``sys.path``, its ``entry_points.txt``, and the ``Name``/``Version`` headers of
the few distributions that have an entry in the group. The first distribution
of a name on ``sys.path`` wins, as with ``importlib.metadata``.

Where a ``sys.path`` entry is not a plain folder (a zip file, an egg), the
scan hands over to ``importlib.metadata``, which knows every format.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable, Iterator

__all__ = ["PluginEntryPoint", "entry_points"]

_SUFFIXES = (".dist-info", ".egg-info")


class PluginEntryPoint:
    """One entry point: ``name = module:attribute`` of ``distribution`` ``version``."""

    __slots__ = ("distribution", "name", "value", "version")

    def __init__(
        self, name: str, value: str, distribution: str | None = None, version: str | None = None
    ) -> None:
        self.name = name
        self.value = value
        self.distribution = distribution
        self.version = version

    def load(self) -> object:
        """Import the module and return the object the entry point names."""
        target = self.value.split("[", 1)[0].strip()  # drop legacy "[extras]"
        module_name, _, attribute = target.partition(":")
        loaded: object = importlib.import_module(module_name.strip())
        for part in filter(None, attribute.strip().split(".")):
            loaded = getattr(loaded, part)
        return loaded

    def key(self) -> tuple[str, str, str | None, str | None]:
        return (self.name, self.value, self.distribution, self.version)

    def __repr__(self) -> str:
        return f"PluginEntryPoint({self.name!r}, {self.value!r}, {self.distribution!r})"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _section(text: str, group: str) -> Iterator[tuple[str, str]]:
    """``name = value`` pairs of ``[group]`` in an entry_points.txt."""
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            inside = line[1:-1].strip() == group
            continue
        if inside and "=" in line:
            name, _, value = line.partition("=")
            yield name.strip(), value.strip()


def _headers(folder: str) -> tuple[str | None, str | None]:
    """``Name`` and ``Version`` from METADATA (dist-info) or PKG-INFO (egg-info)."""
    for filename in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(folder, filename), encoding="utf-8") as f:
                name = version = None
                for line in f:
                    if not line.strip():
                        break  # the headers end at the first blank line
                    key, _, value = line.partition(":")
                    if key == "Name":
                        name = value.strip()
                    elif key == "Version":
                        version = value.strip()
                return name, version
        except OSError:
            continue
    return None, None


def _folder_name(entry: str) -> str | None:
    """The distribution name a dist-info / egg-info folder name spells."""
    stem = (
        entry[: -len(".dist-info")] if entry.endswith(".dist-info") else entry[: -len(".egg-info")]
    )
    return stem.split("-", 1)[0] or None


def entry_points(group: str, path: Iterable[str] | None = None) -> list[PluginEntryPoint]:
    """Every entry point of ``group`` installed on ``path`` (default ``sys.path``)."""
    paths = list(sys.path if path is None else path)
    found: list[PluginEntryPoint] = []
    seen: set[str] = set()
    for base in paths:
        folder = base or "."
        if os.path.isfile(folder):  # a zip or an egg file: let the standard library read it
            return _standard(group)
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            continue
        for entry in entries:
            if not entry.endswith(_SUFFIXES):
                continue
            short = _folder_name(entry)
            if short is None or _normalise(short) in seen:
                continue
            dist_folder = os.path.join(folder, entry)
            try:
                with open(os.path.join(dist_folder, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                seen.add(_normalise(short))
                continue
            seen.add(_normalise(short))
            pairs = list(_section(text, group))
            if not pairs:
                continue
            name, version = _headers(dist_folder)
            found += [PluginEntryPoint(n, v, name or short, version) for n, v in pairs]
    return found


def _standard(group: str) -> list[PluginEntryPoint]:
    from importlib.metadata import entry_points as standard_entry_points

    return [
        PluginEntryPoint(
            ep.name,
            ep.value,
            ep.dist.name if ep.dist is not None else None,
            ep.dist.version if ep.dist is not None else None,
        )
        for ep in standard_entry_points(group=group)
    ]
