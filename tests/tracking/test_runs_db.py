"""The runs database on real SQLite files: lifecycle, summary columns, concurrency, reconcile, errors."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from memfactory.errors import MemFactoryError
from memfactory.tracking import metric_keys as keys
from memfactory.tracking.metrics import MetricsWriter
from memfactory.tracking.process import is_alive, new_run_id, spawn
from memfactory.tracking.runs import Launch, RunsDB, open_db


def _db(tmp_path) -> RunsDB:
    return RunsDB(tmp_path / "runs" / "memfactory.db")


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
    db.update_progress(run.id, 4, reward=float("nan"), seconds_per_step=2.5, eta_s=15.0)  # NaN keeps the last
    got = db.get(run.id)
    assert (got.step, got.best_reward, got.last_reward) == (4, 0.7, 0.4)
    assert got.progress == 0.4 and (got.seconds_per_step, got.eta_s) == (2.5, 15.0)
    db.update_progress(run.id, 5, reward="junk", seconds_per_step=math.inf)  # not numbers: columns kept
    got = db.get(run.id)
    assert (got.step, got.last_reward, got.seconds_per_step, got.eta_s) == (5, 0.4, 2.5, 15.0)

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


def test_a_new_database_has_no_per_step_table(tmp_path):
    """Per-step metrics live in metrics.jsonl; the database is the index of runs."""
    db = _db(tmp_path)
    assert db.db.table_names() == ["runs"]
    assert not hasattr(db, "log_metrics") and not hasattr(db, "metrics_frame")


def _writer(path: str, run_id: str, steps: int, barrier, out: str) -> None:
    db = RunsDB(path, timeout=60)
    barrier.wait(timeout=60)  # both start writing at the same moment
    began = time.time()
    for step in range(1, steps + 1):
        db.update_progress(run_id, step, reward=float(step), peak_gib=step / 100, seconds_per_step=0.5,
                           eta_s=(steps - step) * 0.5)
        if step == 1:  # each waits for the other's first write, so the two really overlap however they are scheduled
            barrier.wait(timeout=60)
    with open(out, "w") as fh:
        json.dump([began, time.time()], fh)


def test_two_processes_writing_concurrently_lose_nothing(tmp_path):
    db = _db(tmp_path)
    ids = [db.create_run(f"conc{w}", tmp_path / f"conc{w}").id for w in (0, 1)]
    ctx = mp.get_context("spawn")
    steps = 150
    barrier = ctx.Barrier(2)
    outs = [str(tmp_path / f"w{w}.json") for w in (0, 1)]
    procs = [ctx.Process(target=_writer, args=(str(db.path), ids[w], steps, barrier, outs[w])) for w in (0, 1)]
    for p in procs:
        p.start()
    # meanwhile this process keeps reading, like the UI does
    seen = {run_id: [] for run_id in ids}
    while any(p.is_alive() for p in procs):
        for run in db.list_runs():
            seen[run.id].append(run.step)
        time.sleep(0.02)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    for run_id in ids:
        got = db.get(run_id)
        assert (got.step, got.best_reward, got.peak_gib, got.eta_s) == (steps, steps, steps / 100, 0.0)
        assert seen[run_id] == sorted(seen[run_id])  # never went backwards
    spans = [json.loads(Path(out).read_text()) for out in outs]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # the two writers really overlapped


def test_threads_get_their_own_connections(tmp_path):
    db = _db(tmp_path)
    run_id = db.create_run("t", tmp_path / "t").id

    together = threading.Barrier(3)  # three live threads at once (a pool may reuse an idle one otherwise)

    def work(k):
        together.wait()
        for step in range(20):
            db.update_progress(run_id, step, reward=k * 100 + step)
            db.update_meta(run_id, **{f"t{k}": step})
        return threading.get_ident()

    with ThreadPoolExecutor(3) as pool:
        idents = list(pool.map(work, range(3)))  # re-raises any thread's error here
    assert len(set(idents)) == 3
    got = db.get(run_id)
    assert got.best_reward == 219 and got.meta == {"t0": 19, "t1": 19, "t2": 19}


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


def test_reconcile_uses_what_the_launcher_knows(tmp_path):
    """A row without a pid (the trainer died before recording it) is settled only with its launch:
    a launch that exited makes it failed with the exit code and log; an aborted one, aborted."""
    db = _db(tmp_path)
    early = tmp_path / "early"
    pid = spawn([sys.executable, "-c", "import sys; print('killed while importing torch'); sys.exit(4)"], early)
    db.create_run("p", early, run_id="early")
    deadline = time.time() + 60
    while is_alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    assert db.reconcile() == [] and db.get("early").status == "created"  # no pid, no launch: left alone
    assert db.reconcile({"early": Launch(pid=pid)}) == ["early"]
    got = db.get("early")
    assert got.status == "failed" and got.ended_at is not None
    assert "exited with code 4 before it started training" in got.error and "killed while importing" in got.error

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        db.create_run("p", tmp_path / "booting", run_id="booting")
        assert db.reconcile({"booting": Launch(pid=sleeper.pid)}) == []  # its launcher still runs
        db.create_run("p", tmp_path / "stopped", run_id="stopped")
        assert db.reconcile({"stopped": Launch(aborted=True)}) == ["stopped"]
        assert db.get("stopped").status == "aborted" and "aborted on request" in db.get("stopped").error
    finally:
        sleeper.kill()
        sleeper.wait()

    # a recorded pid that is gone after a user's abort: aborted, not failed
    db.create_run("p", tmp_path / "killed", run_id="killed")
    db.set_status("killed", "running", pid=_dead_pid())
    assert db.reconcile({"killed": Launch(pid=None, aborted=True)}) == ["killed"]
    assert db.get("killed").status == "aborted"


def test_delete_removes_the_row_and_optionally_the_folder(tmp_path):
    db = _db(tmp_path)
    run_id = new_run_id("gone")
    run_dir = tmp_path / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("{}\n")
    db.create_run("gone", run_dir, run_id=run_id)
    db.delete(run_id, remove_files=True)
    assert db.get(run_id) is None and not run_dir.exists()
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
            db.update_progress(run_id, 1, reward=1.0)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    db.update_progress(run_id, 1, reward=1.0)
    assert db.get(run_id).step == 1


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
    db.update_progress(run.id, 5, reward=0.625, seconds_per_step=12.0, eta_s=60.0)
    with MetricsWriter(run_dir) as writer:  # the trainer's per-step store
        writer.write(4, {keys.LOSS: 0.25, keys.REWARD_MEAN: 0.5})
        writer.write(5, {keys.LOSS: 0.125, keys.REWARD_MEAN: 0.625, keys.KL: math.nan, keys.HW_PEAK_GIB: 1.5})
    crashed = db.create_run("crashy", tmp_path / "runs" / "c")
    db.set_status(crashed.id, "running", pid=_dead_pid())

    code, out, _ = _cli(["runs", "list", "--db", str(db_path)], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["ID", "PRESET", "STATUS"]
    assert lines[1].split()[:4] == [crashed.id, "crashy", "failed", "0"]  # reconciled, newest first
    assert lines[2].split()[:6] == [run.id, "memagent_tiny_cpu", "running", "5/10", "0.625", "0.625"]
    assert "PEAK GiB" in lines[0] and lines[2].split()[6] == "-"  # no hw/peak_gib logged yet
    db.update_progress(run.id, 5, peak_gib=1.5)
    code, out, _ = _cli(["runs", "list", "--db", str(db_path)], capsys)
    assert out.splitlines()[2].split()[6] == "1.50"

    code, out, _ = _cli(["runs", "show", run.id, "--db", str(db_path)], capsys)
    assert code == 0
    assert "status:" in out and "running" in out and "5/10 (50%)" in out and "meta.device:" in out
    assert "last metrics (step 5):" in out and "loss: 0.125" in out and "hw/peak_gib: 1.5" in out
    assert "kl:" not in out  # NaN, stored as null: left out
    assert any(line.split() == ["peak", "GiB:", "1.50"] for line in out.splitlines())
    assert any(line.split() == ["ETA:", "0:01:00"] for line in out.splitlines())  # the trainer's, as in the UI
    assert any(line.split() == ["seconds/step:", "12"] for line in out.splitlines())

    code, out, _ = _cli(["runs", "show", crashed.id, "--db", str(db_path)], capsys)
    assert code == 0 and "error:" in out and "exited without reporting" in out
    assert any(line.split() == ["ETA:", "-"] for line in out.splitlines())

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
    assert db.get("old-run").eta_s is None and db.get("old-run").seconds_per_step is None
    assert db.set_status(db.create_run("new", tmp_path / "n").id, "running").pid_start is not None


def test_peak_gib_is_the_largest_logged_device_peak(tmp_path):
    """Each step's ``hw/peak_gib`` lifts the run's ``peak_gib`` column; lower or non-finite values never lower it."""
    db = _db(tmp_path)
    run = db.create_run("p", tmp_path / "runs" / "p")
    other = db.create_run("q", tmp_path / "runs" / "q")
    assert db.get(run.id).peak_gib is None
    for step, peak in enumerate([1.25, 2.75, 2.0, math.nan, None], 1):
        db.update_progress(run.id, step, peak_gib=peak)
    assert db.get(run.id).peak_gib == 2.75 and db.get(run.id).step == 5
    assert db.get(other.id).peak_gib is None  # only the run that logged it


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
    db.update_progress("legacy-run", 1, peak_gib=0.5)
    assert db.get("legacy-run").peak_gib == 0.5


def test_a_database_with_the_old_metrics_table_keeps_working(tmp_path):
    """Databases written before metrics.jsonl became the one per-step store keep their ``metrics``
    table on disk, unused; deleting a run also drops its old rows there."""
    path = tmp_path / "with-metrics.db"
    RunsDB(path).create_run("legacy", tmp_path / "l", run_id="legacy-run")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE metrics (run_id TEXT, step INTEGER, key TEXT, value FLOAT, time FLOAT, "
                 "PRIMARY KEY (run_id, step, key))")
    conn.execute("INSERT INTO metrics VALUES ('legacy-run', 1, 'loss', 0.5, 0.0), ('other', 1, 'loss', 0.1, 0.0)")
    conn.commit()
    conn.close()
    db = RunsDB(path)
    db.update_progress("legacy-run", 2, reward=0.5)
    assert db.get("legacy-run").step == 2
    db.delete("legacy-run")
    assert db.db.execute("SELECT run_id FROM metrics").fetchall() == [("other",)]


def test_open_db_shares_one_handle_and_readers_need_the_file(tmp_path):
    path = tmp_path / "runs" / "memfactory.db"
    with pytest.raises(MemFactoryError, match="no runs database"):
        open_db(path, create=False)
    assert not path.exists()
    db = open_db(path)
    assert open_db(path) is db and open_db(path, create=False) is db
    path.unlink()  # a wiped workspace: a fresh handle on a fresh file
    assert open_db(path) is not db and path.is_file()
