"""Finding the entry points of one group without importing ``importlib.metadata``.

``importlib.metadata`` pulls in the ``email`` package to parse metadata and
costs about a third of ``rick plugins``'s start-up. This scanner reads what it
needs directly: every ``*.dist-info`` and ``*.egg-info`` folder on
``sys.path``, its ``entry_points.txt``, and the ``Name``/``Version`` headers of
the few distributions that have an entry in the group. The first distribution
of a name on ``sys.path`` wins, as with ``importlib.metadata``.

Where the layout is anything else (a ``sys.path`` entry that is a zip file or
an ``.egg``, an import hook that provides distributions of its own), the scan
hands over to ``importlib.metadata``, which knows every format. A package
whose metadata cannot be read (not UTF-8, unreadable) is skipped: one broken
unrelated package must not stop rick.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable, Iterator

__all__ = ["PluginEntryPoint", "entry_points", "normalise_name"]

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


def normalise_name(name: str) -> str:
    """A name in its comparable form (PEP 503): ``Rick_FX`` -> ``rick-fx``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _section(text: str, group: str) -> Iterator[tuple[str, str]]:
    """``name = value`` pairs of ``[group]`` in an entry_points.txt (importlib's rules)."""
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            inside = line.strip("[]") == group
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
                    if key.lower() == "name":  # headers are case-insensitive, as in email
                        name = value.strip()
                    elif key.lower() == "version":
                        version = value.strip()
                return name, version
        except OSError:
            continue
    return None, None


def _folder_name(entry: str) -> str | None:
    """The distribution name a dist-info / egg-info folder name spells."""
    stem = entry.rsplit(".", 1)[0]
    return stem.split("-", 1)[0] or None


def _needs_standard_library(paths: list[str]) -> bool:
    """Layouts this scanner leaves to importlib.metadata."""
    from importlib.machinery import PathFinder

    for finder in sys.meta_path:
        if finder is not PathFinder and hasattr(finder, "find_distributions"):
            return True  # an import hook (pex, PyInstaller, ...) provides distributions
    return any(os.path.isfile(p) or p.lower().endswith(".egg") for p in paths if p)


def entry_points(group: str, path: Iterable[str] | None = None) -> list[PluginEntryPoint]:
    """Every entry point of ``group`` installed on ``path`` (default ``sys.path``)."""
    paths = list(sys.path if path is None else path)
    if _needs_standard_library(paths):
        return _standard(group, paths)
    found: list[PluginEntryPoint] = []
    seen: set[str] = set()
    for base in paths:
        folder = base or "."
        try:
            entries = os.listdir(folder)  # unsorted: the order importlib.metadata sees too
        except OSError:
            continue
        for entry in entries:
            if not entry.lower().endswith(_SUFFIXES):
                continue
            short = _folder_name(entry)
            if short is None or (key := normalise_name(short)) in seen:
                continue
            seen.add(key)
            dist_folder = os.path.join(folder, entry)
            try:
                with open(os.path.join(dist_folder, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except (OSError, ValueError):  # none, unreadable, or not UTF-8: nothing for us
                continue
            pairs = list(_section(text, group))
            if not pairs:
                continue
            try:
                name, version = _headers(dist_folder)
            except ValueError:  # metadata that is not UTF-8
                name, version = None, None
            found += [PluginEntryPoint(n, v, name, version) for n, v in pairs]
    return found


def _standard(group: str, paths: list[str]) -> list[PluginEntryPoint]:
    from importlib.metadata import distributions

    found: list[PluginEntryPoint] = []
    seen: set[str] = set()
    for dist in distributions(path=paths):
        try:
            name = dist.metadata["Name"]
            key = normalise_name(name or "")
            if key in seen:
                continue
            seen.add(key)
            points = [ep for ep in dist.entry_points if ep.group == group]
            found += [PluginEntryPoint(ep.name, ep.value, name, dist.version) for ep in points]
        except (OSError, ValueError, TypeError):  # one unreadable package must not stop rick
            continue
    return found
