"""Cross-field checks at validation: combinations that train nothing or set a field to no effect are
refused, each naming the fields and the fix; defaults (which a saved preset writes out) never are."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from memfactory.config import load_preset, parse_preset, save_preset
from memfactory.errors import ConfigError
from memfactory.paths import presets_dir

TESTS = Path(__file__).resolve().parent.parent


def minimal(**trainer) -> dict:
    return {
        "name": "t",
        "agent": "direct",
        "model": {"backend": "hf", "path": "tiny://qwen3-mini"},
        "env": {"type": "long_context", "data": "synthetic://docqa?n=8"},
        "rewards": {"sub_em": 1.0},
        "trainer": {"steps": 4, "group_size": 2, "batch_size": 2, **trainer},
    }


def refusal(data: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_preset(data, "p.yaml")
    return dict(info.value.problems)


@pytest.mark.parametrize(
    "trainer, field, words",
    [
        ({"group_size": 1}, "trainer.group_size", ["at least 2 rollouts", "trains on nothing",
                                                   "set trainer.group_size to 2 or more"]),
        ({"temperature": 0.0, "group_size": 4}, "trainer.temperature", ["greedy", "trainer.group_size 4",
                                                                        "set trainer.temperature above 0"]),
        ({"epsilon": 0.2, "epsilon_high": 0.1}, "trainer.epsilon_high", ["(0.1) is below trainer.epsilon (0.2)",
                                                                         "set epsilon_high to at least epsilon"]),
        ({"warmup_steps": 5}, "trainer.warmup_steps", ["(5) is more than trainer.steps (4)", "never reach",
                                                      "set warmup_steps to at most steps"]),
        ({"kl_clamp": 10.0}, "trainer.kl_clamp", ["trainer.beta is 0", "set trainer.beta above 0",
                                                  "or remove kl_clamp"]),
        ({"kl_bias_correction": False}, "trainer.kl_bias_correction", ["trainer.beta is 0",
                                                                       "or remove kl_bias_correction"]),
        ({"rollout": {"sync_every": 4}}, "trainer.rollout.sync_every", ["engine is policy", "no weights to push",
                                                                       "pick engine hf or vllm"]),
        ({"rollout": {"dtype": "bfloat16"}}, "trainer.rollout.dtype", ["engine is policy", "model.dtype",
                                                                      "remove rollout.dtype"]),
    ],
)
def test_each_silent_combination_is_refused_with_its_fields_and_fix(trainer, field, words):
    found = refusal(minimal(**trainer))
    assert list(found) == [field], found
    for word in words:
        assert word in found[field], (word, found[field])


def test_the_same_fields_are_accepted_where_they_act():
    parse_preset(minimal(group_size=2, temperature=0.7, epsilon=0.2, epsilon_high=0.28, warmup_steps=4))
    parse_preset(minimal(beta=0.001, kl_clamp=10.0, kl_bias_correction=False))  # MemAgent's KL settings
    parse_preset(minimal(rollout={"engine": "hf", "sync_every": 4, "dtype": "bfloat16"}))


def test_defaults_written_out_by_a_saved_preset_are_not_refused(tmp_path):
    # save_preset writes every field (kl_bias_correction: true, rollout.sync_every: 1 ...) with beta 0
    preset = parse_preset(minimal())
    text = save_preset(preset, tmp_path / "p.yaml").read_text(encoding="utf-8")
    assert "kl_bias_correction: true" in text and "sync_every: 1" in text
    assert load_preset(tmp_path / "p.yaml") == preset


def test_batch_size_against_the_environments_train_size():
    data = minimal(batch_size=4)
    data["env"]["train_size"] = 2
    found = refusal(data)
    assert "a step can take only 2 prompts" in found["trainer.batch_size"]
    assert "lower trainer.batch_size to at most 2, or raise env.train_size" in found["trainer.batch_size"]
    data["env"]["train_size"] = 10
    found = refusal(data)
    assert "(10) is not a multiple of trainer.batch_size (4)" in found["env.train_size"]
    assert "drops its last 2 prompts" in found["env.train_size"] and "e.g. 8 or 12" in found["env.train_size"]
    data["env"]["train_size"] = 12
    parse_preset(data)
    data["env"] = {"type": "memory_bank", "data": "locomo_synth", "train_size": 6}  # any env with a train_size
    data.update(agent="memory_r1")
    assert "env.train_size" in refusal(data)


def test_every_problem_is_reported_at_once():
    found = refusal(minimal(group_size=1, warmup_steps=9, epsilon_high=0.1, rollout={"sync_every": 2}))
    assert {"trainer.group_size", "trainer.warmup_steps", "trainer.epsilon_high",
            "trainer.rollout.sync_every"} <= set(found)


def test_eval_only_rewards_are_refused_for_training():
    data = minimal()
    data["rewards"] = {"memagent_sub_em": 1.0}
    found = refusal(data)
    assert "cannot be a training reward" in found["rewards.memagent_sub_em"]
    assert "boxed_em" in found["rewards.memagent_sub_em"]


def test_trainer_algo_is_gone_but_old_presets_still_load():
    data = minimal()
    data["trainer"]["algo"] = "grpo"  # run folders written before it was removed carry it
    assert "algo" not in parse_preset(data).trainer.model_dump()
    assert "algo:" not in parse_preset(data).to_yaml()
    data["trainer"]["algo"] = "ppo"
    assert "unknown key" in refusal(data)["trainer.algo"]


def _preset_files() -> list[Path]:
    shipped = sorted(presets_dir().glob("*.yaml"))
    # presets the tests write or keep as files (the fuzz corpus holds broken ones on purpose)
    kept = [p for p in TESTS.rglob("*.yaml") if "corpus" not in p.parts and "name:" in p.read_text("utf-8")
            and "agent:" in p.read_text("utf-8")]
    return shipped + kept


@pytest.mark.parametrize("path", _preset_files(), ids=lambda p: p.name)
def test_every_shipped_and_test_preset_still_validates(path: Path):
    load_preset(path)


def test_shipped_presets_carry_no_field_that_does_nothing():
    for path in sorted(presets_dir().glob("*.yaml")):
        trainer = yaml.safe_load(path.read_text(encoding="utf-8")).get("trainer", {})
        assert "algo" not in trainer, path.name
