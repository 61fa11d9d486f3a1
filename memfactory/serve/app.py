"""The FastAPI app: an API-key middleware and the routes, all reading one :class:`ServerState`."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from memfactory.backends.base import Backend, ServingFeatures, serving_features
from memfactory.errors import MemFactoryError
from memfactory.exposure import secret_equal
from memfactory.serve.batcher import Batcher, DeadlineExceeded, ServerShuttingDown
from memfactory.serve.protocol import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_LOGPROBS,
    DEFAULT_MAX_N,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_TOKENS,
    DEFAULT_REQUEST_TIMEOUT_S,
    MAX_CHOICES,
    APIError,
    ChatRequest,
    CompletionRequest,
    Limits,
    completion_params,
    max_chars_per_token,
    model_context_length,
    parse_prompts,
    to_prompt_and_params,
    validation_message,
    vocab_size,
)
from memfactory.serve.responses import (
    Choice,
    TokenText,
    chat_logprobs,
    chat_reply,
    completion_logprobs,
    completion_reply,
    finished,
    usage,
)
from memfactory.types import ChatPrompt, Generation, Prompt, SamplingParams, TokenPrompt


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
    limits: Limits
    api_key: str | None
    features: ServingFeatures = field(default_factory=ServingFeatures)
    tokens: TokenText | None = None  # names token ids in log-probs and echoes token prompts
    vocab: int | None = None  # token ids a completions prompt may use
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
                       "request_timeout_s": state.request_timeout_s, "max_n": state.limits.max_n,
                       "max_logprobs": min(state.limits.max_logprobs, state.features.top_logprobs)}}


async def models(request: Request) -> dict[str, Any]:
    state = _state(request)
    data: dict[str, Any] = {"id": state.model_name, "object": "model", "created": state.created,
                            "owned_by": "memfactory"}
    if state.context:
        data["max_model_len"] = state.context  # vLLM's name for it
    return {"object": "list", "data": [data]}


async def chat(request: Request) -> Response:
    return await _admitted(request, _chat)


async def completions(request: Request) -> Response:
    return await _admitted(request, _completions)


Handler = Callable[["ServerState", Request, float], Awaitable[Response]]
Body = TypeVar("Body", ChatRequest, CompletionRequest)


async def _admitted(request: Request, handler: Handler) -> Response:
    """The limits every generating route shares: body size, shutdown, the queue, the deadline."""
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
        return await handler(state, request, time.monotonic() + state.request_timeout_s)
    finally:
        state.load.admitted -= 1


async def _chat(state: ServerState, request: Request, deadline: float) -> Response:
    req = await _read_request(state, request, ChatRequest)
    _check_model(state, req.model)
    prompt, params = to_prompt_and_params(req, state.limits, state.features)
    prompt_tokens = await _count_chat_tokens(state, prompt)
    requested = req.max_tokens or req.max_completion_tokens
    _fit_context(state, [prompt_tokens], requested, "max_tokens" if req.max_tokens else "max_completion_tokens",
                 params, "messages")
    groups = await _generate(state, request, [prompt], params, req.n, deadline)
    if groups is None:
        return error(499, "the client closed the request")  # nobody reads this
    choices = []
    for index, gen in enumerate(groups[0]):
        text, finish, stop_reason = finished(gen, params, req.include_stop_str_in_output)
        logprobs = chat_logprobs(gen, req.top_logprobs or 0, state.tokens) if req.logprobs and state.tokens else None
        choices.append(Choice(index, text, finish, stop_reason, logprobs))
    include_usage = bool((req.stream_options or {}).get("include_usage"))
    return chat_reply(state.model_name, choices, usage(groups), stream=req.stream, include_usage=include_usage)


async def _completions(state: ServerState, request: Request, deadline: float) -> Response:
    req = await _read_request(state, request, CompletionRequest)
    tokens = state.tokens
    if not state.features.token_prompts or tokens is None:
        raise APIError(400, "prompt: this server's backend takes chat prompts only; use /v1/chat/completions",
                       param="prompt")
    _check_model(state, req.model)
    params = completion_params(req, state.limits, state.features)
    raw = parse_prompts(req.prompt, state.vocab)
    if len(raw) * req.n > MAX_CHOICES:
        raise APIError(400, f"prompt: {len(raw)} prompts x n {req.n} = {len(raw) * req.n} choices; at most "
                       f"{MAX_CHOICES} per request", param="prompt")
    prompts = [TokenPrompt(await _tokenize(state, p, req.add_special_tokens)) if isinstance(p, str)
               else TokenPrompt(list(p)) for p in raw]
    _fit_context(state, [len(p.ids) for p in prompts], req.max_tokens, "max_tokens", params, "prompt")
    groups = await _generate(state, request, prompts, params, req.n, deadline)
    if groups is None:
        return error(499, "the client closed the request")
    choices = []
    for i, (source, group) in enumerate(zip(raw, groups)):
        echoed = (source if isinstance(source, str) else tokens.tokenizer.decode(source)) if req.echo else ""
        for j, gen in enumerate(group):
            text, finish, stop_reason = finished(gen, params, req.include_stop_str_in_output)
            logprobs = None if req.logprobs is None else completion_logprobs(gen, req.logprobs, tokens, req.echo)
            choices.append(Choice(i * req.n + j, echoed + text, finish, stop_reason, logprobs))
    include_usage = bool((req.stream_options or {}).get("include_usage"))
    return completion_reply(state.model_name, choices, usage(groups), stream=req.stream, include_usage=include_usage)


async def _read_request(state: ServerState, request: Request, schema: type[Body]) -> Body:
    """The body, read up to the size limit, parsed and validated against ``schema`` (400 naming the
    field otherwise)."""
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
        return schema.model_validate(data)
    except ValidationError as exc:
        raise validation_message(list(exc.errors())) from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply") from None


def _check_model(state: ServerState, model: str) -> None:
    if model != state.model_name:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {state.model_name!r}",
                       param="model")


async def _count_chat_tokens(state: ServerState, prompt: ChatPrompt) -> int | None:
    """The rendered prompt's length in tokens (None: a backend that cannot count them); a prompt whose
    characters alone prove it too long is refused without tokenising it."""
    if state.count_tokens is None:
        return None
    chars = sum(len(m["content"]) for m in prompt.messages) + len(prompt.assistant_prefix)
    context = state.context
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
    return len(ids)


async def _tokenize(state: ServerState, text: str, special: bool) -> list[int]:
    context, per_token = state.context, state.chars_per_token
    if context and per_token and len(text) > context * per_token:
        raise APIError(400, f"the prompt is at least {math.ceil(len(text) / per_token)} tokens "
                       f"({len(text)} characters); the model's context is {context} tokens", param="prompt")
    tokenizer = state.tokens.tokenizer if state.tokens else None
    ids = await asyncio.get_running_loop().run_in_executor(
        state.tokenize_pool, lambda: tokenizer(text, add_special_tokens=special)["input_ids"])
    if not ids:
        raise APIError(400, "prompt: the text is no tokens at all; a prompt needs at least one", param="prompt")
    return ids


def _fit_context(state: ServerState, prompt_tokens: list[int | None], requested: int | None, which: str,
                 params: SamplingParams, prompt_param: str) -> None:
    """Refuse a prompt (or prompt + max_tokens) that does not fit the context; without max_tokens,
    cut the default to what the context leaves (for the longest prompt)."""
    context = state.context
    if not context:
        return
    known = [n for n in prompt_tokens if n is not None]
    longest = max(known) if known else None
    used = longest or 0
    if longest is not None and longest >= context:
        raise APIError(400, f"the prompt is {longest} tokens; the model's context is {context} tokens "
                       "(no room left for a response)", param=prompt_param)
    if requested is not None and used + requested > context:
        what = f"{which} {requested} + the prompt's {used} tokens = {used + requested}"
        if longest is None:
            what = f"{which} {requested}"
        raise APIError(400, f"{what} exceeds the model's context of {context} tokens; "
                       f"ask for at most {context - used}", param=which)
    if requested is None:
        params.max_new_tokens = max(1, min(params.max_new_tokens, context - used))


async def _generate(state: ServerState, request: Request, prompts: list[Prompt], params: SamplingParams, n: int,
                    deadline: float) -> list[list[Generation]] | None:
    """``n`` generations of each prompt (one batcher job per prompt); None when the client went away
    first. Errors become OpenAI errors."""
    try:
        jobs = [state.batcher.submit_job(p, params, deadline, n) for p in prompts]
    except ServerShuttingDown:
        raise APIError(503, "the server is shutting down", "server_error") from None
    waiting = [asyncio.wrap_future(job.future) for job in jobs]
    try:
        while not all(w.done() for w in waiting):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise state.past_deadline()
            await asyncio.wait(waiting, timeout=min(remaining, 0.5), return_when=asyncio.FIRST_EXCEPTION)
            if any(w.done() and w.exception() for w in waiting):
                break
            if not all(w.done() for w in waiting) and await request.is_disconnected():
                return None
        try:
            return [w.result() for w in waiting]
        except ServerShuttingDown:
            raise APIError(503, "the server is shutting down", "server_error") from None
        except DeadlineExceeded:
            raise state.past_deadline() from None
        except MemFactoryError as exc:
            raise APIError(400, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            raise APIError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error") from None
    finally:
        for job, w in zip(jobs, waiting):
            if not w.done():
                job.abandoned = True  # lets the worker skip it, or interrupt a batch nobody waits for
                w.cancel()  # its result or error is nobody's business now


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
    max_n: int = DEFAULT_MAX_N,
    max_logprobs: int = DEFAULT_MAX_LOGPROBS,
) -> FastAPI:
    """The FastAPI app; ``app.state.server`` is its :class:`ServerState` (``.batcher.stats`` counts
    requests and batch sizes).

    ``api_key``: when set, every request but ``/health`` must carry ``Authorization: Bearer <key>``
    (compared in constant time; 401 otherwise), and ``/health`` without it answers only its status.
    ``context_length``: the context requests are checked against (default and upper limit: the
    model's own, see :func:`model_context_length`). ``max_body_bytes``, ``max_queue`` and
    ``request_timeout_s`` bound a request's body, the requests admitted at once, and each one's wait;
    ``max_n`` the choices per prompt, ``max_logprobs`` the alternatives per token.
    """
    known = [n for n in (context_length, model_context_length(backend)) if n]
    count_tokens = getattr(backend, "render_prompt", None)
    tokenizer = getattr(backend, "tokenizer", None)
    state = ServerState(
        backend=backend, model_name=model_name,
        batcher=Batcher(backend, max_batch=max_batch, window_s=batch_window_ms / 1000.0),
        context=min(known) if known else None, max_body_bytes=max_body_bytes, max_queue=max(1, max_queue),
        request_timeout_s=request_timeout_s, api_key=api_key,
        limits=Limits(max_n=max(1, max_n), max_logprobs=max(0, max_logprobs), default_max_tokens=default_max_tokens),
        features=serving_features(backend), tokens=TokenText(tokenizer) if tokenizer is not None else None,
        vocab=vocab_size(backend), count_tokens=count_tokens,
        chars_per_token=max_chars_per_token(tokenizer) if count_tokens and tokenizer is not None else None,
    )
    app = FastAPI(title="MemFactory OpenAI-compatible server", lifespan=_lifespan)
    app.state.server = state
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(AuthMiddleware, api_key=api_key)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", chat, methods=["POST"])
    app.add_api_route("/v1/completions", completions, methods=["POST"])
    return app
