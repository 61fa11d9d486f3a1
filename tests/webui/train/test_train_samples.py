"""Browsing a run's sample trajectories (webui.train.samples)."""

from __future__ import annotations

import json

from memfactory.tracking.metrics import read_records
from webui.train import samples as train_samples

SAMPLE = {
    "sample_id": "s-1", "question": "Where is the key?", "gold": ["drawer"], "answer": "\\boxed{drawer}",
    "reward": 1.1, "rewards": {"sub_em": 1.0, "format": 0.1}, "advantage": 0.7,
    "trace": [{"step": 0, "chunk": 0, "memory": "key seen in the drawer", "tokens": 9, "kept_previous": False},
              {"step": 1, "chunk": 1, "memory": "key: drawer (kitchen)", "tokens": 8, "kept_previous": False},
              {"step": 2, "answer": "\\boxed{drawer}", "tokens": 4}],
    "calls": [{"module": "memory.update", "prompt": "...", "response": "key seen", "tokens": 9}],
}


def test_sample_browsing(tmp_path):
    path = tmp_path / "samples.jsonl"
    lines = [{"step": 1, "rewards": [[0.0, 1.0]], "samples": [SAMPLE, {**SAMPLE, "answer": "\\boxed{sofa}"}]},
             {"step": 2, "rewards": [[0.5, 0.5]], "samples": []},
             {"step": 3, "rewards": [[1.0, 1.0]], "samples": [{**SAMPLE, "question": "Q3?"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 4, "samp')  # half-written last line
    samples = read_records(path)
    assert [r["step"] for r in samples] == [1, 2, 3]
    assert train_samples.sample_steps(samples) == [3, 1]

    latest = train_samples.browse_samples(samples, "latest", 1)
    assert latest.step == 3 and latest.count == 1 and "Q3?" in latest.markdown

    second = train_samples.browse_samples(samples, "1", 2)
    assert (second.step, second.index, second.count) == (1, 1, 2)
    md = second.markdown
    assert "trajectory 2 of 2" in md and "sofa" in md and "Where is the key?" in md
    assert "sub_em = 1.000" in md and "format = 0.100" in md and "**Reward** 1.100" in md
    assert "**Memory steps** (3)" in md and "key seen in the drawer" in md and "key: drawer (kitchen)" in md
    assert "memory.update" in md and "`drawer`" in md

    assert train_samples.browse_samples(samples, "2", 1).step == 3  # a step without trajectories: the newest
    assert train_samples.browse_samples(samples, "junk", 99).index == 0
    assert "No sample" in train_samples.browse_samples([], None, 1).markdown


def test_markdown_cannot_break_out_of_code_blocks():
    md = train_samples.sample_markdown({**SAMPLE, "answer": "```\n# injected"}, step=1, index=0, count=1)
    assert "```\n# injected" not in md
