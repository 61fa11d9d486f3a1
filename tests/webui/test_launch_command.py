"""The Train tab's launch command (webui.launch_command) and its checks before launch.

The argv is parsed back with accelerate's own ``launch`` parser and ``memfactory``'s CLI parser,
so a command that ``accelerate launch`` would read differently fails here, not in a child process.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
import yaml

from memfactory.config import load_preset
from memfactory.paths import presets_dir
from webui import plots, train_view
from webui.launch_command import (
    Command,
    Device,
    Hardware,
    LaunchSpec,
    build_command,
    coerce_overrides,
    format_value,
    launch_problems,
    parse_devices,
)

ROOT = Path(__file__).resolve().parents[2]
CPU = Hardware((), 2)
TWO_GPUS = Hardware((Device(0, "NVIDIA H200", 139.8, 139.0), Device(1, "NVIDIA H200", 139.8, 120.5)), 16)


def _accelerate_args(argv: tuple[str, ...]):
    """accelerate's own reading of ``argv`` (after ``python -m accelerate.commands.launch``)."""
    from accelerate.commands.launch import launch_command_parser

    assert argv[1:3] == ("-m", "accelerate.commands.launch")
    return launch_command_parser().parse_args(list(argv[3:]))


def _train_args(argv: list[str]):
    """``memfactory``'s own reading of ``train ...`` arguments."""
    from memfactory.cli import build_parser

    return build_parser().parse_args(argv)


def test_single_process_is_plain_python_m_memfactory_train(tmp_path):
    command = build_command(LaunchSpec(), "/p/tiny.yaml", runs_dir=tmp_path, run_id="r1", python="/py")
    assert command.argv == ("/py", "-m", "memfactory", "train", "/p/tiny.yaml", "--run-id", "r1",
                            "--runs-dir", str(tmp_path), "--no-progress")
    assert command.env == ()
    assert command.shell() == shlex.join(command.argv)


def test_ddp_on_two_cpu_processes_uses_the_gloo_config_and_module_mode(tmp_path):
    spec = LaunchSpec(strategy="ddp", num_processes=2, cuda=False, overrides={"steps": 5})
    command = build_command(spec, "/p/tiny.yaml", runs_dir=tmp_path, run_id="r1", port=29123, python="/py")
    args = _accelerate_args(command.argv)
    assert args.config_file == str(presets_dir() / "accelerate" / "ddp_cpu.yaml")
    assert Path(args.config_file).is_file()
    assert args.num_processes == 2 and args.main_process_port == 29123
    assert args.module is True and args.training_script == "memfactory"
    train = _train_args(args.training_script_args)
    assert train.preset == "/p/tiny.yaml" and train.run_id == "r1" and train.overrides == ["trainer.steps=5"]
    assert train.no_progress and train.runs_dir == str(tmp_path)
    assert command.env_dict == {"OMP_NUM_THREADS": "1"}  # two CPU processes must not each take every core
    assert command.shell().startswith("OMP_NUM_THREADS=1 /py -m accelerate.commands.launch --config_file ")


def test_fsdp_on_cuda_sets_visible_devices_and_the_gpu_config(tmp_path):
    spec = LaunchSpec(strategy="fsdp", num_processes=2, devices=[1, 3], cuda=True)
    command = build_command(spec, "/p/x.yaml", runs_dir=tmp_path, resume="r9", port=1, python="/py")
    args = _accelerate_args(command.argv)
    assert Path(args.config_file).name == "fsdp.yaml"
    assert yaml.safe_load(Path(args.config_file).read_text())["distributed_type"] == "FSDP"
    assert command.env_dict == {"CUDA_VISIBLE_DEVICES": "1,3"}
    assert _train_args(args.training_script_args).resume == "r9"
    assert command.shell().startswith("CUDA_VISIBLE_DEVICES=1,3 /py -m accelerate.commands.launch")
    # the CPU configs only on the CPU; devices never leak into a CPU launch's environment
    cpu = build_command(LaunchSpec(strategy="fsdp", num_processes=2, devices=[1]), "/p/x.yaml", runs_dir=tmp_path)
    assert "fsdp_cpu.yaml" in cpu.shell() and "CUDA_VISIBLE_DEVICES" not in cpu.env_dict


def test_overrides_are_quoted_and_read_back_as_the_same_values(tmp_path):
    spec = LaunchSpec(precision="bf16_mixed", overrides={"steps": 7, "lr": 1e-05, "group_size": 4, "batch_size": 3,
                                                         "save_every": 2, "sample_every": 1})
    preset = tmp_path / "a dir with spaces" / "tiny test.yaml"
    preset.parent.mkdir()
    preset.write_text((ROOT / "presets" / "tiny_test.yaml").read_text())
    command = build_command(spec, preset, runs_dir=tmp_path, run_id="r1")
    assert format_value(1e-05) == "1.0e-05" and format_value(0.0003) == "0.0003" and format_value(True) == "true"
    assert shlex.split(command.shell()) == list(command.argv)  # the copyable line is the argv, quoted
    overrides = _train_args(list(command.argv[3:])).overrides
    assert overrides == ["trainer.steps=7", "trainer.lr=1.0e-05", "trainer.group_size=4", "trainer.batch_size=3",
                         "trainer.save_every=2", "trainer.sample_every=1", "trainer.precision=bf16_mixed"]
    loaded = load_preset(preset, overrides).trainer
    assert (loaded.steps, loaded.lr, loaded.group_size, loaded.batch_size) == (7, 1e-05, 4, 3)
    assert (loaded.save_every, loaded.sample_every, loaded.precision) == (2, 1, "bf16_mixed")
    # a resume trains the run's own preset copy, which already holds them
    resume = build_command(spec, preset, runs_dir=tmp_path, resume="r1", with_overrides=False)
    assert "--set" not in resume.argv


def test_launch_spec_round_trips_through_its_stored_dict():
    spec = LaunchSpec(strategy="ddp", num_processes=2, devices=[0], cuda=True, precision="fp32",
                      overrides={"lr": 0.001})
    assert LaunchSpec.of(spec.to_dict()) == spec
    assert LaunchSpec.of({**spec.to_dict(), "from_a_later_version": 1}) == spec
    assert LaunchSpec.of(None) == LaunchSpec()


# --------------------------------------------------------------------------- bad input


def test_device_choices_that_cannot_work_are_explained():
    problems = launch_problems(LaunchSpec(strategy="ddp", num_processes=4, cuda=True), TWO_GPUS)
    assert problems == ["4 processes but only 2 GPUs available: one process per GPU"]
    problems = launch_problems(LaunchSpec(strategy="ddp", num_processes=2, devices=[1], cuda=True), TWO_GPUS)
    assert problems == ["2 processes but only 1 GPU selected: one process per GPU"]
    problems = launch_problems(LaunchSpec(strategy="ddp", num_processes=2, devices=[0, 5], cuda=True), TWO_GPUS)
    assert problems == ["GPU 5 does not exist: this machine has 2 (GPU 0, 1)"]
    problems = launch_problems(LaunchSpec(strategy="fsdp", num_processes=1, cuda=True), TWO_GPUS)
    assert problems == [("FSDP2 with one process does nothing distributed: use 2 or more processes, "
                         "or the strategy 'single process'")]
    assert "DDP with one process" in launch_problems(LaunchSpec(strategy="ddp", num_processes=1), CPU)[0]
    assert "runs one process, not 3" in launch_problems(LaunchSpec(num_processes=3), CPU)[0]
    assert launch_problems(LaunchSpec(devices=[0]), CPU) == [
        "no CUDA GPU was found, so device 0 does not exist (leave devices empty to train on the CPU)"]
    assert "no CUDA GPU" in launch_problems(LaunchSpec(cuda=True), CPU)[0]
    assert "unknown precision" in launch_problems(LaunchSpec(precision="fp8"), CPU)[0]
    assert launch_problems(LaunchSpec(strategy="ddp", num_processes=2, devices=[0, 1], cuda=True), TWO_GPUS) == []
    assert launch_problems(LaunchSpec(strategy="ddp", num_processes=2), CPU) == []


def test_typed_devices_and_overrides_are_parsed_or_refused():
    assert parse_devices("") == [] and parse_devices(" 0, 1 ") == [0, 1] and parse_devices("2 0") == [2, 0]
    with pytest.raises(ValueError, match="'gpu1' is not a GPU index"):
        parse_devices("gpu1")
    with pytest.raises(ValueError, match="'-1' is not a GPU index"):
        parse_devices("-1")
    with pytest.raises(ValueError, match="listed twice"):
        parse_devices("1,1")
    assert coerce_overrides({"steps": 5.0, "lr": "0.001", "batch_size": None, "group_size": ""}) == {
        "steps": 5, "lr": 0.001}
    with pytest.raises(ValueError, match="steps must be a whole number"):
        coerce_overrides({"steps": 2.5})
    with pytest.raises(ValueError, match="lr must be a number"):
        coerce_overrides({"lr": "fast"})


@pytest.fixture()
def ws(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMFACTORY_WORKSPACE", str(tmp_path))
    (tmp_path / "presets").mkdir()
    (tmp_path / "runs").mkdir()
    data = yaml.safe_load((ROOT / "presets" / "tiny_test.yaml").read_text())
    (tmp_path / "presets" / "tiny.yaml").write_text(yaml.safe_dump(data))
    data["env"]["data"] = str(tmp_path / "no-such-data.jsonl")
    (tmp_path / "presets" / "nodata.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


def test_check_launch_shows_schema_start_up_and_device_problems_inline(ws):
    ok = train_view.check_launch("tiny", LaunchSpec(strategy="ddp", num_processes=2), CPU)
    assert ok.allowed() and ok.markdown() == "✅ ready to launch"
    bad = train_view.check_launch("tiny", LaunchSpec(overrides={"steps": 0}, devices=[2]), CPU)
    text = bad.markdown()
    assert not bad.allowed(force=True)  # "launch anyway" only overrides the memory planner
    assert "`trainer.steps`" in text and "device 2 does not exist" in text
    missing = train_view.check_launch("nodata", LaunchSpec(), CPU)
    assert not missing.allowed() and "`env.data`: file not found" in missing.markdown()
    assert "choose a preset" in train_view.check_launch(None, LaunchSpec(), CPU).markdown()
    assert "may only hold" in train_view.check_launch("../x", LaunchSpec(), CPU).markdown()


def test_start_refuses_bad_launch_choices_before_any_run_exists(ws):
    from memfactory.errors import MemFactoryError
    from memfactory.tracking.runs import RunsDB

    db = RunsDB(ws / "runs" / "memfactory.db")
    with pytest.raises(MemFactoryError, match="DDP with one process"):
        train_view.start(db, "tiny", train_view.Attached(), spec=LaunchSpec(strategy="ddp"), hardware=CPU)
    with pytest.raises(MemFactoryError, match="env.data"):
        train_view.start(db, "nodata", train_view.Attached(), spec=LaunchSpec(), hardware=CPU)
    assert db.list_runs() == [] and not [p for p in (ws / "runs").iterdir() if p.is_dir()]  # nothing launched


def test_memory_planner_verdict_can_be_forced(ws):
    pytest.importorskip("memfactory.planner")
    small_gpu = Hardware((Device(0, "small", 0.01, 0.01),), 4)
    check = train_view.check_launch("tiny", LaunchSpec(cuda=True), small_gpu)
    assert check.wont_fit and not check.problems, check.markdown()
    assert not check.allowed() and check.allowed(force=True)
    assert "does not fit" in check.markdown() and "launch anyway" in check.markdown()
    roomy = train_view.check_launch("tiny", LaunchSpec(cuda=True), Hardware((Device(0, "big", 80.0, 80.0),), 4))
    assert roomy.allowed() and not roomy.wont_fit


def test_preview_is_the_command_the_runner_builds(ws):
    spec = LaunchSpec(strategy="ddp", num_processes=2, overrides={"steps": 2})
    line = train_view.launch_preview("tiny", spec, run_id="r-1", port=29999)
    expected = build_command(spec, ws / "presets" / "tiny.yaml", runs_dir=ws / "runs", run_id="r-1", port=29999)
    assert line == expected.shell()
    assert isinstance(expected, Command)


# --------------------------------------------------------------------------- hardware curves


def test_hardware_figure_draws_whatever_hw_keys_are_present():
    cpu_rows = [{"step": s, "hw/rank0/rss_gib": 1.0 + s, "hw/rank1/rss_gib": 1.1, "hw/rank0/cpu_percent": 95.0,
                 "hw/rank1/cpu_percent": 90.0, "hw/rank0/peak_rss_gib": 2.0, "hw/peak_gib": 3.5} for s in (1, 2, 3)]
    fig = plots.hardware_figure(cpu_rows)
    names = sorted(trace.name for trace in fig.data)
    assert names == ["rank 0 cpu_percent", "rank 0 rss_gib", "rank 1 cpu_percent", "rank 1 rss_gib"]
    assert list(next(t for t in fig.data if t.name == "rank 0 rss_gib").y) == [2.0, 3.0, 4.0]
    assert "peak 3.50 GiB" in fig.layout.title.text
    gpu_rows = [{"step": 1, "hw/rank0/rss_gib": 1.0, "hw/rank0/gpu_allocated_gib": 4.0, "hw/rank0/gpu_reserved_gib": 5.0,
                 "hw/rank0/gpu_util_percent": 70.0, "hw/rank0/cpu_percent": 99.0}]
    names = sorted(trace.name for trace in plots.hardware_figure(gpu_rows).data)
    assert names == ["rank 0 gpu_allocated_gib", "rank 0 gpu_reserved_gib", "rank 0 gpu_util_percent"]
    for empty in (None, [], [{"step": 1, "loss": 0.1}], [{"step": 1, "hw/rank0/rss_gib": "n/a"}]):
        fig = plots.hardware_figure(empty)
        assert not fig.data and "no hardware metrics" in fig.layout.annotations[0].text


def test_a_launch_that_dies_at_start_up_shows_its_error_and_leaves_no_run_row(ws):
    """Two ranks that die before training (here: an argument ``memfactory train`` refuses) under
    accelerate's launcher: the tab's poll reports the launcher's exit code and the log lines, and
    the runs database stays empty."""
    import time

    from memfactory.tracking.runs import RunsDB
    from webui import runner

    db = RunsDB(ws / "runs" / "memfactory.db")
    spec = LaunchSpec(strategy="ddp", num_processes=2, overrides={"steps": 2})
    run_id, pid = runner.start_run(ws / "presets" / "tiny.yaml", runs_dir=ws / "runs", spec=spec,
                                   extra_args=["--no-such-option"])
    attached = train_view.Attached(run_id=run_id, pid=pid, launched_at=time.time())
    deadline = time.monotonic() + 120
    view = train_view.poll(db, attached)
    while view.active and time.monotonic() < deadline:
        time.sleep(0.5)
        view = train_view.poll(db, attached)
    assert view.status == "failed", view
    assert "exited with code 1 before it recorded the run" in view.error
    assert "--no-such-option" in view.error  # argparse's complaint, from the log's last lines
    status = train_view.status_markdown(view)
    assert "failed" in status and "last lines of stdout.log" in status
    assert "(first failure: rank 1 (local_rank: 1), exit code 2" in view.error or \
        "(first failure: rank 0 (local_rank: 0), exit code 2" in view.error
    assert "ChildFailedError" not in view.error  # the launcher's own traceback is not the error
    first = (ws / "runs" / run_id / "stdout.log").read_text().splitlines()[0]
    assert first.startswith("$ OMP_NUM_THREADS=1 ") and "--num_processes 2" in first  # the command heads the log
    assert db.list_runs() == [] and not runner.process_tree(pid)


def test_abort_from_a_restarted_ui_stops_the_launcher_and_both_ranks(ws):
    """A UI that did not launch the run knows only rank 0's pid (from the runs database): abort
    finds the launcher from the stored launch record and ends the launcher and both ranks."""
    import time

    from memfactory.tracking.runs import RunsDB
    from webui import runner

    db = RunsDB(ws / "runs" / "memfactory.db")
    spec = LaunchSpec(strategy="ddp", num_processes=2, overrides={"steps": 2000, "save_every": 1000})
    run_id, launcher = runner.start_run(ws / "presets" / "tiny.yaml", runs_dir=ws / "runs", spec=spec)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not ((run := db.get(run_id)) and run.pid and (run.step or 0) >= 1):
            time.sleep(0.5)
        assert run is not None and run.status == "running", run
        tree = runner.process_tree(launcher)
        assert len(tree) == 3 and run.pid in tree and run.pid != launcher  # launcher + 2 ranks; the row has rank 0
        assert train_view.launcher_pid(ws / "runs", run_id, run.pid) == launcher
        _, what = train_view.abort(db, train_view.Attached(run_id=run_id))  # no pid: as after a UI restart
        assert what == "stopped"
        assert runner._still_running(tree) == {}
        assert db.get(run_id).status == "aborted"
        # Resume refuses a launch this machine cannot do (here: a GPU launch on a CPU-only machine)
        stored = runner.read_launch(ws / "runs", run_id)
        stored["spec"]["cuda"] = True
        runner.launch_file(ws / "runs", run_id).write_text(json.dumps(stored))
        if not train_view.detect_hardware().cuda:
            from memfactory.errors import MemFactoryError

            with pytest.raises(MemFactoryError, match="cannot be resumed with its launch here"):
                train_view.resume(db, run_id, train_view.Attached())
    finally:
        for pid in runner.process_tree(launcher):
            os.kill(pid, 9)


def test_the_plan_shows_a_colocated_vllm_engine(ws):
    pytest.importorskip("memfactory.planner")
    data = yaml.safe_load((ROOT / "presets" / "tiny_cpu_demo.yaml").read_text())
    data["trainer"]["rollout"] = {"engine": "vllm", "options": {"gpu_memory_utilization": 0.3, "enable_sleep_mode": True}}
    (ws / "presets" / "demo_vllm.yaml").write_text(yaml.safe_dump(data))
    check = train_view.check_launch("demo_vllm", LaunchSpec(cuda=True), Hardware((Device(0, "big", 80.0, 80.0),), 4))
    text = check.markdown()
    assert "vLLM engine (trainer.rollout.engine vllm): 24.00 GiB" in text and "asleep during the update" in text
