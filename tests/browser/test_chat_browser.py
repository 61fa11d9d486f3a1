"""The Chat tab in a real chromium.

Memory-R1 talks through a local fake endpoint that plays a scripted memory manager (real HTTP, the
agent's own pipeline, a real SQLite bank in the app's workspace): a fact, its correction, then the
question; the operations table shows ADD then UPDATE, the memory retrieved for the third answer is the
corrected one, and the chat shows the answer. Then an empty message, Stop mid-answer (the answer streams),
reset with its confirmation and a new session. MemAgent reads a pasted document on the tiny model: one memory per chunk, and a follow-up
question answered from the memory already read.
"""

from __future__ import annotations

import threading

import pytest
from pages import choose, wait_text

from memfactory.backends.sources import load_model_and_tokenizer
from memfactory.config import ModelConfig
from memfactory.serve.server import ServerThread
from tests.scripted_manager import scripted_manager_app

pytestmark = pytest.mark.browser

TINY = "tiny://qwen3-mini"


@pytest.fixture(scope="module")
def scripted():
    with ServerThread(scripted_manager_app()) as server:
        yield server


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.blur()


def _text(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id}").inner_text()


def _send(page, message: str, turn: int, outcome: str = "✅") -> None:
    """Type and send ``message``; wait until the status line says turn ``turn`` ended with ``outcome``."""
    _fill(page, "mf-chat-msg", message)
    page.locator("#mf-chat-send").click()
    wait_text(page, "#mf-chat-status", f"turn {turn}: {outcome}")


def test_memory_r1_remembers_a_correction_and_answers_from_it(page, scripted, workspace):
    page.get_by_role("tab", name="Chat").click()
    page.wait_for_selector("#mf-chat-send")
    assert page.locator("#mf-chat-preset input").input_value() == "memory_r1_tiny_cpu"
    page.locator("#mf-tab-chat").get_by_text("OpenAI-compatible endpoint").click()
    _fill(page, "mf-chat-url", scripted.url)
    _fill(page, "mf-chat-served", "scripted")

    _send(page, "I live in Paris", 1)
    _send(page, "Actually, I moved to Berlin", 2)
    ops = _text(page, "mf-chat-ops")
    assert "ADD" in ops and "UPDATE" in ops and ops.index("ADD") < ops.index("UPDATE"), ops
    assert "The user lives in Paris" in ops and "The user lives in Berlin" in ops  # the old and the new text
    _send(page, "Where do I live?", 3)
    retrieved = _text(page, "mf-chat-retrieved")
    assert "The user lives in Berlin" in retrieved and "Paris" not in retrieved, retrieved
    wait_text(page, "#mf-chat-chatbot", "Berlin")
    assert "Where do I live?" in _text(page, "mf-chat-chatbot")
    bank = _text(page, "mf-chat-bank-table")
    assert "The user lives in Berlin" in bank and "Paris" not in bank
    assert (workspace / "banks" / "chat.db").is_file()  # the named bank lives in the workspace
    assert page.locator("#mf-chat-bank-download").is_enabled()

    # an empty message is refused in the tab, nothing sent
    calls = dict(scripted.app.state.calls)
    _fill(page, "mf-chat-msg", "   ")
    page.locator("#mf-chat-send").click()
    wait_text(page, "#mf-chat-status", "type a message first")
    assert scripted.app.state.calls == calls

    # the answer streams into the chat; Stop mid-answer keeps what was written and says so
    hold = scripted.app.state.hold_stream["answer"] = threading.Event()  # the stream pauses after "Ber"
    try:
        _fill(page, "mf-chat-msg", "Where do I live now?")
        page.locator("#mf-chat-send").click()
        wait_text(page, "#mf-chat-chatbot", "{Ber ▌")  # the first piece, shown while the answer is written
        assert page.locator("#mf-chat-send").is_disabled()  # off while the send runs: a click is not lost unseen
        page.locator("#mf-chat-stop").click()
        wait_text(page, "#mf-chat-status", "Stopped mid-answer. The bank is unchanged")
    finally:
        hold.set()  # the next piece arrives: the generation ends there
        scripted.app.state.hold_stream.pop("answer", None)
    wait_text(page, "#mf-chat-chatbot", "⏹ Stopped mid-answer.")
    assert "{Ber …" in _text(page, "mf-chat-chatbot")
    _send(page, "Where do I live?", 5)  # the click waits for Send to come back on once the stopped send ends

    # Reset needs its confirmation; then the bank is empty, and a new session keeps on with it
    page.locator("#mf-chat-reset").click()
    wait_text(page, "#mf-chat-status", "tick the confirmation first")
    assert "The user lives in Berlin" in _text(page, "mf-chat-bank-table")
    page.locator("#mf-chat-reset-confirm input").check()
    page.locator("#mf-chat-reset").click()
    wait_text(page, "#mf-chat-status", "the bank is empty now (1 memories removed)")
    assert "The user lives in Berlin" not in _text(page, "mf-chat-bank-table")
    page.locator("#mf-chat-new-session").click()
    wait_text(page, "#mf-chat-status", "session 2")


def test_memagent_reads_a_pasted_document_one_memory_per_chunk(page):
    page.get_by_role("tab", name="Chat").click()
    page.wait_for_selector("#mf-chat-send")
    choose(page, "#mf-chat-preset", "memagent_tiny_test", exact=True)
    page.wait_for_selector("#mf-chat-doc textarea")
    document = " ".join(f"Box {i} is red." for i in range(10))
    _fill(page, "mf-chat-doc", document)
    _send(page, "Which box is red?", 1)
    _, tokenizer = load_model_and_tokenizer(ModelConfig(path=TINY))
    chunks = -(-len(tokenizer.encode(document, add_special_tokens=False)) // 32)  # memagent_tiny_test: 32 a chunk
    assert 2 <= chunks <= 3, chunks  # more than one, within its max_chunks
    trace = _text(page, "mf-chat-trace")
    assert [f"chunk {i}" in trace for i in range(chunks + 1)] == [True] * chunks + [False], trace
    assert "answer" in trace and page.locator("#mf-chat-bank-box").is_hidden()
    _send(page, "And which one is blue?", 2)
    wait_text(page, "#mf-chat-trace", "Answered from the memory already read")
    assert f"chunk {chunks - 1}" in _text(page, "mf-chat-trace")
