"""Small text helpers shared by modules and agents: thinking blocks, token windows, clipping.

Contexts are measured in the backend's own tokens when it has a tokenizer, so a "5000-token
chunk" means what the model sees. Backends without one (a remote API) get a documented
approximation: one token per 4 characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, TypeVar

from memfactory.errors import DataError

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
CHARS_PER_TOKEN = 4

Truncate = Literal["middle", "head", "tail"]
T = TypeVar("T")


def strip_thinking(text: str) -> tuple[str, bool]:
    """Drop everything up to the last ``</think>``.

    Returns ``(visible_text, terminated)``. ``terminated`` is False only when a ``<think>`` was
    opened and never closed (the model ran out of tokens while thinking); the visible text is
    then empty, because nothing after the reasoning was written. A response that has no think
    tags at all is returned stripped, as terminated. A lone ``</think>`` (the chat template
    opened the block in the prompt) counts as terminated.
    """
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        return text[close + len(THINK_CLOSE) :].strip(), True
    if THINK_OPEN in text:
        return "", False
    return text.strip(), True


def truncate_sequence(items: Sequence[T], limit: int, mode: Truncate = "middle") -> list[T]:
    """Keep at most ``limit`` items; ``mode`` names the part that is dropped.

    ``middle`` keeps the first and last halves (the question often sits at either end),
    ``head`` drops the beginning (keeps the tail), ``tail`` drops the end (keeps the beginning).
    """
    items = list(items)
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if len(items) <= limit:
        return items
    if limit == 0:
        return []
    if mode == "head":
        return items[len(items) - limit :]
    if mode == "tail":
        return items[:limit]
    if mode == "middle":
        front = (limit + 1) // 2
        back = limit - front
        return items[:front] + (items[len(items) - back :] if back else [])
    raise ValueError(f"unknown truncation mode {mode!r}; expected middle, head or tail")


def chunk_sequence(items: Sequence[T], size: int) -> list[list[T]]:
    """Consecutive pieces of ``size`` items (the last one may be shorter); none for an empty input."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def clip_middle(text: str, max_chars: int = 1500, marker: str = " … ") -> str:
    """A short view of a long prompt for logs and the UI (never fed back to a model)."""
    if len(text) <= max_chars:
        return text
    keep = max(max_chars - len(marker), 0)
    return text[: (keep + 1) // 2] + marker + text[len(text) - keep // 2 :]


# --------------------------------------------------------------------------- token codecs


class Codec(Protocol):
    """Splits text into model-sized pieces and joins pieces back into text."""

    exact: bool

    def encode(self, text: str) -> list[Any]: ...

    def decode(self, pieces: Sequence[Any]) -> str: ...


class TokenizerCodec:
    """The backend's own tokenizer: pieces are token ids, no special tokens added."""

    exact = True

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        try:  # verbose=False: long contexts are expected here, not a mistake worth a warning
            return list(self.tokenizer.encode(text, add_special_tokens=False, verbose=False))
        except TypeError:
            return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, pieces: Sequence[int]) -> str:
        return self.tokenizer.decode(list(pieces), skip_special_tokens=False)


class CharCodec:
    """Approximation for backends without a tokenizer: a "token" is 4 characters."""

    exact = False

    def encode(self, text: str) -> list[str]:
        return [text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]

    def decode(self, pieces: Sequence[str]) -> str:
        return "".join(pieces)


def codec_for(backend: Any) -> Codec:
    """The backend's tokenizer when it has one (``backend.tokenizer``), else the chars/4 approximation."""
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode"):
        return TokenizerCodec(tokenizer)
    return CharCodec()


def truncate_text(text: str, limit: int, codec: Codec, mode: Truncate = "middle") -> tuple[str, int]:
    """``text`` cut to ``limit`` codec tokens; returns ``(text, dropped_tokens)``.

    Text that already fits comes back unchanged (no decode round trip).
    """
    pieces = codec.encode(text)
    if len(pieces) <= limit:
        return text, 0
    kept = truncate_sequence(pieces, limit, mode)
    return codec.decode(kept), len(pieces) - len(kept)


def context_of(sample: Any) -> str:
    """A sample's context as text; anything else (e.g. unresolved doc ids) is a data mistake, named."""
    context = sample.context if sample.context is not None else ""
    if not isinstance(context, str):
        source = sample.meta.get("source", "samples") if isinstance(sample.meta, dict) else "samples"
        raise DataError(
            str(source),
            f"context must be text, got {type(context).__name__} (resolve document ids before running an agent)",
            field=f"{sample.id}.context",
        )
    return context


def is_utf8_text(value: str) -> bool:
    """False for a string holding a lone surrogate (YAML's or JSON's "\\ud800"): it cannot be written as
    UTF-8, so SQLite, files and tokenizers would all fail on it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
