"""The update's FLOP counts (memfactory/planner/flops.py) against torch's own FLOP counter.

``torch.utils.flop_counter.FlopCounterMode`` counts every matmul the real update runs on the tiny
model (its CPU attention kernel is not counted, so attention is checked against torch's formula
for the fused kernels separately). The H200 run's update times then give the MFU RESULTS.md quotes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from memfactory.backends.shape import model_shape, preset_shape
from memfactory.backends.sources import load_model_and_tokenizer
from memfactory.config import ModelConfig, load_preset
from memfactory.paths import presets_dir
from memfactory.planner.flops import UpdateWork, attention_flops, mfu, update_flops
from memfactory.trainer.batching import pack_calls, split_micro_batches, token_logprobs
from memfactory.trainer.loop import enable_gradient_checkpointing
from memfactory.types import ModelCall

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_matmul_flops_of_an_update_are_what_torch_counts(ragged, checkpointing, lora):
    """A reference forward, then the grad pass's forward and backward, micro-batch by micro-batch as
    the update runs them: every Linear and the LM head on the kept positions, counted by torch (with
    checkpointing, the re-forward that torch stops once down_proj's input is back; under LoRA the
    reference is the policy with its adapters off)."""
    from contextlib import nullcontext

    from memfactory.config.schema import LoraConfig
    from memfactory.trainer.loop import attach_lora

    model, _ = load_model_and_tokenizer(ModelConfig(path="tiny://qwen3-mini", dtype="float32"))
    if checkpointing:
        enable_gradient_checkpointing(model)
    lora_cfg = LoraConfig(r=8) if lora else None
    if lora:
        model = attach_lora(model, lora_cfg)
        reference, off = model, model.disable_adapter
    else:
        reference, off = copy.deepcopy(model).eval().requires_grad_(False), nullcontext
    model.train()
    gen = torch.Generator().manual_seed(0)
    lengths = [(30, 12), (30, 5), (24, 9), (30, 12)] if ragged else [(30, 12)] * 4
    calls = [ModelCall(module="m", prompt_ids=torch.randint(3, 1900, (p,), generator=gen).tolist(),
                       response_ids=torch.randint(3, 1900, (r,), generator=gen).tolist(), logprobs=[0.0] * r, text="")
             for p, r in lengths]
    batch = pack_calls(calls, pad_id=0)
    micro = [batch.select(idx) for idx in split_micro_batches(batch, 2)]
    with FlopCounterMode(display=False) as counter:
        for mb in micro:
            with torch.no_grad(), off():
                token_logprobs(reference, mb, shared_prompt=False)
            token_logprobs(model, mb, shared_prompt=False).sum().backward()
    rows = [tuple((int(m.attention_mask[i, :m.prompt_width].sum()), int(m.response_mask[i].sum())) for i in range(m.num_rows))
            for m in micro]
    # the packed layout: each micro-batch is as wide as its longest prompt plus its longest response
    assert [(m.prompt_width, m.response_width) for m in micro] == [(max(p for p, _ in r), max(x for _, x in r)) for r in rows]
    flops = update_flops(model_shape("tiny://qwen3-mini"),
                         UpdateWork(micro_batches=tuple(rows), checkpointing=checkpointing, reference=True,
                                    lora_r=8 if lora else None,
                                    lora_targets=tuple(lora_cfg.target_modules) if lora else ()))
    assert counter.get_total_flops() == flops["layers"] + flops["lm_head"]
    assert flops["model_6n"] == 6 * model_shape("tiny://qwen3-mini").parameters * sum(p + r for p, r in lengths)


def test_attention_flops_follow_torchs_accounting_of_the_fused_kernels():
    """Forward: 2 matmuls over every query-key pair (torch's sdpa formula), half of them causal; backward
    2.5x the forward (the fused kernels recompute the scores: 5 matmuls)."""
    b, heads, t, d = 2, 4, 32, 16
    shape = (b, heads, t, d)
    full = attention_flops(t, t, heads * d, causal=False)
    assert b * full == sdpa_flop_count(shape, shape, shape)
    assert sdpa_backward_flop_count(shape, shape, shape, shape) == 2.5 * sdpa_flop_count(shape, shape, shape)
    assert attention_flops(t, t, heads * d, causal=True) == full * (t + 1) / (2 * t)


def test_the_h200_updates_ran_at_23_to_26_percent_6n_mfu_and_42_to_47_percent_executed():
    """bench/RESULTS.md's figures, from the H200 run's update seconds (2 micro-batches of 4 rows of the
    preset's longest call, checkpointed, beta > 0) against the 790 TFLOP/s bf16 matmul rate measured there.
    (The issue's 44-49 % counted checkpointing's re-forward whole; torch stops it before down_proj.)"""
    six, executed = [], []
    for name in ("gpu_check_h200_presets.json", "gpu_check_h200_cuda_rmm.json"):
        for key, result in json.loads((ROOT / "bench" / name).read_text())["results"].items():
            if not key.startswith("preset:") or "update" not in result:
                continue
            preset = load_preset(presets_dir() / f"{key.removeprefix('preset:')}.yaml")
            prompt, response, _ = preset_shape(preset)
            mb = ((prompt, response),) * result["micro_batch_size"]
            work = UpdateWork(micro_batches=(mb, mb), checkpointing=True, reference=True)
            flops = update_flops(model_shape(preset.model.path), work)
            six.append(mfu(flops["model_6n"], result["update"]["step_s"], 790e12))
            executed.append(mfu(flops["executed"], result["update"]["step_s"], 790e12))
    assert len(six) == 4
    assert 0.225 < min(six) and max(six) < 0.265, six
    assert 0.42 < min(executed) and max(executed) < 0.475, executed
