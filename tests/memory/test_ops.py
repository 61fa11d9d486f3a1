"""The one memory-operation language: the store and the updater's parser read the same op words
and the same fields (they used to be two dialects: ``INSERT`` parsed but ``Operation("INSERT")``
raised; ``{"action": ..., "fact": ...}`` parsed but the store refused it)."""

from __future__ import annotations

import json

import pytest

from memfactory.errors import MemFactoryError
from memfactory.memory import HashingEmbedder, MemoryStore, Operation
from memfactory.memory.ops import FIELDS, OP_ALIASES, OPS, canonical_op, normalise_op, read_field
from memfactory.modules.memory_ops import parse_operations


@pytest.fixture
def bank(tmp_path):
    store = MemoryStore(tmp_path / "ops.db", embedder=HashingEmbedder(64))
    yield store
    store.close()


@pytest.mark.parametrize(
    ("word", "op"),
    [
        ("INSERT", "ADD"),
        ("insert", "ADD"),
        (" Remove ", "DELETE"),
        ("NOOP", "NONE"),
        ("no_op", "NONE"),
        ("NOTHING", "NONE"),
        ("keep", "NONE"),
        ("add", "ADD"),
        ("Update", "UPDATE"),
    ],
)
def test_every_alias_means_its_op_in_the_store_and_the_parser(word, op):
    assert Operation(word).op == op == normalise_op(word) == canonical_op(word)
    body = "a fact" if op in ("ADD", "UPDATE") else None
    parsed, report = parse_operations(json.dumps([{"op": word, "id": "0", "text": body}]), {"0": "m0"})
    assert [o.op for o in parsed] == [op] and not report.warnings


def test_unknown_words_are_refused_by_the_store_and_dropped_by_the_parser():
    assert canonical_op("MERGE") is None
    with pytest.raises(MemFactoryError, match="unknown memory operation 'MERGE'"):
        Operation("MERGE")
    parsed, report = parse_operations('[{"op": "MERGE", "text": "x"}]', {})
    assert [o.op for o in parsed] == ["NONE"] and report.warnings["unknown_op"] == 1


def test_the_alias_table_covers_both_former_dialects():
    assert set(OP_ALIASES.values()) <= set(OPS)
    assert {"INSERT", "REMOVE", "NOOP", "NO_OP", "NOTHING", "KEEP"} <= set(OP_ALIASES)
    assert FIELDS["op"] == ("op", "event", "operation", "action")
    assert FIELDS["text"] == ("text", "memory", "value", "fact")
    assert FIELDS["id"] == ("id", "memory_id")


@pytest.mark.parametrize("op_key", FIELDS["op"])
@pytest.mark.parametrize("text_key", FIELDS["text"])
def test_from_dict_and_the_parser_read_every_field_spelling(op_key, text_key):
    item = {op_key: "INSERT", text_key: "Ava keeps bees"}
    stored = Operation.from_dict(item)
    parsed, _ = parse_operations(json.dumps([item]), {})
    assert (stored.op, stored.text) == (parsed[0].op, parsed[0].text) == ("ADD", "Ava keeps bees")


def test_the_first_spelling_present_wins():
    assert read_field({"event": "DELETE", "op": "ADD"}, "op") == "ADD"
    assert read_field({"fact": "b", "memory": "a"}, "text") == "a"
    assert read_field({"op": None, "event": "ADD"}, "op") is None  # present but null: not skipped
    with pytest.raises(MemFactoryError, match="has no 'op' field"):
        Operation.from_dict({"text": "no op at all"})


def test_the_store_applies_the_parsers_dialect(bank):
    """The deliberate behaviour change: these batches were refused by ``MemoryStore.apply`` before."""
    gone = bank.add("Ava's car is red")
    changed = bank.add("Ava has two cats")
    result = bank.apply(
        [
            Operation("INSERT", text="Ava moved to Brevik"),
            {"event": "REMOVE", "id": gone},
            {"action": "add", "fact": "Ava plays the cello"},
            {"operation": "update", "memory_id": changed, "memory": "Ava has three cats"},
            {"action": "KEEP"},
        ],
        actor="manager",
    )
    assert result.ok and len(result.added) == 2 and result.deleted == [gone] and result.updated == [changed]
    assert result.skipped == 1
    assert sorted(m.text for m in bank.all()) == ["Ava has three cats", "Ava moved to Brevik", "Ava plays the cello"]
    assert [e.op for e in bank.history(gone)] == ["ADD", "DELETE"]


def test_a_value_alone_is_the_text_and_the_value_column(bank):
    [ident] = bank.apply([{"op": "ADD", "key": "pet", "value": "a dog named Rex"}]).added
    item = bank.get(ident)
    assert (item.text, item.key, item.value) == ("a dog named Rex", "pet", "a dog named Rex")


def test_a_parsed_batch_applies_through_the_store_unchanged(bank):
    keep = bank.add("Ava lives in Oslo")
    text = json.dumps(
        [
            {"action": "INSERT", "fact": "Ava runs marathons"},
            {"event": "UPDATE", "memory_id": "0", "value": "Ava lives in Bergen"},
        ]
    )
    ops, report = parse_operations(text, {"0": keep})
    assert not report.warnings
    result = bank.apply(ops)
    assert result.ok and result.updated == [keep]
    assert sorted(m.text for m in bank.all()) == ["Ava lives in Bergen", "Ava runs marathons"]
