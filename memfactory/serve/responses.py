"""OpenAI's response shapes: chat completions and completions, whole or as SSE chunks, with their
choices (n per prompt), usage and log-probs.

The backend interface produces whole completions, so a stream's chunks arrive once the completion is
done: the format works with streaming clients, but the first token is not any earlier. Text streams
in word-sized pieces; a choice with log-probs streams as one piece carrying all of them (a token's
text alone may be half a character).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from memfactory.serve.protocol import apply_stop
from memfactory.types import Generation, SamplingParams, TopLogprobs


@dataclass
class Choice:
    """One choice of a reply: its text (after stop strings), why it ended, and its log-probs."""

    index: int
    text: str
    finish_reason: str
    stop_reason: str | None
    logprobs: dict[str, Any] | None = None


def finished(gen: Generation, params: SamplingParams, keep_stop: bool) -> tuple[str, str, str | None]:
    """The text cut at its stop string, the finish reason, and the stop string that matched."""
    text, stop_reason = apply_stop(gen.text, params.stop, keep_stop)
    finish = "stop" if stop_reason is not None else ("length" if gen.finish_reason == "length" else "stop")
    return text, finish, stop_reason


def usage(groups: list[list[Generation]]) -> dict[str, int] | None:
    """OpenAI's ``usage``: each prompt counted once, every choice's tokens; None when the backend
    gives no token ids (a text-only backend has no honest counts)."""
    gens = [g for group in groups for g in group]
    if not gens or any(g.prompt_ids is None or g.response_ids is None for g in gens):
        return None
    p = sum(len(group[0].prompt_ids or []) for group in groups if group)
    c = sum(len(g.response_ids or []) for g in gens)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def text_pieces(text: str) -> Iterator[str]:
    """Word-sized deltas whose concatenation is exactly ``text``."""
    yield from re.findall(r"\s*\S+|\s+", text)


# --------------------------------------------------------------------------- log-probs


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-ins for the 256 bytes (GPT-2's table), reversed."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(kept), 0
    for b in range(256):
        if b not in kept:
            kept.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(kept, chars)}


class TokenText:
    """A token id's text and UTF-8 bytes, as OpenAI's log-prob objects name tokens. For a byte-level
    BPE the bytes are the token's own (a token may hold half a character); otherwise its text's."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_level = type(decoder).__name__ == "ByteLevel"
        self.text = lru_cache(maxsize=65536)(self._text)
        self.bytes = lru_cache(maxsize=65536)(self._bytes)

    def _text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _bytes(self, token_id: int) -> list[int]:
        piece = self.tokenizer.convert_ids_to_tokens(token_id) if self.byte_level else None
        table = _byte_decoder()
        if piece and all(ch in table for ch in piece):
            return [table[ch] for ch in piece]
        return list(self.text(token_id).encode("utf-8"))

    def entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        return {"token": self.text(token_id), "logprob": logprob, "bytes": self.bytes(token_id)}


def chat_logprobs(gen: Generation, top: int, tokens: TokenText) -> dict[str, Any]:
    """``choice.logprobs`` of a chat completion: every sampled token with its ``top`` alternatives."""
    tops = gen.top_logprobs or [[] for _ in gen.response_ids or []]
    content = [{**tokens.entry(t, lp), "top_logprobs": [tokens.entry(i, v) for i, v in alts[:top]]}
               for t, lp, alts in zip(gen.response_ids or [], gen.logprobs or [], tops)]
    return {"content": content, "refusal": None}


def completion_logprobs(gen: Generation, top: int, tokens: TokenText, echo: bool) -> dict[str, Any]:
    """``choice.logprobs`` of a completion (OpenAI's legacy shape): per token its text, log-prob, a
    dict of the ``top`` most likely plus the sampled one, and its character offset; with ``echo``
    the prompt's tokens first (the very first has no log-prob: null)."""
    ids, lps, alts = list(gen.response_ids or []), list(gen.logprobs or []), list(gen.top_logprobs or [])
    if len(alts) < len(ids):
        alts = [[] for _ in ids]
    if echo:
        prompt = list(gen.prompt_ids or [])
        ids = prompt + ids
        lps = list(gen.prompt_logprobs or [None] * len(prompt)) + lps
        alts = list(gen.prompt_top_logprobs or [[] for _ in prompt]) + alts
    texts = [tokens.text(t) for t in ids]
    offsets, at = [], 0
    for text in texts:
        offsets.append(at)
        at += len(text)
    return {"tokens": texts, "token_logprobs": lps,
            "top_logprobs": [_top_dict(t, lp, a[:top], tokens) for t, lp, a in zip(ids, lps, alts)],
            "text_offset": offsets}


def _top_dict(token_id: int, logprob: float | None, alts: TopLogprobs, tokens: TokenText) -> dict[str, float] | None:
    if logprob is None:
        return None
    out = {tokens.text(i): v for i, v in alts}
    out.setdefault(tokens.text(token_id), logprob)
    return out


# --------------------------------------------------------------------------- replies


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def chat_reply(model: str, choices: list[Choice], counts: dict[str, int] | None, *, stream: bool,
               include_usage: bool) -> JSONResponse | StreamingResponse:
    rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if not stream:
        body: dict[str, Any] = {
            "id": rid, "object": "chat.completion", "created": now, "model": model,
            "choices": [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                         "logprobs": c.logprobs, "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
                        for c in choices],
        }
        if counts:
            body["usage"] = counts
        return JSONResponse(body)

    def chunk(choice: dict[str, Any]) -> str:
        return _sse({"id": rid, "object": "chat.completion.chunk", "created": now, "model": model,
                     "choices": [choice]})

    def events() -> Iterator[str]:
        for c in choices:
            yield chunk({"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None})
            pieces = [c.text] if c.logprobs is not None else list(text_pieces(c.text))
            for piece in pieces:
                yield chunk({"index": c.index, "delta": {"content": piece}, "logprobs": c.logprobs,
                             "finish_reason": None})
            yield chunk({"index": c.index, "delta": {}, "logprobs": None, "finish_reason": c.finish_reason,
                         "stop_reason": c.stop_reason})
        if include_usage and counts:
            yield _sse({"id": rid, "object": "chat.completion.chunk", "created": now, "model": model,
                        "choices": [], "usage": counts})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def completion_reply(model: str, choices: list[Choice], counts: dict[str, int] | None, *, stream: bool,
                     include_usage: bool) -> JSONResponse | StreamingResponse:
    rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if not stream:
        body: dict[str, Any] = {
            "id": rid, "object": "text_completion", "created": now, "model": model,
            "choices": [{"index": c.index, "text": c.text, "logprobs": c.logprobs,
                         "finish_reason": c.finish_reason, "stop_reason": c.stop_reason} for c in choices],
        }
        if counts:
            body["usage"] = counts
        return JSONResponse(body)

    def chunk(choice: dict[str, Any]) -> str:
        return _sse({"id": rid, "object": "text_completion", "created": now, "model": model, "choices": [choice]})

    def events() -> Iterator[str]:
        for c in choices:
            pieces = [c.text] if c.logprobs is not None else list(text_pieces(c.text))
            for piece in pieces:
                yield chunk({"index": c.index, "text": piece, "logprobs": c.logprobs, "finish_reason": None})
            yield chunk({"index": c.index, "text": "", "logprobs": None, "finish_reason": c.finish_reason,
                         "stop_reason": c.stop_reason})
        if include_usage and counts:
            yield _sse({"id": rid, "object": "text_completion", "created": now, "model": model, "choices": [],
                        "usage": counts})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
