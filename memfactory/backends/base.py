"""The one interface every text-generation backend offers.

Agents and modules only ever call ``Backend.generate``; whether the text comes from a local
transformers model, an OpenAI-compatible server or vLLM is the preset's choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from memfactory.types import ChatPrompt, Generation, SamplingParams


@runtime_checkable
class Backend(Protocol):
    name: str

    def generate(self, prompts: list[ChatPrompt], params: SamplingParams) -> list[Generation]:
        """One completion per prompt, in order."""
        ...

    @property
    def exposes_tokens(self) -> bool:
        """True when generations carry token ids and log-probs (needed for training)."""
        ...


@dataclass(frozen=True)
class ServingFeatures:
    """What a backend can do beyond ``generate(chat prompts)``, read by ``memfactory serve`` so that a
    request it cannot honour is refused (400) instead of answered with a field missing. A backend
    declares them as a ``features`` attribute; one without it has none."""

    token_prompts: bool = False  # generate() takes TokenPrompt (raw token ids, no chat template)
    logprobs: bool = False  # Generation.logprobs: the sampled tokens' log-probs
    top_logprobs: int = 0  # the most alternatives per position it returns (SamplingParams.top_logprobs)
    prompt_logprobs: bool = False  # Generation.prompt_logprobs (SamplingParams.prompt_logprobs)


def serving_features(backend: object) -> ServingFeatures:
    """The backend's declared features (none when it declares nothing)."""
    features = getattr(backend, "features", None)
    return features if isinstance(features, ServingFeatures) else ServingFeatures()
