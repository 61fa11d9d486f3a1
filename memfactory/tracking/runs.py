"""The runs database: one SQLite row per training run plus its scalar curves.

Two processes use it at once: the trainer subprocess writes (status, progress, metrics) while the
web UI reads. So the file is opened in WAL mode (readers never block the writer) with a busy
timeout (writers wait for each other instead of failing), every write runs in a ``BEGIN IMMEDIATE``
transaction (takes the write lock up front, so the busy timeout always applies), and each thread
gets its own connection (Gradio handlers run on worker threads).

Tables
------
``runs``: ``id`` TEXT primary key, ``name`` (preset name), ``preset_path``, ``run_dir``, ``status``
(one of :data:`STATUSES`), ``pid`` and ``pid_start`` (the process's start time, so a recycled pid
is not mistaken for the trainer), ``created_at`` / ``started_at`` / ``ended_at`` (UNIX seconds,
REAL), ``step``, ``total_steps``, ``best_reward``, ``last_reward``, ``peak_gib`` (the largest
``hw/peak_gib`` metric logged: peak device memory over ranks, GiB), ``error`` (text), ``meta``
(JSON object: attention implementation, device, model path, ...).

``metrics``: long format ``(run_id, step, key, value REAL, time REAL)`` with primary key
``(run_id, step, key)``: re-logging a step after a resume replaces the old value. NaN and inf are
stored as NULL. :meth:`RunsDB.metrics_frame` pivots it into one wide pandas DataFrame.

Typical use::

    db = RunsDB("runs/memfactory.db")
    run_id = db.new_run_id("memagent_tiny_cpu")
    db.create_run("memagent_tiny_cpu", f"runs/{run_id}", run_id=run_id, total_steps=60)
    db.set_status(run_id, "running")              # records pid and started_at
    db.log_metrics(run_id, 1, {"loss": 0.3, "reward/mean": 0.5})
    db.update_progress(run_id, 1, reward=0.5)
    db.set_status(run_id, "finished")
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

from memfactory.errors import MemFactoryError
from memfactory.sqlite import connect, immediate, sqlite_errors

STATUSES = ("created", "running", "finished", "failed", "aborted")
ACTIVE_STATUSES = ("created", "running")
TERMINAL_STATUSES = ("finished", "failed", "aborted")
LOG_TAIL_LINES = 20
PEAK_METRIC = "hw/peak_gib"  # the trainer's per-step device peak (memfactory.trainer.hardware.PEAK_KEY)

_RUN_COLUMNS: dict[str, type] = {
    "id": str,
    "name": str,
    "preset_path": str,
    "run_dir": str,
    "status": str,
    "pid": int,
    "pid_start": int,
    "created_at": float,
    "started_at": float,
    "ended_at": float,
    "step": int,
    "total_steps": int,
    "best_reward": float,
    "last_reward": float,
    "peak_gib": float,
    "error": str,
    "meta": str,
}


@dataclass
class RunRecord:
    """One row of the ``runs`` table; times are UNIX seconds (UTC), ``meta`` is a decoded dict."""

    id: str
    name: str
    run_dir: str
    status: str = "created"
    preset_path: str | None = None
    pid: int | None = None
    pid_start: int | None = None
    created_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    step: int = 0
    total_steps: int | None = None
    best_reward: float | None = None
    last_reward: float | None = None
    peak_gib: float | None = None
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_active(self) -> bool:
        """Created or running: the UI should show it as in progress."""
        return self.status in ACTIVE_STATUSES

    def process_alive(self) -> bool:
        """Whether this run's recorded process still runs (and is the same process, not a recycled pid)."""
        if not is_alive(self.pid):
            return False
        return self.pid_start is None or process_start(self.pid) in (None, self.pid_start)

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to end (or to now while still running)."""
        if self.started_at is None:
            return None
        return (self.ended_at or time.time()) - self.started_at

    @property
    def progress(self) -> float | None:
        """Fraction of steps done, 0..1, when the total is known."""
        if not self.total_steps:
            return None
        return min(1.0, (self.step or 0) / self.total_steps)

    @staticmethod
    def iso(ts: float | None) -> str:
        """A timestamp as ``2026-11-29 22:19:03`` (UTC), or ``-``."""
        if ts is None:
            return "-"
        return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunRecord:
        data = dict(row)
        try:
            data["meta"] = json.loads(data.get("meta") or "{}")
        except json.JSONDecodeError:
            data["meta"] = {"_unparsed": data.get("meta")}
        data["step"] = data.get("step") or 0
        known = {k: data.get(k) for k in cls.__dataclass_fields__}
        return cls(**known)


def slugify(text: str, max_len: int = 32) -> str:
    """Lowercase ``a-z0-9-`` slug of ``text`` (``run`` if nothing is left)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].strip("-") or "run"


def new_run_id(name: str) -> str:
    """A run id that sorts by creation time: ``20261129-221903-memagent-tiny-cpu-3f2a``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{slugify(name)}-{secrets.token_hex(2)}"


def is_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an exited child nobody reaped yet)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        # the state letter follows the parenthesised command name, which may itself hold spaces
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust os.kill
    return state not in ("Z", "X")


def process_start(pid: int | None) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None if unknown.

    Stored with a run's pid so a recycled pid (a new, unrelated process) is not taken for the
    trainer.
    """
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])  # field 22 of stat(5); fields[0] is field 3
    except (OSError, IndexError, ValueError):
        return None


def tail_lines(path: str | Path, n: int = LOG_TAIL_LINES, max_bytes: int = 64_000) -> list[str]:
    """The last ``n`` lines of a text file (empty list if missing), reading at most ``max_bytes``."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-n:]


def _finite(value: Any) -> float | None:
    """``value`` as a float, ``None`` for NaN/inf; raises TypeError/ValueError if not numeric."""
    if isinstance(value, str):
        raise TypeError("strings are not metrics")
    number = float(value)  # ints, bools, numpy and 0-d torch scalars all support __float__
    return number if math.isfinite(number) else None


class RunsDB:
    """Access to the runs database at ``path`` (created with its parent folder on first use).

    Every method may raise :class:`MemFactoryError` when the file is locked for longer than
    ``timeout`` seconds, is not a SQLite database, or cannot be opened.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0):
        self.path = Path(path)
        self.timeout = timeout
        self._local = threading.local()
        with self._errors("open"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._ensure_schema()

    # -- connection handling (memfactory/sqlite.py: WAL, busy timeout, errors, transactions) ---

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's sqlite-utils Database (one connection per thread and process)."""
        db = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            db = sqlite_utils.Database(connect(self.path, timeout=self.timeout))
            self._local.db, self._local.pid = db, os.getpid()
        return db

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def _errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        """Turn SQLite failures into one readable MemFactoryError naming the file."""
        return sqlite_errors(
            f"runs database {self.path}",
            action,
            path=self.path,
            timeout=self.timeout,
            locked_hint="Is a stuck trainer or another tool holding it?",
        )

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[sqlite_utils.Database]:
        """A write transaction that takes the lock first, so the busy timeout covers it."""
        with self._errors(action):
            db = self.db
            with immediate(db.conn):
                yield db

    def _ensure_schema(self) -> None:
        with self._write("create tables") as db:
            db["runs"].create(_RUN_COLUMNS, pk="id", if_not_exists=True)
            missing = {k: v for k, v in _RUN_COLUMNS.items() if k not in db["runs"].columns_dict}
            for column, kind in missing.items():  # a database made by an older version
                db["runs"].add_column(column, kind)
            db["metrics"].create(
                {"run_id": str, "step": int, "key": str, "value": float, "time": float},
                pk=("run_id", "step", "key"),
                if_not_exists=True,
            )
            db["runs"].create_index(["status"], if_not_exists=True)

    # -- runs ----------------------------------------------------------------------------------

    new_run_id = staticmethod(new_run_id)
    is_alive = staticmethod(is_alive)

    def create_run(
        self,
        name: str,
        run_dir: str | Path,
        *,
        run_id: str | None = None,
        preset_path: str | Path | None = None,
        total_steps: int | None = None,
        meta: dict[str, Any] | None = None,
        pid: int | None = None,
    ) -> RunRecord:
        """Insert a ``created`` run and return it; ``run_id`` defaults to :func:`new_run_id`."""
        run_id = run_id or new_run_id(name)
        row = {
            "id": run_id,
            "name": name,
            "preset_path": str(preset_path) if preset_path is not None else None,
            "run_dir": str(run_dir),
            "status": "created",
            "pid": pid,
            "created_at": time.time(),
            "step": 0,
            "total_steps": total_steps,
            "meta": json.dumps(meta or {}, default=str),
        }
        with self._write("create a run") as db:
            if db.execute("SELECT 1 FROM runs WHERE id = ?", [run_id]).fetchone():
                raise MemFactoryError(f"run {run_id!r} already exists in {self.path}")
            db["runs"].insert(row)
        return self.require(run_id)

    def get(self, run_id: str) -> RunRecord | None:
        """The run, or ``None`` if no run has this id."""
        with self._errors("read a run"):
            rows = list(self.db["runs"].rows_where("id = ?", [run_id]))
        return RunRecord.from_row(rows[0]) if rows else None

    def require(self, run_id: str) -> RunRecord:
        """The run, or a MemFactoryError that suggests the closest existing ids."""
        record = self.get(run_id)
        if record is None:
            raise MemFactoryError(self.unknown_run_message(run_id))
        return record

    def unknown_run_message(self, run_id: str) -> str:
        ids = [r.id for r in self.list_runs()]
        close = difflib.get_close_matches(run_id, ids, n=3, cutoff=0.4)
        close += [i for i in ids if run_id and run_id in i and i not in close][:3]
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else (
                f"; {len(ids)} runs are recorded (see `memfactory runs list`)"
                if ids
                else "; the database has no runs yet"
            )
        )
        return f"no run {run_id!r} in {self.path}{hint}"

    def list_runs(self, *, status: str | Iterable[str] | None = None, limit: int | None = None) -> list[RunRecord]:
        """Runs, newest first, optionally only those with the given status(es)."""
        where, params = None, []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where = f"status IN ({', '.join('?' for _ in statuses)})"
            params = statuses
        with self._errors("list runs"):
            rows = self.db["runs"].rows_where(where, params, order_by="created_at DESC, id DESC", limit=limit)
            return [RunRecord.from_row(r) for r in rows]

    def set_status(self, run_id: str, status: str, error: str | None = None, *, pid: int | None = None) -> RunRecord:
        """Move a run to ``status``.

        ``running`` records ``started_at`` (first time only) and the pid (``pid`` or this process's);
        ``finished``/``failed``/``aborted`` record ``ended_at``. ``error`` is stored when given.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        updates: dict[str, Any] = {"status": status}
        now = time.time()
        with self._write("update a run's status") as db:
            current = db.execute("SELECT started_at FROM runs WHERE id = ?", [run_id]).fetchone()
            if current is None:
                raise MemFactoryError(f"no run {run_id!r} in {self.path}")
            if status == "running":
                pid = pid or os.getpid()
                updates["ended_at"] = None
                updates["error"] = None  # a resumed run starts clean
                if current[0] is None:
                    updates["started_at"] = now
            if pid is not None:
                updates["pid"] = pid
                updates["pid_start"] = process_start(pid)
            if status in TERMINAL_STATUSES:
                updates["ended_at"] = now
            if error is not None:
                updates["error"] = error
            db["runs"].update(run_id, updates)
        return self.require(run_id)

    def update_progress(self, run_id: str, step: int, reward: float | None = None) -> None:
        """Record the current step and, when given, the latest mean reward (best is kept as the max)."""
        with self._write("update progress") as db:
            last = None
            if reward is not None:
                try:
                    last = _finite(reward)
                except (TypeError, ValueError):
                    last = None
            cursor = db.execute(
                "UPDATE runs SET step = ?, "
                "last_reward = COALESCE(?, last_reward), "
                "best_reward = CASE WHEN ? IS NULL THEN best_reward "
                "WHEN best_reward IS NULL OR ? > best_reward THEN ? ELSE best_reward END "
                "WHERE id = ?",
                [int(step), last, last, last, last, run_id],
            )
            if cursor.rowcount == 0:
                raise MemFactoryError(f"no run {run_id!r} in {self.path}")

    def update_meta(self, run_id: str, **values: Any) -> RunRecord:
        """Merge ``values`` into the run's ``meta`` JSON (device, attention implementation, ...)."""
        with self._write("update run meta") as db:
            row = db.execute("SELECT meta FROM runs WHERE id = ?", [run_id]).fetchone()
            if row is None:
                raise MemFactoryError(f"no run {run_id!r} in {self.path}")
            meta = json.loads(row[0] or "{}")
            meta.update(values)
            db["runs"].update(run_id, {"meta": json.dumps(meta, default=str)})
        return self.require(run_id)

    def update(self, run_id: str, **values: Any) -> RunRecord:
        """Set plain columns (e.g. ``total_steps``, ``preset_path``); unknown columns are refused."""
        unknown = set(values) - set(_RUN_COLUMNS) | ({"id", "meta"} & set(values))
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)} with update(); use set_status/update_meta")
        with self._write("update a run") as db:
            if db.execute("SELECT 1 FROM runs WHERE id = ?", [run_id]).fetchone() is None:
                raise MemFactoryError(f"no run {run_id!r} in {self.path}")
            db["runs"].update(run_id, values)
        return self.require(run_id)

    def delete(self, run_id: str, *, remove_files: bool = False) -> None:
        """Delete a run's row and metrics (and its folder when ``remove_files``).

        Refuses while the run's process is alive: stop it first.
        """
        record = self.require(run_id)
        if record.status in ACTIVE_STATUSES and record.process_alive():
            raise MemFactoryError(f"run {run_id} is still running (pid {record.pid}); stop it before deleting it")
        with self._write("delete a run") as db:
            db.execute("DELETE FROM metrics WHERE run_id = ?", [run_id])
            db.execute("DELETE FROM runs WHERE id = ?", [run_id])
        if remove_files and record.run_dir:
            run_dir = Path(record.run_dir)
            # only a folder that looks like a run folder: never wipe something unexpected
            if run_dir.is_dir() and run_dir.name == run_id:
                shutil.rmtree(run_dir, ignore_errors=True)

    def reconcile(self) -> list[str]:
        """Mark ``created``/``running`` runs whose process is gone as ``failed``; return their ids.

        Call it when the UI starts or refreshes, so a run whose trainer died (killed, machine
        rebooted) never shows a spinner forever. The error holds the last lines of stdout.log.
        Runs without a pid (created but never launched) are left alone.
        """
        changed = []
        for record in self.list_runs(status=ACTIVE_STATUSES):
            if record.pid is None or record.process_alive():
                continue
            lines = tail_lines(Path(record.run_dir) / "stdout.log")
            message = f"the trainer process (pid {record.pid}) exited without reporting an end status"
            if lines:
                message += "; last lines of stdout.log:\n" + "\n".join(lines)
            with self._write("reconcile runs") as db:
                # re-check inside the lock: the trainer may have finished in the meantime
                cursor = db.execute(
                    "UPDATE runs SET status = 'failed', ended_at = ?, error = COALESCE(error || '\n', '') || ? "
                    "WHERE id = ? AND status IN ('created', 'running') AND pid = ?",
                    [time.time(), message, record.id, record.pid],
                )
            if cursor.rowcount:
                changed.append(record.id)
        return changed

    # -- metrics -------------------------------------------------------------------------------

    def log_metrics(self, run_id: str, step: int, metrics: dict[str, Any]) -> int:
        """Store the numeric values of ``metrics`` for ``step``; returns how many were stored.

        Non-numeric values (strings, lists) are skipped; NaN/inf become NULL. Logging the same
        (step, key) again replaces the value. A :data:`PEAK_METRIC` raises the run's ``peak_gib``
        to it (in the same transaction), so the Runs table needs no scan of the metrics.
        """
        now = time.time()
        rows = []
        for key, value in metrics.items():
            try:
                number = _finite(value)
            except (TypeError, ValueError):
                continue
            rows.append({"run_id": run_id, "step": int(step), "key": str(key), "value": number, "time": now})
        peak = next((r["value"] for r in rows if r["key"] == PEAK_METRIC and r["value"] is not None), None)
        if rows:
            with self._write("log metrics") as db:
                db["metrics"].insert_all(rows, replace=True)
                if peak is not None:
                    db.execute("UPDATE runs SET peak_gib = MAX(COALESCE(peak_gib, ?), ?) WHERE id = ?",
                               [peak, peak, run_id])
        return len(rows)

    def truncate_metrics(self, run_id: str, after_step: int) -> int:
        """Drop metrics with ``step > after_step`` (on resume from a checkpoint); returns rows removed."""
        with self._write("truncate metrics") as db:
            return db.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", [run_id, int(after_step)]).rowcount

    def metric_keys(self, run_ids: str | Iterable[str]) -> list[str]:
        """The metric names logged for these runs, sorted."""
        ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        if not ids:
            return []
        with self._errors("read metric names"):
            rows = self.db.execute(
                f"SELECT DISTINCT key FROM metrics WHERE run_id IN ({', '.join('?' for _ in ids)}) ORDER BY key",
                ids,
            ).fetchall()
        return [r[0] for r in rows]

    def metrics_frame(
        self, run_ids: str | Iterable[str], keys: Iterable[str] | None = None, *, since_step: int | None = None
    ):
        """A wide pandas DataFrame: columns ``run_id``, ``step`` then one column per metric key.

        Sorted by run_id then step; missing values are NaN. ``keys`` limits the metric columns,
        ``since_step`` keeps only steps greater than it (for incremental refreshes).
        """
        import pandas as pd

        ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        key_list = list(keys) if keys is not None else None
        if not ids or key_list == []:
            return pd.DataFrame(columns=["run_id", "step"])
        sql = f"SELECT run_id, step, key, value FROM metrics WHERE run_id IN ({', '.join('?' for _ in ids)})"
        params: list[Any] = list(ids)
        if key_list is not None:
            sql += f" AND key IN ({', '.join('?' for _ in key_list)})"
            params += key_list
        if since_step is not None:
            sql += " AND step > ?"
            params.append(int(since_step))
        with self._errors("read metrics"):
            long = pd.read_sql_query(sql, self.db.conn, params=params)
        if long.empty:
            return pd.DataFrame(columns=["run_id", "step", *(key_list or [])])
        long["value"] = pd.to_numeric(long["value"], errors="coerce")
        wide = long.pivot(index=["run_id", "step"], columns="key", values="value")
        wide.columns.name = None
        wide = wide.reset_index().sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)
        return wide
