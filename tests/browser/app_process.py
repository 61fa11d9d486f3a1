"""``python app.py`` for the browser tests: started on a free port and stopped one way everywhere.

The app runs in its own process group (it starts training runs of its own, which must outlive a
restart of it in some tests but never the test session's clean-up), with ``MEMFACTORY_WORKSPACE``
set to the test's workspace and no login from the developer's shell (``MEMFACTORY_UI_AUTH``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest
from pages import STATE_WAIT_MS

from memfactory.tracking.process import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = STATE_WAIT_MS / 1000  # a bound for a hung start, not a guess of how long one takes


def start_app(workspace: Path, log_path: Path, args: Sequence[str] = ()) -> tuple[subprocess.Popen, str]:
    """``python app.py --port <free> ARGS``; (process, loopback URL) once ``/`` answers 200 (a login
    page counts). A process that exits or does not answer in time fails the test with its log."""
    port = free_port()
    env = dict(os.environ, MEMFACTORY_WORKSPACE=str(workspace), OMP_NUM_THREADS="1",
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    env.pop("MEMFACTORY_UI_AUTH", None)  # a login set in the developer's shell would put the app behind it
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *args], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_app(process)
            pytest.fail(f"app.py did not answer on {url} within {START_TIMEOUT}s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


def stop_app(process: subprocess.Popen | None) -> None:
    """SIGTERM to the app's process group, SIGKILL after 10 s."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
