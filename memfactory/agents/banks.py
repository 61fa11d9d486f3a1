"""The memory-bank library shared by the bank agents (Memory-R1, RMM): episodes, bank building and
caching, answering with memories.

* Replaying a conversation: ``episode_steps`` cuts a sample into extraction steps (LoCoMo sessions,
  the context's lines, or LoCoMo's annotated observations); ``build_banks`` replays every episode of
  a batch into its bank with one extractor and one updater call per step index.
* Banks: ``BankFolder`` keeps a run's SQLite banks in a temporary folder; ``BankCache`` keeps
  conversation banks between inference calls; ``conversation_banks`` gives each trajectory the
  (shared) bank of its conversation.
* Answering: ``answer_with_memories`` makes one batched answer call and reads what it cites
  (``cited_ids`` by number, ``text_cited`` by content); ``bank_trace`` is the UI's view of a bank.

The agents' common frame on top of this library is ``agents/bank_agent.py``.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from memfactory.calls import model_call, require_token_backend, response_tokens
from memfactory.envs.answer_metrics import extract_prediction, normalize_answer
from memfactory.errors import MemFactoryError
from memfactory.memory.embed import get_embedder
from memfactory.memory.records import MemoryHit
from memfactory.memory.store import MemoryStore
from memfactory.modules.extractor import ExtractRequest, NaiveExtractor
from memfactory.modules.memory_ops import Fact, parse_id_list
from memfactory.modules.updater import NaiveUpdater, UpdateRequest
from memfactory.text import chunk_sequence, context_of, strip_thinking
from memfactory.types import ChatPrompt, Sample, SamplingParams, Trajectory

ANSWER_TEMPLATE = """Memories from earlier conversations:
{memories}

Question: {question}

First write the ids of the memories that answer the question as a JSON list, e.g. [0, 2]. Then give a short final answer in \\boxed{{}}."""


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


def step_updates(
    live: list[Episode],
    extractor: NaiveExtractor,
    updater: NaiveUpdater,
    backend: Any,
    params: SamplingParams,
    *,
    train: bool,
    trainable: bool = True,
) -> list[UpdateRequest]:
    """The first half of one step of every episode in ``live``: its facts (one batched extraction call
    for the steps that carry none), then one update request per step that found facts, with the related
    memories the updater will see. ``build_banks`` hands them to the updater; the Chat tab does the same
    for one turn, so a chat turn goes through the pipeline training and evaluation use."""
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
    return updates


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
        updates = step_updates(live, extractor, updater, backend, params, train=train, trainable=trainable)
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
