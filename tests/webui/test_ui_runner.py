"""The run launcher on real processes: own process group, abort kills the whole group, log tail."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from webui import runner

# A parent that starts a grandchild (as a trainer's data-loader workers would) and both sleep.
FAMILY = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(str(child.pid))
print("started", flush=True)
time.sleep(60)
"""


def _wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_spawn_runs_in_own_group_and_abort_kills_the_group(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    pid = runner.spawn([sys.executable, "-c", FAMILY, str(pid_file)], tmp_path / "run")
    try:
        assert os.getpgid(pid) == pid != os.getpgid(0)  # its own process group (new session)
        assert _wait(lambda: pid_file.exists() and pid_file.read_text())
        grandchild = int(pid_file.read_text())
        assert runner.is_alive(pid) and runner.is_alive(grandchild)
        assert _wait(lambda: "started" in runner.tail(tmp_path / "run" / "stdout.log", 5))
        assert runner.abort(pid, grace=5.0) is True
        assert not runner.is_alive(pid)
        assert _wait(lambda: not runner.is_alive(grandchild), 10)
        assert runner.abort(pid) is False  # already gone
    finally:
        if runner.is_alive(pid):
            os.killpg(pid, 9)


def test_abort_escalates_to_sigkill(tmp_path):
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    pid = runner.spawn([sys.executable, "-c", stubborn], tmp_path)
    assert _wait(lambda: "ready" in runner.tail(tmp_path / "stdout.log", 1))
    start = time.monotonic()
    assert runner.abort(pid, grace=0.5)
    assert not runner.is_alive(pid)
    assert time.monotonic() - start < 5
    assert runner.exit_code(pid) is None or runner.exit_code(pid) == -9


def test_tail(tmp_path):
    path = tmp_path / "log.txt"
    assert runner.tail(path, 3) == ""
    path.write_text("".join(f"line {i}\n" for i in range(10_000)))
    assert runner.tail(path, 3) == "line 9997\nline 9998\nline 9999"
    assert runner.tail(path, 0) == ""
    path.write_bytes(b"a\nb\xff\nc")
    assert runner.tail(path, 2).splitlines() == ["b\ufffd", "c"]


def test_start_run_launches_memfactory_train(tmp_path):
    """The real CLI runs; an invalid preset makes it exit 2 with the problem in stdout.log."""
    preset = tmp_path / "broken.yaml"
    preset.write_text("name: broken\n")
    runs = tmp_path / "runs"
    run_id, pid = runner.start_run(preset, runs_dir=runs)
    assert run_id.endswith(tuple("0123456789abcdef")) and "broken" in run_id
    assert _wait(lambda: not runner.is_alive(pid), 120)
    assert runner.exit_code(pid) == 2
    log = (runs / run_id / "stdout.log").read_text()
    assert "invalid preset" in log and "agent" in log
    with pytest.raises(FileExistsError):
        runner.start_run(preset, runs_dir=runs, run_id=run_id)
    with pytest.raises(FileNotFoundError):
        runner.start_run(tmp_path / "missing.yaml", runs_dir=runs)


def test_new_run_id_is_a_safe_name():
    run_id = runner.new_run_id("a b/../c")
    assert "/" not in run_id and " " not in run_id
    assert Path(run_id).name == run_id


def test_start_run_trains_the_tiny_preset(tmp_path):
    """A real 2-step GRPO run on the tiny model, started the way the UI starts it."""
    preset = Path(__file__).resolve().parents[2] / "presets" / "tiny_test.yaml"
    if not preset.is_file():
        pytest.skip("presets/tiny_test.yaml is not shipped")
    runs = tmp_path / "runs"
    run_id, pid = runner.start_run(preset, runs_dir=runs, extra_args=["--set", "trainer.steps=2"])
    assert _wait(lambda: not runner.is_alive(pid), 240)
    log = runner.tail(runs / run_id / "stdout.log", 40)
    assert runner.exit_code(pid) == 0, log
    from memfactory.tracking.metrics import read_metrics

    records = read_metrics(runs / run_id / "metrics.jsonl").records
    assert [r["step"] for r in records] == [1, 2]
    assert "reward" in runner.tail(runs / run_id / "stdout.log", 40)


def test_abort_a_process_that_is_not_a_group_leader(tmp_path):
    """A trainer started from a terminal shares its shell's group: only that process is stopped."""
    import subprocess

    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert os.getpgid(process.pid) != process.pid
        assert runner.is_alive(process.pid)
        assert runner.abort(process.pid, grace=5.0)
        assert process.wait(10) == -15
        assert runner.is_alive(os.getpid())  # the test process (same group) is untouched
    finally:
        if process.poll() is None:
            process.kill()
