"""The runs database on real SQLite files: lifecycle, metrics, concurrency, reconcile, errors."""

from __future__ import annotations

import math
import multiprocessing as mp
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from memfactory.errors import MemFactoryError
from memfactory.tracking.runs import RunsDB, is_alive, new_run_id


def _db(tmp_path) -> RunsDB:
    return RunsDB(tmp_path / "runs" / "memfactory.db")


def test_run_ids_sort_by_creation_time_and_carry_the_name():
    first = new_run_id("MemAgent tiny/CPU")
    assert "memagent-tiny-cpu" in first

    time.sleep(1.05)
    second = new_run_id("aaa")  # a name that sorts before the first one's still sorts after it
    assert sorted([second, first]) == [first, second]


def test_lifecycle_progress_and_listing(tmp_path):
    db = _db(tmp_path)
    assert db.db.journal_mode == "wal"
    run = db.create_run("tiny", tmp_path / "r1", total_steps=10, meta={"device": "cpu", "attn": "sdpa"})
    assert run.status == "created" and run.step == 0 and run.meta == {"device": "cpu", "attn": "sdpa"}
    assert run.started_at is None and run.progress == 0.0

    running = db.set_status(run.id, "running")
    assert running.status == "running" and running.started_at is not None
    import os

    assert running.pid == os.getpid()

    db.update_progress(run.id, 1, reward=0.2)
    db.update_progress(run.id, 2, reward=0.7)
    db.update_progress(run.id, 3, reward=0.4)
    db.update_progress(run.id, 4, reward=float("nan"))  # NaN keeps the last finite value
    got = db.get(run.id)
    assert (got.step, got.best_reward, got.last_reward) == (4, 0.7, 0.4)
    assert got.progress == 0.4

    db.update_meta(run.id, model_path="tiny://qwen3-mini")
    assert db.get(run.id).meta == {"device": "cpu", "attn": "sdpa", "model_path": "tiny://qwen3-mini"}

    done = db.set_status(run.id, "finished")
    assert done.status == "finished" and done.ended_at >= done.started_at and done.duration_s >= 0

    other = db.create_run("other", tmp_path / "r2")
    assert [r.id for r in db.list_runs()] == [other.id, run.id]  # newest first
    assert [r.id for r in db.list_runs(status="finished")] == [run.id]
    assert db.get("nope") is None
    with pytest.raises(ValueError):
        db.set_status(run.id, "exploded")
    with pytest.raises(MemFactoryError, match="already exists"):
        db.create_run("tiny", tmp_path / "r1", run_id=run.id)

    # a second handle on the same file (the UI process) sees everything
    assert RunsDB(db.path).get(run.id).best_reward == 0.7


def test_metrics_frame_is_wide_sorted_and_nan_safe(tmp_path):
    db = _db(tmp_path)
    a = db.create_run("a", tmp_path / "a").id
    b = db.create_run("b", tmp_path / "b").id
    for step in (2, 1, 3):
        db.log_metrics(a, step, {"loss": 1.0 / step, "reward/mean": step * 0.1, "note": "text is skipped"})
    assert db.log_metrics(b, 1, {"loss": float("nan"), "kl": 0.01}) == 2
    db.log_metrics(a, 3, {"loss": 0.5})  # re-logging a step replaces

    frame = db.metrics_frame([a, b])
    assert list(frame.columns[:2]) == ["run_id", "step"]
    assert set(frame.columns) == {"run_id", "step", "loss", "reward/mean", "kl"}
    a_rows = frame[frame.run_id == a]
    assert a_rows.step.tolist() == [1, 2, 3]
    assert a_rows.loss.tolist() == [1.0, 0.5, 0.5]
    b_row = frame[frame.run_id == b].iloc[0]
    assert math.isnan(b_row.loss) and b_row.kl == 0.01

    only = db.metrics_frame(a, keys=["loss"], since_step=1)
    assert list(only.columns) == ["run_id", "step", "loss"] and only.step.tolist() == [2, 3]
    assert db.metric_keys(a) == ["loss", "reward/mean"]
    assert db.metrics_frame([]).empty and db.metrics_frame("missing").empty

    assert db.truncate_metrics(a, after_step=1) == 4
    assert db.metrics_frame(a).step.tolist() == [1]


def _writer(path: str, run_id: str, worker: int, steps: int, barrier) -> None:
    db = RunsDB(path, timeout=60)
    barrier.wait(timeout=60)  # both start writing at the same moment
    for step in range(steps):
        db.log_metrics(run_id, step, {f"w{worker}/a": step, f"w{worker}/b": -step})
        db.update_progress(run_id, step, reward=float(step))


def test_two_processes_writing_concurrently_lose_nothing(tmp_path):
    db = _db(tmp_path)
    run_id = db.create_run("conc", tmp_path / "conc").id
    ctx = mp.get_context("spawn")
    steps = 150
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(db.path), run_id, w, steps, barrier)) for w in (0, 1)]
    for p in procs:
        p.start()
    # meanwhile this process keeps reading, like the UI does
    while any(p.is_alive() for p in procs):
        db.metrics_frame(run_id)
        db.list_runs()
        time.sleep(0.02)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    frame = db.metrics_frame(run_id)
    assert len(frame) == steps
    for w in (0, 1):
        assert frame[f"w{w}/a"].tolist() == list(range(steps))
        assert frame[f"w{w}/b"].tolist() == [-s for s in range(steps)]
    assert db.get(run_id).best_reward == steps - 1
    # the two writers really overlapped in time
    spans = [
        db.db.execute("SELECT MIN(time), MAX(time) FROM metrics WHERE key = ?", [f"w{w}/a"]).fetchone() for w in (0, 1)
    ]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]


def test_threads_get_their_own_connections(tmp_path):
    db = _db(tmp_path)
    run_id = db.create_run("t", tmp_path / "t").id

    def work(k):
        for step in range(20):
            db.log_metrics(run_id, step, {f"t{k}": step})
        return threading.get_ident()

    with ThreadPoolExecutor(3) as pool:
        idents = list(pool.map(work, range(3)))  # re-raises any thread's error here
    assert len(idents) == 3
    assert len(db.metrics_frame(run_id)) == 20


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_reconcile_marks_a_run_with_a_dead_pid_failed_with_its_log_tail(tmp_path):
    db = _db(tmp_path)
    dead = db.create_run("dead", tmp_path / "dead")
    (tmp_path / "dead").mkdir()
    (tmp_path / "dead" / "stdout.log").write_text("".join(f"line {i}\n" for i in range(100)) + "Killed\n")
    db.set_status(dead.id, "running", pid=_dead_pid())

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = db.create_run("alive", tmp_path / "alive")
        db.set_status(alive.id, "running", pid=sleeper.pid)
        never_started = db.create_run("queued", tmp_path / "queued")
        finished = db.create_run("done", tmp_path / "done")
        db.set_status(finished.id, "finished", pid=_dead_pid())

        assert is_alive(sleeper.pid)
        assert db.reconcile() == [dead.id]
        got = db.get(dead.id)
        assert got.status == "failed" and got.ended_at is not None
        assert "Killed" in got.error and "line 99" in got.error and "line 10\n" not in got.error
        assert db.get(alive.id).status == "running"
        assert db.get(never_started.id).status == "created"
        assert db.get(finished.id).status == "finished"
        assert db.reconcile() == []

        # the same pid number now belonging to another process (pid reuse) is not the trainer
        assert db.get(alive.id).pid_start is not None
        db.update(alive.id, pid_start=db.get(alive.id).pid_start - 1)
        assert db.reconcile() == [alive.id]
        assert db.get(alive.id).status == "failed"
        # resuming a failed run clears its old error
        resumed = db.set_status(alive.id, "running", pid=sleeper.pid)
        assert resumed.error is None and resumed.status == "running" and resumed.process_alive()

        with pytest.raises(MemFactoryError, match="still running"):
            db.delete(alive.id)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not is_alive(sleeper.pid)


def test_is_alive_treats_an_unreaped_child_as_dead():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])

    deadline = time.time() + 20
    while is_alive(proc.pid) and time.time() < deadline:  # zombie until wait()
        time.sleep(0.05)
    assert not is_alive(proc.pid)
    proc.wait()
    assert not is_alive(None) and not is_alive(0)


def test_delete_removes_row_metrics_and_optionally_the_folder(tmp_path):
    db = _db(tmp_path)
    run_id = new_run_id("gone")
    run_dir = tmp_path / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("{}\n")
    db.create_run("gone", run_dir, run_id=run_id)
    db.log_metrics(run_id, 1, {"loss": 1.0})
    db.delete(run_id, remove_files=True)
    assert db.get(run_id) is None and db.metrics_frame(run_id).empty and not run_dir.exists()
    with pytest.raises(MemFactoryError, match="no run"):
        db.delete(run_id)


def test_unknown_id_suggests_close_ids(tmp_path):
    db = _db(tmp_path)
    run = db.create_run("memagent", tmp_path / "m")
    with pytest.raises(MemFactoryError) as info:
        db.require(run.id[:-1] + "x")
    assert run.id in str(info.value)


def test_unreadable_or_locked_database_gives_a_clear_error(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(MemFactoryError, match="not a readable SQLite file"):
        RunsDB(junk)

    db = RunsDB(tmp_path / "locked.db", timeout=0.2)
    run_id = db.create_run("x", tmp_path / "x").id
    import sqlite3

    holder = sqlite3.connect(db.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(MemFactoryError, match="locked"):
            db.log_metrics(run_id, 1, {"loss": 1.0})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert db.log_metrics(run_id, 1, {"loss": 1.0}) == 1


def _cli(argv, capsys):
    from memfactory.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_runs_list_show_and_unknown_id(tmp_path, capsys):
    db_path = tmp_path / "runs" / "memfactory.db"
    code, _, err = _cli(["runs", "list", "--db", str(db_path)], capsys)
    assert code == 2 and "no runs database" in err and not db_path.exists()

    db = RunsDB(db_path)
    code, out, _ = _cli(["runs", "list", "--db", str(db_path)], capsys)
    assert code == 0 and "no runs" in out

    run_dir = tmp_path / "runs" / "r"
    run = db.create_run("memagent_tiny_cpu", run_dir, total_steps=10, meta={"device": "cpu"})
    db.set_status(run.id, "running")
    db.update_progress(run.id, 5, reward=0.625)
    db.log_metrics(run.id, 5, {"loss": 0.125, "reward/mean": 0.625})
    crashed = db.create_run("crashy", tmp_path / "runs" / "c")
    db.set_status(crashed.id, "running", pid=_dead_pid())

    code, out, _ = _cli(["runs", "list", "--db", str(db_path)], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["ID", "PRESET", "STATUS"]
    assert lines[1].split()[:4] == [crashed.id, "crashy", "failed", "0"]  # reconciled, newest first
    assert lines[2].split()[:6] == [run.id, "memagent_tiny_cpu", "running", "5/10", "0.625", "0.625"]
    assert "PEAK GiB" in lines[0] and lines[2].split()[6] == "-"  # no hw/peak_gib logged yet
    db.log_metrics(run.id, 5, {"hw/peak_gib": 1.5})
    code, out, _ = _cli(["runs", "list", "--db", str(db_path)], capsys)
    assert out.splitlines()[2].split()[6] == "1.50"

    code, out, _ = _cli(["runs", "show", run.id, "--db", str(db_path)], capsys)
    assert code == 0
    assert "status:" in out and "running" in out and "5/10 (50%)" in out and "meta.device:" in out
    assert "last metrics (step 5):" in out and "loss: 0.125" in out and "hw/peak_gib: 1.5" in out
    assert any(line.split() == ["peak", "GiB:", "1.50"] for line in out.splitlines())

    code, out, _ = _cli(["runs", "show", crashed.id, "--db", str(db_path)], capsys)
    assert code == 0 and "error:" in out and "exited without reporting" in out

    code, out, err = _cli(["runs", "show", run.id[:-2], "--db", str(db_path)], capsys)
    assert code == 2 and "no run" in err and run.id in err and "Traceback" not in err

    code, out, err = _cli(["runs", "delete", crashed.id, "--db", str(db_path)], capsys)
    assert code == 0 and db.get(crashed.id) is None
    code, out, err = _cli(["runs", "delete", run.id, "--db", str(db_path)], capsys)
    assert code == 2 and "still running" in err


def test_a_database_from_an_older_schema_gains_the_new_columns(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT, run_dir TEXT, status TEXT, pid INTEGER)")
    conn.execute("INSERT INTO runs VALUES ('old-run', 'legacy', 'runs/old-run', 'finished', NULL)")
    conn.commit()
    conn.close()
    db = RunsDB(path)
    assert db.get("old-run").status == "finished" and db.get("old-run").pid_start is None
    assert db.set_status(db.create_run("new", tmp_path / "n").id, "running").pid_start is not None


def test_peak_gib_is_the_largest_logged_device_peak(tmp_path):
    """``hw/peak_gib`` lifts the run's ``peak_gib`` column; lower or non-finite values never lower it."""
    db = _db(tmp_path)
    run = db.create_run("p", tmp_path / "runs" / "p")
    other = db.create_run("q", tmp_path / "runs" / "q")
    assert db.get(run.id).peak_gib is None
    db.log_metrics(run.id, 1, {"hw/peak_gib": 1.25, "loss": 0.5})
    db.log_metrics(run.id, 2, {"hw/peak_gib": 2.75})
    db.log_metrics(run.id, 3, {"hw/peak_gib": 2.0})
    db.log_metrics(run.id, 4, {"hw/peak_gib": math.nan, "loss": 0.1})
    db.log_metrics(run.id, 5, {"loss": 0.2})
    assert db.get(run.id).peak_gib == 2.75
    assert db.get(other.id).peak_gib is None  # only the run that logged it
    frame = db.metrics_frame(run.id, ["hw/peak_gib"])
    assert frame["hw/peak_gib"].max() == db.get(run.id).peak_gib  # the column is the metric's max


def test_an_older_database_gains_peak_gib_and_keeps_its_runs(tmp_path):
    """A database made before ``peak_gib`` existed: the column is added on open, old rows read ``None``."""
    import sqlite3

    path = tmp_path / "before-peak.db"
    RunsDB(path).create_run("legacy", tmp_path / "l", run_id="legacy-run")
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE runs DROP COLUMN peak_gib")
    conn.commit()
    conn.close()
    db = RunsDB(path)
    assert db.get("legacy-run").peak_gib is None
    db.log_metrics("legacy-run", 1, {"hw/peak_gib": 0.5})
    assert db.get("legacy-run").peak_gib == 0.5
