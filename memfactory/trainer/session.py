"""One training run's bookkeeping around the GRPO loop.

Creates (or re-opens, for ``--resume``) ``runs/<id>/`` and its row in the runs database, streams
each step's metrics to metrics.jsonl (the per-step store) and SwanLab, keeps the run's row current
(step, rewards, peak memory, seconds per step and ETA: computed here, where the steps happen),
writes sample trajectories and reward distributions, checkpoints every N steps, and records how
the run ended: finished, aborted (SIGTERM/SIGINT from the UI's Abort button), or failed with the error.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from collections import deque
from pathlib import Path
from typing import Any

from memfactory.config import Preset, save_preset
from memfactory.errors import MemFactoryError
from memfactory.preflight import check_preflight
from memfactory.tracking import metric_keys as keys
from memfactory.tracking.metrics import MetricsWriter, RunDir
from memfactory.tracking.process import new_run_id
from memfactory.tracking.runs import RunsDB
from memfactory.tracking.swanlab_sink import SwanLabSink
from memfactory.tracking.view import ETA_WINDOW, eta_seconds, seconds_per_step
from memfactory.trainer.checkpoint import disk_error, latest_checkpoint, load_checkpoint, save_checkpoint
from memfactory.trainer.distributed import DebugRecorder, broadcast_object, is_main_env
from memfactory.trainer.loop import GRPOTrainer

log = logging.getLogger("memfactory.train")

# How many whole trajectories go into samples.jsonl each time samples are written.
SAMPLES_PER_WRITE = 4


class RunAborted(Exception):
    """Raised inside the loop when the process is asked to stop."""


def _raise_abort(signum: int, _frame: Any) -> None:
    raise RunAborted(f"received signal {signal.Signals(signum).name}")


class TrainingSession:
    def __init__(self, preset: Preset, *, run_id: str | None = None, resume: str | None = None):
        check_preflight(preset, f"preset {preset.name!r}")  # before any run folder or runs-database row
        self.preset = preset
        self.resume = resume is not None
        # Under `accelerate launch` only rank 0 writes (run folder, runs DB, SwanLab, checkpoints).
        self.is_main = is_main_env()
        self.debug = DebugRecorder()
        self._recent: deque[dict[str, Any]] = deque(maxlen=ETA_WINDOW + 1)  # this process's last steps, for the ETA
        if not self.is_main:
            self.status = "created"
            self.error = None
            self.db = None
            self.writer = None
            # A new run's id comes from rank 0 once the processes are connected (see run()).
            self.run_id = resume or run_id
            self.run_dir = RunDir(RunsDB(preset.logging.runs_db).require(resume).run_dir) if resume else None
            return
        self.db = RunsDB(preset.logging.runs_db)
        if resume is not None:
            record = self.db.require(resume)
            # process_alive also checks the start time: a recycled pid must not block the resume
            if record.status == "running" and record.process_alive() and record.pid != os.getpid():
                raise MemFactoryError(f"run {resume} is still running (pid {record.pid}); abort it before resuming")
            self.run_id = resume
            self.run_dir = RunDir(record.run_dir)
        else:
            self.run_id = run_id or new_run_id(preset.name)
            path = Path(preset.logging.runs_dir) / self.run_id
            self.run_dir = RunDir(path)
            # The web UI's runner creates the folder and its stdout.log before we start.
            if path.exists() and any(p.name != self.run_dir.log_path.name for p in path.iterdir()):
                raise MemFactoryError(f"run folder {path} already exists; pick another --run-id")
            self.run_dir.path.mkdir(parents=True, exist_ok=True)
            save_preset(preset, self.run_dir.preset_path)
            self.db.create_run(
                preset.name,
                self.run_dir.path,
                run_id=self.run_id,
                preset_path=self.run_dir.preset_path,
                total_steps=preset.trainer.steps,
                meta={"agent": preset.agent, "model": preset.model.path, "env": preset.env.type},
            )
        self.status = "created"
        self.error: str | None = None
        try:
            self.writer = MetricsWriter(self.run_dir)
        except OSError as exc:
            cause = disk_error(exc) or exc.strerror or str(exc)
            raise MemFactoryError(f"cannot write to run folder {self.run_dir.path}: {cause}") from exc

    # ------------------------------------------------------------------ logging
    def _attach_log_file(self) -> logging.Handler | None:
        """Log to stdout.log; when the web UI's runner started us, stdout already is that file."""
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
        if os.environ.get("MEMFACTORY_RUNNER") == "1":
            return None
        handler = logging.FileHandler(self.run_dir.log_path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(handler)
        return handler

    # ------------------------------------------------------------------ the run
    def run(self, *, progress: bool = True) -> None:
        if self.is_main:
            handler = self._attach_log_file()
        else:
            handler = None
            logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
        previous = {sig: signal.signal(sig, _raise_abort) for sig in (signal.SIGTERM, signal.SIGINT)}
        if self.is_main:
            self.db.set_status(self.run_id, "running", pid=os.getpid())
        self.status = "running"
        log.info("run %s: %s (agent %s, model %s)", self.run_id, self.preset.name, self.preset.agent,
                 self.preset.model.path)
        sink = None
        bar = None
        try:
            trainer = GRPOTrainer(self.preset)
            self.trainer = trainer
            self.run_id = broadcast_object(trainer.accelerator, self.run_id)
            if self.resume:
                self._restore(trainer)
            if not self.is_main:
                trainer.fit(lambda result: self._on_step(trainer, result, None, None))
                self.debug.write(trainer, self.run_id)
                self._finish("finished")
                return
            self.db.update_meta(
                self.run_id,
                attn_implementation=trainer.attn_implementation,
                device=str(trainer.accelerator.device),
                trainable_parameters=trainer.trainable_parameters,
                num_processes=trainer.accelerator.num_processes,
                **trainer.precision_info,
            )
            log.info("attention %s on %s, %d trainable parameters; %s", trainer.attn_implementation,
                     trainer.accelerator.device, trainer.trainable_parameters,
                     ", ".join(f"{k} {v}" for k, v in trainer.precision_info.items()))
            sink = SwanLabSink(
                self.preset.logging.swanlab,
                project=self.preset.logging.project,
                run_name=self.run_id,
                config=self.preset.model_dump(mode="json"),
                logdir=self.run_dir.swanlab_dir,
            )
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=self.preset.trainer.steps, initial=trainer.step, desc=self.run_id, unit="step")
            trainer.fit(lambda result: self._on_step(trainer, result, sink, bar))
            self.debug.write(trainer, self.run_id)
            self._finish("finished")
        except RunAborted as exc:
            log.warning("aborted: %s", exc)
            self._finish("aborted", str(exc))
        except MemFactoryError as exc:
            log.error("%s", exc)
            self._finish("failed", str(exc))
            raise
        except Exception as exc:
            cause = disk_error(exc) if isinstance(exc, OSError) else None
            if cause is not None:
                # a full or read-only disk is the user's to fix: one line, not a traceback
                message = f"cannot write to run folder {self.run_dir.path}: {cause} ({exc})"
                log.error("%s", message)
                self._finish("failed", message)
                raise MemFactoryError(message) from exc
            log.error("training crashed:\n%s", traceback.format_exc())
            self._finish("failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            if bar is not None:
                bar.close()
            if sink is not None:
                state = {"finished": "success", "aborted": "aborted"}.get(self.status, "crashed")
                sink.finish(state=state, error=self.error)
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                handler.close()

    def _finish(self, status: str, error: str | None = None) -> None:
        self.status = status
        self.error = error
        if self.is_main:
            try:
                self.db.set_status(self.run_id, status, error)
            except MemFactoryError as exc:
                # e.g. the database's disk is full too: keep the run's own error the one that is raised;
                # `memfactory runs list` later reconciles the row (dead pid -> failed)
                log.error("could not record status %s: %s", status, exc)
        log.info("run %s %s", self.run_id, status)

    def _restore(self, trainer: Any) -> None:
        checkpoint = latest_checkpoint(self.run_dir.path)
        if checkpoint is None:
            log.warning("run %s has no checkpoint yet; starting it from step 0", self.run_id)
            step = 0
        else:
            state = load_checkpoint(checkpoint, trainer.policy, trainer.optimizer, trainer.scheduler)
            step = int(state["step"])
            log.info("resumed from %s (step %d)", checkpoint, step)
        trainer.step = step
        if not self.is_main:
            return
        self.db.update(self.run_id, total_steps=self.preset.trainer.steps)
        # Metrics stay continuous: whatever was logged after the checkpoint is re-done.
        self.writer.truncate_after(step)
        self.db.update_progress(self.run_id, step)

    def _on_step(self, trainer: Any, result: Any, sink: Any, bar: Any) -> None:
        self.debug.on_step(result)
        cfg = self.preset.trainer
        step, metrics = result.step, result.metrics
        save = step % cfg.save_every == 0 or step == cfg.steps
        state = trainer.checkpoint_state() if save else None  # FSDP: gathered on every rank
        if not self.is_main:
            return
        self._recent.append(self.writer.write(step, metrics))
        per_step = seconds_per_step(self._recent)
        self.db.update_progress(
            self.run_id, step, metrics.get(keys.REWARD_MEAN), peak_gib=metrics.get(keys.HW_PEAK_GIB),
            seconds_per_step=per_step, eta_s=eta_seconds(step, cfg.steps, per_step),
        )
        if sink is not None:
            sink.log(step, metrics)
        # The raw group rewards every step (the reward distribution); whole trajectories every N.
        with_samples = step == 1 or step % cfg.sample_every == 0 or step == cfg.steps
        samples = [t.summary() for t in result.trajectories[:SAMPLES_PER_WRITE]] if with_samples else []
        self.writer.write_samples(step, samples, group_rewards=result.group_rewards)
        if save:
            path = save_checkpoint(
                self.run_dir.checkpoints,
                step,
                trainer.policy,
                trainer.optimizer,
                trainer.scheduler,
                extra={"run_id": self.run_id},
                keep=cfg.keep_checkpoints,
                state=state,
                dtype=trainer.checkpoint_dtype,
            )
            log.info("checkpoint %s", path)
        log.info(
            "step %d/%d reward %.3f ± %.3f loss %.4f skipped %.2f %.1fs",
            step, cfg.steps, metrics[keys.REWARD_MEAN], metrics[keys.REWARD_STD], metrics[keys.LOSS],
            metrics.get(keys.SKIPPED_GROUP_FRACTION, 0.0), metrics[keys.STEP_S],
        )
        if bar is not None:
            bar.set_postfix(reward=f"{metrics[keys.REWARD_MEAN]:.3f}", loss=f"{metrics[keys.LOSS]:.3f}")
            bar.update(1)
