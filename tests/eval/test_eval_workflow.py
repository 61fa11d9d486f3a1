"""evaluate_workflow on a real tiny model: k paths per sample, progress per batch, JSON-friendly results."""

from __future__ import annotations

import json

from memfactory.config import load_preset
from memfactory.eval.workflow import evaluate_workflow
from memfactory.paths import presets_dir
from memfactory.types import Sample, SamplingParams

TINY_PRESET = presets_dir() / "memagent_tiny_test.yaml"
PARAMS = SamplingParams(max_new_tokens=6, temperature=1.0, stop=["}"])


def test_evaluate_workflow_runs_k_paths_per_sample(tiny_backend):
    preset = load_preset(TINY_PRESET)
    samples = [
        Sample(id="a", question="Where does Mia live?", answers=["Quito"], context="Mia lives in Quito. " * 12),
        Sample(id="b", question="What is Tom's job?", answers=["chef"], context="Tom works as a chef."),
    ]
    seen = []
    results = evaluate_workflow(
        preset,
        samples,
        k=3,
        params=PARAMS,
        backend=tiny_backend,
        batch_size=1,
        on_progress=lambda done, total, finished: seen.append((done, total, [r.sample_id for r in finished])),
    )
    assert seen == [(1, 2, ["a"]), (2, 2, ["b"])]
    assert [r.sample_id for r in results] == ["a", "b"]
    for result in results:
        assert result.k == 3 and len(result.answers) == 3 and len(result.traces) == 3
        assert all(a.startswith("\\boxed{") for a in result.answers)  # the preset's answer prefix
        assert all(0.0 <= s <= 1.0 for s in result.scores)
        assert all(t > 0 for t in result.tokens) and all(p > 0 for p in result.prompt_tokens)
        assert result.latency_s > 0
        json.dumps(result.to_dict())  # JSON-friendly for samples.jsonl and the UI
    # the long context needs more chunks (memory updates) than the short one
    assert results[0].calls[0] > results[1].calls[0] >= 2
    assert "memory" in results[0].traces[0][0]
