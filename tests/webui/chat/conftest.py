"""Fixtures of the Chat tab's tests: the scripted memory manager served over real HTTP
(tests/scripted_manager.py) and a session on the shared workspace and model cache (tests/webui/conftest.py)."""

from __future__ import annotations

import pytest

from memfactory.serve.server import ServerThread
from tests.scripted_manager import scripted_manager_app
from webui.chat.session import ChatSession


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
