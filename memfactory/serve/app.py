"""The FastAPI app: an API-key middleware and the routes, all reading one :class:`ServerState`."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from memfactory.backends.base import Backend
from memfactory.errors import MemFactoryError
from memfactory.exposure import secret_equal
from memfactory.serve.batcher import Batcher, DeadlineExceeded, Job, ServerShuttingDown
from memfactory.serve.protocol import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_TOKENS,
    DEFAULT_REQUEST_TIMEOUT_S,
    APIError,
    ChatRequest,
    apply_stop,
    max_chars_per_token,
    model_context_length,
    text_pieces,
    to_prompt_and_params,
    usage,
    validation_message,
)
from memfactory.types import ChatPrompt, Generation, SamplingParams


@dataclass
class Load:
    admitted: int = 0  # requests between admission and answer (waiting, tokenising or generating)
    refused_full: int = 0  # 429s


@dataclass
class ServerState:
    """Everything the routes share: the model, its batcher, the limits and the load counters."""

    backend: Backend
    model_name: str
    batcher: Batcher
    context: int | None  # the context requests are checked against, in tokens (None: unknown)
    max_body_bytes: int
    max_queue: int
    request_timeout_s: float
    default_max_tokens: int
    api_key: str | None
    # The prompt's token ids (None: a backend that cannot count them), and the longest vocabulary
    # entry in characters, to refuse a prompt its characters prove too long without tokenising it.
    count_tokens: Callable[[ChatPrompt], list[int]] | None = None
    chars_per_token: int | None = None
    # Tokenising runs off the event loop (so /v1/models and /health keep answering) on few threads.
    tokenize_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="memfactory-tokenize"))
    load: Load = field(default_factory=Load)
    created: int = field(default_factory=lambda: int(time.time()))

    def retry_after(self) -> str:
        waves = self.load.admitted / max(1, self.batcher.max_batch)
        return str(int(min(60, max(1, math.ceil((self.batcher.batch_seconds or 1.0) * waves)))))

    def too_big(self, size: int) -> APIError:
        return APIError(413, f"the request body is {'over ' if size < 0 else ''}{abs(size)} bytes; this server "
                        f"takes at most {self.max_body_bytes} (memfactory serve --max-body-bytes)")

    def past_deadline(self) -> APIError:
        return APIError(504, f"the request did not finish within its deadline of {self.request_timeout_s:g} s "
                        "(memfactory serve --request-timeout)", "timeout_error")


def _state(request: Request) -> ServerState:
    return request.app.state.server


def error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": status}},
                        status_code=status, headers=headers)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return error(exc.status, exc.message, exc.type, exc.param, exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    api = validation_message(list(exc.errors()))
    return error(api.status, api.message, api.type, api.param)


# --------------------------------------------------------------------------- auth


class AuthMiddleware:
    """The API key check, on every route (``/docs``, ``/openapi.json`` and unknown paths too) but
    ``/health``, which without the key says only whether the server is up (a load balancer's
    liveness probe needs no secret; the model name and load figures are for key holders).
    The key is compared in constant time. Plain ASGI (not ``@app.middleware``, whose wrapped
    receive hides a client's disconnect)."""

    def __init__(self, inner: Any, api_key: str | None) -> None:
        self.inner = inner
        self.api_key = api_key
        self.expected = (api_key or "").encode("utf-8")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.api_key and scope["type"] in ("http", "websocket"):
            scope.setdefault("state", {})["authorized"] = self.authorized(scope)
            if not scope["state"]["authorized"] and scope["path"] != "/health":
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await error(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                            "authentication_error", headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.inner(scope, receive, send)

    def authorized(self, scope: dict[str, Any]) -> bool:
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        scheme, _, token = given.partition(b" ")
        return bool(scheme.lower() == b"bearer") & secret_equal(token.strip(), self.expected)


# --------------------------------------------------------------------------- routes


async def health(request: Request) -> dict[str, Any]:
    state = _state(request)
    status = "stopping" if state.batcher.stopping else "ok"
    if state.api_key and not request.state.authorized:
        return {"status": status}
    return {"status": status, "model": state.model_name,
            "batching": state.batcher.stats.as_dict(),
            "load": {"admitted": state.load.admitted, "max_queue": state.max_queue,
                     "refused_full": state.load.refused_full},
            "limits": {"context_length": state.context, "max_body_bytes": state.max_body_bytes,
                       "request_timeout_s": state.request_timeout_s}}


async def models(request: Request) -> dict[str, Any]:
    state = _state(request)
    data: dict[str, Any] = {"id": state.model_name, "object": "model", "created": state.created,
                            "owned_by": "memfactory"}
    if state.context:
        data["max_model_len"] = state.context  # vLLM's name for it
    return {"object": "list", "data": [data]}


async def chat(request: Request):
    state = _state(request)
    length = request.headers.get("content-length")
    if length is not None:
        try:
            size = int(length)
        except ValueError:
            raise APIError(400, f"Content-Length {length[:40]!r} is not a number") from None
        if size > state.max_body_bytes:
            raise state.too_big(size)
    if state.batcher.stopping:
        raise APIError(503, "the server is shutting down", "server_error")
    if state.load.admitted >= state.max_queue:
        state.load.refused_full += 1
        raise APIError(429, f"the server is busy: {state.load.admitted} requests are waiting or running "
                       f"(memfactory serve --max-queue {state.max_queue}); retry after the Retry-After seconds",
                       "rate_limit_error", headers={"Retry-After": state.retry_after()})
    state.load.admitted += 1
    try:
        return await _answer(state, request, time.monotonic() + state.request_timeout_s)
    finally:
        state.load.admitted -= 1


async def _answer(state: ServerState, request: Request, deadline: float):
    req = await _read_chat_request(state, request)
    prompt, params = to_prompt_and_params(req, state.default_max_tokens)
    await _fit_context(state, req, prompt, params)
    try:
        job = state.batcher.submit_job(prompt, params, deadline)
    except ServerShuttingDown:
        raise APIError(503, "the server is shutting down", "server_error") from None
    gen = await _wait(state, request, job, deadline)
    if gen is None:
        return error(499, "the client closed the request")  # nobody reads this
    return _reply(state, req, params, gen)


async def _read_chat_request(state: ServerState, request: Request) -> ChatRequest:
    """The body, read up to the size limit, parsed and validated (400 naming the field otherwise)."""
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > state.max_body_bytes:
            raise state.too_big(-state.max_body_bytes)
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
    if req.model != state.model_name:
        raise APIError(404, f"the model {req.model!r} does not exist; this server serves {state.model_name!r}",
                       param="model")
    return req


async def _fit_context(state: ServerState, req: ChatRequest, prompt: ChatPrompt, params: SamplingParams) -> None:
    """Refuse a prompt (or prompt + max_tokens) that does not fit the context; without max_tokens,
    cut the default to what the context leaves."""
    requested = req.max_tokens or req.max_completion_tokens
    which = "max_tokens" if req.max_tokens else "max_completion_tokens"
    context = state.context
    prompt_tokens: int | None = None
    if state.count_tokens is not None:
        chars = sum(len(m["content"]) for m in prompt.messages) + len(prompt.assistant_prefix)
        if context and state.chars_per_token and chars > context * state.chars_per_token:
            raise APIError(400, f"the prompt is at least {math.ceil(chars / state.chars_per_token)} tokens "
                           f"({chars} characters); the model's context is {context} tokens", param="messages")
        try:
            ids = await asyncio.get_running_loop().run_in_executor(state.tokenize_pool, state.count_tokens, prompt)
        except MemFactoryError as exc:
            raise APIError(400, str(exc), param="messages") from None
        except Exception as exc:  # noqa: BLE001 - a chat template that cannot render these messages
            raise APIError(400, f"the chat template cannot render these messages: {type(exc).__name__}: "
                           f"{str(exc)[:200]}", param="messages") from None
        prompt_tokens = len(ids)
    if not context:
        return
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


async def _wait(state: ServerState, request: Request, job: Job, deadline: float) -> Generation | None:
    """The job's generation; None when the client went away first. Errors become OpenAI errors."""
    waiting = asyncio.wrap_future(job.future)
    try:
        while not waiting.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise state.past_deadline()
            await asyncio.wait({waiting}, timeout=min(remaining, 0.5))
            if not waiting.done() and await request.is_disconnected():
                return None
        try:
            return waiting.result()
        except ServerShuttingDown:
            raise APIError(503, "the server is shutting down", "server_error") from None
        except DeadlineExceeded:
            raise state.past_deadline() from None
        except MemFactoryError as exc:
            raise APIError(400, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            raise APIError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error") from None
    finally:
        if not waiting.done():
            job.abandoned = True  # lets the worker skip it, or interrupt a batch nobody waits for
            waiting.cancel()  # its result or error is nobody's business now


def _reply(state: ServerState, req: ChatRequest, params: SamplingParams, gen: Generation):
    text, stop_reason = apply_stop(gen.text, params.stop, req.include_stop_str_in_output)
    finish = "stop" if stop_reason is not None else ("length" if gen.finish_reason == "length" else "stop")
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    now = int(time.time())
    counts = usage(gen)
    if not req.stream:
        body: dict[str, Any] = {
            "id": rid, "object": "chat.completion", "created": now, "model": state.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish, "stop_reason": stop_reason}],
        }
        if counts:
            body["usage"] = counts
        return JSONResponse(body)

    include_usage = bool((req.stream_options or {}).get("include_usage")) and counts is not None

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason, **extra}
        data = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": state.model_name,
                "choices": [choice]}
        return f"data: {json.dumps(data)}\n\n"

    def events() -> Iterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        for piece in text_pieces(text):
            yield chunk({"content": piece})
        yield chunk({}, finish, stop_reason=stop_reason)
        if include_usage:
            data = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": state.model_name,
                    "choices": [], "usage": counts}
            yield f"data: {json.dumps(data)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# --------------------------------------------------------------------------- the app


@asynccontextmanager
async def _lifespan(app: FastAPI):
    yield
    state: ServerState = app.state.server
    state.batcher.stop()
    state.tokenize_pool.shutdown(wait=False, cancel_futures=True)


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
    """The FastAPI app; ``app.state.server`` is its :class:`ServerState` (``.batcher.stats`` counts
    requests and batch sizes).

    ``api_key``: when set, every request but ``/health`` must carry ``Authorization: Bearer <key>``
    (compared in constant time; 401 otherwise), and ``/health`` without it answers only its status.
    ``context_length``: the context requests are checked against (default and upper limit: the
    model's own, see :func:`model_context_length`). ``max_body_bytes``, ``max_queue`` and
    ``request_timeout_s`` bound a request's body, the requests admitted at once, and each one's wait.
    """
    known = [n for n in (context_length, model_context_length(backend)) if n]
    count_tokens = getattr(backend, "render_prompt", None)
    state = ServerState(
        backend=backend, model_name=model_name,
        batcher=Batcher(backend, max_batch=max_batch, window_s=batch_window_ms / 1000.0),
        context=min(known) if known else None, max_body_bytes=max_body_bytes, max_queue=max(1, max_queue),
        request_timeout_s=request_timeout_s, default_max_tokens=default_max_tokens, api_key=api_key,
        count_tokens=count_tokens,
        chars_per_token=max_chars_per_token(backend.tokenizer) if count_tokens and hasattr(backend, "tokenizer")
        else None,
    )
    app = FastAPI(title="MemFactory OpenAI-compatible server", lifespan=_lifespan)
    app.state.server = state
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(AuthMiddleware, api_key=api_key)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", chat, methods=["POST"])
    return app
