"""What the planner counts is what is really held: each part measured on the real tensors on CPU.

The rollout's KV cache (keys in the residual stream's dtype: fp32 under full ``bf16_mixed``), the
bf16 cast copies autograd keeps for the backward, QLoRA's fp32 upcast of the weights it does not
quantize, and (tests/planner/test_planner_costs.py) one layer's saved activations with a padding
mask. DDP's gradient buckets are measured in tests/trainer/test_distributed.py.
"""

from __future__ import annotations

import pytest
import torch

from memfactory.backends.shape import model_shape
from memfactory.config import load_preset
from memfactory.paths import presets_dir
from memfactory.planner.costs import held_cast_bytes, knobs, kv_bytes_per_token, static_bytes
from memfactory.trainer.batching import pack_calls, token_logprobs
from memfactory.types import ModelCall

BF16_MIXED = ["model.dtype=bfloat16"]  # auto precision: bf16_mixed on a bf16 checkpoint
LORA = ["trainer.lora={r: 8}"]
CKPT = ["trainer.gradient_checkpointing=true"]


def _trainer(tmp_path, monkeypatch, overrides):
    from memfactory.trainer.loop import GRPOTrainer

    monkeypatch.chdir(tmp_path)
    preset = load_preset(presets_dir() / "tiny_test.yaml", [*overrides, "logging.swanlab=disabled"])
    return preset, GRPOTrainer(preset)


@pytest.mark.parametrize("overrides", [[], BF16_MIXED, [*BF16_MIXED, *LORA]], ids=["fp32", "bf16_mixed", "bf16_mixed_lora"])
def test_rollout_kv_cache_bytes_are_the_cache_the_policy_fills(tmp_path, monkeypatch, overrides):
    """Prefill and one decode step under the trainer's autocast, as generation runs: the cache's keys
    and values per token. Under full bf16_mixed a key leaves the fp32 k-norm and RoPE in fp32 (the
    residual's dtype) while the value leaves v_proj in bf16: 1.5x a bf16 cache."""
    preset, trainer = _trainer(tmp_path, monkeypatch, overrides)
    rows, tokens = 3, 40
    ids = torch.randint(3, 1000, (rows, tokens))
    policy = trainer.policy.eval()
    with torch.no_grad(), trainer.autocast():
        cache = policy(input_ids=ids, use_cache=True).past_key_values
        policy(input_ids=ids[:, :1], past_key_values=cache, use_cache=True)
    layers = cache.layers
    held = sum(t.numel() * t.element_size() for layer in layers for t in (layer.keys, layer.values))
    shape = model_shape(preset.model.path)
    k = knobs(preset, 1, "single", "cpu", shape)
    assert held == (tokens + 1) * rows * kv_bytes_per_token(shape, k)
    expected = {(): (torch.float32, torch.float32), tuple(BF16_MIXED): (torch.float32, torch.bfloat16),
                tuple(BF16_MIXED + LORA): (torch.bfloat16, torch.bfloat16)}[tuple(overrides)]
    assert (layers[0].keys.dtype, layers[0].values.dtype) == expected


@pytest.mark.parametrize("overrides", [BF16_MIXED, [*BF16_MIXED, *CKPT], [*BF16_MIXED, *LORA]],
                         ids=["full", "full_checkpointed", "lora"])
def test_cast_copies_kept_for_the_backward(tmp_path, monkeypatch, overrides):
    """The scoring forward of the update under bf16 autocast, with a saved-tensor hook: the bf16 copies
    of fp32 weights autograd keeps (every Linear's without checkpointing, the tied LM head's with it,
    the adapters' under LoRA) are what the planner counts after the autocast has exited."""
    preset, trainer = _trainer(tmp_path, monkeypatch, overrides)
    policy = trainer.policy.train()
    trained = [p for p in policy.parameters() if p.requires_grad]
    weight_shapes = {s for p in trained if p.dim() == 2 for s in (tuple(p.shape), tuple(p.shape)[::-1])}  # or .t()
    own = {p.untyped_storage().data_ptr() for p in policy.parameters()}
    casts: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if tensor.dtype == torch.bfloat16 and tuple(tensor.shape) in weight_shapes and storage.data_ptr() not in own:
            casts[storage.data_ptr()] = storage.nbytes()
        return tensor

    # 3 rows x 31 tokens: no activation shares a weight's 2-D shape
    calls = [ModelCall(module="m", prompt_ids=list(range(5, 25)), response_ids=list(range(40, 51)),
                       logprobs=[0.0] * 11, text="") for _ in range(3)]
    batch = pack_calls(calls, pad_id=trainer.tokenizer.pad_token_id)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), trainer.autocast():
        logps = token_logprobs(policy, batch)
    logps.sum().backward()  # the saved tensors were real: the backward runs on them
    shape = model_shape(preset.model.path)
    held = held_cast_bytes(shape, knobs(preset, 1, "single", "cpu", shape), sum(p.numel() for p in trained))
    assert held > 0 and sum(casts.values()) == held


def test_qlora_upcasts_every_weight_it_does_not_quantize_to_fp32():
    """peft's prepare_model_for_kbit_training (what the trainer runs for lora.quantize) casts every
    bf16 weight outside bitsandbytes' quantized Linear layers (the decoder layers' projections) to
    fp32: embeddings, norms. Measured on the bf16 tiny model (no bitsandbytes on this machine, so
    the projections stay unquantized and are left out of the sum)."""
    from peft import prepare_model_for_kbit_training

    from memfactory.backends.sources import load_model_and_tokenizer

    preset = load_preset(presets_dir() / "tiny_test.yaml", [*BF16_MIXED, "trainer.lora={r: 8, quantize: 4bit}"])
    model, _ = load_model_and_tokenizer(preset.model)
    layers = model.model.layers
    quantized = {id(p) for m in layers.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()}
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    upcast = [p for p in model.parameters() if id(p) not in quantized]
    assert {p.dtype for p in upcast} == {torch.float32}
    shape = model_shape(preset.model.path)
    k = knobs(preset, 1, "single", "cuda", shape)
    static = static_bytes(shape, k)
    n_quantized = sum(p.numel() for p in model.parameters() if id(p) in quantized)
    frozen = static["weights"] - 4 * static["trained"]  # the frozen base: 4-bit blocks + fp32 rest
    assert frozen - n_quantized * (0.5 + 0.0625) == sum(p.numel() * p.element_size() for p in upcast)
