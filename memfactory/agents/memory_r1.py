"""Memory-R1: a memory manager builds a bank from the conversation, an answer agent answers from it.

Manager: the conversation is replayed step by step (``turns_per_call`` turns of one session at a
time); the extractor turns each step into facts, the updater compares them with related memories
and ADDs / UPDATEs / DELETEs (applied atomically). Every step of every episode in the batch goes
into one ``backend.generate`` per module, so a batch costs ``2 x max_steps + 1`` calls.

Answer agent: the question retrieves ``retriever.top_k`` memories; the model first names the ones
that matter (distillation, a JSON list of ids) and then answers in ``\\boxed{}``.

Which part trains (``train``):
- ``manager``: each group member replays into its OWN snapshot of the starting bank, so members
  never see each other's operations; the answer agent is frozen (non-trainable calls, greedy by
  default), so the reward measures the bank the member built (Memory-R1's manager reward).
- ``answer``: one bank per conversation, built with non-trainable (greedy by default) calls and
  shared by all members; only the answer calls train.
- ``both``: per-member banks and every call trainable.

Banks live in a temporary folder for the duration of ``run`` (SQLite files, removed afterwards),
with real sentence embeddings (``embedder``). Trace entries for the UI: ``extract`` (facts),
``op`` (op, id, old, new), ``retrieved`` (the memories the question found), ``answer`` (the
distilled ids) and ``bank`` (the final memories).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memfactory.agents.bank_agent import BankAgent
from memfactory.agents.banks import (
    ANSWER_TEMPLATE,
    BankFolder,
    Episode,
    build_banks,
    episode_steps,
)
from memfactory.backends.base import Backend
from memfactory.memory.store import MemoryStore
from memfactory.modules.extractor import NaiveExtractor, check_placeholders
from memfactory.modules.retriever import NaiveRetriever
from memfactory.modules.updater import NaiveUpdater
from memfactory.registry import register
from memfactory.types import Sample, SamplingParams, Trajectory

PLAIN_ANSWER_TEMPLATE = """Memories from earlier conversations:
{memories}

Question: {question}

Give a short answer in \\boxed{{}}."""


class MemoryR1Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: Literal["manager", "answer", "both"] = Field("manager", description="Which part's calls are trained")
    facts: Literal["extract", "observations"] = Field(
        "extract",
        description="Where the manager's facts come from: the extractor, or LoCoMo's annotated observations "
        "(the updater still decides ADD/UPDATE/DELETE)",
    )
    embedder: str = Field(
        "minilm", description="Sentence embedder of the banks: minilm (bundled), hashing, or a model folder"
    )
    distill: bool = Field(
        True,
        description="The answer first lists the relevant memory ids, then answers (off: memories are not numbered)",
    )
    answer_template: str | None = Field(
        None, description="Answer prompt with {memories} and {question}; None = the distil or plain default"
    )
    answer_prefix: str = Field("", description="Text that opens the answer turn, e.g. \\boxed{ for small models")
    answer_tokens: int = Field(64, ge=1, le=1_048_576, description="Cap on the new tokens of the answer")
    answer_stop: list[str] | None = Field(
        None, description="Stop strings of the answer call (None = the trainer's stop)"
    )
    frozen_answer_temperature: float | None = Field(
        0.0,
        ge=0.0,
        description="Temperature of the answer agent while only the manager trains (None = rollout temperature)",
    )
    frozen_manager_temperature: float | None = Field(
        0.0,
        ge=0.0,
        description="Temperature of the manager while only the answer agent trains (None = rollout temperature)",
    )
    system_prompt: str = Field("", description="Optional system message for the answer call")
    reuse_banks: bool = Field(
        True,
        description="In inference, keep each conversation's bank for later calls (dropped by any training rollout)",
    )

    @field_validator("answer_template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is None:
            return value
        return check_placeholders(value, {"memories", "question"}, {"memories", "question"}, "answer_template")

    @property
    def template(self) -> str:
        if self.answer_template is not None:
            return self.answer_template
        return ANSWER_TEMPLATE if self.distill else PLAIN_ANSWER_TEMPLATE


@register(
    "agent",
    "memory_r1",
    description="Memory-R1: a manager extracts facts and ADD/UPDATE/DELETEs a memory bank; an answer agent distils and answers",
    config=MemoryR1Config,
    slots={"extractor": ["extractor"], "updater": ["updater"], "retriever": ["retriever"]},
)
class MemoryR1Agent(BankAgent):
    options: MemoryR1Config
    options_type = MemoryR1Config
    default_modules: ClassVar[dict[str, Any]] = {
        "extractor": NaiveExtractor,
        "updater": NaiveUpdater,
        "retriever": NaiveRetriever,
    }

    @property
    def extractor(self) -> NaiveExtractor:
        return self.modules["extractor"]

    @property
    def updater(self) -> NaiveUpdater:
        return self.modules["updater"]

    @property
    def retriever(self) -> NaiveRetriever:
        return self.modules["retriever"]

    def answer(
        self,
        samples: list[Sample],
        trajectories: list[Trajectory],
        folder: BankFolder,
        backend: Backend,
        params: SamplingParams,
        *,
        group_size: int,
        train: bool,
    ) -> list[MemoryStore]:
        mode = self.options.train
        if train and mode in ("manager", "both"):  # every member builds its own bank
            self.bank_cache.clear()
            turns = self.extractor.options.turns_per_call
            episodes = []
            for i, sample in enumerate(samples):
                base = folder.new()
                steps = episode_steps(sample, turns, self.options.facts)
                for trajectory in trajectories[i * group_size : (i + 1) * group_size]:
                    episodes.append(Episode(trajectory, folder.snapshot(base), steps))
            build_banks(episodes, self.extractor, self.updater, backend, params, train=True)
            banks = [e.store for e in episodes]
        else:
            banks = self.shared_banks(samples, trajectories, folder, backend, params, train=train)
        self.respond(samples, trajectories, banks, backend, params, group_size=group_size, train=train)
        return banks

    def respond(
        self,
        samples: list[Sample],
        trajectories: list[Trajectory],
        banks: list[MemoryStore],
        backend: Backend,
        params: SamplingParams,
        *,
        group_size: int,
        train: bool,
    ) -> None:
        """The answer agent: each question retrieves ``top_k`` memories of its bank (traced with their
        scores as ``retrieved``), then one batched answer call names the ones it used and answers."""
        answer_trains = train and self.options.train in ("answer", "both")
        hits = self.retriever.generate([(bank, t.sample.question) for t, bank in zip(trajectories, banks)])
        for trajectory, found in zip(trajectories, hits):
            trajectory.trace.append(
                {
                    "kind": "retrieved",
                    "query": trajectory.sample.question,
                    "memories": [{"id": h.item.id, "text": h.item.text, "score": round(h.score, 4)} for h in found],
                }
            )
        self.answer_call(
            trajectories, hits, backend, params, train=train, answer_trains=answer_trains,
            template=self.options.template, module="memory_r1.answer",
            citations="ids" if self.options.distill else "none",
        )

    def start_episode(self, episode: Episode) -> None:
        turns = self.extractor.options.turns_per_call
        episode.steps = episode_steps(episode.trajectory.sample, turns, self.options.facts)

    def build_temperature(self, train: bool) -> float | None:
        """While only the answer agent trains, shared banks are built at the frozen manager temperature."""
        return self.options.frozen_manager_temperature if train else None
