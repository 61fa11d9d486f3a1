"""trainer.precision and trainer.gradient_checkpointing on CPU (bf16 autocast runs on CPU too).

* bf16_mixed keeps fp32 master weights: at lr 5e-6 one step moves essentially every trained
  weight, while bf16_pure (AdamW on bf16 weights) rounds almost every update away;
* its loss and gradient on a fixed batch match fp32 within bf16 tolerance;
* gradient checkpointing changes memory, not maths: the same gradients with and without;
* resolution (auto -> bf16_mixed for bf16 weights), refusals (float16, an accelerate config that
  sets its own mixed precision), and what the run records.
"""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

from memfactory.backends.sources import load_model_and_tokenizer
from memfactory.config import ModelConfig, load_preset
from memfactory.envs.base import Reward
from memfactory.errors import MemFactoryError
from memfactory.paths import presets_dir
from memfactory.trainer import precision
from memfactory.trainer.batching import pack_calls, token_logprobs
from memfactory.trainer.grpo import grpo_loss
from memfactory.trainer.loop import GRPOTrainer


class AnswerLength(Reward):
    """Varies within every group (random model, no stop string), so every step updates."""

    name = "length"

    def score(self, trajectories):
        return [len(t.answer) / 50.0 for t in trajectories]


BASE = ["trainer.stop=[]", "trainer.skip_equal_groups=false", "trainer.max_new_tokens=8", "trainer.steps=2"]


def make_trainer(tmp_path, monkeypatch, *overrides: str) -> GRPOTrainer:
    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    trainer = GRPOTrainer(load_preset(presets_dir() / "tiny_test.yaml", [*BASE, *overrides]))
    trainer.env.rewards, trainer.env.weights = {"length": AnswerLength()}, {"length": 1.0}
    return trainer


def trained(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in model.named_parameters() if v.requires_grad}


def changed_fraction(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    moved = sum(int((before[k] != after[k]).sum()) for k in before)
    return moved / sum(v.numel() for v in before.values())


# --------------------------------------------------------------------------- resolution


@pytest.mark.parametrize(
    ("requested", "loaded", "expected"),
    [
        ("auto", torch.bfloat16, "bf16_mixed"),
        ("auto", torch.float32, "fp32"),
        ("fp32", torch.float32, "fp32"),
        ("bf16_mixed", torch.float32, "bf16_mixed"),
        ("bf16_mixed", torch.bfloat16, "bf16_mixed"),
        ("bf16_pure", torch.bfloat16, "bf16_pure"),
    ],
)
def test_precision_resolves_from_the_loaded_weights(requested, loaded, expected):
    plan = precision.resolve_precision(requested, loaded)
    assert plan.name == expected
    assert plan.master_dtype == (torch.bfloat16 if expected == "bf16_pure" else torch.float32)


def test_load_dtype_follows_the_precision():
    assert precision.load_dtype("fp32", "bfloat16") == "float32"
    assert precision.load_dtype("bf16_pure", "float32") == "bfloat16"
    assert precision.load_dtype("bf16_mixed", "bfloat16") == "bfloat16"  # exact upcast after loading
    assert precision.load_dtype("auto", "auto") == "auto"


def test_float16_training_is_refused_with_what_to_set():
    for requested in ("auto", "bf16_pure"):
        with pytest.raises(MemFactoryError, match=r"model\.dtype: float16.*bfloat16.*bf16_mixed \(converts"):
            precision.resolve_precision(requested, torch.float16)


def test_bf16_mixed_converts_a_float16_checkpoint_to_bfloat16(tmp_path, monkeypatch, caplog):
    """The stated rule: an explicit bf16_mixed computes in bf16, so float16 weights become bf16 as they
    load; the masters are those bf16 values upcast exactly, the reference holds the same values, and
    the first step's KL is exactly 0 (the run is a bf16 checkpoint's)."""
    source, _ = load_model_and_tokenizer(ModelConfig(path="tiny://qwen3-mini", dtype="float16"))
    fp16 = dict(source.named_parameters())
    assert {v.dtype for v in fp16.values()} == {torch.float16}
    with caplog.at_level(logging.INFO, logger="memfactory.trainer.precision"):
        trainer = make_trainer(tmp_path / "mixed", monkeypatch, "model.dtype=float16",
                               "trainer.precision=bf16_mixed", "trainer.beta=0.1")
    assert "float16 checkpoint's" in caplog.text and "converted to bfloat16" in caplog.text
    for name, master in trainer.policy.named_parameters():
        assert master.dtype == torch.float32
        assert torch.equal(master, fp16[name].to(torch.bfloat16).to(torch.float32)), name
    assert {p.dtype for p in trainer.reference.parameters()} == {torch.bfloat16, torch.float32}
    assert not any(b.dtype == torch.float16 for b in trainer.policy.buffers())
    assert trainer.train_step().metrics["kl"] == 0.0


def test_bf16_mixed_lora_on_a_float16_checkpoint_keeps_no_float16_weight(tmp_path, monkeypatch):
    """Under LoRA the frozen base would otherwise run embeddings and norms in float16."""
    trainer = make_trainer(tmp_path, monkeypatch, "model.dtype=float16", "trainer.precision=bf16_mixed",
                           "trainer.lora={r: 4, alpha: 8}")
    assert trainer.precision_info["frozen_dtype"] == "bfloat16"
    assert trainer.precision_info["trainable_dtype"] == "float32"
    assert trainer.train_step().metrics["grad_norm"] > 0


def test_an_accelerate_config_with_its_own_mixed_precision_is_refused():
    plan = precision.resolve_precision("auto", torch.bfloat16)
    with pytest.raises(MemFactoryError, match=r"mixed_precision: bf16.*'no'.*trainer\.precision"):
        precision.require_hardware(plan, torch.device("cpu"), "bf16")
    precision.require_hardware(plan, torch.device("cpu"), "no")  # CPU autocast does bf16


def test_unknown_precision_in_a_preset_names_the_field(tmp_path):
    from memfactory.errors import ConfigError

    with pytest.raises(ConfigError, match=r"trainer\.precision"):
        load_preset(presets_dir() / "tiny_test.yaml", ["trainer.precision=fp8"])


# --------------------------------------------------------------------------- master weights


def test_bf16_mixed_keeps_fp32_master_weights_and_a_bf16_reference(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, monkeypatch, "model.dtype=bfloat16", "trainer.beta=0.1")
    assert trainer.precision.name == "bf16_mixed"  # auto, from the bf16 weights
    assert {p.dtype for p in trainer.policy.parameters()} == {torch.float32}
    # The reference's Linear weights stay bf16; embeddings and norms compute in fp32 in the policy, so
    # they are fp32 there too (tests/trainer/test_reference_kl.py: KL exactly 0 before an update).
    assert {p.dtype for p in trainer.reference.parameters()} == {torch.bfloat16, torch.float32}
    # The fp32 master is the bf16 checkpoint upcast exactly; the reference holds the same values.
    for (name, master), (_, frozen) in zip(trainer.policy.named_parameters(), trainer.reference.named_parameters()):
        assert torch.equal(master.to(torch.bfloat16), frozen.to(torch.bfloat16)), name
        assert torch.equal(master, frozen.to(torch.float32)), name
    assert trainer.precision_info["precision"] == "bf16_mixed"
    assert trainer.precision_info["trainable_dtype"] == "float32"
    assert trainer.precision_info["autocast"] == "bfloat16"


def test_bf16_mixed_under_lora_trains_fp32_adapters_on_a_bf16_base(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, monkeypatch, "model.dtype=bfloat16", "trainer.lora={r: 4, alpha: 8}")
    assert trainer.precision_info["trainable_dtype"] == "float32"
    assert trainer.precision_info["frozen_dtype"] == "bfloat16"


def test_at_lr_5e_6_bf16_mixed_moves_every_weight_and_bf16_pure_loses_the_updates(tmp_path, monkeypatch):
    fractions = {}
    for name in ("bf16_mixed", "bf16_pure"):
        trainer = make_trainer(tmp_path / name, monkeypatch, "model.dtype=bfloat16", f"trainer.precision={name}",
                               "trainer.lr=5e-6")
        before = trained(trainer.policy)
        result = trainer.train_step()
        assert result.metrics["grad_norm"] > 0
        fractions[name] = changed_fraction(before, trained(trainer.policy))
        state = trainer.optimizer.state[next(p for p in trainer.policy.parameters() if p.requires_grad)]
        assert state["exp_avg"].dtype == precision.resolve_precision(name, torch.bfloat16).master_dtype
    assert fractions["bf16_mixed"] > 0.99, fractions
    assert fractions["bf16_pure"] < 0.5 * fractions["bf16_mixed"], fractions


def test_bf16_pure_logs_a_warning_about_lost_updates(tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="memfactory.trainer.precision"):
        make_trainer(tmp_path, monkeypatch, "model.dtype=bfloat16", "trainer.precision=bf16_pure")
    assert any("bf16_pure" in r.message and "round away" in r.message for r in caplog.records)


def _loss_and_grads(trainer: GRPOTrainer, batch, advantages: torch.Tensor, old_logps: torch.Tensor | None = None):
    """One GRPO loss + backward on a fixed batch with the trainer's model and autocast."""
    trainer.model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    with trainer.autocast():
        logps = token_logprobs(trainer.model, batch, temperature=1.0)
        old = logps.detach() if old_logps is None else old_logps
        loss, _ = grpo_loss(logps, old, advantages, batch.response_mask, loss_type="grpo", epsilon=0.2, beta=0.0)
    loss.backward()
    grads = torch.cat([p.grad.flatten().float() for p in trainer.policy.parameters() if p.grad is not None])
    return float(loss.detach()), grads, logps.detach()


def test_bf16_mixed_loss_and_gradient_match_fp32_within_bf16_tolerance(tmp_path, monkeypatch):
    fp32 = make_trainer(tmp_path / "fp32", monkeypatch, "trainer.precision=fp32")
    mixed = make_trainer(tmp_path / "mixed", monkeypatch, "trainer.precision=bf16_mixed")
    calls, _, _ = fp32.rollout(fp32.batch_for_step(1, 0))
    batch = pack_calls(calls, pad_id=fp32.tokenizer.pad_token_id)
    # A positive advantage everywhere, old log-probs = the fp32 policy's: the fp32 loss is exactly -1
    # (ratio 1), the mixed one is -mean(ratio) with the ratio off by bf16 rounding only.
    adv = torch.ones(batch.num_rows)
    loss_32, grad_32, logps_32 = _loss_and_grads(fp32, batch, adv)
    loss_16, grad_16, logps_16 = _loss_and_grads(mixed, batch, adv, old_logps=logps_32)
    mask = batch.response_mask.bool()
    assert not torch.equal(logps_32[mask], logps_16[mask])  # the mixed forward really ran in bf16
    assert (logps_32[mask] - logps_16[mask]).abs().mean() < 0.05
    assert loss_32 == pytest.approx(-1.0, abs=1e-6)
    assert loss_16 == pytest.approx(loss_32, rel=0.02)
    cosine = torch.nn.functional.cosine_similarity(grad_32, grad_16, dim=0)
    assert cosine > 0.98, float(cosine)


# --------------------------------------------------------------------------- gradient checkpointing


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, monkeypatch, lora):
    extra = ["trainer.lora={r: 4, alpha: 8}"] if lora else []
    plain = make_trainer(tmp_path / "plain", monkeypatch, *extra)
    checkpointed = make_trainer(tmp_path / "ckpt", monkeypatch, "trainer.gradient_checkpointing=true", *extra)
    assert checkpointed.precision_info["gradient_checkpointing"]
    assert (checkpointed.policy.get_base_model() if lora else checkpointed.policy).is_activation_checkpointing
    calls, advantages, _ = plain.rollout(plain.batch_for_step(1, 0))
    batch = pack_calls(calls, pad_id=plain.tokenizer.pad_token_id)
    adv = torch.tensor(advantages, dtype=torch.float32)
    loss_a, grad_a, _ = _loss_and_grads(plain, batch, adv)
    loss_b, grad_b, _ = _loss_and_grads(checkpointed, batch, adv)
    assert grad_a.abs().sum() > 0
    assert loss_a == pytest.approx(loss_b, abs=1e-7)
    torch.testing.assert_close(grad_b, grad_a, atol=1e-6, rtol=1e-5)
    assert checkpointed.precision_info["gradient_checkpointing"] is True


def test_gradient_checkpointing_with_bf16_mixed_trains(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, monkeypatch, "model.dtype=bfloat16", "trainer.gradient_checkpointing=true",
                           "trainer.beta=0.1", "trainer.num_iterations=2")
    before = trained(trainer.policy)
    result = trainer.train_step()
    assert torch.isfinite(torch.tensor(result.metrics["loss"]))
    assert changed_fraction(before, trained(trainer.policy)) > 0.99


def test_bf16_on_a_gpu_without_it_stops_at_start_up_naming_the_field(monkeypatch):
    """Pre-Ampere GPUs (V100, T4) have no bf16: the hardware query is the only thing stubbed here."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100-SXM2-32GB")
    plan = precision.resolve_precision("auto", torch.bfloat16)
    with pytest.raises(MemFactoryError, match=r"trainer\.precision: bf16_mixed.*Tesla V100.*trainer\.precision: fp32"):
        precision.require_hardware(plan, torch.device("cuda", 0))
    precision.require_hardware(precision.resolve_precision("fp32", torch.float32), torch.device("cuda", 0))


def test_gradient_checkpointing_on_a_model_without_it_names_the_field():
    from memfactory.trainer.loop import enable_gradient_checkpointing

    with pytest.raises(MemFactoryError, match=r"trainer\.gradient_checkpointing: Linear does not support"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))


def test_qlora_needs_bitsandbytes_and_cuda():
    if importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available():
        precision.require_qlora()  # available: no error
        return
    with pytest.raises(MemFactoryError, match="QLoRA .* needs"):
        precision.require_qlora()
