"""The GRPO training loop: rollouts in groups, rewards, advantages, clipped policy updates.

One optimizer step = ``grad_accum`` rollout batches of ``batch_size`` prompts × ``group_size``
samples each. Every trainable model call of a trajectory gets that trajectory's advantage
(multi-conversation credit for MemAgent-style agents). Groups whose rewards are all equal carry
no signal and are skipped. Built on ``accelerate`` so the same code runs under
``accelerate launch``: each rank rolls out its slice of the prompts and DDP averages gradients
(or FSDP2 shards the weights; rollouts then run on full weights, see :mod:`.sharding`).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from memfactory.agents.build import build_agent
from memfactory.backends.build import build_backend
from memfactory.backends.sources import load_model_and_tokenizer
from memfactory.config import Preset
from memfactory.envs.build import build_env
from memfactory.errors import MemFactoryError
from memfactory.tracking import metric_keys as keys
from memfactory.trainer import distributed as dist
from memfactory.trainer import host_memory, precision, sharding
from memfactory.trainer.batching import pack_calls, token_logprobs
from memfactory.trainer.grpo import MAX_STATS, calls_with_advantages, group_advantages, grpo_loss
from memfactory.trainer.hardware import HardwareMonitor
from memfactory.trainer.rollout_engine import RolloutEngine
from memfactory.types import ModelCall, Sample, SamplingParams, Trajectory

log = logging.getLogger(__name__)


class TrainingDiverged(MemFactoryError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class StepResult:
    step: int
    metrics: dict[str, float]
    # This process's trajectories; metrics and group_rewards cover every process's.
    trajectories: list[Trajectory] = field(default_factory=list)
    group_rewards: list[list[float]] = field(default_factory=list)


@dataclass
class TrajectoryStats:
    """What the step metrics need of one trajectory: small enough to gather from every rank."""

    reward: float
    rewards: dict[str, float]
    counters: dict[str, float]
    group: Any
    response_lengths: list[int]
    prompt_tokens: int

    @classmethod
    def of(cls, t: Trajectory, group: Any = None) -> TrajectoryStats:
        return cls(
            reward=t.reward,
            rewards=dict(t.rewards),
            counters=dict(t.counters),
            group=t.group if group is None else group,
            response_lengths=[c.num_response_tokens for c in t.calls],
            prompt_tokens=sum(len(c.prompt_ids) for c in t.calls),
        )


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def attach_lora(model: torch.nn.Module, lora: Any) -> torch.nn.Module:
    """Wrap the model with peft LoRA adapters; only the adapters train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in lora.target_modules if t in present]
    if not targets:
        raise MemFactoryError(
            f"trainer.lora.target_modules {lora.target_modules} match no module of this model; "
            f"linear layers it has: {', '.join(sorted(n for n in present if n.endswith('proj'))) or 'none'}"
        )
    config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets)
    return get_peft_model(model, config)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each layer's activations in the backward pass (non-reentrant, so LoRA needs no hooks).

    Only the training forward checkpoints: transformers skips it in eval mode, so generation keeps
    its KV cache.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise MemFactoryError(
            f"trainer.gradient_checkpointing: {type(model).__name__} does not support gradient checkpointing; "
            "set it to false"
        )
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x's name
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def qlora_quantization(lora: Any) -> Any | None:
    """The bitsandbytes config for ``trainer.lora.quantize`` (QLoRA), or None for plain LoRA."""
    if lora is None or lora.quantize == "none":
        return None
    precision.require_qlora()  # bitsandbytes + CUDA, or a clear error naming what is missing
    from transformers import BitsAndBytesConfig

    if lora.quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


class GRPOTrainer:
    """Owns the policy, optimizer, agent and environment for one run."""

    def __init__(self, preset: Preset, *, accelerator: Any | None = None):
        from accelerate import Accelerator
        from transformers import get_scheduler

        self.preset = preset
        self.cfg = preset.trainer
        set_seed(self.cfg.seed)
        quantization = qlora_quantization(self.cfg.lora)
        model_cfg = preset.model.model_copy(update={"dtype": precision.load_dtype(self.cfg.precision, preset.model.dtype)})
        model, self.tokenizer = load_model_and_tokenizer(model_cfg, quantization=quantization)
        self.precision = precision.resolve_precision(self.cfg.precision, precision.weights_dtype(model))
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        if self.accelerator.device.type == "cpu":  # host RAM is the device: keep freed activations out of the heap
            host_memory.fix_mmap_threshold()
        precision.require_hardware(self.precision, self.accelerator.device, self.accelerator.mixed_precision)
        precision.warn_if_pure(self.precision, self.cfg.lr)
        sharding.enable_fsdp_on_cpu(self.accelerator)
        dist.require_supported_sharding(self.accelerator)
        if quantization is not None:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if self.cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if self.cfg.lora is not None:
            model = attach_lora(model, self.cfg.lora)
        self.reference = None
        if self.cfg.beta > 0 and self.cfg.lora is None:
            # Full fine-tuning needs a frozen copy, on the accelerator and in the loaded dtype (bf16
            # for a bf16 checkpoint: frozen weights need no fp32 master); with LoRA the reference is
            # the base model with adapters disabled, so no second copy is held.
            self.reference = copy.deepcopy(model).eval().requires_grad_(False).to(self.accelerator.device)
        precision.apply_master_dtype(model, self.precision)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        # transformers' "constant" ignores num_warmup_steps: with a warm-up it is "constant_with_warmup"
        warm = self.cfg.lr_scheduler == "constant" and self.cfg.warmup_steps > 0
        self.scheduler = get_scheduler("constant_with_warmup" if warm else self.cfg.lr_scheduler, optimizer,
                                       num_warmup_steps=self.cfg.warmup_steps, num_training_steps=self.cfg.steps)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.sharded = sharding.is_sharded(self.policy)  # FSDP2: accelerate sharded the policy
        if self.sharded:
            sharding.initialise(self.model, self.tokenizer.pad_token_id)
        self.engine = RolloutEngine(preset, self.policy, self.tokenizer, device=self.accelerator.device)
        self.agent = build_agent(preset)
        judge = build_backend(preset.judge, where="judge.backend") if preset.judge is not None else None
        self.env = build_env(preset, judge=judge)
        self.train_samples = self.env.samples("train")
        if not self.train_samples:
            raise MemFactoryError(f"env {preset.env.type!r} returned no training samples; check env.data")
        self.step = 0
        self.hardware = HardwareMonitor(self.accelerator.device)  # hw/... step metrics, see hardware.py
        self.attn_implementation = getattr(self.policy.config, "_attn_implementation", "unknown")
        # What the run records: resolved precision, dtypes of trained/frozen weights, checkpointing.
        self.precision_info = {
            **precision.describe(self.precision, self.policy),
            "gradient_checkpointing": self.cfg.gradient_checkpointing,
        }

    # ------------------------------------------------------------------ helpers
    @property
    def policy(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def backend(self) -> Any:
        """The backend rollouts are sampled with (the policy itself, or a separate engine)."""
        return self.engine.backend

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.policy.parameters() if p.requires_grad)

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.cfg.max_new_tokens,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            stop=list(self.cfg.stop),
        )

    def batch_for_step(self, step: int, accum_index: int) -> list[Sample]:
        """The prompts of one rollout batch; a pure function of (seed, step) so resume is exact.

        Epochs as in TRL's sampler: each epoch visits the training prompts in a fresh seeded
        order, ``batch_size`` at a time (a last partial batch is dropped), so every prompt is seen
        once per epoch before any is seen again.
        """
        n = len(self.train_samples)
        size = min(self.cfg.batch_size, n)
        index = (step - 1) * self.cfg.grad_accum + accum_index
        epoch, position = divmod(index, max(n // size, 1))
        order = list(range(n))
        random.Random(f"{self.cfg.seed}/epoch/{epoch}").shuffle(order)
        batch = [self.train_samples[i] for i in order[position * size : (position + 1) * size]]
        if self.accelerator.num_processes > 1:
            batch = batch[self.accelerator.process_index :: self.accelerator.num_processes]
        return batch

    def full_weights(self):
        """The whole model on this rank for its own-schedule forward passes (a no-op unless FSDP)."""
        return sharding.full_weights(self.policy) if self.sharded else nullcontext()

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None] | None:
        """Full state dicts of a sharded policy (a collective: every rank calls it); None if unsharded."""
        return sharding.gather_state(self.policy, self.optimizer) if self.sharded else None

    def autocast(self):
        """bf16 autocast under ``trainer.precision: bf16_mixed`` (a no-op otherwise); see :mod:`.precision`."""
        return self.precision.autocast(self.accelerator.device)

    def reference_context(self):
        if self.cfg.lora is not None:
            return self.policy.disable_adapter()
        return nullcontext()

    def reference_model(self) -> torch.nn.Module:
        return self.reference if self.reference is not None else self.policy

    # ------------------------------------------------------------------ one step
    def rollout(self, samples: list[Sample]) -> tuple[list[ModelCall], list[float], list[Trajectory]]:
        """Sample ``group_size`` trajectories per prompt, score them, and pick the calls to train."""
        self.policy.eval()
        with torch.no_grad(), self.full_weights(), self.autocast():
            trajectories = self.agent.run(
                samples,
                self.backend,
                params=self.sampling_params(),
                group_size=self.cfg.group_size,
                train=True,
            )
        self.env.score(trajectories)
        advantages, keep = group_advantages(
            [t.reward for t in trajectories],
            [t.group for t in trajectories],
            scale=self.cfg.scale_rewards,
        )
        for trajectory, advantage, kept in zip(trajectories, advantages, keep):
            trajectory.advantage = advantage
            trajectory.counters["skipped_group"] = 0.0 if kept else 1.0
        if not self.cfg.skip_equal_groups:
            keep = [True] * len(trajectories)
        calls, call_advantages = calls_with_advantages(trajectories, advantages, keep, credit=self.cfg.credit)
        return calls, call_advantages, trajectories

    def policy_update(self, buffers: list[tuple[list[ModelCall], list[float]]]) -> dict[str, float]:
        """``num_iterations`` passes over the buffered rollouts, one optimizer step each.

        With several processes the normalisers are global and every rank runs the same number of
        forward/backward passes (see :mod:`memfactory.trainer.distributed`).
        """
        cfg = self.cfg
        acc = self.accelerator
        world = dist.world(acc)
        stats: dict[str, list[float]] = {}
        self.model.train()
        prepared = []
        scoring = cfg.num_iterations > 1 or cfg.beta > 0
        # Sharded weights are gathered once for all no-grad scoring (the same on every rank).
        with self.full_weights() if scoring else nullcontext():
            for calls, advantages in buffers:
                if not calls:
                    continue
                # Everything that meets the model is on its device (one process: accelerate moves nothing).
                batch = pack_calls(calls, pad_id=self.tokenizer.pad_token_id).to(acc.device)
                adv = torch.tensor(advantages, dtype=torch.float32, device=acc.device)
                old, ref = None, None
                with torch.no_grad(), self.autocast():
                    # No-grad scoring uses the unwrapped model: no collectives, any number of calls.
                    if cfg.num_iterations > 1:
                        old = token_logprobs(self.policy, batch, temperature=max(cfg.temperature, 1e-6),
                                             micro_batch_size=cfg.micro_batch_size,
                                             shared_prompt=cfg.shared_prompt_forward)
                    if cfg.beta > 0:
                        with self.reference_context():
                            ref = token_logprobs(self.reference_model(), batch,
                                                 temperature=max(cfg.temperature, 1e-6),
                                                 micro_batch_size=cfg.micro_batch_size,
                                                 shared_prompt=cfg.shared_prompt_forward)
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
            self.optimizer.zero_grad(set_to_none=True)
            for k in range(passes):
                # Gradients are synchronised once, on the last pass of every rank.
                sync = world == 1 or k == passes - 1
                with nullcontext() if sync else acc.no_sync(self.model):
                    if k >= len(micro):
                        with self.autocast():
                            idle = dist.idle_loss(self.model, self.tokenizer.pad_token_id, acc.device)
                        acc.backward(idle)
                        continue
                    batch, adv, old, ref, index = micro[k]
                    mb = batch.select(index)
                    width = mb.response_width  # trimming only drops trailing padding columns
                    with self.autocast():  # the forward in bf16 under bf16_mixed; backward outside it
                        logps = token_logprobs(self.model, mb, temperature=max(cfg.temperature, 1e-6),
                                               shared_prompt=cfg.shared_prompt_forward, stats=scored)
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
                    if not torch.isfinite(loss) and world == 1:
                        raise TrainingDiverged(
                            f"loss became {float(loss)} at step {self.step + 1}; stopping. "
                            "The last good checkpoint is kept; try a lower trainer.lr or trainer.max_grad_norm."
                        )
                    # DDP averages gradients over ranks; the normalisers are global, so scale back up.
                    acc.backward(loss * world if world > 1 else loss)
                    stats.setdefault("loss", []).append(float(loss.detach()))
                    for key, value in parts.items():
                        stats.setdefault(key, []).append(float(value))
            grad_norm = acc.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], cfg.max_grad_norm
            )
            if not math.isfinite(float(grad_norm)):
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingDiverged(f"gradient norm became {float(grad_norm)} at step {self.step + 1}; stopping.")
            self.optimizer.step()
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

    def train_step(self) -> StepResult:
        """Roll out, score and update once; returns the step's metrics."""
        cfg = self.cfg
        started = time.perf_counter()
        step = self.step + 1
        self.hardware.start_step()
        dist.reseed_for_step(self.accelerator, cfg.seed, step)
        engine_stats = self.engine.prepare(self.step)
        prefill = dict(getattr(self.backend, "prefill_stats", None) or {})
        buffers, trajectories = [], []
        for accum_index in range(cfg.grad_accum):
            calls, advantages, batch_trajectories = self.rollout(self.batch_for_step(step, accum_index))
            trajectories.extend(batch_trajectories)
            buffers.append((calls, advantages))
        rollout_time = time.perf_counter() - started
        if prefill:  # hf backends: the share of generated rows whose prompt prefill was shared
            after = self.backend.prefill_stats
            rows = after["rows"] - prefill["rows"]
            engine_stats[keys.SHARED_PREFILL_FRACTION] = 1.0 - (after["prefilled"] - prefill["prefilled"]) / max(rows, 1)
        update_stats = self.policy_update(buffers)
        with warnings.catch_warnings():
            # A step whose groups all lacked signal makes no optimizer step; the schedule still
            # advances so that it stays a function of the step number.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()
        self.step = step
        elapsed = time.perf_counter() - started
        stats = [TrajectoryStats.of(t) for t in trajectories]
        if dist.world(self.accelerator) > 1:
            # Metrics and reward distributions over every rank's trajectories (group ids per rank).
            gathered = dist.gather_objects(self.accelerator, stats)
            stats = [TrajectoryStats(**{**vars(s), "group": (rank, s.group)})
                     for rank, part in enumerate(gathered) for s in part]
        metrics = self.step_metrics(stats, update_stats)
        metrics.update({
            keys.STEP_S: elapsed,
            keys.ROLLOUT_S: rollout_time,
            keys.UPDATE_S: elapsed - rollout_time,
            keys.LR: float(self.scheduler.get_last_lr()[0]),
            keys.TOKENS_PER_S: metrics[keys.TOKENS_TOTAL] / max(elapsed, 1e-9),
            **engine_stats,
            **self.hardware.metrics(self.accelerator),  # a collective: every rank gets here
        })
        groups: dict[Any, list[float]] = {}
        for item in stats:
            groups.setdefault(item.group, []).append(item.reward)
        return StepResult(step, metrics, trajectories, list(groups.values()))

    def step_metrics(
        self, trajectories: list[TrajectoryStats] | list[Trajectory], update: dict[str, float]
    ) -> dict[str, float]:
        trajectories = [t if isinstance(t, TrajectoryStats) else TrajectoryStats.of(t) for t in trajectories]
        rewards = np.array([t.reward for t in trajectories], dtype=np.float64)
        lengths = [n for t in trajectories for n in t.response_lengths]
        metrics: dict[str, float] = {
            keys.REWARD_MEAN: float(rewards.mean()) if len(rewards) else 0.0,
            keys.REWARD_STD: float(rewards.std()) if len(rewards) else 0.0,
            keys.REWARD_MAX: float(rewards.max()) if len(rewards) else 0.0,
            keys.REWARD_MIN: float(rewards.min()) if len(rewards) else 0.0,
            keys.RESPONSE_LENGTH_MEAN: float(np.mean(lengths)) if lengths else 0.0,
            keys.RESPONSE_LENGTH_MAX: float(np.max(lengths)) if lengths else 0.0,
            keys.CALLS_PER_TRAJECTORY: len(lengths) / max(len(trajectories), 1),
            keys.TOKENS_TOTAL: float(sum(lengths) + sum(t.prompt_tokens for t in trajectories)),
            keys.LOSS: update.get("loss", 0.0),
            keys.KL: update.get("kl", 0.0),
            keys.CLIP_RATIO: update.get("clip_ratio/region_mean", update.get("clip_ratio", 0.0)),
            keys.GRAD_NORM: update.get("grad_norm", 0.0),
        }
        for key, value in update.items():
            metrics.setdefault(f"{keys.UPDATE_PREFIX}{key}", value)
        parts = sorted({name for t in trajectories for name in t.rewards})
        for name in parts:
            metrics[keys.reward_part(name)] = float(np.mean([t.rewards.get(name, 0.0) for t in trajectories]))
        counters = sorted({name for t in trajectories for name in t.counters})
        for name in counters:
            total = float(np.sum([t.counters.get(name, 0.0) for t in trajectories]))
            if name == "skipped_group":
                metrics[keys.SKIPPED_GROUP_FRACTION] = total / max(len(trajectories), 1)
            else:
                metrics[f"{keys.COUNT_PREFIX}{name}"] = total
        return metrics

    def fit(self, on_step: Callable[[StepResult], None] | None = None) -> None:
        while self.step < self.cfg.steps:
            result = self.train_step()
            if on_step is not None:
                on_step(result)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, samples: list[Sample], *, temperature: float = 0.0) -> float:
        """Mean reward of one greedy (by default) answer per sample; no gradients."""
        self.policy.eval()
        params = self.sampling_params()
        params.temperature = temperature
        self.engine.ensure_current(self.step)  # evaluate the current policy, not a lagging engine
        with torch.no_grad(), self.full_weights(), self.autocast():
            trajectories = self.agent.run(samples, self.backend, params=params, group_size=1, train=False)
        self.env.score(trajectories)
        return float(np.mean([t.reward for t in trajectories])) if trajectories else 0.0
