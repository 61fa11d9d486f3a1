"""memory_bank env: LoCoMo splits and eval sets, memory rewards, presets, and one real GRPO step."""

from __future__ import annotations

import json

import pytest

from memfactory.config import load_preset
from memfactory.data.synth_locomo import synth_locomo, write_locomo
from memfactory.envs.build import build_env
from memfactory.envs.memory_bank import MemoryBankEnv, MemoryBankOptions, MemoryFormat
from memfactory.envs.rewards import ExactMatch, TokenF1
from memfactory.errors import DataError
from memfactory.paths import presets_dir
from memfactory.types import Sample, Trajectory

PRESETS = ["memory_r1_tiny_cpu", "rmm_tiny_cpu", "memory_r1_qwen3", "rmm_qwen3"]


def _env(**options) -> MemoryBankEnv:
    return MemoryBankEnv(MemoryBankOptions(**options), {"em": ExactMatch(), "f1": TokenF1()}, {"em": 1.0, "f1": 0.5})


def test_splits_are_disjoint_seeded_and_cover_the_source():
    env = _env(data="locomo_synth", test_fraction=0.25, seed=3)
    train, test = env.samples("train"), env.samples("test")
    assert len(train) + len(test) == 32 and len(test) == 8
    assert not {s.id for s in train} & {s.id for s in test}
    assert [s.id for s in _env(data="locomo_synth", test_fraction=0.25, seed=3).samples("test")] == [s.id for s in test]
    sample = train[0]
    assert sample.meta["sessions"] and sample.meta["category"] in (1, 2, 3, 4) and sample.answers


def test_train_size_keeps_the_first_training_items_and_the_same_test_split():
    full, small = _env(data="locomo_synth", seed=3), _env(data="locomo_synth", seed=3, train_size=5)
    assert [s.id for s in small.samples("train")] == [s.id for s in full.samples("train")][:5]
    assert [s.id for s in small.samples("test")] == [s.id for s in full.samples("test")]


def test_eval_sets_categories_and_caps(tmp_path):
    write_locomo(synth_locomo(2, seed=9), tmp_path / "mine.json")
    env = _env(data="locomo_synth", data_dir=str(tmp_path), eval=["mine"], eval_size=5, exclude_categories=[])
    assert len(env.samples("mine")) == 5
    everything = _env(data=str(tmp_path / "mine.json"), exclude_categories=[]).samples("test")
    assert (
        len(_env(data=str(tmp_path / "mine.json")).samples("train"))
        + len(_env(data=str(tmp_path / "mine.json")).samples("test"))
        == 16
    )
    only_temporal = _env(data="synthetic://locomo?n=2", exclude_categories=[1, 3, 4, 5], test_fraction=0.0).samples(
        "train"
    )
    assert {s.meta["category"] for s in only_temporal} == {2} and len(only_temporal) == 2
    assert everything
    with pytest.raises(DataError, match="memfactory data download locomo"):
        _env(data="locomo10", data_dir=str(tmp_path)).samples("train")


def test_answer_rewards_combine_with_weights():
    env = _env(data="locomo_synth")
    sample = Sample("s", "Which city?", ["Vinterby"])
    good, partial = (
        Trajectory(sample, answer="\\boxed{Vinterby}"),
        Trajectory(sample, answer="\\boxed{in Vinterby now}"),
    )
    env.score([good, partial])
    assert good.rewards == {"em": 1.0, "f1": 1.0} and good.reward == pytest.approx(1.5)
    assert partial.rewards["em"] == 0.0 and partial.reward == pytest.approx(0.5 * 0.5)


def test_memory_format_is_half_extraction_half_update():
    sample = Sample("s", "q", ["a"])
    both = Trajectory(sample, counters={"extract_calls": 2, "extract_parsed": 2, "update_calls": 2, "update_parsed": 1})
    nothing_to_update = Trajectory(sample, counters={"extract_calls": 3, "extract_parsed": 3})
    none = Trajectory(sample)
    assert MemoryFormat().score([both, nothing_to_update, none]) == [0.75, 0.5, 0.0]


@pytest.mark.parametrize("name", PRESETS)
def test_presets_validate_and_build(name):
    preset = load_preset(presets_dir() / f"{name}.yaml")
    assert preset.env.type == "memory_bank"
    if name.endswith("tiny_cpu"):  # the GPU presets read data/locomo10.json, which needs a download
        env = build_env(preset)
        assert env.samples("train") and env.samples("locomo_synth")


def test_one_grpo_step_with_the_tiny_model(tmp_path, monkeypatch):
    """The trainer drives memory_r1 end to end: rollouts on per-member banks, rewards, an update."""
    from memfactory.trainer.loop import GRPOTrainer

    monkeypatch.chdir(tmp_path)
    preset = load_preset(
        presets_dir() / "memory_r1_tiny_cpu.yaml",
        [
            "model.path=tiny://qwen3-mini",
            "agent_options.train=both",
            "agent_options.facts=extract",
            "agent_options.embedder=hashing",
            "env.data=synthetic://locomo?n=2&seed=0&sessions=3",
            "modules.extractor.max_tokens=8",
            "modules.updater.max_tokens=8",
            "rewards.memory_format=0.5",
            "trainer.group_size=3",
            "trainer.batch_size=1",
            "trainer.max_new_tokens=8",
            "trainer.lr=1e-2",
        ],
    )
    trainer = GRPOTrainer(preset)
    result = trainer.train_step()
    assert len(result.trajectories) == 3
    metrics = result.metrics
    assert metrics["count/extract_calls"] == 3 * 3  # 3 sessions per member, 3 members
    assert "reward/f1" in metrics and "reward/memory_format" in metrics
    assert metrics["calls_per_trajectory"] >= 4
    json.dumps([t.summary() for t in result.trajectories])  # the trace is JSON for samples.jsonl and the UI
