"""The entry-point scanner agrees with importlib.metadata, which it replaces on
rick's start-up path."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points as standard
from pathlib import Path

import pytest

from rick_core.entrypoints import PluginEntryPoint, entry_points


def standard_keys(group: str) -> set[tuple[str, str, str | None, str | None]]:
    return {
        (ep.name, ep.value, ep.dist.name if ep.dist else None, ep.dist.version if ep.dist else None)
        for ep in standard(group=group)
    }


@pytest.mark.parametrize("group", ["console_scripts", "pytest11", "rick", "no.such.group"])
def test_same_answer_as_importlib_metadata_on_this_environment(group: str) -> None:
    ours = {ep.key() for ep in entry_points(group)}
    assert ours == standard_keys(group)


def test_console_scripts_are_not_trivially_empty() -> None:
    # the comparison above means something only if the groups have entries
    assert any(ep.name == "pytest" for ep in entry_points("console_scripts"))
    assert any(ep.name == "rick" for ep in entry_points("console_scripts"))


def dist_info(site: Path, folder: str, name: str, version: str, entry_points_txt: str) -> None:
    path = site / folder
    path.mkdir(parents=True)
    (path / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nName: not-a-header\n"
    )
    (path / "entry_points.txt").write_text(entry_points_txt)


def test_edge_cases_agree_with_importlib_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    dist_info(
        first,
        "rick_fx-1.0.dist-info",
        "rick-fx",
        "1.0",
        "# comment\n[console_scripts]\nfx = rick_fx.cli:main\n\n"
        "[rick]\nfx = rick_fx\n# another comment\nfx_extra = rick_fx.more:plugin [speed]\n",
    )
    # the same distribution again, later on the path: shadowed, as importlib.metadata does
    dist_info(second, "rick_fx-0.9.dist-info", "rick-fx", "0.9", "[rick]\nold = rick_fx_old\n")
    dist_info(
        second, "Rick.Other-2.0.dist-info", "Rick.Other", "2.0", "[rick]\nother = rick_other\n"
    )
    (second / "no_entry_points-1.0.dist-info").mkdir()
    egg = second / "rick_egg.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 1.0\nName: rick-egg\nVersion: 0.3\n")
    (egg / "entry_points.txt").write_text("[rick]\negg = rick_egg:plugin\n")
    path = [str(first), str(second), str(tmp_path / "missing")]
    monkeypatch.setattr(sys, "path", path)
    ours = {ep.key() for ep in entry_points("rick", path)}
    assert ours == standard_keys("rick")
    assert ours == {
        ("fx", "rick_fx", "rick-fx", "1.0"),
        ("fx_extra", "rick_fx.more:plugin [speed]", "rick-fx", "1.0"),
        ("other", "rick_other", "Rick.Other", "2.0"),
        ("egg", "rick_egg:plugin", "rick-egg", "0.3"),
    }


def test_load_resolves_module_attribute_paths() -> None:
    assert PluginEntryPoint("x", "os.path:join").load() is __import__("os.path").path.join
    assert PluginEntryPoint("x", "json").load() is __import__("json")
    assert PluginEntryPoint("x", "json:decoder.JSONDecoder [extra]").load() is (
        __import__("json").decoder.JSONDecoder
    )
    with pytest.raises(ModuleNotFoundError):
        PluginEntryPoint("x", "no_such_module_here").load()


def test_a_zip_on_the_path_hands_over_to_the_standard_library(tmp_path: Path) -> None:
    archive = tmp_path / "bundle.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip archive
    ours = {ep.key() for ep in entry_points("console_scripts", [str(archive), *sys.path])}
    assert ours == standard_keys("console_scripts")
