"""The CPU demo really learns: GRPO raises SmolLM2's reward on synthetic document QA.

Slow by nature (a few minutes on 2 cores): it trains presets/tiny_cpu_demo.yaml exactly as
`make demo` does, with its fixed seed, and compares the first and last fifth of the reward curve.
"""

from __future__ import annotations

import json

import pytest

from memfactory.commands.demo import fifths
from memfactory.config import load_preset
from memfactory.paths import presets_dir
from memfactory.trainer.session import TrainingSession


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_grpo_raises_mean_reward_on_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset = load_preset(presets_dir() / "tiny_cpu_demo.yaml", ["logging.swanlab=disabled"])
    session = TrainingSession(preset, run_id="learn")
    session.run(progress=False)
    assert session.status == "finished"
    lines = session.run_dir.metrics_path.read_text().splitlines()
    rewards = [json.loads(line)["reward/mean"] for line in lines]
    assert len(rewards) == preset.trainer.steps
    first, last = fifths(rewards)
    print(f"reward curve: {[round(r, 3) for r in rewards]}; first fifth {first:.3f}, last fifth {last:.3f}")
    assert last - first >= 0.2, f"reward did not rise enough: first fifth {first:.3f}, last fifth {last:.3f}"
