"""What the Train tab shows, without Gradio: which run a session follows and that run's state.

The tab keeps a small ``Attached`` dict per browser session (the run it follows, and the pid when
this UI launched it) and calls :func:`poll` on every timer tick. ``poll`` never spins forever on
a dead trainer: it reconciles the runs database, telling it what this UI launched
(``RunsDB.reconcile``: a run whose process is gone becomes ``failed`` with its last log lines),
and also covers the gap before the trainer has written its database row (a process that dies that
early is reported with its exit code and log tail). Status words, durations and the ETA are
memfactory.tracking's: this module never writes a run's status itself.
"""

from __future__ import annotations

import html
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from memfactory.tracking import process
from memfactory.tracking.metrics import RunDir
from memfactory.tracking.runs import ACTIVE_STATUSES, LAUNCH_LOG_LINES, TERMINAL_STATUSES, Launch
from memfactory.tracking.view import STATUS_ICONS, format_duration
from webui import workspace

DEFAULT_PRESET = "tiny_cpu_demo"
LOG_LINES = 20


# --------------------------------------------------------------------------- what a session follows


@dataclass
class Attached:
    """The run a browser session follows; ``pid``/``launched_at`` only when this UI started it."""

    run_id: str | None = None
    pid: int | None = None
    launched_at: float | None = None
    aborted: bool = False

    @classmethod
    def of(cls, value: Any) -> Attached:
        if isinstance(value, Attached):
            return value
        if not isinstance(value, dict):
            return cls()
        return cls(**{k: value.get(k) for k in cls.__dataclass_fields__ if k in value})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def launches(self) -> dict[str, Launch]:
        """What this session knows about its run's launch, for ``RunsDB.reconcile``."""
        return {self.run_id: Launch(pid=self.pid, aborted=self.aborted)} if self.run_id else {}


@dataclass
class RunView:
    """One poll's result: everything the status line, progress bar and log box need."""

    run_id: str | None
    status: str | None = None  # a runs-database status word (tracking.runs.STATUSES); None: no run
    step: int = 0
    total: int | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    error: str | None = None
    log: str = ""
    run_dir: Path | None = None
    preset: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return max(0.0, min(1.0, self.step / self.total))


class FollowedRuns:
    """The run each browser session follows, kept on the server, so a stale poll can be dropped.

    A timer poll works on the ``Attached`` value it was handed when it started. When the user picks
    another run while a poll is still running, the old poll would finish last and redraw the run the
    user just left over the new pick. The tab records every change of run here (load, start, abort,
    resume, pick) and drops a poll whose run is no longer its session's. A session this registry does
    not know (a UI restarted under an open page, a call without a session) is never dropped.
    """

    def __init__(self, limit: int = 1024) -> None:
        self._runs: OrderedDict[str, str | None] = OrderedDict()
        self._lock = threading.Lock()
        self._limit = limit

    def follow(self, session: str | None, run_id: str | None) -> None:
        if not session:
            return
        with self._lock:
            self._runs[session] = run_id
            self._runs.move_to_end(session)
            while len(self._runs) > self._limit:  # the oldest sessions' pages are long closed
                self._runs.popitem(last=False)

    def is_current(self, session: str | None, run_id: str | None) -> bool:
        """False only when ``session`` has since moved to another run."""
        with self._lock:
            return not session or session not in self._runs or self._runs[session] == run_id


# --------------------------------------------------------------------------- presets and choices


def default_preset(choices: list[str]) -> str | None:
    """``tiny_cpu_demo`` when it is offered, else the first preset (None when there are none)."""
    if DEFAULT_PRESET in choices:
        return DEFAULT_PRESET
    return choices[0] if choices else None


def run_choices(db) -> list[tuple[str, str]]:
    """(label, run id) for every run, newest first: ``<id> · running`` (no step count, so the list only
    changes when a run starts or ends, not under an open dropdown every tick)."""
    return [(f"{run.id} · {run.status}", run.id) for run in db.list_runs()]


def pick_run(db) -> str | None:
    """The run a freshly loaded tab follows: the newest running one, else the newest at all."""
    db.reconcile()
    running = db.list_runs(status="running", limit=1) or db.list_runs(status="created", limit=1)
    if running:
        return running[0].id
    newest = db.list_runs(limit=1)
    return newest[0].id if newest else None


# --------------------------------------------------------------------------- polling


def poll(db, attached: Attached, *, runs_dir: Path | None = None) -> RunView:
    """The followed run's state; a dead trainer becomes failed (or aborted), never a spinner."""
    if not attached.run_id:
        return RunView(run_id=None)
    db.reconcile(attached.launches())
    record = db.get(attached.run_id)
    launched = bool(attached.pid)
    alive = launched and process.is_alive(attached.pid)
    run_dir = Path(record.run_dir) if record else Path(runs_dir or workspace.runs_dir()) / attached.run_id
    log = process.tail(RunDir(run_dir).log_path, LOG_LINES)
    view = RunView(run_id=attached.run_id, run_dir=run_dir, log=log)
    if record is None:
        if alive:
            view.status = "created"
        elif launched:
            view.status = "aborted" if attached.aborted else "failed"
            view.error = process.exit_message(attached.pid, "before it recorded the run", _error_log(run_dir))
        else:
            view.status, view.error = "failed", f"run {attached.run_id} is not in the runs database"
        return view
    view.preset, view.step, view.total = record.name, record.step or 0, record.total_steps
    view.elapsed_s, view.error, view.status = record.duration_s, record.error, record.status
    relaunched = launched and attached.launched_at is not None and (record.ended_at or 0) < attached.launched_at
    if record.status in TERMINAL_STATUSES and relaunched:
        # a resume we launched has not marked the run running yet, or died before it could
        if alive:
            view.status, view.error = "created", None
        elif process.exit_code(attached.pid) not in (None, 0):
            view.status = "aborted" if attached.aborted else "failed"
            view.error = process.exit_message(attached.pid, "before it resumed the run", _error_log(run_dir))
    if view.status == "running":
        view.eta_s = record.eta_s  # the trainer's own, written with each step
    return view


def _error_log(run_dir: Path) -> str:
    """A longer tail for a failed start: under ``accelerate launch`` the launcher's own traceback
    and failure table (~40 lines) come after the ranks' real error."""
    return process.tail(RunDir(run_dir).log_path, LAUNCH_LOG_LINES)


def status_markdown(view: RunView, labels: dict[str, str] | None = None) -> str:
    """``🟢 **running** · run `id` (preset)``, plus the error for a failed run."""
    labels = labels or {}
    if view.run_id is None or view.status is None:
        return labels.get("none", "No run selected. Start one, or pick a run below.")
    status = labels.get(view.status, view.status)
    text = f"{STATUS_ICONS.get(view.status, '')} **{status}** · `{view.run_id}`"
    if view.preset:
        text += f" ({view.preset})"
    if view.error and view.status in ("failed", "aborted"):
        first, *rest = view.error.strip().splitlines() or [""]
        text += f"\n\n{first}"
        if rest:
            text += "\n```\n" + "\n".join(rest[-12:]).replace("```", "ʼʼʼ") + "\n```"
    return text


def progress_html(view: RunView, labels: dict[str, str] | None = None) -> str:
    """An HTML ``<progress>`` bar with ``step 12 / 300 · 4% · elapsed · ETA`` (data-* for tests)."""
    labels = labels or {}
    total = view.total or 0
    percent = f"{100 * view.fraction:.0f}%" if view.fraction is not None else ""
    parts = [f"{labels.get('step', 'step')} {view.step} / {total or '?'}"]
    if percent:
        parts.append(percent)
    if view.elapsed_s is not None:
        parts.append(f"{labels.get('elapsed', 'elapsed')} {format_duration(view.elapsed_s)}")
    if view.active:
        parts.append(f"{labels.get('eta', 'ETA')} {format_duration(view.eta_s)}")
    bar = f'<progress value="{view.step}" max="{max(total, 1)}" style="width:100%"></progress>' if total else \
        '<progress style="width:100%"></progress>' if view.active else ""
    status = html.escape(view.status or "")
    return (f'<div class="mf-train-progress" data-step="{view.step}" data-total="{total}" '
            f'data-status="{status}">{bar}<div>{html.escape(" · ".join(parts))}</div></div>')


def file_signature(*paths: str | Path) -> list[list[float]]:
    """(size, mtime) per file: the figures are only redrawn when one of them changed."""
    out = []
    for path in paths:
        try:
            stat = Path(path).stat()
            out.append([stat.st_size, stat.st_mtime])
        except OSError:
            out.append([0, 0])
    return out


