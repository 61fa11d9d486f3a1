"""Training checkpoints: save atomically, find the newest complete one, restore everything.

Layout of ``<run_dir>/checkpoints/step-000020/`` (names and listing: :mod:`memfactory.trainer.layout`)::

    model/            save_pretrained output: safetensors weights + config, in the checkpoint's
                      dtype (a peft model: only adapter_model.safetensors + adapter_config.json)
    master.safetensors  the fp32 master weights, when model/ holds them rounded (bf16_mixed)
    optimizer.pt      optimizer.state_dict()
    scheduler.pt      scheduler.state_dict()
    rng.pt            python, numpy, torch (and CUDA) random states
    trainer_state.json  {"step", "time", "extra", "format"}; written last

A checkpoint is built in a hidden temporary folder, its files are fsynced, and it is renamed into
place, so ``step-*`` folders are always complete (also after SIGKILL or a power cut);
:func:`latest_checkpoint` also ignores any ``step-*`` folder without ``trainer_state.json`` (e.g.
copied by hand, or from an older crash). A save that fails for lack of space or on a read-only
file system removes its temporary folder, leaves the previous checkpoints as they were, and raises
one MemFactoryError line naming the folder and the cause. ``MEMFACTORY_TEST_CHECKPOINT_PAUSE``
(test-only, ``STEP:SECONDS``) sleeps mid-save of that step, after the model weights and before the
optimizer state, so tests can SIGKILL a trainer or fill its disk during a checkpoint write.

Loading safety: everything is read with ``torch.load(weights_only=True)``: optimizer and LR
scheduler state dicts of the torch optimizers and LambdaLR-style schedulers hold only tensors and
plain Python values, and RNG states are stored as tensors/ints/lists (numpy's state as a dict of
plain values), so no pickled code ever runs. A custom scheduler whose state holds arbitrary
objects fails with a clear error unless ``trusted=True`` is passed (only for your own files).
Model weights are safetensors. With several processes (accelerate), call save from the main
process only. Sharded (FSDP2) runs first gather full state dicts on every rank
(:func:`memfactory.trainer.sharding.gather_state`) and pass them in as ``state``; the layout stays
the same except that the optimizer state is keyed by parameter name (``optimizer_keys`` in
``trainer_state.json``), and :func:`load_checkpoint` reshards both on every rank.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memfactory.backends.model_api import is_peft, unwrap
from memfactory.errors import MemFactoryError
from memfactory.tracking.metrics import to_jsonable
from memfactory.trainer.layout import STATE_FILE, checkpoint_name, checkpoints_dir, latest_checkpoint, list_checkpoints
from memfactory.trainer.sharding import is_sharded, load_model_state, load_optimizer_state

FORMAT_VERSION = 1
OPTIMIZER_BY_NAME = "by_name"  # trainer_state.json "optimizer_keys" of sharded (FSDP) checkpoints
# -- RNG -------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npst["bit_generator"],
            "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
            "has_gauss": npst["has_gauss"],
            "gauss": npst["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# -- model weights ---------------------------------------------------------------------------


MASTER_FILE = "master.safetensors"  # next to model/: the fp32 master weights model/ holds rounded


def _in_dtype(weights: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``weights`` with every float32 tensor cast to ``dtype`` (on the CPU, one tensor at a time), tied
    copies (shared storage) dropped as save_pretrained drops them; and the names of the cast tensors."""
    out: dict[str, torch.Tensor] = {}
    cast: list[str] = []
    seen: set[int] = set()
    for name, tensor in weights.items():
        if tensor.data_ptr() in seen and tensor.numel():
            continue
        seen.add(tensor.data_ptr())
        if tensor.dtype == torch.float32 and dtype != torch.float32:
            out[name] = tensor.detach().to("cpu").to(dtype)
            cast.append(name)
        else:
            out[name] = tensor
    return out, cast


def _set_config_dtype(folder: Path, dtype: torch.dtype) -> None:
    """save_pretrained writes the dtype of the model it was called on (fp32 masters): write the saved one."""
    path = folder / "config.json"
    if path.is_file():
        config = json.loads(path.read_text(encoding="utf-8"))
        name = str(dtype).removeprefix("torch.")
        config.update({key: name for key in ("dtype", "torch_dtype") if key in config} or {"dtype": name})
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _save_model(
    model: Any, folder: Path, weights: dict[str, torch.Tensor] | None = None, dtype: torch.dtype | None = None
) -> None:
    """``weights``: a full state dict gathered from a sharded model (else the model's own).

    ``dtype``: the checkpoint's dtype (bf16 for a bf16 model trained with fp32 masters): full weights
    are written in it, so serving, evaluation and export read what the model was loaded as, at half
    the bytes; the fp32 masters go to :data:`MASTER_FILE` beside ``folder`` for an exact resume.
    A peft model's adapters are written as they are trained (fp32, small).
    """
    model = unwrap(model)
    if dtype is not None and not is_peft(model):
        source = weights if weights is not None else model.state_dict()
        rounded, cast = _in_dtype(source, dtype)
        if cast:
            _write_weights(model, folder, rounded)
            _set_config_dtype(folder, dtype)
            del rounded  # the rounded copy goes before the fp32 one is built
            from safetensors.torch import save_file

            masters = {name: source[name].detach().to("cpu", copy=True).contiguous() for name in cast}
            save_file(masters, str(folder.parent / MASTER_FILE))
            return
    _write_weights(model, folder, weights)


def _write_weights(model: Any, folder: Path, weights: dict[str, torch.Tensor] | None) -> None:
    if hasattr(model, "save_pretrained"):
        # a PeftModel saves only its adapters here; a transformers model its full weights
        extra = {} if weights is None else {"state_dict": weights}
        model.save_pretrained(str(folder), safe_serialization=True, **extra)
    else:
        from safetensors.torch import save_file, save_model

        folder.mkdir(parents=True, exist_ok=True)
        if weights is None:
            save_model(model, str(folder / "model.safetensors"))
        else:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))


def _read_safetensors(folder: Path, pattern: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob(pattern)):
        tensors.update(load_file(str(file), device="cpu"))
    return tensors


def _adapter_keys_to_model(model: Any, weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """peft saves adapter keys without the adapter name; map them back to the model's own keys.

    Returns the mapped weights and the keys that match no adapter weight of the model.
    """
    adapter = getattr(model, "active_adapter", "default")
    own = {key.replace(f".{adapter}.", "."): key for key in model.state_dict() if f".{adapter}." in key}
    return {own[k]: v for k, v in weights.items() if k in own}, [k for k in weights if k not in own]


def _checkpoint_weights(model: Any, folder: Path) -> dict[str, torch.Tensor]:
    """The weights a checkpoint's ``model/`` holds for ``model``: its adapter, or the full model."""
    if is_peft(model):
        weights = _read_safetensors(folder, "adapter_model*.safetensors")
        if not weights:
            raise MemFactoryError(f"checkpoint {folder} has no adapter weights, but the model is a peft model")
        return weights
    weights = _read_safetensors(folder, "*.safetensors")
    if not weights:
        raise MemFactoryError(f"checkpoint {folder} has no model weights (*.safetensors)")
    if any("lora_" in key for key in weights):
        raise MemFactoryError(f"checkpoint {folder} holds LoRA adapters; wrap the model with peft before loading")
    return weights


def _untied(model: Any, weights: dict[str, torch.Tensor], missing: list[str]) -> list[str]:
    """The missing keys that are not tied copies of a loaded weight.

    save_pretrained drops tied copies (lm_head = embed_tokens). A tied copy shares storage with a
    loaded weight, or under FSDP2 is the same parameter object.
    """
    from torch.distributed.tensor import DTensor

    def storage(tensor: torch.Tensor) -> int:
        return id(tensor) if isinstance(tensor, DTensor) else tensor.data_ptr()

    params = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers())
    loaded = {storage(params[k]) for k in weights if k in params}
    return [k for k in missing if k not in params or storage(params[k]) not in loaded]


def _load_model(model: Any, folder: Path) -> None:
    """Load a checkpoint's weights into a plain, peft or FSDP2-sharded model (every rank reads them)."""
    model = unwrap(model)
    weights = _checkpoint_weights(model, folder)
    if is_peft(model):
        if is_sharded(model):
            weights, unexpected = _adapter_keys_to_model(model, weights)
            if not unexpected:
                load_model_state(model, weights)
        else:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(model, weights)
            unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise MemFactoryError(f"checkpoint {folder} adapter does not match the model: unexpected {unexpected[:5]}")
        return
    if is_sharded(model):
        missing, unexpected = load_model_state(model, weights)
    else:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise MemFactoryError(f"checkpoint {folder} does not match the model: unexpected keys {unexpected[:5]}")
    untied = _untied(model, weights, missing)
    if untied:
        raise MemFactoryError(f"checkpoint {folder} does not match the model: missing keys {untied[:5]}")


def _load_masters(model: Any, checkpoint: Path) -> None:
    """Overwrite the weights ``model/`` holds rounded with the checkpoint's fp32 masters, if it has them."""
    path = checkpoint / MASTER_FILE
    if not path.is_file():
        return
    model = unwrap(model)
    from safetensors.torch import load_file

    masters = load_file(str(path), device="cpu")
    if is_sharded(model):
        _, unexpected = load_model_state(model, masters)
    else:
        _, unexpected = model.load_state_dict(masters, strict=False)
    if unexpected:
        raise MemFactoryError(f"{path} does not match the model: unexpected keys {unexpected[:5]}")


# -- save / load -----------------------------------------------------------------------------

PAUSE_ENV = "MEMFACTORY_TEST_CHECKPOINT_PAUSE"
_DISK_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "no space left on device (disk quota)",
                errno.EFBIG: "no space left on device (file size limit)", errno.EROFS: "read-only file system",
                errno.EACCES: "permission denied", errno.EPERM: "permission denied"}
_DISK_TEXTS = {"no space left": errno.ENOSPC, "os error 28": errno.ENOSPC, "disk quota": errno.EDQUOT,
               "read-only file system": errno.EROFS, "os error 30": errno.EROFS, "file too large": errno.EFBIG,
               "os error 27": errno.EFBIG}


def _test_pause(step: int) -> None:
    """Test-only hook (see the module docstring): hold a save of ``step`` half-written."""
    spec = os.environ.get(PAUSE_ENV, "")
    if ":" in spec:
        at, seconds = spec.split(":", 1)
        if int(at) == int(step):
            time.sleep(float(seconds))


def disk_error(exc: BaseException) -> str | None:
    """"no space left on device" / "read-only file system" / ... when ``exc`` (or its cause) is one.

    torch and safetensors wrap the OS error in RuntimeError/SafetensorError, so the text is read too.
    """
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        code = getattr(seen, "errno", None)
        if code in _DISK_ERRNOS:
            return _DISK_ERRNOS[code]
        text = str(seen).lower()
        for needle, code in _DISK_TEXTS.items():
            if needle in text:
                return _DISK_ERRNOS[code]
        seen = seen.__cause__ or seen.__context__
    return None


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync ``data``; an out-of-space or read-only error surfaces as OSError with its errno."""
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _torch_save(obj: Any, path: Path) -> None:
    """torch.save through memory: a failing write then raises OSError (torch's own writer hides errno)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _write_file(path, buffer.getvalue())


def _fsync_dir(path: Path) -> None:
    """fsync one file or folder (a folder's fsync makes a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` so the rename publishes durable data."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True) + [folder]:
        _fsync_dir(path)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    extra: dict[str, Any] | None = None,
    *,
    keep: int | None = 3,
    tokenizer: Any | None = None,
    state: tuple[dict[str, torch.Tensor], dict[str, Any] | None] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step-{step:06d}/`` atomically and return its path.

    ``extra`` (JSON-safe: e.g. samples seen, best reward, data position) comes back from
    :func:`load_checkpoint`. Afterwards only the newest ``keep`` checkpoints remain (None or 0
    keeps all). Saving a step that already exists replaces it. With ``tokenizer``, its files go
    into ``model/`` too, so a full-model checkpoint loads with ``from_pretrained(path / "model")``.
    ``state``: the full (model, optimizer) state dicts of a sharded run, from ``gather_state``.
    ``dtype``: the dtype full weights are written in (the checkpoint's; None: as held), the fp32
    masters beside them in ``master.safetensors`` when that rounds them (see :func:`_save_model`).
    """
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
        weights, optim = state if state is not None else (None, None)
        _save_model(model, tmp / "model", weights, dtype)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "model"))
        _test_pause(step)
        if optimizer is not None:
            _torch_save(optim if state is not None else optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            _torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
        _torch_save(_rng_state(), tmp / "rng.pt")
        state = {
            "format": FORMAT_VERSION,
            "step": int(step),
            "time": time.time(),
            "peft": is_peft(unwrap(model)),
            "optimizer_keys": OPTIMIZER_BY_NAME if state is not None else "by_index",
            "extra": to_jsonable(extra or {}),
        }
        with (tmp / STATE_FILE).open("w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=2, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_tree(tmp)
        if final.exists():
            old = root / f".{final.name}.old-{secrets.token_hex(4)}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(root)  # the rename itself
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = disk_error(exc) if isinstance(exc, Exception) else None
        if cause is None:
            raise
        previous = latest_checkpoint(root)
        kept = f"the previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"
        raise MemFactoryError(f"cannot write checkpoint {final}: {cause}; {kept}") from exc
    if keep:
        prune_checkpoints(run_dir, keep)
    return final


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints and leftover temp folders."""
    root = checkpoints_dir(run_dir)
    removed = list_checkpoints(run_dir)[:-keep] if keep > 0 else []
    if root.is_dir():
        # hidden folders come from saves that crashed mid-way (one process saves at a time)
        removed += [p for p in root.iterdir() if p.is_dir() and p.name.startswith(".step-")]
    for path in removed:
        # hide it first (one atomic rename): a kill in the middle of rmtree must not leave a
        # published step-* folder that still has trainer_state.json but lacks other files
        doomed = path
        if not path.name.startswith("."):
            doomed = root / f".{path.name}.del-{secrets.token_hex(4)}"
            try:
                path.rename(doomed)
            except OSError:
                doomed = path
        shutil.rmtree(doomed, ignore_errors=True)
    return removed


def _torch_load(path: Path, trusted: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as exc:
        if trusted:
            raise
        raise MemFactoryError(
            f"cannot load {path} safely ({type(exc).__name__}: {exc}); if this checkpoint is your own, "
            "load it with trusted=True"
        ) from exc


def load_checkpoint(
    path: str | os.PathLike,
    model: Any,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    restore_rng: bool = True,
    trusted: bool = False,
) -> dict[str, Any]:
    """Restore model weights, optimizer, scheduler and RNG states from a checkpoint folder.

    ``path`` may also be a run folder (its latest checkpoint is used). Returns the trainer state:
    ``{"step": int, "extra": dict, "time": float, "format": int, "peft": bool, "path": str}``.
    """
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        latest = latest_checkpoint(path)
        if latest is None:
            raise MemFactoryError(f"no complete checkpoint at {path} (expected {STATE_FILE} or checkpoints/step-*)")
        path = latest
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    if state.get("format") != FORMAT_VERSION:
        raise MemFactoryError(f"checkpoint {path} has format {state.get('format')}, expected {FORMAT_VERSION}")
    if optimizer is not None and not (path / "optimizer.pt").is_file():
        raise MemFactoryError(f"checkpoint {path} has no optimizer state")
    by_name = state.get("optimizer_keys") == OPTIMIZER_BY_NAME
    sharded = is_sharded(unwrap(model))
    if optimizer is not None and by_name != sharded:
        written = "a sharded (FSDP) run" if by_name else "an unsharded run"
        raise MemFactoryError(
            f"checkpoint {path} was written by {written}; resume it with the same kind of launch "
            f"({'FSDP' if by_name else 'single process or DDP'}), or load only its model weights"
        )
    _load_model(model, path / "model")
    _load_masters(model, path)
    if optimizer is not None:
        optim = _torch_load(path / "optimizer.pt", trusted)
        if sharded:
            load_optimizer_state(unwrap(model), optimizer, optim)
        else:
            optimizer.load_state_dict(optim)
    if scheduler is not None:
        if not (path / "scheduler.pt").is_file():
            raise MemFactoryError(f"checkpoint {path} has no scheduler state")
        scheduler.load_state_dict(_torch_load(path / "scheduler.pt", trusted))
    if restore_rng and (path / "rng.pt").is_file():
        _set_rng_state(_torch_load(path / "rng.pt", trusted))
    state["path"] = str(path)
    return state
