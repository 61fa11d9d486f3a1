"""Compiled static-cache decoding for the hf backend, as transformers' ``generate`` offers it.

Eager decoding is host-bound on a GPU: every token runs the model's Python (about 1.5k kernel
launches for a 28-layer model) and grows a ``DynamicCache`` by ``torch.cat``, so a batch-16 step
of a 1.7B model takes ~80 ms against under 1 ms of weight reads (bench/RESULTS.md). A
``StaticCache`` preallocates ``[rows, kv_heads, length, head_dim]`` per layer and is written in
place, so every decode step has the same shapes; ``generate`` then runs the step through
``torch.compile`` (inductor, and CUDA graphs under ``mode="reduce-overhead"`` on CUDA) and keeps
the prefill eager. It does so by itself when the cache it is handed is static, on CUDA always and
elsewhere when ``CompileConfig._compile_all_devices`` is set (transformers' flag for "compile on
CPU too").

Recompiling: ``torch.compile`` marks a dimension dynamic the second time it changes, so a
training run compiles the step about twice (batch size and cache length then vary freely), not
once per micro-batch; on CUDA each new shape still records its own CUDA graph. The cache length is
rounded up to ``CACHE_BUCKET`` tokens to bound those shapes, and kept small because a static
cache attends over its whole (masked) length every step.

Prefill once per group still applies: the hf backend prefills each distinct prompt into a
``DynamicCache``, and :func:`static_cache` copies those rows into the static cache, one per row
that shares the prompt; ``generate`` continues from there exactly as on the eager path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

DecodeMode = Literal["auto", "eager", "compiled"]
CompileBackend = Literal["inductor", "aot_eager", "eager"]
# Static cache lengths are multiples of this (fewer distinct shapes, fewer recompilations).
CACHE_BUCKET = 64


def compiled_on(decode: DecodeMode, device: torch.device) -> bool:
    """``compiled`` always, ``auto`` on CUDA only (a CPU compile costs a minute for little gain)."""
    return decode == "compiled" or (decode == "auto" and device.type == "cuda")


def compile_config(device: torch.device, backend: CompileBackend = "inductor") -> Any:
    """transformers' ``CompileConfig`` for the decode step on ``device``.

    CUDA with inductor: transformers' default ``reduce-overhead`` (CUDA graphs). Elsewhere plain
    inductor, flagged to compile off-GPU too. ``aot_eager`` / ``eager`` trace the same graph
    without generating kernels: seconds instead of a minute, for tests and dry runs.
    """
    from transformers import CompileConfig

    mode = ("reduce-overhead" if device.type == "cuda" else "default") if backend == "inductor" else None
    config = CompileConfig(backend=backend, mode=mode)
    if device.type != "cuda":
        config._compile_all_devices = True
    return config


def cache_length(prompt_width: int, max_new_tokens: int) -> int:
    """Tokens the static cache holds: prompt and answer, rounded up to ``CACHE_BUCKET``."""
    need = prompt_width + max_new_tokens
    return -(-need // CACHE_BUCKET) * CACHE_BUCKET


def new_static_cache(config: Any, length: int) -> Any:
    """An empty ``StaticCache`` of ``length`` tokens; its tensors are allocated by the first write."""
    from transformers import StaticCache

    return StaticCache(config=config, max_cache_len=length)


def takes_prefix(cache: Any) -> bool:
    """Whether :func:`static_cache` can copy a prefix in: plain full-attention layers only (a
    sliding-window layer keeps the last window, not the first tokens)."""
    from transformers.cache_utils import StaticLayer

    return all(type(layer) is StaticLayer for layer in cache.layers)


def static_cache(cache: Any, rows: int, prefix: Any | None = None, owner: torch.Tensor | None = None) -> Any:
    """Fill ``cache`` (from :func:`new_static_cache`) with a shared prefix, or leave it to ``generate``.

    ``prefix`` is a ``DynamicCache`` of the distinct prompts (all but their last token) and
    ``owner[i]`` the distinct prompt of row ``i``: each row gets its prompt's keys and values, and
    the cache's length is set to the prefix's, so ``generate`` feeds only the last prompt token.
    """
    if prefix is None:
        return cache
    if owner is None or not takes_prefix(cache):
        raise ValueError("static_cache: a prefix needs owner indices and full-attention layers only")
    if len(cache.layers) != len(prefix.layers):
        raise ValueError(f"static_cache: {len(cache.layers)} layers, the prefix has {len(prefix.layers)}")
    length = prefix.get_seq_length()
    for layer, source in zip(cache.layers, prefix.layers):
        keys, values = source.keys, source.values
        # Allocates [rows, heads, max_len, dim] on the prefix's device and dtype (bf16 under autocast).
        layer.lazy_initialization(keys.new_zeros((rows, keys.shape[1], 0, keys.shape[3])),
                                  values.new_zeros((rows, values.shape[1], 0, values.shape[3])))
        index = owner.to(keys.device)
        layer.keys[:, :, :length] = keys.index_select(0, index)
        layer.values[:, :, :length] = values.index_select(0, index)
        layer.cumulative_length.fill_(length)
    return cache
