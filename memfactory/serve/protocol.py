"""OpenAI's request shapes for ``/v1/chat/completions`` and ``/v1/completions``, their mapping onto
MemFactory's prompts + SamplingParams, and the server's limits. No web framework here: the app and
the CLI both read it. Every refusal is an :class:`APIError` (400) naming the field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from memfactory.backends.base import Backend, ServingFeatures
from memfactory.types import ChatPrompt, SamplingParams

DEFAULT_MAX_TOKENS = 256  # chat, without max_tokens (cut to what the context leaves)
COMPLETION_MAX_TOKENS = 16  # /v1/completions' own default, as OpenAI's and vLLM's
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024  # a 128k-token prompt is ~0.5 MB of text; JSON escaping adds some
DEFAULT_MAX_QUEUE = 256  # requests admitted at once (waiting + generating)
DEFAULT_REQUEST_TIMEOUT_S = 600.0
DEFAULT_MAX_N = 16  # choices per prompt
DEFAULT_MAX_LOGPROBS = 20  # alternatives per token (OpenAI's and vLLM's cap)
MAX_CHOICES = 256  # prompts x n in one /v1/completions request
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1000


@dataclass(frozen=True)
class Limits:
    """The per-request limits a server enforces (``memfactory serve --max-n / --max-logprobs``)."""

    max_n: int = DEFAULT_MAX_N
    max_logprobs: int = DEFAULT_MAX_LOGPROBS
    default_max_tokens: int = DEFAULT_MAX_TOKENS


class APIError(Exception):
    """An error answered in OpenAI's ``{"error": {...}}`` shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param
        self.headers = headers


# --------------------------------------------------------------------------- request schema


class _Sampling(BaseModel):
    """The fields both endpoints share; everything else an OpenAI client sends is accepted and ignored."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    model: str
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1, le=1_048_576)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # what torch.manual_seed takes
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    include_stop_str_in_output: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    # A string, or OpenAI's list of content parts ([{"type": "text", "text": ...}]).
    content: str | list[dict[str, Any]] | None = ""


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    continue_final_message: bool = False
    add_generation_prompt: bool | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)


class CompletionRequest(_Sampling):
    # A string, a list of strings, token ids, or a list of token-id lists: read by parse_prompts,
    # which names what is wrong more plainly than a union's validation errors would.
    prompt: Any
    max_tokens: int | None = Field(COMPLETION_MAX_TOKENS, ge=1)
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False
    add_special_tokens: bool = True  # vLLM's extension: the tokenizer's BOS etc. before a text prompt
    suffix: str | None = None
    best_of: int | None = None


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


def _check_n(n: int, limits: Limits) -> None:
    if n < 1:
        raise APIError(400, f"n: must be at least 1, got {n}", param="n")
    if n > limits.max_n:
        raise APIError(400, f"n: at most {limits.max_n} choices per prompt on this server "
                       f"(memfactory serve --max-n), got {n}", param="n")


def _check_logprobs(top: int, prompt: bool, features: ServingFeatures, limits: Limits, param: str) -> None:
    """A log-prob request this backend and server can answer in full, or a 400 naming ``param``."""
    if not features.logprobs:
        raise APIError(400, f"{param}: this server's backend returns no token log-probs (a text-only "
                       "backend); leave it out", param=param)
    if top > limits.max_logprobs:
        raise APIError(400, f"{param}: at most {limits.max_logprobs} alternatives per token on this server "
                       f"(memfactory serve --max-logprobs), got {top}", param=param)
    if top > features.top_logprobs:
        raise APIError(400, f"{param}: this server's backend returns at most {features.top_logprobs} "
                       f"alternatives per token, got {top}", param=param)
    if prompt and not features.prompt_logprobs:
        raise APIError(400, "echo: this server's backend returns no prompt log-probs; send echo with "
                       "logprobs null", param="echo")


def _params(req: _Sampling, max_tokens: int, top: int = 0, prompt_logprobs: bool = False) -> SamplingParams:
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP_STRINGS:
        raise APIError(400, f"stop: at most {MAX_STOP_STRINGS} strings, got {len(stop)}", param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise APIError(400, f"stop: each string may be at most {MAX_STOP_CHARS} characters", param="stop")
    return SamplingParams(max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                          top_k=max(0, req.top_k), stop=[s for s in stop if s], seed=req.seed,
                          top_logprobs=top, prompt_logprobs=prompt_logprobs)


def to_prompt_and_params(req: ChatRequest, limits: Limits,
                         features: ServingFeatures) -> tuple[ChatPrompt, SamplingParams]:
    """Map a chat request onto MemFactory's ChatPrompt + SamplingParams (400 on what we can't do)."""
    _check_n(req.n, limits)
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs: needs logprobs: true", param="top_logprobs")
    if req.logprobs:
        _check_logprobs(req.top_logprobs or 0, False, features, limits, "top_logprobs" if req.top_logprobs else "logprobs")
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
    max_tokens = req.max_tokens or req.max_completion_tokens or limits.default_max_tokens
    params = _params(req, max_tokens, req.top_logprobs or 0)
    return ChatPrompt(messages=messages, assistant_prefix=prefix), params


def completion_params(req: CompletionRequest, limits: Limits, features: ServingFeatures) -> SamplingParams:
    """SamplingParams of a completions request (400 on what we can't do)."""
    _check_n(req.n, limits)
    if req.suffix:
        raise APIError(400, "suffix: not supported (no fill-in-the-middle)", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise APIError(400, f"best_of: only best_of = n is supported, got best_of {req.best_of} with n {req.n}",
                       param="best_of")
    if req.logprobs is not None:
        _check_logprobs(req.logprobs, req.echo, features, limits, "logprobs")
    return _params(req, req.max_tokens or COMPLETION_MAX_TOKENS, req.logprobs or 0,
                   prompt_logprobs=req.echo and req.logprobs is not None)


def parse_prompts(raw: Any, vocab: int | None) -> list[str | list[int]]:
    """A completions ``prompt`` as a list of prompts, each a string or token ids (all one kind);
    token ids are checked against the vocabulary (``vocab`` ids, when known)."""
    if isinstance(raw, str):
        prompts: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(_is_id(t) for t in raw):
        prompts = [raw]
    elif isinstance(raw, list) and raw:
        prompts = raw
    elif isinstance(raw, list):
        raise APIError(400, "prompt: an empty list; send a string, a list of strings, token ids or lists of "
                       "token ids", param="prompt")
    else:
        raise APIError(400, f"prompt: a string, a list of strings, token ids or lists of token ids, not "
                       f"{type(raw).__name__}", param="prompt")
    texts = all(isinstance(p, str) for p in prompts)
    if not texts and not all(isinstance(p, list) and all(_is_id(t) for t in p) for p in prompts):
        raise APIError(400, "prompt: a list mixing strings and token ids (or holding other values); send "
                       "strings, one list of token ids, or lists of token ids", param="prompt")
    for i, p in enumerate(prompts):
        where = f"prompt[{i}]" if len(prompts) > 1 else "prompt"
        if not p:
            raise APIError(400, f"{where}: empty; a prompt needs at least one token", param="prompt")
        bad = next((t for t in p if not texts and (t < 0 or (vocab is not None and t >= vocab))), None)
        if bad is not None:
            raise APIError(400, f"{where}: token id {bad} is outside the vocabulary (0 to "
                           f"{(vocab or 1) - 1})", param="prompt")
    return prompts


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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


def validation_message(errors: list[dict[str, Any]]) -> APIError:
    """A pydantic validation error as a 400 naming the first failing field."""
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return APIError(400, f"{where}: {first.get('msg', 'invalid request')}", param=where or None)


# --------------------------------------------------------------------------- the backend's limits


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


def max_chars_per_token(tokenizer: Any) -> int | None:
    """The longest vocabulary entry in characters. A byte-level BPE or SentencePiece token covers at
    most that many characters of text, so ``characters / this`` is a lower bound on the token count:
    a prompt can be proved too long without tokenising it."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - no vocabulary to read: tokenise everything
        return None
    return max((len(token) for token in vocab), default=0) or None


def vocab_size(backend: Backend) -> int | None:
    """How many token ids a prompt may use: those the tokenizer can name and the model can embed."""
    sizes = []
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is not None:
        sizes.append(len(tokenizer))
    model = getattr(backend, "model", None)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if isinstance(rows, int):
        sizes.append(rows)
    return min(sizes) if sizes else None
