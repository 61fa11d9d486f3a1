"""The seeded generators: exact schemas, determinism, answerability, RULER fwe semantics."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from memfactory.data.memagent import records_to_samples
from memfactory.data.sources import load_samples
from memfactory.data.synth import FWE_ANSWER_PREFIX, approx_tokens, gen_fwe, synth_dataset, write_json

HOTPOT_KEYS = {"context", "input", "answers", "num_docs", "index"}
RULER_KEYS = {"index", "input", "context", "outputs", "answer_prefix", "length"}


def docs_of(context: str) -> list[tuple[int, str, str]]:
    """(number, title, text) of each "Document i:\\n{title}\\n{text}" block."""
    out = []
    for block in context.split("\n\n"):
        head, title, text = block.split("\n", 2)
        out.append((int(re.fullmatch(r"Document (\d+):", head).group(1)), title, text))
    return out


def test_hotpotqa_schema_and_document_layout():
    records = synth_dataset("hotpotqa", 12, seed=3, docs=9)
    assert len(records) == 12
    for i, r in enumerate(records):
        assert set(r) == HOTPOT_KEYS and r["index"] == i and r["num_docs"] == 9
        docs = docs_of(r["context"])
        assert [d[0] for d in docs] == list(range(1, 10))
        assert len({d[1] for d in docs}) == 9  # distinct documents
        assert isinstance(r["answers"], list) and len(r["answers"]) == 1


def test_hotpotqa_needs_two_documents_linked_by_a_bridge():
    for r in synth_dataset("hotpotqa", 40, seed=1, docs=12):
        docs = docs_of(r["context"])
        answer = r["answers"][0]
        # the question names the first entity; its document names the bridge entity
        first = [d for d in docs if d[1] in r["input"]]
        assert len(first) == 1, r["input"]
        bridge = [d for d in docs if d[1] != first[0][1] and d[1] in first[0][2]]
        # the answer is stated in a bridge document and not in the first entity's document
        assert any(answer in d[2] for d in bridge), (r["input"], answer)
        assert answer not in first[0][2]


def test_hotpotqa_same_questions_at_every_size_and_deterministic():
    small = synth_dataset("hotpotqa", 8, seed=5, docs=10)
    large = synth_dataset("hotpotqa", 8, seed=5, docs=300)
    assert [(r["input"], r["answers"]) for r in small] == [(r["input"], r["answers"]) for r in large]
    assert all(len(docs_of(r["context"])) == 300 for r in large)
    assert synth_dataset("hotpotqa", 8, seed=5, docs=10) == small
    assert synth_dataset("hotpotqa", 8, seed=6, docs=10) != small


def test_hotpotqa_default_size_and_length():
    records = synth_dataset("hotpotqa", 128, seed=0, docs=50)
    assert len(records) == 128
    tokens = approx_tokens(records[0]["context"])
    assert 3000 < tokens < 12000  # same order as MemAgent's eval_50 (~7K tokens)
    assert len({r["input"] for r in records}) > 100


def test_fwe_follows_ruler():
    [r] = gen_fwe(n=1, seed=2, length=2048)
    assert set(r) == RULER_KEYS and r["answer_prefix"] == FWE_ANSWER_PREFIX
    counts = Counter(r["context"].split())
    ranked = [w for w, _ in counts.most_common()]
    assert ranked[0] == "...."  # the most frequent word is the noise
    assert r["outputs"] == ranked[1:4]
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in ranked[1:])
    assert len(ranked) - 1 <= 2048 // 50  # vocabulary of len // 50 words
    # Zipf alpha 2: the k-th word appears ~1/k^2 as often as the first
    assert counts[ranked[1]] / counts[ranked[0]] == pytest.approx(0.25, abs=0.02)
    assert "three most frequently appeared" in r["input"] and "'....'" in r["input"]


def test_fwe_reaches_the_target_length_under_a_tokenizer():
    def words(text: str) -> int:
        return len(text.split())

    [r] = gen_fwe(n=1, seed=0, length=500, tokenizer=words)
    assert r["length"] == words(r["context"]) <= 500
    assert r["length"] >= 490  # grown until the next step would not fit
    [d] = gen_fwe(n=1, seed=0, length=1024)
    assert 1000 <= approx_tokens(d["context"]) <= 1024 == max(1024, d["length"])


def test_fwe_with_a_real_hf_tokenizer(tiny_backend):
    tokenizer = tiny_backend.tokenizer
    [r] = gen_fwe(n=1, seed=0, length=300, tokenizer=tokenizer)
    n = len(tokenizer.encode(r["context"], add_special_tokens=False))
    assert n == r["length"] and 280 <= n <= 300


def test_docqa_is_short_and_answerable():
    records = synth_dataset("docqa", 200, seed=0)
    assert len({r["input"] for r in records}) > 50
    for r in records:
        assert set(r) == HOTPOT_KEYS
        lines = r["context"].split("\n")
        assert 3 <= len(lines) <= 6 == max(6, r["num_docs"]) and len(lines) == r["num_docs"]
        assert all(re.fullmatch(rf"Document {i}: .+", line) for i, line in enumerate(lines, 1))
        answer = r["answers"][0]
        assert len(answer.split()) <= 2
        person = re.search(r"(?:is |does |old is )?([A-Z][a-z]+)(?:'s| live| have|\?)", r["input"]).group(1)
        mine = [
            line
            for line in lines
            if f" {person} " in f" {line.split(': ', 1)[1]} " or line.split(": ", 1)[1].startswith(person)
        ]
        assert len(mine) == 1 and answer in mine[0], (r, person)


def test_synth_records_load_and_write(tmp_path):
    for kind, kw in [("hotpotqa", {"docs": 5}), ("fwe", {"length": 256}), ("docqa", {})]:
        records = synth_dataset(kind, 4, seed=0, **kw)
        for suffix in (".json", ".jsonl"):
            path = write_json(records, tmp_path / f"{kind}{suffix}")
            samples = load_samples(path)
            assert [s.answers for s in samples] == [r.get("answers", r.get("outputs")) for r in records]
    assert records_to_samples(synth_dataset("fwe", 1, length=128))[0].meta["metric"] == "string_match_all"
    with pytest.raises(ValueError):
        synth_dataset("needles", 3)
    with pytest.raises(ValueError):
        synth_dataset("hotpotqa", 2, docs=1)
