"""Device discipline: every tensor that enters a model is on that model's device.

Each case runs ``GRPOTrainer.train_step()`` end to end (rollouts, old and reference log-probs,
the clipped update) with forward pre-hooks on the policy and the reference model that record the
device of every tensor argument. On CPU this runs in every ``make test`` (the code path is
exercised; the devices are trivially equal); the ``cuda`` cases are the real check and run
wherever a GPU is present (``bench/gpu_check.py`` runs them first on a lent GPU).
"""

from __future__ import annotations

import pytest
import torch

from memfactory.config import load_preset
from memfactory.envs.base import Reward
from memfactory.paths import presets_dir
from memfactory.trainer.loop import GRPOTrainer

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class AnswerLength(Reward):
    name = "length"

    def score(self, trajectories):
        return [len(t.answer) / 50.0 for t in trajectories]


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def canonical(device: torch.device | str) -> str:
    """``cuda`` (accelerate's device) and ``cuda:0`` (every tensor's) name the same card: compare with the index."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def record_input_devices(model: torch.nn.Module, seen: set[str]) -> None:
    def hook(_module, args, kwargs):
        for tensor in _tensors((args, kwargs)):
            seen.add(canonical(tensor.device))

    model.register_forward_pre_hook(hook, with_kwargs=True)


CASES = {
    "full_fp32": ["trainer.beta=0.1", "trainer.num_iterations=2"],
    "lora_fp32": ["trainer.beta=0.1", "trainer.num_iterations=2", "trainer.lora={r: 4, alpha: 8}"],
    "full_bf16_mixed_checkpointed": ["model.dtype=bfloat16", "trainer.beta=0.1", "trainer.num_iterations=2",
                                     "trainer.gradient_checkpointing=true"],
    "hf_engine": ["trainer.rollout.engine=hf", "trainer.lora={r: 4, alpha: 8}", "trainer.beta=0.1"],
}


def run_case(tmp_path, monkeypatch, overrides: list[str]) -> GRPOTrainer:
    monkeypatch.chdir(tmp_path)
    preset = load_preset(presets_dir() / "tiny_test.yaml", [
        "trainer.stop=[]", "trainer.skip_equal_groups=false", "trainer.max_new_tokens=8", "trainer.steps=2",
        *overrides])
    trainer = GRPOTrainer(preset)
    trainer.env.rewards, trainer.env.weights = {"length": AnswerLength()}, {"length": 1.0}
    device = canonical(trainer.accelerator.device)
    seen: set[str] = set()
    record_input_devices(trainer.policy.get_base_model() if trainer.cfg.lora else trainer.policy, seen)
    if trainer.reference is not None:
        record_input_devices(trainer.reference, seen)
        assert {canonical(p.device) for p in trainer.reference.parameters()} == {device}
    if trainer.engine.separate:
        record_input_devices(trainer.backend.model, seen)
    before = {k: v.detach().clone() for k, v in trainer.policy.named_parameters() if v.requires_grad}
    kls = []
    for _ in range(2):
        result = trainer.train_step()
        assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values()), result.metrics
        kls.append(result.metrics["kl"])
    assert seen == {device}, f"tensors reached the models on {seen}; the models are on {device}"
    assert {canonical(p.device) for p in trainer.policy.parameters()} == {device}
    after = dict(trainer.policy.named_parameters())
    assert any(not torch.equal(before[k], after[k].detach()) for k in before)
    # The reference computes exactly as the policy did before any update (tests/trainer/test_reference_kl.py):
    # KL is 0 until an optimizer step moves the policy, so KL > 0 afterwards is movement, not a floor.
    if trainer.cfg.num_iterations == 1:
        assert kls[0] == 0.0, kls
    assert kls[-1] > 0, kls  # the reference scored on-device and the policy moved away from it
    return trainer


@pytest.mark.parametrize("case", list(CASES))
def test_train_step_feeds_every_model_on_its_device(tmp_path, monkeypatch, case):
    run_case(tmp_path, monkeypatch, CASES[case])


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("case", list(CASES))
def test_train_step_on_cuda(tmp_path, monkeypatch, case):
    trainer = run_case(tmp_path, monkeypatch, CASES[case])
    assert trainer.accelerator.device.type == "cuda"
