"""The policy update: ``num_iterations`` clipped GRPO passes over a step's buffered rollouts.

Kept apart from the loop so that ``train_step`` reads rollout -> advantages -> update -> log, and so
that what the update needs of a trainer is written down (:class:`Trainee`) instead of reached for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from memfactory.backends.model_api import eval_mode
from memfactory.config import TrainerConfig
from memfactory.errors import MemFactoryError
from memfactory.trainer import distributed as dist
from memfactory.trainer.batching import grad_pass_shares_prompt, pack_calls, token_logprobs
from memfactory.trainer.grpo import MAX_STATS, grpo_loss
from memfactory.types import ModelCall


class TrainingDiverged(MemFactoryError):
    """A step's loss, KL or gradient norm became NaN or infinite.

    Raised before ``optimizer.step()``, so the weights and optimizer state are as the last good step
    left them, and no checkpoint is written for the failed step: the last one stays intact.
    """


def first_non_finite(named: Iterable[tuple[str, Tensor | None]]) -> str | None:
    """The name of the first tensor in ``named`` holding a NaN or an infinity (None: all finite)."""
    for name, tensor in named:
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def first_non_finite_gradient(model: torch.nn.Module) -> str | None:
    """The name of the first parameter whose gradient (this rank's shard under FSDP) is not finite.

    Gradients are read before clipping: a non-finite norm makes the clip multiply every gradient by NaN.
    One foreach norm over all gradients and one host sync; a NaN or inf anywhere makes its norm non-finite.
    """
    named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    if not named:
        return None
    local = [g.to_local() if hasattr(g, "to_local") else g for _, g in named]  # DTensor shards
    norms = torch.stack([n.float() for n in torch._foreach_norm(local)])
    for i in (~torch.isfinite(norms)).nonzero().flatten().tolist():  # empty (one sync) when all are finite
        if not bool(torch.isfinite(local[i]).all()):  # not a finite gradient whose norm overflowed
            return named[i][0]
    return None


def _diverged(quantity: str, value: float, step: int, culprit: str, where: str = "") -> TrainingDiverged:
    """One message for every non-finite quantity: the step, the quantity and its value, the first offender."""
    return TrainingDiverged(
        f"{quantity} became {value} at step {step}{where}; {culprit}. Stopping before the optimizer step: the "
        "weights are as the last good step left them and the last checkpoint is intact. Try a lower trainer.lr "
        "or trainer.max_grad_norm, or set trainer.kl_clamp."
    )


class Trainee(Protocol):
    """What the update reads of a trainer (``GRPOTrainer`` is one)."""

    cfg: TrainerConfig
    accelerator: Any
    model: torch.nn.Module  # as accelerate prepared it (DDP/FSDP-wrapped under several processes)
    optimizer: Any
    tokenizer: Any
    step: int

    @property
    def policy(self) -> torch.nn.Module: ...

    def full_weights(self) -> AbstractContextManager[Any]: ...

    def autocast(self) -> AbstractContextManager[Any]: ...

    def reference_context(self) -> AbstractContextManager[Any]: ...

    def reference_model(self) -> torch.nn.Module: ...


def policy_update(t: Trainee, buffers: list[tuple[list[ModelCall], list[float]]]) -> dict[str, float]:
    """``num_iterations`` passes over the buffered rollouts, one optimizer step each.

    With several processes the normalisers are global and every rank runs the same number of
    forward/backward passes (see :mod:`memfactory.trainer.distributed`).
    """
    cfg = t.cfg
    acc = t.accelerator
    world = dist.world(acc)
    stats: dict[str, list[float]] = {}
    t.model.train()
    # One path for the grad pass and the no-grad scoring, so old and reference log-probs at the
    # policy's own weights equal its log-probs exactly (see batching.grad_pass_shares_prompt).
    shared = cfg.shared_prompt_forward and grad_pass_shares_prompt(t.model)
    prepared = []
    scoring = cfg.num_iterations > 1 or cfg.beta > 0
    # Sharded weights are gathered once for all no-grad scoring (the same on every rank).
    with t.full_weights() if scoring else nullcontext():
        for calls, advantages in buffers:
            if not calls:
                continue
            # Everything that meets the model is on its device (one process: accelerate moves nothing).
            batch = pack_calls(calls, pad_id=t.tokenizer.pad_token_id).to(acc.device)
            adv = torch.tensor(advantages, dtype=torch.float32, device=acc.device)
            old, ref = None, None
            # Dropout off while scoring (LoRA's, a config's attention dropout); training mode restored after.
            with torch.no_grad(), t.autocast(), eval_mode(t.policy, t.reference_model()):
                # No-grad scoring uses the unwrapped model: no collectives, any number of calls.
                if cfg.num_iterations > 1:
                    old = token_logprobs(t.policy, batch, temperature=max(cfg.temperature, 1e-6),
                                         micro_batch_size=cfg.micro_batch_size,
                                         shared_prompt=shared)
                if cfg.beta > 0:
                    with t.reference_context():
                        ref = token_logprobs(t.reference_model(), batch,
                                             temperature=max(cfg.temperature, 1e-6),
                                             micro_batch_size=cfg.micro_batch_size,
                                             shared_prompt=shared)
            prepared.append((batch, adv, old, ref))
    micro = [
        (batch, adv, old, ref, slice(start, start + cfg.micro_batch_size))
        for batch, adv, old, ref in prepared
        for start in range(0, batch.response_mask.shape[0], cfg.micro_batch_size)
    ]
    local_tokens = sum(float(b.response_mask.sum()) for b, *_ in prepared)
    local_seqs = sum(b.response_mask.shape[0] for b, *_ in prepared)
    total_tokens, total_seqs = dist.all_reduce(acc, [local_tokens, float(local_seqs)])
    if total_seqs == 0:
        return {}  # no rank has anything to train on: all skip the optimizer step together
    total_seqs = int(total_seqs)
    passes = int(dist.all_reduce(acc, [float(len(micro))], op="max")[0]) if world > 1 else len(micro)
    scored: dict[str, int] = {}  # rows of the grad passes, and those scored with a shared prompt forward
    for _ in range(cfg.num_iterations):
        t.optimizer.zero_grad(set_to_none=True)  # no-op unless an interrupted pass left some
        for k in range(passes):
            # Gradients are synchronised once, on the last pass of every rank.
            sync = world == 1 or k == passes - 1
            with nullcontext() if sync else acc.no_sync(t.model):
                if k >= len(micro):
                    with t.autocast():
                        idle = dist.idle_loss(t.model, t.tokenizer.pad_token_id, acc.device)
                    acc.backward(idle)
                    continue
                batch, adv, old, ref, index = micro[k]
                mb = batch.select(index)
                width = mb.response_width  # trimming only drops trailing padding columns
                with t.autocast():  # the forward in bf16 under bf16_mixed; backward outside it
                    logps = token_logprobs(t.model, mb, temperature=max(cfg.temperature, 1e-6),
                                           shared_prompt=shared, stats=scored)
                    old_logps = old[index, :width] if old is not None else logps.detach()
                    loss, parts = grpo_loss(
                        logps, old_logps, adv[index], mb.response_mask,
                        loss_type=cfg.loss_type, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, beta=cfg.beta,
                        ref_logps=ref[index, :width] if ref is not None else None,
                        max_completion_length=cfg.max_new_tokens,
                        num_items_in_batch=total_tokens,
                        num_sequences_in_batch=total_seqs,
                        kl_bias_correction=cfg.kl_bias_correction,
                        kl_clamp=cfg.kl_clamp,
                        # The engine's own log-probs: a separate engine's tokens are reweighted to the policy's.
                        sampling_logps=mb.old_logps if cfg.rollout.corrects_sampling else None,
                        importance_sampling_cap=cfg.rollout.importance_sampling_cap,
                    )
                # Normalised over the whole step's batch (all ranks), so micro-batch losses simply
                # add up; one process raises here, several find out from the synced grad norm.
                if world == 1:
                    for quantity, value in (("loss", loss), ("KL", parts.get("kl"))):
                        if value is not None and not bool(torch.isfinite(value)):
                            inputs = [("policy log-probs", logps), ("old log-probs", old_logps),
                                      ("reference log-probs", ref[index] if ref is not None else None),
                                      ("advantages", adv[index]),
                                      ("sampling log-probs", mb.old_logps if cfg.rollout.corrects_sampling else None)]
                            bad = first_non_finite(inputs)
                            raise _diverged(quantity, float(value.detach()), t.step + 1,
                                            f"first non-finite input: {bad}" if bad else
                                            "its inputs are finite (an overflow inside the loss)",
                                            f" (micro-batch {k + 1} of {len(micro)})")
                # DDP averages gradients over ranks; the normalisers are global, so scale back up.
                acc.backward(loss * world if world > 1 else loss)
                stats.setdefault("loss", []).append(float(loss.detach()))
                for key, value in parts.items():
                    stats.setdefault(key, []).append(float(value))
        culprit = first_non_finite_gradient(t.policy)  # before the clip, which would spread a NaN to all
        grad_norm = acc.clip_grad_norm_(
            [p for p in t.model.parameters() if p.requires_grad], cfg.max_grad_norm
        )
        if culprit is not None or not math.isfinite(float(grad_norm)):
            t.optimizer.zero_grad(set_to_none=True)
            raise _diverged("gradient norm", float(grad_norm), t.step + 1,
                            f"first non-finite gradient: {culprit}" if culprit else
                            "every gradient on this rank is finite (their norm overflowed, or another rank's is not)")
        t.optimizer.step()
        # Free the gradients now, as transformers' Trainer does after optimizer.step(): held until the
        # next update they would sit through the next rollout (4 bytes per trained parameter).
        t.optimizer.zero_grad(set_to_none=True)
        stats.setdefault("grad_norm", []).append(float(grad_norm))
    loss_sum = float(np.sum(stats.get("loss", [0.0])))
    if world > 1:
        # Means of the per-micro-batch statistics over all ranks; the loss is a global sum.
        loss_sum = dist.all_reduce(acc, [loss_sum])[0]
        merged: dict[str, list[float]] = {}
        for rank_stats in dist.gather_objects(acc, {k: v for k, v in stats.items() if k != "grad_norm"}):
            for key, values in rank_stats.items():
                merged.setdefault(key, []).extend(values)
        stats = merged | {"grad_norm": stats["grad_norm"]}
    out = {key: float(np.max(values) if key in MAX_STATS else np.mean(values)) for key, values in stats.items()}
    out["loss"] = loss_sum / cfg.num_iterations
    # This rank's share of update rows whose prompt ran once per micro-batch (step metric update/...).
    out["shared_prompt_fraction"] = scored.get("shared_rows", 0) / max(scored.get("rows", 0), 1)
    return out

