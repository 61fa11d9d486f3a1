"""Keep a CPU training process's heap from holding freed activations (glibc's mmap threshold).

glibc serves blocks above its mmap threshold with ``mmap`` and returns them to the system on
``free``. By default the threshold is *dynamic*: every mmapped block freed raises it to that
block's size (up to 32 MiB). A transformer's per-layer temporaries are a few MiB to tens of MiB,
so after the first layer they are carved out of the heap instead, and the heap keeps what they
fragment: the CPU demo (SmolLM2 + LoRA, checkpointed) peaked at 6.0 GiB RSS at its cap shape with
the default and 1.43 GiB with the threshold fixed at 64 KiB, same run (bench/RESULTS.md, "Memory
planner"). Fixing it (which also turns the dynamic adjustment off) is what ``MALLOC_MMAP_THRESHOLD_``
does at start-up; :func:`fix_mmap_threshold` does the same from inside the process with
``mallopt``, so every way of starting a run gets it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
DEFAULT_THRESHOLD = 64 * 1024
ENV = "MEMFACTORY_MALLOC_MMAP_THRESHOLD"  # bytes; 0 leaves glibc's default alone


def fix_mmap_threshold(threshold: int | None = None) -> int | None:
    """Fix glibc's mmap threshold at ``threshold`` bytes (default: ``$MEMFACTORY_MALLOC_MMAP_THRESHOLD``
    or 64 KiB). Returns the threshold set, or None where nothing was changed: not glibc, a
    threshold of 0, or one the user already chose with ``MALLOC_MMAP_THRESHOLD_``."""
    if threshold is None:
        raw = os.environ.get(ENV, str(DEFAULT_THRESHOLD))
        try:
            threshold = int(raw)
        except ValueError:
            log.warning("%s=%r is not a number of bytes; glibc's default mmap threshold is kept", ENV, raw)
            return None
    if threshold <= 0 or "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries: nothing to fix
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return threshold if mallopt(M_MMAP_THRESHOLD, threshold) == 1 else None
