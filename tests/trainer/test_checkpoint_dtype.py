"""Full fine-tuning checkpoints and exports hold weights in the checkpoint's dtype (bf16 for a bf16
model trained with fp32 masters), not fp32; the masters ride along for an exact resume."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from memfactory.config import load_preset
from memfactory.export import export_checkpoint
from memfactory.paths import presets_dir
from memfactory.trainer import session as session_module
from memfactory.trainer.checkpoint import MASTER_FILE, load_checkpoint
from memfactory.trainer.layout import latest_checkpoint
from memfactory.trainer.loop import GRPOTrainer
from memfactory.trainer.session import TrainingSession
from tests.vowel_reward import VowelShare

BF16 = ["model.dtype=bfloat16", "trainer.steps=2", "trainer.save_every=1", "trainer.stop=[]",
        "trainer.skip_equal_groups=false", "trainer.max_new_tokens=8"]


def learning_trainer(preset):
    trainer = GRPOTrainer(preset)
    trainer.env.rewards, trainer.env.weights = {"v": VowelShare()}, {"v": 1.0}
    return trainer


def saved_tensors(folder) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def test_a_bf16_mixed_run_checkpoints_bf16_weights_and_resumes_its_fp32_masters_exactly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(session_module, "GRPOTrainer", learning_trainer)
    preset = load_preset(presets_dir() / "tiny_test.yaml", BF16)
    run = TrainingSession(preset, run_id="bf16")
    run.run(progress=False)
    trainer = run.trainer
    assert trainer.precision.name == "bf16_mixed" and trainer.checkpoint_dtype == torch.bfloat16
    masters = {k: v.detach().clone() for k, v in trainer.policy.named_parameters()}
    assert {v.dtype for v in masters.values()} == {torch.float32}
    checkpoint = latest_checkpoint(run.run_dir.path)
    assert checkpoint.name == "step-000002"

    # model/: every weight bf16 (the tied LM head once, as save_pretrained writes it), config says so
    weights = saved_tensors(checkpoint / "model")
    assert {v.dtype for v in weights.values()} == {torch.bfloat16}
    assert "lm_head.weight" not in weights and set(weights) <= set(masters)
    for name, value in weights.items():
        assert torch.equal(value, masters[name].to(torch.bfloat16)), name
    assert json.loads((checkpoint / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    # the masters beside it, exactly, so the weights moved by fp32 steps are not rounded away
    fp32 = load_file(str(checkpoint / MASTER_FILE))
    assert set(fp32) == set(weights)
    assert all(torch.equal(fp32[name], masters[name]) for name in fp32)
    assert any(not torch.equal(masters[n], masters[n].to(torch.bfloat16).float()) for n in fp32)  # rounding matters

    # resume: a fresh trainer gets the fp32 masters back bit for bit
    fresh = GRPOTrainer(preset)
    assert load_checkpoint(checkpoint, fresh.policy, fresh.optimizer, fresh.scheduler)["step"] == 2
    assert all(torch.equal(v, masters[k]) for k, v in fresh.policy.named_parameters())

    # what consumers load: a bf16 transformers model, its tied head intact
    loaded = AutoModelForCausalLM.from_pretrained(checkpoint / "model")
    assert loaded.dtype == torch.bfloat16
    assert torch.equal(loaded.lm_head.weight, masters["model.embed_tokens.weight"].to(torch.bfloat16))

    # export (no merge) copies model/: bf16, no master file
    out = export_checkpoint(str(checkpoint), tmp_path / "export")
    assert {v.dtype for v in saved_tensors(out).values()} == {torch.bfloat16}
    assert not (out / MASTER_FILE).exists()


def test_an_fp32_run_checkpoints_fp32_weights_and_no_master_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset = load_preset(presets_dir() / "tiny_test.yaml", ["trainer.steps=1", "trainer.save_every=1"])
    run = TrainingSession(preset, run_id="fp32")
    run.run(progress=False)
    checkpoint = latest_checkpoint(run.run_dir.path)
    assert {v.dtype for v in saved_tensors(checkpoint / "model").values()} == {torch.float32}
    assert not (checkpoint / MASTER_FILE).exists()
