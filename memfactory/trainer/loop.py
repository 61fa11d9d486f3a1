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
from memfactory.trainer import host_memory, precision, sharding, update
from memfactory.trainer.grpo import calls_with_advantages, group_advantages
from memfactory.trainer.hardware import HardwareMonitor
from memfactory.trainer.optimizer import build_adamw
from memfactory.trainer.rollout_engine import RolloutEngine
from memfactory.trainer.step_metrics import TrajectoryStats, step_metrics
from memfactory.types import ModelCall, Sample, SamplingParams, Trajectory

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    step: int
    metrics: dict[str, float]
    # This process's trajectories; metrics and group_rewards cover every process's.
    trajectories: list[Trajectory] = field(default_factory=list)
    group_rewards: list[list[float]] = field(default_factory=list)


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
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from transformers import get_scheduler

        self.preset = preset
        self.cfg = preset.trainer
        set_seed(self.cfg.seed)
        quantization = qlora_quantization(self.cfg.lora)
        model_cfg = preset.model.model_copy(update={"dtype": precision.load_dtype(self.cfg.precision, preset.model.dtype)})
        model, self.tokenizer = load_model_and_tokenizer(model_cfg, quantization=quantization)
        self.precision = precision.resolve_precision(self.cfg.precision, precision.weights_dtype(model))
        precision.convert_float16(model, self.precision)  # bf16_mixed on a float16 checkpoint: computes in bf16
        # What checkpoints write full weights in: the loaded dtype (bf16), not the fp32 masters.
        self.checkpoint_dtype = precision.weights_dtype(model)
        # DDP: gradients as views into its all-reduce buckets, which it keeps for the whole run; accelerate's
        # default copies them out (+4 bytes per trained parameter through every update).
        self.accelerator = accelerator or Accelerator(
            cpu=not torch.cuda.is_available(),
            kwargs_handlers=[DistributedDataParallelKwargs(gradient_as_bucket_view=True)])
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
            # Full fine-tuning needs a frozen copy on the accelerator: Linear weights in the loaded dtype
            # (frozen weights need no fp32 master), the rest in the master dtype so that it computes
            # exactly as the policy does now (KL 0 before any update). With LoRA the reference is the
            # base model with adapters disabled, so no second copy is held.
            reference = copy.deepcopy(model).eval().requires_grad_(False)
            self.reference = precision.reference_dtypes(reference, self.precision).to(self.accelerator.device)
        precision.apply_master_dtype(model, self.precision)
        params = [p for p in model.parameters() if p.requires_grad]
        # Fused on CUDA (as transformers' Trainer): no step temporary the size of the trained weights.
        optimizer = build_adamw(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                device=self.accelerator.device)
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
        """``num_iterations`` passes over the buffered rollouts, one optimizer step each (:mod:`.update`)."""
        return update.policy_update(self, buffers)

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
        metrics = step_metrics(stats, update_stats)
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
