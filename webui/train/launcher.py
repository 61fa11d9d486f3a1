"""Start ``python -m memfactory train`` runs from the UI, and keep each launch's record for Resume.

A run is its own process group (``start_new_session=True``) writing into ``runs/<id>/``, so it
outlives a closed browser tab or a restarted UI; the UI only needs the pid (the trainer records it
in the runs database) to re-attach, tail its logs or abort it. The process work itself (spawn,
liveness, process trees, abort, exit codes, log tails, run ids) is memfactory.tracking.process.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memfactory.tracking.process import free_port, new_run_id, spawn
from webui.train.command import Command, LaunchSpec, build_command
from webui.workspace import check_name, confine


def launch_file(runs_dir: str | Path, run_id: str) -> Path:
    """Where a run's launch spec lives: ``runs/.launch/<id>.json``. Not inside ``runs/<id>/``: the
    trainer refuses a new run whose folder already holds anything but ``stdout.log``."""
    return confine(Path(runs_dir).resolve(), f".launch/{check_name(run_id, 'run id')}.json")


def read_launch(runs_dir: str | Path, run_id: str) -> dict[str, Any] | None:
    """The stored launch record of a run (spec, argv, launcher pid), None when there is none."""
    path = launch_file(runs_dir, run_id)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_launch(runs_dir: Path, run_id: str, spec: LaunchSpec, command: Command, pid: int, *, resume: bool) -> None:
    path = launch_file(runs_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"spec": spec.to_dict(), "argv": list(command.argv), "env": command.env_dict, "pid": pid}
    previous = read_launch(runs_dir, run_id) if resume else None
    if previous:  # a resume keeps the first launch's command for the record
        record["first_argv"] = previous.get("first_argv") or previous.get("argv")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    tmp.replace(path)


def start_run(
    preset_path: str | Path,
    *,
    runs_dir: str | Path,
    extra_args: Sequence[str] = (),
    run_id: str | None = None,
    spec: LaunchSpec | None = None,
    port: int | None = None,
) -> tuple[str, int]:
    """Launch ``memfactory train PRESET --run-id ID``, output to ``runs/<id>/stdout.log``; (run_id, pid).

    The argv comes from :func:`webui.train.command.build_command` (the Train tab previews the same
    one): plain for one process, ``accelerate launch`` for DDP/FSDP. The trainer itself copies the
    preset (overrides applied) to ``runs/<id>/preset.yaml`` and records the run (rank 0's pid) in the
    runs database; the spec is kept in ``runs/.launch/<id>.json`` for Resume.
    ``MEMFACTORY_RUNNER=1`` tells the trainer stdout already is the log file.
    """
    preset_path = Path(preset_path).resolve()
    if not preset_path.is_file():
        raise FileNotFoundError(preset_path)
    runs_dir = Path(runs_dir).resolve()
    run_id = check_name(run_id or new_run_id(preset_path.stem), "run id")
    run_dir = confine(runs_dir, run_id)
    if run_dir.exists():
        raise FileExistsError(run_dir)
    spec = spec or LaunchSpec()
    if spec.distributed and port is None:
        port = free_port()
    command = build_command(spec, preset_path, runs_dir=runs_dir, run_id=run_id, port=port)
    argv = [*command.argv, *extra_args]
    pid = spawn(argv, run_dir, cwd=runs_dir.parent, env={"MEMFACTORY_RUNNER": "1", **command.env_dict},
                header=f"$ {Command(tuple(argv), command.env).shell()}")
    _write_launch(runs_dir, run_id, spec, Command(tuple(argv), command.env), pid, resume=False)
    return run_id, pid


def resume_run(
    run_id: str,
    *,
    runs_dir: str | Path,
    preset_path: str | Path | None = None,
    extra_args: Sequence[str] = (),
) -> int:
    """Continue ``runs/<run_id>/`` from its last checkpoint (``memfactory train ... --resume``); its pid.

    The run's own preset copy (``runs/<id>/preset.yaml``, overrides included) is trained unless
    ``preset_path`` is given, with the launch shape (processes, strategy, devices) the run was
    started with; output is appended to the same ``stdout.log``.
    """
    runs_dir = Path(runs_dir).resolve()
    run_id = check_name(run_id, "run id")
    run_dir = confine(runs_dir, run_id)
    preset = Path(preset_path).resolve() if preset_path is not None else run_dir / "preset.yaml"
    if not preset.is_file():
        raise FileNotFoundError(preset)
    spec = LaunchSpec.of((read_launch(runs_dir, run_id) or {}).get("spec"))
    port = free_port() if spec.distributed else None
    command = build_command(spec, preset, runs_dir=runs_dir, resume=run_id, port=port, with_overrides=False)
    argv = [*command.argv, *extra_args]
    pid = spawn(argv, run_dir, cwd=runs_dir.parent, env={"MEMFACTORY_RUNNER": "1", **command.env_dict},
                header=f"$ {Command(tuple(argv), command.env).shell()}")
    _write_launch(runs_dir, run_id, spec, Command(tuple(argv), command.env), pid, resume=True)
    return pid
