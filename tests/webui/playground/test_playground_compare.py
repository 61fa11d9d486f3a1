"""Running Playground workflows (webui.playground.compare): real tiny models, real HTTP endpoints, real files."""

from __future__ import annotations

import itertools

import pytest

from memfactory.config import ModelConfig
from memfactory.paths import presets_dir
from memfactory.tracking.process import free_port
from webui.playground import compare, render

TINY = "tiny://qwen3-mini"


def test_backend_cache_shares_one_model(cache):
    direct = ModelConfig(path=TINY, attn="auto")
    memagent = ModelConfig(path=TINY, attn="sdpa")  # attention kernel is not part of what is loaded
    before = cache.loads
    first = cache.get(direct)
    assert cache.get(memagent) is first and cache.get(direct) is first
    assert cache.loads - before <= 1
    assert compare.backend_key(direct) == compare.backend_key(memagent)
    assert compare.backend_key(direct) != compare.backend_key(direct.model_copy(update={"checkpoint": "/some/ckpt"}))
    assert compare.backend_key(direct) != compare.backend_key(ModelConfig(backend="openai", path=TINY, base_url="http://x/v1"))

    small = compare.BackendCache(max_items=1, factory=lambda model: object())
    one, two = small.get(ModelConfig(path="a")), small.get(ModelConfig(path="b"))
    assert one is not two and len(small) == 1 and small.get(ModelConfig(path="b")) is two
    small.keep_only([])
    assert len(small) == 0


def test_default_workflows_are_smollm2_presets(ws):
    from memfactory.config import load_preset
    from webui import workspace

    models = set()
    for label, name in compare.DEFAULT_WORKFLOWS:
        preset = load_preset(workspace.find_preset(name))
        models.add(compare.backend_key(preset.model))
        assert preset.model.path == compare.DEFAULT_MODEL
    assert len(models) == 1  # both defaults share one loaded SmolLM2
    assert {"direct", "memagent"} == {load_preset(workspace.find_preset(n)).agent for _, n in compare.DEFAULT_WORKFLOWS}
    assert compare.eval_set_choices()[0] == compare.DEFAULT_SET
    assert {"eval_docqa", "eval_synth_20", "eval_fwe_1024"} <= set(compare.eval_set_choices())


def test_failing_workflows_do_not_stop_the_others(ws, cache):
    (ws / "presets" / "broken.yaml").write_text("name: broken\nagent: no_such_agent\nenv: {type: long_context}\n")
    specs = [
        compare.WorkflowSpec(label="dead endpoint", base_url=f"http://127.0.0.1:{free_port()}/v1", model="m"),
        compare.WorkflowSpec(label="direct", preset="tiny_test"),
        compare.WorkflowSpec(label="missing ckpt", preset="tiny_test", checkpoint="no-such-run"),
        compare.WorkflowSpec(label="invalid", preset="broken"),
        compare.WorkflowSpec(label="memagent", preset="memagent_tiny_test"),
    ]
    seen = []
    with pytest.raises(Exception, match="at most 4"):
        compare.run_comparison(specs, compare.RunSettings(n=2, model_override=TINY), cache=cache)
    results = compare.run_comparison(specs[:4], compare.RunSettings(n=2, model_override=TINY), cache=cache,
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
    summary = render.summary_frame(results).set_index("workflow")
    assert summary.loc["direct", "samples"] == 2 and summary.loc["invalid", "status"].startswith("error:")

    # the two local workflows of a run share one model: a memagent run next to direct loads nothing new
    loads = cache.loads
    pair = compare.run_comparison(specs[1:2] + specs[4:], compare.RunSettings(n=2, model_override=TINY), cache=cache)
    assert cache.loads == loads and all(r.ok for r in pair)
    assert all(len(s.traces[0]) >= 2 and "memory" in s.traces[0][0] for s in pair[1].samples)


def test_greedy_by_default_and_repeatable(ws, cache):
    settings = compare.RunSettings(n=2, model_override=TINY)
    assert settings.temperature == 0.0
    spec = compare.WorkflowSpec(preset="tiny_test")
    params = compare.sampling_params(compare.build_preset(spec, settings), settings)
    assert params.greedy and params.max_new_tokens == 12 and params.stop == ["}"]
    assert compare.sampling_params(compare.build_preset(spec, settings), compare.RunSettings(max_new_tokens=5)).max_new_tokens == 5
    one, two = (compare.run_comparison([spec, spec], settings, cache=cache) for _ in range(2))
    assert [r.label for r in one] == ["tiny_test", "tiny_test #2"]
    answers = [s.answers for r in one + two for s in r.samples]
    assert answers[:2] == answers[2:4] == answers[4:6]  # greedy: same answers every time
    assert not any(render.disagreements(one).values())


def test_endpoint_and_checkpoint_workflows(ws, cache):
    from memfactory.serve.app import create_app
    from memfactory.serve.server import ServerThread
    from memfactory.tracking.runs import RunsDB
    from memfactory.trainer.checkpoint import save_checkpoint

    backend = cache.get(ModelConfig(path=TINY))
    run_dir = ws / "runs" / "trained"
    save_checkpoint(run_dir, 2, backend.model, tokenizer=backend.tokenizer)
    db = RunsDB(ws / "runs" / "memfactory.db")
    db.create_run("tiny_test", run_dir, run_id="trained")
    db.close()
    assert compare.checkpoint_choices() == ["trained"]

    with ServerThread(create_app(backend, "tiny")) as server:
        specs = [compare.WorkflowSpec(label="endpoint", preset="tiny_test", base_url=server.url, model="tiny"),
                 compare.WorkflowSpec(label="trained", preset="tiny_test", checkpoint="trained")]
        results = compare.run_comparison(specs, compare.RunSettings(n=1, model_override=TINY), cache=cache)
    by = {r.label: r for r in results}
    assert by["endpoint"].ok and by["endpoint"].samples[0].answers[0]
    assert by["trained"].ok, by["trained"].error
    assert by["trained"].model.endswith("step-000002/model")
    # the same weights answer the same (greedy) question the same way, over HTTP or from the checkpoint
    assert by["endpoint"].samples[0].predictions == by["trained"].samples[0].predictions


def test_model_override_and_endpoint_presets(ws):
    from memfactory.paths import presets_dir

    text = (presets_dir() / "tiny_test.yaml").read_text().replace("path: tiny://qwen3-mini",
                                                                   "path: tiny://qwen3-mini\n  checkpoint: /trained")
    (ws / "presets" / "with_ckpt.yaml").write_text(text.replace("name: tiny_test", "name: with_ckpt"))
    spec = compare.WorkflowSpec(preset="with_ckpt")
    assert compare.build_preset(spec, compare.RunSettings()).model.checkpoint == "/trained"
    other = compare.build_preset(spec, compare.RunSettings(model_override="smollm2-135m-instruct")).model
    assert other.path == "smollm2-135m-instruct" and other.checkpoint is None  # trained on another model
    endpoint = compare.build_preset(compare.WorkflowSpec(base_url="http://127.0.0.1:1", model="served", api_key_env="K"),
                               compare.RunSettings(model_override=TINY))
    assert endpoint.agent == "direct" and endpoint.model.backend == "openai" and endpoint.model.path == "served"
    assert endpoint.model.api_key_env == "K" and endpoint.model.options == compare.ENDPOINT_OPTIONS
    with pytest.raises(Exception, match="served model name"):
        compare.build_preset(compare.WorkflowSpec(base_url="http://127.0.0.1:1"), compare.RunSettings())
    with pytest.raises(Exception, match="choose a preset"):
        compare.build_preset(compare.WorkflowSpec(), compare.RunSettings())


def test_vllm_presets_keep_their_backend_and_run_one_engine_at_a_time(ws):
    text = (presets_dir() / "tiny_cpu_demo.yaml").read_text().replace("backend: hf", "backend: vllm")
    (ws / "presets" / "demo_vllm.yaml").write_text(text.replace("name: tiny_cpu_demo", "name: demo_vllm"))
    spec = compare.WorkflowSpec(preset="demo_vllm")
    assert compare.build_preset(spec, compare.RunSettings()).model.backend == "vllm"
    # another model, same engine
    assert compare.build_preset(spec, compare.RunSettings(model_override=TINY)).model.backend == "vllm"

    closed = []

    class Engine:  # what the cache needs of a backend: close()
        def __init__(self, model):
            self.path = model.path

        def close(self):
            closed.append(self.path)

    cache = compare.BackendCache(factory=Engine)
    cache.get(ModelConfig(path="a", backend="vllm"))
    cache.get(ModelConfig(path="h"))  # an hf backend may stay beside an engine
    cache.get(ModelConfig(path="b", backend="vllm"))  # vLLM runs one in-process engine: "a" is closed first
    assert closed == ["a"] and len(cache) == 2
