"""webui.state: a refreshed dropdown never sends back a value the user may have changed meanwhile, and a
button whose click would be dropped while its work runs is off meanwhile."""

from __future__ import annotations

import gradio as gr

from tests.webui.events import event_chain, handlers
from webui.state import refreshed_choices, run_while_off


def test_a_value_still_offered_is_not_sent_back():
    update = refreshed_choices(["a", "b"], "b")
    assert update["choices"] == ["a", "b"] and "value" not in update


def test_a_value_gone_falls_back_or_clears():
    assert refreshed_choices(["a", "b"], "gone", "a")["value"] == "a"
    assert refreshed_choices(["a", "b"], "gone")["value"] is None
    assert refreshed_choices(["a", "b"], "gone", "not offered")["value"] is None
    assert refreshed_choices(["a"], None, "a")["value"] == "a"  # nothing picked: the fallback
    assert "value" not in refreshed_choices(["a"], None)


def test_a_multiselect_keeps_what_is_still_offered():
    assert "value" not in refreshed_choices(["a", "b", "c"], ["a", "c"])
    assert refreshed_choices(["a", "b"], ["a", "gone"])["value"] == ["a"]
    assert "value" not in refreshed_choices(["a"], [])


def test_run_while_off_turns_the_button_off_then_on_whatever_the_end():
    with gr.Blocks() as demo:
        button, out = gr.Button(), gr.Textbox()
        last = run_while_off(button.click, button, lambda: "done", None, out, concurrency_limit=1)
    off, work, on = event_chain(demo, *[fn for fn in demo.fns.values() if fn.targets[0][0] == button._id])
    assert off.outputs == [button] and off.fn() == {"__type__": "update", "interactive": False}
    assert off.concurrency_limit is None  # never queued behind another session's work
    assert work.outputs == [out] and work.fn() == "done" and work.concurrency_limit == 1
    assert on.outputs == [button] and on.fn() == {"__type__": "update", "interactive": True}
    assert not on.trigger_only_on_success  # a failed run turns it back on too
    assert last is not None  # more steps may follow
    assert handlers(demo, button) == [work]


def test_the_app_runs_start_run_and_send_with_their_button_off(ws):
    from webui.app import build_app

    demo = build_app()
    by_elem = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    cases = [("mf-train-start", "click", "mf-train-start", "on_start"), ("mf-pg-run", "click", "mf-pg-run", "on_run"),
             ("mf-chat-send", "click", "mf-chat-send", "on_send"), ("mf-chat-msg", "submit", "mf-chat-send", "on_send")]
    for trigger, event, button, handler in cases:
        (first,) = [fn for fn in demo.fns.values() if (by_elem[trigger]._id, event) in map(tuple, fn.targets)]
        off, work, on = event_chain(demo, first)[:3]
        assert off.outputs == on.outputs == [by_elem[button]] and work.fn.__name__ == handler
        assert off.fn()["interactive"] is False and on.fn()["interactive"] is True and not on.trigger_only_on_success
