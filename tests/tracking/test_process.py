"""Processes behind runs on real processes: run ids, own process group, liveness, start times,
process trees, abort (the whole group), exit codes, log tails and how a dead launch is explained."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from memfactory.tracking import process
from tests.waiting import wait_until

# A parent that starts a grandchild (as a trainer's data-loader workers would) and both sleep.
FAMILY = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(str(child.pid))
print("started", flush=True)
time.sleep(60)
"""


def test_run_ids_sort_by_creation_time_and_carry_the_name():
    first = process.new_run_id("MemAgent tiny/CPU")
    assert "memagent-tiny-cpu" in first
    time.sleep(1.05)
    second = process.new_run_id("aaa")  # a name that sorts before the first one's still sorts after it
    assert sorted([second, first]) == [first, second]


def test_new_run_id_is_a_safe_name_in_one_format():
    run_id = process.new_run_id("a b/../c")
    assert "/" not in run_id and " " not in run_id and Path(run_id).name == run_id
    assert run_id[16:-5] == "a-b-c" == process.slugify("a b/../c")
    assert process.slugify("Ünïcode only: ✓✓") == "n-code-only" and process.slugify("✓") == "run"
    assert len(process.slugify("x" * 100)) == 32


def test_is_alive_treats_an_unreaped_child_as_dead():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_until(lambda: not process.is_alive(proc.pid))  # a zombie until wait()
    proc.wait()
    assert not process.is_alive(None) and not process.is_alive(0) and not process.is_alive(-5)
    assert process.is_alive(os.getpid())


def test_process_start_is_the_clock_ticks_since_boot_that_proc_stat_holds():
    """The start is stored with a run's pid; earlier versions read it from /proc, so it must not change unit."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = process.process_start(sleeper.pid)
        assert started is not None and started == process.process_start(sleeper.pid)  # stable
        stat = Path(f"/proc/{sleeper.pid}/stat")
        if stat.exists():
            assert started == int(stat.read_text().rsplit(")", 1)[1].split()[19])
        assert started >= process.process_start(os.getpid())  # started after this test process
    finally:
        sleeper.kill()
        sleeper.wait()
    assert process.process_start(sleeper.pid) is None and process.process_start(None) is None


def test_spawn_runs_in_own_group_and_abort_kills_the_group(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    pid = process.spawn([sys.executable, "-c", FAMILY, str(pid_file)], tmp_path / "run", header="$ family")
    try:
        assert os.getpgid(pid) == pid != os.getpgid(0)  # its own process group (new session)
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text())
        grandchild = int(pid_file.read_text())
        assert process.is_alive(pid) and process.is_alive(grandchild)
        tree = process.process_tree(pid)
        assert set(tree) == {pid, grandchild} and tree[grandchild] == process.process_start(grandchild)
        assert wait_until(lambda: "started" in process.tail(tmp_path / "run" / "stdout.log", 5))
        assert process.tail(tmp_path / "run" / "stdout.log", 5).splitlines()[0] == "$ family"
        assert process.abort(pid, grace=5.0) is True
        assert not process.is_alive(pid)
        assert wait_until(lambda: not process.is_alive(grandchild))
        assert process.still_running(tree) == {} and process.process_tree(pid) == {}
        assert process.abort(pid) is False  # already gone
        assert process.exit_code(pid) == -15
    finally:
        if process.is_alive(pid):
            os.killpg(pid, 9)


def test_abort_escalates_to_sigkill(tmp_path):
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    pid = process.spawn([sys.executable, "-c", stubborn], tmp_path)
    assert wait_until(lambda: "ready" in process.tail(tmp_path / "stdout.log", 1))
    start = time.monotonic()
    assert process.abort(pid, grace=0.5)
    assert not process.is_alive(pid)
    assert time.monotonic() - start < 5
    assert process.exit_code(pid) == -9


def test_abort_a_process_that_is_not_a_group_leader():
    """A trainer started from a terminal shares its shell's group: only that process is stopped."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert os.getpgid(proc.pid) != proc.pid
        assert process.is_alive(proc.pid)
        assert process.abort(proc.pid, grace=5.0)
        assert proc.wait(10) == -15
        assert process.is_alive(os.getpid())  # the test process (same group) is untouched
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_recycled_pid_is_not_the_tree_member_it_replaced():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = process.process_tree(sleeper.pid)
        assert process.still_running(tree) == tree
        assert process.still_running({sleeper.pid: tree[sleeper.pid] - 1}) == {}  # same pid, other start
    finally:
        sleeper.kill()
        sleeper.wait()


def test_tail(tmp_path):
    path = tmp_path / "log.txt"
    assert process.tail(path, 3) == ""
    path.write_text("".join(f"line {i}\n" for i in range(10_000)))
    assert process.tail(path, 3) == "line 9997\nline 9998\nline 9999"
    assert process.tail(path, 0) == ""
    assert process.tail(path).splitlines() == [f"line {i}" for i in range(9980, 10_000)]  # LOG_TAIL_LINES
    path.write_bytes(b"a\nb\xff\nc")
    assert process.tail(path, 2).splitlines() == ["b\ufffd", "c"]
    assert process.tail(tmp_path, 2) == ""  # a folder: unreadable, not an exception


def test_exit_message_names_the_code_the_log_and_the_first_failing_rank(tmp_path):
    pid = process.spawn([sys.executable, "-c", "import sys; print('weights missing'); sys.exit(3)"], tmp_path)
    assert wait_until(lambda: not process.is_alive(pid))
    log = process.tail(tmp_path / "stdout.log", 200)
    message = process.exit_message(pid, "before it recorded the run", log)
    assert message.startswith("the trainer exited with code 3 before it recorded the run")
    assert message.endswith("last lines of stdout.log:\nweights missing")
    assert process.exit_message(None, "early", "") == "the trainer exited (exit code unknown) early"

    torchrun = ["rank output: ValueError: bad", "Traceback (most recent call last):",
                '  File "/x/torch/distributed/elastic/agent.py", line 1',
                "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
                "Root Cause (first observed failure):", "[0]:",
                "  rank      : 1 (local_rank: 1)", "  exitcode  : 2 (pid: 77)"]
    kept, root = process.launcher_noise(torchrun)
    assert kept == ["rank output: ValueError: bad"] and root == "first failure: rank 1 (local_rank: 1), exit code 2 (pid: 77)"
    assert process.launcher_noise(["plain"]) == (["plain"], None)


def test_free_port_can_be_bound_and_lies_outside_the_ephemeral_range(monkeypatch):
    """Outside the range the kernel hands to outgoing connections, so nothing takes it by chance
    before the caller binds it; with no room outside, a port-0 bind's port is the fallback."""
    import socket

    low, high = process.ephemeral_ports()
    for _ in range(20):
        port = process.free_port()
        assert not low <= port <= high and port >= process.LOWEST_PORT
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    monkeypatch.setattr(process, "ephemeral_ports", lambda: (1024, 65535))
    port = process.free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
