"""The update's shared prompt forward: a chunk of one prompt runs it once, same log-probs and gradients.

On ``tiny://qwen3-mini`` in fp32 (see tests/conftest.py), plain and LoRA policies; the plain
path (``shared_prompt=False``) is the reference.
"""

from __future__ import annotations

import pytest
import torch

from memfactory.config import LoraConfig, load_preset
from memfactory.paths import presets_dir
from memfactory.planner.costs import knobs
from memfactory.trainer.batching import TokenBatch, pack_calls, token_logprobs
from memfactory.trainer.loop import GRPOTrainer, attach_lora, enable_gradient_checkpointing
from memfactory.types import ModelCall
from tests.numerics import assert_equal_up_to_rounding
from tests.vowel_reward import VowelShare

# The longest reduction behind a log-prob: the log-softmax over the tiny model's 2000-token vocabulary.
LOGPROB_TERMS = 2000


def calls_for(prompts: list[list[int]], lengths: list[int], seed: int = 0) -> list[ModelCall]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for prompt, r in zip(prompts, lengths):
        response = torch.randint(5, 1900, (r,), generator=g).tolist()
        out.append(ModelCall(module="m", prompt_ids=prompt, response_ids=response, logprobs=[-0.1] * r, text=""))
    return out


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(5, 1900, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def group_batch(pad_id: int) -> TokenBatch:
    """Two groups of 4 (prompts of 30 and 45 tokens), one empty response: left padding in group A."""
    a, b = prompt(30, 1), prompt(45, 2)
    return pack_calls(calls_for([a] * 4 + [b] * 4, [6, 2, 6, 0, 5, 5, 1, 3]), pad_id)


def score(model, batch, *, shared: bool, grad: bool = True, micro: int | None = 4):
    """Log-probs, parameter gradients of a weighted sum of them, and the shared/plain counts."""
    model.zero_grad(set_to_none=True)
    stats: dict[str, int] = {}
    with torch.set_grad_enabled(grad):
        logps = token_logprobs(model, batch, temperature=0.7, micro_batch_size=micro, shared_prompt=shared, stats=stats)
    grads = {}
    if grad:
        weights = torch.linspace(-1.0, 2.0, logps.numel()).view_as(logps)
        (logps * weights).sum().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), grads, stats


def assert_same(shared, plain):
    """The same values and gradients up to fp32 rounding: the shared path sums in another order."""
    (a, ga, _), (b, gb, _) = shared, plain
    assert_equal_up_to_rounding(a, b, terms=LOGPROB_TERMS, what="log-probs")
    assert ga.keys() == gb.keys()
    for k in ga:  # a gradient sums over every token of the batch and the vocabulary behind each
        assert_equal_up_to_rounding(ga[k], gb[k], terms=LOGPROB_TERMS * a.numel(), what=k)


@pytest.fixture
def model(fresh_tiny_backend):
    return fresh_tiny_backend.model.train()


@pytest.fixture
def pad_id(fresh_tiny_backend):
    return fresh_tiny_backend.tokenizer.pad_token_id


def test_shared_prompt_matches_plain_values_and_gradients(model, pad_id):
    batch = group_batch(pad_id)
    shared, plain = score(model, batch, shared=True), score(model, batch, shared=False)
    assert shared[2] == {"rows": 8, "shared_rows": 8} and plain[2] == {"rows": 8}
    assert shared[1]  # every weight got a gradient
    assert_same(shared, plain)


def test_shared_prompt_with_a_lora_policy(model, pad_id):
    torch.manual_seed(0)
    policy = attach_lora(model, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "up_proj"]))
    with torch.no_grad():  # adapters start as a no-op (lora_B = 0): give them a value so lora_A has gradients
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    batch = group_batch(pad_id)
    shared, plain = score(policy, batch, shared=True), score(policy, batch, shared=False)
    assert shared[2]["shared_rows"] == 8
    assert shared[1] and all("lora_" in k for k in shared[1])
    assert any("k_proj.lora_A" in k and v.abs().sum() > 0 for k, v in shared[1].items())  # the prompt's keys train
    assert_same(shared, plain)


def test_a_chunk_of_several_prompts_falls_back(model, pad_id):
    batch = group_batch(pad_id)
    # Micro-batches of 3: rows 0-2 (A), 3-5 (A, B, B: mixed), 6-7 (B).
    shared, plain = score(model, batch, shared=True, micro=3), score(model, batch, shared=False, micro=3)
    assert shared[2] == {"rows": 8, "shared_rows": 5}
    assert_same(shared, plain)
    # A single row has nothing to share.
    assert score(model, batch.select([0]), shared=True)[2] == {"rows": 1}


def test_checkpointing_under_grad_falls_back_and_no_grad_scoring_shares(model, pad_id):
    enable_gradient_checkpointing(model)
    flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    assert flagged
    batch = group_batch(pad_id)
    assert score(model, batch, shared=True)[2] == {"rows": 8}  # would keep the prompt's activations
    shared, plain = score(model, batch, shared=True, grad=False), score(model, batch, shared=False, grad=False)
    assert shared[2] == {"rows": 8, "shared_rows": 8}
    assert_equal_up_to_rounding(shared[0], plain[0], terms=LOGPROB_TERMS, what="log-probs")
    assert all(m.gradient_checkpointing is True for m in flagged)  # restored


def test_the_switch_off_forces_the_plain_path(model, pad_id):
    assert score(model, group_batch(pad_id), shared=False)[2] == {"rows": 8}




def step(shared: bool, *overrides: str) -> dict[str, float]:
    preset = load_preset(
        presets_dir() / "tiny_test.yaml",
        ["trainer.micro_batch_size=4", "trainer.num_iterations=2", "trainer.beta=0.1",
         f"trainer.shared_prompt_forward={str(shared).lower()}", *overrides],
    )
    trainer = GRPOTrainer(preset)
    trainer.env.rewards = {"r": VowelShare()}
    trainer.env.weights = {"r": 1.0}
    return trainer.train_step().metrics


def test_a_train_step_is_the_same_with_the_switch_on_and_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    on, off = step(True), step(False)
    assert on["reward/mean"] == off["reward/mean"]  # the same rollouts
    assert on["update/shared_prompt_fraction"] > 0.0 and off["update/shared_prompt_fraction"] == 0.0
    for key in ("loss", "grad_norm", "kl", "clip_ratio"):
        assert on[key] == pytest.approx(off[key], rel=1e-4, abs=1e-6), key



GPU_PRESETS = ["memagent_qwen3_1.7b", "memagent_qwen3_4b", "memory_r1_qwen3", "rmm_qwen3"]


@pytest.mark.parametrize("name", GPU_PRESETS)
def test_the_gpu_presets_never_take_the_shared_prompt_path_and_the_planner_says_so(name):
    """Every GPU preset checkpoints: the grad pass then keeps the plain path, and the no-grad scoring
    follows it (KL exactly 0), so the shared prompt forward never applies there, whatever the rows."""
    preset = load_preset(presets_dir() / f"{name}.yaml")
    assert preset.trainer.gradient_checkpointing and preset.trainer.shared_prompt_forward
    assert knobs(preset, 1, "single", "cuda").shared_prompt is False


def test_under_checkpointing_a_micro_batch_of_one_group_still_takes_the_plain_path(tmp_path, monkeypatch):
    """What the GPU presets get: rows of one prompt per micro-batch, yet no row shared (grad pass and scoring)."""
    monkeypatch.chdir(tmp_path)
    metrics = step(True, "trainer.gradient_checkpointing=true", "model.dtype=bfloat16")
    assert metrics["grad_norm"] > 0 and metrics["update/shared_prompt_fraction"] == 0.0


def assert_close_in_bf16(shared, plain):
    """bf16 keeps 8 bits of mantissa: log-probs of ~-7 agree to a few tenths, gradients to ~2 %."""
    torch.testing.assert_close(shared[0], plain[0], rtol=0.05, atol=0.05)
    assert shared[1].keys() == plain[1].keys()
    for k in plain[1]:
        scale = float(plain[1][k].abs().max())
        assert float((shared[1][k] - plain[1][k]).abs().max()) <= 0.05 * scale + 1e-6, k


def test_shared_prompt_under_bf16_autocast_on_cpu(model, pad_id):
    """bf16_mixed's forward: the shared cache is made and repeated under autocast like the plain path."""
    batch = group_batch(pad_id)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        shared, plain = score(model, batch, shared=True), score(model, batch, shared=False)
    assert shared[2]["shared_rows"] == 8
    assert_close_in_bf16(shared, plain)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_shared_prompt_on_cuda_fp32_and_under_bf16_autocast(model, pad_id):
    """On the GPU: the repeated cache lives on the model's device, fp32 matches the plain path as on
    CPU, and under bf16 autocast (bf16_mixed) both paths agree to bf16's precision."""
    gpu = model.to("cuda")
    batch = group_batch(pad_id).to("cuda")
    shared, plain = score(gpu, batch, shared=True), score(gpu, batch, shared=False)
    assert shared[0].device.type == "cuda" and shared[2]["shared_rows"] == 8
    assert_equal_up_to_rounding(shared[0], plain[0], terms=LOGPROB_TERMS, what="log-probs")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        shared16, plain16 = score(gpu, batch, shared=True), score(gpu, batch, shared=False)
    assert_close_in_bf16(shared16, plain16)
