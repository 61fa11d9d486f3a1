"""Start, watch and stop ``python -m memfactory train`` runs from the UI.

A run is its own process group (``start_new_session=True``) writing into ``runs/<id>/``, so it
outlives a closed browser tab or a restarted UI; the UI only needs the pid (the trainer records it
in the runs database) to re-attach, tail its logs or abort it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from webui.workspace import check_name, confine

# Children started by this process, so their exit status gets reaped (no zombies).
_children: dict[int, subprocess.Popen] = {}


def new_run_id(preset_name: str = "run") -> str:
    """``20261129-221855-<preset>-ab12``: sorts by start time, unique, a safe folder name."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    stem = "".join(c if c.isalnum() or c in "_.-" else "_" for c in preset_name)[:40] or "run"
    return f"{stamp}-{stem}-{secrets.token_hex(2)}"


def start_run(
    preset_path: str | Path,
    *,
    runs_dir: str | Path,
    extra_args: Sequence[str] = (),
    run_id: str | None = None,
) -> tuple[str, int]:
    """Launch ``memfactory train PRESET --run-id ID``, output to ``runs/<id>/stdout.log``; (run_id, pid).

    The trainer itself copies the preset to ``runs/<id>/preset.yaml`` and records the run (and this
    pid) in the runs database. ``MEMFACTORY_RUNNER=1`` tells it stdout already is the log file.
    """
    preset_path = Path(preset_path).resolve()
    if not preset_path.is_file():
        raise FileNotFoundError(preset_path)
    runs_dir = Path(runs_dir).resolve()
    run_id = check_name(run_id or new_run_id(preset_path.stem), "run id")
    run_dir = confine(runs_dir, run_id)
    if run_dir.exists():
        raise FileExistsError(run_dir)
    command = [sys.executable, "-m", "memfactory", "train", str(preset_path), "--run-id", run_id,
               "--runs-dir", str(runs_dir), "--no-progress", *extra_args]
    pid = spawn(command, run_dir, cwd=runs_dir.parent, env={"MEMFACTORY_RUNNER": "1"})
    return run_id, pid


def resume_run(
    run_id: str,
    *,
    runs_dir: str | Path,
    preset_path: str | Path | None = None,
    extra_args: Sequence[str] = (),
) -> int:
    """Continue ``runs/<run_id>/`` from its last checkpoint (``memfactory train ... --resume``); its pid.

    The run's own preset copy (``runs/<id>/preset.yaml``) is trained unless ``preset_path`` is given;
    output is appended to the same ``stdout.log``.
    """
    runs_dir = Path(runs_dir).resolve()
    run_id = check_name(run_id, "run id")
    run_dir = confine(runs_dir, run_id)
    preset = Path(preset_path).resolve() if preset_path is not None else run_dir / "preset.yaml"
    if not preset.is_file():
        raise FileNotFoundError(preset)
    command = [sys.executable, "-m", "memfactory", "train", str(preset), "--resume", run_id,
               "--runs-dir", str(runs_dir), "--no-progress", *extra_args]
    return spawn(command, run_dir, cwd=runs_dir.parent, env={"MEMFACTORY_RUNNER": "1"})


def spawn(
    command: Sequence[str], run_dir: str | Path, *, cwd: str | Path | None = None, env: dict[str, str] | None = None
) -> int:
    """Start ``command`` in its own session with stdout+stderr appended to ``run_dir/stdout.log``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    with open(run_dir / "stdout.log", "ab") as log:
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


def abort(pid: int, grace: float = 5.0) -> bool:
    """SIGTERM the run's process group, SIGKILL it after ``grace`` seconds; True if it was running."""
    if not is_alive(pid):
        return False
    kill = os.killpg
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:  # not a group leader (started from a terminal, not by us): just the process
        kill = os.kill
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_alive(pid):
            return True
        time.sleep(0.05)
    try:
        kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 2.0
    while is_alive(pid) and time.monotonic() < deadline:
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
