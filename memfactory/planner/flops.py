"""FLOPs of the policy update, in the two conventions a throughput report needs.

* **6N** (model FLOPs, Kaplan et al. / PaLM's MFU without attention): 6 x every parameter x every
  real token the update trains on. Comparable across codebases; blind to what this update does
  beyond one forward and backward (and overstated for LoRA, whose frozen base gets no weight
  gradient).
* **executed**: the matmul FLOPs the kernels actually run, counted per micro-batch on its padded
  layout (``[rows, P + R]``, as :mod:`memfactory.trainer.batching` packs it): the grad pass's
  forward and backward, gradient checkpointing's re-forward of every layer, the reference's (and
  with ``num_iterations > 1`` the old policy's) no-grad forward, the LM head on the ``R + 1``
  positions kept, and attention. Attention runs causal: the fused kernels skip the masked half
  unless a padding mask is present (ragged rows), which they must then apply in full; their
  backward recomputes the scores (5 matmuls against the forward's 2: x2.5). Under LoRA the frozen
  base computes its inputs' gradients only (exact for adapters on q/k/v, the default).

Elementwise work (norms, softmax, the AdamW step) is left out of both: a few % at most.
"""

from __future__ import annotations

from dataclasses import dataclass

from memfactory.backends.shape import ModelShape


@dataclass(frozen=True)
class UpdateWork:
    """What one policy update runs: the micro-batches' row lengths and the passes over them."""

    micro_batches: tuple[tuple[tuple[int, int], ...], ...]  # per micro-batch, (prompt, response) per row
    checkpointing: bool
    reference: bool  # a no-grad reference forward (beta > 0)
    old_pass: bool = False  # a no-grad old-policy forward (num_iterations > 1)
    lora_r: int | None = None
    lora_targets: tuple[str, ...] = ()

    @property
    def real_tokens(self) -> int:
        return sum(p + r for mb in self.micro_batches for p, r in mb)


def attention_flops(query_len: int, key_len: int, q_dim: int, *, causal: bool) -> float:
    """Forward FLOPs of one layer's attention for one row: scores (Q K^T) and the weighted sum (P V),
    2 x q_dim multiply-adds per query-key pair each; causal kernels skip the masked pairs."""
    pairs = query_len * (query_len + 1) / 2 if causal and query_len == key_len else query_len * key_len
    return 2 * 2 * q_dim * pairs


def update_flops(shape: ModelShape, work: UpdateWork) -> dict[str, float]:
    """FLOPs of one update (every micro-batch once): ``model_6n`` and ``executed`` with its parts."""
    h, v = shape.hidden, shape.vocab
    layer_linear = shape.linear_parameters - (0 if shape.tied else v * h)
    adapters = 0
    if work.lora_r is not None:
        adapters = shape.lora_parameters(work.lora_r, list(work.lora_targets))
    has_down = work.lora_r is not None and "down_proj" in work.lora_targets
    parts = {"layers": 0.0, "attention": 0.0, "lm_head": 0.0}
    for mb in work.micro_batches:
        rows = len(mb)
        prompt, response = max(p for p, _ in mb), max(r for _, r in mb)
        width = prompt + response  # left-padded prompts, right-padded responses
        padded = any(p + r != width for p, r in mb)
        fwd_base, fwd_adapters = 2 * layer_linear * rows * width, 2 * adapters * rows * width
        fwd_attention = rows * shape.layers * attention_flops(width, width, shape.q_dim, causal=not padded)
        fwd_head = 2 * h * v * rows * (response + 1)
        # Backward: the input's gradient (one forward's matmuls) and the trained weights' (another).
        if work.lora_r is None:
            bwd_layers, bwd_head = 2 * fwd_base, 2 * fwd_head
        else:  # the frozen base: the input's gradient only; without checkpointing none for the first
            # layer's q/k/v and their lora_A (their input, the frozen embedding's, needs none; with it
            # transformers makes the embedding's output require one)
            first = 0.0
            if not work.checkpointing:
                qkv_targets = len({"q_proj", "k_proj", "v_proj"} & set(work.lora_targets))
                first = 2 * rows * width * shape.hidden * (shape.q_dim + 2 * shape.kv_dim + work.lora_r * qkv_targets)
            bwd_layers, bwd_head = fwd_base + 2 * fwd_adapters - first, fwd_head
        # Forwards: the grad pass, the old policy's (with its adapters), the reference's (under LoRA:
        # the same base with the adapters disabled), and checkpointing's re-forward, which torch stops
        # once the tensors the backward needs are back: the layer's last matmul is not rerun (down_proj,
        # or with an adapter there its lora_B, which runs after the base).
        with_adapters = 1 + work.old_pass
        forwards = with_adapters + work.reference
        recompute = 0.0
        if work.checkpointing:
            last = work.lora_r if has_down else shape.intermediate
            recompute = fwd_base + fwd_adapters - 2 * shape.layers * rows * width * shape.hidden * last
        parts["layers"] += forwards * fwd_base + with_adapters * fwd_adapters + recompute + bwd_layers
        forwards += work.checkpointing  # attention is recomputed in full
        parts["attention"] += (forwards + 2.5) * fwd_attention
        parts["lm_head"] += (forwards - work.checkpointing) * fwd_head + bwd_head
    executed = sum(parts.values())
    return {"model_6n": 6.0 * shape.parameters * work.real_tokens, "executed": executed, **parts}


def mfu(flops: float, seconds: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: ``flops`` done in ``seconds`` as a share of the device's peak rate."""
    return flops / seconds / peak_flops_per_s
