"""A run's folder and its JSON-lines files: THE per-step store, written so a UI can tail it live.

metrics.jsonl is the only place a run's per-step metrics live (the runs database keeps one row per
run with summary columns: step, last/best reward, peak GiB, seconds per step, ETA). It is
crash-safe (whole lines, flushed), can be tailed while training runs, and travels with the run
folder. Everything that shows steps (the Train tab, the Runs tab, ``memfactory runs show``, the
demo's table) reads it through :func:`read_records`, one cached incremental reader.

Layout of ``runs/<id>/``::

    preset.yaml      the preset this run trains (a copy, so later edits don't change history)
    metrics.jsonl    one JSON object per step: {"step": 3, "time": 1764454743.1, "loss": 0.12, ...}
    samples.jsonl    one JSON object per step: {"step": 3, "time": ..., "rewards": [[...], ...],
                     "samples": [...]} (raw group rewards, one inner list per GRPO group)
    stdout.log       the trainer's stdout/stderr
    checkpoints/     step-000020/ ... (see memfactory.trainer.checkpoint)

Every line is written whole and flushed at once, so a reader sees a step as soon as it is done.
NaN and inf become ``null`` (strict JSON). A reader treats a last line without its newline as
not yet written (the writer may be in the middle of it).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from memfactory.tracking import metric_keys as keys

if TYPE_CHECKING:
    from typing_extensions import Self


class RunDir:
    """Paths inside one run folder; :meth:`create` makes the folder and ``checkpoints/``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def preset_path(self) -> Path:
        return self.path / "preset.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples_path(self) -> Path:
        return self.path / "samples.jsonl"

    @property
    def log_path(self) -> Path:
        return self.path / "stdout.log"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def swanlab_dir(self) -> Path:
        """Where SwanLab's offline/local run files go (``swanlog/run-*/``)."""
        return self.path / "swanlog"

    def create(self) -> RunDir:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        return self

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


def to_jsonable(value: Any) -> Any:
    """``value`` with NaN/inf as None, numpy/torch scalars and arrays as Python numbers and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    tolist = getattr(value, "tolist", None)  # numpy arrays/scalars and torch tensors
    if callable(tolist):
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            tolist = value.tolist
        return to_jsonable(tolist())
    if hasattr(value, "__float__"):
        return to_jsonable(float(value))
    return str(value)


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(to_jsonable(record), ensure_ascii=False, allow_nan=False)


class MetricsChunk(NamedTuple):
    """What :func:`read_metrics` returns: complete records and the line to resume from."""

    records: list[dict[str, Any]]
    next_line: int


def read_metrics(path: str | Path, since_line: int = 0) -> MetricsChunk:
    """Complete JSON lines of ``path`` from line ``since_line`` (0-based) on.

    A last line without its newline is still being written: it is neither returned nor counted,
    so the next call with ``next_line`` picks it up. A malformed complete line (left by a crash)
    is skipped but counted. A missing file gives no records.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return MetricsChunk([], since_line)
    lines = data.split(b"\n")
    complete = lines[:-1]  # the element after the last newline is partial (or empty)
    records = []
    for raw in complete[since_line:]:
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return MetricsChunk(records, max(since_line, len(complete)))


class RecordsCache:
    """Incremental readers of growing JSON-lines files (re-read from the start when one shrinks or is
    replaced: a resume's ``truncate_after`` writes a new file, which may outgrow the old one before the
    next read).

    A UI polls the same few files every second or two: each call reads only the lines appended
    since the last one. At most ``limit`` files are remembered (least recently read dropped).
    """

    def __init__(self, limit: int = 32) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, tuple[tuple[int, int], int, int, list[dict[str, Any]]]] = {}
        self.limit = limit

    def read(self, path: str | Path) -> list[dict[str, Any]]:
        key = str(path)
        try:
            stat = Path(path).stat()
        except OSError:
            return []
        size, file_id = stat.st_size, (stat.st_dev, stat.st_ino)
        with self._lock:
            seen_id, next_line, seen, records = self._files.get(key, (file_id, 0, 0, []))
            if size < seen or file_id != seen_id:  # truncated or replaced (a resume rewrote it): start over
                next_line, seen, records = 0, -1, []
            if size != seen or not records:
                chunk = read_metrics(path, next_line)
                records = records + chunk.records
                self._files.pop(key, None)
                self._files[key] = (file_id, chunk.next_line, size, records)
                while len(self._files) > self.limit:
                    self._files.pop(next(iter(self._files)))
            return list(records)


_CACHE = RecordsCache()


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a metrics.jsonl / samples.jsonl, oldest first (cached, read incrementally)."""
    return _CACHE.read(path)


def truncate_after(path: str | Path, step: int) -> int:
    """Rewrite ``path`` keeping only complete records with ``step <= step``; returns lines dropped.

    Used on resume from a checkpoint at ``step`` so curves stay continuous. The rewrite goes to a
    temporary file that replaces the original (a crash never leaves half a file).
    """
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for raw in path.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            keep = isinstance(record, dict) and int(record.get(keys.STEP, -1)) <= step
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError):
            keep = False
        if keep:
            kept.append(raw)
        else:
            dropped += 1
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(b"".join(line + b"\n" for line in kept))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return dropped


class MetricsWriter:
    """Appends per-step records to a run's metrics.jsonl and samples.jsonl.

    Opening repairs a file whose last line was cut off by a crash (drops the partial line), so
    appended lines never glue onto it. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, run_dir: str | Path | RunDir):
        self.run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.run_dir.path.mkdir(parents=True, exist_ok=True)
        self._metrics = self._open(self.run_dir.metrics_path)
        self._samples = self._open(self.run_dir.samples_path)

    @staticmethod
    def _open(path: Path):
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data[: data.rfind(b"\n") + 1]
                with path.open("r+b") as fh:
                    fh.truncate(len(keep))
        return path.open("a", encoding="utf-8")

    def _append(self, fh, record: dict[str, Any]) -> None:
        fh.write(_dumps(record) + "\n")
        fh.flush()

    def write(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Append ``{"step", "time", **metrics}`` to metrics.jsonl; returns the record written."""
        record = {keys.STEP: int(step), keys.TIME: time.time(), **metrics}
        self._append(self._metrics, record)
        return record

    def write_samples(
        self,
        step: int,
        samples: Iterable[dict[str, Any]] = (),
        group_rewards: Iterable[Iterable[float]] | None = None,
    ) -> dict[str, Any]:
        """Append a step's trajectory summaries and its raw reward distribution to samples.jsonl.

        ``samples``: short per-trajectory dicts (question, answer, reward, memory excerpt, ...).
        ``group_rewards``: one list of rewards per GRPO group, as they were, not only mean/std.
        """
        record: dict[str, Any] = {keys.STEP: int(step), keys.TIME: time.time()}
        if group_rewards is not None:
            record[keys.GROUP_REWARDS] = [list(group) for group in group_rewards]
        record[keys.TRAJECTORIES] = list(samples)
        self._append(self._samples, record)
        return record

    def truncate_after(self, step: int) -> int:
        """Drop records after ``step`` from both files (on resume); returns lines dropped."""
        self._metrics.close()
        self._samples.close()
        dropped = truncate_after(self.run_dir.metrics_path, step) + truncate_after(self.run_dir.samples_path, step)
        self._metrics = self._open(self.run_dir.metrics_path)
        self._samples = self._open(self.run_dir.samples_path)
        return dropped

    def close(self) -> None:
        self._metrics.close()
        self._samples.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
