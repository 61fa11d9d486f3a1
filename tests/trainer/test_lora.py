"""LoRA training in the GRPO loop on the tiny model: adapters only, reference = adapters disabled."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from memfactory.backends.sources import load_model_and_tokenizer
from memfactory.cli import main
from memfactory.config import load_preset
from memfactory.paths import presets_dir
from memfactory.trainer.batching import pack_calls, token_logprobs
from memfactory.trainer.loop import GRPOTrainer
from tests.vowel_reward import VowelShare

PRESET = presets_dir() / "tiny_test.yaml"
LORA = "trainer.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj, up_proj]}"




def lora_trainer(*overrides: str) -> GRPOTrainer:
    preset = load_preset(PRESET, [LORA, "trainer.lr=5e-2", "trainer.steps=3", *overrides])
    trainer = GRPOTrainer(preset)
    trainer.env.rewards = {"vowels": VowelShare()}
    trainer.env.weights = {"vowels": 1.0}
    return trainer


def test_only_adapter_parameters_train(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = lora_trainer()
    named = dict(trainer.policy.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert trainer.trainable_parameters == sum(named[n].numel() for n in trainable)
    assert trainer.trainable_parameters < sum(p.numel() for p in named.values()) / 5
    before = {n: p.detach().clone() for n, p in named.items()}
    for _ in range(2):  # lora_B moves at step 1; lora_A only once B is non-zero
        result = trainer.train_step()
        assert result.metrics["skipped_group_fraction"] < 1.0
    changed = {n for n, p in trainer.policy.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)


def test_reference_is_the_base_model_with_adapters_disabled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = lora_trainer("trainer.beta=0.1")
    assert trainer.reference is None  # no second copy of the model is held
    first = trainer.train_step()
    assert first.metrics["skipped_group_fraction"] < 1.0
    assert first.metrics["kl"] == pytest.approx(0.0, abs=1e-9)  # adapters start as a no-op (lora_B = 0)
    second = trainer.train_step()
    assert second.metrics["skipped_group_fraction"] < 1.0
    assert second.metrics["kl"] > 1e-7

    # The reference log-probs are exactly those of a freshly loaded base model, not the policy's.
    calls = [c for t in second.trajectories for c in t.calls]
    batch = pack_calls(calls, pad_id=trainer.tokenizer.pad_token_id)
    base, _ = load_model_and_tokenizer(trainer.preset.model)
    with torch.no_grad():
        with trainer.reference_context():
            reference = token_logprobs(trainer.reference_model(), batch)
        policy = token_logprobs(trainer.policy, batch)
        fresh = token_logprobs(base, batch)
    assert torch.allclose(reference, fresh, atol=1e-5)
    assert (policy - fresh).abs().max() > 1e-4


def test_checkpoints_hold_adapters_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(["train", str(PRESET), "--set", LORA, "--set", "trainer.steps=2", "--run-id", "lora1", "--no-progress"])
        == 0
    )
    model_dir = tmp_path / "runs" / "lora1" / "checkpoints" / "step-000002" / "model"
    files = sorted(p.name for p in model_dir.iterdir())
    assert "adapter_config.json" in files and "adapter_model.safetensors" in files
    assert not [f for f in files if f.startswith("model") and f.endswith(".safetensors")]
    weights = load_file(str(model_dir / "adapter_model.safetensors"))
    assert weights and all("lora_" in key for key in weights)
    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "up_proj", "v_proj"]
    state = json.loads((model_dir.parent / "trainer_state.json").read_text())
    assert state["peft"] is True and state["step"] == 2
