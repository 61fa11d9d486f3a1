"""The Train tab in the built app: its preset list follows Assemble without undoing a newer pick, and a
timer poll for a run the user has left is dropped."""

from __future__ import annotations

import gradio as gr

from memfactory.tracking.runs import RunsDB
from webui import workspace
from webui.app import build_app
from webui.train import view as train_view


def _handler(demo, trigger, output):
    """The one function an event of ``trigger`` runs with ``output`` among its outputs."""
    fns = [fn for fn in demo.fns.values() if any(t[0] == trigger._id for t in fn.targets)
           and output._id in {block._id for block in fn.outputs}]
    assert len(fns) == 1, fns
    return fns[0].fn


def test_the_preset_list_follows_assemble_and_keeps_the_users_pick(ws):
    (ws / "presets" / "mine.yaml").write_text((ws / "presets" / "tiny.yaml").read_text())
    demo = build_app()
    by_elem = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    preset, train_tab = by_elem["mf-train-preset"], by_elem["mf-tab-train"]
    follow = _handler(demo, by_elem["mf-load-choice"], preset)  # Assemble's saved-presets dropdown changed
    opened = _handler(demo, train_tab, preset)  # the Train tab selected
    names = workspace.list_presets()
    assert {"mine", "tiny", "nodata", "tiny_cpu_demo"} <= set(names)  # the workspace's and the shipped ones

    kept = opened("tiny")  # still there: only the list is sent, so a pick made meanwhile stands
    assert kept["choices"] == names and "value" not in kept
    assert follow("mine", "tiny")["value"] == "mine"  # picked or saved in Assemble: offered here
    assert "value" not in follow(None, "tiny") and "value" not in follow("tiny", "tiny")
    assert opened("deleted_meanwhile")["value"] == "tiny_cpu_demo"  # gone: the default takes its place



def _runs(ws, *ids: str) -> None:
    """Finished runs in the workspace's runs database, each with its own log line."""
    db = RunsDB(ws / "runs" / "memfactory.db")
    for run_id in ids:
        run_dir = ws / "runs" / run_id
        run_dir.mkdir()
        (run_dir / "stdout.log").write_text(f"log of {run_id}\n")
        db.create_run(f"preset-of-{run_id}", run_dir, run_id=run_id, total_steps=1)
        db.set_status(run_id, "finished")


def test_a_poll_for_a_run_the_user_has_left_is_dropped(ws, monkeypatch):
    """A timer poll works on the run it was handed; when the user picks another run while it runs,
    its result must not redraw the old run over the new pick (a browser test once saw exactly that)."""
    _runs(ws, "r-old", "r-new")
    demo = build_app()
    run_pick = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "mf-train-run")
    on_pick = next(fn for fn in demo.fns.values() if (run_pick._id, "input") in map(tuple, fn.targets))
    tick = next(fn for fn in demo.fns.values() if any(t[1] == "tick" for t in fn.targets))
    attached, seen = on_pick.outputs
    status = next(b for b in tick.outputs if getattr(b, "elem_id", None) == "mf-train-status")
    fixed = {"mf-train-sample-step": "latest", "mf-train-sample-index": 1}

    def poll_data(run_id: str) -> dict:
        return {b: {"run_id": run_id} if b is attached else {} if b is seen else fixed.get(b.elem_id, "en")
                for b in tick.inputs}

    me, other = gr.Request(session_hash="me"), gr.Request(session_hash="other")
    on_pick.fn("r-old", me)
    shown = tick.fn(poll_data("r-old"), me)
    assert "r-old" in shown[status] and "finished" in shown[status]

    on_pick.fn("r-new", me)  # picked before this poll started: dropped at once
    assert tick.fn(poll_data("r-old"), me) == gr.skip()
    assert "r-old" in tick.fn(poll_data("r-old"), other)[status]  # another browser session still follows it

    real_poll = train_view.poll

    def pick_meanwhile(db, att):  # the user picks while the poll reads the run
        on_pick.fn("r-old", me)
        return real_poll(db, att)

    monkeypatch.setattr(train_view, "poll", pick_meanwhile)
    assert tick.fn(poll_data("r-new"), me) == gr.skip()  # finished after the pick: dropped too
    monkeypatch.setattr(train_view, "poll", real_poll)
    assert "r-old" in tick.fn(poll_data("r-old"), me)[status]
