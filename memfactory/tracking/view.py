"""How a run is shown, the same in the terminal and in the web UI: status words, durations, progress.

Status words are the runs database's own (:data:`memfactory.tracking.runs.STATUSES`:
created, running, finished, failed, aborted); the UI translates them but never invents others.
Seconds per step and the ETA are computed here from the trainer's own step times; the training
session stores them in the run's row each step, so every reader shows the same numbers.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from memfactory.tracking import metric_keys as keys

ETA_WINDOW = 20  # steps the seconds-per-step median looks back over
STATUS_ICONS = {"created": "⏳", "running": "🟢", "finished": "✅", "failed": "❌", "aborted": "⏹️"}
NONE = "-"


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS`` (``0:00:42``, ``27:03:10``), rounded to the second; ``-`` when unknown."""
    if seconds is None:
        return NONE
    whole = round(max(0.0, float(seconds)))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def steps_text(step: int | None, total: int | None) -> str:
    """``12/300`` (or ``12`` when the total is unknown)."""
    return f"{step or 0}/{total}" if total else str(step or 0)


def seconds_per_step(records: Iterable[Mapping[str, Any]], window: int = ETA_WINDOW) -> float | None:
    """Median wall time per step over the last ``window`` steps of metrics records (a pause, such
    as a resume, does not skew it); with one step so far, that step's own ``time/step_s``."""
    records = list(records)
    points = []
    for record in records:
        try:
            points.append((int(record[keys.STEP]), float(record[keys.TIME])))
        except (KeyError, TypeError, ValueError):
            continue
    points = points[-(window + 1):]
    rates = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in itertools.pairwise(points) if s1 > s0 and t1 >= t0]
    if rates:
        return statistics.median(rates)
    for record in reversed(records):
        value = record.get(keys.STEP_S)
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return None


def eta_seconds(step: int, total: int | None, per_step: float | None) -> float | None:
    """Seconds left: steps to go times the seconds per step (0 when done, None when unknown)."""
    if not total:
        return None
    if step >= total:
        return 0.0
    return None if per_step is None else (total - step) * per_step
