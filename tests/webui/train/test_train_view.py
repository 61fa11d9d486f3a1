"""The followed run's state (webui.train.view) on a real runs database and real processes."""

from __future__ import annotations

import sys
import time

from memfactory.tracking import process
from memfactory.tracking.runs import RunsDB
from tests.waiting import wait_until
from webui.train import launcher
from webui.train import view as train_view
from webui.train.command import LaunchSpec
from webui.train.view import Attached


def test_default_preset_prefers_the_cpu_demo():
    assert train_view.default_preset(["a", "tiny_cpu_demo", "b"]) == "tiny_cpu_demo"
    assert train_view.default_preset(["b", "a"]) == "b"
    assert train_view.default_preset([]) is None


def test_status_and_progress_text():
    view = train_view.RunView(run_id="r1", status="running", step=12, total=300, elapsed_s=30, eta_s=720, preset="p")
    html = train_view.progress_html(view)
    assert 'value="12" max="300"' in html and 'data-step="12"' in html
    assert "step 12 / 300" in html and "4%" in html and "ETA 0:12:00" in html and "elapsed 0:00:30" in html
    assert "**running**" in train_view.status_markdown(view) and "`r1` (p)" in train_view.status_markdown(view)
    failed = train_view.RunView(run_id="r2", status="failed", error="RuntimeError: boom\nline a\nline b")
    text = train_view.status_markdown(failed, {"failed": "失败"})
    assert "**失败**" in text and "RuntimeError: boom" in text and "line b" in text
    assert "ETA" not in train_view.progress_html(failed)
    assert "No run" in train_view.status_markdown(train_view.RunView(run_id=None))
    created = train_view.RunView(run_id="r3", status="created")  # the database's word, not a UI-only one
    assert "**created**" in train_view.status_markdown(created) and "ETA -" in train_view.progress_html(created)


def test_process_that_dies_before_recording_the_run_shows_its_exit_and_log(ws):
    db = RunsDB(ws / "runs" / "memfactory.db")
    script = "import sys; print('loading the model'); print('Traceback: OSError: weights missing'); sys.exit(3)"
    pid = process.spawn([sys.executable, "-c", script], ws / "runs" / "r-early")
    attached = Attached(run_id="r-early", pid=pid, launched_at=time.time())
    view = wait_until(lambda: (v := train_view.poll(db, attached)).status != "created" and v)
    assert view.status == "failed" and not view.active
    assert "code 3" in view.error and "weights missing" in view.error and "weights missing" in view.log
    assert "weights missing" in train_view.status_markdown(view)


def test_running_record_with_a_dead_trainer_becomes_failed(ws):
    db = RunsDB(ws / "runs" / "memfactory.db")
    run_dir = ws / "runs" / "r-dead"
    run_dir.mkdir()
    (run_dir / "stdout.log").write_text("step 1/5\nSegmentation fault\n")
    db.create_run("p", run_dir, run_id="r-dead", total_steps=5)
    db.set_status("r-dead", "running", pid=2**22 + 4321)  # no such process
    view = train_view.poll(db, Attached(run_id="r-dead"))
    assert view.status == "failed" and "Segmentation fault" in view.error
    assert db.get("r-dead").status == "failed"


def test_row_without_pid_and_a_dead_launcher_is_marked_failed(ws):
    db = RunsDB(ws / "runs" / "memfactory.db")
    pid = process.spawn([sys.executable, "-c", "print('killed while importing torch')"], ws / "runs" / "r-nopid")
    db.create_run("p", ws / "runs" / "r-nopid", run_id="r-nopid", total_steps=5)  # created, no pid yet
    assert wait_until(lambda: not process.is_alive(pid))
    assert train_view.poll(db, Attached(run_id="r-nopid")).status == "created"  # nothing known of its launch
    view = train_view.poll(db, Attached(run_id="r-nopid", pid=pid, launched_at=time.time() - 1))
    assert view.status == "failed" and "killed while importing torch" in view.error
    assert "exited with code 0 before it started training" in view.error
    assert db.get("r-nopid").status == "failed"
    assert train_view.pick_run(db) == "r-nopid"  # nothing running: the newest run


def test_pick_run_prefers_the_newest_running(ws):
    db = RunsDB(ws / "runs" / "memfactory.db")
    assert train_view.pick_run(db) is None
    db.create_run("p", ws / "runs" / "old", run_id="old")
    db.set_status("old", "running")  # this test process: alive
    db.create_run("p", ws / "runs" / "new", run_id="new")
    db.set_status("new", "finished")
    assert train_view.pick_run(db) == "old"
    assert [value for _, value in train_view.run_choices(db)] == ["new", "old"]
    assert train_view.run_choices(db)[1][0] == "old · running"


def test_a_launch_that_dies_at_start_up_shows_its_error_and_leaves_no_run_row(ws):
    """Two ranks that die before training (here: an argument ``memfactory train`` refuses) under
    accelerate's launcher: the tab's poll reports the launcher's exit code and the log lines, and
    the runs database stays empty."""

    db = RunsDB(ws / "runs" / "memfactory.db")
    spec = LaunchSpec(strategy="ddp", num_processes=2, overrides={"steps": 2})
    run_id, pid = launcher.start_run(ws / "presets" / "tiny.yaml", runs_dir=ws / "runs", spec=spec,
                                   extra_args=["--no-such-option"])
    attached = Attached(run_id=run_id, pid=pid, launched_at=time.time())
    view = wait_until(lambda: not (v := train_view.poll(db, attached)).active and v, timeout=120, every=0.5)
    assert view is not None and view.status == "failed", train_view.poll(db, attached)
    assert "exited with code 1 before it recorded the run" in view.error
    assert "--no-such-option" in view.error  # argparse's complaint, from the log's last lines
    status = train_view.status_markdown(view)
    assert "failed" in status and "last lines of stdout.log" in status
    assert "(first failure: rank 1 (local_rank: 1), exit code 2" in view.error or \
        "(first failure: rank 0 (local_rank: 0), exit code 2" in view.error
    assert "ChildFailedError" not in view.error  # the launcher's own traceback is not the error
    first = (ws / "runs" / run_id / "stdout.log").read_text().splitlines()[0]
    assert first.startswith("$ OMP_NUM_THREADS=1 ") and "--num_processes 2" in first  # the command heads the log
    assert db.list_runs() == [] and not process.process_tree(pid)


def test_followed_runs_say_when_a_session_has_left_a_run():
    followed = train_view.FollowedRuns(limit=2)
    assert followed.is_current("s1", "r-a")  # a session it does not know (a restarted UI) is never dropped
    followed.follow("s1", "r-a")
    assert followed.is_current("s1", "r-a") and not followed.is_current("s1", "r-b")
    followed.follow("s1", "r-b")  # the user picked another run
    assert not followed.is_current("s1", "r-a") and followed.is_current("s1", "r-b")
    followed.follow("s2", None)  # a session with no run yet
    assert followed.is_current("s2", None) and not followed.is_current("s2", "r-a")
    followed.follow(None, "r-c")  # a call without a session records nothing and is never dropped
    assert followed.is_current(None, "r-a")
    followed.follow("s3", "r-c")  # over the limit: the least recently changed session is forgotten
    assert followed.is_current("s1", "r-a") and not followed.is_current("s3", "r-a")
