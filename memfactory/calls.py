"""Turning a backend's Generation into the ModelCall a trajectory records.

Training needs the exact sampled token ids and their log-probs; decoding and re-encoding a
response can yield different ids (token drift), so a training call without them is an error,
never a silent re-tokenisation.
"""

from __future__ import annotations

from typing import Any

from memfactory.errors import MemFactoryError
from memfactory.text import clip_middle
from memfactory.types import ChatPrompt, Generation, ModelCall


def require_token_backend(backend: Any) -> None:
    """Training mode needs a backend that reports token ids and log-probs."""
    if not getattr(backend, "exposes_tokens", False):
        name = getattr(backend, "name", type(backend).__name__)
        raise MemFactoryError(
            f"backend {name!r} does not expose token ids and log-probs, which training needs; "
            "train with the local 'hf' backend (any backend works for evaluation)"
        )


def prompt_view(prompt: ChatPrompt, max_chars: int = 1500) -> str:
    """The last user message (clipped) plus the assistant prefix: what a person wants to see."""
    user = next((m["content"] for m in reversed(prompt.messages) if m.get("role") == "user"), "")
    view = clip_middle(user, max_chars)
    return view + (f"\n[assistant] {prompt.assistant_prefix}" if prompt.assistant_prefix else "")


def model_call(
    module: str, prompt: ChatPrompt, generation: Generation, *, train: bool, trainable: bool = True
) -> ModelCall:
    """Record one call. In train mode the ids must be there; otherwise whatever the backend gave."""
    if train and (generation.prompt_ids is None or generation.response_ids is None or generation.logprobs is None):
        raise MemFactoryError(
            "a generation came back without prompt ids, response ids or log-probs; training needs all three"
        )
    if train and len(generation.logprobs or []) != len(generation.response_ids or []):
        raise MemFactoryError(
            f"backend returned {len(generation.response_ids or [])} response ids but "
            f"{len(generation.logprobs or [])} log-probs"
        )
    return ModelCall(
        module=module,
        prompt_ids=list(generation.prompt_ids or []),
        response_ids=list(generation.response_ids or []),
        logprobs=list(generation.logprobs or []),
        text=generation.text,
        trainable=bool(train and trainable),
        finish_reason=generation.finish_reason,
        prompt_text=prompt_view(prompt),
    )


def response_tokens(generation: Generation) -> int:
    """Response length in tokens, or a chars/4 estimate when the backend hides tokens."""
    if generation.response_ids is not None:
        return len(generation.response_ids)
    return max(1, len(generation.text) // 4) if generation.text else 0
