"""The batching queue: requests arriving within a few milliseconds of each other run as ONE
``backend.generate`` call on a worker thread (one call per group of equal sampling parameters),
with per-request deadlines, interruption at the next token, and batch-size statistics.

A job asks for ``n`` samples of one prompt: its prompt goes into the call ``n`` times, side by side,
so a backend that prefills a repeated prompt once (the hf backend) does so, and a seeded call
draws ``n`` different samples from one generator."""

from __future__ import annotations

import math
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from memfactory.backends.base import Backend
from memfactory.types import Generation, Prompt, SamplingParams


class ServerShuttingDown(Exception):
    """The server was asked to stop (SIGTERM / Ctrl-C) before this request was answered."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its generation finished."""


class GenerationInterrupted(Exception):
    """Raised inside the model's forward pass to stop a generate call nobody waits for any more."""


@dataclass
class Job:
    """One prompt of a request, sampled ``n`` times; its future gets the ``n`` Generations or the exception."""

    prompt: Prompt
    params: SamplingParams
    deadline: float = math.inf  # time.monotonic() after which nobody wants the answer
    n: int = 1
    future: Future[list[Generation]] = field(default_factory=Future)
    abandoned: bool = False  # the client went away or stopped waiting

    def unwanted(self, now: float) -> bool:
        return self.abandoned or now > self.deadline


def _params_key(p: SamplingParams) -> tuple:
    """What must be equal for jobs to share a generate call (log-prob requests are merged instead)."""
    return (p.max_new_tokens, p.temperature, p.top_p, p.top_k, tuple(p.stop), p.seed)


def _merged_params(jobs: list[Job]) -> SamplingParams:
    """One group's parameters: the most alternatives any job asks for, prompt log-probs if any does
    (each reply keeps what its request asked for)."""
    return replace(jobs[0].params, top_logprobs=max(j.params.top_logprobs for j in jobs),
                   prompt_logprobs=any(j.params.prompt_logprobs for j in jobs))


@dataclass
class BatchStats:
    requests: int = 0  # jobs: one per prompt of a request
    batches: int = 0  # backend.generate calls
    max_batch: int = 0  # largest number of rows (prompts x n) in one generate call
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many times

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "batches": self.batches, "max_batch": self.max_batch,
                "sizes": {str(k): v for k, v in sorted(self.sizes.items())}}


class Batcher:
    """Collects jobs for ``window_s`` after the first arrives (up to ``max_batch`` rows; a job of n
    samples is n rows and is never split) and runs each group of equal sampling parameters as one
    ``backend.generate`` call on one worker thread.

    Closed-loop clients (each sends its next request when the previous answer arrives) tend to
    split into two half-size groups that alternate: one queues while the other runs. So when a
    batch is smaller than the largest one of the last ``recent_s`` seconds, the worker waits up
    to ``catch_up_s`` for the rest to come back before it starts. Conversely, while no recent
    batch held more than one request, a request starts at once (a lone client pays no window).
    """

    def __init__(self, backend: Backend, *, max_batch: int = 16, window_s: float = 0.005,
                 catch_up_s: float = 0.05, recent_s: float = 2.0) -> None:
        self.backend = backend
        self.max_batch = max(1, max_batch)
        self.window_s = max(0.0, window_s)
        self.catch_up_s = max(self.window_s, catch_up_s)
        self.recent_s = recent_s
        self.stats = BatchStats()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._recent: list[tuple[float, int]] = []  # (time, batch size) of recent batches
        self._stopping = threading.Event()
        self._current: list[Job] = []  # the group being generated now
        self._hook: Any = None
        self._worker_ident: int | None = None
        self.batch_seconds = 0.0  # moving average of one generate call, for Retry-After

    def submit(self, prompt: Prompt, params: SamplingParams, deadline: float = math.inf,
               n: int = 1) -> Future[list[Generation]]:
        return self.submit_job(prompt, params, deadline, n).future

    def submit_job(self, prompt: Prompt, params: SamplingParams, deadline: float = math.inf, n: int = 1) -> Job:
        """Queue ``n`` samples of one prompt; the job's future gets the n Generations (or the exception)."""
        if self._stopping.is_set():
            raise ServerShuttingDown("the server is shutting down")
        self._ensure_started()
        job = Job(prompt, params, deadline, max(1, n))
        self._queue.put(job)
        return job

    def begin_shutdown(self) -> None:
        """Stop taking work: a running generation stops at its next token, queued requests get
        ServerShuttingDown. Only sets an event, so it is safe inside a signal handler; the worker
        (which polls) does the rest."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self, timeout: float = 3.0) -> None:
        self.begin_shutdown()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=timeout)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None:
                self._install_interrupt_hook()
                self._thread = threading.Thread(target=self._loop, name="memfactory-batcher", daemon=True)
                self._thread.start()

    def _install_interrupt_hook(self) -> None:
        """A forward pre-hook on the model's input embeddings (run once per generated token, whatever
        wraps the model, peft included) that raises GenerationInterrupted in this batcher's worker
        when the server is stopping or every request of the running batch is unwanted."""
        model = getattr(self.backend, "model", None)
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if embeddings is None or not hasattr(embeddings, "register_forward_pre_hook"):
            return  # a backend without a local torch model: generations cannot be interrupted

        def hook(_module: Any, _args: Any) -> None:
            if threading.get_ident() != self._worker_ident:
                return  # training or an in-process caller sharing the model
            if self._stopping.is_set():
                raise GenerationInterrupted("the server is shutting down")
            current = self._current
            if current and all(job.unwanted(time.monotonic()) for job in current):
                raise GenerationInterrupted("every request of this batch passed its deadline or went away")

        self._hook = embeddings.register_forward_pre_hook(hook)

    def _fail_queued(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(ServerShuttingDown("the server is shutting down"))

    def _expected_size(self, now: float) -> int:
        self._recent = [(t, n) for t, n in self._recent if now - t <= self.recent_s]
        return min(self.max_batch, max((n for _, n in self._recent), default=1))

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """The first job plus whatever arrives within the window (longer when a batch is short)."""
        jobs = [first]
        rows = first.n
        start = time.monotonic()
        expected = self._expected_size(start)
        while rows < self.max_batch:
            # Whatever queued up while the previous batch ran is taken at once.
            if len(jobs) < expected:
                wait = self.catch_up_s
            else:  # a lone client (no recent batch above 1) gets no added latency
                wait = self.window_s if expected > 1 else 0.0
            remaining = start + wait - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            rows += job.n
        return jobs, False

    def _loop(self) -> None:
        self._worker_ident = threading.get_ident()
        try:
            while not self._stopping.is_set():
                try:
                    first = self._queue.get(timeout=0.2)  # polls, so a stop needs no queue operation
                except queue.Empty:
                    continue
                if first is None:
                    return
                jobs, stopping = self._collect(first)
                self._recent.append((time.monotonic(), len(jobs)))
                groups: dict[tuple, list[Job]] = {}
                for job in jobs:
                    groups.setdefault(_params_key(job.params), []).append(job)
                for group in groups.values():
                    self._run(group)
                if stopping:
                    return
        finally:
            self._worker_ident = None  # thread ids are reused: the hook must not fire for a later thread
            self._fail_queued()

    def _run(self, group: list[Job]) -> None:
        now = time.monotonic()
        live = []
        for job in group:
            if not job.future.set_running_or_notify_cancel():
                continue
            if self._stopping.is_set():
                job.future.set_exception(ServerShuttingDown("the server is shutting down"))
            elif job.unwanted(now):  # nobody waits for it: don't spend the model on it
                job.future.set_exception(DeadlineExceeded("the request passed its deadline while queued"))
            else:
                live.append(job)
        if not live:
            return
        rows = sum(job.n for job in live)
        with self._stats_lock:
            self.stats.requests += len(live)
            self.stats.batches += 1
            self.stats.max_batch = max(self.stats.max_batch, rows)
            self.stats.sizes[rows] = self.stats.sizes.get(rows, 0) + 1
        began = time.monotonic()
        self._current = live
        try:
            outputs = self.backend.generate([j.prompt for j in live for _ in range(j.n)], _merged_params(live))
            if len(outputs) != rows:
                raise RuntimeError(f"backend returned {len(outputs)} generations for {rows} prompts")
        except BaseException as exc:  # noqa: BLE001 - every waiting request must hear about it
            if isinstance(exc, GenerationInterrupted):
                exc = (ServerShuttingDown(str(exc)) if self._stopping.is_set()
                       else DeadlineExceeded(str(exc)))
            for job in live:
                job.future.set_exception(exc)
            return
        finally:
            self._current = []
            took = time.monotonic() - began
            self.batch_seconds = took if self.batch_seconds == 0 else 0.8 * self.batch_seconds + 0.2 * took
        start = 0
        for job in live:
            job.future.set_result(outputs[start : start + job.n])
            start += job.n
