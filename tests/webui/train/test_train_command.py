"""The Train tab's launch command (webui.train.command): argv, overrides, devices, hardware.

The argv is parsed back with accelerate's own ``launch`` parser and ``memfactory``'s CLI parser,
so a command that ``accelerate launch`` would read differently fails here, not in a child process.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from memfactory.config import load_preset
from memfactory.paths import presets_dir
from webui.train.command import (
    Device,
    Hardware,
    LaunchSpec,
    build_command,
    coerce_overrides,
    format_value,
    launch_problems,
    parse_devices,
    spec_from_fields,
)

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
    preset.write_text((presets_dir() / "tiny_test.yaml").read_text())
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


def test_the_tabs_fields_become_a_spec_and_bad_ones_fall_back_with_their_error():
    spec, errors = spec_from_fields("0,1", "2", "ddp", "bf16_mixed", {"steps": "5", "lr": ""}, cuda=True)
    assert errors == []
    assert (spec.strategy, spec.num_processes, spec.devices, spec.cuda, spec.precision) == ("ddp", 2, [0, 1], True,
                                                                                             "bf16_mixed")
    assert spec.overrides == {"steps": 5}
    spec, errors = spec_from_fields("zero", "two", None, "", {"steps": "2.5"}, cuda=False)
    assert (spec.strategy, spec.num_processes, spec.devices, spec.precision, spec.overrides) == ("single", 1, [], None,
                                                                                                  {})
    assert len(errors) == 3 and "not a GPU index" in errors[0] and "whole number" in errors[1]
    assert "processes must be a whole number" in errors[2]
