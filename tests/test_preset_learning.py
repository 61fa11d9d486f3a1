"""The CPU presets of each agent really learn: a whole run of each, first vs last fifth of the curve.

Each run takes 8-30 minutes on 2 cores, so these are marked ``learning`` and left out of
``make test`` (the suite aims at 15 minutes; tests/test_demo_learning.py keeps one learning run in
it). Run them with ``make test-learning``; the curves they measured are in the presets' comments.
Every preset trains exactly as shipped, with its fixed seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memfactory.commands.demo import fifths
from memfactory.config import load_preset
from memfactory.paths import presets_dir
from memfactory.tracking import metric_keys as keys
from memfactory.trainer.session import TrainingSession

# preset -> the least rise of the mean reward from the first to the last fifth of its steps
LEARNING_PRESETS = {"memagent_smollm2_cpu": 0.2, "memory_r1_tiny_cpu": 0.2, "rmm_tiny_cpu": 0.2}


def uniform_wrong_share(samples_path: Path, steps: int) -> float:
    """The share of GRPO groups in the last fifth of ``steps`` whose rollouts all scored 0 alike.

    Such a group has no signal (every advantage is 0): the policy answers it the same wrong way
    every time. Most groups like that at the end of a run is a collapse -- the demo's seed 1 once
    answered nearly everything with the one-shot's "drums" from step 7 on. Groups all right are
    not counted: they are questions the run has learned.
    """
    first = steps - max(1, steps // 5) + 1
    groups = []
    for line in samples_path.read_text().splitlines():
        record = json.loads(line)
        if record[keys.STEP] >= first:
            groups.extend(record.get(keys.GROUP_REWARDS, []))
    assert groups, f"{samples_path}: no group rewards in steps {first}-{steps}"
    return sum(1 for rewards in groups if max(rewards) == 0 == min(rewards)) / len(groups)


def assert_reward_rises(
    name: str, min_rise: float, *overrides: str, max_uniform_wrong: float | None = None
) -> list[float]:
    """Train the shipped preset ``name`` (with ``overrides``) in the current folder; its last fifth
    beats the first by ``min_rise``, and (``max_uniform_wrong``) at most that share of the last
    fifth's groups are all wrong alike (:func:`uniform_wrong_share`)."""
    preset = load_preset(presets_dir() / f"{name}.yaml", ["logging.swanlab=disabled", *overrides])
    session = TrainingSession(preset, run_id="learn")
    session.run(progress=False)
    assert session.status == "finished"
    rewards = [json.loads(line)["reward/mean"] for line in session.run_dir.metrics_path.read_text().splitlines()]
    assert len(rewards) == preset.trainer.steps
    first, last = fifths(rewards)
    print(f"{name}: reward curve {[round(r, 3) for r in rewards]}; first fifth {first:.3f}, last fifth {last:.3f}")
    assert last - first >= min_rise, (
        f"{name}: reward did not rise enough: first fifth {first:.3f}, last fifth {last:.3f}"
    )
    if max_uniform_wrong is not None:
        share = uniform_wrong_share(session.run_dir.samples_path, preset.trainer.steps)
        print(f"{name}: {share:.0%} of the last fifth's groups all wrong alike")
        assert share <= max_uniform_wrong, (
            f"{name}: collapsed: {share:.0%} of the last fifth's groups answered all alike and wrong (no signal left)"
        )
    return rewards


@pytest.mark.learning
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", sorted(LEARNING_PRESETS))
def test_preset_reward_rises_on_cpu(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_reward_rises(name, LEARNING_PRESETS[name])


def test_uniform_wrong_share_counts_the_last_fifths_all_wrong_groups(tmp_path):
    """The collapse measure on group rewards as the trainer writes them to samples.jsonl."""
    right, wrong, mixed = [1.0] * 8, [0.0] * 8, [0.0] * 7 + [1.0]
    collapsed = {step: [wrong, wrong, wrong, mixed] for step in range(1, 11)}
    learned = {**collapsed, 9: [right, right, wrong, mixed], 10: [right, right, right, wrong]}
    for rows, share in ((collapsed, 6 / 8), (learned, 2 / 8)):  # 10 steps: the last fifth is steps 9-10
        path = tmp_path / "samples.jsonl"
        lines = [json.dumps({keys.STEP: step, keys.GROUP_REWARDS: groups}) for step, groups in rows.items()]
        path.write_text("\n".join(lines) + "\n")
        assert uniform_wrong_share(path, 10) == share  # groups all right are learned, not collapsed
    with pytest.raises(AssertionError, match="no group rewards in steps 17-20"):
        uniform_wrong_share(path, 20)
