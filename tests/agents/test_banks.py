"""The bank library shared by Memory-R1 and RMM: cutting a conversation into steps, reading citations,
and the banks a run makes (kept between inference calls, removed afterwards)."""

from __future__ import annotations

import os

import pytest

from memfactory.agents.banks import BankCache, BankFolder, cited_ids, episode_steps
from memfactory.data.sources import load_locomo
from memfactory.errors import MemFactoryError
from memfactory.types import Sample, SamplingParams


@pytest.fixture(scope="module")
def samples():
    return load_locomo("synthetic://locomo?n=1&seed=3&sessions=3")[:2]


def test_episode_steps_follow_sessions(samples):
    steps = episode_steps(samples[0], 3)
    sessions = samples[0].meta["sessions"]
    assert len(steps) == sum(-(-len(s["turns"]) // 3) for s in sessions)
    assert steps[0].date == sessions[0]["date_time"] and steps[0].dialogue.count("\n") == 2
    plain = episode_steps(Sample("p", "q", ["a"], context="A: one\n\nB: two\nA: three"), 2)
    assert [s.dialogue for s in plain] == ["A: one\nB: two", "A: three"]


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("[0, 2] \\boxed{Brevik}", ["0", "2"]),
        ("\\boxed{Brevik} [1]", ["1"]),
        ("\\boxed{a{b}} I used 2 and 0", ["2", "0"]),
        ("\\boxed{Brevik}", None),
        ("\\boxed{unclosed [1]", None),
        ("[1]", ["1"]),
    ],
)
def test_citations_before_or_after_the_boxed_answer(text, ids):
    assert cited_ids(text, 3) == ids


def test_observation_steps_carry_the_annotated_facts(samples):
    steps = episode_steps(samples[0], 8, "observations")
    sessions = samples[0].meta["sessions"]
    assert len(steps) == sum(1 for s in sessions if s["observations"])
    assert all(step.facts and step.dialogue == "" for step in steps)
    assert {f.type for step in steps for f in step.facts} == {"observation"}
    with pytest.raises(MemFactoryError, match="no LoCoMo observations"):
        episode_steps(Sample("p", "q", ["a"], context="A: hi"), 8, "observations")


def test_a_bank_folder_removes_its_banks_and_the_cache_keys_on_the_sampling(tmp_path):
    with BankFolder("hashing") as folder:
        bank = folder.new()
        bank.add("Ava keeps bees")
        copy = folder.snapshot(bank)
        copy.add("only in the copy")
        assert (bank.count(), copy.count()) == (1, 2)
        paths = [bank.path, copy.path]
    assert not any(os.path.exists(p) for p in paths)
    cache = BankCache()
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    first = cache.prepare(object, greedy, "hashing")
    assert cache.prepare(object, greedy, "hashing") is first  # same backend and sampling: kept
    assert cache.prepare(object, SamplingParams(max_new_tokens=8, temperature=1.0), "hashing") is not first
    cache.clear()
    assert cache.folder is None and cache.episodes == {}


def test_step_updates_extracts_one_step_and_asks_the_updater_with_related_memories(tmp_path, tiny_backend):
    """The first half of a bank step, as build_banks and the Chat tab run it: facts, then update requests
    carrying the memories related to them (the store is not changed yet)."""
    from memfactory.agents.banks import Episode, Step, step_updates
    from memfactory.memory.embed import get_embedder
    from memfactory.memory.store import MemoryStore
    from memfactory.modules.extractor import ExtractorConfig, NaiveExtractor
    from memfactory.modules.memory_ops import Fact
    from memfactory.modules.updater import NaiveUpdater
    from memfactory.types import Trajectory

    store = MemoryStore(tmp_path / "b.db", embedder=get_embedder("hashing"))
    store.add("Ava lives in Paris")
    extracted = Episode(Trajectory(Sample("e", "q", [])), store, [Step(1, "May 1", "Ava: I moved to Berlin")])
    given = Episode(Trajectory(Sample("g", "q", [])), store, [Step(2, "", "", [Fact("Ava lives in Berlin")])])
    extractor = NaiveExtractor(ExtractorConfig(max_tokens=8, fallback="lines"))
    requests = step_updates([extracted, given], extractor, NaiveUpdater(), tiny_backend,
                            SamplingParams(max_new_tokens=8, temperature=0.0), train=False)
    assert extracted.trajectory.trace[0]["kind"] == "extract" and extracted.trajectory.calls  # one extraction call
    assert given.trajectory.trace[0]["kind"] == "facts" and not given.trajectory.calls  # given facts: no call
    mine = [r for r in requests if r.trajectory is given.trajectory]
    assert len(mine) == 1 and [f.text for f in mine[0].facts] == ["Ava lives in Berlin"]
    assert [m.text for m in mine[0].related] == ["Ava lives in Paris"] and mine[0].trace["session"] == 2
    assert store.count() == 1  # nothing applied yet: that is the updater's half
    store.close()
