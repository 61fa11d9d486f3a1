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

import contextlib
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memfactory.agents.base import Agent
from memfactory.agents.common import check_run, group_trajectories
from memfactory.backends.base import Backend
from memfactory.calls import model_call, require_token_backend, response_tokens
from memfactory.envs.rewards import extract_prediction, normalize_answer
from memfactory.errors import MemFactoryError
from memfactory.memory.embed import get_embedder
from memfactory.memory.records import MemoryHit
from memfactory.memory.store import MemoryStore
from memfactory.modules.extractor import ExtractRequest, NaiveExtractor, check_placeholders
from memfactory.modules.memory_ops import Fact, parse_id_list
from memfactory.modules.retriever import NaiveRetriever
from memfactory.modules.updater import NaiveUpdater, UpdateRequest
from memfactory.registry import register
from memfactory.text import chunk_sequence, context_of, strip_thinking
from memfactory.types import ChatPrompt, Sample, SamplingParams, Trajectory

ANSWER_TEMPLATE = """Memories from earlier conversations:
{memories}

Question: {question}

First write the ids of the memories that answer the question as a JSON list, e.g. [0, 2]. Then give a short final answer in \\boxed{{}}."""

PLAIN_ANSWER_TEMPLATE = """Memories from earlier conversations:
{memories}

Question: {question}

Give a short answer in \\boxed{{}}."""


# --------------------------------------------------------------------------- replaying a conversation


@dataclass
class Step:
    session: int
    date: str
    dialogue: str
    # Facts given with the data (LoCoMo's annotated observations): the step skips the extractor.
    facts: list[Fact] | None = None


def conversation_sessions(sample: Sample) -> list[dict[str, Any]] | None:
    """A LoCoMo sample's sessions (``meta["sessions"]``), None for plain-context samples."""
    return sample.meta.get("sessions") if isinstance(sample.meta, dict) else None


def session_observations(sample: Sample) -> list[dict[str, Any]]:
    """The sample's sessions, each required to carry LoCoMo's ``observations`` (clear error if not)."""
    sessions = conversation_sessions(sample)
    if not sessions or any("observations" not in session for session in sessions):
        raise MemFactoryError(
            f"sample {sample.id!r} has no LoCoMo observations; facts/memories from 'observations' need a "
            "LoCoMo file with an 'observation' field (the real locomo10.json or `memfactory data synth locomo`)"
        )
    return sessions


def observation_steps(sample: Sample) -> list[Step]:
    """One step per session whose facts are LoCoMo's observations (no extraction call)."""
    return [
        Step(
            int(session.get("session", n + 1)),
            str(session.get("date_time", "")),
            "",
            [Fact(value=o["text"], type="observation", tags=[o["dia_id"]] if o["dia_id"] else []) for o in obs],
        )
        for n, session in enumerate(session_observations(sample))
        if (obs := session["observations"])
    ]


def episode_steps(sample: Sample, turns_per_call: int, facts: str = "extract") -> list[Step]:
    """The conversation cut into extraction steps: ``meta["sessions"]`` (LoCoMo) or the context's lines.

    ``facts="observations"`` gives one step per session carrying LoCoMo's annotated facts instead.
    """
    if facts == "observations":
        return observation_steps(sample)
    sessions = conversation_sessions(sample)
    steps = []
    if sessions:
        for session in sessions:
            lines = [f"{t['speaker']}: {t['text']}" for t in session.get("turns", [])]
            for chunk in chunk_sequence(lines, turns_per_call):
                steps.append(
                    Step(
                        int(session.get("session", len(steps) + 1)), str(session.get("date_time", "")), "\n".join(chunk)
                    )
                )
        return steps
    lines = [line for line in context_of(sample).splitlines() if line.strip()]
    return [Step(1, "", "\n".join(chunk)) for chunk in chunk_sequence(lines, turns_per_call)]


@dataclass
class Episode:
    """One bank being built: the trajectory that records the calls, the bank and how far it has read."""

    trajectory: Trajectory
    store: MemoryStore
    steps: list[Step]
    pos: int = 0


def build_banks(
    episodes: list[Episode],
    extractor: NaiveExtractor,
    updater: NaiveUpdater,
    backend: Any,
    params: SamplingParams,
    *,
    train: bool,
    trainable: bool = True,
) -> None:
    """Replay every episode into its bank, one extraction call and one update call per step index."""
    while True:
        live = [e for e in episodes if e.pos < len(e.steps)]
        if not live:
            return
        to_extract = [e for e in live if e.steps[e.pos].facts is None]
        requests = []
        for e in to_extract:
            step = e.steps[e.pos]
            requests.append(
                ExtractRequest(e.trajectory, step.dialogue, step.date, trace={"step": e.pos, "session": step.session})
            )
        # In the order of to_extract, i.e. of the live episodes whose step has no given facts.
        extracted = iter(extractor.generate(requests, backend, params, train=train, trainable=trainable))
        updates = []
        for e in live:
            step = e.steps[e.pos]
            if step.facts is not None:
                facts = step.facts
                e.trajectory.trace.append(
                    {
                        "kind": "facts",
                        "source": "observations",
                        "step": e.pos,
                        "session": step.session,
                        "facts": [f.to_dict() for f in facts],
                    }
                )
            else:
                facts = next(extracted).facts
            if facts:
                updates.append(
                    UpdateRequest(
                        e.trajectory,
                        e.store,
                        facts,
                        updater.related(e.store, facts),
                        date=step.date,
                        trace={"step": e.pos, "session": step.session},
                    )
                )
        updater.generate(updates, backend, params, train=train, trainable=trainable)
        for e in live:
            e.pos += 1


def copy_record(source: Trajectory, target: Trajectory) -> None:
    """Give ``target`` the calls, trace and counters of a shared bank-building episode."""
    target.calls.extend(source.calls)
    target.trace.extend(source.trace)
    for name, value in source.counters.items():
        target.count(name, value)


def conversation_key(sample: Sample) -> str:
    meta = sample.meta if isinstance(sample.meta, dict) else {}
    return str(meta.get("conversation_id") or f"{sample.id}:{hash(sample.context)}")


class BankFolder:
    """A temporary folder of SQLite banks for one ``run``; closes and removes them all at the end."""

    def __init__(self, embedder: str):
        self.embedder = get_embedder(embedder)
        self._tmp = tempfile.TemporaryDirectory(prefix="memfactory-banks-")
        self.stores: list[MemoryStore] = []

    def new(self) -> MemoryStore:
        store = MemoryStore(Path(self._tmp.name) / f"bank-{len(self.stores)}.db", embedder=self.embedder)
        self.stores.append(store)
        return store

    def snapshot(self, base: MemoryStore) -> MemoryStore:
        copy = base.snapshot(Path(self._tmp.name) / f"bank-{len(self.stores)}.db")
        self.stores.append(copy)
        return copy

    def __enter__(self) -> BankFolder:  # noqa: PYI034 - py310 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        for store in self.stores:
            with contextlib.suppress(Exception):  # closing is best effort; the folder goes anyway
                store.close()
        self._tmp.cleanup()


class BankCache:
    """Conversation banks kept between inference calls (``memfactory eval`` sends a few questions at a
    time; LoCoMo has ~150 per conversation, so rebuilding per batch would replay it ~40 times).

    Valid only while the weights cannot change: any training rollout drops it, and so does a call
    with another backend or other sampling settings.
    """

    def __init__(self) -> None:
        self.folder: BankFolder | None = None
        self.signature: tuple | None = None
        self.episodes: dict[str, Episode] = {}

    def clear(self) -> None:
        if self.folder is not None:
            self.folder.__exit__()
        self.folder, self.signature, self.episodes = None, None, {}

    def prepare(self, backend: Any, params: SamplingParams, embedder: str) -> BankFolder:
        signature = (
            id(backend),
            embedder,
            params.temperature,
            params.top_p,
            params.top_k,
            params.max_new_tokens,
            tuple(params.stop),
            params.seed,
        )
        if signature != self.signature:
            self.clear()
            self.folder = BankFolder(embedder)
            self.signature = signature
        assert self.folder is not None
        return self.folder


def shared_episodes(
    samples: list[Sample],
    folder: BankFolder,
    cache: BankCache | None,
    start: Any,
) -> tuple[dict[str, Episode], list[Episode]]:
    """One episode per conversation, from the cache when it has one; ``start(episode)`` prepares a new one.

    Returns all episodes by conversation key and the new ones (still to be built; the caller
    caches them with ``cache.episodes.update`` once they are built).
    """
    episodes: dict[str, Episode] = {}
    new: list[Episode] = []
    for sample in samples:
        key = conversation_key(sample)
        if key in episodes:
            continue
        if cache is not None and key in cache.episodes:
            episodes[key] = cache.episodes[key]
            continue
        episode = Episode(Trajectory(sample=sample, group=-1), folder.new(), [])
        start(episode)
        episodes[key] = episode
        new.append(episode)
    return episodes, new


def conversation_banks(
    samples: list[Sample],
    trajectories: list[Trajectory],
    folder: BankFolder,
    backend: Any,
    params: SamplingParams,
    *,
    bank_cache: BankCache,
    reuse: bool,
    embedder: str,
    start: Any,
    extractor: NaiveExtractor,
    updater: NaiveUpdater,
    train: bool = False,
    build_temperature: float | None = None,
) -> list[MemoryStore]:
    """One bank per conversation (non-trainable calls), shared by its samples and group members.

    In inference with ``reuse`` the banks live on in ``bank_cache`` for later calls; training or
    ``reuse=False`` drops them. ``start`` prepares a new episode (its steps, or a bank filled
    without model calls); ``build_temperature`` overrides the sampling temperature of the build.
    """
    cache = None
    if train or not reuse:
        bank_cache.clear()
    else:
        cache = bank_cache
        folder = cache.prepare(backend, params, embedder)
    episodes, new = shared_episodes(samples, folder, cache, start)
    if build_temperature is not None:
        params = replace(params, temperature=build_temperature)
    build_banks(new, extractor, updater, backend, params, train=False)
    if cache is not None:
        cache.episodes.update({conversation_key(e.trajectory.sample): e for e in new})
    banks = []
    for trajectory in trajectories:
        episode = episodes[conversation_key(trajectory.sample)]
        copy_record(episode.trajectory, trajectory)
        banks.append(episode.store)
    return banks


# --------------------------------------------------------------------------- answering from memories


def render_hits(hits: list[MemoryHit], numbered: bool = True) -> str:
    """Memories for a prompt, ``[i]`` numbered when the answer should name them (small models
    otherwise tend to answer with a number)."""
    if not hits:
        return "(no memories)"
    return "\n".join(
        (f"[{i}] " if numbered else "- ") + hit.item.text + (f" ({hit.item.tags[0]})" if hit.item.tags else "")
        for i, hit in enumerate(hits)
    )


def cited_ids(visible: str, count: int) -> list[str] | None:
    """The short ids an answer names, before its ``\\boxed{}`` or, failing that, after it; None if none."""
    valid = [str(i) for i in range(count)]
    start = visible.find("\\boxed{")
    if start < 0:
        return parse_id_list(visible, valid)[0] if visible.strip() else None
    head = visible[:start]
    ids = parse_id_list(head, valid)[0] if head.strip() else None
    if ids is None:
        depth, end = 0, None
        for j in range(start + len("\\boxed{") - 1, len(visible)):
            depth += {"{": 1, "}": -1}.get(visible[j], 0)
            if depth == 0:
                end = j + 1
                break
        tail = visible[end:] if end is not None else ""
        ids = parse_id_list(tail, valid)[0] if tail.strip() else None
    return ids


def answer_with_memories(
    trajectories: list[Trajectory],
    memories: list[list[MemoryHit]],
    backend: Any,
    params: SamplingParams,
    *,
    template: str,
    assistant_prefix: str,
    system_prompt: str,
    max_tokens: int,
    train: bool,
    trainable: bool,
    module: str,
    stop: list[str] | None = None,
    citations: Literal["ids", "text", "none"] = "ids",
) -> list[list[str]]:
    """One batched answer call; returns per trajectory the memory ids its answer named (cited).

    ``citations``: ``ids`` numbers the memories and reads the numbers the answer lists; ``text``
    shows them unnumbered and cites a memory when it holds every word of the answer; ``none``
    shows them unnumbered and cites nothing.
    """
    if not trajectories:
        return []
    if train:
        require_token_backend(backend)
    prompts = []
    for trajectory, hits in zip(trajectories, memories):
        text = template.format(memories=render_hits(hits, citations == "ids"), question=trajectory.sample.question)
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        prompts.append(ChatPrompt([*system, {"role": "user", "content": text}], assistant_prefix=assistant_prefix))
    call_params = replace(params, max_new_tokens=min(params.max_new_tokens, max_tokens))
    if stop is not None:
        call_params.stop = list(stop)
    generations = backend.generate(prompts, call_params)
    if len(generations) != len(prompts):
        raise RuntimeError(f"backend returned {len(generations)} generations for {len(prompts)} prompts")
    cited_all = []
    for trajectory, hits, prompt, generation in zip(trajectories, memories, prompts, generations):
        trajectory.calls.append(model_call(module, prompt, generation, train=train, trainable=trainable))
        trajectory.answer = prompt.assistant_prefix + generation.text
        visible, terminated = strip_thinking(trajectory.answer)
        if not terminated:
            trajectory.count("unterminated_think")
        cited: list[str] = []
        if citations == "ids" and hits:
            ids = cited_ids(visible, len(hits))
            if ids is None:
                trajectory.count("citations_unparsed")
            cited = [hits[int(i)].item.id for i in ids or []]
        elif citations == "text":
            cited = text_cited(visible, hits)
        trajectory.trace.append(
            {"kind": "answer", "answer": trajectory.answer, "cited": cited, "tokens": response_tokens(generation)}
        )
        cited_all.append(cited)
    return cited_all


def text_cited(visible: str, hits: list[MemoryHit]) -> list[str]:
    """Ids of the memories that contain every word of the answer (its citation by content)."""
    words = set(normalize_answer(extract_prediction(visible) or "").split())
    if not words:
        return []
    return [hit.item.id for hit in hits if words <= set(normalize_answer(hit.item.text).split())]


def bank_trace(store: MemoryStore, limit: int = 50) -> dict[str, Any]:
    items = store.all()
    return {
        "kind": "bank",
        "count": len(items),
        "memories": [{"id": m.id, "text": m.text, "tags": m.tags} for m in items[:limit]],
    }


# --------------------------------------------------------------------------- the agent


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
class MemoryR1Agent(Agent):
    options: MemoryR1Config

    def __init__(self, modules: dict[str, Any] | None = None, options: MemoryR1Config | None = None):
        modules = dict(modules or {})
        modules.setdefault("extractor", NaiveExtractor())
        modules.setdefault("updater", NaiveUpdater())
        modules.setdefault("retriever", NaiveRetriever())
        super().__init__(modules, options or MemoryR1Config())
        self.bank_cache = BankCache()

    @property
    def extractor(self) -> NaiveExtractor:
        return self.modules["extractor"]

    @property
    def updater(self) -> NaiveUpdater:
        return self.modules["updater"]

    @property
    def retriever(self) -> NaiveRetriever:
        return self.modules["retriever"]

    def run(
        self,
        samples: list[Sample],
        backend: Backend,
        *,
        params: SamplingParams,
        group_size: int = 1,
        train: bool = False,
    ) -> list[Trajectory]:
        if not check_run(samples, backend, group_size, train):
            return []
        mode = self.options.train
        own_banks = train and mode in ("manager", "both")
        answer_trains = train and mode in ("answer", "both")
        trajectories = group_trajectories(samples, group_size)
        turns = self.extractor.options.turns_per_call
        with BankFolder(self.options.embedder) as folder:
            if own_banks:
                self.bank_cache.clear()
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
            hits = self.retriever.generate([(bank, t.sample.question) for t, bank in zip(trajectories, banks)])
            for trajectory, found in zip(trajectories, hits):
                trajectory.trace.append(
                    {
                        "kind": "retrieved",
                        "query": trajectory.sample.question,
                        "memories": [{"id": h.item.id, "text": h.item.text, "score": round(h.score, 4)} for h in found],
                    }
                )
            answer_params = params
            if train and not answer_trains and self.options.frozen_answer_temperature is not None:
                answer_params = replace(params, temperature=self.options.frozen_answer_temperature)
            answer_with_memories(
                trajectories,
                hits,
                backend,
                answer_params,
                template=self.options.template,
                assistant_prefix=self.options.answer_prefix,
                system_prompt=self.options.system_prompt,
                max_tokens=self.options.answer_tokens,
                train=train,
                trainable=answer_trains,
                module="memory_r1.answer",
                stop=self.options.answer_stop,
                citations="ids" if self.options.distill else "none",
            )
            for trajectory, bank in zip(trajectories, banks):
                trajectory.trace.append(bank_trace(bank))
        return trajectories

    def shared_banks(
        self,
        samples: list[Sample],
        trajectories: list[Trajectory],
        folder: BankFolder,
        backend: Any,
        params: SamplingParams,
        *,
        train: bool = False,
    ) -> list[MemoryStore]:
        """One bank per conversation (non-trainable calls), shared by its samples and group members."""
        turns = self.extractor.options.turns_per_call

        def start(episode: Episode) -> None:
            episode.steps = episode_steps(episode.trajectory.sample, turns, self.options.facts)

        return conversation_banks(
            samples,
            trajectories,
            folder,
            backend,
            params,
            bank_cache=self.bank_cache,
            reuse=self.options.reuse_banks,
            embedder=self.options.embedder,
            start=start,
            extractor=self.extractor,
            updater=self.updater,
            train=train,
            build_temperature=self.options.frozen_manager_temperature if train else None,
        )
