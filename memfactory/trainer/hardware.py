"""Live hardware numbers the trainer logs every step, per rank, gathered to every rank.

Why here and not in the UI: only the training process knows its own memory and CPU time, and
under ``accelerate launch`` only rank 0 writes metrics, so each rank measures itself and the
numbers travel in one small float tensor (``accelerator.gather``; every rank must call it).

Keys (names from :mod:`memfactory.tracking.metric_keys`, which the Train tab plots):

* ``hw/rank{r}/rss_gib``: resident memory now (``/proc/self/statm``; ``ru_maxrss`` where there
  is no /proc);
* ``hw/rank{r}/peak_rss_gib``: the process's peak resident memory so far (``VmHWM``, see
  :func:`peak_rss_gib`);
* ``hw/rank{r}/cpu_percent``: process CPU time / wall time × 100 since the previous step (all
  threads: 2 busy threads read 200);
* on CUDA: ``hw/rank{r}/gpu_allocated_gib`` and ``hw/rank{r}/gpu_reserved_gib`` (the peaks of
  this step: the peak counters are reset when the step starts) and ``hw/rank{r}/gpu_util_percent``
  (``torch.cuda.utilization()``, omitted where it fails, e.g. without pynvml);
* ``hw/peak_gib``: the largest device peak over ranks (GPU allocated on CUDA, peak RSS on CPU);
  the runs database keeps its maximum as the run's ``peak_gib``.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from typing import Any

import torch

from memfactory.tracking import metric_keys as keys

GIB = float(1 << 30)


def peak_rss_gib() -> float:
    """The process's peak resident set size in GiB.

    Linux: ``VmHWM`` from /proc/self/status, the high-water mark of this program's own memory.
    Not ``ru_maxrss``: Linux carries it over fork and exec, so a trainer started by a 2 GB parent
    (the web UI, pytest) reported the parent's peak as its own. Elsewhere ``ru_maxrss`` (KiB on
    Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / GIB  # kB
    except (OSError, ValueError, IndexError):
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / GIB if sys.platform == "darwin" else maxrss * 1024 / GIB


def rss_gib() -> float:
    """The process's current resident set size in GiB (falls back to the peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / GIB
    except (OSError, ValueError, IndexError):
        return peak_rss_gib()


class HardwareMonitor:
    """Measures one rank's memory and CPU use per training step.

    Call :meth:`start_step` when a step begins (it resets CUDA's peak counters, so the GPU
    figures are the step's own peaks) and :meth:`metrics` when it ends, on every rank.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self._gpu_util_works = self.cuda  # switched off after the first failure
        self._last: tuple[float, float] | None = None  # (process CPU s, wall s) of the last reading

    def start_step(self) -> None:
        """Reset the CUDA peak counters; the first call also starts the CPU-time clock."""
        if self._last is None:
            self._last = (time.process_time(), time.perf_counter())
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def cpu_percent(self) -> float:
        """Process CPU time over wall time since the previous reading, in percent (≥ 0)."""
        now = (time.process_time(), time.perf_counter())
        last, self._last = self._last, now
        if last is None:
            return math.nan
        wall = now[1] - last[1]
        return max(0.0, (now[0] - last[0]) / wall * 100.0) if wall > 0 else math.nan

    def gpu_util_percent(self) -> float:
        """``torch.cuda.utilization()`` (needs pynvml / NVML); NaN once it has failed."""
        if not self._gpu_util_works:
            return math.nan
        try:
            return float(torch.cuda.utilization(self.device))
        except Exception:  # noqa: BLE001 - no pynvml, no NVML, a MIG slice...: just omit the figure
            self._gpu_util_works = False
            return math.nan

    def sample(self) -> list[float]:
        """This rank's figures in ``keys.HW_FIELDS`` order (NaN marks "not measured here": the key is omitted)."""
        values = [rss_gib(), peak_rss_gib(), self.cpu_percent(), math.nan, math.nan, math.nan]
        if self.cuda:
            values[3] = torch.cuda.max_memory_allocated(self.device) / GIB
            values[4] = torch.cuda.max_memory_reserved(self.device) / GIB
            values[5] = self.gpu_util_percent()
        return values

    def metrics(self, accelerator: Any | None = None) -> dict[str, float]:
        """Every rank's figures as ``hw/...`` metrics (a collective when there are several ranks)."""
        rows = gather_rows(accelerator, self.sample())
        return to_metrics(rows, cuda=self.cuda)


def gather_rows(accelerator: Any | None, values: list[float]) -> list[list[float]]:
    """One row of ``values`` per rank, in rank order, on every rank (``accelerator.gather``)."""
    world = int(getattr(accelerator, "num_processes", 1)) if accelerator is not None else 1
    if world == 1:
        return [list(values)]
    tensor = torch.tensor(values, dtype=torch.float32, device=accelerator.device)
    gathered = accelerator.gather(tensor).reshape(world, len(values))
    return gathered.cpu().tolist()


def to_metrics(rows: list[list[float]], *, cuda: bool) -> dict[str, float]:
    """Per-rank ``hw/rank{r}/...`` keys (NaN figures left out) plus ``hw/peak_gib``."""
    out: dict[str, float] = {}
    peaks = []
    for rank, row in enumerate(rows):
        for name, value in zip(keys.HW_FIELDS, row):
            if math.isfinite(value):
                out[keys.hw_key(rank, name)] = float(value)
        peak = row[keys.HW_FIELDS.index(keys.HW_GPU_ALLOCATED if cuda else keys.HW_PEAK_RSS)]
        if math.isfinite(peak):
            peaks.append(peak)
    if peaks:
        out[keys.HW_PEAK_GIB] = max(peaks)
    return out
