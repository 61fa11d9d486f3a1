"""Generated fuzz inputs (hypothesis, derandomized: the same examples on every run and in CI).

Each test feeds one kind of input to every entry point of that kind through the shared harness
(``fuzz_harness``): parsers of model output never raise, loaders accept or refuse with a
MemFactoryError naming the file, and updates change the SQLite bank only by applied operations.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from fuzz_harness import (
    UpdateBank,
    base_preset,
    check_data_file,
    check_data_uri,
    check_output,
    check_preset_data,
    check_preset_file,
    gen_data_file,
    gen_op_dicts,
    gen_output,
    gen_preset,
    gen_preset_text,
    gen_uri,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def profile(examples: int) -> settings:
    return settings(
        derandomize=True,
        max_examples=examples,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )


SEEDS = st.randoms(use_true_random=False)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
ODD_VALUES = JSON_VALUES | st.sampled_from([2**63, -(2**63) - 1, 10**300, 1e308, "\ud800", "x" * 10_000])
PRESET_FIELDS = [
    ("name",), ("agent",), ("env",), ("env", "type"), ("env", "data"), ("env", "eval"), ("modules",),
    ("modules", "memory"), ("modules", "memory", "chunk_tokens"), ("modules", "memory", "type"), ("agent_options",),
    ("model",), ("model", "backend"), ("model", "path"), ("model", "options"), ("model", "seed"), ("rewards",),
    ("rewards", "sub_em"), ("trainer",), ("trainer", "steps"), ("trainer", "lr"), ("trainer", "stop"),
    ("trainer", "lora"), ("trainer", "lora", "r"), ("trainer", "rollout"), ("trainer", "rollout", "options"),
    ("judge",), ("logging",), ("logging", "swanlab"), ("unknown_key",),
]


# --------------------------------------------------------------------------- model outputs


@profile(300)
@given(st.text())
def test_any_text_through_every_parser(text: str) -> None:
    outcome = check_output(text)
    assert outcome.ok, outcome.detail


@profile(150)
@given(JSON_VALUES, st.integers(min_value=0, max_value=400), st.sampled_from(["", "```json\n", "<think>x</think>", "Sure: "]))
def test_json_values_cut_anywhere(value: Any, cut: int, prefix: str) -> None:
    text = prefix + json.dumps(value, allow_nan=True)
    for candidate in (text, text[:cut], text.replace('"', "'")):
        outcome = check_output(candidate)
        assert outcome.ok, outcome.detail


@profile(250)
@given(rng=SEEDS)
def test_generated_outputs_change_the_bank_only_by_applied_operations(rng: random.Random, bank: UpdateBank) -> None:
    text = gen_output(rng)
    assert check_output(text).ok
    outcome = bank.apply(text)
    assert outcome.ok, outcome.detail


@profile(100)
@given(text=st.text())
def test_any_text_applied_to_the_bank(text: str, bank: UpdateBank) -> None:
    pristine = bank.rows()
    outcome = bank.apply(text)
    assert outcome.ok, outcome.detail
    assert bank.rows() == pristine  # applied or not, the harness hands the bank back as it was


@profile(200)
@given(rng=SEEDS)
def test_operation_dicts_applied_to_the_bank(rng: random.Random, bank: UpdateBank) -> None:
    """MemoryStore.apply on dicts as a model writes them: refused batches leave the bank unchanged."""
    outcome = bank.apply_dicts(gen_op_dicts(rng))
    assert outcome.ok, outcome.detail


# --------------------------------------------------------------------------- presets


@profile(250)
@given(SEEDS)
def test_mutated_presets(rng: random.Random) -> None:
    outcome = check_preset_data(gen_preset(rng))
    assert outcome.ok, outcome.detail


@profile(250)
@given(st.sampled_from(PRESET_FIELDS), ODD_VALUES)
def test_any_value_at_any_preset_field(path: tuple[str, ...], value: Any) -> None:
    data = base_preset()
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    outcome = check_preset_data(data)
    assert outcome.ok, outcome.detail


@profile(120)
@given(rng=SEEDS)
def test_generated_yaml_presets(rng: random.Random, scratch: Path) -> None:
    path = scratch / "generated.yaml"
    path.write_bytes(gen_preset_text(rng).encode("utf-8", "surrogatepass"))
    outcome = check_preset_file(path)
    assert outcome.ok, outcome.detail


@profile(120)
@given(text=st.text() | st.binary().map(lambda b: b.decode("latin-1")))
def test_any_text_as_a_preset_file(text: str, scratch: Path) -> None:
    path = scratch / "any.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    outcome = check_preset_file(path)
    assert outcome.ok, outcome.detail


@profile(100)
@given(key=st.text(max_size=30), value=st.text(max_size=60))
def test_any_override(key: str, value: str, scratch: Path) -> None:
    path = scratch / "valid.yaml"
    path.write_text(json.dumps(base_preset()), encoding="utf-8")  # JSON is YAML
    for override in (f"{key}={value}", f"trainer.lr={value}", f"model.options.{key}={value}", key):
        outcome = check_preset_file(path, [override])
        assert outcome.ok, outcome.detail


# --------------------------------------------------------------------------- data


@profile(150)
@given(rng=SEEDS)
def test_generated_data_files(rng: random.Random, scratch: Path) -> None:
    path = gen_data_file(rng, scratch, 0)
    try:
        outcome = check_data_file(path)
        assert outcome.ok, outcome.detail
    finally:
        path.unlink()


@profile(80)
@given(blob=st.binary(max_size=4096), suffix=st.sampled_from([".json", ".jsonl", ".parquet"]))
def test_any_bytes_as_a_data_file(blob: bytes, suffix: str, scratch: Path) -> None:
    path = scratch / f"blob{suffix}"
    path.write_bytes(blob)
    outcome = check_data_file(path)
    assert outcome.ok, outcome.detail


@profile(80)
@given(SEEDS)
def test_synthetic_uris(rng: random.Random) -> None:
    uri = gen_uri(rng)
    outcome = check_data_uri(uri)
    assert outcome.ok, (uri, outcome.detail)
