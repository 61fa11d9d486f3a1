"""Where a run's checkpoints live and which of them are complete, without importing torch.

``<run_dir>/checkpoints/step-000020/`` holds one checkpoint (:mod:`memfactory.trainer.checkpoint`
writes and reads it); ``trainer_state.json`` is written last, so a ``step-*`` folder without it
never counts. Commands, the web UI and :mod:`memfactory.targets` find checkpoints here without
loading the training stack.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{int(step):06d}"


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    """``run_dir/checkpoints`` (a path that already ends in ``checkpoints`` is used as is)."""
    path = Path(run_dir)
    return path if path.name == "checkpoints" else path / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest step first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None
