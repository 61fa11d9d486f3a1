"""Which questions a model answers without any context: MemAgent's filter for its HotpotQA eval sets.

MemAgent (``taskutils/memory_data/filter.py``, ``filter2.py``) asked Qwen2.5-7B and
Qwen2.5-7B-Instruct each question alone -- ``"{question}\\nYour final answer in \\boxed{}.\\n"`` as the
user turn, 2 samples at temperature 1.0, top-p 0.7, at most 512 new tokens -- and dropped a
question when any sample of any model was right: its last ``\\boxed{}`` (in the last 300
characters) equals the gold (:func:`~memfactory.envs.answer_metrics.boxed_em`, MemAgent's own
verifier), or the gold occurs in the response (case-insensitive). A question the model knows
tests recall, not reading, so it is dropped from a long-context eval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from memfactory.backends.base import Backend
from memfactory.envs.answer_metrics import boxed_em
from memfactory.types import ChatPrompt, SamplingParams

TEMPLATE = "{prompt}\nYour final answer in \\boxed{{}}.\n"


@dataclass(frozen=True)
class ClosedBook:
    """MemAgent's filter sampling: ``samples`` answers a question, at its temperature, top-p and cap."""

    samples: int = 2
    temperature: float = 1.0
    top_p: float = 0.7
    max_new_tokens: int = 512
    seed: int | None = 0
    batch_size: int = 16  # questions per generate call (x samples rows)

    def params(self) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed
        )


def answered(response: str, golds: Sequence[str]) -> bool:
    """MemAgent's "right without context": a boxed exact match or the gold inside the response."""
    lowered = response.lower()
    return boxed_em(response, list(golds)) > 0 or any(gold.lower() in lowered for gold in golds)


def known_questions(
    backend: Backend, questions: Sequence[tuple[int, str, Sequence[str]]], how: ClosedBook = ClosedBook()
) -> set[int]:
    """The ids of ``(id, question, golds)`` that ``backend`` answers right in any of ``how.samples`` tries."""
    if how.samples < 1:
        raise ValueError(f"samples must be at least 1, got {how.samples}")
    known: set[int] = set()
    params = how.params()
    for start in range(0, len(questions), how.batch_size):
        batch = questions[start : start + how.batch_size]
        prompts = [
            ChatPrompt(messages=[{"role": "user", "content": TEMPLATE.format(prompt=question)}])
            for _, question, _ in batch
            for _ in range(how.samples)
        ]
        texts = [g.text for g in backend.generate(prompts, params)]
        for k, (qid, _, golds) in enumerate(batch):
            if any(answered(text, golds) for text in texts[k * how.samples : (k + 1) * how.samples]):
                known.add(qid)
    return known
