"""The Runs tab's wiring in the built app: "open in Assemble" through the Assemble tab's lent form."""

from __future__ import annotations

import gradio as gr

from webui import app, workspace
from webui.app import build_app
from webui.runs.tab import ASSEMBLE_MISSING


def test_app_wires_open_in_assemble_and_keeps_tabs_first(tmp_path, monkeypatch):
    """The built app: gr.Tabs lists its tabs before any other child (else the frontend doubles a tab's
    button), and the Runs tab's 'open' button writes the tab switch and Assemble's form widgets."""
    monkeypatch.setenv(workspace.ENV_VAR, str(tmp_path / "ws"))
    demo = build_app()
    tabs = next(b for b in demo.blocks.values() if isinstance(b, gr.Tabs))
    kinds = [isinstance(child, gr.Tab) for child in tabs.children]
    assert kinds == sorted(kinds, reverse=True) and sum(kinds) >= 2
    by_elem = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    open_btn, name_box = by_elem["mf-run-open"], by_elem["mf-name"]
    wired = [fn for fn in demo.fns.values() if any(t[0] == open_btn._id for t in fn.targets)]
    assert len(wired) == 1
    outputs = {block._id for block in wired[0].outputs}
    assert tabs._id in outputs and name_box._id in outputs and by_elem["mf-save-name"]._id in outputs


def test_without_assemble_the_open_button_is_off_and_says_why(tmp_path, monkeypatch):
    """Assemble failing to build shows its error tab; the Runs tab still builds, its open button off with a reason."""

    def broken(ctx):
        raise RuntimeError("assemble is half-finished")

    monkeypatch.setenv(workspace.ENV_VAR, str(tmp_path / "ws"))
    monkeypatch.setattr(app, "TABS", (("assemble", broken), *app.TABS[1:]))
    demo = build_app()
    labels = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert labels[0] == "⚠️ assemble" and "Runs" in labels and "Train" in labels
    by_elem = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert by_elem["mf-run-open"].interactive is False
    assert by_elem["mf-run-manage-note"].value == ASSEMBLE_MISSING
    assert not [fn for fn in demo.fns.values() if any(t[0] == by_elem["mf-run-open"]._id for t in fn.targets)]
    # the rest of the tab is still wired (picking runs redraws the overlay)
    assert [fn for fn in demo.fns.values() if any(t[0] == by_elem["mf-runs-select"]._id for t in fn.targets)]
