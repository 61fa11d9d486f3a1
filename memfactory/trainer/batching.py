"""Token batches for the trainer: pack model calls, split them, and score them with the policy.

Layout (the same as TRL's GRPO trainer and as generation uses): prompts are left-padded to a
common width ``P`` and responses right-padded to ``R``, so every response starts at column ``P``
and the logits that predict it are the contiguous slice ``[P - 1, P + R - 1)``. Token ids come
straight from ``ModelCall`` (the sampled ids), never from re-tokenising text.

A chunk whose rows all share one prompt (a GRPO group) can run that prompt once and only the
responses per row: :func:`_shared_prompt_logprobs`, same values and gradients as the plain path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from memfactory.backends.model_api import base_model, cache_keyword, forward_parameters
from memfactory.trainer import sharding
from memfactory.types import ModelCall


@dataclass
class TokenBatch:
    """Padded tensors for ``N`` model calls.

    ``input_ids`` / ``attention_mask``: ``[N, P + R]`` (prompt left-padded to ``P``, response
    right-padded to ``R``); ``response_mask``: ``[N, R]`` float, 1 on real response tokens;
    ``old_logps``: ``[N, R]`` float32 sampling log-probs from ``ModelCall.logprobs`` (0 on padding);
    ``prompt_width``: ``P``.
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    old_logps: Tensor
    prompt_width: int

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def response_width(self) -> int:
        return int(self.response_mask.shape[1])

    @property
    def response_ids(self) -> Tensor:
        """``[N, R]`` response token ids (pad id on padding)."""
        return self.input_ids[:, self.prompt_width :]

    @property
    def num_tokens(self) -> int:
        """Active response tokens: dapo's ``num_items_in_batch`` when this is the whole step's batch."""
        return int(self.response_mask.sum().item())

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.response_mask.to(device),
            self.old_logps.to(device),
            self.prompt_width,
        )

    def select(self, rows: Sequence[int] | Tensor | slice, *, trim: bool = True) -> TokenBatch:
        """The given rows, by default trimmed to the columns they need.

        Trimming drops leading prompt columns and trailing response columns that are padding in
        every selected row, so a micro-batch of short calls costs a short forward. Note that the
        response width can shrink: tensors aligned with the response (``ref_logps``) should be
        taken from the trimmed batch or sliced to ``select(...).response_width``.
        """
        if not isinstance(rows, slice):
            rows = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        input_ids = self.input_ids[rows]
        attention_mask = self.attention_mask[rows]
        response_mask = self.response_mask[rows]
        old_logps = self.old_logps[rows]
        P = self.prompt_width
        if not trim or input_ids.shape[0] == 0:
            return TokenBatch(input_ids, attention_mask, response_mask, old_logps, P)
        prompt_used = attention_mask[:, :P].any(dim=0)
        first = int(prompt_used.nonzero()[0].item()) if prompt_used.any() else P
        response_used = response_mask.any(dim=0).nonzero()
        width = int(response_used[-1].item()) + 1 if response_used.numel() else 0
        return TokenBatch(
            input_ids[:, first : P + width],
            attention_mask[:, first : P + width],
            response_mask[:, :width],
            old_logps[:, :width],
            P - first,
        )


def pack_calls(calls: Sequence[ModelCall], pad_id: int) -> TokenBatch:
    """Pad ``calls`` into one :class:`TokenBatch` (prompts left, responses right).

    Every call needs a non-empty prompt (the first response token is predicted from the last
    prompt position) and as many log-probs as response tokens. Empty responses are fine: their
    row has an all-zero ``response_mask``.
    """
    if not calls:
        raise ValueError("pack_calls needs at least one call")
    for i, call in enumerate(calls):
        if not call.prompt_ids:
            raise ValueError(f"call {i} ({call.module}): empty prompt_ids; a response needs a prompt to follow")
        if len(call.logprobs) != len(call.response_ids):
            raise ValueError(
                f"call {i} ({call.module}): {len(call.logprobs)} logprobs for {len(call.response_ids)} response tokens"
            )
    n = len(calls)
    P = max(len(c.prompt_ids) for c in calls)
    R = max(len(c.response_ids) for c in calls)
    input_ids = torch.full((n, P + R), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, P + R), dtype=torch.long)
    response_mask = torch.zeros((n, R), dtype=torch.float32)
    old_logps = torch.zeros((n, R), dtype=torch.float32)
    for i, call in enumerate(calls):
        p, r = len(call.prompt_ids), len(call.response_ids)
        input_ids[i, P - p : P] = torch.tensor(call.prompt_ids, dtype=torch.long)
        attention_mask[i, P - p : P + r] = 1
        if r:
            input_ids[i, P : P + r] = torch.tensor(call.response_ids, dtype=torch.long)
            response_mask[i, :r] = 1.0
            old_logps[i, :r] = torch.tensor(call.logprobs, dtype=torch.float32)
    return TokenBatch(input_ids, attention_mask, response_mask, old_logps, P)


def split_micro_batches(
    batch: TokenBatch,
    micro_batch_size: int,
    *,
    sort_by_length: bool = True,
) -> list[Tensor]:
    """Row indices of each micro-batch of at most ``micro_batch_size`` rows, covering every row once.

    With ``sort_by_length`` rows of similar total length share a micro-batch, so
    :meth:`TokenBatch.select` trims more padding. Use the same indices for per-row tensors
    (advantages, reference log-probs) so they stay aligned.
    """
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    order = torch.arange(batch.num_rows)
    if sort_by_length:
        lengths = batch.attention_mask.sum(dim=1).cpu()
        order = torch.argsort(lengths, descending=True, stable=True)
    return [order[i : i + micro_batch_size] for i in range(0, batch.num_rows, micro_batch_size)]


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """0, 1, 2, ... counted over real tokens only (what ``generate`` uses for left-padded rows)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_logprobs(
    model: torch.nn.Module,
    batch: TokenBatch,
    *,
    temperature: float = 1.0,
    micro_batch_size: int | None = None,
    shared_prompt: bool = True,
    stats: dict[str, int] | None = None,
) -> Tensor:
    """``[N, R]`` log-prob of each response token under ``model`` (0 on padding), differentiable.

    The logits at positions ``P - 1 .. P + R - 2`` (those that predict the response) are divided
    by ``temperature`` — use the sampling temperature so the ratio to ``old_logps`` is 1 on-policy —
    and normalised in float32. Position ids are counted over real tokens, as in generation, so a
    left-padded row scores like the same row unpadded. Only the response slice of the logits is
    ever materialised (``logits_to_keep`` when the model supports it); ``micro_batch_size``
    bounds how many rows go through one forward (each chunk trimmed to the columns it needs).

    ``shared_prompt``: a chunk whose rows all carry the same prompt (a GRPO group) runs that
    prompt through the model once, see :func:`_shared_prompt_logprobs`; same values and
    gradients. ``stats``, when given, counts ``rows`` scored and ``shared_rows`` among them that
    took the shared path.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for scoring, got {temperature}")
    n, R = batch.num_rows, batch.response_width
    device = batch.input_ids.device
    if n == 0 or R == 0:
        return torch.zeros((n, R), dtype=torch.float32, device=device)
    size = micro_batch_size or n
    params = forward_parameters(model)
    keep_kw = "logits_to_keep" in params
    cache_kw = cache_keyword(params)
    checkpointed = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    share = shared_prompt and cache_kw is not None and _may_share_prompt(model, checkpointed)
    parts = []
    # Without gradients checkpointing saves nothing; off, every transformers version keeps the cache.
    with _checkpointing_off(checkpointed if share else []):
        for start in range(0, n, size):
            chunk = batch.select(slice(start, start + size))
            if chunk.response_width == 0:  # only empty responses in this chunk: nothing to score
                parts.append(torch.zeros((chunk.num_rows, R), dtype=torch.float32, device=device))
                continue
            if share and _one_prompt(chunk):
                logps = _shared_prompt_logprobs(model, chunk, temperature, keep_kw, cache_kw)
                if stats is not None:
                    stats["shared_rows"] = stats.get("shared_rows", 0) + chunk.num_rows
            else:
                logps = _chunk_logprobs(model, chunk, temperature, keep_kw)
            if stats is not None:
                stats["rows"] = stats.get("rows", 0) + chunk.num_rows
            parts.append(torch.nn.functional.pad(logps, (0, R - chunk.response_width)))
    return torch.cat(parts, dim=0)


def _response_logprobs(logits: Tensor, chunk: TokenBatch, temperature: float) -> Tensor:
    """``[n, R]`` log-probs of the response tokens from the ``[n, R, V]`` logits that predict them."""
    logits = logits.float() / temperature
    targets = chunk.response_ids.unsqueeze(-1)
    logps = torch.gather(logits, -1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return logps * chunk.response_mask.to(logps.dtype)


def _chunk_logprobs(model: torch.nn.Module, chunk: TokenBatch, temperature: float, keep_kw: bool) -> Tensor:
    R = chunk.response_width
    kwargs = {
        "input_ids": chunk.input_ids,
        "attention_mask": chunk.attention_mask,
        "position_ids": position_ids_from_mask(chunk.attention_mask),
        "use_cache": False,
    }
    if keep_kw:
        kwargs["logits_to_keep"] = R + 1
    logits = model(**kwargs).logits
    logits = logits[:, -(R + 1) : -1, :]  # positions P-1 .. P+R-2 predict response tokens 0 .. R-1
    return _response_logprobs(logits, chunk, temperature)


def grad_pass_shares_prompt(model: torch.nn.Module) -> bool:
    """Whether the update's grad pass over ``model`` (as it is now, training or not) may run a
    micro-batch's one prompt once. The update scores old and reference log-probs on the same path
    as its grad pass: at identical weights they are then bit for bit the policy's (KL exactly 0
    before the first update), where the two paths differ by rounding (up to 0.06 in a bf16 log-prob)."""
    checkpointed = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    with torch.enable_grad():
        return _may_share_prompt(model, checkpointed)


def _may_share_prompt(model: torch.nn.Module, checkpointed: list[torch.nn.Module]) -> bool:
    """Whether ``model`` may score a chunk as one prompt forward + one response forward.

    Not where two forwards before one backward are unsafe: a DDP-wrapped or FSDP-sharded model
    (their hooks expect one forward per backward). Not for a checkpointed model under grad:
    transformers drops the cache in checkpointed layers, and keeping it would hold the prompt's
    activations that checkpointing exists to free. Under no_grad (old/reference scoring)
    checkpointing saves nothing and is switched off for the call.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) or sharding.is_sharded(model):
        return False
    return not (torch.is_grad_enabled() and any(m.training for m in checkpointed))


@contextmanager
def _checkpointing_off(modules: list[torch.nn.Module]) -> Iterator[None]:
    """Clear ``gradient_checkpointing`` on ``modules`` for the block (no-grad scoring only)."""
    for m in modules:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in modules:
            m.gradient_checkpointing = True


def _one_prompt(chunk: TokenBatch) -> bool:
    """At least two rows, all with the same prompt (same tokens at the same columns), of >= 2 tokens."""
    P = chunk.prompt_width
    if chunk.num_rows < 2 or P < 2:
        return False
    mask = chunk.attention_mask[:, :P]
    ids = chunk.input_ids[:, :P].masked_fill(mask == 0, 0)
    return bool((mask == mask[:1]).all() and (ids == ids[:1]).all() and mask[0, :-1].any())


def _shared_prompt_logprobs(
    model: torch.nn.Module, chunk: TokenBatch, temperature: float, keep_kw: bool, cache_kw: str
) -> Tensor:
    """:func:`_chunk_logprobs` for a chunk whose rows share one prompt, running that prompt once.

    Why: a GRPO group is G samples of one prompt and the update's micro-batches are consecutive
    rows, so a micro-batch of the direct agent usually holds rows of one long prompt with short
    responses (the CPU demo: 191 prompt tokens, 16 response tokens); the plain path runs the
    prompt once per row. Here the prompt but its last token runs once, for one row, with grad (its
    keys/values carry gradients into the weights, LoRA included); its KV cache is repeated for the
    rows (``repeat_interleave``: the rows' gradients add up on the one prompt), and only
    [last prompt token + response] runs per row on top, at the same positions and under the same
    mask as in the plain forward. Same values and gradients (fp32: ~1e-6 apart, summation order).
    """
    from transformers import DynamicCache

    n, P, R = chunk.num_rows, chunk.prompt_width, chunk.response_width
    positions = position_ids_from_mask(chunk.attention_mask)
    cache = DynamicCache(config=base_model(model).config)
    prefix = {
        "input_ids": chunk.input_ids[:1, : P - 1],
        "attention_mask": chunk.attention_mask[:1, : P - 1],
        "position_ids": positions[:1, : P - 1],
        cache_kw: cache,
        "use_cache": True,
    }
    if keep_kw:
        prefix["logits_to_keep"] = 1  # only the cache is needed
    model(**prefix)
    cache.batch_repeat_interleave(n)
    # Last prompt token + response but its last token: R positions that predict the R response tokens.
    logits = model(
        input_ids=chunk.input_ids[:, P - 1 : P + R - 1],
        attention_mask=chunk.attention_mask[:, : P + R - 1],
        position_ids=positions[:, P - 1 : P + R - 1],
        use_cache=True,
        **{cache_kw: cache},
    ).logits
    return _response_logprobs(logits, chunk, temperature)
