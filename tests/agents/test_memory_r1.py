"""Memory-R1 agent on the tiny model: which calls train, per-member banks, shared banks, trace, cleanup."""

from __future__ import annotations

import glob
import os
import tempfile

import pytest

from memfactory.agents.banks import episode_steps
from memfactory.agents.memory_r1 import MemoryR1Agent, MemoryR1Config
from memfactory.data.sources import load_locomo
from memfactory.errors import MemFactoryError
from memfactory.modules.extractor import ExtractorConfig, NaiveExtractor
from memfactory.modules.retriever import NaiveRetriever, RetrieverConfig
from memfactory.modules.updater import NaiveUpdater, UpdaterConfig
from memfactory.types import Sample, SamplingParams

PARAMS = SamplingParams(max_new_tokens=10, temperature=1.0)


@pytest.fixture(scope="module")
def samples():
    return load_locomo("synthetic://locomo?n=1&seed=3&sessions=3")[:2]


def _agent(mode: str, **extra) -> MemoryR1Agent:
    # Fallbacks make a random model's output land in the bank, so bank contents are observable.
    modules = {
        "extractor": NaiveExtractor(ExtractorConfig(turns_per_call=8, max_tokens=10, fallback="lines")),
        "updater": NaiveUpdater(UpdaterConfig(max_tokens=10, fallback="add")),
        "retriever": NaiveRetriever(RetrieverConfig(top_k=4)),
    }
    return MemoryR1Agent(modules, MemoryR1Config(train=mode, embedder="hashing", **extra))


def _banks_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "memfactory-banks-*")))


@pytest.mark.parametrize(
    ("mode", "manager_trains", "answer_trains"),
    [("manager", True, False), ("answer", False, True), ("both", True, True)],
)
def test_train_modes_mark_the_right_calls(tiny_backend, samples, mode, manager_trains, answer_trains, tmp_path,
                                         monkeypatch):
    # a temp folder of this test's own: other test workers make and remove their banks in the shared one
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    trajectories = _agent(mode).run(samples, tiny_backend, params=PARAMS, group_size=2, train=True)
    assert _banks_dirs() == set()  # temporary banks are removed
    assert [t.group for t in trajectories] == [0, 0, 1, 1]
    steps = len(episode_steps(samples[0], 8))
    for t in trajectories:
        manager = [c for c in t.calls if c.module in ("extractor.extract", "updater.update")]
        (answer,) = [c for c in t.calls if c.module == "memory_r1.answer"]
        assert len([c for c in manager if c.module == "extractor.extract"]) == steps
        assert all(c.trainable == manager_trains for c in manager)
        assert answer.trainable == answer_trains and answer.response_ids and answer.logprobs
        kinds = [e["kind"] for e in t.trace]
        assert kinds[-3:] == ["retrieved", "answer", "bank"]
        assert t.counters["extract_calls"] == steps
        assert t.answer


def test_each_member_builds_its_own_bank(tiny_backend, samples):
    trajectories = _agent("manager").run(samples[:1], tiny_backend, params=PARAMS, group_size=3, train=True)
    banks = []
    for t in trajectories:
        added = {e["new"] for e in t.trace if e["kind"] == "op" and e["op"] == "ADD"}
        bank = next(e for e in t.trace if e["kind"] == "bank")
        texts = {m["text"] for m in bank["memories"]}
        assert texts and texts <= added  # only this member's own ADDs are in its bank
        banks.append(frozenset(texts))
    assert len(set(banks)) > 1  # sampled managers built different banks


def test_shared_bank_in_answer_mode_and_inference(tiny_backend, samples):
    trajectories = _agent("answer").run(samples, tiny_backend, params=PARAMS, group_size=2, train=True)
    banks = {tuple(m["id"] for m in next(e for e in t.trace if e["kind"] == "bank")["memories"]) for t in trajectories}
    assert len(banks) == 1  # both questions of the conversation, all members: one bank
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    first = _agent("manager").run(samples[:1], tiny_backend, params=greedy, group_size=1, train=False)
    again = _agent("manager").run(samples[:1], tiny_backend, params=greedy, group_size=1, train=False)
    assert first[0].answer == again[0].answer
    assert not any(c.trainable for c in first[0].calls)
    retrieved = next(e for e in first[0].trace if e["kind"] == "retrieved")
    assert len(retrieved["memories"]) <= 4 and retrieved["query"] == samples[0].question


def test_distilled_ids_come_from_the_answer(tiny_backend, samples):
    agent = _agent("answer", answer_prefix="[0] \\boxed{", distill=True)
    # Greedy: a sampled continuation may emit "</think>", which (rightly) hides the prefix.
    greedy = SamplingParams(max_new_tokens=10, temperature=0.0)
    (t,) = agent.run(samples[:1], tiny_backend, params=greedy, group_size=1, train=False)
    retrieved = next(e for e in t.trace if e["kind"] == "retrieved")["memories"]
    answer = next(e for e in t.trace if e["kind"] == "answer")
    assert t.answer.startswith("[0] \\boxed{")
    assert answer["cited"] == ([retrieved[0]["id"]] if retrieved else [])


def test_template_is_checked():
    with pytest.raises(ValueError, match="memories"):
        MemoryR1Config(answer_template="{question} only")


def test_inference_reuses_conversation_banks_until_training(tiny_backend, samples):
    agent = _agent("answer")
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)

    def bank_ids(trajectories):
        return [
            tuple(m["id"] for m in next(e for e in t.trace if e["kind"] == "bank")["memories"]) for t in trajectories
        ]

    first = bank_ids(agent.run(samples[:1], tiny_backend, params=greedy, train=False))
    second = bank_ids(agent.run(samples[1:2], tiny_backend, params=greedy, train=False))  # same conversation
    assert first == second and first[0]  # the same bank (same memory ids), not a replay
    assert len(agent.bank_cache.episodes) == 1
    other = bank_ids(agent.run(samples[:1], tiny_backend, params=SamplingParams(max_new_tokens=6), train=False))
    assert other != first  # other sampling settings: rebuilt
    agent.run(samples[:1], tiny_backend, params=PARAMS, group_size=2, train=True)
    assert agent.bank_cache.episodes == {} and agent.bank_cache.folder is None


def test_plain_answers_see_unnumbered_memories(tiny_backend, samples):
    (t,) = _agent("answer", distill=False).run(samples[:1], tiny_backend, params=PARAMS, train=False)
    answer_call = t.calls[-1]
    retrieved = next(e for e in t.trace if e["kind"] == "retrieved")["memories"]
    assert retrieved and f"- {retrieved[0]['text']}" in answer_call.prompt_text and "[0]" not in answer_call.prompt_text
    assert next(e for e in t.trace if e["kind"] == "answer")["cited"] == []


def test_observation_facts_skip_the_extractor(tiny_backend, samples):
    sessions = samples[0].meta["sessions"]
    steps = episode_steps(samples[0], 8, "observations")
    assert [s.session for s in steps] == [s["session"] for s in sessions if s["observations"]]
    assert [f.value for f in steps[0].facts] == [o["text"] for o in sessions[0]["observations"]]
    trajectories = _agent("manager", facts="observations").run(
        samples[:1], tiny_backend, params=PARAMS, group_size=2, train=True
    )
    observed = {o["text"] for s in sessions for o in s["observations"]}
    for t in trajectories:
        modules = [c.module for c in t.calls]
        assert "extractor.extract" not in modules and modules.count("updater.update") == len(steps)
        given = [e for e in t.trace if e["kind"] == "facts"]
        assert [e["source"] for e in given] == ["observations"] * len(steps)
        bank = next(e for e in t.trace if e["kind"] == "bank")
        assert {m["text"] for m in bank["memories"]} & observed  # the updater's fallback ADDs the given facts


def test_observation_facts_need_observations(tiny_backend):
    plain = Sample("p", "Where?", ["home"], context="A: I live at home")
    with pytest.raises(MemFactoryError, match="no LoCoMo observations"):
        _agent("manager", facts="observations").run([plain], tiny_backend, params=PARAMS, train=True)


def test_respond_retrieves_with_scores_and_answers_from_a_given_bank(tmp_path, tiny_backend):
    """The answer agent on its own (what the Chat tab calls after a turn's memory update)."""
    from memfactory.memory.embed import get_embedder
    from memfactory.memory.store import MemoryStore
    from memfactory.types import Trajectory

    store = MemoryStore(tmp_path / "b.db", embedder=get_embedder("hashing"))
    store.add_many(["Ava lives in Berlin", "Ben keeps bees"])
    trajectory = Trajectory(Sample("q", "Where does Ava live?", []))
    _agent("manager").respond([trajectory.sample], [trajectory], [store], tiny_backend,
                              SamplingParams(max_new_tokens=8, temperature=0.0), group_size=1, train=False)
    retrieved = next(e for e in trajectory.trace if e["kind"] == "retrieved")
    assert retrieved["query"] == "Where does Ava live?"
    assert retrieved["memories"][0]["text"] == "Ava lives in Berlin"
    assert retrieved["memories"][0]["score"] >= retrieved["memories"][1]["score"]
    assert [c.module for c in trajectory.calls] == ["memory_r1.answer"] and trajectory.answer is not None
    assert store.count() == 2  # answering never writes the bank
    store.close()
