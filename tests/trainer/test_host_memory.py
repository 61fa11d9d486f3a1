"""glibc's mmap threshold fixed in-process keeps freed multi-MiB temporaries out of the heap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from memfactory.trainer import host_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

# A transformer step's pattern: a big block freed (glibc's dynamic threshold rises to its size),
# then many mid-size temporaries of which every other one is freed, with small live blocks
# between them so the heap cannot shrink from its top. RSS after the frees is what the heap kept.
PATTERN = textwrap.dedent("""
    import ctypes, json, os, sys
    sys.path.insert(0, {root!r})
    from memfactory.trainer import host_memory
    fixed = host_memory.fix_mmap_threshold({threshold})
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    def rss_mib():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    def touch(p, n):
        ctypes.memset(p, 1, n)
    big = libc.malloc(24 << 20); touch(big, 24 << 20); libc.free(big)
    blocks, pins = [], []
    for _ in range(40):
        p = libc.malloc(8 << 20); touch(p, 8 << 20); blocks.append(p)
        q = libc.malloc(1024); touch(q, 1024); pins.append(q)
    before = rss_mib()
    for p in blocks[::2]:
        libc.free(p)
    print(json.dumps({{"fixed": fixed, "released_mib": before - rss_mib()}}))
""")


def run_pattern(threshold: int) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    done = subprocess.run([sys.executable, "-c", PATTERN.format(root=root, threshold=threshold)],
                          capture_output=True, text=True, env=env, timeout=60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fixed_threshold_returns_freed_blocks_to_the_system():
    default = run_pattern(0)  # 0: leave glibc's dynamic threshold alone
    fixed = run_pattern(64 * 1024)
    assert default["fixed"] is None and fixed["fixed"] == 64 * 1024
    # 20 freed blocks of 8 MiB: with the fixed threshold each was its own mapping, unmapped on free.
    assert fixed["released_mib"] > 150, fixed
    # With glibc's default the same blocks came from the heap, which kept them.
    assert default["released_mib"] < fixed["released_mib"] / 2, (default, fixed)


def test_user_choice_and_bad_values_are_respected(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert host_memory.fix_mmap_threshold() is None  # the user's own setting stands
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv(host_memory.ENV, "lots")
    assert host_memory.fix_mmap_threshold() is None
    monkeypatch.setenv(host_memory.ENV, "0")
    assert host_memory.fix_mmap_threshold() is None
