"""Export a trained run: the LoRA adapter as is, or merged into the base model as a full model.

A run's checkpoint (``runs/<id>/checkpoints/step-N/model/``) holds either peft adapters
(``adapter_config.json`` + ``adapter_model.safetensors``) or full weights. ``--merge`` loads the
run's base model (``model.*`` of the run's own ``preset.yaml``), applies the adapter, folds it
into the weights (``merge_and_unload``) and saves an ordinary transformers folder with the
tokenizer, which any tool loads with ``AutoModelForCausalLM.from_pretrained`` — no peft needed.
Without ``--merge`` the checkpoint's model folder is copied unchanged.

QLoRA (4-bit base + LoRA) needs bitsandbytes and CUDA: :func:`require_qlora` says clearly which
one is missing. A QLoRA adapter is merged into a float base (the usual practice: merging into
4-bit weights would round the update away).
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

from memfactory.errors import MemFactoryError

DEFAULT_DB = "runs/memfactory.db"


@dataclass
class ResolvedCheckpoint:
    """A complete checkpoint folder and what it belongs to."""

    path: Path  # .../checkpoints/step-000020
    run_dir: Path | None  # the run folder (holds preset.yaml), when known
    run_id: str | None

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def is_adapter(self) -> bool:
        return (self.model_dir / "adapter_config.json").is_file()

    @property
    def step(self) -> int:
        import json

        from memfactory.trainer.checkpoint import STATE_FILE

        return int(json.loads((self.path / STATE_FILE).read_text(encoding="utf-8"))["step"])


def resolve_checkpoint(target: str, *, db: str | Path = DEFAULT_DB) -> ResolvedCheckpoint:
    """``target`` = a run id (looked up in the runs DB), a run folder or a checkpoint folder.

    A run id or run folder means its newest complete checkpoint.
    """
    from memfactory.trainer.checkpoint import STATE_FILE, latest_checkpoint

    path = Path(target).expanduser()
    run_id = None
    if path.is_dir():
        if (path / STATE_FILE).is_file():
            run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
            return ResolvedCheckpoint(path, run_dir if run_dir and (run_dir / "preset.yaml").is_file() else None, None)
        if path.name == "model" and (path.parent / STATE_FILE).is_file():
            return resolve_checkpoint(str(path.parent), db=db)
        if not (path / "checkpoints").is_dir() and not (path / "preset.yaml").is_file():
            raise MemFactoryError(
                f"{target!r} is a folder but neither a run folder (preset.yaml, checkpoints/) nor a "
                "checkpoint folder (trainer_state.json)"
            )
        run_dir = path
    else:
        from memfactory.tracking.runs import RunsDB

        db_path = Path(db)
        if not db_path.is_file():
            raise MemFactoryError(
                f"{target!r} is not a folder and there is no runs database at {db_path} to look it up "
                "(pass --db PATH, a run folder or a checkpoint folder)"
            )
        record = RunsDB(db_path).require(target)  # unknown id: a MemFactoryError with suggestions
        run_dir, run_id = Path(record.run_dir), record.id
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        name = f"run {run_id!r}" if run_id else f"run folder {str(run_dir)!r}"
        raise MemFactoryError(
            f"{name} has no complete checkpoint in {run_dir / 'checkpoints'}; checkpoints are written every "
            "trainer.save_every steps and at the last step"
        )
    return ResolvedCheckpoint(checkpoint, run_dir, run_id)


def _base_model_config(ckpt: ResolvedCheckpoint):
    """The base model of the run: its preset's ``model`` section (falls back to the adapter's record)."""
    from memfactory.config import ModelConfig, load_preset

    if ckpt.run_dir is not None and (ckpt.run_dir / "preset.yaml").is_file():
        model = load_preset(ckpt.run_dir / "preset.yaml").model
    else:
        import json

        config = json.loads((ckpt.model_dir / "adapter_config.json").read_text(encoding="utf-8"))
        base = config.get("base_model_name_or_path")
        if not base:
            raise MemFactoryError(
                f"checkpoint {ckpt.path} has no preset.yaml next to it and its adapter names no base model"
            )
        model = ModelConfig(path=base)
    return model.model_copy(update={"checkpoint": str(ckpt.model_dir), "backend": "hf"})


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise MemFactoryError(f"output folder {out} already exists and is not empty; pick another --out or --force")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)


def default_out(ckpt: ResolvedCheckpoint, merge: bool) -> Path:
    root = (ckpt.run_dir or ckpt.path.parent) / "export"
    return root / f"{ckpt.path.name}-{'merged' if merge else ('adapter' if ckpt.is_adapter else 'model')}"


def merge_adapter(ckpt: ResolvedCheckpoint, out: Path) -> Path:
    """Base + adapter -> ``merge_and_unload()`` -> a full ``save_pretrained`` folder with the tokenizer."""
    from memfactory.backends.sources import save_merged

    if not ckpt.is_adapter:
        raise MemFactoryError(
            f"checkpoint {ckpt.path} holds full model weights, not a LoRA adapter, so there is nothing to merge; "
            "export it without --merge"
        )
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_merged(_base_model_config(ckpt), tmp)
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
    db: str | Path = DEFAULT_DB,
    force: bool = False,
) -> Path:
    """Export a run's newest checkpoint (or the given checkpoint folder); returns the output folder.

    ``merge=True``: a full model + tokenizer folder (needs a LoRA checkpoint). ``merge=False``: a
    copy of the checkpoint's model folder (the adapter, or the full weights of a full fine-tune).
    """
    ckpt = resolve_checkpoint(target, db=db)
    out_path = Path(out).expanduser() if out else default_out(ckpt, merge)
    _prepare_out(out_path, force)
    if merge:
        return merge_adapter(ckpt, out_path)
    shutil.copytree(ckpt.model_dir, out_path, dirs_exist_ok=True)
    return out_path


def require_qlora() -> None:
    """QLoRA needs bitsandbytes and a CUDA device; raise a MemFactoryError naming what is missing."""
    import torch

    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install bitsandbytes)")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (bitsandbytes 4-bit kernels do not run on this CPU-only torch)")
    if missing:
        raise MemFactoryError(
            "QLoRA (4-bit base model + LoRA) needs "
            + " and ".join(missing)
            + "; use plain LoRA (trainer.lora) on this machine"
        )
