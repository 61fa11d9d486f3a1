"""The reference computes exactly as the policy does before any update: KL is exactly 0 on the first step.

Under ``bf16_mixed`` the policy's fp32 master weights run under bf16 autocast, so its embeddings,
norms and residual stream compute in fp32; a plain bf16 copy as the reference computed those in
bf16 and logged KL ~1e-3 before the policy had moved (max |Δ log-prob| 0.28 at identical weights).
verl's and TRL's references compute as their actor does at initialisation; so must ours. The old
and reference log-probs are also scored on the same path (shared prompt or not) as the grad pass,
or the two paths' rounding (up to 0.06 in a bf16 log-prob) shows up as KL. The ``cuda`` twins run
the same checks on a GPU (``bench/gpu_check.py`` runs them on a lent one).
"""

from __future__ import annotations

import pytest
import torch

from memfactory.config import load_preset
from memfactory.paths import presets_dir
from memfactory.trainer.batching import pack_calls, token_logprobs
from memfactory.trainer.loop import GRPOTrainer
from memfactory.types import ModelCall
from tests.vowel_reward import VowelShare

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CASES = {
    "fp32": [],
    "bf16_mixed": ["model.dtype=bfloat16"],
    # a micro-batch of one GRPO group: scoring and the grad pass both run its prompt once
    "bf16_mixed_shared_prompt": ["model.dtype=bfloat16", "trainer.micro_batch_size=4"],
    # checkpointing keeps the grad pass on the plain path: the no-grad scoring must follow it
    "bf16_mixed_checkpointed": ["model.dtype=bfloat16", "trainer.gradient_checkpointing=true",
                                "trainer.micro_batch_size=4"],
    "lora_fp32": ["trainer.lora={r: 4, alpha: 8}"],
    "lora_bf16_mixed": ["model.dtype=bfloat16", "trainer.lora={r: 4, alpha: 8}"],
}


def trainer_for(tmp_path, monkeypatch, overrides: list[str]) -> GRPOTrainer:
    monkeypatch.chdir(tmp_path)
    preset = load_preset(presets_dir() / "tiny_test.yaml", [
        "trainer.beta=0.1", "trainer.stop=[]", "trainer.skip_equal_groups=false", "trainer.max_new_tokens=8",
        *overrides])
    trainer = GRPOTrainer(preset)
    trainer.env.rewards, trainer.env.weights = {"vowels": VowelShare()}, {"vowels": 1.0}
    return trainer


def first_step_kl_is_zero(tmp_path, monkeypatch, overrides: list[str]) -> GRPOTrainer:
    trainer = trainer_for(tmp_path, monkeypatch, overrides)
    before = {k: v.detach().clone() for k, v in trainer.policy.named_parameters() if v.requires_grad}
    first = trainer.train_step().metrics
    assert first["kl"] == 0.0, first  # exactly: the reference scored as the policy computes
    assert first["grad_norm"] > 0  # the step had signal, so it really updated
    assert any(not torch.equal(before[k], v.detach()) for k, v in trainer.policy.named_parameters() if k in before)
    second = trainer.train_step().metrics
    assert second["kl"] > 0, second  # the policy moved away from the reference
    return trainer


@pytest.mark.parametrize("case", list(CASES))
def test_kl_is_exactly_zero_before_any_update(tmp_path, monkeypatch, case):
    first_step_kl_is_zero(tmp_path, monkeypatch, CASES[case])


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("case", list(CASES))
def test_kl_is_exactly_zero_before_any_update_on_cuda(tmp_path, monkeypatch, case):
    trainer = first_step_kl_is_zero(tmp_path, monkeypatch, CASES[case])
    assert trainer.accelerator.device.type == "cuda"


def test_bf16_mixed_reference_keeps_linear_weights_in_bf16_and_the_rest_in_fp32(tmp_path, monkeypatch):
    """Its Linear weights are what autocast makes of the policy's (the checkpoint's bf16); embeddings
    and norms compute in fp32 in the policy, so they are fp32 in the reference too. At identical
    weights its token log-probs equal the policy's bit for bit."""
    trainer = trainer_for(tmp_path, monkeypatch, ["model.dtype=bfloat16"])
    ref = trainer.reference
    linear = {id(p) for m in ref.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters(recurse=False)}
    dtypes = {(id(p) in linear, p.dtype) for p in ref.parameters()}
    # The tied LM head is the fp32 embedding (one tensor), so a Linear may hold fp32 too; nothing else may.
    tied = ref.config.tie_word_embeddings
    assert dtypes - {(True, torch.float32)} == {(True, torch.bfloat16), (False, torch.float32)} if tied else \
        dtypes == {(True, torch.bfloat16), (False, torch.float32)}
    assert ref.get_input_embeddings().weight.dtype == torch.float32
    rows = [ModelCall(module="m", prompt_ids=list(range(5 + i, 30 + 2 * i)), response_ids=list(range(40, 48 + i)),
                      logprobs=[0.0] * (8 + i), text="") for i in range(3)]
    batch = pack_calls(rows, pad_id=trainer.tokenizer.pad_token_id)
    with torch.no_grad(), trainer.autocast():
        policy = token_logprobs(trainer.policy, batch)
        reference = token_logprobs(ref, batch)
    assert torch.equal(policy, reference)


def test_the_first_update_scores_old_and_reference_on_the_grad_pass_path(tmp_path, monkeypatch):
    """With num_iterations 2 the old log-probs come from a no-grad pass: at the first iteration's
    unchanged weights the ratio is exactly 1 and nothing clips, under bf16 with checkpointing."""
    trainer = trainer_for(tmp_path, monkeypatch, ["model.dtype=bfloat16", "trainer.gradient_checkpointing=true",
                                                  "trainer.micro_batch_size=4", "trainer.num_iterations=2",
                                                  "trainer.lr=1e-30"])
    # lr 1e-30 rounds every AdamW step away, so the second iteration runs at the same weights too.
    metrics = trainer.train_step().metrics
    assert metrics["update/ratio_mean"] == 1.0 and metrics["clip_ratio"] == 0.0 and metrics["kl"] == 0.0, metrics


@pytest.mark.parametrize("checkpointing", [False, True])
def test_scoring_follows_the_grad_pass_path(tmp_path, monkeypatch, checkpointing):
    """Two groups of 4 rows sharing a 40-token prompt, micro-batch 4, bf16: the shared-prompt and
    plain paths round differently (a reference scored shared against a checkpointed, hence plain,
    grad pass gave KL 1.3e-4 here), so the update decides the path once for both."""
    trainer = trainer_for(tmp_path, monkeypatch, ["model.dtype=bfloat16", "trainer.micro_batch_size=4",
                                                  f"trainer.gradient_checkpointing={str(checkpointing).lower()}"])
    gen = torch.Generator().manual_seed(0)
    calls = []
    for group in range(2):
        prompt = torch.randint(3, 2000, (40,), generator=gen).tolist()
        calls += [ModelCall(module="m", prompt_ids=prompt, response_ids=torch.randint(3, 2000, (12,), generator=gen).tolist(),
                            logprobs=[0.0] * 12, text="") for _ in range(4)]
    stats = trainer.policy_update([(calls, [1.0, -1.0] * 4)])
    assert stats["kl"] == 0.0 and stats["shared_prompt_fraction"] == (0.0 if checkpointing else 1.0), stats
