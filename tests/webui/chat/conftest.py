"""Fixtures of the Chat tab's tests: a workspace, one model cache, and the scripted memory manager served
over real HTTP (tests/scripted_manager.py)."""

from __future__ import annotations

import pytest

from memfactory.serve.server import ServerThread
from tests.scripted_manager import scripted_manager_app
from webui.chat.session import ChatSession
from webui.models import BackendCache


@pytest.fixture()
def ws(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMFACTORY_WORKSPACE", str(tmp_path))
    for sub in ("presets", "runs"):
        (tmp_path / sub).mkdir()
    return tmp_path


@pytest.fixture(scope="module")
def cache():
    return BackendCache()


@pytest.fixture()
def scripted():
    """A fresh scripted server per test (its call counts and holds are the test's own)."""
    with ServerThread(scripted_manager_app()) as server:
        yield server


@pytest.fixture()
def session(ws, cache):
    chat = ChatSession(cache)
    yield chat
    chat.close()
