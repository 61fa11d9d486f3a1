"""Showing a Playground comparison (webui.playground.render): frames, HTML, traces, exports."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from memfactory.eval.scoring import SampleResult
from webui.playground import compare, render

TINY = "tiny://qwen3-mini"


def result(sid: str, answer: str, score: float, *, latency: float = 1.0, tokens: int = 10,
           trace: list | None = None) -> SampleResult:
    return SampleResult(sample_id=sid, question=f"q {sid}?", gold=["paris"], metric="sub_em", answers=[answer],
                        predictions=[answer], scores=[score], latency_s=latency, tokens=[tokens],
                        prompt_tokens=[100], calls=[1], traces=[trace or []])


def workflow(label: str, samples: list[SampleResult], error: str | None = None) -> compare.WorkflowResult:
    return compare.WorkflowResult(label=label, spec=compare.WorkflowSpec(label=label, preset="tiny_test"), samples=samples,
                             error=error, model=TINY)


def test_summary_averages_per_workflow():
    a = workflow("a", [result("s0", "Paris", 1.0, latency=0.5, tokens=4), result("s1", "Rome", 0.0, latency=1.5,
                                                                                     tokens=8),
                       result("s2", "paris", 1.0, latency=1.0, tokens=6)])
    b = workflow("b", [result("s0", "Lyon", 0.0, tokens=20), result("s1", "Rome", 0.0, tokens=30),
                       result("s2", "paris", 0.5, tokens=10)])
    broken = workflow("broken", [], error="cannot reach http://127.0.0.1:1/v1\nmore")
    frame = render.summary_frame([a, b, broken]).set_index("workflow")
    assert list(render.summary_frame([a]).columns) == render.SUMMARY_COLUMNS
    assert frame.loc["a", "avg score"] == pytest.approx(2 / 3, abs=1e-4)
    assert frame.loc["b", "avg score"] == pytest.approx(0.5 / 3, abs=1e-4)
    assert frame.loc["a", "avg latency (s)"] == pytest.approx(1.0)
    assert frame.loc["a", "avg tokens"] == pytest.approx(6.0) and frame.loc["b", "total tokens"] == 60
    assert frame.loc["a", "samples"] == 3 and frame.loc["a", "status"] == "ok"
    assert frame.loc["broken", "status"] == "error: cannot reach http://127.0.0.1:1/v1"
    assert frame.loc["broken", "samples"] == 0 and pd.isna(frame.loc["broken", "avg score"])


def test_disagreements_and_highlighting():
    a = workflow("a", [result("s0", "Paris", 1.0), result("s1", "\\boxed{Rome}", 0.0), result("s2", "x", 0.0),
                       result("only_a", "y", 1.0)])
    b = workflow("b", [result("s0", "paris.", 1.0), result("s1", "Lyon", 0.0), result("s2", "x", 1.0)])
    b.samples[1].predictions = ["Lyon"]
    a.samples[1].predictions = ["Rome"]
    flags = render.disagreements([a, b])
    # same normalised answer and score -> agree; different answers (same score) or scores -> disagree
    assert flags == {"s0": False, "s1": True, "s2": True, "only_a": False}

    frame = render.comparison_frame([a, b])
    # one row per sample and workflow, so the columns do not multiply with the workflows
    assert list(frame.columns) == render.COMPARISON_COLUMNS == list(render.comparison_frame([a, b, a, b]).columns)
    assert frame["sample"].tolist() == ["s0", "s0", "s1", "s1", "s2", "s2", "only_a", "only_a"]
    assert frame["workflow"].tolist() == ["a", "b"] * 4
    assert frame["disagree"].tolist() == ["", "", "⚠️", "⚠️", "⚠️", "⚠️", "", ""]
    by = frame.set_index(["sample", "workflow"])
    assert by.loc[("s1", "a"), "answer"] == "\\boxed{Rome}" and by.loc[("s2", "b"), "score"] == 1.0
    assert by.loc[("s1", "b"), "question"] == "q s1?" and by.loc[("s1", "b"), "gold"] == "paris"  # repeated
    assert pd.isna(by.loc[("only_a", "b"), "score"]) and by.loc[("only_a", "b"), "answer"] == "(not answered)"
    css = render.styled_comparison([a, b]).to_html().split("</style>")[0]
    assert "background-color: #fff3cd" in css
    highlighted = set(re.findall(r"_row(\d+)_col(\d+)", css))
    assert highlighted == {(str(row), str(col)) for row in (2, 3, 4, 5) for col in range(len(frame.columns))}
    # a failed workflow's rows say so; long answers are cut (the sample view has them whole)
    dead = workflow("dead", [], error="cannot reach http://127.0.0.1:1/v1\nmore")
    a.samples[0].answers = ["word " * 200]
    frame = render.comparison_frame([a, dead], answer_chars=50).set_index(["sample", "workflow"])
    assert frame.loc[("s0", "dead"), "answer"] == "(failed: cannot reach http://127.0.0.1:1/v1)"
    assert len(frame.loc[("s0", "a"), "answer"]) == 50 and frame.loc[("s0", "a"), "answer"].endswith("…")
    assert len(render.COMPARISON_WIDTHS) == len(render.COMPARISON_COLUMNS)
    assert [c for c in render.sample_choices([a, b])] == [("s0", "s0"), ("⚠️ s1", "s1"), ("⚠️ s2", "s2"),
                                                      ("only_a", "only_a")]


def test_sample_view_and_memory_traces():
    memagent_trace = [{"step": 0, "chunk": 0, "memory": "Alice likes <b>red</b>", "tokens": 5, "kept_previous": False},
                      {"step": 1, "chunk": 1, "memory": "Alice likes red; Bob", "tokens": 6, "kept_previous": True},
                      {"step": 2, "answer": "\\boxed{red}", "tokens": 3}]
    bank_trace = [{"kind": "extract", "step": 0, "session": 1, "parsed": True,
                   "facts": [{"key": "city", "value": "Alice likes red"}]},
                  {"kind": "op", "op": "ADD", "id": "m1", "old": None, "new": "Alice likes red", "applied": True},
                  {"kind": "op", "op": "UPDATE", "id": "m1", "old": "Alice likes red", "new": "Alice likes blue",
                   "applied": True},
                  {"kind": "op", "op": "DELETE", "id": "m2", "old": "stale", "new": None, "applied": False},
                  {"kind": "bank", "count": 1, "memories": [{"id": "m1", "text": "Alice likes blue", "tags": []}]}]
    assert render.trace_rows(memagent_trace) == [("chunk 0", "Alice likes <b>red</b>"),
                                             ("chunk 1", "Alice likes red; Bob (kept previous)"),
                                             ("answer", "\\boxed{red}")]
    bank_trace.append({"kind": "retrieved", "query": "colour?", "memories": [{"id": "m1", "text": "Alice likes blue"}]})
    assert render.trace_rows(bank_trace) == [("extract (session 1)", "Alice likes red"),
                                         ("ADD m1", "new: Alice likes red"),
                                         ("UPDATE m1", "old: Alice likes red → new: Alice likes blue"),
                                         ("DELETE m2", "old: stale (not applied)"),
                                         ("bank (1)", "[m1] Alice likes blue"),
                                         ("retrieved (1)", "query: colour? → Alice likes blue")]
    a = workflow("memagent", [result("s0", "red", 1.0, trace=memagent_trace)])
    b = workflow("bank", [result("s0", "blue", 0.0, trace=bank_trace)])
    c = workflow("dead", [], error="cannot reach the server")
    html = render.sample_html([a, b, c], "s0")
    assert html.count("class='mf-pg-col'") == 3 and "workflows disagree" in html
    assert "Alice likes &lt;b&gt;red&lt;/b&gt;" in html and "<b>red</b>" not in html  # escaped
    assert "UPDATE m1" in html and "cannot reach the server" in html
    # trace cells wrap inside their workflow's column (fixed layout) instead of running into the next
    assert html.count("table-layout:fixed") == 2 and "overflow-wrap:anywhere" in html.split("mf-pg-trace")[1]
    assert render.errors_markdown([a, c]) == "❌ **dead** failed: cannot reach the server"


def test_export_files(tmp_path):
    a = workflow("a", [result("s0", "Paris", 1.0), result("s1", "Rome", 0.0)])
    b = workflow("b", [result("s0", "Lyon", 0.0), result("s1", "Rome", 0.0)])
    dead = workflow("dead", [], error="no preset called 'nope'")
    settings = compare.RunSettings(eval_set="eval_docqa", n=2)
    csv_path, json_path = render.export_files([a, b, dead], settings, tmp_path / "out")
    frame = pd.read_csv(csv_path)
    assert len(frame) == 5  # 2 + 2 samples + one error row
    rows = frame.set_index(["workflow", "sample"])
    assert rows.loc[("a", "s0"), "score"] == 1.0 and bool(rows.loc[("a", "s0"), "disagree"]) is True
    assert bool(rows.loc[("b", "s1"), "disagree"]) is False and rows.loc[("b", "s1"), "answer"] == "Rome"
    assert frame[frame["workflow"] == "dead"]["answer"].item() == "error: no preset called 'nope'"
    data = json.loads(json_path.read_text())
    assert data["settings"]["eval_set"] == "eval_docqa" and data["settings"]["temperature"] == 0.0
    assert [w["label"] for w in data["workflows"]] == ["a", "b", "dead"]
    assert data["workflows"][0]["samples"][0]["answers"] == ["Paris"] and data["workflows"][2]["error"]
    assert data["summary"][0]["avg score"] == 0.5 and data["summary"][2]["avg score"] is None
    assert data["disagree"] == {"s0": True, "s1": False}


def test_export_folders_are_pruned(tmp_path, monkeypatch):
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = tmp_path / "memfactory-ui"
    for i in range(5):
        folder = root / f"playground-old{i}"
        folder.mkdir(parents=True)
        os.utime(folder, (1000 + i, 1000 + i))
    fresh = render.export_folder(keep=2)
    assert fresh.parent == root and not fresh.exists()
    assert sorted(p.name for p in root.iterdir()) == ["playground-old3", "playground-old4"]
