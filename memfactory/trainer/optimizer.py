"""The trainer's optimizer: AdamW, in the implementation transformers' Trainer (and so TRL) picks.

Why it matters for memory: torch's default on a GPU is the *foreach* AdamW, which steps every
tensor at once and allocates temporaries the size of the trained weights (15 GiB on a 4B model:
what set ``memory_r1_qwen3``'s measured peak on the first H200 run). The *fused* AdamW steps them
in one kernel, in place, with no such temporary; transformers defaults to it on CUDA. On CPU torch
steps tensor by tensor (no temporary either). The memory planner reads the same choice
(:func:`adamw_implementation`), so its optimizer-step moment follows what is built here.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

# Devices where torch's default AdamW is foreach (torch.utils._foreach_utils: cuda, xpu; CPU is not).
_FOREACH_DEVICES = ("cuda", "xpu")


def adamw_implementation(device_type: str) -> str:
    """``fused`` on CUDA; elsewhere torch's default: ``foreach`` on other GPUs, ``single_tensor`` on CPU."""
    if device_type == "cuda":
        return "fused"
    return "foreach" if device_type in _FOREACH_DEVICES else "single_tensor"


def build_adamw(params: Iterable[torch.nn.Parameter], *, lr: float, weight_decay: float,
                device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``params`` for a model on ``device``, in :func:`adamw_implementation`'s choice."""
    kind = adamw_implementation(device.type)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=kind == "fused" or None,
                             foreach=False if kind == "single_tensor" else None)
