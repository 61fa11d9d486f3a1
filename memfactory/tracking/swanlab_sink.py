"""Optional SwanLab logging that can never stop training and never asks for a login.

Modes (the preset's ``logging.swanlab``):

* ``offline``: writes SwanLab's run files under ``logdir`` (``<run>/swanlog/run-*/``); sync later
  with ``swanlab sync DIR`` or view with ``swanlab watch DIR`` (needs ``swanlab[dashboard]``).
* ``local``: the same files, meant for the local dashboard. Without the ``swanboard`` package it
  falls back to ``offline`` (same files) instead of logging an import error every run.
* ``cloud``: uploads to swanlab.cn; needs ``SWANLAB_API_KEY`` in the environment, else a
  MemFactoryError before training starts (we never prompt).
* ``disabled``: does nothing and does not import swanlab.

If SwanLab fails to start or to log, the sink logs one warning and turns itself off.
Stdout capture and the hardware monitor thread are switched off: the run folder already keeps
stdout.log, and the monitor would compete for CPU with training.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memfactory.errors import MemFactoryError

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

MODES = ("local", "offline", "cloud", "disabled")
API_KEY_ENV = "SWANLAB_API_KEY"


class SwanLabSink:
    """One SwanLab run; ``active`` is False when disabled or after a failure."""

    def __init__(
        self,
        mode: str,
        project: str,
        run_name: str,
        config: dict[str, Any] | None = None,
        logdir: str | Path | None = None,
    ):
        if mode not in MODES:
            raise MemFactoryError(f"logging.swanlab must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.logdir = Path(logdir) if logdir is not None else None
        self._run = None
        self.error: str | None = None
        if mode == "disabled":
            return
        if mode == "cloud" and not os.environ.get(API_KEY_ENV):
            raise MemFactoryError(
                f"logging.swanlab is 'cloud' but {API_KEY_ENV} is not set; export your SwanLab API key "
                "or use 'offline' (logs into the run folder, no account needed)"
            )
        if mode != "cloud" and self.logdir is None:
            raise ValueError("offline/local SwanLab logging needs a logdir inside the run folder")
        try:
            self._run = self._start(project, run_name, config or {})
        except Exception as exc:  # noqa: BLE001 - any failure: warn and train without SwanLab
            self._disable(f"SwanLab could not start in {mode} mode ({type(exc).__name__}: {exc})")

    @property
    def active(self) -> bool:
        return self._run is not None

    def _start(self, project: str, run_name: str, config: dict[str, Any]):
        import swanlab

        mode = {"cloud": "online"}.get(self.mode, self.mode)
        if mode == "local" and importlib.util.find_spec("swanboard") is None:
            log.info(
                "swanboard is not installed: SwanLab 'local' logs like 'offline' (pip install 'swanlab[dashboard]')"
            )
            mode = "offline"
        settings = swanlab.Settings(
            interactive=False,
            terminal=swanlab.Settings.Terminal(proxy_type="none"),
            probe=swanlab.Settings.Probe(monitor=False),
        )
        kwargs: dict[str, Any] = {}
        if self.logdir is not None:
            self.logdir.mkdir(parents=True, exist_ok=True)
            kwargs["log_dir"] = str(self.logdir)
        return swanlab.init(
            mode=mode,
            project=project,
            name=run_name,
            config=_plain(config),
            settings=settings,
            reinit=True,
            **kwargs,
        )

    def _disable(self, message: str) -> None:
        self.error = message
        log.warning("%s; training continues without it", message)
        run, self._run = self._run, None
        if run is not None:
            try:
                run.finish()
            except Exception as exc:  # noqa: BLE001 - already broken; nothing more to do
                log.debug("SwanLab finish after a failure also failed: %s", exc)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Log the finite numeric values of ``metrics`` at ``step`` (others are skipped)."""
        if self._run is None:
            return
        scalars = {}
        for key, value in metrics.items():
            if isinstance(value, str) or value is None:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                scalars[str(key)] = number
        if not scalars:
            return
        try:
            self._run.log(scalars, step=int(step))
        except Exception as exc:  # noqa: BLE001 - logging must never stop training
            self._disable(f"SwanLab logging failed at step {step} ({type(exc).__name__}: {exc})")

    def finish(self, state: str = "success", error: str | None = None) -> None:
        """Close the SwanLab run (safe to call twice); ``state``: success, crashed or aborted."""
        run, self._run = self._run, None
        if run is None:
            return
        try:
            run.finish(state=state, error=error)
        except Exception as exc:  # noqa: BLE001 - finishing must never fail the run
            log.warning("SwanLab did not finish cleanly: %s", exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


def _plain(value: Any) -> Any:
    """Config as plain JSON-like data (SwanLab stores it as YAML)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
