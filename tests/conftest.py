from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_rick_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No test reads the developer's ~/.rick or plugin selection."""
    monkeypatch.setenv("RICK_HOME", str(tmp_path_factory.mktemp("rick-home")))
    for name in ("RICK_CONFIG", "RICK_LOAD_PLUGINS", "RICK_DISABLE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
