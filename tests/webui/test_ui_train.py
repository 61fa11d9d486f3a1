"""Train tab logic (webui.train_view) on real files, a real runs database and real processes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from memfactory.errors import ConfigError, MemFactoryError
from memfactory.tracking import process
from memfactory.tracking.metrics import read_records
from memfactory.tracking.runs import RunsDB
from memfactory.trainer.checkpoint import latest_checkpoint
from webui import train_view
from webui.train_view import Attached

ROOT = Path(__file__).resolve().parents[2]


def _wait(predicate, timeout=60.0, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return None


@pytest.fixture()
def ws(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMFACTORY_WORKSPACE", str(tmp_path))
    (tmp_path / "presets").mkdir()
    (tmp_path / "runs").mkdir()
    return tmp_path


def _tiny_preset(ws: Path, name: str, **trainer) -> str:
    data = yaml.safe_load((ROOT / "presets" / "tiny_test.yaml").read_text())
    data["name"] = name
    data["trainer"].update(trainer)
    (ws / "presets" / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return name


# --------------------------------------------------------------------------- presets


def test_default_preset_prefers_the_cpu_demo():
    assert train_view.default_preset(["a", "tiny_cpu_demo", "b"]) == "tiny_cpu_demo"
    assert train_view.default_preset(["b", "a"]) == "b"
    assert train_view.default_preset([]) is None


def test_start_refuses_an_invalid_preset_with_the_config_error(ws):
    (ws / "presets" / "broken.yaml").write_text("name: broken\nagent: no_such_agent\ntrainer: {steps: -1}\n")
    db = RunsDB(ws / "runs" / "memfactory.db")
    with pytest.raises(ConfigError) as info:
        train_view.start(db, "broken", Attached())
    text = str(info.value)
    assert "broken.yaml" in text and "trainer.steps" in text
    with pytest.raises(MemFactoryError, match="choose a preset"):
        train_view.start(db, None, Attached())
    with pytest.raises(MemFactoryError, match="no preset called"):
        train_view.start(db, "missing", Attached())
    with pytest.raises(MemFactoryError, match="may only hold"):
        train_view.start(db, "../etc/passwd", Attached())
    assert db.list_runs() == [] and not [p for p in (ws / "runs").iterdir() if p.is_dir()]  # nothing launched


# --------------------------------------------------------------------------- progress and ETA


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


# --------------------------------------------------------------------------- samples


SAMPLE = {
    "sample_id": "s-1", "question": "Where is the key?", "gold": ["drawer"], "answer": "\\boxed{drawer}",
    "reward": 1.1, "rewards": {"sub_em": 1.0, "format": 0.1}, "advantage": 0.7,
    "trace": [{"step": 0, "chunk": 0, "memory": "key seen in the drawer", "tokens": 9, "kept_previous": False},
              {"step": 1, "chunk": 1, "memory": "key: drawer (kitchen)", "tokens": 8, "kept_previous": False},
              {"step": 2, "answer": "\\boxed{drawer}", "tokens": 4}],
    "calls": [{"module": "memory.update", "prompt": "...", "response": "key seen", "tokens": 9}],
}


def test_sample_browsing(tmp_path):
    path = tmp_path / "samples.jsonl"
    lines = [{"step": 1, "rewards": [[0.0, 1.0]], "samples": [SAMPLE, {**SAMPLE, "answer": "\\boxed{sofa}"}]},
             {"step": 2, "rewards": [[0.5, 0.5]], "samples": []},
             {"step": 3, "rewards": [[1.0, 1.0]], "samples": [{**SAMPLE, "question": "Q3?"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 4, "samp')  # half-written last line
    samples = read_records(path)
    assert [r["step"] for r in samples] == [1, 2, 3]
    assert train_view.sample_steps(samples) == [3, 1]

    latest = train_view.browse_samples(samples, "latest", 1)
    assert latest.step == 3 and latest.count == 1 and "Q3?" in latest.markdown

    second = train_view.browse_samples(samples, "1", 2)
    assert (second.step, second.index, second.count) == (1, 1, 2)
    md = second.markdown
    assert "trajectory 2 of 2" in md and "sofa" in md and "Where is the key?" in md
    assert "sub_em = 1.000" in md and "format = 0.100" in md and "**Reward** 1.100" in md
    assert "**Memory steps** (3)" in md and "key seen in the drawer" in md and "key: drawer (kitchen)" in md
    assert "memory.update" in md and "`drawer`" in md

    assert train_view.browse_samples(samples, "2", 1).step == 3  # a step without trajectories: the newest
    assert train_view.browse_samples(samples, "junk", 99).index == 0
    assert "No sample" in train_view.browse_samples([], None, 1).markdown


def test_markdown_cannot_break_out_of_code_blocks():
    md = train_view.sample_markdown({**SAMPLE, "answer": "```\n# injected"}, step=1, index=0, count=1)
    assert "```\n# injected" not in md


# --------------------------------------------------------------------------- crash detection


def test_process_that_dies_before_recording_the_run_shows_its_exit_and_log(ws):
    db = RunsDB(ws / "runs" / "memfactory.db")
    script = "import sys; print('loading the model'); print('Traceback: OSError: weights missing'); sys.exit(3)"
    pid = process.spawn([sys.executable, "-c", script], ws / "runs" / "r-early")
    attached = Attached(run_id="r-early", pid=pid, launched_at=time.time())
    view = _wait(lambda: (v := train_view.poll(db, attached)).status != "created" and v)
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
    assert _wait(lambda: not process.is_alive(pid))
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


# --------------------------------------------------------------------------- a real training run


def test_start_abort_resume_a_real_tiny_run(ws):
    """Start tiny_test (300 steps), abort it, resume it from its checkpoint, abort again."""
    name = _tiny_preset(ws, "tiny_long", steps=300, save_every=2, sample_every=2)
    db = RunsDB(ws / "runs" / "memfactory.db")
    attached = train_view.start(db, name, Attached())
    try:
        assert attached.pid and process.is_alive(attached.pid)
        assert train_view.poll(db, attached).status in ("created", "running")
        with pytest.raises(MemFactoryError, match="still running"):
            train_view.start(db, name, attached)
        view = _wait(lambda: (v := train_view.poll(db, attached)).step >= 3 and v, timeout=120)
        assert view, process.tail(ws / "runs" / attached.run_id / "stdout.log", 20)
        assert view.status == "running" and view.total == 300 and view.eta_s is not None and view.eta_s > 0
        record = db.get(attached.run_id)  # the ETA is the trainer's: written to the run's row each step
        assert record.seconds_per_step > 0 and view.eta_s == record.eta_s
        assert latest_checkpoint(view.run_dir) is not None

        attached, what = train_view.abort(db, attached)
        assert what == "stopped" and attached.aborted and not process.is_alive(attached.pid)
        view = train_view.poll(db, attached)
        assert view.status == "aborted" and db.get(attached.run_id).status == "aborted"
        with pytest.raises(MemFactoryError, match="not running"):
            train_view.abort(db, attached)
        stopped_at = view.step

        resumed = train_view.resume(db, attached.run_id, attached)
        assert resumed.run_id == attached.run_id and resumed.pid != attached.pid
        assert train_view.poll(db, resumed).status in ("created", "running")  # not the old "aborted"
        view = _wait(lambda: (v := train_view.poll(db, resumed)).status == "running" and v.step > stopped_at and v,
                     timeout=120)
        assert view, process.tail(ws / "runs" / resumed.run_id / "stdout.log", 30)
        assert "resumed from" in process.tail(ws / "runs" / resumed.run_id / "stdout.log", 400)
        resumed, _ = train_view.abort(db, resumed)
        assert train_view.poll(db, resumed).status == "aborted"
    finally:
        for pid in (attached.pid, locals().get("resumed", attached).pid):
            if pid and process.is_alive(pid):
                process.abort(pid, grace=1)


def test_resume_refusals(ws):
    db = RunsDB(ws / "runs" / "memfactory.db")
    with pytest.raises(MemFactoryError, match="pick a run"):
        train_view.resume(db, None, Attached())
    with pytest.raises(MemFactoryError, match="no run 'nope'"):
        train_view.resume(db, "nope", Attached())
    db.create_run("p", ws / "runs" / "done", run_id="done")
    db.set_status("done", "finished")
    with pytest.raises(MemFactoryError, match="already finished"):
        train_view.resume(db, "done", Attached())
    db.create_run("p", ws / "elsewhere" / "away", run_id="away")
    db.set_status("away", "aborted")
    with pytest.raises(MemFactoryError, match="outside"):
        train_view.resume(db, "away", Attached())
    (ws / "runs" / "nocopy").mkdir()
    db.create_run("p", ws / "runs" / "nocopy", run_id="nocopy")
    db.set_status("nocopy", "failed")
    with pytest.raises(MemFactoryError, match="no preset copy"):
        train_view.resume(db, "nocopy", Attached())
