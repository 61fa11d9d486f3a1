"""What the Train tab shows, without Gradio: which run to follow, its state, progress and samples.

The tab keeps a small ``Attached`` dict per browser session (the run it follows, and the pid when
this UI launched it) and calls :func:`poll` on every timer tick. ``poll`` never spins forever on
a dead trainer: it reconciles the runs database (a run whose process is gone becomes ``failed``
with its last log lines) and also covers the gap before the trainer has written its database row
(a process that dies that early is reported with its exit code and log tail).
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import inspect
import itertools
import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from memfactory.errors import MemFactoryError
from memfactory.tracking.metrics import read_metrics
from webui import runner, workspace
from webui.launch_command import Hardware, LaunchSpec, build_command, detect_hardware, launch_problems, override_args

DEFAULT_PRESET = "tiny_cpu_demo"
LOG_LINES = 20
ETA_WINDOW = 20
ACTIVE = ("starting", "running")


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


@dataclass
class RunView:
    """One poll's result: everything the status line, progress bar and log box need."""

    run_id: str | None
    status: str = "none"  # none, starting, running, finished, failed, aborted
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
        return self.status in ACTIVE

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return max(0.0, min(1.0, self.step / self.total))


# --------------------------------------------------------------------------- presets and choices


def default_preset(choices: list[str]) -> str | None:
    """``tiny_cpu_demo`` when it is offered, else the first preset (None when there are none)."""
    if DEFAULT_PRESET in choices:
        return DEFAULT_PRESET
    return choices[0] if choices else None


def validate_preset(name: str | None) -> Path:
    """The preset file for a dropdown choice, after full validation; MemFactoryError otherwise."""
    from memfactory.config import load_preset

    if not name:
        raise MemFactoryError("choose a preset to train first")
    path = workspace.find_preset(name)
    load_preset(path)  # ConfigError lists every problem
    return path


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


# --------------------------------------------------------------------------- start, abort, resume


def busy(db, attached: Attached) -> str | None:
    """The id of the followed run when it is still going (one run at a time from this tab)."""
    if not attached.run_id:
        return None
    if attached.pid and runner.is_alive(attached.pid):
        return attached.run_id
    record = db.get(attached.run_id)
    if record is not None and record.is_active and record.process_alive():
        return attached.run_id
    return None


@dataclass
class LaunchCheck:
    """What the tab says before a launch: blocking problems, and the memory planner's verdict
    (which the user may override with "launch anyway")."""

    problems: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    wont_fit: bool = False

    def allowed(self, force: bool = False) -> bool:
        return not self.problems and (force or not self.wont_fit)

    def markdown(self) -> str:
        """``✅ ready to launch`` or the problems as a list (the text the tab shows inline)."""
        lines = []
        if self.problems:
            lines.append("**❌ Cannot launch yet:**")
            lines += [f"- {p}" for p in self.problems]
        if self.wont_fit:
            lines.append("**⚠️ The memory planner says this run does not fit** (tick *launch anyway* to try):")
        elif self.advice:
            lines.append("**Memory planner:**")
        lines += [f"- {a}" for a in self.advice]
        return "\n".join(lines) if lines else "✅ ready to launch"


def override_list(spec: LaunchSpec) -> list[str]:
    """The spec's ``--set`` values without the flags (``["trainer.steps=5", ...]``)."""
    return override_args(spec)[1::2]


def check_launch(preset_name: str | None, spec: LaunchSpec, hardware: Hardware) -> LaunchCheck:
    """Every reason the launch would fail, found here rather than in a dying child: the preset with
    the overrides applied (schema), its start-up checks (model, data, judge), the device choice, and
    the memory planner when ``memfactory.planner`` exists."""
    from memfactory.config import load_preset
    from memfactory.errors import ConfigError
    from memfactory.preflight import preflight_problems

    check = LaunchCheck(problems=launch_problems(spec, hardware))
    if not preset_name:
        check.problems.insert(0, "choose a preset to train first")
        return check
    try:
        path = workspace.find_preset(preset_name)
        preset = load_preset(path, override_list(spec))
    except ConfigError as exc:
        check.problems[:0] = [f"`{where or '(top level)'}`: {message}" for where, message in exc.problems]
        return check
    except MemFactoryError as exc:
        check.problems.insert(0, str(exc))
        return check
    check.problems[:0] = [f"`{where}`: {message}" for where, message in preflight_problems(preset)]
    plan = memory_plan(preset, spec, hardware)
    if plan is not None:
        check.wont_fit, check.advice = plan
    return check


def memory_plan(preset, spec: LaunchSpec, hardware: Hardware) -> tuple[bool, list[str]] | None:
    """(does not fit, advice) from ``memfactory.planner.estimate_memory``; None without a planner."""
    if importlib.util.find_spec("memfactory.planner") is None:
        return None
    planner = importlib.import_module("memfactory.planner")
    chosen = [d for d in hardware.devices if not spec.devices or d.index in spec.devices]
    kwargs: dict[str, Any] = {"gpus": max(spec.num_processes, 1),
                              "gpu_mem_gib": min((d.total_gib for d in chosen), default=None)}
    if "strategy" in inspect.signature(planner.estimate_memory).parameters:
        kwargs["strategy"] = {"single": "single", "ddp": "ddp", "fsdp": "fsdp2"}.get(spec.strategy)
    try:
        plan = planner.estimate_memory(preset, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the planner is advice: its failure must not block a launch
        return False, [f"no memory estimate: {str(exc).strip() or type(exc).__name__}"]
    advice = [str(a) for a in (getattr(plan, "advice", None) or [])]
    advice += [n for n in getattr(plan, "notes", []) if str(n).startswith("vLLM engine")]  # its share of the plan
    return getattr(plan, "fits", None) is False, advice


def start(db, preset_name: str | None, attached: Attached, *, runs_dir: Path | None = None,
          spec: LaunchSpec | None = None, run_id: str | None = None, port: int | None = None,
          force: bool = False, hardware: Hardware | None = None) -> Attached:
    """Validate the preset and the launch choices, then launch; refused while the followed run runs.

    ``run_id``/``port`` are the ones the command preview showed, so the launched argv is the
    previewed one. ``force`` launches although the memory planner says it does not fit.
    """
    path = validate_preset(preset_name)
    hardware = hardware or detect_hardware()
    spec = spec or LaunchSpec(cuda=hardware.cuda)
    check = check_launch(preset_name, spec, hardware)
    if not check.allowed(force):
        raise MemFactoryError(check.markdown().replace("**", ""))
    running = busy(db, attached)
    if running:
        raise MemFactoryError(f"run {running} is still running; abort it (or pick another run) before starting one")
    run_id, pid = runner.start_run(path, runs_dir=runs_dir or workspace.runs_dir(), spec=spec, run_id=run_id,
                                   port=port)
    return Attached(run_id=run_id, pid=pid, launched_at=time.time())


def launch_preview(preset_name: str | None, spec: LaunchSpec, *, run_id: str, port: int | None,
                   runs_dir: Path | None = None) -> str:
    """The exact shell line Start will run for these choices (same builder as the runner)."""
    try:
        path = str(workspace.find_preset(preset_name)) if preset_name else "PRESET"
    except MemFactoryError:
        path = "PRESET"
    runs = Path(runs_dir or workspace.runs_dir()).resolve()
    command = build_command(spec, Path(path).resolve() if path != "PRESET" else path, runs_dir=runs,
                            run_id=run_id, port=port if spec.distributed else None)
    return command.shell()


def launcher_pid(runs_dir: Path, run_id: str, rank0_pid: int | None) -> int | None:
    """The ``accelerate launch`` process of a run when it is alive and rank 0 is its descendant,
    so an abort from a restarted UI stops the whole launch, not rank 0 alone."""
    record = runner.read_launch(runs_dir, run_id) or {}
    pid = record.get("pid")
    if not isinstance(pid, int) or not runner.is_alive(pid):
        return None
    if rank0_pid is None or rank0_pid == pid or rank0_pid in runner.process_tree(pid):
        return pid
    return None


def abort(db, attached: Attached, *, grace: float = 10.0) -> tuple[Attached, str]:
    """Stop the followed run's process group; the trainer records ``aborted`` itself on SIGTERM.

    When it could not (killed before its handler was installed, or already gone without a
    status), the run is marked aborted here.
    """
    if not attached.run_id:
        raise MemFactoryError("no run is selected")
    record = db.get(attached.run_id)
    pid = None
    if attached.pid and runner.is_alive(attached.pid):
        pid = attached.pid
    elif record is not None and record.is_active and record.process_alive():
        pid = launcher_pid(Path(record.run_dir).parent, attached.run_id, record.pid) or record.pid
    if pid is None and record is not None and not record.is_active:
        raise MemFactoryError(f"run {attached.run_id} is not running (it is {record.status})")
    stopped = runner.abort(pid, grace=grace) if pid else False
    attached = Attached(**{**attached.to_dict(), "aborted": True})
    record = db.get(attached.run_id)
    if record is not None and record.is_active:
        db.set_status(attached.run_id, "aborted", "aborted from the web UI (the trainer did not record it)")
    return attached, ("stopped" if stopped else "was not running")


def resume(db, run_id: str | None, attached: Attached, *, runs_dir: Path | None = None) -> Attached:
    """Continue a failed or aborted run from its last checkpoint (``--resume RUN_ID``)."""
    if not run_id:
        raise MemFactoryError("pick a run to resume")
    record = db.require(run_id)
    if record.is_active and record.process_alive():
        raise MemFactoryError(f"run {run_id} is still running")
    if busy(db, attached) not in (None, run_id):
        raise MemFactoryError(f"run {attached.run_id} is still running; abort it before resuming another")
    if record.status == "finished":
        raise MemFactoryError(f"run {run_id} already finished all its steps")
    runs = Path(runs_dir or workspace.runs_dir()).resolve()
    if Path(record.run_dir).resolve().parent != runs:
        raise MemFactoryError(f"run {run_id} lives in {record.run_dir}, outside this workspace's runs folder {runs}")
    stored = runner.read_launch(runs, run_id)
    if stored and stored.get("spec"):
        problems = launch_problems(LaunchSpec.of(stored["spec"]), detect_hardware())
        if problems:
            raise MemFactoryError(f"run {run_id} cannot be resumed with its launch here: " + "; ".join(problems))
    try:
        pid = runner.resume_run(run_id, runs_dir=runs)
    except FileNotFoundError as exc:
        raise MemFactoryError(f"run {run_id} has no preset copy to resume from ({exc})") from None
    return Attached(run_id=run_id, pid=pid, launched_at=time.time())


def has_checkpoint(run_dir: str | Path) -> bool:
    folder = Path(run_dir) / "checkpoints"
    return folder.is_dir() and any(p.is_dir() and p.name.startswith("step-") for p in folder.iterdir())


# --------------------------------------------------------------------------- polling


def poll(db, attached: Attached, *, runs_dir: Path | None = None, now: float | None = None) -> RunView:
    """The followed run's state; a dead trainer becomes failed (or aborted), never a spinner."""
    if not attached.run_id:
        return RunView(run_id=None)
    now = time.time() if now is None else now
    db.reconcile()
    record = db.get(attached.run_id)
    launched = bool(attached.pid)
    alive = launched and runner.is_alive(attached.pid)
    run_dir = Path(record.run_dir) if record else Path(runs_dir or workspace.runs_dir()) / attached.run_id
    log = runner.tail(run_dir / "stdout.log", LOG_LINES)
    view = RunView(run_id=attached.run_id, run_dir=run_dir, log=log)
    if record is None:
        if alive:
            view.status = "starting"
        elif launched:
            view.status = "aborted" if attached.aborted else "failed"
            view.error = exit_message(attached.pid, "before it recorded the run", _error_log(run_dir))
        else:
            view.status, view.error = "failed", f"run {attached.run_id} is not in the runs database"
        return view
    view.preset, view.step, view.total = record.name, record.step or 0, record.total_steps
    view.elapsed_s, view.error = record.duration_s, record.error
    view.status = "starting" if record.status == "created" else record.status
    relaunched = launched and attached.launched_at is not None and (record.ended_at or 0) < attached.launched_at
    if record.status in ("finished", "failed", "aborted") and relaunched:
        # a resume we launched has not marked the run running yet, or died before it could
        if alive:
            view.status, view.error = "starting", None
        else:
            code = runner.exit_code(attached.pid)
            if code not in (None, 0):
                view.status = "aborted" if attached.aborted else "failed"
                view.error = exit_message(attached.pid, "before it resumed the run", _error_log(run_dir))
    elif record.is_active and record.pid is None and launched and not alive:
        # the row exists but the trainer died before recording its pid: reconcile cannot see it
        error = exit_message(attached.pid, "before it started training", _error_log(run_dir))
        record = db.set_status(attached.run_id, "aborted" if attached.aborted else "failed", error)
        view.status, view.error = record.status, record.error
    if view.status == "running":
        metrics = metrics_records(run_dir / "metrics.jsonl")
        view.eta_s = eta_seconds(metrics, view.step, view.total)
    return view


def _error_log(run_dir: Path) -> str:
    """A longer tail for a failed start: under ``accelerate launch`` the launcher's own traceback
    and failure table (~40 lines) come after the ranks' real error."""
    return runner.tail(run_dir / "stdout.log", 200)


def launcher_noise(lines: list[str]) -> tuple[list[str], str | None]:
    """The ranks' own output without torchrun's ``ChildFailedError`` report, and that report's root
    cause (``rank 1 exited with code 2``); unchanged lines and None for a single-process run."""
    end = next((i for i, line in enumerate(lines) if "ChildFailedError" in line), None)
    if end is None:
        return lines, None
    start = max((i for i in range(end + 1) if lines[i].startswith("Traceback (most recent call last)")), default=end)
    kept = [line for line in lines[:start] if "torch/distributed/elastic/" not in line]
    report = lines[end:]
    root = None
    if any(line.startswith("Root Cause") for line in report):
        cause = report[next(i for i, line in enumerate(report) if line.startswith("Root Cause")):]
        rank = next((line.split(":", 1)[1].strip() for line in cause if line.strip().startswith("rank ")), "?")
        code = next((line.split(":", 1)[1].strip() for line in cause if line.strip().startswith("exitcode")), "?")
        root = f"first failure: rank {rank}, exit code {code}"
    return kept, root


def exit_message(pid: int | None, when: str, log: str) -> str:
    code = runner.exit_code(pid) if pid else None
    how = f"with code {code}" if code is not None else "(exit code unknown)"
    message = f"the trainer exited {how} {when}"
    lines, root = launcher_noise(log.strip().splitlines())
    if root:
        message += f" ({root})"
    lines = lines[-8:]
    return message + ("; last lines of stdout.log:\n" + "\n".join(lines) if lines else "")


# --------------------------------------------------------------------------- progress and ETA


def seconds_per_step(records: list[dict[str, Any]], window: int = ETA_WINDOW) -> float | None:
    """Median wall time per step over the last ``window`` steps (a resume gap does not skew it)."""
    points = []
    for record in records:
        try:
            points.append((int(record["step"]), float(record["time"])))
        except (KeyError, TypeError, ValueError):
            continue
    points = points[-(window + 1):]
    rates = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in itertools.pairwise(points) if s1 > s0 and t1 >= t0]
    if rates:
        return statistics.median(rates)
    for record in reversed(records):  # one step so far: the trainer's own step time
        value = record.get("time/step_s")
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return None


def eta_seconds(records: list[dict[str, Any]], step: int, total: int | None) -> float | None:
    """Seconds left: steps to go times the recent seconds per step (None when unknown)."""
    if not total:
        return None
    if step >= total:
        return 0.0
    rate = seconds_per_step(records)
    return None if rate is None else (total - step) * rate


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = round(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


STATUS_ICON = {"none": "⚪", "starting": "⏳", "running": "🟢", "finished": "✅", "failed": "❌", "aborted": "⏹️"}


def status_markdown(view: RunView, labels: dict[str, str] | None = None) -> str:
    """``🟢 **running** · run `id` (preset)``, plus the error for a failed run."""
    labels = labels or {}
    if view.run_id is None:
        return labels.get("none", "No run selected. Start one, or pick a run below.")
    status = labels.get(view.status, view.status)
    text = f"{STATUS_ICON.get(view.status, '')} **{status}** · `{view.run_id}`"
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
    return (f'<div class="mf-train-progress" data-step="{view.step}" data-total="{total}" '
            f'data-status="{html.escape(view.status)}">{bar}<div>{html.escape(" · ".join(parts))}</div></div>')


# --------------------------------------------------------------------------- metrics and samples files


class _JsonlCache:
    """Incremental readers of growing JSON-lines files (re-read from the start when one shrinks)."""

    def __init__(self, limit: int = 32) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, tuple[int, int, list[dict[str, Any]]]] = {}
        self.limit = limit

    def read(self, path: str | Path) -> list[dict[str, Any]]:
        key = str(path)
        try:
            size = Path(path).stat().st_size
        except OSError:
            return []
        with self._lock:
            next_line, seen, records = self._files.get(key, (0, 0, []))
            if size < seen:  # truncated (a resume rewrote it): start over
                next_line, records = 0, []
            if size != seen or not records:
                chunk = read_metrics(path, next_line)
                records = records + chunk.records
                self._files.pop(key, None)
                self._files[key] = (chunk.next_line, size, records)
                while len(self._files) > self.limit:
                    self._files.pop(next(iter(self._files)))
            return list(records)


_CACHE = _JsonlCache()


def metrics_records(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a metrics.jsonl / samples.jsonl (cached, read incrementally)."""
    return _CACHE.read(path)


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


def sample_steps(samples: list[dict[str, Any]]) -> list[int]:
    """Steps whose samples.jsonl record holds whole trajectories, newest first."""
    steps = []
    for record in samples:
        if record.get("samples") and isinstance(record.get("step"), int) and record["step"] not in steps:
            steps.append(record["step"])
    return sorted(steps, reverse=True)


def trajectories_at(samples: list[dict[str, Any]], step: int | None) -> list[dict[str, Any]]:
    """The trajectories written at ``step`` (the newest step with any when ``step`` is None)."""
    steps = sample_steps(samples)
    if not steps:
        return []
    wanted = steps[0] if step is None else step
    for record in reversed(samples):  # after a resume a step may appear twice: the last one counts
        if record.get("step") == wanted and record.get("samples"):
            return [s for s in record["samples"] if isinstance(s, dict)]
    return []


def _short(value: Any, limit: int = 600) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _block(text: Any, limit: int = 1500) -> str:
    return "```text\n" + _short(text, limit).replace("```", "ʼʼʼ") + "\n```"


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def sample_markdown(sample: dict[str, Any] | None, *, step: int | None = None, index: int = 0, count: int = 0) -> str:
    """One trajectory: question, gold, each memory step of its trace, the answer and the reward parts."""
    if not sample:
        return "_No sample trajectories yet (they are written every `trainer.sample_every` steps)._"
    head = f"### Step {step} · trajectory {index + 1} of {count}" if step is not None else "### Trajectory"
    rewards = sample.get("rewards") or {}
    parts = ", ".join(f"{k} = {_number(v)}" for k, v in rewards.items()) if isinstance(rewards, dict) else ""
    lines = [head, f"**Reward** {_number(sample.get('reward'))}" + (f" ({parts})" if parts else "")
             + (f" · advantage {_number(sample.get('advantage'))}" if sample.get("advantage") is not None else "")]
    if sample.get("question") is not None:
        lines += ["**Question**", _block(sample["question"])]
    if sample.get("gold") is not None:
        gold = sample["gold"]
        lines.append("**Gold** " + ", ".join(f"`{_short(g, 200)}`" for g in (gold if isinstance(gold, list) else [gold])))
    trace = [entry for entry in sample.get("trace") or [] if isinstance(entry, dict)]
    if trace:
        lines.append(f"**Memory steps** ({len(trace)})")
        for n, entry in enumerate(trace, 1):
            label = entry.get("kind") or "step"
            where = entry.get("step", n - 1)
            extras = {k: v for k, v in entry.items() if k not in ("kind", "step", "memory", "answer", "memories")}
            lines.append(f"{n}. *{label} {where}*" + (" — " + ", ".join(f"{k}: {_short(v, 200)}"
                                                                       for k, v in extras.items()) if extras else ""))
            for key in ("memory", "memories", "answer"):
                if entry.get(key) not in (None, "", []):
                    lines.append(f"   {key}:\n\n" + _block(entry[key], 1200))
    lines += ["**Answer**", _block(sample.get("answer", ""))]
    calls = [c for c in sample.get("calls") or [] if isinstance(c, dict)]
    if calls:
        lines.append(f"<details><summary>Model calls ({len(calls)})</summary>\n")
        for call in calls:
            lines.append(f"- `{call.get('module', '?')}` ({call.get('tokens', '?')} tokens)\n\n"
                         + _block(call.get("response", ""), 800))
        lines.append("</details>")
    return "\n\n".join(lines)


@dataclass
class SampleView:
    steps: list[int] = field(default_factory=list)
    step: int | None = None
    index: int = 0
    count: int = 0
    markdown: str = ""


def browse_samples(samples: list[dict[str, Any]], step: Any = None, index: Any = 1) -> SampleView:
    """The trajectory to show for a step choice (``None``/"latest" = newest) and a 1-based index."""
    steps = sample_steps(samples)
    try:
        wanted = None if step in (None, "", "latest") else int(step)
    except (TypeError, ValueError):
        wanted = None
    if wanted is not None and wanted not in steps:
        wanted = None
    chosen = wanted if wanted is not None else (steps[0] if steps else None)
    trajectories = trajectories_at(samples, chosen)
    try:
        i = int(index) - 1
    except (TypeError, ValueError):
        i = 0
    i = max(0, min(i, len(trajectories) - 1)) if trajectories else 0
    sample = trajectories[i] if trajectories else None
    return SampleView(steps, chosen, i, len(trajectories), sample_markdown(sample, step=chosen, index=i,
                                                                            count=len(trajectories)))
