"""The one polling wait of the tests: for a state, never for a time guessed for one machine.

``HANG_S`` only turns a hung process into a failure instead of a stuck run; it is far above any awaited
moment of these tests on a loaded 2-core machine (the browser tests' ``STATE_WAIT_MS`` is the same bound).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
HANG_S = 300.0


def wait_until(
    predicate: Callable[[], T],
    timeout: float = HANG_S,
    *,
    every: float = 0.05,
    proc: subprocess.Popen | None = None,
) -> T | None:
    """Poll ``predicate`` until it returns something truthy and return that; None after ``timeout``.
    With ``proc``, fail at once if that process exits before the awaited state."""
    deadline = time.monotonic() + timeout
    while True:
        value: Any = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited with {proc.returncode} before the awaited state")
        if time.monotonic() >= deadline:
            return None
        time.sleep(every)
