"""The one place that turns the Train tab's launch choices into the argv of a training run.

The command preview and :func:`webui.train.launcher.start_run` / ``resume_run`` both call
:func:`build_command`, so what the user reads (and may copy to a terminal) is exactly what runs.
Everything here is pure except :func:`detect_hardware` (which asks torch what is installed).
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from memfactory.paths import presets_dir

STRATEGIES = ("single", "ddp", "fsdp")
STRATEGY_LABELS = {"single": "single process", "ddp": "DDP", "fsdp": "FSDP2"}
PRECISIONS = ("auto", "fp32", "bf16_mixed", "bf16_pure")
# Launch-time overrides the tab offers: UI name -> preset field (memfactory.config.TrainerConfig)
OVERRIDE_FIELDS = {
    "steps": "trainer.steps",
    "lr": "trainer.lr",
    "group_size": "trainer.group_size",
    "batch_size": "trainer.batch_size",
    "save_every": "trainer.save_every",
    "sample_every": "trainer.sample_every",
}
INT_FIELDS = {"steps", "group_size", "batch_size", "save_every", "sample_every"}


@dataclass(frozen=True)
class Device:
    """One CUDA device as torch reports it (memory in GiB; ``free_gib`` None when unknown)."""

    index: int
    name: str
    total_gib: float
    free_gib: float | None = None


@dataclass(frozen=True)
class Hardware:
    """What this machine offers: CUDA devices (empty on CPU) and the CPU thread count."""

    devices: tuple[Device, ...] = ()
    cpu_threads: int = 1

    @property
    def cuda(self) -> bool:
        return bool(self.devices)


@dataclass
class LaunchSpec:
    """The user's launch choices; stored with a run (``runs/.launch/<id>.json``) so Resume repeats them."""

    strategy: str = "single"
    num_processes: int = 1
    devices: list[int] = field(default_factory=list)  # CUDA indices; empty = every visible device
    cuda: bool = False  # False: the CPU (gloo) accelerate configs
    precision: str | None = None  # None keeps the preset's trainer.precision
    overrides: dict[str, Any] = field(default_factory=dict)  # OVERRIDE_FIELDS name -> value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, data: Any) -> LaunchSpec:
        """A spec from a stored dict (unknown keys ignored, so older launch files still load)."""
        if isinstance(data, LaunchSpec):
            return data
        data = data if isinstance(data, dict) else {}
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @property
    def distributed(self) -> bool:
        return self.strategy != "single"


@dataclass(frozen=True)
class Command:
    """An argv plus the environment variables it adds (e.g. ``CUDA_VISIBLE_DEVICES``)."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    def shell(self) -> str:
        """The command as one copyable shell line: ``VAR=value ... argv`` (each word quoted as needed)."""
        prefix = [f"{key}={shlex.quote(value)}" for key, value in self.env]
        return " ".join([*prefix, shlex.join(self.argv)])


def format_value(value: Any) -> str:
    """A ``--set`` value YAML reads back as the same number: ``1e-05`` becomes ``1.0e-05`` (PyYAML
    reads a float without a dot as a string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    return str(value)


def override_args(spec: LaunchSpec) -> list[str]:
    """``--set trainer.steps=5 --set trainer.lr=0.0001 ...`` for every override that is set."""
    args: list[str] = []
    for name, path in OVERRIDE_FIELDS.items():
        value = spec.overrides.get(name)
        if value is not None and value != "":
            args += ["--set", f"{path}={format_value(value)}"]
    if spec.precision:
        args += ["--set", f"trainer.precision={spec.precision}"]
    return args


def config_file(strategy: str, cuda: bool) -> Path:
    """The shipped accelerate config of a strategy: ``ddp.yaml`` / ``fsdp.yaml``, ``*_cpu.yaml`` on CPU."""
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"no accelerate config for strategy {strategy!r}")
    return presets_dir() / "accelerate" / f"{strategy}{'' if cuda else '_cpu'}.yaml"


def build_command(
    spec: LaunchSpec,
    preset: str | Path,
    *,
    runs_dir: str | Path,
    run_id: str | None = None,
    resume: str | None = None,
    port: int | None = None,
    python: str = sys.executable,
    with_overrides: bool = True,
) -> Command:
    """The argv of ``memfactory train`` for ``spec``: plain ``python -m memfactory train`` for one
    process, else ``python -m accelerate.commands.launch --config_file ... --num_processes N
    [--main_process_port P] -m memfactory train ...`` (what ``accelerate launch`` runs). A resume
    passes ``with_overrides=False``: the run's preset copy already holds them."""
    train = ["-m", "memfactory", "train", str(preset)]
    train += ["--resume", resume] if resume else (["--run-id", run_id] if run_id else [])
    train += ["--runs-dir", str(runs_dir), "--no-progress"]
    if with_overrides:
        train += override_args(spec)
    if spec.distributed:
        launch = [python, "-m", "accelerate.commands.launch", "--config_file", str(config_file(spec.strategy, spec.cuda)),
                  "--num_processes", str(spec.num_processes)]
        if port is not None:
            launch += ["--main_process_port", str(port)]
        argv = [*launch, *train]
    else:
        argv = [python, *train]
    env: list[tuple[str, str]] = []
    if spec.cuda and spec.devices:
        env.append(("CUDA_VISIBLE_DEVICES", ",".join(str(d) for d in spec.devices)))
    if spec.distributed and not spec.cuda:
        env.append(("OMP_NUM_THREADS", "1"))  # N CPU processes must not each take every core
    return Command(tuple(argv), tuple(env))


# --------------------------------------------------------------------------- parsing and checks


def parse_devices(text: str | None) -> list[int]:
    """``"0,1"`` / ``"0 1"`` -> [0, 1]; empty means every visible device. ValueError on junk."""
    words = (text or "").replace(",", " ").split()
    devices: list[int] = []
    for word in words:
        if not word.isdigit():
            raise ValueError(f"device {word!r} is not a GPU index (write them like 0,1)")
        index = int(word)
        if index in devices:
            raise ValueError(f"device {index} is listed twice")
        devices.append(index)
    return devices


def launch_problems(spec: LaunchSpec, hardware: Hardware) -> list[str]:
    """Why this launch cannot work on this machine, one sentence each (empty when it can)."""
    problems: list[str] = []
    if spec.strategy not in STRATEGIES:
        problems.append(f"unknown strategy {spec.strategy!r} (choose one of {', '.join(STRATEGIES)})")
    if spec.precision is not None and spec.precision not in PRECISIONS:
        problems.append(f"unknown precision {spec.precision!r} (choose one of {', '.join(PRECISIONS)})")
    if spec.num_processes < 1:
        problems.append("the number of processes must be at least 1")
    label = STRATEGY_LABELS.get(spec.strategy, spec.strategy)
    if spec.distributed and spec.num_processes < 2:
        problems.append(f"{label} with one process does nothing distributed: use 2 or more processes, "
                        "or the strategy 'single process'")
    if not spec.distributed and spec.num_processes > 1:
        problems.append(f"'single process' runs one process, not {spec.num_processes}: choose DDP or FSDP2 "
                        "to use several")
    if spec.cuda != hardware.cuda:
        problems.append("this launch was planned for " + ("CUDA GPUs" if spec.cuda else "the CPU")
                        + " but this machine has " + ("CUDA GPUs" if hardware.cuda else "no CUDA GPU"))
    if not hardware.cuda:
        if spec.devices:
            problems.append(f"no CUDA GPU was found, so device {spec.devices[0]} does not exist "
                            "(leave devices empty to train on the CPU)")
        return problems
    known = [d.index for d in hardware.devices]
    missing = [d for d in spec.devices if d not in known]
    for index in missing:
        problems.append(f"GPU {index} does not exist: this machine has {len(known)} "
                        f"(GPU {', '.join(map(str, known))})")
    usable = len(spec.devices) if spec.devices else len(known)
    if not missing and spec.num_processes > usable:
        problems.append(f"{spec.num_processes} processes but only {usable} GPU{'s' if usable != 1 else ''} "
                        f"{'selected' if spec.devices else 'available'}: one process per GPU")
    return problems


def coerce_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The override boxes' values as numbers (empty boxes dropped); ValueError names a bad one."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in OVERRIDE_FIELDS:
            raise ValueError(f"unknown override {name!r}")
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, not {value!r}") from None
        if name in INT_FIELDS:
            if number != int(number):
                raise ValueError(f"{name} must be a whole number, not {value!r}")
            out[name] = int(number)
        else:
            out[name] = number
    return out


def spec_from_fields(devices: Any, processes: Any, strategy: Any, precision: Any, overrides: dict[str, Any], *,
                     cuda: bool) -> tuple[LaunchSpec, list[str]]:
    """The Train tab's launch fields as a spec, plus the input errors that made parts of it fall back
    (no devices, no overrides, one process) so the preview still shows a command."""
    errors: list[str] = []
    try:
        picked = parse_devices(devices)
    except ValueError as exc:
        picked, errors = [], [str(exc)]
    try:
        chosen = coerce_overrides(overrides)
    except ValueError as exc:
        chosen = {}
        errors.append(str(exc))
    try:
        count = int(processes) if processes not in (None, "") else 1
    except (TypeError, ValueError):
        count, errors = 1, [*errors, f"processes must be a whole number, not {processes!r}"]
    spec = LaunchSpec(strategy=str(strategy or "single"), num_processes=count, devices=picked, cuda=cuda,
                      precision=precision or None, overrides=chosen)
    return spec, errors


# --------------------------------------------------------------------------- hardware


def detect_hardware() -> Hardware:
    """The CUDA devices torch sees (name, total and free memory) and the CPU thread count."""
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import torch

        if not torch.cuda.is_available():
            return Hardware((), threads)
        devices = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            try:
                free, _total = torch.cuda.mem_get_info(index)
                free_gib: float | None = free / 2**30
            except RuntimeError:  # e.g. a device in exclusive mode held by another process
                free_gib = None
            devices.append(Device(index, props.name, props.total_memory / 2**30, free_gib))
        return Hardware(tuple(devices), threads)
    except (ImportError, RuntimeError, OSError, AssertionError):  # a broken CUDA install falls back to the CPU
        return Hardware((), threads)


def hardware_markdown(hardware: Hardware) -> str:
    """The devices panel's text: one line per GPU, or ``CPU · N threads``."""
    if not hardware.cuda:
        return f"**CPU** · {hardware.cpu_threads} threads (no CUDA GPU found; multi-process runs use gloo)"
    lines = []
    for d in hardware.devices:
        free = f", {d.free_gib:.1f} GiB free" if d.free_gib is not None else ""
        lines.append(f"- **GPU {d.index}** · {d.name} · {d.total_gib:.1f} GiB{free}")
    return "\n".join(lines) + f"\n\nCPU · {hardware.cpu_threads} threads"
