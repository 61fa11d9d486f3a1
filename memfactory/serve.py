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
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from memfactory.backends.base import Backend
from memfactory.config import ModelConfig
from memfactory.errors import MemFactoryError
from memfactory.types import ChatPrompt, Generation, SamplingParams

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_TOKENS = 256


# --------------------------------------------------------------------------- request schema


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    # A string, or OpenAI's list of content parts ([{"type": "text", "text": ...}]).
    content: str | list[dict[str, Any]] | None = ""


class ChatRequest(BaseModel):
    """The fields we honour; everything else an OpenAI client sends is accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = -1
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    continue_final_message: bool = False
    add_generation_prompt: bool | None = None
    include_stop_str_in_output: bool = False


class APIError(Exception):
    """An error answered in OpenAI's ``{"error": {...}}`` shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param


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


@dataclass
class _Job:
    prompt: ChatPrompt
    params: SamplingParams
    future: Future = field(default_factory=Future)


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

    def submit(self, prompt: ChatPrompt, params: SamplingParams) -> Future:
        self._ensure_started()
        job = _Job(prompt, params)
        self._queue.put(job)
        return job.future

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=30)

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="memfactory-batcher", daemon=True)
                self._thread.start()

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
        while True:
            first = self._queue.get()
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

    def _run(self, group: list[_Job]) -> None:
        live = [j for j in group if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        with self._stats_lock:
            self.stats.requests += len(live)
            self.stats.batches += 1
            self.stats.max_batch = max(self.stats.max_batch, len(live))
            self.stats.sizes[len(live)] = self.stats.sizes.get(len(live), 0) + 1
        try:
            outputs = self.backend.generate([j.prompt for j in live], live[0].params)
            if len(outputs) != len(live):
                raise RuntimeError(f"backend returned {len(outputs)} generations for {len(live)} prompts")
        except BaseException as exc:  # noqa: BLE001 - every waiting request must hear about it
            for job in live:
                job.future.set_exception(exc)
            return
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


def create_app(
    backend: Backend,
    model_name: str,
    *,
    max_batch: int = 16,
    batch_window_ms: float = 5.0,
    api_key: str | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
) -> FastAPI:
    """The FastAPI app; ``app.state.batcher.stats`` counts requests and batch sizes.

    ``api_key``: when set, requests must carry ``Authorization: Bearer <key>``.
    """
    batcher = Batcher(backend, max_batch=max_batch, window_s=batch_window_ms / 1000.0)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.stop()

    app = FastAPI(title="MemFactory OpenAI-compatible server", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.model_name = model_name
    created = int(time.time())

    def error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": status}}, status_code=status)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error(exc.status, exc.message, exc.type, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(400, f"{where}: {first.get('msg', 'invalid request')}", param=where or None)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if (api_key and request.url.path.startswith("/v1/")
                and request.headers.get("authorization", "") != f"Bearer {api_key}"):
            return error(401, "invalid or missing API key", "authentication_error")
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "batching": batcher.stats.as_dict()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "memfactory"}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        if req.model != model_name:
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves {model_name!r}",
                           param="model")
        prompt, params = to_prompt_and_params(req, default_max_tokens)
        try:
            gen: Generation = await asyncio.wrap_future(batcher.submit(prompt, params))
        except MemFactoryError as exc:
            raise APIError(400, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            raise APIError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error") from None
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


class ServerThread:
    """Run an app with uvicorn on a background thread (tests, benchmarks, the web UI).

    Binds the socket itself first, so ``port=0`` picks a free port with no race.
    """

    def __init__(self, app: FastAPI, host: str = DEFAULT_HOST, port: int = 0, *, log_level: str = "warning") -> None:
        import uvicorn

        self.app = app
        # proto must say TCP: asyncio only turns Nagle off (TCP_NODELAY) on sockets whose proto is
        # IPPROTO_TCP, and without it every response waits ~40 ms for a delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
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
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()

    def __enter__(self) -> ServerThread:  # noqa: PYI034 - py310 has no typing.Self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_backend(cfg_or_path: ModelConfig | str, checkpoint: str | None = None) -> Backend:
    """A local HF backend for a ModelConfig, a model path / built-in name, plus an optional checkpoint."""
    from memfactory.backends.hf import HFBackend

    if isinstance(cfg_or_path, ModelConfig):
        cfg = cfg_or_path
        if checkpoint:
            cfg = cfg.model_copy(update={"checkpoint": checkpoint})
    else:
        cfg = ModelConfig(path=str(cfg_or_path), checkpoint=checkpoint)
    if cfg.backend != "hf":
        raise MemFactoryError(f"model.backend: serve loads a local model (backend hf), not {cfg.backend!r}")
    if cfg.checkpoint and not Path(cfg.checkpoint).is_dir():
        raise MemFactoryError(f"--checkpoint {cfg.checkpoint}: no such folder")
    return HFBackend.from_config(cfg)


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
) -> None:
    """Load the model and serve it until interrupted (blocking)."""
    import uvicorn

    _check_port_free(host, port)  # before the (slow) model load
    backend = load_backend(cfg_or_path, checkpoint)
    path = cfg_or_path.path if isinstance(cfg_or_path, ModelConfig) else str(cfg_or_path)
    model_name = name or (checkpoint and Path(checkpoint).name) or path
    app = create_app(backend, model_name, max_batch=max_batch, batch_window_ms=batch_window_ms, api_key=api_key)
    print(f"serving {model_name!r} at http://{host}:{port}/v1 (OpenAI-compatible; Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
