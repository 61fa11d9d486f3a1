"""FSDP2 (sharded weights) for the GRPO loop: full weights for rollouts, full-state checkpoints.

accelerate shards the policy (``fully_shard`` per decoder layer and the root) when launched with
``presets/accelerate/fsdp.yaml``. Training passes are collectives, which the loop already runs in
lockstep (every rank runs the same number of forward/backward passes, see
:mod:`memfactory.trainer.distributed`). Everything else a rank does on its own schedule —
generating its rollouts (any number of ``generate`` calls of any length), no-grad scoring,
evaluation, pushing weights into a rollout engine — runs inside :func:`full_weights`: every rank
gathers the whole model once (one collective, same on every rank), works without communication,
and frees the gathered copy afterwards. That is the approach TRL takes for DeepSpeed ZeRO-3
(``ds3_gather_for_generation``): sharding saves gradient and optimizer memory and the weights
outside rollouts; the rollout phase holds one full copy.

Checkpoints hold *full* state dicts (gathered on every rank, written by rank 0), in the same
layout as unsharded runs, so ``memfactory export``/``serve`` read them unchanged. The optimizer
state is keyed by parameter name (torch's ``get_optimizer_state_dict``), so it can be resharded
over any number of processes on resume.

On CPU processes accelerate's launcher passes the FSDP config along but its state machine only
enables FSDP on accelerators; :func:`enable_fsdp_on_cpu` completes that state so that two gloo
processes run accelerate's own FSDP2 code (what tests/trainer/test_distributed.py does).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from memfactory.backends.model_api import is_peft
from memfactory.errors import MemFactoryError


def enable_fsdp_on_cpu(accelerator: Any) -> None:
    """Under ``accelerate launch`` with an FSDP config and ``use_cpu``, turn on accelerate's FSDP2.

    accelerate sets ``ACCELERATE_USE_FSDP`` and the ``FSDP_*`` variables for every launch with
    ``distributed_type: FSDP``, but only switches its state to FSDP on GPUs and similar devices;
    on CPU it silently falls back to DDP (MULTI_CPU). torch's FSDP2 runs on CPU over gloo, so
    we complete accelerate's state the way it would on a GPU: the plugin read from the same
    environment, distributed type FSDP. A no-op everywhere else.
    """
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils import DistributedType

    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if not wants_fsdp or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise MemFactoryError("FSDP on CPU processes needs fsdp_version: 2 in the accelerate config")
    state = accelerator.state
    state.fsdp_plugin = FullyShardedDataParallelPlugin()
    state.distributed_type = DistributedType.FSDP


def fsdp_modules(model: torch.nn.Module) -> list[Any]:
    """The FSDP2-sharded modules of ``model`` (empty when it is not sharded)."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: torch.nn.Module) -> bool:
    return bool(fsdp_modules(model))


def initialise(model: torch.nn.Module, token_id: int) -> None:
    """One no-grad forward pass through the root of a sharded model (a collective: every rank).

    FSDP2 finishes setting up on the root module's first forward. peft's ``generate`` enters the
    model below its root (``PeftModel.generate`` calls the base model), so without this the
    first rollout would fail with "FSDP requires a single root module". Sharded models only.
    """
    ids = torch.full((1, 1), int(token_id), dtype=torch.long, device=next(model.parameters()).device)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    for module in fsdp_modules(model):
        module.reshard()  # groups that keep weights after forward (accelerate's embeddings/head) too


@contextmanager
def full_weights(model: torch.nn.Module) -> Iterator[None]:
    """Every rank holds the whole model inside; forward passes then need no communication.

    Gathers all shards (one collective per sharded module, identical on every rank), keeps them
    through any number of forward passes, and frees them on exit. A no-op when not sharded.
    On exit every sharded module reshards after forward again (FSDP2 has no public getter for
    the previous setting; accelerate keeps the embeddings/head group and the root gathered after
    forward, which only saves one small all-gather per backward, never changes results).
    """
    modules = fsdp_modules(model)
    if not modules:
        yield
        return
    for module in modules:
        module.unshard()
        module.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for module in modules:
            module.reshard()
            module.set_reshard_after_forward(True, recurse=False)


def _options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def gather_state(
    model: torch.nn.Module, optimizer: Any | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Full (unsharded, on CPU) model and optimizer state dicts. A collective: call on every rank.

    Only rank 0 receives the tensors (others get empty dicts), since only rank 0 writes them.
    The optimizer state is keyed by parameter name.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    # A LoRA run saves only its adapters: gather only the trainable parameters.
    options = _options(cpu_offload=True, ignore_frozen_params=is_peft(model))
    weights = get_model_state_dict(model, options=options)
    optim = None
    if optimizer is not None:
        inner = getattr(optimizer, "optimizer", optimizer)
        # Before the first optimizer step there is no state to gather, and torch would create it
        # with a zero-gradient step (AdamW's step counter would then be one ahead).
        optim = get_optimizer_state_dict(model, inner, options=options) if inner.state else {"state": {}}
    return weights, optim


def load_model_state(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Shard full weights (read from a checkpoint on every rank) into the sharded model.

    Returns ``(missing, unexpected)`` keys, as ``load_state_dict(strict=False)`` does.
    """
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    result = set_model_state_dict(model, weights, options=_options(strict=False))
    return list(result.missing_keys), list(result.unexpected_keys)


def load_optimizer_state(model: torch.nn.Module, optimizer: Any, optim: dict[str, Any]) -> None:
    """Shard a full, name-keyed optimizer state (from :func:`gather_state`) into this rank's optimizer."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    if optim.get("state"):  # empty when saved before the first optimizer step
        set_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), optim, options=_options())


def trainable_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The trainable parameters, each DTensor shard gathered (a collective per sharded parameter)."""
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                yield name, param.full_tensor() if isinstance(param, DTensor) else param.detach()


def local_numel(model: torch.nn.Module) -> int:
    """How many parameter values this rank stores (its shards under FSDP; everything otherwise)."""
    from torch.distributed.tensor import DTensor

    return sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())
