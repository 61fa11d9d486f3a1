"""The Export tab's work (no Gradio): pick a run's checkpoint, export it with ``memfactory export``'s own
code, list what was written, and load the result to run one greedy prompt.

:class:`ExportRequest` is the one source of both the shown command (:meth:`ExportRequest.command`, the
Train tab's :class:`webui.train.command.Command`) and the call that runs
(:meth:`ExportRequest.export` -> :func:`memfactory.export.export_checkpoint`), so what the user copies to a
terminal is what the button does.
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from memfactory.backends.build import build_backend
from memfactory.config import ModelConfig
from memfactory.errors import MemFactoryError
from memfactory.export import EXPORT_DTYPES, base_model_config, export_checkpoint, run_checkpoint
from memfactory.targets import with_checkpoint
from memfactory.trainer.layout import list_checkpoints
from memfactory.types import ChatPrompt, SamplingParams
from webui import workspace
from webui.train.command import Command

MODES = ("adapter", "merged")  # adapter: the checkpoint's model folder as it is; merged: folded into the base
DEFAULT_PROMPT = "In one sentence, what is a memory agent?"
TEST_TOKENS = 32


def run_choices() -> list[str]:
    """Run ids with at least one complete checkpoint, newest first."""
    db = workspace.open_runs_db()
    return [r.id for r in db.list_runs() if list_checkpoints(r.run_dir)]


def checkpoint_choices(run_id: str | None) -> list[str]:
    """A run's complete checkpoints (``step-N`` folder names), newest first."""
    if not run_id:
        return []
    record = workspace.open_runs_db().get(run_id)
    return [] if record is None else [path.name for path in reversed(list_checkpoints(record.run_dir))]


@dataclass(frozen=True)
class ExportRequest:
    """The tab's choices: which run and checkpoint, adapter or merged, the dtype, where, replace or not."""

    run: str
    checkpoint: str = ""  # a step-N folder of the run; "" = its newest complete checkpoint
    mode: str = "adapter"
    dtype: str = ""  # "" = the run's own
    out: str = ""  # "" = <run>/export/<step>-<kind>[-dtype]
    force: bool = False

    def target(self) -> str:
        """What ``memfactory export`` is given: the run id, or the chosen checkpoint's folder."""
        run = (self.run or "").strip()
        if not run:
            raise MemFactoryError("pick a run to export")
        if not self.checkpoint:
            return run
        record = workspace.open_runs_db().require(run)
        folder = Path(record.run_dir) / "checkpoints" / workspace.check_name(self.checkpoint, "checkpoint")
        if not folder.is_dir():
            raise MemFactoryError(f"checkpoint {self.checkpoint!r} of run {run!r} no longer exists ({folder}); "
                                  "press Refresh and pick another")
        return str(folder)

    def check(self) -> None:
        if self.mode not in MODES:
            raise MemFactoryError(f"export mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.dtype and self.dtype not in EXPORT_DTYPES:
            raise MemFactoryError(f"dtype {self.dtype!r} is not one of {', '.join(EXPORT_DTYPES)}")

    def argv(self) -> list[str]:
        """``memfactory export``'s arguments for these choices."""
        self.check()
        args = ["export", self.target()]
        args += ["--merge"] if self.mode == "merged" else []
        args += ["--dtype", self.dtype] if self.dtype else []
        args += ["--out", self.out.strip()] if self.out.strip() else []
        args += ["--db", str(workspace.runs_db())]
        args += ["--force"] if self.force else []
        return args

    def command(self, python: str = sys.executable) -> Command:
        return Command((python, "-m", "memfactory", *self.argv()))

    def export(self) -> Path:
        """Export with ``memfactory export``'s code; returns the folder written."""
        self.check()
        return export_checkpoint(self.target(), self.out.strip() or None, merge=self.mode == "merged",
                                 db=workspace.runs_db(), force=self.force, dtype=self.dtype or None)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


FILE_COLUMNS = ["file", "size", "bytes"]


def files_frame(folder: str | Path) -> pd.DataFrame:
    """Every file under ``folder`` with its size, then the total."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    rows = [{"file": p.relative_to(root).as_posix(), "size": human_size(p.stat().st_size), "bytes": p.stat().st_size}
            for p in files]
    total = sum(row["bytes"] for row in rows)
    rows.append({"file": f"total ({len(files)} files)", "size": human_size(total), "bytes": total})
    return pd.DataFrame(rows, columns=FILE_COLUMNS)


def model_config(folder: str | Path, request: ExportRequest) -> ModelConfig:
    """How the exported folder loads: a full model on its own, an adapter on the run's base model."""
    path = Path(folder)
    if (path / "adapter_config.json").is_file():
        return with_checkpoint(base_model_config(run_checkpoint(request.target(), workspace.runs_db())), path)
    if (path / "config.json").is_file():
        return ModelConfig(path=str(path), dtype="auto")
    raise MemFactoryError(f"{path} holds neither adapter_config.json nor config.json: not an exported model")


def usage(folder: str | Path, request: ExportRequest) -> str:
    """How to use the export from the command line (markdown)."""
    cfg = model_config(folder, request)
    if cfg.checkpoint:
        serve = Command(("memfactory", "serve", "--model", cfg.path, "--checkpoint", str(folder))).shell()
    else:
        serve = Command(("memfactory", "serve", "--model", str(folder))).shell()
    lines = [f"`{serve}`"]
    if not cfg.checkpoint:
        lines.append(f"`{Command(('memfactory', 'eval', str(folder), '--sets', 'eval_docqa')).shell()}`")
    return "Use it: " + " · ".join(lines)


@dataclass
class TestResult:
    text: str
    seconds: float
    model: str


def load_and_test(folder: str | Path, request: ExportRequest, prompt: str = DEFAULT_PROMPT) -> TestResult:
    """Load the exported folder the way ``memfactory serve`` / ``eval`` do and answer ``prompt`` greedily."""
    if not (prompt or "").strip():
        raise MemFactoryError("type a test prompt first")
    if not Path(folder).is_dir():
        raise MemFactoryError(f"{folder} does not exist: export first")
    cfg = model_config(folder, request)
    began = time.perf_counter()
    backend: Any = build_backend(cfg)
    try:
        (generation,) = backend.generate([ChatPrompt([{"role": "user", "content": prompt.strip()}])],
                                         SamplingParams(max_new_tokens=TEST_TOKENS, temperature=0.0))
    finally:
        del backend
        gc.collect()
    model = cfg.path + (f" + {cfg.checkpoint}" if cfg.checkpoint else "")
    return TestResult(generation.text, time.perf_counter() - began, model)
