"""Checking, starting, aborting and resuming runs (webui.train.actions) with real processes."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from memfactory.errors import ConfigError, MemFactoryError
from memfactory.paths import presets_dir
from memfactory.tracking import process
from memfactory.tracking.runs import RunsDB
from memfactory.trainer.checkpoint import latest_checkpoint
from tests.waiting import wait_until
from webui.train import actions, command, launcher
from webui.train import view as train_view
from webui.train.command import Command, Device, Hardware, LaunchSpec, build_command
from webui.train.view import Attached

CPU = Hardware((), 2)


def test_start_refuses_an_invalid_preset_with_the_config_error(ws):
    (ws / "presets" / "broken.yaml").write_text("name: broken\nagent: no_such_agent\ntrainer: {steps: -1}\n")
    db = RunsDB(ws / "runs" / "memfactory.db")
    with pytest.raises(ConfigError) as info:
        actions.start(db, "broken", Attached())
    text = str(info.value)
    assert "broken.yaml" in text and "trainer.steps" in text
    with pytest.raises(MemFactoryError, match="choose a preset"):
        actions.start(db, None, Attached())
    with pytest.raises(MemFactoryError, match="no preset called"):
        actions.start(db, "missing", Attached())
    with pytest.raises(MemFactoryError, match="may only hold"):
        actions.start(db, "../etc/passwd", Attached())
    assert db.list_runs() == [] and not [p for p in (ws / "runs").iterdir() if p.is_dir()]  # nothing launched


def test_check_launch_shows_schema_start_up_and_device_problems_inline(ws):
    ok = actions.check_launch("tiny", LaunchSpec(strategy="ddp", num_processes=2), CPU)
    assert ok.allowed() and ok.markdown() == "✅ ready to launch"
    bad = actions.check_launch("tiny", LaunchSpec(overrides={"steps": 0}, devices=[2]), CPU)
    text = bad.markdown()
    assert not bad.allowed(force=True)  # "launch anyway" only overrides the memory planner
    assert "`trainer.steps`" in text and "device 2 does not exist" in text
    missing = actions.check_launch("nodata", LaunchSpec(), CPU)
    assert not missing.allowed() and "`env.data`: file not found" in missing.markdown()
    assert "choose a preset" in actions.check_launch(None, LaunchSpec(), CPU).markdown()
    assert "may only hold" in actions.check_launch("../x", LaunchSpec(), CPU).markdown()


def test_start_refuses_bad_launch_choices_before_any_run_exists(ws):
    db = RunsDB(ws / "runs" / "memfactory.db")
    with pytest.raises(MemFactoryError, match="DDP with one process"):
        actions.start(db, "tiny", Attached(), spec=LaunchSpec(strategy="ddp"), hardware=CPU)
    with pytest.raises(MemFactoryError, match="env.data"):
        actions.start(db, "nodata", Attached(), spec=LaunchSpec(), hardware=CPU)
    assert db.list_runs() == [] and not [p for p in (ws / "runs").iterdir() if p.is_dir()]  # nothing launched


def test_memory_planner_verdict_can_be_forced(ws):
    small_gpu = Hardware((Device(0, "small", 0.01, 0.01),), 4)
    check = actions.check_launch("tiny", LaunchSpec(cuda=True), small_gpu)
    assert check.wont_fit and not check.problems, check.markdown()
    assert not check.allowed() and check.allowed(force=True)
    assert "does not fit" in check.markdown() and "launch anyway" in check.markdown()
    roomy = actions.check_launch("tiny", LaunchSpec(cuda=True), Hardware((Device(0, "big", 80.0, 80.0),), 4))
    assert roomy.allowed() and not roomy.wont_fit


def test_preview_is_the_command_the_runner_builds(ws):
    spec = LaunchSpec(strategy="ddp", num_processes=2, overrides={"steps": 2})
    line = actions.launch_preview("tiny", spec, run_id="r-1", port=29999)
    expected = build_command(spec, ws / "presets" / "tiny.yaml", runs_dir=ws / "runs", run_id="r-1", port=29999)
    assert line == expected.shell()
    assert isinstance(expected, Command)


def test_abort_from_a_restarted_ui_stops_the_launcher_and_both_ranks(ws):
    """A UI that did not launch the run knows only rank 0's pid (from the runs database): abort
    finds the launcher from the stored launch record and ends the launcher and both ranks."""

    db = RunsDB(ws / "runs" / "memfactory.db")
    spec = LaunchSpec(strategy="ddp", num_processes=2, overrides={"steps": 2000, "save_every": 1000})
    run_id, launch_pid = launcher.start_run(ws / "presets" / "tiny.yaml", runs_dir=ws / "runs", spec=spec)
    try:
        run = wait_until(lambda: (r := db.get(run_id)) and r.pid and (r.step or 0) >= 1 and r, timeout=120, every=0.5)
        assert run is not None and run.status == "running", db.get(run_id)
        tree = process.process_tree(launch_pid)
        assert len(tree) == 3 and run.pid in tree and run.pid != launch_pid  # launcher + 2 ranks; the row has rank 0
        assert actions.launcher_pid(ws / "runs", run_id, run.pid) == launch_pid
        _, what = actions.abort(db, Attached(run_id=run_id))  # no pid: as after a UI restart
        assert what == "stopped"
        assert process.still_running(tree) == {}
        assert db.get(run_id).status == "aborted"
        # Resume refuses a launch this machine cannot do (here: a GPU launch on a CPU-only machine)
        stored = launcher.read_launch(ws / "runs", run_id)
        stored["spec"]["cuda"] = True
        launcher.launch_file(ws / "runs", run_id).write_text(json.dumps(stored))
        if not command.detect_hardware().cuda:
            with pytest.raises(MemFactoryError, match="cannot be resumed with its launch here"):
                actions.resume(db, run_id, Attached())
    finally:
        for pid in process.process_tree(launch_pid):
            os.kill(pid, 9)


def test_start_abort_resume_a_real_tiny_run(ws, tiny_preset):
    """Start tiny_test (300 steps), abort it, resume it from its checkpoint, abort again."""
    name = tiny_preset("tiny_long", steps=300, save_every=2, sample_every=2)
    db = RunsDB(ws / "runs" / "memfactory.db")
    attached = actions.start(db, name, Attached())
    try:
        assert attached.pid and process.is_alive(attached.pid)
        assert train_view.poll(db, attached).status in ("created", "running")
        with pytest.raises(MemFactoryError, match="still running"):
            actions.start(db, name, attached)
        view = wait_until(lambda: (v := train_view.poll(db, attached)).step >= 3 and v, timeout=120)
        assert view, process.tail(ws / "runs" / attached.run_id / "stdout.log", 20)
        assert view.status == "running" and view.total == 300 and view.eta_s is not None and view.eta_s > 0
        # the ETA is the trainer's: written to the run's row each step (read both at one step: it trains on)
        view, record = wait_until(lambda: (v := train_view.poll(db, attached), r := db.get(attached.run_id))
                                  and v.step == r.step and (v, r))
        assert record.seconds_per_step > 0 and view.eta_s == record.eta_s
        assert latest_checkpoint(view.run_dir) is not None

        attached, what = actions.abort(db, attached)
        assert what == "stopped" and attached.aborted and not process.is_alive(attached.pid)
        view = train_view.poll(db, attached)
        assert view.status == "aborted" and db.get(attached.run_id).status == "aborted"
        with pytest.raises(MemFactoryError, match="not running"):
            actions.abort(db, attached)
        stopped_at = view.step

        resumed = actions.resume(db, attached.run_id, attached)
        assert resumed.run_id == attached.run_id and resumed.pid != attached.pid
        assert train_view.poll(db, resumed).status in ("created", "running")  # not the old "aborted"
        view = wait_until(lambda: (v := train_view.poll(db, resumed)).status == "running" and v.step > stopped_at and v,
                     timeout=120)
        assert view, process.tail(ws / "runs" / resumed.run_id / "stdout.log", 30)
        assert "resumed from" in process.tail(ws / "runs" / resumed.run_id / "stdout.log", 400)
        resumed, _ = actions.abort(db, resumed)
        assert train_view.poll(db, resumed).status == "aborted"
    finally:
        for pid in (attached.pid, locals().get("resumed", attached).pid):
            if pid and process.is_alive(pid):
                process.abort(pid, grace=1)


def test_resume_refusals(ws):
    db = RunsDB(ws / "runs" / "memfactory.db")
    with pytest.raises(MemFactoryError, match="pick a run"):
        actions.resume(db, None, Attached())
    with pytest.raises(MemFactoryError, match="no run 'nope'"):
        actions.resume(db, "nope", Attached())
    db.create_run("p", ws / "runs" / "done", run_id="done")
    db.set_status("done", "finished")
    with pytest.raises(MemFactoryError, match="already finished"):
        actions.resume(db, "done", Attached())
    db.create_run("p", ws / "elsewhere" / "away", run_id="away")
    db.set_status("away", "aborted")
    with pytest.raises(MemFactoryError, match="outside"):
        actions.resume(db, "away", Attached())
    (ws / "runs" / "nocopy").mkdir()
    db.create_run("p", ws / "runs" / "nocopy", run_id="nocopy")
    db.set_status("nocopy", "failed")
    with pytest.raises(MemFactoryError, match="no preset copy"):
        actions.resume(db, "nocopy", Attached())


def test_the_plan_shows_a_colocated_vllm_engine(ws):
    data = yaml.safe_load((presets_dir() / "tiny_cpu_demo.yaml").read_text())
    data["trainer"]["rollout"] = {"engine": "vllm", "options": {"gpu_memory_utilization": 0.3, "enable_sleep_mode": True}}
    (ws / "presets" / "demo_vllm.yaml").write_text(yaml.safe_dump(data))
    check = actions.check_launch("demo_vllm", LaunchSpec(cuda=True), Hardware((Device(0, "big", 80.0, 80.0),), 4))
    text = check.markdown()
    assert "vLLM engine (trainer.rollout.engine vllm): 24.00 GiB" in text and "asleep during the update" in text
