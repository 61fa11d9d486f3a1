"""The runs database: the index of training runs, one SQLite row per run with its summary.

Two processes use it at once: the trainer subprocess writes (status, progress) while the web UI
reads. So the file is opened in WAL mode (readers never block the writer) with a busy
timeout (writers wait for each other instead of failing), every write runs in a ``BEGIN IMMEDIATE``
transaction (takes the write lock up front, so the busy timeout always applies), and each thread
gets its own connection (Gradio handlers run on worker threads).

Tables
------
``runs``: ``id`` TEXT primary key, ``name`` (preset name), ``preset_path``, ``run_dir``, ``status``
(one of :data:`STATUSES`), ``pid`` and ``pid_start`` (the process's start time, so a recycled pid
is not mistaken for the trainer), ``created_at`` / ``started_at`` / ``ended_at`` (UNIX seconds,
REAL), ``step``, ``total_steps``, ``best_reward``, ``last_reward``, ``peak_gib`` (the largest
``hw/peak_gib`` metric logged: peak device memory over ranks, GiB), ``seconds_per_step`` and
``eta_s`` (the trainer's recent step time and the time left, written each step), ``error`` (text),
``meta`` (JSON object: attention implementation, device, model path, ...).

Per-step metrics are not here: they live in each run's ``metrics.jsonl`` (see
:mod:`memfactory.tracking.metrics`). A ``metrics`` table left by older versions stays on disk, unused.

Typical use::

    db = RunsDB("runs/memfactory.db")
    run_id = new_run_id("memagent_tiny_cpu")      # memfactory.tracking.process
    db.create_run("memagent_tiny_cpu", f"runs/{run_id}", run_id=run_id, total_steps=60)
    db.set_status(run_id, "running")              # records pid and started_at
    db.update_progress(run_id, 1, reward=0.5, peak_gib=1.2, seconds_per_step=3.1, eta_s=183.0)
    db.set_status(run_id, "finished")
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

from memfactory.errors import MemFactoryError
from memfactory.sqlite import connect, immediate, sqlite_errors
from memfactory.tracking.metrics import RunDir
from memfactory.tracking.process import LOG_TAIL_LINES, exit_message, is_alive, new_run_id, process_start, tail

STATUSES = ("created", "running", "finished", "failed", "aborted")
ACTIVE_STATUSES = ("created", "running")
TERMINAL_STATUSES = ("finished", "failed", "aborted")
LAUNCH_LOG_LINES = 200  # a failed launch's tail: under accelerate the launcher's report follows the real error

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
    "seconds_per_step": float,
    "eta_s": float,
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
    seconds_per_step: float | None = None
    eta_s: float | None = None
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


def _finite_or_none(value: Any) -> float | None:
    """``value`` as a finite float, else ``None`` (NaN, inf, None, strings, other non-numbers)."""
    if value is None or isinstance(value, str):
        return None
    try:
        number = float(value)  # ints, bools, numpy and 0-d torch scalars all support __float__
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Launch:
    """What the launcher of a run knows and the runs database does not: the process it spawned
    (``pid``, which may never reach the run's row when the trainer dies early) and whether a user
    asked it to stop (``aborted``). Passed to :meth:`RunsDB.reconcile`."""

    pid: int | None = None
    aborted: bool = False


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
            db["runs"].create_index(["status"], if_not_exists=True)

    # -- runs ----------------------------------------------------------------------------------

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

    def update_progress(
        self,
        run_id: str,
        step: int,
        reward: float | None = None,
        *,
        peak_gib: float | None = None,
        seconds_per_step: float | None = None,
        eta_s: float | None = None,
    ) -> None:
        """Record the current step and the run's summary of it (the trainer calls this every step).

        ``reward``: the latest mean reward (``best_reward`` keeps the max); ``peak_gib``: the step's
        device peak (``peak_gib`` keeps the max); ``seconds_per_step`` / ``eta_s``: the trainer's
        recent step time and the time left. NaN, inf and non-numbers leave a column as it was.
        """
        last, peak, rate, eta = (_finite_or_none(v) for v in (reward, peak_gib, seconds_per_step, eta_s))
        with self._write("update progress") as db:
            cursor = db.execute(
                "UPDATE runs SET step = ?, "
                "last_reward = COALESCE(?, last_reward), "
                "best_reward = CASE WHEN ? IS NULL THEN best_reward "
                "WHEN best_reward IS NULL OR ? > best_reward THEN ? ELSE best_reward END, "
                "peak_gib = CASE WHEN ? IS NULL THEN peak_gib "
                "WHEN peak_gib IS NULL OR ? > peak_gib THEN ? ELSE peak_gib END, "
                "seconds_per_step = COALESCE(?, seconds_per_step), "
                "eta_s = COALESCE(?, eta_s) "
                "WHERE id = ?",
                [int(step), last, last, last, last, peak, peak, peak, rate, eta, run_id],
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
        """Delete a run's row (and its folder, metrics.jsonl included, when ``remove_files``).

        Refuses while the run's process is alive: stop it first.
        """
        record = self.require(run_id)
        if record.status in ACTIVE_STATUSES and record.process_alive():
            raise MemFactoryError(f"run {run_id} is still running (pid {record.pid}); stop it before deleting it")
        with self._write("delete a run") as db:
            if "metrics" in db.table_names():  # the per-step table of older versions: drop the run's rows too
                db.execute("DELETE FROM metrics WHERE run_id = ?", [run_id])
            db.execute("DELETE FROM runs WHERE id = ?", [run_id])
        if remove_files and record.run_dir:
            run_dir = Path(record.run_dir)
            # only a folder that looks like a run folder: never wipe something unexpected
            if run_dir.is_dir() and run_dir.name == run_id:
                shutil.rmtree(run_dir, ignore_errors=True)

    def reconcile(self, launches: Mapping[str, Launch] | None = None) -> list[str]:
        """End ``created``/``running`` runs whose process is gone; return their ids.

        The one place a run's status is settled from outside the trainer: the CLI and the UI call
        it on every refresh, so a run whose trainer died (killed, machine rebooted) never shows a
        spinner forever.

        * A run whose recorded process is gone becomes ``failed``, its error the last lines of
          stdout.log; ``aborted`` instead when its launcher says a user stopped it.
        * A run without a recorded pid is left alone (created, not launched yet), unless
          ``launches`` knows better: a launch whose process has exited makes it ``failed`` with
          the exit code and log tail (``aborted`` if a user stopped it), and a launch a user
          aborted with nothing left running makes it ``aborted``.
        """
        launches = launches or {}
        changed = []
        for record in self.list_runs(status=ACTIVE_STATUSES):
            launch = launches.get(record.id)
            aborted = launch is not None and launch.aborted
            log = RunDir(record.run_dir).log_path
            if record.pid is not None:
                if record.process_alive():
                    continue
                if aborted:
                    message = "aborted on request; the trainer ended before it could record it"
                else:
                    message = f"the trainer process (pid {record.pid}) exited without reporting an end status"
                    lines = tail(log, LOG_TAIL_LINES)
                    if lines:
                        message += "; last lines of stdout.log:\n" + lines
            elif launch is None or (launch.pid and is_alive(launch.pid)) or not (launch.pid or aborted):
                continue
            elif launch.pid:
                message = exit_message(launch.pid, "before it started training", tail(log, LAUNCH_LOG_LINES))
            else:
                message = "aborted on request before the trainer recorded its process"
            status = "aborted" if aborted else "failed"
            with self._write("reconcile runs") as db:
                # re-check inside the lock: the trainer may have recorded its pid or its end meanwhile
                cursor = db.execute(
                    "UPDATE runs SET status = ?, ended_at = ?, error = COALESCE(error || '\n', '') || ? "
                    "WHERE id = ? AND status IN ('created', 'running') AND pid IS ?",
                    [status, time.time(), message, record.id, record.pid],
                )
            if cursor.rowcount:
                changed.append(record.id)
        return changed


_OPEN: dict[str, RunsDB] = {}
_OPEN_LOCK = threading.Lock()


def open_db(path: str | Path, *, create: bool = True) -> RunsDB:
    """The runs database at ``path``, one handle per file and process (it keeps a connection per thread).

    ``create=False`` is for readers (``memfactory runs``): a missing file is the user's mistake, not
    a new empty database. A handle whose file was removed (a wiped workspace) is opened afresh.
    """
    path = Path(path)
    if not create and not path.is_file():
        raise MemFactoryError(
            f"no runs database at {path}; runs are recorded there by `memfactory train` (or pass --db PATH)"
        )
    key = str(path.resolve())
    with _OPEN_LOCK:
        db = _OPEN.get(key)
        if db is None or not db.path.exists():
            db = _OPEN[key] = RunsDB(path)
        return db
