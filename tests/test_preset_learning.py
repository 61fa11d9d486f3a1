"""The CPU presets of each agent really learn: a whole run of each, first vs last fifth of the curve.

Each run takes 8-30 minutes on 2 cores, so these are marked ``learning`` and left out of
``make test`` (the suite aims at 15 minutes; tests/test_demo_learning.py keeps one learning run in
it). Run them with ``make test-learning``; the curves they measured are in the presets' comments.
Every preset trains exactly as shipped, with its fixed seed.
"""

from __future__ import annotations

import json

import pytest

from memfactory.commands.demo import fifths
from memfactory.config import load_preset
from memfactory.paths import presets_dir
from memfactory.trainer.session import TrainingSession

# preset -> the least rise of the mean reward from the first to the last fifth of its steps
LEARNING_PRESETS = {"memagent_smollm2_cpu": 0.2, "memory_r1_tiny_cpu": 0.2, "rmm_tiny_cpu": 0.2}


def assert_reward_rises(name: str, min_rise: float, *overrides: str) -> list[float]:
    """Train the shipped preset ``name`` (with ``overrides``) in the current folder; its last fifth
    beats the first by ``min_rise``."""
    preset = load_preset(presets_dir() / f"{name}.yaml", ["logging.swanlab=disabled", *overrides])
    session = TrainingSession(preset, run_id="learn")
    session.run(progress=False)
    assert session.status == "finished"
    rewards = [json.loads(line)["reward/mean"] for line in session.run_dir.metrics_path.read_text().splitlines()]
    assert len(rewards) == preset.trainer.steps
    first, last = fifths(rewards)
    print(f"{name}: reward curve {[round(r, 3) for r in rewards]}; first fifth {first:.3f}, last fifth {last:.3f}")
    assert last - first >= min_rise, f"{name}: reward did not rise enough: first fifth {first:.3f}, last fifth {last:.3f}"
    return rewards


@pytest.mark.learning
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", sorted(LEARNING_PRESETS))
def test_preset_reward_rises_on_cpu(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_reward_rises(name, LEARNING_PRESETS[name])
