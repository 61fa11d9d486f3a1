"""RMM agent on the tiny model: turn memories, retrieve -> rerank -> cite, which calls train, citation reward."""

from __future__ import annotations

import pytest

from memfactory.agents.banks import text_cited
from memfactory.agents.rmm import MemoryRMMAgent, RMMConfig, add_observations, add_turns
from memfactory.data.sources import load_locomo
from memfactory.envs.memory_bank import CitationBonus
from memfactory.memory.embed import get_embedder
from memfactory.memory.store import MemoryStore
from memfactory.modules.extractor import ExtractorConfig, NaiveExtractor
from memfactory.modules.reranker import RerankerConfig, RerankRetriever
from memfactory.modules.retriever import NaiveRetriever
from memfactory.modules.updater import NaiveUpdater, UpdaterConfig
from memfactory.text import strip_thinking
from memfactory.types import SamplingParams

PARAMS = SamplingParams(max_new_tokens=10, temperature=1.0)


@pytest.fixture(scope="module")
def samples():
    return load_locomo("synthetic://locomo?n=2&seed=1&sessions=3")


def _agent(**options) -> MemoryRMMAgent:
    modules = {"retriever": NaiveRetriever(), "reranker": RerankRetriever(RerankerConfig(top_n=5, top_m=2))}
    return MemoryRMMAgent(modules, RMMConfig(embedder="hashing", **options))


def test_add_turns_stores_every_turn_with_its_date(tmp_path, samples):
    store = MemoryStore(tmp_path / "b.db", embedder=get_embedder("hashing"))
    count = add_turns(store, samples[0])
    turns = [t for s in samples[0].meta["sessions"] for t in s["turns"]]
    assert count == len(turns) == store.count()
    first = store.all()[0]
    assert first.text == f"{turns[0]['speaker']}: {turns[0]['text']}"
    assert first.tags == [samples[0].meta["sessions"][0]["date_time"]] and first.key == turns[0]["dia_id"]


def test_add_observations_keys_each_fact_by_its_dialogue_id(tmp_path, samples, tiny_backend):
    store = MemoryStore(tmp_path / "b.db", embedder=get_embedder("hashing"))
    sessions = samples[0].meta["sessions"]
    observations = [(o, s["date_time"]) for s in sessions for o in s["observations"]]
    assert add_observations(store, samples[0]) == len(observations) == store.count()
    stored = {m.key: (m.text, m.tags) for m in store.all()}
    assert stored == {o["dia_id"]: (o["text"], [date]) for o, date in observations}
    (t,) = _agent(memory_source="observations").run(samples[:1], tiny_backend, params=PARAMS, train=True)
    built = next(e for e in t.trace if e["kind"] == "bank_built")
    assert built == {"kind": "bank_built", "source": "observations", "memories": len(observations)}
    candidates = next(e for e in t.trace if e["kind"] == "rerank")["candidates"]
    assert {c["text"] for c in candidates} <= {o["text"] for o, _ in observations}


def test_reranker_calls_train_and_the_bank_is_shared(tiny_backend, samples):
    batch = [samples[0], samples[9]]  # two conversations
    trajectories = _agent(memory_source="turns").run(batch, tiny_backend, params=PARAMS, group_size=3, train=True)
    assert [t.group for t in trajectories] == [0, 0, 0, 1, 1, 1]
    for t in trajectories:
        rerank, answer = t.calls
        assert rerank.module == "reranker.rerank" and rerank.trainable and rerank.response_ids
        assert answer.module == "rmm.answer" and not answer.trainable
        step = next(e for e in t.trace if e["kind"] == "rerank")
        assert len(step["candidates"]) == 5 and len(step["selected"]) <= 2
        assert set(step["selected"]) <= {c["id"] for c in step["candidates"]}
        assert t.counters["rerank_selected"] == len(step["selected"])
        assert 0 <= t.counters["rerank_cited"] <= t.counters["rerank_selected"]
    # Members of one sample see the same candidates (one shared bank, one retrieval).
    candidates = [
        tuple(c["id"] for c in next(e for e in t.trace if e["kind"] == "rerank")["candidates"]) for t in trajectories
    ]
    assert len(set(candidates[:3])) == 1 and len(set(candidates[3:])) == 1 and candidates[0] != candidates[3]


def test_answer_and_both_modes(tiny_backend, samples):
    (t,) = _agent(memory_source="turns", train="answer").run(samples[:1], tiny_backend, params=PARAMS, train=True)
    assert [c.trainable for c in t.calls] == [False, True]
    (t,) = _agent(memory_source="turns", train="both").run(samples[:1], tiny_backend, params=PARAMS, train=True)
    assert [c.trainable for c in t.calls] == [True, True]


def test_reflect_builds_the_bank_with_untrained_manager_calls(tiny_backend, samples):
    agent = MemoryRMMAgent(
        {
            "retriever": NaiveRetriever(),
            "reranker": RerankRetriever(RerankerConfig(top_n=3, top_m=1)),
            "extractor": NaiveExtractor(ExtractorConfig(turns_per_call=20, max_tokens=8, fallback="lines")),
            "updater": NaiveUpdater(UpdaterConfig(max_tokens=8, fallback="add")),
        },
        RMMConfig(embedder="hashing", memory_source="reflect"),
    )
    trajectories = agent.run(samples[:1], tiny_backend, params=PARAMS, group_size=2, train=True)
    sessions = len(samples[0].meta["sessions"])
    for t in trajectories:
        modules = [c.module for c in t.calls]
        assert modules.count("extractor.extract") == sessions
        assert [c.trainable for c in t.calls if c.module != "reranker.rerank"] == [False] * (len(t.calls) - 1)
        assert next(e for e in t.trace if e["kind"] == "bank")["count"] > 0


def test_citation_counts_selected_memories_that_the_answer_cites(tiny_backend, samples):
    # The answer prefix cites the first selected memory, so every readable answer cites exactly one.
    agent = _agent(memory_source="turns", answer_prefix="[0] \\boxed{")
    trajectories = agent.run(samples[:2], tiny_backend, params=PARAMS, group_size=2, train=True)
    scores = CitationBonus().score(trajectories)
    readable = 0
    for t, score in zip(trajectories, scores):
        selected = t.counters["rerank_selected"]
        if not strip_thinking(t.answer)[1]:
            continue  # the random model opened a think block it never closed: nothing is visible
        readable += 1
        assert t.counters["rerank_cited"] == (1 if selected else 0)
        assert score == pytest.approx(1 / selected if selected else 0.0)
    assert readable


def test_text_citations_cite_the_memories_holding_the_answer(tmp_path, tiny_backend, samples):
    store = MemoryStore(tmp_path / "b.db", embedder=get_embedder("hashing"))
    add_observations(store, samples[0])
    hits = store.search("where does she live", k=store.count())
    holder = hits[0].item
    word = holder.text.split()[-1].rstrip(".")
    expected = [h.item.id for h in hits if word.lower() in h.item.text.lower().replace(".", " ").split()]
    assert text_cited(f"\\boxed{{{word}}}", hits) == expected and holder.id in expected
    assert text_cited("\\boxed{no such words here}", hits) == [] and text_cited("\\boxed{}", hits) == []
    # With text citations the answer sees unnumbered memories, and only selected memories can be cited.
    agent = _agent(memory_source="observations", citations="text", train="both")
    trajectories = agent.run(samples[:1], tiny_backend, params=PARAMS, group_size=2, train=True)
    for t in trajectories:
        answer_call = t.calls[-1]
        assert answer_call.module == "rmm.answer" and answer_call.trainable
        assert "[0]" not in answer_call.prompt_text and "\n- " in answer_call.prompt_text
        cited = set(next(e for e in t.trace if e["kind"] == "answer")["cited"])
        selected = set(next(e for e in t.trace if e["kind"] == "rerank")["selected"])
        assert cited <= selected and t.counters["rerank_cited"] == len(cited)


def test_turn_operations_are_one_add_per_turn():
    from memfactory.agents.rmm import turn_operations

    ops = turn_operations([{"date_time": "May 1", "turns": [{"speaker": "A", "text": "hi", "dia_id": "D1:1"},
                                                            {"speaker": "B", "text": "there"}]}])
    assert [(o.op, o.text, o.key, o.tags) for o in ops] == [("ADD", "A: hi", "D1:1", ["May 1"]),
                                                             ("ADD", "B: there", None, ["May 1"])]


def test_respond_answers_from_a_given_bank_and_traces_the_candidates_scores(tmp_path, tiny_backend):
    """The per-question half of RMM on its own (what the Chat tab calls): retrieve, rerank, answer, cite."""
    from memfactory.types import Sample, Trajectory

    store = MemoryStore(tmp_path / "b.db", embedder=get_embedder("hashing"))
    store.add_many(["Ben keeps bees", "Ava lives in Berlin", "Carl drives trucks"])
    agent = _agent(citations="ids")
    trajectory = Trajectory(Sample("q", "Where does Ava live?", []))
    agent.respond([trajectory.sample], [trajectory], [store], tiny_backend,
                  SamplingParams(max_new_tokens=8, temperature=0.0), group_size=1, train=False)
    rerank = next(e for e in trajectory.trace if e["kind"] == "rerank")
    assert {c["text"] for c in rerank["candidates"]} == {m.text for m in store.all()}
    assert all(isinstance(c["score"], float) for c in rerank["candidates"])
    scores = [c["score"] for c in rerank["candidates"]]
    assert scores == sorted(scores, reverse=True) and rerank["candidates"][0]["text"] == "Ava lives in Berlin"
    answer = trajectory.trace[-1]
    assert answer["kind"] == "answer" and trajectory.answer is not None and "cited" in answer
    assert [c.module for c in trajectory.calls] == ["reranker.rerank", "rmm.answer"]
    assert not any(c.trainable for c in trajectory.calls)  # inference: nothing is marked for training
    store.close()
