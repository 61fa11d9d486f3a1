"""What a (possibly PEFT- and DDP-wrapped) transformers model is and what its forward accepts.

The hf backend's shared prefill and the trainer's scoring both pass keyword arguments that only
some transformers versions take (``logits_to_keep``; the KV cache as ``cache`` or, before,
``past_key_values``), so both ask here instead of guessing. Checkpointing and FSDP sharding both
ask here whether a model carries PEFT adapters and what is inside its wrappers. torch and peft are
imported when asked, so the backends package stays importable without loading them.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def base_model(model: Any) -> Any:
    """The transformers model inside DDP (``.module``) and PEFT (``get_base_model()``) wrappers."""
    import torch

    # DDP's forward is (*inputs, **kwargs) and passes keyword arguments on to .module
    target = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    get_base = getattr(target, "get_base_model", None)
    return get_base() if callable(get_base) else target


def unwrap(model: Any) -> Any:
    """The model inside DDP/FSDP/accelerate wrappers and torch.compile (a PeftModel stays one)."""
    import torch

    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def is_peft(model: Any) -> bool:
    """Whether ``model`` is a PeftModel (LoRA adapters over a frozen base)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def forward_parameters(model: Any) -> set[str]:
    """The names the base model's ``forward`` takes (empty when its signature cannot be read)."""
    try:
        return set(inspect.signature(base_model(model).forward).parameters)
    except (TypeError, ValueError):
        return set()


def cache_keyword(parameters: set[str]) -> str | None:
    """``cache`` in newer transformers (``past_key_values`` deprecated), ``past_key_values`` before;
    None when the forward takes neither."""
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    return None


@contextmanager
def eval_mode(*models: Any) -> Iterator[None]:
    """``models`` in eval mode (dropout off) for the block; every module's own training flag is
    restored after, so a policy in training goes back to training. Generation and the trainer's
    no-grad scoring (old and reference log-probs) run in it: their log-probs must not be samples of
    dropout noise."""
    flags = [(module, module.training) for model in models for module in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training
