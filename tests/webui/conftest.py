"""Fixtures the web UI's tab tests share: an empty workspace and one model cache per test module."""

from __future__ import annotations

import pytest

from webui.models import BackendCache


@pytest.fixture()
def ws(tmp_path, monkeypatch):
    """An empty workspace (presets/, runs/) so nothing touches the checkout; a test file may override it."""
    monkeypatch.setenv("MEMFACTORY_WORKSPACE", str(tmp_path))
    for sub in ("presets", "runs"):
        (tmp_path / sub).mkdir()
    return tmp_path


@pytest.fixture(scope="module")
def cache():
    """One model cache for the whole module: the tiny model loads once."""
    return BackendCache()
