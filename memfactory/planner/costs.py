"""The planner's arithmetic: a preset's knobs and the bytes each part of a training step holds.

Why the formulas look the way they do (docs/gpu.md, "Memory planner", has them with the
calibration against measured peaks; tests/planner/test_planner_costs.py measures each part on
real tensors):

* static memory follows ``trainer.precision`` exactly as :mod:`memfactory.trainer.precision`
  resolves it: trained weights, their gradients and AdamW's two moments in the master dtype
  (fp32, or bf16 under ``bf16_pure``), frozen weights (LoRA base, the reference copy of full
  fine-tuning with ``beta > 0``) in the loaded dtype, but the reference's embeddings and norms in
  fp32 under ``bf16_mixed`` and QLoRA's non-4-bit weights upcast to fp32;
* the update's peak is the largest of three moments: the end of a micro-batch's forward (bf16
  autocast keeps a cast copy of every fp32 weight until the autocast exits), the start of its
  backward (the response logits' float32 gradients, and the cast copies autograd kept), and the
  optimizer step (a foreach AdamW's temporary of the trained weights' size; fused on CUDA: none);
* the rollout holds the KV cache of every sequence the process generates at once (keys fp32 under
  full ``bf16_mixed``), no gradients (freed after each step) but DDP's buckets;
* FSDP2 shards the trained weights, gradients and optimizer state; DDP replicates everything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from memfactory.backends.shape import DTYPE_BYTES, ModelShape, model_shape, preset_shape
from memfactory.backends.static_decode import compiled_on

GIB = 2**30
# CUDA context and kernels' workspaces: outside torch's allocated bytes but on the card.
CUDA_CONTEXT_GIB = 0.5
# The caching allocator's reserved memory over its peak allocated (measured on an H200: 6.5-11 %).
CUDA_FRAGMENTATION = 0.10
# Resident memory of a training process before its tensors count: Python, torch, transformers,
# tokenizer, data, accelerate (measured by bench/plan_calibration.py: 0.32 GiB after the imports,
# 0.47 GiB once a trainer of the 0.3M-parameter tiny model is built; see bench/RESULTS.md).
HOST_BASELINE_GIB = 0.47
# glibc keeps freed blocks of a process, so peak RSS runs above the live tensors' peak.
HOST_FRAGMENTATION = 0.10


@dataclass(frozen=True)
class Knobs:
    """Everything the arithmetic reads from a preset (and the advice varies one at a time)."""

    precision: str  # resolved: fp32 | bf16_mixed | bf16_pure
    frozen_bytes: int  # bytes per frozen weight (the loaded dtype)
    lora_r: int | None
    lora_targets: tuple[str, ...]
    quantize: str  # none | 4bit | 8bit
    reference: bool  # a second frozen copy (full fine-tuning with beta > 0)
    checkpointing: bool
    micro_batch: int
    shared_prompt: bool  # the update runs a micro-batch's one prompt once (trainer.shared_prompt_forward)
    prompt: int
    response: int
    rollout_rows: int  # sequences generated at once per process (batch_size x group_size / N)
    batch_size: int
    group_size: int
    engine: str  # policy | hf | vllm
    engine_bytes: int
    gpus: int
    strategy: str  # single | ddp | fsdp2
    device: str  # cuda | cpu
    # A colocated vLLM engine's bytes while sampling and during the update (asleep: 0), see
    # memfactory.backends.vllm_engine.engine_memory; its KV lives in its own pool.
    engine_rollout: float = 0.0
    engine_update: float = 0.0
    # AdamW's implementation (memfactory.trainer.optimizer): fused (CUDA, one in-place kernel), foreach
    # (one temporary the size of the trained weights: what the first H200 run used), single_tensor (CPU).
    optimizer: str = "fused"
    # The rows are ragged (real rollouts), so sdpa gets a padding mask: transformers then repeats K/V
    # to every query head (the update's saved activations, each decode step's attention) and sdpa
    # saves a copy of the mask (gpu_check's fitted H200 points were unpadded rows).
    padded: bool = True
    # Generation decodes through a static cache and torch.compile (model.options.decode, auto on CUDA),
    # under which transformers repeats K/V to every query head over the whole cache, a layer at a time.
    compiled_decode: bool = False

    @property
    def master_bytes(self) -> int:
        return 2 if self.precision == "bf16_pure" else 4

    @property
    def compute_bytes(self) -> int:
        """Activations and KV cache: bf16 under autocast or bf16 weights, fp32 otherwise."""
        return 4 if self.precision == "fp32" else 2

    @property
    def residual_bytes(self) -> int:
        """The residual stream's dtype, the embedding's: the master dtype under full fine-tuning; under
        LoRA the frozen base's, except fp32 when QLoRA's preparation upcast every non-4-bit weight.
        Norms and RoPE follow it, so a cached key (after Qwen3's k-norm and RoPE) is in it too."""
        if self.lora_r is None:
            return self.master_bytes
        return 4 if self.precision == "fp32" or self.quantize != "none" else self.frozen_bytes


def knobs(preset: Any, gpus: int, strategy: str, device: str, shape: ModelShape | None = None) -> Knobs:
    """The preset's knobs, with the precision resolved by the trainer's own rules."""
    import torch

    from memfactory.trainer.optimizer import adamw_implementation
    from memfactory.trainer.precision import load_dtype, resolve_precision

    shape = shape or model_shape(preset.model.path, preset.model.seed)
    loaded = load_dtype(preset.trainer.precision, preset.model.dtype)
    if loaded == "auto":
        loaded = shape.dtype
    plan = resolve_precision(preset.trainer.precision, getattr(torch, loaded))
    cfg = preset.trainer
    prompt, response, _ = preset_shape(preset)
    engine = cfg.rollout.engine
    engine_dtype = cfg.rollout.dtype or loaded
    lora = cfg.lora
    decode = (preset.model.options or {}).get("decode", "auto")
    return Knobs(
        precision=plan.name,
        frozen_bytes=DTYPE_BYTES.get(loaded, 4),
        lora_r=lora.r if lora is not None else None,
        lora_targets=tuple(lora.target_modules) if lora is not None else (),
        quantize=lora.quantize if lora is not None else "none",
        reference=cfg.beta > 0 and lora is None,
        checkpointing=cfg.gradient_checkpointing,
        micro_batch=cfg.micro_batch_size,
        shared_prompt=_update_shares_prompt(preset, strategy),
        prompt=prompt,
        response=response,
        rollout_rows=math.ceil(cfg.batch_size / gpus) * cfg.group_size,
        batch_size=cfg.batch_size,
        group_size=cfg.group_size,
        engine=engine,
        engine_bytes=DTYPE_BYTES.get(engine_dtype if engine_dtype != "auto" else loaded, 2),
        gpus=gpus,
        strategy=strategy,
        device=device,
        optimizer=adamw_implementation(device),  # what GRPOTrainer builds
        compiled_decode=engine in ("policy", "hf") and compiled_on(decode, torch.device(device)),
    )


def _update_shares_prompt(preset: Any, strategy: str) -> bool:
    """Whether the update's micro-batches run one shared prompt once (batching.token_logprobs' rules).

    The direct agent's calls come group by group, so a micro-batch that divides the group holds
    one prompt; the trainer shares it in one process without gradient checkpointing. Other
    agents' longest calls (a MemAgent chunk after the first, a memory-bank turn) carry per-row
    memory in the prompt, so they are planned at the plain path. Every shipped GPU preset
    checkpoints, so it never applies to them (docs/gpu.md).
    """
    cfg = preset.trainer
    return (
        cfg.shared_prompt_forward
        and not cfg.gradient_checkpointing
        and strategy == "single"
        and preset.agent == "direct"
        and 2 <= cfg.micro_batch_size <= cfg.group_size
        and cfg.group_size % cfg.micro_batch_size == 0
    )


# --------------------------------------------------------------------------- the arithmetic


def layer_activation_bytes(shape: ModelShape, compute_bytes: int, residual_bytes: int | None = None,
                           padded_length: int = 0) -> int:
    """Bytes one token leaves saved for backward in one decoder layer (no checkpointing).

    Counted from what autograd saves in a Llama/Qwen3 layer (tests/planner/test_planner_costs.py
    checks it with a saved-tensor hook, exactly on CPU, in fp32 and under bf16 autocast, with and
    without padding): each RMSNorm keeps its input (the residual stream's dtype) and its float32
    normalised value plus one rsqrt; in the compute dtype the projections keep their inputs (2h + 2q:
    the attention's and the MLP's normed input, q for o_proj's input), attention keeps q, k and v
    (q + 2kv after the q counted above), the MLP its gate, activation, up and product (4I); RoPE's
    cos and sin (2 x head_dim, in the residual's dtype); sdpa its float32 log-sum-exp per head.
    Qwen3's q/k norms add their inputs and float32 normalised values. Under autocast with an fp32
    residual each projection casts its normed input itself (q, k, v; gate, up: 3h more than shared).

    ``padded_length``: the rows' length when a padding mask is present: transformers repeats K/V to
    every query head before sdpa (2(q - kv) more) and sdpa saves its float copy of the mask
    (``padded_length`` key positions per query token).
    """
    a = compute_bytes
    r = compute_bytes if residual_bytes is None else residual_bytes
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    total = 2 * h * r + 2 * (4 * h + 4) + a * (2 * h + 2 * q + 2 * kv + 4 * i) + r * 2 * shape.head_dim + 4 * shape.heads
    if r != a:
        total += 3 * h * a
    if shape.qk_norm:
        total += (a + 4) * (q + kv) + 4 * (shape.heads + shape.kv_heads)
    if padded_length:
        total += 2 * (q - kv) * a + padded_length * a
    return total


def cast_parameters(shape: ModelShape, k: Knobs, trained: float) -> float:
    """Trained parameters that bf16 autocast casts (those of ``nn.Linear`` modules, the tied LM head's
    embedding included); 0 unless ``bf16_mixed``. Autocast caches each copy until it exits, and
    autograd keeps those a backward needs."""
    if k.precision != "bf16_mixed":
        return 0.0
    if k.lora_r is not None:
        return trained  # the adapters
    return float(shape.linear_parameters + (shape.vocab * shape.hidden if shape.tied else 0))


def held_cast_bytes(shape: ModelShape, k: Knobs, trained: float) -> float:
    """The bf16 cast copies autograd keeps for the backward after the autocast exits (bytes, unsharded):
    every one without checkpointing; with it only the LM head's (the one ``nn.Linear`` outside the
    checkpointed layers, whose saved tensors are recomputed); frozen under LoRA, so no copy there.
    Under LoRA the first layer's attention input (the frozen embedding's) needs no gradient, so the
    ``lora_A`` of its q/k/v projections is not kept for one."""
    cast = cast_parameters(shape, k, trained)
    if not cast:
        return 0.0
    if k.lora_r is not None:
        first = sum(k.lora_r * shape.hidden for name in ("q_proj", "k_proj", "v_proj") if name in k.lora_targets)
        return 0.0 if k.checkpointing else 2 * (cast - first)
    return 2.0 * shape.vocab * shape.hidden if k.checkpointing else 2 * cast


def kv_bytes_per_token(shape: ModelShape, k: Knobs) -> int:
    """Keys and values of one token over all layers as the rollout's cache holds them: under the
    policy the key is in the residual's dtype (fp32 after the fp32 k-norm and RoPE under full
    bf16_mixed) and the value in the compute dtype; a separate hf engine holds both in its dtype."""
    if k.engine == "hf":
        return shape.kv_bytes_per_token(k.engine_bytes)
    return shape.layers * shape.kv_dim * (k.residual_bytes + k.compute_bytes)


def reference_bytes(shape: ModelShape, k: Knobs) -> float:
    """The full fine-tuning reference copy: in the loaded dtype, but under ``bf16_mixed`` everything
    outside an ``nn.Linear`` (embeddings, norms) in the master dtype, so that it computes exactly as
    the policy does (:func:`memfactory.trainer.precision.reference_dtypes`)."""
    if k.precision != "bf16_mixed":
        return float(shape.parameters * k.frozen_bytes)
    linear = shape.linear_parameters
    return float(linear * k.frozen_bytes + (shape.parameters - linear) * k.master_bytes)


def static_bytes(shape: ModelShape, k: Knobs) -> dict[str, float]:
    """Weights, gradients, optimizer state and reference per device, in bytes."""
    total = shape.parameters
    shards = k.gpus if k.strategy == "fsdp2" else 1
    if k.lora_r is None:
        trained = total
        frozen_weights = 0.0
    else:
        trained = shape.lora_parameters(k.lora_r, list(k.lora_targets))
        if k.quantize == "none":
            frozen_weights = total * float(k.frozen_bytes)
        else:
            # bitsandbytes quantizes the decoder layers' projections (+ block scales); the LM head is
            # skipped, and peft's prepare_model_for_kbit_training upcasts every other weight to fp32.
            quantized = shape.linear_parameters - (0 if shape.tied else shape.vocab * shape.hidden)
            per_weight = {"4bit": 0.5 + 0.0625, "8bit": 1.0 + 0.03}[k.quantize]
            frozen_weights = quantized * per_weight + (total - quantized) * 4
    m = k.master_bytes
    return {
        "weights": (trained * m + frozen_weights) / shards,
        "gradients": trained * m / shards,
        "optimizer": 2 * trained * m / shards,  # AdamW's exp_avg and exp_avg_sq, in the weights' dtype
        "reference": reference_bytes(shape, k) if k.reference else 0.0,  # deep-copied, never sharded
        "trained": trained,
    }


def update_bytes(shape: ModelShape, k: Knobs, static: dict[str, float]) -> dict[str, float]:
    """The update phase's dynamic memory and its peak over forward end, backward start and the step."""
    a = k.compute_bytes
    row = k.prompt + k.response
    tokens = k.micro_batch * row
    repeated_kv = 0.0
    residual = k.residual_bytes
    if k.shared_prompt and not k.checkpointing:
        # The prompt runs once and only the responses per row; attention then saves the prompt's
        # keys and values repeated for every row (batching._shared_prompt_logprobs), and, its
        # queries being shorter than its keys, sdpa gets a mask, under which transformers repeats
        # K/V to every query head (repeat_kv) before the kernel saves them: 2q per key position.
        tokens = k.prompt + k.micro_batch * k.response
        per_row_keys = k.prompt * 2 * shape.q_dim + k.response * 2 * (shape.q_dim - shape.kv_dim)
        repeated_kv = shape.layers * k.micro_batch * per_row_keys * a
        layer = tokens * layer_activation_bytes(shape, a, residual)
    else:
        layer = tokens * layer_activation_bytes(shape, a, residual, padded_length=row if k.padded else 0)
    # Backward of a layer holds its saved tensors and about as much again in their gradients. Without
    # checkpointing the saved tensors are already in ``saved``, so only the gradients come on top;
    # under checkpointing the layer's tensors are recomputed, so both do.
    working = layer
    if k.checkpointing:
        saved = shape.layers * tokens * shape.hidden * residual  # each layer's input
    else:
        saved = shape.layers * layer + repeated_kv
    # Response logits: only R + 1 positions are kept; normalised in float32. The forward holds the
    # float32 copy and log-softmax's two temporaries (3 units); the backward four.
    unit = k.micro_batch * k.response * shape.vocab * 4
    shards = k.gpus if k.strategy == "fsdp2" else 1
    # bf16 autocast caches a bf16 copy of every fp32 weight it casts until the autocast exits; those
    # the backward needs stay after it (held_cast_bytes).
    cast_cache = 2 * cast_parameters(shape, k, static["trained"]) / shards
    held_casts = held_cast_bytes(shape, k, static["trained"]) / shards
    # foreach AdamW allocates one temporary of the trained weights; fused and single-tensor ones do not.
    step_temp = static["trained"] * k.master_bytes / shards if k.optimizer == "foreach" else 0.0
    fixed = static["weights"] + static["gradients"] + static["optimizer"] + static["reference"]
    fwd_dyn = max(working if k.checkpointing else 0.0, 3 * unit)
    bwd_dyn = max(4 * unit, (2 if k.checkpointing else 1) * working)
    forward = fixed + cast_cache + saved + fwd_dyn
    backward = fixed + held_casts + saved + bwd_dyn
    step = fixed + step_temp
    peak = max(forward, backward, step)
    out = {"activations": saved, "logits": 0.0, "cast_cache": 0.0, "step_temp": 0.0, "peak": peak}
    if peak == forward:
        is_logits = 3 * unit >= fwd_dyn
        out.update(moment="forward", cast_cache=cast_cache, logits=fwd_dyn if is_logits else 0.0,
                   activations=saved + (0.0 if is_logits else fwd_dyn))
    elif peak == backward:
        is_logits = 4 * unit >= bwd_dyn
        out.update(moment="backward", cast_cache=held_casts, logits=bwd_dyn if is_logits else 0.0,
                   activations=saved + (0.0 if is_logits else bwd_dyn))
    else:
        out.update(moment="optimizer step", step_temp=step_temp)
    return out


def rollout_bytes(shape: ModelShape, k: Knobs, static: dict[str, float]) -> dict[str, float]:
    """Generation: the KV cache of every row generated at once, on top of the persistent state. The
    gradients are freed right after each optimizer step, so none are held while sampling, except DDP's
    buckets (the gradients are views into them, which DDP keeps for the whole run)."""
    rows_tokens = k.rollout_rows * (k.prompt + k.response)
    # Each row holds its own keys and values (a prompt shared by a group is prefilled once, then copied).
    kv = 0.0 if k.engine == "vllm" else rows_tokens * kv_bytes_per_token(shape, k)
    fixed = static["weights"] + static["optimizer"] + static["reference"]
    if k.strategy == "ddp" and k.gpus > 1:
        fixed += static["gradients"]
    extra = 0.0
    if k.strategy == "fsdp2" and k.gpus > 1:  # rollouts run on the full weights, gathered
        extra += static["trained"] * k.master_bytes * (1 - 1 / k.gpus)
    extra += 2 * cast_parameters(shape, k, static["trained"])  # generate under autocast: the bf16 cast copies
    if k.engine == "hf":
        extra += shape.parameters * k.engine_bytes  # a second transformers copy
    repeat = 0.0
    if (k.compiled_decode or k.padded) and k.engine != "vllm" and shape.kv_heads < shape.heads:
        # A static cache, or left-padded (ragged) prompts, is attended under a mask, so transformers
        # repeats one layer's K/V to every query head over the whole cache at each step.
        repeat = rows_tokens * kv_bytes_per_token(shape, k) / shape.layers * shape.heads / shape.kv_heads
    # The last position's logits of every row, float32 (sampling).
    logits = 0.0 if k.engine == "vllm" else k.rollout_rows * shape.vocab * 4 * 2
    return {"kv_cache": kv, "peak": fixed + extra + kv + logits + repeat + k.engine_rollout}


def estimate(shape: ModelShape, k: Knobs) -> tuple[dict[str, float], dict[str, Any]]:
    """Components (GiB) and phase totals for one set of knobs."""
    static = static_bytes(shape, k)
    update = update_bytes(shape, k, static)
    update["peak"] += k.engine_update
    rollout = rollout_bytes(shape, k, static)
    allocated = max(update["peak"], rollout["peak"])
    if k.device == "cuda":
        runtime = CUDA_CONTEXT_GIB * GIB + CUDA_FRAGMENTATION * allocated
    else:
        runtime = HOST_BASELINE_GIB * GIB + HOST_FRAGMENTATION * allocated
    components = {
        "weights": static["weights"], "gradients": static["gradients"], "optimizer": static["optimizer"],
        "reference": static["reference"], "activations": update["activations"],
        "logits": update["logits"] + update["cast_cache"] + update["step_temp"],
        "kv_cache": rollout["kv_cache"], "vllm_engine": max(k.engine_rollout, k.engine_update), "runtime": runtime,
    }
    info = {"update": update["peak"], "rollout": rollout["peak"], "allocated": allocated, "moment": update["moment"],
            "trained": static["trained"], "cast_cache": update["cast_cache"], "step_temp": update["step_temp"]}
    return {name: value / GIB for name, value in components.items()}, info


def peak_gib(info: dict[str, Any], components: dict[str, float]) -> float:
    """The plan's peak: what torch allocates at its largest plus the runtime around it, in GiB."""
    return info["allocated"] / GIB + components["runtime"]
