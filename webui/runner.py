"""Start, watch and stop ``python -m memfactory train`` runs from the UI.

A run is its own process group (``start_new_session=True``) writing into ``runs/<id>/``, so it
outlives a closed browser tab or a restarted UI; the UI only needs the pid (the trainer records it
in the runs database) to re-attach, tail its logs or abort it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from webui.launch_command import Command, LaunchSpec, build_command
from webui.workspace import check_name, confine

# Children started by this process, so their exit status gets reaped (no zombies).
_children: dict[int, subprocess.Popen] = {}


def new_run_id(preset_name: str = "run") -> str:
    """``20261129-221855-<preset>-ab12``: sorts by start time, unique, a safe folder name."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    stem = "".join(c if c.isalnum() or c in "_.-" else "_" for c in preset_name)[:40] or "run"
    return f"{stamp}-{stem}-{secrets.token_hex(2)}"


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


def free_port() -> int:
    """A TCP port nobody listens on now (for a multi-process run's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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

    The argv comes from :func:`webui.launch_command.build_command` (the Train tab previews the same
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


def spawn(
    command: Sequence[str], run_dir: str | Path, *, cwd: str | Path | None = None, env: dict[str, str] | None = None,
    header: str | None = None,
) -> int:
    """Start ``command`` in its own session with stdout+stderr appended to ``run_dir/stdout.log``
    (after ``header``: a training launch writes its command there, ``$ VAR=... argv``, for the record)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    with open(run_dir / "stdout.log", "ab") as log:
        if header:
            log.write(header.rstrip("\n").encode() + b"\n")
            log.flush()
        process = subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=full_env,
            start_new_session=True,  # its own process group: survives the UI, killable as a whole
        )
    _children[process.pid] = process
    return process.pid


def is_alive(pid: int) -> bool:
    """True while the process runs (a finished child of ours is reaped, a zombie counts as dead)."""
    if pid <= 0:
        return False
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None  # poll() reaps it, so no zombie is left behind
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def exit_code(pid: int) -> int | None:
    """The exit status of a run this process started, once it has ended (else None)."""
    child = _children.get(pid)
    return None if child is None else child.poll()


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time in clock ticks, state) from ``/proc/<pid>/stat``; None when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19]), fields[0]
    except (OSError, IndexError, ValueError):
        return None


def process_tree(pid: int) -> dict[int, int]:
    """``{pid: start time}`` of ``pid`` and every descendant. torchrun (under ``accelerate launch``)
    starts each rank in a session of its own, so the launcher's process group does not hold them."""
    parents: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[2] not in ("Z", "X"):
            parents.setdefault(stat[0], []).append(int(entry.name))
            starts[int(entry.name)] = stat[1]
    tree: dict[int, int] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        if current in starts and current not in tree:
            tree[current] = starts[current]
            todo.extend(parents.get(current, []))
    return tree


def _still_running(tree: dict[int, int]) -> dict[int, int]:
    """The members of ``tree`` still alive (same pid and start time: a reused pid is not ours)."""
    alive = {}
    for pid, started in tree.items():
        if pid in _children:
            if _children[pid].poll() is None:
                alive[pid] = started
            continue
        stat = _stat(pid)
        if stat is not None and stat[1] == started and stat[2] not in ("Z", "X"):
            alive[pid] = started
    return alive


def abort(pid: int, grace: float = 5.0) -> bool:
    """SIGTERM the run's process group, SIGKILL what is left of its process tree after ``grace``
    seconds; True if it was running. Under ``accelerate launch`` the launcher forwards the SIGTERM
    to its ranks (each its own session); any rank still alive after the grace is killed too."""
    if not is_alive(pid):
        return False
    tree = process_tree(pid)
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:  # not a group leader (started from a terminal, not by us): just the process
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if is_alive(pid):
            tree.update(process_tree(pid))  # ranks started after we looked
        if not _still_running(tree):
            return True
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for member in _still_running(tree):
        try:
            os.kill(member, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 2.0
    while _still_running(tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def tail(path: str | Path, n: int = 50) -> str:
    """The last ``n`` lines of a text file ("" when it does not exist yet)."""
    path = Path(path)
    if n <= 0 or not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        block, data = 8192, b""
        while size > 0 and data.count(b"\n") <= n:
            step = min(block, size)
            size -= step
            handle.seek(size)
            data = handle.read(step) + data
    lines = deque(data.decode("utf-8", errors="replace").splitlines(), maxlen=n)
    return "\n".join(lines)
