"""RMM (Reflective Memory Management): retrieve -> rerank -> answer with citations.

Prospective reflection builds the bank once per conversation: ``memory_source: reflect`` runs the
extractor and updater over each session (topic facts merged into existing memories), ``turns``
stores every dialogue turn verbatim with its session date (no model calls; cheap and exact), and
``observations`` stores LoCoMo's annotated third-person facts (one memory per observation, keyed
by the dialogue id it came from, so citations line up with the QA evidence).
Retrospective reflection is the trained part: the retriever's top-n candidates go to the reranker,
which keeps at most m; the answer names the memories it used (a JSON list of ids before the
``\\boxed{}`` answer; ``citations: text`` shows the memories unnumbered and counts a memory as
cited when it holds every word of the answer, for small models that answer a number). The
reranker's reward is the answer's correctness plus the ``citation`` bonus: the share of its
selected memories that the answer cites (``rerank_cited / rerank_selected`` in the trajectory
counters) — RMM's label-free signal.

The bank is shared by a sample's group members (they differ only in reranking and answering), so
group advantages compare reranker choices on identical candidates.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memfactory.agents.bank_agent import BankAgent
from memfactory.agents.banks import (
    ANSWER_TEMPLATE,
    BankFolder,
    Episode,
    conversation_sessions,
    episode_steps,
    session_observations,
)
from memfactory.backends.base import Backend
from memfactory.memory.ops import Operation
from memfactory.memory.store import MemoryStore
from memfactory.modules.extractor import NaiveExtractor, check_placeholders
from memfactory.modules.reranker import RerankRequest, RerankRetriever
from memfactory.modules.retriever import NaiveRetriever
from memfactory.modules.updater import NaiveUpdater
from memfactory.registry import register
from memfactory.text import context_of
from memfactory.types import Sample, SamplingParams, Trajectory


class RMMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: Literal["reranker", "answer", "both"] = Field("reranker", description="Which calls are trained")
    memory_source: Literal["reflect", "turns", "observations"] = Field(
        "reflect",
        description="Build the bank with the extractor+updater (reflect), store every turn verbatim (turns) "
        "or store LoCoMo's annotated observations (observations)",
    )
    citations: Literal["ids", "text"] = Field(
        "ids",
        description="How the answer cites: by the memories' numbers (ids), or by content (text: memories are "
        "shown unnumbered and a selected memory is cited when it holds every word of the answer)",
    )
    embedder: str = Field(
        "minilm", description="Sentence embedder of the banks: minilm (bundled), hashing, or a model folder"
    )
    answer_template: str = Field(
        ANSWER_TEMPLATE, description="Answer prompt with {memories} and {question}; asks for cited ids then \\boxed{}"
    )
    answer_prefix: str = Field("", description="Text that opens the answer turn, e.g. '[' to start the citation list")
    answer_tokens: int = Field(64, ge=1, le=1_048_576, description="Cap on the new tokens of the answer")
    answer_stop: list[str] | None = Field(
        None, description="Stop strings of the answer call (None = the trainer's stop)"
    )
    frozen_answer_temperature: float | None = Field(
        0.0,
        ge=0.0,
        description="Temperature of the answer while only the reranker trains, so its reward reflects the "
        "selection (None = rollout temperature)",
    )
    system_prompt: str = Field("", description="Optional system message for the answer call")
    reuse_banks: bool = Field(
        True,
        description="In inference, keep each conversation's bank for later calls (dropped by any training rollout)",
    )

    @field_validator("answer_template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_placeholders(value, {"memories", "question"}, {"memories", "question"}, "answer_template")


def turn_operations(sessions: list[dict[str, Any]]) -> list[Operation]:
    """One ADD per dialogue turn: ``speaker: text``, keyed by its ``dia_id``, tagged with its session's date."""
    ops = []
    for session in sessions:
        date = str(session.get("date_time", ""))
        for turn in session.get("turns", []):
            text = f"{turn['speaker']}: {turn['text']}".strip()
            ops.append(Operation("ADD", text=text, key=str(turn.get("dia_id", "")) or None, tags=[date] if date else None))
    return ops


def add_turns(store: MemoryStore, sample: Sample) -> int:
    """Store every turn of the sample's conversation as one memory (tagged with its session date)."""
    sessions = conversation_sessions(sample)
    if sessions:
        ops = turn_operations(sessions)
    else:
        ops = [Operation("ADD", text=line.strip()) for line in context_of(sample).splitlines() if line.strip()]
    if ops:
        store.apply(ops, actor="turns")
    return len(ops)


def add_observations(store: MemoryStore, sample: Sample) -> int:
    """Store each LoCoMo observation as one memory, keyed by its dialogue id and tagged with the session date."""
    ops = []
    for session in session_observations(sample):
        date = str(session.get("date_time", ""))
        for observation in session["observations"]:
            ops.append(
                Operation(
                    "ADD", text=observation["text"], key=observation["dia_id"] or None, tags=[date] if date else None
                )
            )
    if ops:
        store.apply(ops, actor="observations")
    return len(ops)


@register(
    "agent",
    "rmm",
    description="RMM: retrieve top-n, an LLM reranker keeps m, answer with citations; reranker trained with a citation bonus",
    config=RMMConfig,
    # extractor/updater build the bank with memory_source "reflect" (unused with "turns"/"observations").
    slots={"retriever": ["retriever"], "reranker": ["reranker"], "extractor": ["extractor"], "updater": ["updater"]},
)
class MemoryRMMAgent(BankAgent):
    options: RMMConfig
    options_type = RMMConfig
    default_modules: ClassVar[dict[str, Any]] = {
        "retriever": NaiveRetriever,
        "reranker": RerankRetriever,
        "extractor": NaiveExtractor,
        "updater": NaiveUpdater,
    }

    @property
    def retriever(self) -> NaiveRetriever:
        return self.modules["retriever"]

    @property
    def reranker(self) -> RerankRetriever:
        return self.modules["reranker"]

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
        """Retrospective reflection: each sample's question retrieves ``top_n`` candidates from its bank
        (once, shared by its group members), the reranker keeps at most ``top_m`` (traced as ``rerank``
        with the candidates' scores), the answer cites what it used (``rerank_cited`` counted)."""
        mode = self.options.train
        # Retrieval is deterministic: once per sample (top_n candidates), shared by its group members.
        top_n = self.reranker.options.top_n
        found = [
            self.retriever.retrieve(banks[i * group_size], [sample.question], k=top_n)[0]
            for i, sample in enumerate(samples)
        ]
        candidates = [found[i // group_size] for i in range(len(trajectories))]
        selected = self.reranker.generate(
            [RerankRequest(t, t.sample.question, c) for t, c in zip(trajectories, candidates)],
            backend,
            params,
            train=train,
            trainable=mode in ("reranker", "both"),
        )
        answer_trains = mode in ("answer", "both")
        cited = self.answer_call(
            trajectories, selected, backend, params, train=train, answer_trains=answer_trains,
            template=self.options.answer_template, module="rmm.answer", citations=self.options.citations,
        )
        for trajectory, picked, ids in zip(trajectories, selected, cited):
            chosen = {h.item.id for h in picked}
            trajectory.count("rerank_cited", len(chosen & set(ids)))

    @property
    def reflects(self) -> bool:
        """``memory_source: reflect`` only: ``turns`` and ``observations`` store what they get verbatim."""
        return self.options.memory_source == "reflect"

    def start_episode(self, episode: Episode) -> None:
        """Prospective reflection, never trained: turns or observations stored as they are, or the
        extractor/updater steps of ``memory_source: reflect``."""
        source = self.options.memory_source
        if not self.reflects:
            add = add_turns if source == "turns" else add_observations
            count = add(episode.store, episode.trajectory.sample)
            episode.trajectory.trace.append({"kind": "bank_built", "source": source, "memories": count})
        else:
            turns = self.modules["extractor"].options.turns_per_call
            episode.steps = episode_steps(episode.trajectory.sample, turns)
