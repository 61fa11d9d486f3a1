"""The GRPO loop on the tiny model: updates happen only where groups carry signal."""

from __future__ import annotations

import math

import pytest
import torch

from memfactory.config import load_preset
from memfactory.envs.base import Reward
from memfactory.paths import presets_dir
from memfactory.trainer.loop import GRPOTrainer
from memfactory.trainer.update import TrainingDiverged
from tests.vowel_reward import VowelShare


class Constant(Reward):
    def __init__(self, value: float):
        self.value = value

    def score(self, trajectories):
        return [self.value] * len(trajectories)


@pytest.fixture()
def trainer(tmp_path, monkeypatch) -> GRPOTrainer:
    monkeypatch.chdir(tmp_path)
    preset = load_preset(presets_dir() / "tiny_test.yaml", ["trainer.steps=2", "trainer.lr=1e-2"])
    return GRPOTrainer(preset)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def use_reward(trainer: GRPOTrainer, reward: Reward) -> None:
    trainer.env.rewards = {"r": reward}
    trainer.env.weights = {"r": 1.0}


def test_step_with_signal_updates_the_policy_and_logs_metrics(trainer):
    use_reward(trainer, VowelShare())
    before = snapshot(trainer.policy)
    result = trainer.train_step()
    after = snapshot(trainer.policy)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    m = result.metrics
    for key in ("reward/mean", "reward/std", "reward/r", "loss", "clip_ratio", "response_length/mean", "lr",
                "time/step_s", "tokens_per_s", "skipped_group_fraction", "grad_norm"):
        assert key in m, key
    assert m["skipped_group_fraction"] < 1.0
    assert m["rollout/shared_prefill_fraction"] == 0.75  # 2 prompts x 4 members: 2 prefills for 8 rows
    assert len(result.trajectories) == 2 * 4
    assert [len(g) for g in result.group_rewards] == [4, 4]
    assert trainer.step == 1


def test_gradients_are_freed_right_after_the_optimizer_step(trainer):
    """As transformers' Trainer (and so TRL): held until the next update, the fp32 gradients would sit
    through the next rollout (6.4 GiB on Qwen3-1.7B)."""
    use_reward(trainer, VowelShare())
    at_step = []
    trainer.optimizer.optimizer.register_step_pre_hook(
        lambda opt, *_: at_step.append(sum(p.grad is not None for g in opt.param_groups for p in g["params"])))
    result = trainer.train_step()
    assert result.metrics["grad_norm"] > 0 and at_step == [sum(1 for p in trainer.policy.parameters() if p.requires_grad)]
    assert all(p.grad is None for p in trainer.policy.parameters())


def test_groups_without_signal_are_skipped_and_nothing_moves(trainer):
    use_reward(trainer, Constant(0.5))
    before = snapshot(trainer.policy)
    result = trainer.train_step()
    assert result.metrics["skipped_group_fraction"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in snapshot(trainer.policy).items())


def test_non_finite_reward_stops_with_a_clear_error(trainer):
    use_reward(trainer, Constant(math.inf))
    trainer.env.rewards["v"] = VowelShare()
    trainer.env.weights["v"] = 1.0
    with pytest.raises(TrainingDiverged, match="step 1"):
        trainer.train_step()


def test_batches_are_a_function_of_seed_and_step(trainer):
    first = [s.id for s in trainer.batch_for_step(3, 0)]
    assert first == [s.id for s in trainer.batch_for_step(3, 0)]
    assert first != [s.id for s in trainer.batch_for_step(4, 0)] or len(trainer.train_samples) <= 2


def test_each_epoch_visits_every_training_prompt_once(trainer):
    n = len(trainer.train_samples)
    per_epoch = n // trainer.cfg.batch_size
    for epoch in range(2):
        seen = [s.id for step in range(1 + epoch * per_epoch, 1 + (epoch + 1) * per_epoch)
                for s in trainer.batch_for_step(step, 0)]
        assert len(seen) == len(set(seen)) == per_epoch * trainer.cfg.batch_size
    first = [s.id for s in trainer.batch_for_step(1, 0)]
    later = [s.id for s in trainer.batch_for_step(1 + per_epoch, 0)]
    assert first != later  # a fresh order each epoch


def test_qlora_without_bitsandbytes_and_cuda_is_a_clear_error(tmp_path, monkeypatch):
    from memfactory.errors import MemFactoryError

    monkeypatch.chdir(tmp_path)
    preset = load_preset(presets_dir() / "tiny_test.yaml", ["trainer.lora.quantize=4bit"])
    assert preset.trainer.lora is not None and preset.trainer.lora.quantize == "4bit"
    if torch.cuda.is_available():
        pytest.skip("this machine could run QLoRA; the error path is for CPU-only machines")
    with pytest.raises(MemFactoryError, match="QLoRA .* needs .*CUDA"):
        GRPOTrainer(preset)


def test_a_constant_schedule_honours_its_warm_up(tmp_path, monkeypatch):
    """transformers' "constant" schedule ignores num_warmup_steps; the trainer's does not (the GPU
    presets and the CPU demo's warm-up once ran at the full rate from the first step)."""
    monkeypatch.chdir(tmp_path)
    overrides = ["trainer.steps=4", "trainer.lr=1e-2", "trainer.lr_scheduler=constant", "trainer.warmup_steps=3"]
    trainer = GRPOTrainer(load_preset(presets_dir() / "tiny_test.yaml", overrides))
    use_reward(trainer, Constant(0.5))  # no signal: the schedule alone is under test
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0  # the first step's rate
    rates = [trainer.train_step().metrics["lr"] for _ in range(4)]  # the rate each step leaves for the next
    assert rates == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2, 1e-2], rel=1e-6)
