"""Data-source strings: the one synthetic:// parser and its limits, finding named sets, resolving
without loading (what preflight runs), and loading either family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memfactory.data import sources
from memfactory.data.sources import (
    LOCOMO,
    LONG_CONTEXT,
    SYNTHETIC_KINDS,
    File,
    SetName,
    Synthetic,
    check,
    family_of,
    find_set,
    list_sets,
    load_any,
    load_locomo,
    load_samples,
    parse_source,
    parse_synthetic,
    resolve,
)
from memfactory.data.synth import FWE_ANSWER_PREFIX
from memfactory.data.synth_locomo import synth_locomo, write_locomo
from memfactory.errors import DataError
from memfactory.paths import is_file

HOTPOT = {"context": "Document 1:\nA\nAlpha text.", "input": "What is alpha?", "answers": ["Alpha"], "index": 7}
RULER = {"index": 0, "input": "Which words?", "context": ".... abc abc", "outputs": ["abc"], "answer_prefix": ""}


def write(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the synthetic:// parser


def test_one_parser_fills_defaults_for_every_kind():
    assert parse_synthetic("synthetic://docqa?n=64&seed=0") == Synthetic("docqa", {"n": 64, "seed": 0},
                                                                        "synthetic://docqa?n=64&seed=0")
    assert parse_synthetic("synthetic://hotpotqa?n=32&docs=20").params == {"n": 32, "docs": 20, "seed": 0}
    assert parse_synthetic("synthetic://locomo").params == {"n": 4, "seed": 0}  # conversations, not samples
    assert parse_synthetic("synthetic://fwe?length=256").params == {"n": 64, "seed": 0, "length": 256}
    assert set(SYNTHETIC_KINDS) == {"docqa", "hotpotqa", "fwe", "locomo"}


@pytest.mark.parametrize(
    "uri, words",
    [
        ("synthetic://nope?n=1", "kind one of docqa, hotpotqa, fwe, locomo"),
        ("file://docqa?n=1", "kind one of"),
        ("synthetic://docqa?docs=3", "unknown parameter 'docs' for docqa; allowed: max_docs, min_docs, n, seed"),
        ("synthetic://locomo?docs=3", "unknown parameter 'docs' for locomo"),
        ("synthetic://docqa?n=ten", "'n' must be an integer, got 'ten'"),
        ("synthetic://locomo?n=x", "must be an integer"),
        # one bound rule for every kind: n >= 1 everywhere, each kind's own ceiling
        ("synthetic://docqa?n=0", "'n' must be between 1 and 100000, got 0"),
        ("synthetic://hotpotqa?n=-3", "'n' must be between 1 and 100000, got -3"),
        ("synthetic://fwe?n=100001", "'n' must be between 1 and 100000"),
        ("synthetic://locomo?n=0", "'n' must be between 1 and 10000, got 0"),
        ("synthetic://locomo?n=1&sessions=1000000", "'sessions' must be between 1 and 1000"),
        ("synthetic://hotpotqa?docs=99999999", "'docs' must be at most 25600"),
        ("synthetic://fwe?length=99999999", "'length' must be at most 1048576"),
    ],
)
def test_the_parser_refuses_with_the_parameter_named(uri, words):
    with pytest.raises(DataError, match=words.replace("(", r"\(")) as info:
        parse_synthetic(uri)
    assert str(info.value).startswith(uri)


def test_generator_rules_surface_as_data_errors_of_the_uri():
    for uri, words in [("synthetic://hotpotqa?docs=1", "at least 2"), ("synthetic://docqa?min_docs=5&max_docs=2",
                                                                          "min_docs <= max_docs")]:
        with pytest.raises(DataError, match=words) as info:
            load_samples(uri)
        assert str(info.value).startswith(uri)


def test_parse_source_reads_the_spelling_only(tmp_path):
    assert parse_source("eval_50") == SetName("eval_50")
    assert parse_source("eval_50.json") == SetName("eval_50.json")
    assert parse_source(str(tmp_path / "x.json")) == File(tmp_path / "x.json")  # a folder in it: a path
    assert parse_source("data\\x.json") == File(Path("data\\x.json"))
    assert isinstance(parse_source("synthetic://fwe?n=1"), Synthetic)
    with pytest.raises(DataError):
        parse_source("synthetic://fwe?n=0")  # URIs are bounds-checked even here


# --------------------------------------------------------------------------- finding and resolving sets


def test_find_set_in_data_dir_its_subfolder_and_assets(tmp_path):
    write(tmp_path / "eval_50.json", [HOTPOT])
    (tmp_path / "hotpotqa").mkdir()
    write(tmp_path / "hotpotqa" / "eval_fwe_16384.json", [RULER])
    assert find_set("eval_50", LONG_CONTEXT, tmp_path) == tmp_path / "eval_50.json"
    assert find_set("eval_50.json", LONG_CONTEXT, tmp_path) == tmp_path / "eval_50.json"
    assert find_set("eval_fwe_16384", LONG_CONTEXT, tmp_path) == tmp_path / "hotpotqa" / "eval_fwe_16384.json"
    # the shipped synthetic sets are found without a data folder
    assert find_set("eval_docqa", LONG_CONTEXT, tmp_path).name == "eval_docqa.json"
    assert find_set("locomo_synth", LOCOMO, None).name == "locomo_synth.json"
    with pytest.raises(DataError) as info:
        find_set("eval_100", LONG_CONTEXT, tmp_path)
    text = str(info.value)
    assert "long-context QA set not found" in text and "Available:" in text and "eval_50" in text
    assert "memfactory data download memagent" in text
    (tmp_path / "locomo").mkdir()
    write_locomo(synth_locomo(1), tmp_path / "locomo" / "locomo10.json")
    assert find_set("locomo10", LOCOMO, tmp_path) == tmp_path / "locomo" / "locomo10.json"
    with pytest.raises(DataError, match="LoCoMo set not found.*memfactory data download locomo"):
        find_set("locomo_other", LOCOMO, tmp_path)


def test_list_sets_per_family(tmp_path):
    write(tmp_path / "eval_50.json", [HOTPOT])
    write(tmp_path / "train.json", [HOTPOT])  # not an eval set: not listed
    (tmp_path / "locomo").mkdir()
    write_locomo(synth_locomo(1), tmp_path / "locomo" / "locomo10.json")
    assert {"eval_50", "eval_docqa", "eval_fwe_1024", "eval_synth_20"} <= set(list_sets(LONG_CONTEXT, tmp_path))
    assert "train" not in list_sets(LONG_CONTEXT, tmp_path)
    assert list_sets(LOCOMO, tmp_path) == ["locomo10", "locomo_synth"]


def test_resolve_parses_finds_and_refuses_without_loading(tmp_path):
    missing = tmp_path / "train.parquet"
    with pytest.raises(DataError, match="file not found"):
        resolve(str(missing), LONG_CONTEXT, tmp_path)  # a path is that file, never a set name
    odd = tmp_path / "notes.txt"
    odd.write_text("x")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        resolve(str(odd), LONG_CONTEXT, tmp_path)
    with pytest.raises(DataError, match="synthetic://locomo does not write long-context QA data"):
        resolve("synthetic://locomo?n=1", LONG_CONTEXT, tmp_path)
    with pytest.raises(DataError, match="synthetic://docqa does not write LoCoMo data; kinds here: locomo"):
        resolve("synthetic://docqa", LOCOMO, tmp_path)
    broken = write(tmp_path / "eval_broken.json", [{"nothing": "useful"}])
    assert resolve("eval_broken", LONG_CONTEXT, tmp_path) == File(broken)  # found, not read
    assert resolve("synthetic://docqa?n=100000", LONG_CONTEXT, None).params["n"] == 100000  # parsed, not generated


def test_check_lets_an_eval_name_wait_for_its_download(tmp_path):
    check("eval_not_downloaded_yet", LONG_CONTEXT, tmp_path, required=False)
    with pytest.raises(DataError, match="set not found"):
        check("eval_not_downloaded_yet", LONG_CONTEXT, tmp_path)  # a training source must be there
    with pytest.raises(DataError, match="set not found"):
        check("held_out.json", LONG_CONTEXT, tmp_path, required=False)  # certainly a file: looked up
    with pytest.raises(DataError, match="file not found"):
        check(str(tmp_path / "held_out.json"), LOCOMO, tmp_path, required=False)
    with pytest.raises(DataError, match="must be an integer"):
        check("synthetic://locomo?n=x", LOCOMO, tmp_path, required=False)


# --------------------------------------------------------------------------- loading


def test_loading_either_family(tmp_path):
    samples = load_samples("synthetic://fwe?n=2&length=256")
    assert len(samples) == 2 and samples[0].meta["answer_prefix"] == FWE_ANSWER_PREFIX
    assert [s.id for s in load_samples("synthetic://hotpotqa?n=3&docs=4")] == [f"synthetic_hotpotqa-{i}" for i in
                                                                               range(3)]
    assert {s.meta["source"] for s in load_samples("synthetic://docqa?n=2")} == {"synthetic_docqa"}
    assert len(load_locomo("synthetic://locomo?n=1&seed=2")) == 8  # category 5 left out by default
    assert len(load_locomo("synthetic://locomo?n=1&seed=2", exclude_categories=[])) > 8
    with pytest.raises(DataError, match="does not write LoCoMo data"):
        load_locomo("synthetic://docqa?n=2")
    conversations = write_locomo(synth_locomo(1, seed=2), tmp_path / "conv.json")
    assert family_of(conversations) is LOCOMO and family_of("synthetic://locomo") is LOCOMO
    assert family_of(write(tmp_path / "qa.json", [HOTPOT])) is LONG_CONTEXT
    assert len(load_any(conversations)) == len(load_locomo(conversations, exclude_categories=[]))
    assert load_any(tmp_path / "qa.json")[0].answers == ["Alpha"]


def test_shipped_assets_load():
    for name, fmt, count in [
        ("eval_docqa", "hotpotqa", 32),
        ("eval_synth_20", "hotpotqa", 16),
        ("eval_fwe_1024", "ruler", 8),
    ]:
        samples = load_samples(resolve(name, LONG_CONTEXT, None))
        assert len(samples) == count and all(s.meta["format"] == fmt for s in samples)


def test_is_file_answers_for_names_no_file_system_takes(tmp_path):
    assert not is_file("x" * 5000) and not is_file("a\x00b") and not is_file(tmp_path)
    assert is_file(write(tmp_path / "f.json", []))
    assert sources.is_synthetic("synthetic://docqa") and not sources.is_synthetic("data/synthetic.json")
