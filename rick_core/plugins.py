"""Finding, loading and checking plugins.

:func:`load_plugins` builds a fresh plugin manager (nothing happens on import),
registers the built-in plugins, then every entry point of the ``rick`` group in
sorted order, and finally runs the registration hooks of each plugin to
collect what it offers.

A plugin that fails (raises on import, implements a hook that does not exist,
registers a name twice or one already taken) does not take rick down: it is
unregistered, none of its registrations are kept, and it is listed with its
error. Whoever needs one of the things it would have provided gets that error
from :meth:`PluginSet.require`.

Environment variables (as in llm and tox):

``RICK_LOAD_PLUGINS``
    Comma-separated allowlist of plugins (entry point or distribution names) to
    load; set but empty means load none. Built-in plugins always load.
``RICK_DISABLE_PLUGINS``
    Comma-separated blocklist, applied after the allowlist.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

import pluggy

from rick_core import __version__, hookspecs
from rick_core.entrypoints import PluginEntryPoint, normalise_name
from rick_core.entrypoints import entry_points as _entry_points

if TYPE_CHECKING:
    from rick_core.components import ComponentSetup

__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "PLURALS",
    "Component",
    "ComponentInvalid",
    "ComponentMissing",
    "PluginInfo",
    "PluginSet",
    "load_plugins",
]

ENTRY_POINT_GROUP: Final = "rick"

BUILTIN_PLUGINS: Final[tuple[str, ...]] = (
    "rick_core.builtins.log_notifier",
    "rick_core.builtins.paper_plugin",
    "rick_core.builtins.audit_sinks",
)
"""Modules registered as plugins before any entry point, in this order."""

Kind = Literal["broker", "strategy", "notifier", "audit_sink", "command"]

KINDS: Final[Mapping[str, Kind]] = {
    "register_brokers": "broker",
    "register_strategies": "strategy",
    "register_notifiers": "notifier",
    "register_audit_sinks": "audit_sink",
    "register_commands": "command",
}
"""Registration hook name -> the kind of thing it registers."""

PLURALS: Final[Mapping[Kind, str]] = {
    "broker": "brokers",
    "strategy": "strategies",
    "notifier": "notifiers",
    "audit_sink": "audit sinks",
    "command": "commands",
}

_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,63}$")


class ComponentMissing(LookupError):
    """A configured component is not provided by any loaded plugin."""


class ComponentInvalid(ValueError):
    """A plugin's factory refused a configured component (bad options, usually)."""


# Plain classes rather than dataclasses or attrs: this module is on the start-up path
# of every rick command, and generating those classes costs about a millisecond.


class Component:
    """One registered thing: a broker, strategy, notifier, audit sink or command."""

    __slots__ = ("description", "factory", "kind", "name", "plugin")

    def __init__(
        self, kind: Kind, name: str, factory: Any, plugin: str, description: str = ""
    ) -> None:
        self.kind = kind
        self.name = name
        self.factory = factory
        self.plugin = plugin
        self.description = description

    def __repr__(self) -> str:
        return f"Component({self.kind!r}, {self.name!r}, plugin={self.plugin!r})"


class PluginInfo:
    """What ``rick plugins`` shows about one plugin."""

    __slots__ = (
        "builtin",
        "distribution",
        "error",
        "hooks",
        "module",
        "name",
        "registered",
        "status",
        "version",
    )

    def __init__(
        self,
        name: str,
        module: str,
        builtin: bool,
        distribution: str | None = None,
        version: str | None = None,
    ) -> None:
        self.name = name
        self.module = module
        self.builtin = builtin
        self.distribution = distribution
        self.version = version
        self.status: Literal["ok", "failed", "disabled"] = "ok"
        self.error: str | None = None
        self.hooks: list[str] = []
        self.registered: dict[Kind, list[str]] = {}

    def __repr__(self) -> str:
        return f"PluginInfo({self.name!r}, status={self.status!r}, error={self.error!r})"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "status": self.status,
            "error": self.error,
            "hooks": self.hooks,
            "registered": self.registered,
        }


class _PluginFailed(Exception):
    """Internal: a plugin broke a rule while loading or registering."""


class PluginSet:
    """The outcome of :func:`load_plugins`: the manager, every plugin found and
    every component the healthy ones registered."""

    __slots__ = ("components", "manager", "plugins")

    def __init__(self, manager: pluggy.PluginManager, plugins: list[PluginInfo]) -> None:
        self.manager = manager
        self.plugins = plugins
        self.components: dict[tuple[Kind, str], Component] = {}

    def of_kind(self, kind: Kind) -> dict[str, Component]:
        return {name: c for (k, name), c in sorted(self.components.items()) if k == kind}

    @property
    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.status == "failed"]

    def problems(self, required: Iterable[tuple[Kind, str, str]]) -> list[str]:
        """Why the configured components cannot all be built: one message per
        ``(kind, registered name, configured name)`` no healthy plugin provides.
        Plugins that failed but are not needed do not matter."""
        found = []
        for kind, name, configured in required:
            try:
                self.require(kind, name)
            except ComponentMissing as exc:
                label = kind.replace("_", " ")
                found.append(f"{label} {configured!r} (kind = {name!r}): {exc}")
        return found

    def build(self, kind: Kind, name: str, setup: ComponentSetup) -> Any:
        """Call the factory registered as ``name`` with ``setup``.

        Factories do no I/O, so this is safe to do just to validate options.
        Raises :class:`ComponentMissing`, or :class:`ComponentInvalid` naming
        ``setup.source`` when the factory refuses.
        """
        component = self.require(kind, name)
        try:
            return component.factory(setup)
        except Exception as exc:
            where = setup.source or f"{kind.replace('_', ' ')} {setup.name!r}"
            raise ComponentInvalid(
                f"{where}: {_describe(exc)} (raised by plugin {component.plugin!r})"
            ) from exc

    def require(self, kind: Kind, name: str) -> Component:
        """The component registered as ``name``, or :class:`ComponentMissing`
        explaining why it is not there and what to do."""
        found = self.components.get((kind, name))
        if found is not None:
            return found
        label = kind.replace("_", " ")
        lines = [f"no installed plugin provides the {label} {name!r}."]
        suspects = [p for p in self.plugins if _names_match(name, p)]
        for plugin in suspects:
            if plugin.status == "failed":
                lines.append(f"plugin {plugin.name!r} failed to load: {plugin.error}")
            elif plugin.status == "disabled":
                lines.append(f"plugin {plugin.name!r} is disabled: {plugin.error}")
        if not suspects:
            for plugin in self.failed:
                lines.append(f"plugin {plugin.name!r} failed to load: {plugin.error}")
        available = sorted(self.of_kind(kind))
        listing = ", ".join(available) if available else "(none)"
        lines.append(f"available {PLURALS[kind]}: {listing}")
        import difflib  # only on this error path: start-up stays lean

        close = difflib.get_close_matches(name, available, n=1)
        if close:
            lines.append(f"did you mean {close[0]!r}?")
        elif not suspects:
            lines.append(f"if a plugin provides it, install it (e.g. pip install rick-{name})")
        raise ComponentMissing("\n".join(lines))


def _names_match(component: str, plugin: PluginInfo) -> bool:
    wanted = normalise_name(component)
    names = {normalise_name(plugin.name)}
    if plugin.distribution:
        dist = normalise_name(plugin.distribution)
        names |= {dist, dist.removeprefix("rick-")}
    return wanted in names


def _parse_list(value: str) -> set[str]:
    return {normalise_name(item.strip()) for item in value.split(",") if item.strip()}


def _skip_reason(ep: PluginEntryPoint, dist: str | None, environ: Mapping[str, str]) -> str | None:
    names = {normalise_name(ep.name)} | ({normalise_name(dist)} if dist else set())
    allow = environ.get("RICK_LOAD_PLUGINS")
    if allow is not None and not names & _parse_list(allow):
        return "not in RICK_LOAD_PLUGINS"
    block = environ.get("RICK_DISABLE_PLUGINS")
    if block is not None and names & _parse_list(block):
        return "listed in RICK_DISABLE_PLUGINS"
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _identity(obj: object) -> object:
    return obj


def new_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager that knows rick's hookspecs and has no plugin yet."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(
    environ: Mapping[str, str] | None = None,
    *,
    builtins: Iterable[str] = BUILTIN_PLUGINS,
    extra: Iterable[tuple[str, object]] = (),
    reserved_commands: Iterable[str] = (),
    entry_points: Iterable[PluginEntryPoint] | None = None,
) -> PluginSet:
    """Build the plugin manager and collect every component.

    ``entry_points`` replaces discovery of the installed ``rick`` entry points
    (tests pass ``()`` to see only what they register themselves). ``extra``
    adds ``(name, plugin object)`` pairs after the entry points (tests,
    embedding applications). ``reserved_commands`` are CLI names plugins may
    not take (the core's own commands).

    Whatever plugins print while they load goes to stderr, so that stdout stays
    clean for machine-readable output (``rick plugins --json``).
    """
    with contextlib.redirect_stdout(sys.stderr):
        found = _entry_points(ENTRY_POINT_GROUP) if entry_points is None else entry_points
        env = os.environ if environ is None else environ
        return _load_plugins(env, builtins, found, extra, reserved_commands)


def _load_plugins(
    env: Mapping[str, str],
    builtins: Iterable[str],
    found: Iterable[PluginEntryPoint],
    extra: Iterable[tuple[str, object]],
    reserved_commands: Iterable[str],
) -> PluginSet:
    pm = new_plugin_manager()
    plugins: list[PluginInfo] = []

    for module_name in builtins:
        info = PluginInfo(
            name=module_name,
            module=module_name,
            builtin=True,
            distribution="rick-core",
            version=__version__,
        )
        _register(pm, info, functools.partial(importlib.import_module, module_name))
        plugins.append(info)

    taken: dict[str, PluginInfo] = {}
    for ep in sorted(found, key=lambda e: (e.name, e.value)):
        dist = ep.distribution
        info = PluginInfo(
            name=ep.name, module=ep.value, builtin=False, distribution=dist, version=ep.version
        )
        plugins.append(info)
        reason = _skip_reason(ep, dist, env)
        if reason is not None:
            info.status, info.error = "disabled", reason
            continue
        earlier = taken.get(ep.name)
        if earlier is not None:
            info.status, info.error = (
                "failed",
                (
                    f"the plugin name {ep.name!r} is also the entry point of "
                    f"{earlier.distribution} {earlier.version}, loaded first; two installed "
                    f"distributions claim it: uninstall one (pip uninstall {dist or ep.value})"
                ),
            )
            continue
        taken[ep.name] = info
        _register(pm, info, ep.load)

    for name, obj in extra:
        info = PluginInfo(
            name=name, module=getattr(obj, "__name__", type(obj).__name__), builtin=False
        )
        _register(pm, info, functools.partial(_identity, obj))
        plugins.append(info)

    # Every hook implementation left must now match a spec; anything else is a bug in
    # this module, so it fails loudly rather than being listed.
    pm.check_pending()

    result = PluginSet(manager=pm, plugins=plugins)
    reserved = frozenset(reserved_commands)
    for info in plugins:
        if info.status == "ok":
            _collect(pm, info, result, reserved)
    return result


def _register(pm: pluggy.PluginManager, info: PluginInfo, load: Callable[[], object]) -> None:
    try:
        plugin = load()
    except BaseException as exc:  # a plugin's import may raise anything, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        info.status, info.error = "failed", f"import failed: {_describe(exc)}"
        return
    try:
        pm.register(plugin, name=info.name)
    except Exception as exc:  # pluggy.PluginValidationError, or a name registered twice
        # pluggy validates hook by hook and leaves what it added before the bad one;
        # take all of it out again, or check_pending() would fail every command.
        if pm.get_plugin(info.name) is plugin:
            pm.unregister(plugin)
        info.status, info.error = "failed", _describe(exc)
        return
    try:
        _check_hookimpls(pm, plugin)
    except _PluginFailed as exc:
        pm.unregister(plugin)
        info.status, info.error = "failed", str(exc)
        return
    info.hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or ())


def _check_hookimpls(pm: pluggy.PluginManager, plugin: object) -> None:
    known = sorted(KINDS)
    for caller in pm.get_hookcallers(plugin) or ():
        if caller.spec is None:
            import difflib

            close = difflib.get_close_matches(caller.name, known, n=1)
            hint = (
                f"; did you mean {close[0]!r}?" if close else f"; known hooks: {', '.join(known)}"
            )
            raise _PluginFailed(f"implements unknown hook {caller.name!r}{hint}")
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and inspect.iscoroutinefunction(impl.function):
                raise _PluginFailed(
                    f"hook {caller.name!r} is async; registration hooks are synchronous "
                    "(put the async work in the objects you register)"
                )


def _collect(
    pm: pluggy.PluginManager, info: PluginInfo, result: PluginSet, reserved: frozenset[str]
) -> None:
    """Run every registration hook of one plugin; keep all of it or none of it."""
    staged: dict[tuple[Kind, str], Component] = {}
    plugin = pm.get_plugin(info.name)

    def make_register(kind: Kind) -> Callable[..., None]:
        def register(name: str, factory: object, *, description: str = "") -> None:
            _stage(kind, name, factory, description)

        return register

    def register_command(command: Any) -> None:
        import click

        if not isinstance(command, click.Command) or not command.name:
            raise _PluginFailed(
                f"register_commands: expected a named click.Command, got {command!r}"
            )
        if command.name in reserved:
            raise _PluginFailed(f"command {command.name!r} is a core rick command")
        _stage("command", command.name, command, (command.short_help or "").strip())

    def _stage(kind: Kind, name: object, factory: object, description: str) -> None:
        label = kind.replace("_", " ")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _PluginFailed(
                f"{label} name {name!r} is invalid: use lower case letters, digits, - and _"
            )
        if not callable(factory):
            raise _PluginFailed(f"{label} {name!r}: factory {factory!r} is not callable")
        key = (kind, name)
        if key in staged:
            raise _PluginFailed(f"registers the {label} {name!r} twice")
        if key in result.components:
            owner = result.components[key].plugin
            raise _PluginFailed(f"{label} {name!r} is already registered by plugin {owner!r}")
        staged[key] = Component(
            kind=kind, name=name, factory=factory, plugin=info.name, description=description
        )

    try:
        for hook_name, kind in KINDS.items():
            caller = getattr(pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                callback = register_command if kind == "command" else make_register(kind)
                impl.function(**{arg: callback for arg in impl.argnames})
    except _PluginFailed as exc:
        _fail(pm, info, str(exc))
        return
    except BaseException as exc:  # even SystemExit: one plugin must not end rick
        if isinstance(exc, KeyboardInterrupt):
            raise
        _fail(pm, info, f"registration failed: {_describe(exc)}")
        return
    result.components.update(staged)
    for kind, name in staged:
        info.registered.setdefault(kind, []).append(name)


def _fail(pm: pluggy.PluginManager, info: PluginInfo, error: str) -> None:
    pm.unregister(name=info.name)
    info.status, info.error = "failed", error
