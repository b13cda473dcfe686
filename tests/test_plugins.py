"""Plugin loading rules, in process: failure isolation, name clashes, hook checks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import click
import pytest

from rick_core.entrypoints import PluginEntryPoint
from rick_core.hookspecs import hookimpl
from rick_core.plugins import BUILTIN_PLUGINS, ComponentMissing, load_plugins


def _factory(setup: object) -> object:
    return setup


def plugin_registering(*names: str) -> SimpleNamespace:
    def register_brokers(register):  # type: ignore[no-untyped-def]
        for name in names:
            register(name, _factory)

    return SimpleNamespace(register_brokers=hookimpl(register_brokers))


def test_builtins_load_first_and_are_listed_as_builtin() -> None:
    plugin_set = load_plugins({}, entry_points=())
    assert [p.name for p in plugin_set.plugins if p.builtin] == list(BUILTIN_PLUGINS)
    assert BUILTIN_PLUGINS == (
        "rick_core.builtins.log_notifier",
        "rick_core.builtins.paper_plugin",
        "rick_core.builtins.audit_sinks",
    )
    assert plugin_set.require("notifier", "log").plugin == "rick_core.builtins.log_notifier"
    assert list(plugin_set.of_kind("audit_sink")) == ["jsonl", "sqlite"]


def test_a_plugin_cannot_take_a_builtin_name() -> None:
    hijack = SimpleNamespace(
        register_notifiers=hookimpl(lambda register: register("log", _factory))
    )
    plugin_set = load_plugins({}, entry_points=(), extra=[("hijack", hijack)])
    failed = {p.name: p.error for p in plugin_set.failed}
    assert failed == {
        "hijack": "notifier 'log' is already registered by plugin 'rick_core.builtins.log_notifier'"
    }
    assert plugin_set.require("notifier", "log").plugin == "rick_core.builtins.log_notifier"


def test_registering_a_name_twice_fails_the_plugin_and_keeps_none_of_it() -> None:
    plugin_set = load_plugins(
        {}, entry_points=(), extra=[("twice", plugin_registering("alpha", "beta", "alpha"))]
    )
    (failed,) = plugin_set.failed
    assert (failed.name, failed.error) == ("twice", "registers the broker 'alpha' twice")
    # beta was staged, then dropped with the rest: only the built-in broker is left
    assert list(plugin_set.of_kind("broker")) == ["paper"]


def test_second_plugin_claiming_a_name_fails_first_keeps_it() -> None:
    plugin_set = load_plugins(
        {},
        entry_points=(),
        extra=[("first", plugin_registering("fx")), ("second", plugin_registering("fx", "other"))],
    )
    assert plugin_set.require("broker", "fx").plugin == "first"
    assert [(p.name, p.error) for p in plugin_set.failed] == [
        ("second", "broker 'fx' is already registered by plugin 'first'")
    ]
    with pytest.raises(ComponentMissing, match="plugin 'second' failed to load"):
        plugin_set.require("broker", "other")


def test_a_misspelled_hook_fails_loudly_with_a_suggestion() -> None:
    typo = SimpleNamespace(register_broker=hookimpl(lambda register: None))
    plugin_set = load_plugins({}, entry_points=(), extra=[("typo", typo)])
    (failed,) = plugin_set.failed
    assert (
        failed.error
        == "implements unknown hook 'register_broker'; did you mean 'register_brokers'?"
    )
    assert plugin_set.manager.get_plugin("typo") is None  # unregistered, so check_pending passed


def test_an_async_registration_hook_is_refused() -> None:
    async def register_brokers(register):  # type: ignore[no-untyped-def]
        register("x", _factory)

    plugin_set = load_plugins(
        {},
        entry_points=(),
        extra=[("async", SimpleNamespace(register_brokers=hookimpl(register_brokers)))],
    )
    assert "registration hooks are synchronous" in (plugin_set.failed[0].error or "")


def test_a_hook_with_an_unknown_argument_is_refused() -> None:
    bad = SimpleNamespace(register_brokers=hookimpl(lambda register, extra: None))
    plugin_set = load_plugins({}, entry_points=(), extra=[("bad-args", bad)])
    assert "extra" in (plugin_set.failed[0].error or "")


@pytest.mark.parametrize(
    ("registration", "error"),
    [
        (lambda register: register("Bad Name", _factory), "broker name 'Bad Name' is invalid"),
        (
            lambda register: register("fine", "not callable"),
            "broker 'fine': factory 'not callable' is not callable",
        ),
        (lambda register: 1 / 0, "registration failed: ZeroDivisionError: division by zero"),
    ],
)
def test_registration_errors_name_the_problem(registration: object, error: str) -> None:
    plugin = SimpleNamespace(register_brokers=hookimpl(registration))
    plugin_set = load_plugins({}, entry_points=(), extra=[("p", plugin)])
    assert (plugin_set.failed[0].error or "").startswith(error)


def test_a_plugin_may_not_replace_a_core_command() -> None:
    shadow = click.Command("plugins", callback=lambda: None)
    plugin = SimpleNamespace(register_commands=hookimpl(lambda register: register(shadow)))
    plugin_set = load_plugins(
        {}, entry_points=(), extra=[("shadow", plugin)], reserved_commands={"plugins"}
    )
    assert plugin_set.failed[0].error == "command 'plugins' is a core rick command"


def test_require_names_what_is_available_and_suggests() -> None:
    plugin_set = load_plugins({}, entry_points=(), extra=[("fx", plugin_registering("oanda"))])
    with pytest.raises(ComponentMissing) as excinfo:
        plugin_set.require("broker", "onada")
    message = str(excinfo.value)
    assert "no installed plugin provides the broker 'onada'" in message
    assert "available brokers: oanda" in message and "did you mean 'oanda'?" in message


def test_require_for_something_nobody_offers_says_how_to_install() -> None:
    with pytest.raises(ComponentMissing, match=r"pip install rick-coinbase"):
        load_plugins({}, entry_points=()).require("broker", "coinbase")


def test_missing_strategy_message_lists_strategies() -> None:
    with pytest.raises(ComponentMissing, match=r"available strategies: momentum"):
        load_plugins({}, entry_points=()).require("strategy", "trend")


def test_a_plugin_with_a_typo_and_a_bad_argument_is_fully_unregistered() -> None:
    # pluggy adds register_broker (unknown, pending) before refusing the bad argument name
    # of register_strategies; what it added must not survive to fail check_pending().
    plugin = SimpleNamespace(
        register_broker=hookimpl(lambda register: None),
        register_strategies=hookimpl(lambda reg: None),
    )
    plugin_set = load_plugins({}, entry_points=(), extra=[("typo", plugin)])
    assert plugin_set.failed[0].name == "typo"
    assert plugin_set.manager.get_plugin("typo") is None
    plugin_set.manager.check_pending()  # nothing of it is left behind


def test_a_plugin_exiting_during_registration_does_not_end_rick() -> None:
    def register_brokers(register):  # type: ignore[no-untyped-def]
        raise SystemExit("plugin gave up")

    plugin = SimpleNamespace(register_brokers=hookimpl(register_brokers))
    plugin_set = load_plugins({}, entry_points=(), extra=[("quitter", plugin)])
    assert plugin_set.failed[0].error == "registration failed: SystemExit: plugin gave up"
    assert plugin_set.require("notifier", "log")  # the rest still works


def _module_plugin(tmp_path: Path, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)


def test_two_distributions_claiming_one_entry_point_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    source = "from rick_core.hookspecs import hookimpl\n"
    _module_plugin(tmp_path, "rick_fx_a", source)
    _module_plugin(tmp_path, "rick_fx_b", source)
    found = [
        PluginEntryPoint("fx", "rick_fx_b", "rick-fx-b", "2.0"),
        PluginEntryPoint("fx", "rick_fx_a", "rick-fx-a", "1.0"),
    ]
    plugin_set = load_plugins({}, entry_points=found)
    statuses = [(p.distribution, p.status) for p in plugin_set.plugins if not p.builtin]
    assert statuses == [("rick-fx-a", "ok"), ("rick-fx-b", "failed")]
    assert plugin_set.failed[0].error == (
        "the plugin name 'fx' is also the entry point of rick-fx-a 1.0, loaded first; two "
        "installed distributions claim it: uninstall one (pip uninstall rick-fx-b)"
    )


def test_ctrl_c_while_a_plugin_imports_is_not_swallowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    _module_plugin(tmp_path, "rick_slow_import", "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        load_plugins({}, entry_points=[PluginEntryPoint("slow", "rick_slow_import")])


def test_entry_points_load_in_name_order_not_distribution_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("rick_aaa", "rick_zzz"):
        _module_plugin(tmp_path, name, "from rick_core.hookspecs import hookimpl\n")
    found = [
        PluginEntryPoint("zeta", "rick_aaa", "rick-aaa", "1"),
        PluginEntryPoint("alpha", "rick_zzz", "rick-zzz", "1"),
    ]
    plugin_set = load_plugins({}, entry_points=found)
    assert [p.name for p in plugin_set.plugins if not p.builtin] == ["alpha", "zeta"]
