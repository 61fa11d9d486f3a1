"""Export a trained run: the LoRA adapter as is, or merged into the base model as a full model.

A run's checkpoint (``runs/<id>/checkpoints/step-N/model/``) holds either peft adapters
(``adapter_config.json`` + ``adapter_model.safetensors``) or full weights. ``--merge`` loads the
run's base model (``model.*`` of the run's own ``preset.yaml``), applies the adapter, folds it
into the weights (``merge_and_unload``) and saves an ordinary transformers folder with the
tokenizer, which any tool loads with ``AutoModelForCausalLM.from_pretrained`` — no peft needed.
Without ``--merge`` the checkpoint's model folder is copied unchanged.

A QLoRA adapter is merged into a float base (the usual practice: merging into 4-bit weights would
round the update away). ``--dtype`` sets the dtype of the written weights (the merge runs in the
run's own dtype first); for an adapter copy it casts the adapter's floating-point tensors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from memfactory.backends.sources import resolve_dtype, save_merged
from memfactory.config import ModelConfig, load_preset
from memfactory.errors import MemFactoryError
from memfactory.targets import DEFAULT_RUNS_DB, Checkpoint, resolve_checkpoint, with_checkpoint
from memfactory.tracking.metrics import RunDir


def run_checkpoint(target: str, db: str | Path | None = None) -> Checkpoint:
    """``target`` = a run id (looked up in the runs DB), a run folder or a checkpoint folder (the rules of
    :func:`memfactory.targets.resolve_checkpoint`); a run means its newest complete checkpoint. A bare
    weights folder is refused: an export is named after its run's checkpoint step."""
    checkpoint = resolve_checkpoint(target, db or DEFAULT_RUNS_DB)
    if checkpoint.path is None:
        raise MemFactoryError(
            f"{target!r} is a folder but neither a run folder (preset.yaml, checkpoints/) nor a "
            "checkpoint folder (trainer_state.json)"
        )
    return checkpoint


def base_model_config(ckpt: Checkpoint) -> ModelConfig:
    """The base model of the run: its preset's ``model`` section (falls back to the adapter's record)."""
    if ckpt.run_dir is not None and RunDir(ckpt.run_dir).preset_path.is_file():
        model = load_preset(RunDir(ckpt.run_dir).preset_path).model
    else:
        config = json.loads((ckpt.model_dir / "adapter_config.json").read_text(encoding="utf-8"))
        base = config.get("base_model_name_or_path")
        if not base:
            raise MemFactoryError(
                f"checkpoint {ckpt.path} has no preset.yaml next to it and its adapter names no base model"
            )
        model = ModelConfig(path=base)
    return with_checkpoint(model.model_copy(update={"backend": "hf"}), ckpt.model_dir)


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise MemFactoryError(f"output folder {out} already exists and is not empty; pick another --out or --force")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)


EXPORT_DTYPES = ("float32", "bfloat16", "float16")


def default_out(ckpt: Checkpoint, merge: bool, dtype: str | None = None) -> Path:
    root = (ckpt.run_dir or ckpt.path.parent) / "export"
    kind = "merged" if merge else ("adapter" if ckpt.is_adapter else "model")
    return root / f"{ckpt.path.name}-{kind}{f'-{dtype}' if dtype else ''}"


def check_dtype(dtype: str | None) -> str | None:
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise MemFactoryError(f"export dtype {dtype!r} is not one of {', '.join(EXPORT_DTYPES)}")
    return dtype


def cast_weights(folder: Path, dtype: str) -> None:
    """Every ``*.safetensors`` file of ``folder`` with its floating-point tensors cast to ``dtype``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    target = resolve_dtype(dtype)
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
        cast = {key: t.to(target) if t.is_floating_point() else t for key, t in tensors.items()}
        save_file(cast, str(path), metadata=metadata)


def merge_adapter(ckpt: Checkpoint, out: Path, dtype: str | None = None) -> Path:
    """Base + adapter -> ``merge_and_unload()`` -> a full ``save_pretrained`` folder with the tokenizer."""
    if not ckpt.is_adapter:
        raise MemFactoryError(
            f"checkpoint {ckpt.path} holds full model weights, not a LoRA adapter, so there is nothing to merge; "
            "export it without --merge"
        )
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_merged(base_model_config(ckpt), tmp, dtype)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_checkpoint(
    target: str,
    out: str | Path | None = None,
    *,
    merge: bool = False,
    db: str | Path | None = None,
    force: bool = False,
    dtype: str | None = None,
) -> Path:
    """Export a run's newest checkpoint (or the given checkpoint folder); returns the output folder.

    ``merge=True``: a full model + tokenizer folder (needs a LoRA checkpoint). ``merge=False``: a
    copy of the checkpoint's model folder (the adapter, or the full weights of a full fine-tune).
    ``dtype`` (float32, bfloat16, float16): the written weights' dtype; None keeps the run's.
    """
    check_dtype(dtype)
    ckpt = run_checkpoint(target, db)
    out_path = Path(out).expanduser() if out else default_out(ckpt, merge, dtype)
    _prepare_out(out_path, force)
    if merge:
        return merge_adapter(ckpt, out_path, dtype)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(ckpt.model_dir, tmp)
        if dtype is not None:
            cast_weights(tmp, dtype)
        if out_path.is_dir():  # an empty folder given as --out
            out_path.rmdir()
        tmp.rename(out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_path
