"""Extractor, updater, retriever and reranker modules on a real tiny model and a real SQLite bank."""

from __future__ import annotations

import pytest

from memfactory.memory.embed import get_embedder
from memfactory.memory.ops import Operation
from memfactory.memory.store import MemoryStore
from memfactory.modules.extractor import ExtractorConfig, ExtractRequest, NaiveExtractor
from memfactory.modules.memory_ops import Fact
from memfactory.modules.reranker import RerankerConfig, RerankRequest, RerankRetriever
from memfactory.modules.retriever import NaiveRetriever, RetrieverConfig
from memfactory.modules.updater import NaiveUpdater, UpdaterConfig, UpdateRequest
from memfactory.types import Generation, Sample, SamplingParams, Trajectory

PARAMS = SamplingParams(max_new_tokens=12, temperature=1.0, seed=0)


def _trajectory() -> Trajectory:
    return Trajectory(sample=Sample("s", "q?", ["a"]))


def _bank(tmp_path, name="bank.db") -> MemoryStore:
    store = MemoryStore(tmp_path / name, embedder=get_embedder("hashing"))
    store.apply(
        [
            Operation("ADD", id="m0", text="Ava lives in Tholand"),
            Operation("ADD", id="m1", text="Ben has a cat called Pepper"),
            Operation("ADD", id="m2", text="Ava likes tacos"),
        ]
    )
    return store


def test_extractor_records_trainable_calls_with_token_ids(tiny_backend):
    extractor = NaiveExtractor(ExtractorConfig(max_tokens=8, assistant_prefix="["))
    requests = [
        ExtractRequest(_trajectory(), "Ava: I moved to Brevik.", "8 May 2023", {"session": 1}) for _ in range(3)
    ]
    results = extractor.rollout(requests, tiny_backend, PARAMS)
    assert len(results) == 3
    for request in requests:
        (call,) = request.trajectory.calls
        assert call.module == "extractor.extract" and call.trainable
        assert 0 < len(call.response_ids) <= 8 and len(call.logprobs) == len(call.response_ids)
        assert "Brevik" in call.prompt_text and "8 May 2023" in call.prompt_text
        assert request.trajectory.counters["extract_calls"] == 1
        assert request.trajectory.trace[-1]["kind"] == "extract" and request.trajectory.trace[-1]["session"] == 1
    inferred = extractor.inference([ExtractRequest(_trajectory(), "Ben: hi", "")], tiny_backend, PARAMS)
    assert len(inferred) == 1


def test_extractor_template_is_checked():
    with pytest.raises(ValueError, match="dialogue"):
        ExtractorConfig(template="no placeholder")
    with pytest.raises(ValueError, match="unknown placeholder"):
        ExtractorConfig(template="{dialogue} {oops}")


def test_updater_applies_parsed_ops_atomically_and_traces_them(tmp_path):
    store = _bank(tmp_path)
    updater = NaiveUpdater(UpdaterConfig())
    related = [store.get("m0"), store.get("m1")]
    request = UpdateRequest(
        _trajectory(), store, [Fact("Ava moved to Brevik")], related, date="8 May 2023", trace={"step": 3}
    )
    prompt = updater.prompt(request)
    assert '"id": "0"' in prompt.messages[-1]["content"] and "Ava moved to Brevik" in prompt.messages[-1]["content"]
    text = """Here you go:
```json
[{"op": "UPDATE", "id": "0", "text": "Ava lives in Brevik"}, {"op": "DELETE", "id": "1"}, {"op": "DELETE", "id": "5"}, {"op": "ADD", "text": "Ava moved in May"},]
```"""
    out = updater.apply_response(request, prompt, Generation(text=text), train=False)
    assert out.result.ok and out.report.parsed and out.report.repaired
    assert store.get("m0").text == "Ava lives in Brevik" and store.get("m1") is None
    added = store.get(out.result.added[0])
    assert added.text == "Ava moved in May" and added.tags == ["8 May 2023"]
    counters = request.trajectory.counters
    assert counters["update_parsed"] == 1 and counters["unknown_memory_id"] == 1 and counters["op_none"] == 1
    ops = [e for e in request.trajectory.trace if e["kind"] == "op"]
    assert [(e["op"], e["old"], e["new"]) for e in ops] == [
        ("UPDATE", "Ava lives in Tholand", "Ava lives in Brevik"),
        ("DELETE", "Ben has a cat called Pepper", None),
        ("ADD", None, "Ava moved in May"),
    ]
    assert all(e["step"] == 3 for e in ops)


def test_updater_fallback_and_garbage(tmp_path, tiny_backend):
    store = _bank(tmp_path)
    facts = [Fact("Ava adopted a dog"), Fact("Ben sold the car")]
    none = NaiveUpdater(UpdaterConfig())
    before = [m.to_dict() for m in store.all()]
    req = UpdateRequest(_trajectory(), store, facts, none.related(store, facts))
    none.apply_response(req, none.prompt(req), Generation(text="I think we should add them"), train=False)
    assert [m.to_dict() for m in store.all()] == before and req.trajectory.counters["update_parsed"] == 0
    add = NaiveUpdater(UpdaterConfig(fallback="add"))
    req = UpdateRequest(_trajectory(), store, facts, [])
    add.apply_response(req, add.prompt(req), Generation(text="garbage"), train=False)
    assert store.count() == 5 and req.trajectory.counters["update_fallback"] == 1
    # The batched path with a real model: whatever it writes, the bank stays consistent.
    requests = [UpdateRequest(_trajectory(), store, facts, none.related(store, facts)) for _ in range(2)]
    results = none.rollout(requests, tiny_backend, PARAMS)
    assert all(r.result.ok for r in results)
    assert all(req.trajectory.calls[0].trainable and req.trajectory.calls[0].response_ids for req in requests)
    assert store.count() == 5 + sum(len(r.result.added) - len(r.result.deleted) for r in results)


def test_updater_related_finds_nearby_memories(tmp_path):
    store = _bank(tmp_path)
    updater = NaiveUpdater(UpdaterConfig(related_k=1))
    related = updater.related(store, [Fact("Ava lives in Brevik now"), Fact("Ben's cat Pepper")])
    assert [m.id for m in related] == ["m0", "m1"]
    assert updater.related(MemoryStore(tmp_path / "empty.db", embedder=get_embedder("hashing")), [Fact("x")]) == []


def test_retriever_is_semantic_with_minilm(tmp_path):
    store = MemoryStore(tmp_path / "minilm.db", embedder=get_embedder("minilm"))
    store.apply(
        [
            Operation("ADD", id="hike", text="Ava spends her weekends walking in the mountains"),
            Operation("ADD", id="food", text="Ben cooks spicy curry every Friday"),
            Operation("ADD", id="job", text="Ava works as a nurse at the city hospital"),
        ]
    )
    retriever = NaiveRetriever(RetrieverConfig(top_k=1))
    # No word in common with the answer memory: only a semantic embedder finds it.
    hits = retriever.generate([(store, "Which outdoor hobby does she enjoy?"), (store, "What is his favourite dish?")])
    assert [h[0].item.id for h in hits] == ["hike", "food"]
    assert retriever.retrieve(store, []) == []


def test_reranker_selects_from_candidates_or_falls_back(tmp_path, tiny_backend):
    store = _bank(tmp_path)
    hits = store.search("Where does Ava live?", k=3)
    reranker = RerankRetriever(RerankerConfig(top_n=3, top_m=2, assistant_prefix="["))
    requests = [RerankRequest(_trajectory(), "Where does Ava live?", hits) for _ in range(3)]
    requests.append(RerankRequest(_trajectory(), "Nothing retrieved?", []))
    selected = reranker.rollout(requests, tiny_backend, PARAMS)
    for request, chosen in zip(requests[:3], selected[:3]):
        assert 0 <= len(chosen) <= 2 and {h.item.id for h in chosen} <= {h.item.id for h in hits}
        (call,) = request.trajectory.calls
        assert call.module == "reranker.rerank" and call.trainable and call.response_ids
        counters = request.trajectory.counters
        assert counters["rerank_calls"] == 1 and counters["rerank_selected"] == len(chosen)
        assert counters.get("rerank_parsed", 0) + counters.get("rerank_fallback", 0) == 1
        if counters.get("rerank_fallback"):
            assert [h.item.id for h in chosen] == [h.item.id for h in hits[:2]]
    assert selected[3] == [] and requests[3].trajectory.calls == []
    # A parseable answer picks and orders.
    prompt = reranker.prompt(requests[0])
    assert "[2]" in prompt.messages[-1]["content"]


def test_add_if_empty_fills_the_bank_only_when_nothing_applies(tmp_path):
    store = _bank(tmp_path)
    updater = NaiveUpdater(UpdaterConfig(fallback="add_if_empty"))
    idle = UpdateRequest(_trajectory(), store, [Fact("Ava rows on Sundays")], [store.get("m0")])
    updater.apply_response(
        idle, updater.prompt(idle), Generation(text='[{"op": "UPDATE", "id": "9", "text": "x"}]'), train=False
    )
    assert store.count() == 4 and any(m.text == "Ava rows on Sundays" for m in store.all())
    assert idle.trajectory.counters["update_fallback"] == 1 and idle.trajectory.counters["unknown_memory_id"] == 1
    acting = UpdateRequest(_trajectory(), store, [Fact("Ava left Tholand")], [store.get("m0")])
    updater.apply_response(
        acting, updater.prompt(acting), Generation(text='[{"op": "DELETE", "id": "0"}]'), train=False
    )
    assert store.count() == 3 and store.get("m0") is None and "update_fallback" not in acting.trajectory.counters
