"""AdamW's implementation per device (memfactory/trainer/optimizer.py): fused on CUDA, as transformers'
Trainer (and so TRL) builds it, so the step holds no temporary the size of the trained weights; the
memory planner plans the same choice."""

from __future__ import annotations

import pytest
import torch

from memfactory.backends.shape import model_shape
from memfactory.config import load_preset
from memfactory.paths import presets_dir
from memfactory.planner.costs import knobs, static_bytes, update_bytes
from memfactory.trainer.optimizer import adamw_implementation, build_adamw

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _params() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4))]


def test_the_optimizer_built_for_cuda_asks_for_fused_and_cpu_steps_tensor_by_tensor():
    fused = build_adamw(_params(), lr=1e-3, weight_decay=0.01, device=torch.device("cuda"))
    assert fused.defaults["fused"] is True and not fused.defaults["foreach"]
    cpu = build_adamw(_params(), lr=1e-3, weight_decay=0.01, device=torch.device("cpu"))
    assert not cpu.defaults["fused"] and cpu.defaults["foreach"] is False
    # Both step the same: torch's fused kernel runs on CPU tensors too, so the choice is exercised here.
    for opt in (fused, cpu):
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        opt.step()
    for a, b in zip(fused.param_groups[0]["params"], cpu.param_groups[0]["params"]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # fp32, values ~1: rounding of one step
    assert adamw_implementation("cuda") == "fused" and adamw_implementation("cpu") == "single_tensor"


def test_the_planner_plans_the_optimizer_the_trainer_builds():
    """No step temporary with fused AdamW; foreach's (the first H200 run's) is the trained weights' size."""
    from dataclasses import replace

    preset = load_preset(presets_dir() / "memory_r1_qwen3.yaml")
    shape = model_shape(preset.model.path)
    k = knobs(preset, 1, "single", "cuda", shape)
    assert k.optimizer == "fused"
    static = static_bytes(shape, k)
    assert update_bytes(shape, k, static)["moment"] != "optimizer step"
    foreach = update_bytes(shape, replace(k, optimizer="foreach"), static)
    assert foreach["moment"] == "optimizer step" and foreach["step_temp"] == static["trained"] * 4
    assert knobs(preset, 1, "single", "cpu", shape).optimizer == "single_tensor"


@pytest.mark.cuda
@CUDA
def test_the_trainer_steps_fused_adamw_on_cuda(tmp_path, monkeypatch):
    from memfactory.trainer.loop import GRPOTrainer

    monkeypatch.chdir(tmp_path)
    trainer = GRPOTrainer(load_preset(presets_dir() / "tiny_test.yaml", ["model.dtype=bfloat16"]))
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert trainer.accelerator.device.type == "cuda" and optimizer.defaults["fused"] is True
    assert trainer.train_step().metrics["grad_norm"] >= 0
