"""Loading MemAgent HotpotQA / RULER / verl files, and the DataErrors for broken ones."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from memfactory.data.memagent import records_to_samples
from memfactory.data.sources import load_samples
from memfactory.errors import DataError

HOTPOT = {
    "context": "Document 1:\nA\nAlpha text.\n\nDocument 2:\nB\nBeta text.",
    "input": "What is alpha?",
    "answers": ["Alpha"],
    "num_docs": 2,
    "index": 7,
}
RULER = {
    "index": 0,
    "input": "What are the three most frequent words?",
    "context": ".... abcdef .... ghijkl abcdef",
    "outputs": ["abcdef", "ghijkl", "mnopqr"],
    "answer_prefix": " Answer: the words are:",
    "length": 30,
}


def write(path, records):
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_hotpotqa_json(tmp_path):
    samples = load_samples(write(tmp_path / "eval_50.json", [HOTPOT, {**HOTPOT, "index": 8, "answers": ["x", "y"]}]))
    assert len(samples) == 2
    s = samples[0]
    assert (s.id, s.question, s.answers, s.context) == ("eval_50-7", "What is alpha?", ["Alpha"], HOTPOT["context"])
    assert s.meta["num_docs"] == 2 and s.meta["format"] == "hotpotqa"
    assert samples[1].answers == ["x", "y"]


def test_ruler_json_keeps_prefix_and_metric(tmp_path):
    [s] = load_samples(write(tmp_path / "eval_fwe_16384.json", [RULER]))
    assert s.answers == ["abcdef", "ghijkl", "mnopqr"]
    assert s.meta["answer_prefix"] == " Answer: the words are:"
    assert s.meta["metric"] == "string_match_all" and s.meta["length"] == 30
    assert s.meta["ruler_task"] == "fwe"


def test_ruler_qa_sets_are_scored_as_qa_not_string_match(tmp_path):
    """MemAgent scores RULER qa_* with sub-EM against outputs[0]: the loader names no metric for them."""
    record = {**RULER, "outputs": ["Denver Broncos", "Broncos"]}
    [qa] = load_samples(write(tmp_path / "eval_qa_1_8192.json", [record]))
    assert qa.meta["ruler_task"] == "qa_1" and "metric" not in qa.meta
    assert qa.answers == ["Denver Broncos", "Broncos"]
    [niah] = load_samples(write(tmp_path / "eval_niah_single_1_8192.json", [record]))
    assert niah.meta["ruler_task"] == "niah_single_1" and niah.meta["metric"] == "string_match_all"
    [short] = load_samples(write(tmp_path / "eval_qa_2.json", [record]))
    assert short.meta["ruler_task"] == "qa_2" and "metric" not in short.meta


def test_jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps({**HOTPOT, "index": i}) for i in range(3)) + "\n\n", encoding="utf-8")
    assert [s.id for s in load_samples(path)] == ["train-0", "train-1", "train-2"]


def test_verl_parquet(tmp_path):
    rows = [
        {
            "data_source": "hotpotqa",
            "context": "Document 1:\nA\nAlpha.",
            "prompt": [{"role": "user", "content": "What is alpha?"}],
            "reward_model": {"style": "rule", "ground_truth": ["Alpha", "A"]},
            "extra_info": {"index": 3, "question": "What is alpha?", "num_docs": 1},
        },
        {
            "data_source": "hotpotqa",
            "context": "Document 1:\nB\nBeta.",
            "prompt": [{"role": "user", "content": "What is beta?"}],
            "reward_model": {"style": "rule", "ground_truth": ["Beta"]},
            "extra_info": {"index": 4, "question": "", "num_docs": 1},
        },
    ]
    path = tmp_path / "hotpotqa_train.parquet"
    pd.DataFrame(rows).to_parquet(path)
    samples = load_samples(path)
    assert samples[0].answers == ["Alpha", "A"] and samples[0].question == "What is alpha?"
    assert samples[0].id == "hotpotqa_train-3" and samples[0].meta["num_docs"] == 1
    assert samples[0].meta["data_source"] == "hotpotqa"
    # an empty extra_info.question falls back to the user turn of the chat prompt
    assert samples[1].question == "What is beta?"


@pytest.mark.parametrize(
    "record, field, words",
    [
        ({k: v for k, v in HOTPOT.items() if k != "answers"}, "answers", "missing"),
        ({**HOTPOT, "answers": "Alpha"}, None, None),  # a bare string is accepted as one answer
        ({**HOTPOT, "answers": []}, "answers", "non-empty"),
        ({**HOTPOT, "answers": [{"a": 1}]}, "answers", "strings"),
        ({**HOTPOT, "context": "   "}, "context", "empty"),
        ({**HOTPOT, "context": ["5a8b57f2"]}, "context", "list"),
        ({**HOTPOT, "input": 3}, "input", "string"),
        ({**HOTPOT, "index": "seven"}, "index", "integer"),
    ],
)
def test_bad_records_name_file_record_field(tmp_path, record, field, words):
    path = write(tmp_path / "eval_50.json", [HOTPOT, record])
    if field is None:
        assert load_samples(path)[1].answers == ["Alpha"]
        return
    with pytest.raises(DataError) as info:
        load_samples(path)
    err = info.value
    assert (err.file, err.record, err.field) == (str(path), 1, field)
    assert str(path) in str(err) and "record 1" in str(err) and words in str(err)


def test_ruler_missing_outputs_and_verl_missing_ground_truth(tmp_path):
    with pytest.raises(DataError) as info:
        load_samples(write(tmp_path / "r.json", [RULER, {**RULER, "outputs": None}]))
    assert (info.value.record, info.value.field) == (1, "outputs")
    bad = {"context": "c", "prompt": [], "reward_model": {}, "extra_info": {"question": "q"}}
    with pytest.raises(DataError) as info:
        records_to_samples([bad], "train.parquet")
    assert info.value.field == "reward_model.ground_truth"


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_samples(tmp_path / "nope.json")
    bad = tmp_path / "latin1.json"
    bad.write_bytes(json.dumps([HOTPOT]).replace("Alpha", "Alph\\u00e9").encode() + b"\xe9\xff")
    with pytest.raises(DataError, match="not UTF-8"):
        load_samples(bad)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"context": "x",', encoding="utf-8")
    with pytest.raises(DataError, match="malformed JSON at line 1"):
        load_samples(broken)
    jl = tmp_path / "broken.jsonl"
    jl.write_text(json.dumps(HOTPOT) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_samples(jl)
    assert "line 2" in str(info.value) and info.value.record == 1
    for name, text, words in [
        ("empty.json", "", "empty"),
        ("obj.json", '{"a": 1}', "list"),
        ("none.json", "[]", "no records"),
        ("nums.json", "[1, 2]", "object"),
        ("odd.json", '[{"foo": 1}]', "unrecognised"),
    ]:
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=words):
            load_samples(tmp_path / name)
    (tmp_path / "x.csv").write_text("a,b", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported file type"):
        load_samples(tmp_path / "x.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="unreadable parquet"):
        load_samples(tmp_path / "bad.parquet")
