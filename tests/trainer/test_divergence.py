"""Non-finite values in a step end the run with the step, the quantity and the first offending tensor
named, before the optimizer step, and the last good checkpoint stays loadable and unchanged."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch

from memfactory.config import load_preset
from memfactory.paths import presets_dir
from memfactory.trainer import session as session_module
from memfactory.trainer.checkpoint import load_checkpoint
from memfactory.trainer.layout import list_checkpoints
from memfactory.trainer.loop import GRPOTrainer
from memfactory.trainer.session import TrainingSession
from memfactory.trainer.update import TrainingDiverged, first_non_finite_gradient
from tests.vowel_reward import VowelShare

POISONED = "model.layers.1.mlp.down_proj.weight"  # a parameter in the middle: named, not merely the first


def learning_trainer(preset):
    """The real trainer with a reward that varies within groups, so every step runs a backward."""
    trainer = GRPOTrainer(preset)
    trainer.env.rewards, trainer.env.weights = {"v": VowelShare()}, {"v": 1.0}
    return trainer


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_nan_gradient_mid_run_names_step_and_parameter_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(session_module, "GRPOTrainer", learning_trainer)
    preset = load_preset(presets_dir() / "tiny_test.yaml", ["trainer.steps=3", "trainer.save_every=1"])
    seen: dict = {}
    on_step = TrainingSession._on_step

    def poison_after_first_step(self, trainer, result, sink, bar):
        on_step(self, trainer, result, sink, bar)  # step 1's checkpoint is written here
        if result.step == 1:
            seen["checkpoint"] = list_checkpoints(self.run_dir.checkpoints)[-1]
            seen["digests"] = file_digests(seen["checkpoint"])
            seen["weights"] = {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}
            param = dict(trainer.policy.named_parameters())[POISONED]
            param.register_hook(lambda grad: torch.full_like(grad, math.nan))

    monkeypatch.setattr(TrainingSession, "_on_step", poison_after_first_step)
    run = TrainingSession(preset, run_id="nan")
    with pytest.raises(TrainingDiverged) as caught:
        run.run(progress=False)
    message = str(caught.value)
    assert "gradient norm became nan at step 2" in message
    assert f"first non-finite gradient: {POISONED}" in message
    assert "last checkpoint is intact" in message
    assert run.status == "failed" and "step 2" in run.error
    # The failed step wrote nothing: step 1's checkpoint is the newest, byte for byte as written, and loads.
    checkpoint = seen["checkpoint"]
    assert [p.name for p in list_checkpoints(run.run_dir.checkpoints)] == [checkpoint.name] == ["step-000001"]
    assert file_digests(checkpoint) == seen["digests"]
    fresh = GRPOTrainer(preset)
    state = load_checkpoint(checkpoint, fresh.policy, fresh.optimizer, fresh.scheduler)
    assert state["step"] == 1
    loaded = fresh.policy.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in seen["weights"].items())


def test_nan_reference_log_probs_name_the_loss_and_the_input(tmp_path, monkeypatch):
    """A NaN reference (its weights poisoned) makes KL and loss NaN: named before any backward."""
    monkeypatch.chdir(tmp_path)
    preset = load_preset(presets_dir() / "tiny_test.yaml", ["trainer.beta=0.1"])
    trainer = learning_trainer(preset)
    before = {k: v.detach().clone() for k, v in trainer.policy.named_parameters()}
    with torch.no_grad():
        trainer.reference.get_submodule("model.norm").weight.fill_(math.nan)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 1 \(micro-batch 1 of \d+\); "
                                               r"first non-finite input: reference log-probs"):
        trainer.train_step()
    assert all(torch.equal(before[k], v) for k, v in trainer.policy.named_parameters())  # no step was taken


def test_first_non_finite_gradient_skips_a_finite_gradient_whose_norm_overflows():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    assert first_non_finite_gradient(model) is None
    model[0].weight.grad.fill_(3e38)  # finite, but its norm is inf in float32
    assert first_non_finite_gradient(model) is None
    model[1].bias.grad[1] = math.inf
    assert first_non_finite_gradient(model) == "1.bias"
