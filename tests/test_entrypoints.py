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


def standard_keys_on(group: str, path: list[str]) -> set[tuple[str, str, str | None, str | None]]:
    from importlib.metadata import distributions

    return {
        (ep.name, ep.value, dist.metadata["Name"], dist.version)
        for dist in distributions(path=path)
        for ep in dist.entry_points
        if ep.group == group
    }


def test_a_zip_on_the_path_hands_over_to_the_standard_library(tmp_path: Path) -> None:
    import zipfile

    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("rick_zip-1.0.dist-info/METADATA", "Name: rick-zip\nVersion: 1.0\n")
        bundle.writestr("rick_zip-1.0.dist-info/entry_points.txt", "[rick]\nzipped = rick_zip\n")
    ours = {ep.key() for ep in entry_points("rick", [str(archive)])}
    assert ours == {("zipped", "rick_zip", "rick-zip", "1.0")}
    assert ours == standard_keys_on("rick", [str(archive)])


def test_an_egg_folder_on_the_path_hands_over_too(tmp_path: Path) -> None:
    egg = tmp_path / "rick_egg-1.0-py3.11.egg"
    (egg / "EGG-INFO").mkdir(parents=True)
    (egg / "EGG-INFO" / "PKG-INFO").write_text("Name: rick-egg\nVersion: 1.0\n")
    (egg / "EGG-INFO" / "entry_points.txt").write_text("[rick]\negg = rick_egg\n")
    ours = {ep.key() for ep in entry_points("rick", [str(egg)])}
    assert ours == {("egg", "rick_egg", "rick-egg", "1.0")}
    assert ours == standard_keys_on("rick", [str(egg)])


def test_an_import_hook_that_provides_distributions_hands_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib.metadata import PathDistribution

    hooked = tmp_path / "hooked" / "rick_hooked-3.0.dist-info"
    hooked.mkdir(parents=True)
    (hooked / "METADATA").write_text("Name: rick-hooked\nVersion: 3.0\n")
    (hooked / "entry_points.txt").write_text("[rick]\nhooked = rick_hooked\n")

    class Provider:  # what pex or PyInstaller install on sys.meta_path
        @staticmethod
        def find_spec(*args: object) -> None:
            return None

        @staticmethod
        def find_distributions(context: object = None) -> list[PathDistribution]:
            return [PathDistribution(hooked)]

    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, Provider])
    ours = {ep.key() for ep in entry_points("rick")}
    assert ("hooked", "rick_hooked", "rick-hooked", "3.0") in ours
    assert ours == standard_keys("rick")


def test_unreadable_metadata_is_skipped_not_fatal(tmp_path: Path) -> None:
    bad = tmp_path / "latin1-1.0.dist-info"
    bad.mkdir()
    (bad / "entry_points.txt").write_bytes(b"[rick]\ncaf\xe9 = rick_latin1\n")
    good = tmp_path / "Rick_Good-2.0.DIST-INFO"  # suffixes in any case, headers in any case
    good.mkdir()
    (good / "METADATA").write_text("name: rick-good\nversion: 2.0\n")
    (good / "entry_points.txt").write_text("[rick]\ngood = rick_good\n")
    assert [ep.key() for ep in entry_points("rick", [str(tmp_path)])] == [
        ("good", "rick_good", "rick-good", "2.0")
    ]


def test_rick_plugins_does_not_import_importlib_metadata_or_email() -> None:
    import subprocess

    code = (
        "import sys, atexit\n"
        "atexit.register(lambda: sys.stderr.write('\\nLOADED=' + ','.join(sorted("
        "m for m in ('importlib.metadata', 'email') if m in sys.modules))))\n"
        "from rick_core.cli import main\n"
        "main(['plugins', '--json'])\n"
    )
    baseline = subprocess.run(
        [sys.executable, "-c", "import sys; print('email' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    if baseline.stdout.strip() == "True":
        pytest.skip("this interpreter imports email at start-up (a .pth file does)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.rsplit("LOADED=", 1)[1] == ""
