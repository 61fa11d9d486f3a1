"""The Chat tab in the built app: its events' wiring (several chats at once, Stop cancels Send) and its
handlers driven with the scripted memory manager (no browser)."""

from __future__ import annotations

import pytest

from tests.webui.events import event_chain, handlers, turns_a_button_off
from webui.app import build_app


@pytest.fixture()
def app(ws):
    demo = build_app()
    by_elem = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    return demo, by_elem


def _values(demo, fn, by_elem, **values):
    """The handler's input dict: every input at its default, the named elem ids set."""
    data = {block: getattr(block, "value", None) for block in fn.inputs}
    for elem_id, value in values.items():
        data[by_elem[elem_id]] = value
    return data


def test_send_runs_chats_side_by_side_and_stop_is_never_queued_behind_it(app):
    demo, by_elem = app
    (send,) = handlers(demo, by_elem["mf-chat-send"])
    (submit,) = handlers(demo, by_elem["mf-chat-msg"])
    assert send.concurrency_limit == submit.concurrency_limit == 4 and send.concurrency_id == submit.concurrency_id
    (stop,) = handlers(demo, by_elem["mf-chat-stop"])  # tells the session; no Gradio cancel (it can mark Send's outputs "Error")
    assert not stop.is_cancel_function and stop.concurrency_limit is None  # never queued behind a send
    # Send is off while a send runs (a click then would be dropped unseen) and on again after it, whatever the end
    send_button = by_elem["mf-chat-send"]
    for trigger in (send_button, by_elem["mf-chat-msg"]):
        (first,) = [fn for fn in demo.fns.values() if fn.targets[0][0] == trigger._id]
        off, work, on = event_chain(demo, first)
        assert turns_a_button_off(off) and off.outputs == [send_button] and work in (send, submit)
        assert on.outputs == [send_button] and on.fn() == {"__type__": "update", "interactive": True}
        assert not on.trigger_only_on_success and on.concurrency_limit is None


def test_a_conversation_through_the_tab_handlers(app, scripted):
    demo, by_elem = app
    (send,) = handlers(demo, by_elem["mf-chat-send"])
    fields = {"mf-chat-url": scripted.url, "mf-chat-served": "scripted", "mf-chat-preset": "memory_r1_tiny_cpu"}
    session = None
    shown = {}
    for text in ("I live in Paris", "Actually, I moved to Berlin", "Where do I live?"):
        data = _values(demo, send, by_elem, **fields, **{"mf-chat-msg": text})
        data[next(b for b in send.inputs if type(b).__name__ == "State")] = session
        sent = list(send.fn(data))
        assert [u[by_elem["mf-chat-msg"]] for u in sent].count("") == 1  # emptied once the turn starts
        for updates in sent:
            shown.update(updates)
        session = next(v for k, v in shown.items() if type(k).__name__ == "State")
    ops = shown[by_elem["mf-chat-ops"]]
    assert list(ops["op"]) == ["ADD", "UPDATE", "NONE"] and list(ops["turn"]) == [1, 2, 3]
    assert list(shown[by_elem["mf-chat-retrieved"]]["memory"]) == ["The user lives in Berlin"]
    assert list(shown[by_elem["mf-chat-bank-table"]]["memory"]) == ["The user lives in Berlin"]
    assert shown[by_elem["mf-chat-chatbot"]][-1] == {"role": "assistant", "content": "\\boxed{Berlin}"}
    assert "memory_r1_tiny_cpu (memory_r1)" in shown[by_elem["mf-chat-status"]]
    download = shown[by_elem["mf-chat-bank-download"]]
    assert download["interactive"] and download["value"].endswith("chat.db")
    session.close()


def test_empty_message_and_bad_document_upload_say_why(app, scripted, tmp_path):
    demo, by_elem = app
    (send,) = handlers(demo, by_elem["mf-chat-send"])
    data = _values(demo, send, by_elem, **{"mf-chat-url": scripted.url, "mf-chat-served": "scripted",
                                           "mf-chat-preset": "memory_r1_tiny_cpu", "mf-chat-msg": "  "})
    *_, last = list(send.fn(data))
    assert last[by_elem["mf-chat-status"]].startswith("❌ type a message first")
    assert scripted.app.state.calls == {}
    (upload,) = handlers(demo, by_elem["mf-chat-doc-upload"])
    binary = tmp_path / "image.txt"
    binary.write_bytes(bytes(range(256)))
    assert upload.fn(str(binary)) == {"__type__": "update"}  # the document box is left as it was
    text = tmp_path / "doc.txt"
    text.write_text("Document 1: Ava lives in Berlin.", encoding="utf-8")
    assert upload.fn(str(text)) == "Document 1: Ava lives in Berlin."


def _status(demo, by_elem, trigger: str, session=None, **values) -> tuple[str, object]:
    """Run ``trigger``'s handler to its end; the status line it left and the session."""
    (fn,) = [f for f in handlers(demo, by_elem[trigger]) if not f.is_cancel_function]
    data = _values(demo, fn, by_elem, **values)
    data[next(b for b in fn.inputs if type(b).__name__ == "State")] = session
    result = fn.fn(data)
    last = list(result)[-1] if trigger in ("mf-chat-send", "mf-chat-msg") else result
    return last[by_elem["mf-chat-status"]], last[next(k for k in last if type(k).__name__ == "State")]


def test_bad_input_says_why_in_the_tab_and_sends_nothing(app, scripted, tmp_path):
    import sqlite3

    demo, by_elem = app
    local = {"mf-chat-preset": "memory_r1_tiny_cpu", "mf-chat-model": "tiny://qwen3-mini"}
    status, _ = _status(demo, by_elem, "mf-chat-send", **{"mf-chat-url": "http://127.0.0.1:9/v1",
                                                          "mf-chat-served": "m", "mf-chat-msg": "hello"})
    assert status.startswith("❌ cannot reach http://127.0.0.1:9/v1") and "is the server running?" in status
    gone = tmp_path / "runs" / "r1" / "checkpoints" / "step-000004"
    status, _ = _status(demo, by_elem, "mf-chat-send", **local, **{"mf-chat-ckpt": str(gone), "mf-chat-msg": "hi"})
    assert status.startswith("❌ ") and str(gone) in status
    status, session = _status(demo, by_elem, "mf-chat-send", **local, **{"mf-chat-msg": "Paris " * 9000})
    assert "over the model's context of 8,192 tokens. Nothing was sent" in status and session.turns == []

    endpoint = {"mf-chat-url": scripted.url, "mf-chat-served": "scripted", "mf-chat-preset": "memory_r1_tiny_cpu"}
    stranger = tmp_path / "stranger.db"
    with sqlite3.connect(stranger) as conn:
        conn.execute("CREATE TABLE runs (id TEXT)")
    status, session = _status(demo, by_elem, "mf-chat-bank-upload", **endpoint, **{"mf-chat-bank-upload": str(stranger)})
    assert status.startswith("❌ ") and "not a memory bank" in status and session.bank is None
    status, session = _status(demo, by_elem, "mf-chat-send", session, **endpoint, **{"mf-chat-msg": "I live in Paris"})
    assert "turn 1: ✅" in status and session.bank.count() == 1
    status, session = _status(demo, by_elem, "mf-chat-reset", session, **endpoint)
    assert status.startswith("❌ tick the confirmation first") and session.bank.count() == 1  # nothing removed
    status, session = _status(demo, by_elem, "mf-chat-reset", session, **endpoint, **{"mf-chat-reset-confirm": True})
    assert status == "🗑️ the bank is empty now (1 memories removed)" and session.bank.count() == 0
    assert scripted.app.state.calls == {"extract": 1, "update": 1, "answer": 1}  # only the good turn was sent
    session.close()
