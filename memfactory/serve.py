"""An OpenAI-compatible HTTP server over any MemFactory backend (usually a local checkpoint).

``/v1/chat/completions`` speaks OpenAI's request and response shapes plus vLLM's
``continue_final_message`` / ``add_generation_prompt`` / ``include_stop_str_in_output``
extensions, so ``OpenAIBackend`` (or any OpenAI client) can evaluate a trained checkpoint.

Requests arriving within a few milliseconds of each other are collected by a small batching
queue and run as ONE ``backend.generate`` call on a worker thread (the HF backend pads on the
left and decodes them together), which is where the throughput of a local model comes from.
Requests with different sampling parameters are grouped, one generate call per group.

``stream: true`` returns OpenAI's SSE chunk format ending with ``data: [DONE]``. The backend
interface produces whole completions, so the chunks arrive once the completion is done: the
format works with streaming clients, but the first token is not any earlier.

The server is bounded, so one client cannot tie it up for everyone:

* a request body over ``max_body_bytes`` is refused with 413 before it is read;
* the prompt is counted in the model's tokens and refused with 400 when it does not fit the
  context (the message names both numbers); a prompt whose characters alone prove it too long is
  refused without tokenising it;
* ``max_tokens`` is refused with 400 when prompt + max_tokens exceeds the context (as OpenAI and
  vLLM do); without ``max_tokens`` the default is cut to what the context leaves;
* ``n`` must be 1, ``stop`` holds at most 16 strings of at most 1,000 characters, numbers are finite;
* at most ``max_queue`` requests are admitted at once (waiting or generating); the next gets 429
  with ``Retry-After``;
* each request has a deadline (``request_timeout_s``, 504 after it); a batch whose requests have
  all passed their deadline or whose clients have all gone is interrupted at the next token;
* SIGTERM / Ctrl-C interrupt a running generation at the next token, answer every waiting request
  with 503, and the process exits within seconds.

Every error is JSON in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

With an API key (``memfactory serve --api-key-env VAR``, required beyond loopback) every route but
``/health`` answers 401 without ``Authorization: Bearer <key>``; the key is compared in constant
time, and ``/health`` without it says only whether the server is up.
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memfactory.backends.base import Backend
from memfactory.backends.build import build_backend
from memfactory.backends.hf import HFBackend
from memfactory.config import ModelConfig
from memfactory.errors import MemFactoryError
from memfactory.exposure import secret_equal
from memfactory.targets import with_checkpoint
from memfactory.types import ChatPrompt, Generation, SamplingParams

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_TOKENS = 256
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024  # a 128k-token prompt is ~0.5 MB of text; JSON escaping adds some
DEFAULT_MAX_QUEUE = 256  # requests admitted at once (waiting + generating)
DEFAULT_REQUEST_TIMEOUT_S = 600.0
SHUTDOWN_GRACE_S = 5.0  # after SIGTERM, how long uvicorn waits for responses before cancelling them
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1000


# --------------------------------------------------------------------------- request schema


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    # A string, or OpenAI's list of content parts ([{"type": "text", "text": ...}]).
    content: str | list[dict[str, Any]] | None = ""


class ChatRequest(BaseModel):
    """The fields we honour; everything else an OpenAI client sends is accepted and ignored."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1, le=1_048_576)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # what torch.manual_seed takes
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    continue_final_message: bool = False
    add_generation_prompt: bool | None = None
    include_stop_str_in_output: bool = False


class APIError(Exception):
    """An error answered in OpenAI's ``{"error": {...}}`` shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param
        self.headers = headers


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise APIError(400, f"content part type {part.get('type')!r} is not supported (text only)", param="messages")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def to_prompt_and_params(req: ChatRequest, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> tuple[ChatPrompt, SamplingParams]:
    """Map an OpenAI request onto MemFactory's ChatPrompt + SamplingParams (400 on what we can't do)."""
    if req.n != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    messages = [{"role": m.role, "content": _text(m.content)} for m in req.messages]
    prefix = ""
    add_gen = req.add_generation_prompt
    if req.continue_final_message:
        if add_gen:
            raise APIError(400, "continue_final_message and add_generation_prompt cannot both be true")
        if messages[-1]["role"] != "assistant":
            raise APIError(400, "continue_final_message needs the last message to be from the assistant", param="messages")
        prefix = messages.pop()["content"]
        if not messages:
            raise APIError(400, "continue_final_message needs at least one message before the assistant's", param="messages")
    elif add_gen is False:
        raise APIError(400, "add_generation_prompt=false is only supported with continue_final_message=true")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP_STRINGS:
        raise APIError(400, f"stop: at most {MAX_STOP_STRINGS} strings, got {len(stop)}", param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise APIError(400, f"stop: each string may be at most {MAX_STOP_CHARS} characters", param="stop")
    params = SamplingParams(
        max_new_tokens=req.max_tokens or req.max_completion_tokens or default_max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=max(0, req.top_k),
        stop=[s for s in stop if s],
        seed=req.seed,
    )
    return ChatPrompt(messages=messages, assistant_prefix=prefix), params


def apply_stop(text: str, stop: list[str], keep: bool) -> tuple[str, str | None]:
    """Cut the text at the stop string that ends first (where generation stopped). OpenAI drops
    the stop string; ``keep`` leaves it in (vLLM's ``include_stop_str_in_output``).
    Returns the text and the matched string, or None when no stop string occurs."""
    best: tuple[int, int, str] | None = None  # (end, -length, string): earliest end, then longest
    for s in stop:
        i = text.find(s)
        if s and i >= 0:
            cand = (i + len(s), -len(s), s)
            best = cand if best is None or cand < best else best
    if best is None:
        return text, None
    end, _, s = best
    return (text[:end] if keep else text[: end - len(s)]), s


# --------------------------------------------------------------------------- batching


class ServerShuttingDown(Exception):
    """The server was asked to stop (SIGTERM / Ctrl-C) before this request was answered."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its generation finished."""


class GenerationInterrupted(Exception):
    """Raised inside the model's forward pass to stop a generate call nobody waits for any more."""


@dataclass
class _Job:
    prompt: ChatPrompt
    params: SamplingParams
    deadline: float = math.inf  # time.monotonic() after which nobody wants the answer
    future: Future = field(default_factory=Future)
    abandoned: bool = False  # the client went away or stopped waiting

    def unwanted(self, now: float) -> bool:
        return self.abandoned or now > self.deadline


def _params_key(p: SamplingParams) -> tuple:
    return (p.max_new_tokens, p.temperature, p.top_p, p.top_k, tuple(p.stop), p.seed)


@dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0  # backend.generate calls
    max_batch: int = 0  # largest number of prompts in one generate call
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many times

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "batches": self.batches, "max_batch": self.max_batch,
                "sizes": {str(k): v for k, v in sorted(self.sizes.items())}}


class Batcher:
    """Collects jobs for ``window_s`` after the first arrives (up to ``max_batch``) and runs each
    group of equal sampling parameters as one ``backend.generate`` call on one worker thread.

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
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._recent: list[tuple[float, int]] = []  # (time, batch size) of recent batches
        self._stopping = threading.Event()
        self._current: list[_Job] = []  # the group being generated now
        self._hook: Any = None
        self._worker_ident: int | None = None
        self.batch_seconds = 0.0  # moving average of one generate call, for Retry-After

    def submit(self, prompt: ChatPrompt, params: SamplingParams, deadline: float = math.inf) -> Future:
        return self.submit_job(prompt, params, deadline).future

    def submit_job(self, prompt: ChatPrompt, params: SamplingParams, deadline: float = math.inf) -> _Job:
        """Queue one request; the job's future gets the Generation (or the exception)."""
        if self._stopping.is_set():
            raise ServerShuttingDown("the server is shutting down")
        self._ensure_started()
        job = _Job(prompt, params, deadline)
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

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job plus whatever arrives within the window (longer when a batch is short)."""
        jobs = [first]
        start = time.monotonic()
        expected = self._expected_size(start)
        while len(jobs) < self.max_batch:
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
                groups: dict[tuple, list[_Job]] = {}
                for job in jobs:
                    groups.setdefault(_params_key(job.params), []).append(job)
                for group in groups.values():
                    self._run(group)
                if stopping:
                    return
        finally:
            self._worker_ident = None  # thread ids are reused: the hook must not fire for a later thread
            self._fail_queued()

    def _run(self, group: list[_Job]) -> None:
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
        with self._stats_lock:
            self.stats.requests += len(live)
            self.stats.batches += 1
            self.stats.max_batch = max(self.stats.max_batch, len(live))
            self.stats.sizes[len(live)] = self.stats.sizes.get(len(live), 0) + 1
        began = time.monotonic()
        self._current = live
        try:
            outputs = self.backend.generate([j.prompt for j in live], live[0].params)
            if len(outputs) != len(live):
                raise RuntimeError(f"backend returned {len(outputs)} generations for {len(live)} prompts")
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
        for job, out in zip(live, outputs):
            job.future.set_result(out)


# --------------------------------------------------------------------------- the app


def _usage(gen: Generation) -> dict[str, int] | None:
    if gen.prompt_ids is None or gen.response_ids is None:
        return None  # a text-only backend: no honest token counts
    p, c = len(gen.prompt_ids), len(gen.response_ids)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _pieces(text: str) -> Iterator[str]:
    """Word-sized deltas whose concatenation is exactly ``text``."""
    yield from re.findall(r"\s*\S+|\s+", text)


def model_context_length(backend: Backend) -> int | None:
    """The model's context in tokens (``max_position_embeddings`` and the tokenizer's
    ``model_max_length``, the smaller; a vLLM engine's ``max_model_len``), or None for a backend
    without a local model."""
    config = getattr(getattr(backend, "model", None), "config", None)
    sizes = []
    engine_length = getattr(backend, "max_model_len", None)
    if isinstance(engine_length, int) and engine_length > 0:
        sizes.append(engine_length)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            sizes.append(value)
            break
    value = getattr(getattr(backend, "tokenizer", None), "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10**8:  # tokenizers without a limit say ~1e30
        sizes.append(value)
    return min(sizes) if sizes else None


def _max_chars_per_token(tokenizer: Any) -> int | None:
    """The longest vocabulary entry in characters. A byte-level BPE or SentencePiece token covers at
    most that many characters of text, so ``characters / this`` is a lower bound on the token count:
    a prompt can be proved too long without tokenising it."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - no vocabulary to read: tokenise everything
        return None
    return max((len(token) for token in vocab), default=0) or None


@dataclass
class _Load:
    admitted: int = 0  # requests between admission and answer (waiting, tokenising or generating)
    refused_full: int = 0  # 429s


def create_app(
    backend: Backend,
    model_name: str,
    *,
    max_batch: int = 16,
    batch_window_ms: float = 5.0,
    api_key: str | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    context_length: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_queue: int = DEFAULT_MAX_QUEUE,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> FastAPI:
    """The FastAPI app; ``app.state.batcher.stats`` counts requests and batch sizes.

    ``api_key``: when set, every request but ``/health`` must carry ``Authorization: Bearer <key>``
    (compared in constant time; 401 otherwise), and ``/health`` without it answers only its status.
    ``context_length``: the context requests are checked against (default and upper limit: the
    model's own, see :func:`model_context_length`). ``max_body_bytes``, ``max_queue`` and
    ``request_timeout_s`` bound a request's body, the requests admitted at once, and each one's wait.
    """
    batcher = Batcher(backend, max_batch=max_batch, window_s=batch_window_ms / 1000.0)
    detected = model_context_length(backend)
    known = [n for n in (context_length, detected) if n]
    context = min(known) if known else None
    count_tokens = getattr(backend, "render_prompt", None)
    chars_per_token = _max_chars_per_token(backend.tokenizer) if count_tokens and hasattr(backend, "tokenizer") else None
    # Tokenising runs off the event loop (so /v1/models and /health keep answering) on few threads.
    tokenize_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="memfactory-tokenize")
    load = _Load()
    max_queue = max(1, max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.stop()
        tokenize_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="MemFactory OpenAI-compatible server", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.model_name = model_name
    app.state.context_length = context
    app.state.load = load
    created = int(time.time())

    def error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": status}},
                            status_code=status, headers=headers)

    def validation_message(errors: list[dict[str, Any]]) -> APIError:
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return APIError(400, f"{where}: {first.get('msg', 'invalid request')}", param=where or None)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error(exc.status, exc.message, exc.type, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        api = validation_message(list(exc.errors()))
        return error(api.status, api.message, api.type, api.param)

    class _Auth:
        """The API key check, on every route (``/docs``, ``/openapi.json`` and unknown paths too) but
        ``/health``, which without the key says only whether the server is up (a load balancer's
        liveness probe needs no secret; the model name and load figures are for key holders).
        The key is compared in constant time. Plain ASGI (not ``@app.middleware``, whose wrapped
        receive hides a client's disconnect)."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            if api_key and scope["type"] in ("http", "websocket"):
                scope.setdefault("state", {})["authorized"] = _authorized(scope)
                if not scope["state"]["authorized"] and scope["path"] != "/health":
                    if scope["type"] == "websocket":
                        await send({"type": "websocket.close", "code": 1008})
                        return
                    await error(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                                "authentication_error",
                                headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                    return
            await self.inner(scope, receive, send)

    def _authorized(scope: dict[str, Any]) -> bool:
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        scheme, _, token = given.partition(b" ")
        return bool(scheme.lower() == b"bearer") & secret_equal(token.strip(), expected_key)

    expected_key = (api_key or "").encode("utf-8")
    app.add_middleware(_Auth)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        status = "stopping" if batcher.stopping else "ok"
        if api_key and not request.state.authorized:
            return {"status": status}
        return {"status": status, "model": model_name,
                "batching": batcher.stats.as_dict(),
                "load": {"admitted": load.admitted, "max_queue": max_queue, "refused_full": load.refused_full},
                "limits": {"context_length": context, "max_body_bytes": max_body_bytes,
                           "request_timeout_s": request_timeout_s}}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data: dict[str, Any] = {"id": model_name, "object": "model", "created": created, "owned_by": "memfactory"}
        if context:
            data["max_model_len"] = context  # vLLM's name for it
        return {"object": "list", "data": [data]}

    def retry_after() -> str:
        waves = load.admitted / max(1, batcher.max_batch)
        return str(int(min(60, max(1, math.ceil((batcher.batch_seconds or 1.0) * waves)))))

    def too_big(size: int) -> APIError:
        return APIError(413, f"the request body is {'over ' if size < 0 else ''}{abs(size)} bytes; this server "
                        f"takes at most {max_body_bytes} (memfactory serve --max-body-bytes)")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        length = request.headers.get("content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                raise APIError(400, f"Content-Length {length[:40]!r} is not a number") from None
            if size > max_body_bytes:
                raise too_big(size)
        if batcher.stopping:
            raise APIError(503, "the server is shutting down", "server_error")
        if load.admitted >= max_queue:
            load.refused_full += 1
            raise APIError(429, f"the server is busy: {load.admitted} requests are waiting or running "
                           f"(memfactory serve --max-queue {max_queue}); retry after the Retry-After seconds",
                           "rate_limit_error", headers={"Retry-After": retry_after()})
        load.admitted += 1
        try:
            return await _answer(request, time.monotonic() + request_timeout_s)
        finally:
            load.admitted -= 1

    async def _answer(request: Request, deadline: float):
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > max_body_bytes:
                raise too_big(-max_body_bytes)
        try:
            data = json.loads(bytes(body))
        except (ValueError, RecursionError) as exc:
            raise APIError(400, f"the request body is not valid JSON: {str(exc)[:200]}") from None
        if not isinstance(data, dict):
            raise APIError(400, f"the request body must be a JSON object, not {type(data).__name__}")
        try:
            req = ChatRequest.model_validate(data)
        except ValidationError as exc:
            raise validation_message(list(exc.errors())) from None
        except RecursionError:
            raise APIError(400, "the request body is nested too deeply") from None
        if req.model != model_name:
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves {model_name!r}",
                           param="model")
        prompt, params = to_prompt_and_params(req, default_max_tokens)
        requested = req.max_tokens or req.max_completion_tokens
        which = "max_tokens" if req.max_tokens else "max_completion_tokens"
        prompt_tokens: int | None = None
        if count_tokens is not None:
            chars = sum(len(m["content"]) for m in prompt.messages) + len(prompt.assistant_prefix)
            if context and chars_per_token and chars > context * chars_per_token:
                raise APIError(400, f"the prompt is at least {math.ceil(chars / chars_per_token)} tokens "
                               f"({chars} characters); the model's context is {context} tokens", param="messages")
            try:
                ids = await asyncio.get_running_loop().run_in_executor(tokenize_pool, count_tokens, prompt)
            except MemFactoryError as exc:
                raise APIError(400, str(exc), param="messages") from None
            except Exception as exc:  # noqa: BLE001 - a chat template that cannot render these messages
                raise APIError(400, f"the chat template cannot render these messages: {type(exc).__name__}: "
                               f"{str(exc)[:200]}", param="messages") from None
            prompt_tokens = len(ids)
        if context:
            used = prompt_tokens or 0
            if prompt_tokens is not None and prompt_tokens >= context:
                raise APIError(400, f"the prompt is {prompt_tokens} tokens; the model's context is {context} tokens "
                               "(no room left for a response)", param="messages")
            if requested is not None and used + requested > context:
                what = f"{which} {requested} + the prompt's {used} tokens = {used + requested}"
                if prompt_tokens is None:
                    what = f"{which} {requested}"
                raise APIError(400, f"{what} exceeds the model's context of {context} tokens; "
                               f"ask for at most {context - used}", param=which)
            if requested is None:
                params.max_new_tokens = max(1, min(params.max_new_tokens, context - used))
        try:
            job = batcher.submit_job(prompt, params, deadline)
        except ServerShuttingDown:
            raise APIError(503, "the server is shutting down", "server_error") from None
        waiting = asyncio.wrap_future(job.future)
        try:
            while not waiting.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise APIError(504, f"the request did not finish within its deadline of {request_timeout_s:g} s "
                                   "(memfactory serve --request-timeout)", "timeout_error")
                await asyncio.wait({waiting}, timeout=min(remaining, 0.5))
                if not waiting.done() and await request.is_disconnected():
                    return error(499, "the client closed the request")  # nobody reads this
            try:
                gen: Generation = waiting.result()
            except ServerShuttingDown:
                raise APIError(503, "the server is shutting down", "server_error") from None
            except DeadlineExceeded:
                raise APIError(504, f"the request did not finish within its deadline of {request_timeout_s:g} s "
                               "(memfactory serve --request-timeout)", "timeout_error") from None
            except MemFactoryError as exc:
                raise APIError(400, str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - report, keep serving
                raise APIError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error") from None
        finally:
            if not waiting.done():
                job.abandoned = True  # lets the worker skip it, or interrupt a batch nobody waits for
                waiting.cancel()  # its result or error is nobody's business now
        return _reply(req, params, gen)

    def _reply(req: ChatRequest, params: SamplingParams, gen: Generation):
        text, stop_reason = apply_stop(gen.text, params.stop, req.include_stop_str_in_output)
        finish = "stop" if stop_reason is not None else ("length" if gen.finish_reason == "length" else "stop")
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        now = int(time.time())
        usage = _usage(gen)
        if not req.stream:
            body: dict[str, Any] = {
                "id": rid, "object": "chat.completion", "created": now, "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": finish, "stop_reason": stop_reason}],
            }
            if usage:
                body["usage"] = usage
            return JSONResponse(body)

        include_usage = bool((req.stream_options or {}).get("include_usage")) and usage is not None

        def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason, **extra}
            data = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_name, "choices": [choice]}
            return f"data: {json.dumps(data)}\n\n"

        def events() -> Iterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            for piece in _pieces(text):
                yield chunk({"content": piece})
            yield chunk({}, finish, stop_reason=stop_reason)
            if include_usage:
                data = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_name,
                        "choices": [], "usage": usage}
                yield f"data: {json.dumps(data)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


# --------------------------------------------------------------------------- running it


def make_server(app: FastAPI, **config: Any) -> Any:
    """A ``uvicorn.Server`` whose SIGTERM / Ctrl-C handler also stops the app's batcher at once:
    the running generation ends at its next token and every waiting request is answered 503, so
    uvicorn's graceful shutdown (at most ``SHUTDOWN_GRACE_S``) does not wait for generations."""
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            batcher = getattr(app.state, "batcher", None)
            if batcher is not None:
                batcher.begin_shutdown()  # sets an event only: safe in a signal handler
            super().handle_exit(sig, frame)

    config.setdefault("timeout_graceful_shutdown", SHUTDOWN_GRACE_S)
    return _Server(uvicorn.Config(app, **config))


class ServerThread:
    """Run an app with uvicorn on a background thread (tests, benchmarks, the web UI).

    Binds the socket itself first, so ``port=0`` picks a free port with no race.
    """

    def __init__(self, app: FastAPI, host: str = DEFAULT_HOST, port: int = 0, *, log_level: str = "warning") -> None:
        self.app = app
        # proto must say TCP: asyncio only turns Nagle off (TCP_NODELAY) on sockets whose proto is
        # IPPROTO_TCP, and without it every response waits ~40 ms for a delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self.server = make_server(app, log_level=log_level, access_log=False, lifespan="on")
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="memfactory-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:8000/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the uvicorn server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        batcher = getattr(self.app.state, "batcher", None)
        if batcher is not None:
            batcher.begin_shutdown()
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()

    def __enter__(self) -> ServerThread:  # noqa: PYI034 - py310 has no typing.Self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_backend(cfg_or_path: ModelConfig | str, checkpoint: str | None = None, backend: str = "hf") -> Backend:
    """A local backend (hf, or vllm) for a ModelConfig or a model path / built-in name, plus an optional checkpoint."""
    if isinstance(cfg_or_path, ModelConfig):
        cfg = cfg_or_path
        if checkpoint:
            cfg = with_checkpoint(cfg, checkpoint)
    else:
        cfg = ModelConfig(path=str(cfg_or_path), checkpoint=checkpoint, backend=backend)
    if cfg.backend not in ("hf", "vllm"):
        raise MemFactoryError(f"model.backend: serve loads a local model (backend hf or vllm), not {cfg.backend!r}")
    if cfg.checkpoint and not Path(cfg.checkpoint).is_dir():
        raise MemFactoryError(f"--checkpoint {cfg.checkpoint}: no such folder")
    return HFBackend.from_config(cfg) if cfg.backend == "hf" else build_backend(cfg)


def _check_port_free(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MemFactoryError(f"--host {host}: cannot resolve it ({exc})") from None
    family, type_, proto, _, address = infos[0]
    with socket.socket(family, type_, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise MemFactoryError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port") from None


def serve(
    cfg_or_path: ModelConfig | str = "tiny://qwen3-mini",
    host: str = DEFAULT_HOST,
    port: int = 8000,
    *,
    checkpoint: str | None = None,
    name: str | None = None,
    max_batch: int = 16,
    batch_window_ms: float = 5.0,
    api_key: str | None = None,
    context_length: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_queue: int = DEFAULT_MAX_QUEUE,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    backend_name: str = "hf",
) -> None:
    """Load the model and serve it until SIGTERM / Ctrl-C (blocking); see :func:`create_app` for the limits."""
    _check_port_free(host, port)  # before the (slow) model load
    backend = load_backend(cfg_or_path, checkpoint, backend_name)
    detected = model_context_length(backend)
    if context_length and detected and context_length > detected:
        raise MemFactoryError(f"--max-context {context_length}: the model's context is {detected} tokens; "
                              "give at most that")
    path = cfg_or_path.path if isinstance(cfg_or_path, ModelConfig) else str(cfg_or_path)
    model_name = name or (checkpoint and Path(checkpoint).name) or path
    app = create_app(backend, model_name, max_batch=max_batch, batch_window_ms=batch_window_ms, api_key=api_key,
                     context_length=context_length, max_body_bytes=max_body_bytes, max_queue=max_queue,
                     request_timeout_s=request_timeout_s)
    context = app.state.context_length
    print(f"serving {model_name!r} at http://{host}:{port}/v1 (OpenAI-compatible; Ctrl-C to stop; "
          f"context {context or 'unknown'} tokens, body <= {max_body_bytes} bytes, queue <= {max_queue}, "
          f"deadline {request_timeout_s:g} s)", flush=True)
    make_server(app, host=host, port=port, log_level="info").run()
