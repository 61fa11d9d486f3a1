"""The Playground tab's wiring: widget values keyed by component, and one set of result updates."""

from __future__ import annotations

import gradio as gr

from memfactory.eval.scoring import SampleResult
from webui.playground.compare import WorkflowResult, WorkflowSpec
from webui.playground.tab import ResultsView, Slot, settings_from, specs_from

TINY = "tiny://qwen3-mini"


def test_tab_reads_widget_values():
    with gr.Blocks():
        slots = [Slot(gr.Checkbox(), *(gr.Textbox() for _ in range(6))) for _ in range(3)]
    values = [[True, "", "tiny_test", "", "", "", "OPENAI_API_KEY"],
              [False, "x", "memagent_tiny_test", "", "", "", "OPENAI_API_KEY"],
              [True, "api", None, None, " http://h:1/v1 ", "m", "KEY"]]
    data = {component: value for slot, row in zip(slots, values) for component, value in zip(slot.components, row)}
    specs = specs_from(slots, data)
    assert [s.title() for s in specs] == ["tiny_test", "api"]
    assert specs[1].is_endpoint and specs[1].base_url == "http://h:1/v1" and specs[1].api_key_env == "KEY"
    assert slots[1].spec(data) is None  # not ticked
    settings = settings_from("eval_synth_20", 3.0, None, 0, " tiny://qwen3-mini ")
    assert (settings.eval_set, settings.n, settings.temperature, settings.max_new_tokens, settings.model_override) == (
        "eval_synth_20", 3, 0.0, None, TINY)


def test_a_failed_run_and_a_finished_one_update_the_same_components(tmp_path):
    with gr.Blocks():
        view = ResultsView(gr.Markdown(), gr.Dataframe(), gr.Dataframe(), gr.Dropdown(), gr.HTML(),
                           gr.DownloadButton(), gr.DownloadButton(), gr.State([]))
    sample = SampleResult(sample_id="s0", question="q?", gold=["paris"], metric="sub_em", answers=["paris"],
                          predictions=["paris"], scores=[1.0], latency_s=1.0, tokens=[3], prompt_tokens=[10],
                          calls=[1], traces=[[]])
    results = [WorkflowResult(label="a", spec=WorkflowSpec(label="a", preset="tiny_test"), samples=[sample])]
    failed = view.show([], "❌ boom")
    shown = view.show(results, files=(tmp_path / "c.csv", tmp_path / "c.json"))
    assert set(failed) == set(shown) == set(view.components)
    assert failed[view.errors] == "❌ boom" and failed[view.summary] is None and failed[view.state] == []
    assert failed[view.csv]["interactive"] is False and failed[view.sample]["choices"] == []
    assert shown[view.errors] == "" and shown[view.state] == results
    assert list(shown[view.summary]["workflow"]) == ["a"] and shown[view.sample]["value"] == "s0"
    assert shown[view.csv]["value"].endswith("c.csv") and shown[view.json]["interactive"] is True
    assert "s0" in shown[view.sample_view]
