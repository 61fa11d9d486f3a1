"""The synthetic LoCoMo generator: seeded, facts that change (UPDATE and DELETE), the shipped set is its output."""

from __future__ import annotations

import json

from memfactory.data.locomo import parse_conversation, read_locomo, transcript
from memfactory.data.sources import load_locomo
from memfactory.data.synth_locomo import synth_locomo
from memfactory.paths import assets_dir

SHIPPED = assets_dir() / "data" / "locomo_synth.json"


def test_synth_is_seeded_and_needs_updates_and_deletes():
    assert synth_locomo(2, seed=5) == synth_locomo(2, seed=5)
    assert synth_locomo(2, seed=5) != synth_locomo(2, seed=6)
    record = synth_locomo(1, seed=0, sessions=5)[0]
    conv = parse_conversation(record, "synth", 0)
    assert len(conv["sessions"]) == 5
    text = transcript(conv["sessions"])
    assert "moved from" in text and "anymore" in text  # a changed fact and a deleted one
    by_q = {q["question"]: q for q in conv["qa"]}
    current = next(q for q in conv["qa"] if "live in now" in q["question"])
    before = next(q for q in conv["qa"] if "before moving" in q["question"])
    assert current["answer"] != before["answer"] and current["answer"] in text and before["answer"] in text
    dia_ids = {t["dia_id"] for s in conv["sessions"] for t in s["turns"]}
    assert all(set(q["evidence"]) <= dia_ids for q in by_q.values())
    assert {q["category"] for q in conv["qa"]} == {1, 2, 3, 4, 5}


def test_shipped_set_is_the_seeded_synth():
    assert read_locomo(SHIPPED) == json.loads(json.dumps(synth_locomo(4, seed=0)))
    samples = load_locomo(SHIPPED)
    assert len(samples) == 32 and {s.meta["category"] for s in samples} == {1, 2, 3, 4}
