"""The data that flows between the layers: samples in, model calls and trajectories out.

A ``Trajectory`` records every model call of one episode with the exact sampled token ids and
their log-probs, so the trainer never decodes and re-tokenises a response (no token drift).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Sample:
    """One task instance from an environment.

    ``context`` is the long input (documents, dialogue transcript); ``answers`` are gold strings,
    scored against ``answers[0]`` where a metric takes one. Anything format-specific (RULER's
    ``answer_prefix``, LoCoMo's sessions and evidence) lives in ``meta``.
    """

    id: str
    question: str
    answers: list[str]
    context: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ChatPrompt:
    """Chat messages plus an optional prefix that opens the assistant turn (never trained).

    The prefix is how we ask a small model for a format it would not produce unprompted, e.g.
    ``"\\boxed{"``; RULER's ``answer_prefix`` is the same idea.
    """

    messages: list[dict[str, str]]
    assistant_prefix: str = ""


@dataclass
class TokenPrompt:
    """A prompt already in token ids, fed to the model as it is (no chat template): what
    ``/v1/completions`` serves. Backends that take it say so (``ServingFeatures.token_prompts``)."""

    ids: list[int]


Prompt = ChatPrompt | TokenPrompt
# (token id, log-prob) of the most likely tokens at one position, most likely first.
TopLogprobs = list[tuple[int, float]]


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    # Generation stops after any of these strings (in addition to EOS); the stop text is kept.
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # Asked of backends that can (ServingFeatures): the k most likely tokens at every sampled
    # position, and the prompt tokens' own log-probs (plus their top k), from the same forward.
    top_logprobs: int = 0
    prompt_logprobs: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Generation:
    """One completion. ``response_ids``/``logprobs`` are None for backends that don't expose them."""

    text: str
    prompt_ids: list[int] | None = None
    response_ids: list[int] | None = None
    logprobs: list[float] | None = None
    finish_reason: str = "stop"  # "stop" (EOS or a stop string) or "length"
    latency_s: float = 0.0
    # Filled when SamplingParams asks for them: per response token, and per prompt token (the
    # first prompt token has no log-prob: None, with an empty top list).
    top_logprobs: list[TopLogprobs] | None = None
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[TopLogprobs] | None = None


@dataclass
class ModelCall:
    """One model call inside a trajectory, as the trainer needs it."""

    module: str
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    text: str
    trainable: bool = True
    finish_reason: str = "stop"
    # A short human-readable view of the prompt for sample logs and the UI.
    prompt_text: str = ""

    @property
    def num_response_tokens(self) -> int:
        return len(self.response_ids)


@dataclass
class Trajectory:
    """Everything one episode did: model calls, the final answer, the memory trace, rewards."""

    sample: Sample
    calls: list[ModelCall] = field(default_factory=list)
    answer: str = ""
    # Per-step memory evolution for the UI: e.g. {"step": 2, "chunk": 1, "memory": "..."}.
    trace: list[dict[str, Any]] = field(default_factory=list)
    rewards: dict[str, float] = field(default_factory=dict)
    reward: float = 0.0
    advantage: float = 0.0
    # Counters such as unterminated_think or unparseable_ops, summed into the step metrics.
    counters: dict[str, float] = field(default_factory=dict)
    group: int = 0

    def count(self, name: str, amount: float = 1.0) -> None:
        self.counters[name] = self.counters.get(name, 0.0) + amount

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly record for samples.jsonl and the UI."""
        return {
            "sample_id": self.sample.id,
            "question": self.sample.question,
            "gold": self.sample.answers,
            "answer": self.answer,
            "reward": self.reward,
            "rewards": self.rewards,
            "advantage": self.advantage,
            "trace": self.trace,
            "calls": [
                {"module": c.module, "prompt": c.prompt_text, "response": c.text, "tokens": len(c.response_ids)}
                for c in self.calls
            ],
        }
