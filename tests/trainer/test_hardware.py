"""Per-step hardware figures (memfactory/trainer/hardware.py): real memory and CPU readings of
this process, the key layout the Train tab plots, and a real tiny-model step that logs them."""

from __future__ import annotations

import math
import mmap
import time
from types import SimpleNamespace

import pytest
import torch

from memfactory.config import load_preset
from memfactory.paths import presets_dir
from memfactory.tracking.metric_keys import HW_FIELDS as FIELDS
from memfactory.tracking.metric_keys import HW_PEAK_GIB as PEAK_KEY
from memfactory.trainer import hardware
from memfactory.trainer.hardware import HardwareMonitor, peak_rss_gib, rss_gib, to_metrics

CPU_KEYS = ("rss_gib", "peak_rss_gib", "cpu_percent")
GPU_KEYS = ("gpu_allocated_gib", "gpu_reserved_gib")


def test_rss_follows_a_real_allocation_and_the_peak_keeps_it():
    # An anonymous mapping of its own, not malloc: in a long test worker malloc may serve 64 MiB
    # from heap pages already resident (CI once read the same RSS before and after np.ones).
    size, page = 64 * 1024 * 1024, mmap.PAGESIZE
    before = rss_gib()
    block = mmap.mmap(-1, size)
    for offset in range(0, size, page):  # one write a page makes every page resident
        block[offset] = 1
    during = rss_gib()
    assert 0.01 < before < 64  # a Python process with torch loaded
    assert during - before > 0.04  # at least ~40 of the 64 MiB show up
    assert peak_rss_gib() >= during - 1e-3
    block.close()
    assert peak_rss_gib() >= during - 1e-3  # the peak does not go down after the free


def test_cpu_percent_tells_busy_from_idle():
    # Only the order is asserted on real clocks: on a loaded machine a busy thread gets what the
    # scheduler gives it, so no fixed share holds (the arithmetic is the next test's)
    monitor = HardwareMonitor("cpu")
    monitor.start_step()
    spun = time.thread_time() + 0.2
    while time.thread_time() < spun:  # one busy thread, until it has had 0.2 s of CPU
        pass
    busy = monitor.sample()[FIELDS.index("cpu_percent")]
    monitor.start_step()  # later steps measure from the previous reading
    time.sleep(0.3)
    idle = monitor.sample()[FIELDS.index("cpu_percent")]
    assert busy > idle >= 0, (busy, idle)


def test_cpu_percent_is_process_cpu_time_over_wall_time(monkeypatch):
    clock = {"cpu": 10.0, "wall": 100.0}
    monkeypatch.setattr(hardware, "time", SimpleNamespace(process_time=lambda: clock["cpu"],
                                                          perf_counter=lambda: clock["wall"]))
    monitor = HardwareMonitor("cpu")
    assert math.isnan(monitor.cpu_percent())  # no reading to measure from yet
    monitor.start_step()
    clock["cpu"] += 1.5
    clock["wall"] += 1.0
    assert monitor.cpu_percent() == pytest.approx(150.0)  # two threads: over 100
    monitor.start_step()  # from the previous reading, not from this call
    clock["wall"] += 2.0
    assert monitor.cpu_percent() == 0.0
    assert math.isnan(monitor.cpu_percent())  # no wall time passed


def test_cpu_sample_has_no_gpu_figures_and_peak_is_peak_rss():
    monitor = HardwareMonitor("cpu")
    monitor.start_step()
    metrics = monitor.metrics(None)
    assert sorted(metrics) == sorted([*(f"hw/rank0/{k}" for k in CPU_KEYS), PEAK_KEY])
    assert metrics[PEAK_KEY] == metrics["hw/rank0/peak_rss_gib"]
    assert metrics["hw/rank0/rss_gib"] <= metrics["hw/rank0/peak_rss_gib"] + 1e-3


def test_metrics_of_several_ranks_name_each_rank_and_take_the_largest_peak():
    nan = math.nan
    rows = [[1.0, 2.0, 150.0, nan, nan, nan], [1.5, 3.5, 90.0, nan, nan, nan]]
    metrics = to_metrics(rows, cuda=False)
    assert metrics["hw/rank0/cpu_percent"] == 150.0 and metrics["hw/rank1/rss_gib"] == 1.5
    assert metrics[PEAK_KEY] == 3.5
    assert not any("gpu" in key for key in metrics)
    # on CUDA the device peak is the GPU's, and an unmeasured utilisation is left out
    rows = [[1.0, 2.0, 100.0, 7.0, 8.0, nan], [1.0, 2.0, 100.0, 9.5, 10.0, 55.0]]
    metrics = to_metrics(rows, cuda=True)
    assert metrics[PEAK_KEY] == 9.5
    assert "hw/rank0/gpu_util_percent" not in metrics and metrics["hw/rank1/gpu_util_percent"] == 55.0


def test_a_real_training_step_logs_the_hardware_figures(tmp_path, monkeypatch):
    from memfactory.trainer.loop import GRPOTrainer

    monkeypatch.chdir(tmp_path)
    trainer = GRPOTrainer(load_preset(presets_dir() / "tiny_test.yaml", ["trainer.steps=2"]))
    for _ in range(2):
        metrics = trainer.train_step().metrics
        hw = {k: v for k, v in metrics.items() if k.startswith("hw/")}
        assert sorted(hw) == sorted([*(f"hw/rank0/{k}" for k in CPU_KEYS), PEAK_KEY])
        assert hw["hw/rank0/rss_gib"] > 0.1  # torch + transformers + a model
        assert hw["hw/rank0/cpu_percent"] > 0  # it computed something
        assert hw[PEAK_KEY] >= hw["hw/rank0/rss_gib"] - 1e-3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_figures_are_the_steps_own_peaks():
    monitor = HardwareMonitor("cuda")
    monitor.start_step()
    big = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")  # 0.25 GiB
    first = monitor.metrics(None)
    del big
    torch.cuda.empty_cache()
    monitor.start_step()  # resets the peak: the next step starts from what is allocated now
    small = torch.empty(1024, dtype=torch.uint8, device="cuda")
    second = monitor.metrics(None)
    del small
    assert first["hw/rank0/gpu_allocated_gib"] >= 0.25
    assert first["hw/rank0/gpu_reserved_gib"] >= first["hw/rank0/gpu_allocated_gib"]
    assert second["hw/rank0/gpu_allocated_gib"] < first["hw/rank0/gpu_allocated_gib"] - 0.2
    assert first[PEAK_KEY] == first["hw/rank0/gpu_allocated_gib"]  # on CUDA the device peak is the GPU's
    if "hw/rank0/gpu_util_percent" in first:
        assert 0 <= first["hw/rank0/gpu_util_percent"] <= 100


def test_peak_rss_is_the_process_own_not_its_parents():
    """Linux carries ru_maxrss over fork + exec: a trainer started by a big parent (the UI, pytest)
    reported the parent's peak as its own. VmHWM starts afresh with the program."""
    import subprocess
    import sys

    ballast = bytearray(1 << 30)  # 1 GiB, touched so it is resident in this (the parent) process
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    done = subprocess.run([sys.executable, "-c", ("from memfactory.trainer.hardware import peak_rss_gib; "
                           "print(peak_rss_gib())")], capture_output=True, text=True, check=True, timeout=120)
    child_peak = float(done.stdout.strip().splitlines()[-1])
    assert 0.01 < child_peak < 0.8, child_peak  # torch imported, but not the parent's 1 GiB
    del ballast
