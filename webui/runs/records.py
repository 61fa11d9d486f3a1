"""What the Runs tab shows and does, without Gradio: the runs table, one run's figures and log, a
run's preset file, deleting a run, and several runs' reward curves on one chart.

The table is ``<workspace>/runs/memfactory.db`` (memfactory.tracking.runs: one row per run with its
summary); curves come from each run's ``metrics.jsonl`` through the one cached reader
(memfactory.tracking.metrics.read_records). Refreshing also marks runs whose trainer died as
failed (``RunsDB.reconcile``), so nothing spins forever after a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from memfactory.errors import MemFactoryError
from memfactory.tracking import process
from memfactory.tracking.metrics import RunDir, read_records
from memfactory.tracking.view import format_duration, steps_text
from webui import plots, workspace
from webui.i18n import t

COLUMNS = ["run", "status", "preset", "steps", "best reward", "last reward", "peak GiB", "duration", "ETA",
           "started (UTC)"]


def _reward(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _gib(value: float | None) -> float | None:
    """The run's peak device memory (``RunRecord.peak_gib``, from ``hw/peak_gib``); None before any step."""
    return None if value is None else round(float(value), 2)


def runs_table(db) -> pd.DataFrame:
    """One row per run, newest first (after marking runs with a dead trainer as failed)."""
    db.reconcile()
    rows = []
    for run in db.list_runs():
        eta = format_duration(run.eta_s) if run.status == "running" else format_duration(None)
        rows.append([run.id, run.status, run.name, steps_text(run.step, run.total_steps), _reward(run.best_reward),
                     _reward(run.last_reward), _gib(run.peak_gib), format_duration(run.duration_s), eta,
                     run.iso(run.started_at or run.created_at)])
    return pd.DataFrame(rows, columns=COLUMNS)


def run_metrics(db, run_id: str) -> list[dict[str, Any]]:
    """A run's per-step records, from its ``metrics.jsonl`` (empty for an unknown run)."""
    record = db.get(run_id)
    return read_records(RunDir(record.run_dir).metrics_path) if record is not None else []


def overlay(db, run_ids: list[str]) -> Any:
    return plots.overlay_figure({run_id: run_metrics(db, run_id) for run_id in run_ids or []})


def run_details(db, run_id: str | None) -> tuple[dict[str, Any], str]:
    """One run's figures (reward, distribution, loss, KL, length, clip) and the tail of its log."""
    record = db.get(run_id) if run_id else None
    if record is None:
        return plots.all_figures(None), ""
    folder = RunDir(record.run_dir)
    figures = plots.all_figures(read_records(folder.metrics_path) or None)
    figures["distribution"] = plots.reward_distribution_figure(read_records(folder.samples_path) or None)
    log = process.tail(folder.log_path, 40)
    if record.error:
        log = f"{log}\n\n[error] {record.error}".strip()
    return figures, log


def run_preset_file(db, run_id: str | None) -> Path:
    """``runs/<id>/preset.yaml`` of a run, refused unless it lies inside the workspace's runs folder."""
    if not run_id:
        raise MemFactoryError("pick a run first")
    record = db.require(run_id)
    if not record.run_dir:
        raise MemFactoryError(f"run {run_id} has no folder recorded")
    path = workspace.confine(workspace.runs_dir(), Path(record.run_dir) / "preset.yaml")
    if not path.is_file():
        raise MemFactoryError(f"run {run_id} has no preset.yaml in {record.run_dir}")
    return path


def delete_run(db, run_id: str | None, confirmed: bool) -> str:
    """Delete a finished run's row, and its folder (metrics.jsonl included) when in the workspace's runs folder.

    Refuses without ``confirmed`` and (RunsDB.delete) while the run's trainer is alive. Returns a
    message saying what was removed; a folder outside the runs folder is never touched.
    """
    if not run_id:
        raise MemFactoryError("pick a run first")
    if not confirmed:
        raise MemFactoryError(f"tick '{t('runs_delete_confirm')}' to delete run {run_id}")
    record = db.require(run_id)
    folder: Path | None = None
    if record.run_dir:
        runs_root = workspace.runs_dir().resolve()
        try:
            candidate = workspace.confine(runs_root, record.run_dir)
        except MemFactoryError:
            candidate = None
        if candidate is not None and candidate.parent == runs_root and candidate.name == run_id:
            folder = candidate
    db.delete(run_id, remove_files=folder is not None)
    if folder is None:
        kept = f"; its folder {record.run_dir} is outside {workspace.runs_dir()} and was left in place" \
            if record.run_dir and Path(record.run_dir).exists() else ""
        return f"deleted run {run_id}{kept}"
    if folder.exists():
        return f"deleted run {run_id} from the database, but its folder {folder} could not be removed"
    return f"deleted run {run_id} and its folder {folder}"
