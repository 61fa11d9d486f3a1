"""The Train tab's actions, without Gradio: check a launch, start, abort and resume a run.

Every check happens here, before a process exists (the preset with the overrides, train's start-up
checks, the device choice, the memory planner), so a refusal is a readable list instead of a dying
child. The process work is webui.train.launcher's (and memfactory.tracking.process's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from memfactory.config import load_preset
from memfactory.errors import ConfigError, MemFactoryError
from memfactory.planner.plan import estimate_memory
from memfactory.preflight import preflight_problems
from memfactory.tracking import process
from webui import workspace
from webui.train import launcher
from webui.train.command import Hardware, LaunchSpec, build_command, detect_hardware, launch_problems, override_args
from webui.train.view import Attached


def validate_preset(name: str | None) -> Path:
    """The preset file for a dropdown choice, after full validation; MemFactoryError otherwise."""
    if not name:
        raise MemFactoryError("choose a preset to train first")
    path = workspace.find_preset(name)
    load_preset(path)  # ConfigError lists every problem
    return path


# --------------------------------------------------------------------------- start, abort, resume


def busy(db, attached: Attached) -> str | None:
    """The id of the followed run when it is still going (one run at a time from this tab)."""
    if not attached.run_id:
        return None
    if attached.pid and process.is_alive(attached.pid):
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
    check.wont_fit, check.advice = memory_plan(preset, spec, hardware)
    return check


def memory_plan(preset, spec: LaunchSpec, hardware: Hardware) -> tuple[bool, list[str]]:
    """(does not fit, advice) from the memory planner's ``estimate_memory``."""
    chosen = [d for d in hardware.devices if not spec.devices or d.index in spec.devices]
    strategy = {"single": "single", "ddp": "ddp", "fsdp": "fsdp2"}.get(spec.strategy)
    try:
        plan = estimate_memory(preset, gpus=max(spec.num_processes, 1),
                               gpu_mem_gib=min((d.total_gib for d in chosen), default=None), strategy=strategy)
    except Exception as exc:  # noqa: BLE001 - the planner is advice: its failure must not block a launch
        return False, [f"no memory estimate: {str(exc).strip() or type(exc).__name__}"]
    advice = [*plan.advice, *(n for n in plan.notes if n.startswith("vLLM engine"))]  # the engine's share of the plan
    return plan.fits is False, advice


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
    run_id, pid = launcher.start_run(path, runs_dir=runs_dir or workspace.runs_dir(), spec=spec, run_id=run_id,
                                   port=port)
    return Attached(run_id=run_id, pid=pid, launched_at=time.time())


def launch_preview(preset_name: str | None, spec: LaunchSpec, *, run_id: str, port: int | None,
                   runs_dir: Path | None = None) -> str:
    """The exact shell line Start will run for these choices (the launcher's own builder)."""
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
    record = launcher.read_launch(runs_dir, run_id) or {}
    pid = record.get("pid")
    if not isinstance(pid, int) or not process.is_alive(pid):
        return None
    if rank0_pid is None or rank0_pid == pid or rank0_pid in process.process_tree(pid):
        return pid
    return None


def abort(db, attached: Attached, *, grace: float = 10.0) -> tuple[Attached, str]:
    """Stop the followed run's process group; the trainer records ``aborted`` itself on SIGTERM.

    When it could not (killed before its handler was installed, or already gone without a
    status), ``RunsDB.reconcile`` records it, told that a user aborted this launch.
    """
    if not attached.run_id:
        raise MemFactoryError("no run is selected")
    record = db.get(attached.run_id)
    pid = None
    if attached.pid and process.is_alive(attached.pid):
        pid = attached.pid
    elif record is not None and record.is_active and record.process_alive():
        pid = launcher_pid(Path(record.run_dir).parent, attached.run_id, record.pid) or record.pid
    if pid is None and record is not None and not record.is_active:
        raise MemFactoryError(f"run {attached.run_id} is not running (it is {record.status})")
    stopped = process.abort(pid, grace=grace) if pid else False
    attached = Attached(**{**attached.to_dict(), "aborted": True})
    db.reconcile(attached.launches())
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
    stored = launcher.read_launch(runs, run_id)
    if stored and stored.get("spec"):
        problems = launch_problems(LaunchSpec.of(stored["spec"]), detect_hardware())
        if problems:
            raise MemFactoryError(f"run {run_id} cannot be resumed with its launch here: " + "; ".join(problems))
    try:
        pid = launcher.resume_run(run_id, runs_dir=runs)
    except FileNotFoundError as exc:
        raise MemFactoryError(f"run {run_id} has no preset copy to resume from ({exc})") from None
    return Attached(run_id=run_id, pid=pid, launched_at=time.time())


