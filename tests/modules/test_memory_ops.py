"""Reading facts, operations and ids from model output, and applying operations without ever corrupting the bank."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memfactory.errors import MemFactoryError
from memfactory.json_repair import parse_json
from memfactory.memory.embed import get_embedder
from memfactory.memory.ops import OPS, Operation
from memfactory.memory.store import MemoryStore
from memfactory.modules.memory_ops import (
    apply_operations,
    parse_facts,
    parse_id_list,
    parse_operations,
)

HASHING = get_embedder("hashing")


def test_parse_facts_accepts_objects_strings_and_wrappers():
    facts, report = parse_facts(
        '{"facts": [{"key": "pet", "value": "Ava has a dog", "tags": ["Ava"]}, "Ben rows", 3, {"value": ""}]}'
    )
    assert [f.value for f in facts] == ["Ava has a dog", "Ben rows"]
    assert facts[0].key == "pet" and facts[0].tags == ["Ava"] and facts[0].text == "pet: Ava has a dog"
    assert report.parsed and report.warnings["invalid_fact"] == 2


def test_parse_operations_maps_ids_and_counts_what_it_drops():
    text = """[{"op": "UPDATE", "id": "0", "text": "Ava lives in Brevik"},
              {"op": "DELETE", "id": 1},
              {"op": "UPDATE", "id": "1", "text": "after delete"},
              {"op": "DELETE", "id": "7"},
              {"op": "MERGE", "id": "0"},
              {"event": "noop"},
              {"op": "add", "memory": "Ava likes ramen"},
              {"op": "ADD"}]"""
    ops, report = parse_operations(text, {"0": "mem-a", "1": "mem-b"})
    assert [(o.op, o.id) for o in ops] == [
        ("UPDATE", "mem-a"),
        ("DELETE", "mem-b"),
        ("NONE", None),
        ("NONE", None),
        ("NONE", None),
        ("NONE", None),
        ("ADD", None),
        ("NONE", None),
    ]
    assert ops[6].text == "Ava likes ramen"
    assert report.warnings == {"conflicting_op": 1, "unknown_memory_id": 1, "unknown_op": 1, "invalid_op": 1}


def test_parse_id_list_variants():
    assert parse_id_list("[2, '0', 2, 9]", ["0", "1", "2"])[0] == ["2", "0"]
    assert parse_id_list('{"ids": [{"id": 1}]}', ["0", "1"])[0] == ["1"]
    assert parse_id_list("I would use 1 and 0", ["0", "1"])[0] == ["1", "0"]
    assert parse_id_list("[0, 1, 2]", ["0", "1", "2"], limit=2)[0] == ["0", "1"]
    assert parse_id_list("nothing useful", ["0"])[0] is None
    assert parse_id_list("[]", ["0"])[0] == []


def _bank() -> MemoryStore:
    store = MemoryStore(":memory:", embedder=HASHING)
    store.apply(
        [Operation("ADD", id="m0", text="Ava lives in Tholand"), Operation("ADD", id="m1", text="Ben has a cat")]
    )
    return store


def _state(store: MemoryStore):
    return [m.to_dict() for m in store.all()], [(h.memory_id, h.op, h.old_value, h.new_value) for h in store.history()]


def test_apply_operations_traces_old_and_new_values():
    store = _bank()
    ops, _ = parse_operations(
        '[{"op": "UPDATE", "id": "0", "text": "Ava lives in Brevik"}, {"op": "DELETE", "id": "1"}, {"op": "ADD", "text": "Ava likes pho"}]',
        {"0": "m0", "1": "m1"},
    )
    result, trace = apply_operations(store, ops, actor="test")
    assert result.ok and result.updated == ["m0"] and result.deleted == ["m1"] and len(result.added) == 1
    assert trace[0] == {
        "op": "UPDATE",
        "id": "m0",
        "old": "Ava lives in Tholand",
        "new": "Ava lives in Brevik",
        "applied": True,
    }
    assert trace[1]["old"] == "Ben has a cat" and trace[1]["new"] is None
    assert trace[2]["id"] == result.added[0] and trace[2]["new"] == "Ava likes pho"
    assert sorted(m.text for m in store.all()) == ["Ava likes pho", "Ava lives in Brevik"]


def test_a_failing_batch_leaves_the_bank_unchanged():
    store = _bank()
    before = _state(store)
    ops = [
        Operation("ADD", text="new fact"),
        Operation("UPDATE", id="m0", text="changed"),
        Operation("DELETE", id="gone"),
    ]
    result, trace = apply_operations(store, ops)
    assert not result.ok and result.failed_index == 2
    assert all(entry["applied"] is False for entry in trace)
    assert _state(store) == before


# --------------------------------------------------------------------------- property tests

_json_atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.text(max_size=12),
    st.sampled_from(["ADD", "UPDATE", "DELETE", "NONE", "0", "1", "m0"]),
)
_json_values = st.recursive(
    _json_atoms,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["op", "id", "text", "event", "memory", "tags", "x"]), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def _damaged(draw):
    """JSON-ish text: valid JSON cut short, quoted wrongly, fenced, or surrounded by prose."""
    text = json.dumps(draw(_json_values))
    cut = draw(st.integers(0, len(text)))
    text = draw(
        st.sampled_from(
            [text, text[:cut], text.replace('"', "'"), f"```json\n{text}\n```", f"<think>{text}</think>{text[:cut]}"]
        )
    )
    return draw(st.text(max_size=8)) + text + draw(st.text(max_size=8))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), _damaged()))
def test_parsers_never_raise_on_garbage(text):
    parse_json(text)
    facts, _ = parse_facts(text)
    assert all(f.value for f in facts)
    ops, _ = parse_operations(text, {"0": "m0", "1": "m1"})
    for o in ops:
        assert o.op in OPS
        if o.op in ("UPDATE", "DELETE"):
            assert o.id in ("m0", "m1")
        if o.op in ("ADD", "UPDATE"):
            assert o.text
    ids, _ = parse_id_list(text, ["0", "1", "2"])
    assert ids is None or set(ids) <= {"0", "1", "2"}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_damaged())
def test_parsed_operations_always_apply_cleanly(text):
    store = _bank()
    ops, _ = parse_operations(text, {"0": "m0", "1": "m1"})
    result, _ = apply_operations(store, ops)
    assert result.ok
    assert store.count() == 2 + len(result.added) - len(result.deleted)


_raw_op = st.fixed_dictionaries(
    {"op": st.sampled_from(["ADD", "UPDATE", "DELETE", "NONE", "BOGUS", ""])},
    optional={"id": st.sampled_from(["m0", "m1", "nope", ""]), "text": st.one_of(st.none(), st.text(max_size=10))},
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_raw_op, max_size=6))
def test_apply_with_raw_garbage_is_all_or_nothing(raw):
    store = _bank()
    before = _state(store)
    try:
        result = store.apply(raw, raise_on_error=False)
    except MemFactoryError:  # pragma: no cover - raise_on_error=False must not raise
        pytest.fail("apply raised with raise_on_error=False")
    if not result.ok:
        assert _state(store) == before
    else:
        assert store.count() == 2 + len(result.added) - len(result.deleted)
