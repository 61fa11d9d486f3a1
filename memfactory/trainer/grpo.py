"""GRPO math: group-normalised advantages and the clipped policy loss, matching TRL 1.16.

The numbers follow ``trl.GRPOTrainer`` (``_generate_and_score_completions`` for advantages,
``_compute_loss`` for the loss and its logged statistics) so results are comparable with a TRL
baseline; ``tests/trainer/test_grpo_vs_trl.py`` runs TRL's own code on the same inputs to keep
it that way. Two deliberate differences:

* Groups whose rewards are all equal are flagged ``keep=False`` instead of being handed an
  advantage of ~1e-4 float noise (which AdamW turns into full-size random steps).
* Gradient accumulation is expressed with global counts (``num_sequences_in_batch``,
  ``num_items_in_batch``) instead of TRL's "divide by the number of accumulation steps", so
  micro-batches of unequal size (trajectories make a varying number of model calls) still give
  the exact mean over the whole optimizer step. With equal micro-batches both agree.

Typical use in a training loop (one optimizer step)::

    adv, keep = group_advantages([t.reward for t in trajs], [t.group for t in trajs],
                                 scale=cfg.scale_rewards)            # skip_equal_groups: honour keep
    calls, call_adv = calls_with_advantages(trajs, adv, keep, credit=cfg.credit)
    batch = pack_calls(calls, pad_id)                                 # memfactory.trainer.batching
    call_adv = torch.tensor(call_adv)
    for idx in split_micro_batches(batch, cfg.micro_batch_size):
        mb = batch.select(idx)                                        # trimmed to its own width
        logps = token_logprobs(model, mb, temperature=cfg.temperature)
        ref = None
        if cfg.beta:
            with torch.no_grad():
                ref = token_logprobs(ref_model, mb, temperature=cfg.temperature)
        loss, stats = grpo_loss(logps, mb.old_logps, call_adv[idx], mb.response_mask,
                                loss_type=cfg.loss_type, epsilon=cfg.epsilon,
                                epsilon_high=cfg.epsilon_high, beta=cfg.beta, ref_logps=ref,
                                max_completion_length=cfg.max_new_tokens,
                                num_items_in_batch=batch.num_tokens,
                                num_sequences_in_batch=batch.num_rows)
        loss.backward()
    optimizer.step()

Which ``old_logps``: TRL uses ``logps.detach()`` when each rollout batch gets one update
(``num_iterations == 1``), so the ratio is exactly 1 and sampler/trainer numeric differences
(batched generation, top-p, another engine) cannot clip anything; with ``num_iterations > 1`` it
recomputes them once with the training model before the first update. ``ModelCall.logprobs``
(``mb.old_logps``) are the sampler's own and are right only when the sampler scores exactly like
``token_logprobs``. Micro-batches must each fit in memory; the loss of each is already scaled
for the whole step, so just ``backward()`` each and step once.

Sampler mismatch: when a separate engine samples (an ``hf`` copy in another dtype, vLLM, or one
lagging ``sync_every`` steps), its log-probs differ from the policy's. Pass them as
``sampling_logps`` and every token's loss is weighted by the truncated importance-sampling weight
``min(exp(old_logps - sampling_logps), cap)`` (TRL's ``vllm_importance_sampling_mode=
"token_truncate"`` with ``vllm_importance_sampling_clip_max``; verl's token-level truncated IS):
see :func:`truncated_is_weights`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from memfactory.types import ModelCall, Trajectory

LossType = Literal["grpo", "dr_grpo", "dapo"]
LOSS_TYPES: tuple[str, ...] = ("grpo", "dr_grpo", "dapo")

# Rewards closer than this count as equal: such a group has no signal.
EQUAL_TOL = 1e-8
# With trainer.kl_clamp, the reference/policy log-ratio is clamped to +-this before exp (verl's low_var_kl).
LOG_RATIO_CLAMP = 20.0
# Statistics of grpo_loss that combine over micro-batches by max (the others by mean).
MAX_STATS = frozenset({"is_weight/max"})


def group_advantages(
    rewards: Sequence[float],
    groups: Sequence[int],
    *,
    scale: bool = True,
    eps: float = 1e-4,
) -> tuple[list[float], list[bool]]:
    """Per-trajectory advantages ``r - mean(group)``, divided by ``std(group) + eps`` when ``scale``.

    ``std`` is the sample standard deviation (Bessel-corrected, ``n - 1``), as TRL's ``nanstd``.
    ``groups[i]`` is any hashable group id (``Trajectory.group``); groups need not be contiguous.
    Returns ``(advantages, keep)``: ``keep[i]`` is False when every reward of trajectory i's
    group is equal (within 1e-8) — including a group of one — and its advantage is then exactly 0.
    Such trajectories must be left out of the update, not trained on with a zero/noise advantage
    (they would still count in the loss normalisation and in KL).
    """
    if len(rewards) != len(groups):
        raise ValueError(f"rewards ({len(rewards)}) and groups ({len(groups)}) differ in length")
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    advantages = [0.0] * len(rewards)
    keep = [False] * len(rewards)
    values = torch.tensor([float(r) for r in rewards], dtype=torch.float64)
    for idx in members.values():
        r = values[idx]
        if len(idx) < 2 or float(r.max() - r.min()) <= EQUAL_TOL:
            continue  # no signal: advantage 0, keep False
        adv = r - r.mean()
        if scale:
            adv = adv / (r.std(correction=1) + eps)
        for i, a in zip(idx, adv.tolist()):
            advantages[i] = a
            keep[i] = True
    return advantages, keep


def calls_with_advantages(
    trajectories: Sequence[Trajectory],
    advantages: Sequence[float],
    keep: Sequence[bool],
    *,
    credit: Literal["all_calls", "final_only"] = "all_calls",
) -> tuple[list[ModelCall], list[float]]:
    """The trainable model calls of the kept trajectories, each with its trajectory's advantage.

    ``credit="all_calls"`` broadcasts the advantage to every trainable call of a trajectory
    (MemAgent's multi-conversation credit); ``"final_only"`` trains only the last trainable call.
    Calls with empty responses are kept (they contribute no tokens but are harmless).
    """
    if not len(trajectories) == len(advantages) == len(keep):
        raise ValueError("trajectories, advantages and keep must have the same length")
    if credit not in ("all_calls", "final_only"):
        raise ValueError(f"unknown credit {credit!r}; expected 'all_calls' or 'final_only'")
    calls: list[ModelCall] = []
    call_adv: list[float] = []
    for traj, adv, k in zip(trajectories, advantages, keep):
        if not k:
            continue
        trainable = [c for c in traj.calls if c.trainable]
        if credit == "final_only":
            trainable = trainable[-1:]
        calls.extend(trainable)
        call_adv.extend([float(adv)] * len(trainable))
    return calls, call_adv


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the active tokens of the batch (TRL's ``global_masked_mean`` on one process)."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def _seq_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Per-sequence mean over active tokens; NaN for a sequence without tokens (as TRL)."""
    return (x * mask).sum(-1) / mask.sum(-1)


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    loss_type: LossType,
    epsilon: float,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_logps: Tensor | None = None,
    max_completion_length: int | None = None,
    num_items_in_batch: float | Tensor | None = None,
    num_sequences_in_batch: int | None = None,
    kl_bias_correction: bool = True,
    kl_clamp: float | None = None,
    sampling_logps: Tensor | None = None,
    importance_sampling_cap: float = 3.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped-ratio GRPO loss of one micro-batch and TRL's logged statistics.

    Shapes: ``logps`` (with grad), ``old_logps``, ``ref_logps`` and ``mask`` are ``[B, T]``
    (response tokens; ``mask`` 1 for real tokens, 0 for padding); ``advantages`` is ``[B]``.
    Per token, with ``r = exp(logps - old_logps)``::

        loss_t = -min(r * A, clip(r, 1 - epsilon, 1 + epsilon_high) * A)
                 + beta * r * (exp(ref - logps) - (ref - logps) - 1)   # k3 KL, only if beta > 0

    The KL term is weighted by the (differentiable) ratio ``r`` when ``kl_bias_correction`` —
    TRL 1.16's default ``use_bias_correction_kl=True`` (DeepSeek-V3.2): its gradient is then the
    unbiased reverse-KL gradient, also on-policy where ``r == 1`` in value. Set it False for the
    plain k3 term of the original GRPO paper. ``kl_clamp`` clamps each token's k3 value to
    ``[-kl_clamp, kl_clamp]`` before any ratio weighting, as verl's ``low_var_kl`` does with 10
    (MemAgent's recipe: ``kl_clamp=10, kl_bias_correction=False``); a clamped token passes no KL
    gradient. With ``kl_clamp`` the log-ratio ``ref - logps`` is first clamped to ``[-20, 20]``, as
    current verl does, so ``exp`` cannot overflow into a NaN gradient (a finite loss with a NaN
    gradient norm); without it the term is TRL's, unclamped.

    Normalisation (TRL's names; "batch" = all micro-batches of one optimizer step):

    * ``grpo``: mean over each sequence's tokens, then sum over sequences divided by
      ``num_sequences_in_batch`` (default ``B``, i.e. a plain mean over this micro-batch).
    * ``dr_grpo``: sum over all tokens / (``num_sequences_in_batch`` * ``max_completion_length``);
      a constant normaliser, so no length bias. ``max_completion_length`` (the response cap,
      ``max_new_tokens``) is required here: the tensor width varies between trimmed micro-batches.
    * ``dapo``: sum over all tokens / ``num_items_in_batch``, the number of active tokens in the
      whole batch (default: ``mask.sum()`` of this micro-batch).

    Summing the losses of all micro-batches of a step then gives the step's loss exactly; TRL
    gets the same for equal micro-batches by dividing ``grpo``/``dr_grpo`` by the number of
    accumulation steps, i.e. ``num_sequences_in_batch = B * grad_accum``.

    Returns ``(loss, stats)``; stats are detached scalar tensors, means over this micro-batch's
    active tokens as TRL logs them: ``clip_ratio/low_mean`` (ratio below ``1 - epsilon`` with
    ``A < 0``), ``clip_ratio/high_mean`` (above ``1 + epsilon_high`` with ``A > 0``),
    ``clip_ratio/region_mean`` (either), ``clip_ratio/low_min`` / ``clip_ratio/high_max`` (min /
    max over sequences of the per-sequence rates), ``ratio_mean``, ``kl`` (only when
    ``beta > 0``; the ratio-weighted value under ``kl_bias_correction``, as TRL logs it) and
    ``num_tokens``.

    ``sampling_logps`` (``[B, T]``, the sampling engine's log-probs of the response tokens): when
    given, each token's clipped policy loss (not the KL term, as TRL) is multiplied by
    :func:`truncated_is_weights` of ``old_logps`` against them, capped at
    ``importance_sampling_cap``, and its ``is_weight/...`` statistics are added.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
    if logps.dim() != 2 or logps.shape != old_logps.shape or logps.shape != mask.shape:
        raise ValueError(
            f"logps {tuple(logps.shape)}, old_logps {tuple(old_logps.shape)} and mask "
            f"{tuple(mask.shape)} must all be the same [B, T] shape"
        )
    if advantages.shape != (logps.shape[0],):
        raise ValueError(f"advantages must be [B]={logps.shape[0]}, got {tuple(advantages.shape)}")
    if loss_type == "dr_grpo" and not max_completion_length:
        raise ValueError("loss_type 'dr_grpo' needs max_completion_length (the response token cap)")
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps (log-probs under the reference model)")
    if sampling_logps is not None and sampling_logps.shape != logps.shape:
        raise ValueError(f"sampling_logps {tuple(sampling_logps.shape)} must be the [B, T] shape of logps {tuple(logps.shape)}")
    eps_low = float(epsilon)
    eps_high = float(epsilon if epsilon_high is None else epsilon_high)

    mask = mask.to(logps.dtype)
    adv = advantages.to(logps.dtype).unsqueeze(1)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(ratio * adv, clipped * adv)
    is_stats: dict[str, Tensor] = {}
    if sampling_logps is not None:
        weights, is_stats = truncated_is_weights(old_logps, sampling_logps, mask, importance_sampling_cap)
        per_token_loss = per_token_loss * weights
    if beta != 0.0:
        assert ref_logps is not None
        delta = ref_logps - logps
        if kl_clamp is not None:
            # verl's low_var_kl clamps the log-ratio before exp: past ~88.7, exp overflows to inf, the
            # value clamp's backward gives 0 and exp's 0 * inf = NaN, a NaN gradient under a finite loss.
            delta = torch.clamp(delta, min=-LOG_RATIO_CLAMP, max=LOG_RATIO_CLAMP)
        per_token_kl = torch.exp(delta) - delta - 1
        if kl_clamp is not None:
            per_token_kl = torch.clamp(per_token_kl, min=-kl_clamp, max=kl_clamp)
        if kl_bias_correction:
            per_token_kl = per_token_kl * ratio
        per_token_loss = per_token_loss + beta * per_token_kl

    batch_size = logps.shape[0]
    n_seq = batch_size if num_sequences_in_batch is None else int(num_sequences_in_batch)
    if loss_type == "grpo":
        seq_loss = (per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        loss = seq_loss.sum() / max(n_seq, 1)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (max(n_seq, 1) * int(max_completion_length))
    else:  # dapo
        n_items = mask.sum() if num_items_in_batch is None else num_items_in_batch
        n_items = torch.as_tensor(n_items, dtype=logps.dtype, device=logps.device).clamp(min=1.0)
        loss = (per_token_loss * mask).sum() / n_items

    with torch.no_grad():
        is_low = ((ratio < 1 - eps_low) & (adv < 0)).to(logps.dtype)
        is_high = ((ratio > 1 + eps_high) & (adv > 0)).to(logps.dtype)
        is_region = torch.clamp(is_low + is_high, max=1.0)
        stats = {
            "clip_ratio/low_mean": _masked_mean(is_low, mask),
            "clip_ratio/high_mean": _masked_mean(is_high, mask),
            "clip_ratio/region_mean": _masked_mean(is_region, mask),
            "clip_ratio/low_min": _nan_reduce(_seq_mean(is_low, mask), torch.min),
            "clip_ratio/high_max": _nan_reduce(_seq_mean(is_high, mask), torch.max),
            "ratio_mean": _masked_mean(ratio.detach(), mask),
            "num_tokens": mask.sum(),
        }
        if beta != 0.0:
            stats["kl"] = _masked_mean(per_token_kl.detach(), mask)
        stats.update(is_stats)
    return loss, stats


def truncated_is_weights(
    old_logps: Tensor, sampling_logps: Tensor, mask: Tensor, cap: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token importance-sampling weights ``min(exp(old_logps - sampling_logps), cap)``, detached.

    ``old_logps`` are the policy's log-probs at the weights the rollout was meant to come from,
    ``sampling_logps`` the engine's for the same tokens. Padding (``mask`` 0) and tokens the engine
    scored NaN (no value) get weight 1, as TRL's ``nan_to_num``. Returns ``(weights, stats)``: over
    the active tokens, ``is_weight/mean`` (of the truncated weights, what the loss is multiplied
    by), ``is_weight/max`` (of the untruncated ratio: how far the engine strayed; 0 without active
    tokens) and ``is_weight/truncated_fraction`` (share of tokens whose ratio exceeded ``cap``).
    """
    if cap <= 0:
        raise ValueError(f"importance-sampling cap must be > 0, got {cap}")
    with torch.no_grad():
        mask = mask.to(old_logps.dtype)
        diff = torch.nan_to_num((old_logps.detach() - sampling_logps.to(old_logps.dtype)) * mask, nan=0.0)
        ratio = torch.exp(diff)
        weights = ratio.clamp(max=cap)
        stats = {
            "is_weight/mean": _masked_mean(weights, mask),
            "is_weight/max": (ratio * mask).max() if mask.numel() else torch.zeros((), device=ratio.device),
            "is_weight/truncated_fraction": _masked_mean((ratio > cap).to(ratio.dtype), mask),
        }
    return weights, stats


def _nan_reduce(x: Tensor, op) -> Tensor:
    """min/max ignoring NaN (sequences without tokens); NaN when nothing is left (TRL's nanmin/nanmax)."""
    x = x[~torch.isnan(x)]
    return op(x) if x.numel() else torch.tensor(float("nan"), dtype=x.dtype, device=x.device)
