"""OpenAI's chat request and response shapes, their mapping onto MemFactory's ChatPrompt +
SamplingParams, and the server's limits. No web framework here: the app and the CLI both read it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from memfactory.backends.base import Backend
from memfactory.types import ChatPrompt, Generation, SamplingParams

DEFAULT_MAX_TOKENS = 256
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024  # a 128k-token prompt is ~0.5 MB of text; JSON escaping adds some
DEFAULT_MAX_QUEUE = 256  # requests admitted at once (waiting + generating)
DEFAULT_REQUEST_TIMEOUT_S = 600.0
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


def validation_message(errors: list[dict[str, Any]]) -> APIError:
    """A pydantic validation error as a 400 naming the first failing field."""
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return APIError(400, f"{where}: {first.get('msg', 'invalid request')}", param=where or None)


# --------------------------------------------------------------------------- responses and limits


def usage(gen: Generation) -> dict[str, int] | None:
    """OpenAI's ``usage`` object for one generation, or None when the backend gives no token ids."""
    if gen.prompt_ids is None or gen.response_ids is None:
        return None  # a text-only backend: no honest token counts
    p, c = len(gen.prompt_ids), len(gen.response_ids)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def text_pieces(text: str) -> Iterator[str]:
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


def max_chars_per_token(tokenizer: Any) -> int | None:
    """The longest vocabulary entry in characters. A byte-level BPE or SentencePiece token covers at
    most that many characters of text, so ``characters / this`` is a lower bound on the token count:
    a prompt can be proved too long without tokenising it."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - no vocabulary to read: tokenise everything
        return None
    return max((len(token) for token in vocab), default=0) or None
