"""The processes behind runs: run ids, start, liveness, process trees, abort, exit codes, log tails.

One owner for what the CLI, the trainer, the runs database and the web UI need to know about a
process, on ``psutil`` rather than hand-parsed ``/proc``. A run started here is its own session
(``start_new_session=True``) writing into ``runs/<id>/stdout.log``, so it outlives the UI that
launched it; the children this process started are kept so their exit status is reaped (no zombies)
and can be reported.

A process is identified by its pid *and* its start time (:func:`process_start`): the pair stored in
the runs database tells a live trainer from an unrelated process that got its recycled pid.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import psutil

from memfactory.tracking.metrics import RunDir

LOG_TAIL_LINES = 20
_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Children started by this process, so their exit status gets reaped (no zombies) and reported.
_children: dict[int, subprocess.Popen] = {}


# --------------------------------------------------------------------------- run ids


def slugify(text: str, max_len: int = 32) -> str:
    """Lowercase ``a-z0-9-`` slug of ``text`` (``run`` if nothing is left)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].strip("-") or "run"


def new_run_id(name: str = "run") -> str:
    """The one run-id format, for the CLI and the UI alike: ``20261129-221903-memagent-tiny-cpu-3f2a``.

    Sorts by creation time (UTC), carries the preset's name as a slug, and is a safe folder name.
    """
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{slugify(name)}-{secrets.token_hex(2)}"


# --------------------------------------------------------------------------- liveness and identity


def is_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs: not gone and not a zombie. A finished child of ours is reaped."""
    if not pid or pid <= 0:
        return False
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None  # poll() reaps it, so no zombie is left behind
    try:
        return psutil.Process(pid).status() not in _GONE
    except psutil.NoSuchProcess:  # ZombieProcess included
        return False
    except psutil.AccessDenied:
        return True  # exists, owned by someone else


def _ticks(process: psutil.Process, boot: float) -> int:
    return round((process.create_time() - boot) * _CLOCK_TICKS)


def process_start(pid: int | None) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (None if unknown or gone).

    Stored with a run's pid so a recycled pid is not taken for the trainer. Ticks since boot, not
    epoch seconds: they never move with clock corrections, and they are the unit earlier versions
    read from ``/proc/<pid>/stat``, so rows written by them still compare right.
    """
    if not pid or pid <= 0:
        return None
    try:
        return _ticks(psutil.Process(pid), psutil.boot_time())
    except (psutil.Error, OSError):
        return None


def exit_code(pid: int | None) -> int | None:
    """The exit status of a process this process started, once it has ended (else None)."""
    child = _children.get(pid) if pid else None
    return None if child is None else child.poll()


def process_tree(pid: int) -> dict[int, int]:
    """``{pid: start}`` of ``pid`` and every live descendant (empty when ``pid`` is gone).

    torchrun (under ``accelerate launch``) starts each rank in a session of its own, so the
    launcher's process group does not hold them; its process tree does.
    """
    try:
        root = psutil.Process(pid)
        if root.status() in _GONE:
            return {}
        members = [root, *root.children(recursive=True)]
        boot = psutil.boot_time()
    except psutil.Error:
        return {}
    tree: dict[int, int] = {}
    for member in members:
        try:
            if member.status() not in _GONE:
                tree[member.pid] = _ticks(member, boot)
        except psutil.Error:
            continue
    return tree


def still_running(tree: dict[int, int]) -> dict[int, int]:
    """The members of ``tree`` still alive (same pid and start: a reused pid is not ours)."""
    alive = {}
    for pid, started in tree.items():
        if pid in _children:
            if _children[pid].poll() is None:
                alive[pid] = started
        elif is_alive(pid) and process_start(pid) == started:
            alive[pid] = started
    return alive


# --------------------------------------------------------------------------- start and stop


def spawn(
    command: Sequence[str], run_dir: str | Path, *, cwd: str | Path | None = None, env: dict[str, str] | None = None,
    header: str | None = None,
) -> int:
    """Start ``command`` in its own session with stdout+stderr appended to ``run_dir/stdout.log``
    (after ``header``: a training launch writes its command there, ``$ VAR=... argv``, for the record)."""
    folder = RunDir(run_dir)
    folder.path.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    with open(folder.log_path, "ab") as log:
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
        if not still_running(tree):
            return True
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for member in still_running(tree):
        try:
            os.kill(member, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 2.0
    while still_running(tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


# Linux's default ephemeral range, used where /proc does not say
DEFAULT_EPHEMERAL = (32768, 60999)
LOWEST_PORT = 10000  # clear of the well-known and the commonly configured service ports


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for outgoing connections' source ports and port-0 binds (inclusive)."""
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return low, high


def free_port(tries: int = 64) -> int:
    """A TCP port nobody listens on now, for a server or a multi-process run's rendezvous.

    Chosen at random *outside* the kernel's ephemeral range: the caller binds it seconds later
    (after its child has imported torch), and an ephemeral port can meanwhile go to any outgoing
    connection or port-0 bind on the machine (a two-process test once failed EADDRINUSE that way);
    a port outside the range is taken only by someone who names it. Falls back to a port-0 bind
    when no such port is free (or the range leaves none).
    """
    low, high = ephemeral_ports()
    outside = [(LOWEST_PORT, low - 1)] if low > LOWEST_PORT else []
    outside += [(high + 1, 65535)] if high < 65535 else []
    for _ in range(tries if outside else 0):
        a, b = secrets.choice(outside)
        port = a + secrets.randbelow(b - a + 1)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- logs and how a process ended


def tail(path: str | Path, n: int = LOG_TAIL_LINES) -> str:
    """The last ``n`` whole lines of a text file ("" when it is missing or unreadable)."""
    path = Path(path)
    if n <= 0:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            block, data = 8192, b""
            while size > 0 and data.count(b"\n") <= n:
                step = min(block, size)
                size -= step
                handle.seek(size)
                data = handle.read(step) + data
    except OSError:
        return ""
    lines = deque(data.decode("utf-8", errors="replace").splitlines(), maxlen=n)
    return "\n".join(lines)


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
    """``the trainer exited with code 3 <when>; last lines of stdout.log: ...`` for a launch that died."""
    code = exit_code(pid)
    how = f"with code {code}" if code is not None else "(exit code unknown)"
    message = f"the trainer exited {how} {when}"
    lines, root = launcher_noise(log.strip().splitlines())
    if root:
        message += f" ({root})"
    lines = lines[-8:]
    return message + ("; last lines of stdout.log:\n" + "\n".join(lines) if lines else "")
