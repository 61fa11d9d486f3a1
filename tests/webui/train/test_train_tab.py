"""The Train tab's preset list in the built app: it follows Assemble without undoing a newer pick."""

from __future__ import annotations

from webui import workspace
from webui.app import build_app


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
