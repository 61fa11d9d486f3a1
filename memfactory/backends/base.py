"""The one interface every text-generation backend offers.

Agents and modules only ever call ``Backend.generate``; whether the text comes from a local
transformers model, an OpenAI-compatible server or vLLM is the preset's choice.
"""

from __future__ import annotations

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
