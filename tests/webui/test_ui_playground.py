"""Playground logic (webui.playground): real tiny models, real HTTP endpoints, real files."""

from __future__ import annotations

import itertools
import json
import re
import socket

import pandas as pd
import pytest

from memfactory.config import ModelConfig
from memfactory.evaluate import SampleResult
from webui import playground as pg
from webui.tabs import playground as pg_tab

TINY = "tiny://qwen3-mini"


@pytest.fixture()
def ws(tmp_path, monkeypatch):
    """An empty workspace (presets/, runs/, data/) so nothing touches the checkout."""
    monkeypatch.setenv("MEMFACTORY_WORKSPACE", str(tmp_path))
    for sub in ("presets", "runs"):
        (tmp_path / sub).mkdir()
    return tmp_path


@pytest.fixture(scope="module")
def cache():
    """One tiny model for the whole module (the cache is what shares it)."""
    return pg.BackendCache()


def result(sid: str, answer: str, score: float, *, latency: float = 1.0, tokens: int = 10,
           trace: list | None = None) -> SampleResult:
    return SampleResult(sample_id=sid, question=f"q {sid}?", gold=["paris"], metric="sub_em", answers=[answer],
                        predictions=[answer], scores=[score], latency_s=latency, tokens=[tokens],
                        prompt_tokens=[100], calls=[1], traces=[trace or []])


def workflow(label: str, samples: list[SampleResult], error: str | None = None) -> pg.WorkflowResult:
    return pg.WorkflowResult(label=label, spec=pg.WorkflowSpec(label=label, preset="tiny_test"), samples=samples,
                             error=error, model=TINY)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on exit: nothing listens there


# --------------------------------------------------------------------------- comparison arithmetic


def test_summary_averages_per_workflow():
    a = workflow("a", [result("s0", "Paris", 1.0, latency=0.5, tokens=4), result("s1", "Rome", 0.0, latency=1.5,
                                                                                     tokens=8),
                       result("s2", "paris", 1.0, latency=1.0, tokens=6)])
    b = workflow("b", [result("s0", "Lyon", 0.0, tokens=20), result("s1", "Rome", 0.0, tokens=30),
                       result("s2", "paris", 0.5, tokens=10)])
    broken = workflow("broken", [], error="cannot reach http://127.0.0.1:1/v1\nmore")
    frame = pg.summary_frame([a, b, broken]).set_index("workflow")
    assert list(pg.summary_frame([a]).columns) == pg.SUMMARY_COLUMNS
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
    flags = pg.disagreements([a, b])
    # same normalised answer and score -> agree; different answers (same score) or scores -> disagree
    assert flags == {"s0": False, "s1": True, "s2": True, "only_a": False}

    frame = pg.comparison_frame([a, b])
    # one row per sample and workflow, so the columns do not multiply with the workflows
    assert list(frame.columns) == pg.COMPARISON_COLUMNS == list(pg.comparison_frame([a, b, a, b]).columns)
    assert frame["sample"].tolist() == ["s0", "s0", "s1", "s1", "s2", "s2", "only_a", "only_a"]
    assert frame["workflow"].tolist() == ["a", "b"] * 4
    assert frame["disagree"].tolist() == ["", "", "⚠️", "⚠️", "⚠️", "⚠️", "", ""]
    by = frame.set_index(["sample", "workflow"])
    assert by.loc[("s1", "a"), "answer"] == "\\boxed{Rome}" and by.loc[("s2", "b"), "score"] == 1.0
    assert by.loc[("s1", "b"), "question"] == "q s1?" and by.loc[("s1", "b"), "gold"] == "paris"  # repeated
    assert pd.isna(by.loc[("only_a", "b"), "score"]) and by.loc[("only_a", "b"), "answer"] == "(not answered)"
    css = pg.styled_comparison([a, b]).to_html().split("</style>")[0]
    assert "background-color: #fff3cd" in css
    highlighted = set(re.findall(r"_row(\d+)_col(\d+)", css))
    assert highlighted == {(str(row), str(col)) for row in (2, 3, 4, 5) for col in range(len(frame.columns))}
    # a failed workflow's rows say so; long answers are cut (the sample view has them whole)
    dead = workflow("dead", [], error="cannot reach http://127.0.0.1:1/v1\nmore")
    a.samples[0].answers = ["word " * 200]
    frame = pg.comparison_frame([a, dead], answer_chars=50).set_index(["sample", "workflow"])
    assert frame.loc[("s0", "dead"), "answer"] == "(failed: cannot reach http://127.0.0.1:1/v1)"
    assert len(frame.loc[("s0", "a"), "answer"]) == 50 and frame.loc[("s0", "a"), "answer"].endswith("…")
    assert len(pg.COMPARISON_WIDTHS) == len(pg.COMPARISON_COLUMNS)
    assert [c for c in pg.sample_choices([a, b])] == [("s0", "s0"), ("⚠️ s1", "s1"), ("⚠️ s2", "s2"),
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
    assert pg.trace_rows(memagent_trace) == [("chunk 0", "Alice likes <b>red</b>"),
                                             ("chunk 1", "Alice likes red; Bob (kept previous)"),
                                             ("answer", "\\boxed{red}")]
    bank_trace.append({"kind": "retrieved", "query": "colour?", "memories": [{"id": "m1", "text": "Alice likes blue"}]})
    assert pg.trace_rows(bank_trace) == [("extract (session 1)", "Alice likes red"),
                                         ("ADD m1", "new: Alice likes red"),
                                         ("UPDATE m1", "old: Alice likes red → new: Alice likes blue"),
                                         ("DELETE m2", "old: stale (not applied)"),
                                         ("bank (1)", "[m1] Alice likes blue"),
                                         ("retrieved (1)", "query: colour? → Alice likes blue")]
    a = workflow("memagent", [result("s0", "red", 1.0, trace=memagent_trace)])
    b = workflow("bank", [result("s0", "blue", 0.0, trace=bank_trace)])
    c = workflow("dead", [], error="cannot reach the server")
    html = pg.sample_html([a, b, c], "s0")
    assert html.count("class='mf-pg-col'") == 3 and "workflows disagree" in html
    assert "Alice likes &lt;b&gt;red&lt;/b&gt;" in html and "<b>red</b>" not in html  # escaped
    assert "UPDATE m1" in html and "cannot reach the server" in html
    # trace cells wrap inside their workflow's column (fixed layout) instead of running into the next
    assert html.count("table-layout:fixed") == 2 and "overflow-wrap:anywhere" in html.split("mf-pg-trace")[1]
    assert pg.errors_markdown([a, c]) == "❌ **dead** failed: cannot reach the server"


def test_export_files(tmp_path):
    a = workflow("a", [result("s0", "Paris", 1.0), result("s1", "Rome", 0.0)])
    b = workflow("b", [result("s0", "Lyon", 0.0), result("s1", "Rome", 0.0)])
    dead = workflow("dead", [], error="no preset called 'nope'")
    settings = pg.RunSettings(eval_set="eval_docqa", n=2)
    csv_path, json_path = pg.export_files([a, b, dead], settings, tmp_path / "out")
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


# --------------------------------------------------------------------------- building and running


def test_backend_cache_shares_one_model(cache):
    direct = ModelConfig(path=TINY, attn="auto")
    memagent = ModelConfig(path=TINY, attn="sdpa")  # attention kernel is not part of what is loaded
    before = cache.loads
    first = cache.get(direct)
    assert cache.get(memagent) is first and cache.get(direct) is first
    assert cache.loads - before <= 1
    assert pg.backend_key(direct) == pg.backend_key(memagent)
    assert pg.backend_key(direct) != pg.backend_key(direct.model_copy(update={"checkpoint": "/some/ckpt"}))
    assert pg.backend_key(direct) != pg.backend_key(ModelConfig(backend="openai", path=TINY, base_url="http://x/v1"))

    small = pg.BackendCache(max_items=1, factory=lambda model: object())
    one, two = small.get(ModelConfig(path="a")), small.get(ModelConfig(path="b"))
    assert one is not two and len(small) == 1 and small.get(ModelConfig(path="b")) is two
    small.keep_only([])
    assert len(small) == 0


def test_default_workflows_are_smollm2_presets(ws):
    from memfactory.config import load_preset
    from webui import workspace

    models = set()
    for label, name in pg.DEFAULT_WORKFLOWS:
        preset = load_preset(workspace.find_preset(name))
        models.add(pg.backend_key(preset.model))
        assert preset.model.path == pg.DEFAULT_MODEL
    assert len(models) == 1  # both defaults share one loaded SmolLM2
    assert {"direct", "memagent"} == {load_preset(workspace.find_preset(n)).agent for _, n in pg.DEFAULT_WORKFLOWS}
    assert pg.eval_set_choices()[0] == pg.DEFAULT_SET
    assert {"eval_docqa", "eval_synth_20", "eval_fwe_1024"} <= set(pg.eval_set_choices())


def test_failing_workflows_do_not_stop_the_others(ws, cache):
    (ws / "presets" / "broken.yaml").write_text("name: broken\nagent: no_such_agent\nenv: {type: long_context}\n")
    specs = [
        pg.WorkflowSpec(label="dead endpoint", base_url=f"http://127.0.0.1:{closed_port()}/v1", model="m"),
        pg.WorkflowSpec(label="direct", preset="tiny_test"),
        pg.WorkflowSpec(label="missing ckpt", preset="tiny_test", checkpoint="no-such-run"),
        pg.WorkflowSpec(label="invalid", preset="broken"),
        pg.WorkflowSpec(label="memagent", preset="memagent_tiny_test"),
    ]
    seen = []
    with pytest.raises(Exception, match="at most 4"):
        pg.run_comparison(specs, pg.RunSettings(n=2, model_override=TINY), cache=cache)
    results = pg.run_comparison(specs[:4], pg.RunSettings(n=2, model_override=TINY), cache=cache,
                                progress=lambda f, text: seen.append((f, text)))
    by = {r.label: r for r in results}
    assert "cannot reach" in by["dead endpoint"].error and not by["dead endpoint"].samples
    assert "no-such-run" in by["missing ckpt"].error
    assert "no_such_agent" in by["invalid"].error and "agent" in by["invalid"].error
    assert "Traceback" not in "".join(r.error or "" for r in results)
    ok = by["direct"]
    assert ok.ok and [s.sample_id for s in ok.samples] == ["eval_docqa-0", "eval_docqa-1"]
    assert all(len(s.answers) == 1 and s.tokens[0] > 0 and s.latency_s > 0 for s in ok.samples)
    assert seen[-1][0] == pytest.approx(1.0) and all(a[0] <= b[0] for a, b in itertools.pairwise(seen))
    summary = pg.summary_frame(results).set_index("workflow")
    assert summary.loc["direct", "samples"] == 2 and summary.loc["invalid", "status"].startswith("error:")

    # the two local workflows of a run share one model: a memagent run next to direct loads nothing new
    loads = cache.loads
    pair = pg.run_comparison(specs[1:2] + specs[4:], pg.RunSettings(n=2, model_override=TINY), cache=cache)
    assert cache.loads == loads and all(r.ok for r in pair)
    assert all(len(s.traces[0]) >= 2 and "memory" in s.traces[0][0] for s in pair[1].samples)


def test_greedy_by_default_and_repeatable(ws, cache):
    settings = pg.RunSettings(n=2, model_override=TINY)
    assert settings.temperature == 0.0
    spec = pg.WorkflowSpec(preset="tiny_test")
    params = pg.sampling_params(pg.build_preset(spec, settings), settings)
    assert params.greedy and params.max_new_tokens == 12 and params.stop == ["}"]
    assert pg.sampling_params(pg.build_preset(spec, settings), pg.RunSettings(max_new_tokens=5)).max_new_tokens == 5
    one, two = (pg.run_comparison([spec, spec], settings, cache=cache) for _ in range(2))
    assert [r.label for r in one] == ["tiny_test", "tiny_test #2"]
    answers = [s.answers for r in one + two for s in r.samples]
    assert answers[:2] == answers[2:4] == answers[4:6]  # greedy: same answers every time
    assert not any(pg.disagreements(one).values())


def test_endpoint_and_checkpoint_workflows(ws, cache):
    from memfactory.serve import ServerThread, create_app
    from memfactory.tracking.runs import RunsDB
    from memfactory.trainer.checkpoint import save_checkpoint

    backend = cache.get(ModelConfig(path=TINY))
    run_dir = ws / "runs" / "trained"
    save_checkpoint(run_dir, 2, backend.model, tokenizer=backend.tokenizer)
    db = RunsDB(ws / "runs" / "memfactory.db")
    db.create_run("tiny_test", run_dir, run_id="trained")
    db.close()
    assert pg.checkpoint_choices() == ["trained"]

    with ServerThread(create_app(backend, "tiny")) as server:
        specs = [pg.WorkflowSpec(label="endpoint", preset="tiny_test", base_url=server.url, model="tiny"),
                 pg.WorkflowSpec(label="trained", preset="tiny_test", checkpoint="trained")]
        results = pg.run_comparison(specs, pg.RunSettings(n=1, model_override=TINY), cache=cache)
    by = {r.label: r for r in results}
    assert by["endpoint"].ok and by["endpoint"].samples[0].answers[0]
    assert by["trained"].ok, by["trained"].error
    assert by["trained"].model.endswith("step-000002/model")
    # the same weights answer the same (greedy) question the same way, over HTTP or from the checkpoint
    assert by["endpoint"].samples[0].predictions == by["trained"].samples[0].predictions


def test_tab_reads_widget_values():
    values = [True, "", "tiny_test", "", "", "", "OPENAI_API_KEY",
              False, "x", "memagent_tiny_test", "", "", "", "OPENAI_API_KEY",
              True, "api", None, None, " http://h:1/v1 ", "m", "KEY"]
    specs = pg_tab.specs_from(values)
    assert [s.title() for s in specs] == ["tiny_test", "api"]
    assert specs[1].is_endpoint and specs[1].base_url == "http://h:1/v1" and specs[1].api_key_env == "KEY"
    settings = pg_tab.settings_from("eval_synth_20", 3.0, None, 0, " tiny://qwen3-mini ")
    assert (settings.eval_set, settings.n, settings.temperature, settings.max_new_tokens, settings.model_override) == (
        "eval_synth_20", 3, 0.0, None, TINY)


def test_export_folders_are_pruned(tmp_path, monkeypatch):
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = tmp_path / "memfactory-ui"
    for i in range(5):
        folder = root / f"playground-old{i}"
        folder.mkdir(parents=True)
        os.utime(folder, (1000 + i, 1000 + i))
    fresh = pg_tab.export_folder(keep=2)
    assert fresh.parent == root and not fresh.exists()
    assert sorted(p.name for p in root.iterdir()) == ["playground-old3", "playground-old4"]


def test_model_override_and_endpoint_presets(ws):
    from memfactory.paths import presets_dir

    text = (presets_dir() / "tiny_test.yaml").read_text().replace("path: tiny://qwen3-mini",
                                                                   "path: tiny://qwen3-mini\n  checkpoint: /trained")
    (ws / "presets" / "with_ckpt.yaml").write_text(text.replace("name: tiny_test", "name: with_ckpt"))
    spec = pg.WorkflowSpec(preset="with_ckpt")
    assert pg.build_preset(spec, pg.RunSettings()).model.checkpoint == "/trained"
    other = pg.build_preset(spec, pg.RunSettings(model_override="smollm2-135m-instruct")).model
    assert other.path == "smollm2-135m-instruct" and other.checkpoint is None  # trained on another model
    endpoint = pg.build_preset(pg.WorkflowSpec(base_url="http://127.0.0.1:1", model="served", api_key_env="K"),
                               pg.RunSettings(model_override=TINY))
    assert endpoint.agent == "direct" and endpoint.model.backend == "openai" and endpoint.model.path == "served"
    assert endpoint.model.api_key_env == "K" and endpoint.model.options == pg.ENDPOINT_OPTIONS
    with pytest.raises(Exception, match="served model name"):
        pg.build_preset(pg.WorkflowSpec(base_url="http://127.0.0.1:1"), pg.RunSettings())
    with pytest.raises(Exception, match="choose a preset"):
        pg.build_preset(pg.WorkflowSpec(), pg.RunSettings())


def test_vllm_presets_keep_their_backend_and_run_one_engine_at_a_time(ws):
    from memfactory.paths import presets_dir

    text = (presets_dir() / "tiny_cpu_demo.yaml").read_text().replace("backend: hf", "backend: vllm")
    (ws / "presets" / "demo_vllm.yaml").write_text(text.replace("name: tiny_cpu_demo", "name: demo_vllm"))
    spec = pg.WorkflowSpec(preset="demo_vllm")
    assert pg.build_preset(spec, pg.RunSettings()).model.backend == "vllm"
    assert pg.build_preset(spec, pg.RunSettings(model_override=TINY)).model.backend == "vllm"  # another model, same engine

    closed = []

    class Engine:  # what the cache needs of a backend: close()
        def __init__(self, model):
            self.path = model.path

        def close(self):
            closed.append(self.path)

    cache = pg.BackendCache(factory=Engine)
    cache.get(ModelConfig(path="a", backend="vllm"))
    cache.get(ModelConfig(path="h"))  # an hf backend may stay beside an engine
    cache.get(ModelConfig(path="b", backend="vllm"))  # vLLM runs one in-process engine: "a" is closed first
    assert closed == ["a"] and len(cache) == 2
