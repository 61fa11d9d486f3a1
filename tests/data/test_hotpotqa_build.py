"""`memfactory data build` on a real slice of HotpotQA dev (tests/data/hotpotqa_dev/README.md).

The oracle below is MemAgent's recipe written the plain way (the whole file in memory, the pool as
``sorted(set(...))``, the population as a list, one generator seeded 42 per size, ``json.dump``
with ``indent=4``); the streaming build must write the very same bytes.
"""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path

import pytest

from memfactory.cli import main
from memfactory.data.hotpotqa_build import build_eval_sets, choose, dump_array, open_dev
from memfactory.data.hotpotqa_raw import iter_questions
from memfactory.data.sources import load_samples
from memfactory.errors import DataError, MemFactoryError

DEV = Path(__file__).parent / "hotpotqa_dev" / "hotpot_dev_distractor_first30.json"
FIELDS = ["context", "input", "answers", "num_docs", "index"]  # MemAgent's eval_{N}.json record, in order
_DOC = re.compile(r"(?:^|\n\n)Document (\d+):\n")


def oracle(raw: list[dict], indices: list[int], size: int, seed: int = 42) -> str:
    docs = sorted({f"{t}\n{''.join(p)}" for d in raw for t, p in d["context"]})
    ids = {doc: i for i, doc in enumerate(docs)}
    rng = random.Random(seed)
    out = []
    for index in indices:
        d = raw[index]
        own = [ids[f"{t}\n{''.join(p)}"] for t, p in d["context"]]
        population = [i for i in range(len(docs)) if i not in own]
        picked = own + rng.sample(population, size - len(own))
        random.Random(4).shuffle(picked)
        context = "\n\n".join(f"Document {i + 1}:\n{docs[k]}" for i, k in enumerate(picked))
        out.append(
            {"context": context, "input": d["question"], "answers": [d["answer"]], "num_docs": size, "index": index}
        )
    return json.dumps(out, ensure_ascii=False, indent=4)


def split_documents(context: str) -> list[str]:
    parts = _DOC.split(context)
    assert parts[0] == ""
    numbers, texts = parts[1::2], parts[2::2]
    assert numbers == [str(i) for i in range(1, len(numbers) + 1)]
    return texts


@pytest.fixture(scope="module")
def raw() -> list[dict]:
    return json.loads(DEV.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built")
    with open_dev(DEV, candidates=30) as dev:
        build_eval_sets(dev, choose(dev, 24), [20, 50, 100], out)
    return out


def test_the_streamed_build_writes_memagents_recipe_byte_for_byte(raw, built):
    for size in (20, 50, 100):
        assert (built / f"eval_{size}.json").read_text(encoding="utf-8") == oracle(raw, list(range(24)), size)


def test_records_have_memagents_schema_counts_and_every_supporting_paragraph(raw, built):
    pool = {f"{t}\n{''.join(p)}" for d in raw for t, p in d["context"]}
    assert len(pool) == 291  # 292 paragraphs, one shared by records 7 and 13
    for size in (20, 50, 100):
        records = json.loads((built / f"eval_{size}.json").read_text(encoding="utf-8"))
        assert [r["index"] for r in records] == list(range(24))
        for record in records:
            assert list(record) == FIELDS
            source = raw[record["index"]]
            assert record["input"] == source["question"] and record["answers"] == [source["answer"]]
            assert record["num_docs"] == size
            docs = split_documents(record["context"])
            assert len(docs) == size and len(set(docs)) == size and set(docs) <= pool
            own = {f"{t}\n{''.join(p)}" for t, p in source["context"]}
            assert own <= set(docs)  # the question's ten paragraphs (two for record 27), so its gold ones
            titles = {doc.split("\n", 1)[0] for doc in docs}
            assert {title for title, _ in source["supporting_facts"]} <= titles
    samples = load_samples(built / "eval_50.json")
    assert len(samples) == 24 and samples[0].meta["num_docs"] == 50 and samples[0].answers == ["yes"]


def test_a_rerun_is_byte_identical_and_the_seed_matters(built, tmp_path):
    with open_dev(DEV, candidates=30) as dev:
        build_eval_sets(dev, choose(dev, 24), [50], tmp_path / "again")
        build_eval_sets(dev, choose(dev, 24), [50], tmp_path / "seed7", seed=7)
    first = (built / "eval_50.json").read_bytes()
    assert (tmp_path / "again" / "eval_50.json").read_bytes() == first
    assert (tmp_path / "seed7" / "eval_50.json").read_bytes() != first
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["again", "eval_50.json", "eval_50.json", "seed7"]


def test_dump_array_equals_json_dump():
    for records in ([], [{"a": [1, {"b": "é\n"}]}], [{"x": 1}, {"y": [[]], "z": {}}]):
        sink = io.StringIO()
        assert dump_array(iter(records), sink) == len(records)
        assert sink.getvalue() == json.dumps(records, ensure_ascii=False, indent=4)


def test_the_hugging_face_and_ircot_exports_are_read(raw, tmp_path):
    hf = tmp_path / "hf.jsonl"
    ircot = tmp_path / "ircot.jsonl"
    with hf.open("w") as out_hf, ircot.open("w") as out_ircot:
        for d in raw[:3]:
            titles, sentences = zip(*d["context"])
            context = {"title": list(titles), "sentences": list(sentences)}
            facts = {"title": [t for t, _ in d["supporting_facts"]], "sent_id": [s for _, s in d["supporting_facts"]]}
            row = {"id": d["_id"], "question": d["question"], "answer": d["answer"]}
            out_hf.write(json.dumps({**row, "context": context, "supporting_facts": facts}) + "\n")
            gold = {t for t, _ in d["supporting_facts"]}
            contexts = [
                {"idx": k, "title": t, "paragraph_text": "".join(p).strip(), "is_supporting": t in gold}
                for k, (t, p) in enumerate(d["context"])
            ]
            answers = [{"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": [d["answer"]]}]
            out_ircot.write(
                json.dumps({"question_id": d["_id"], "question_text": d["question"], "answers_objects": answers,
                            "contexts": contexts}) + "\n"
            )  # fmt: skip
    official = list(iter_questions(DEV))[:3]
    assert list(iter_questions(hf)) == official  # same text, same order: the same documents
    from_ircot = list(iter_questions(ircot))
    assert [q.question for q in from_ircot] == [q.question for q in official]
    assert [set(q.supporting) for q in from_ircot] == [set(q.supporting) for q in official]
    assert [len(q.docs) for q in from_ircot] == [len(q.docs) for q in official]


# --------------------------------------------------------------------------- bad input


def _edited(raw: list[dict], path: Path, index: int, edit) -> Path:
    records = json.loads(json.dumps(raw))
    edit(records[index])
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (lambda r: r.pop("context"), "context", "missing field"),
        (lambda r: r.pop("supporting_facts"), "supporting_facts", "missing field"),
        (lambda r: r["supporting_facts"].append(["Atlantis", 0]), "supporting_facts", "'Atlantis' is not in"),
        (lambda r: r["context"].__setitem__(2, "Ed Wood"), "context[2]", "[title, sentences] pair"),
    ],
)
def test_bad_records_name_file_record_and_field_and_write_nothing(raw, tmp_path, capsys, edit, field, words):
    bad = _edited(raw, tmp_path / "dev.json", 17, edit)
    out = tmp_path / "out"
    assert main(["data", "build", str(bad), "--out", str(out), "--n", "5", "--sizes", "20"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}, record 17, field '{field}'" in err[0] and words in err[0]
    assert not out.exists()


def test_a_memagent_eval_file_is_not_a_raw_dev_file(built, tmp_path, capsys):
    assert main(["data", "build", str(built / "eval_20.json"), "--out", str(tmp_path / "o"), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert "record 0, field 'question': missing field (not a HotpotQA record?" in err


def test_truncated_json_names_the_record_and_leaves_no_file(tmp_path, capsys):
    cut = tmp_path / "cut.json"
    cut.write_bytes(DEV.read_bytes()[:120_000])  # ends inside record 16 (0-based; records 0-15 are whole)
    out = tmp_path / "out"
    assert main(["data", "build", str(cut), "--out", str(out), "--n", "5", "--sizes", "20"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{cut}, record 16: malformed JSON: the JSON ends early" in err[0]
    assert not out.exists()
    with pytest.raises(DataError, match="expected a JSON array"):
        (tmp_path / "obj.json").write_text('{"data": []}')
        list(iter_questions(tmp_path / "obj.json"))


def test_a_size_beyond_the_pool_writes_no_file_at_all(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["data", "build", str(DEV), "--out", str(out), "--n", "5", "--sizes", "50", "291"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{DEV}: eval_291 needs 291 documents, but the pool holds only 291 unique" in err[0]
    assert list(out.iterdir()) == []  # eval_50 was valid, and is not written either
    with open_dev(DEV, candidates=30) as dev:
        with pytest.raises(MemFactoryError, match="only 30 of the first 30"):
            choose(dev, 31)
        with pytest.raises(MemFactoryError, match="has 10 paragraphs of its own"):
            build_eval_sets(dev, choose(dev, 3), [9], tmp_path / "small")


def test_cli_build_then_check_reports_tokens_against_the_preset(tmp_path, capsys):
    out = tmp_path / "sets"
    assert main(["data", "build", str(DEV), "--out", str(out), "--n", "10", "--sizes", "50"]) == 0
    printed = capsys.readouterr().out
    assert "30 questions, 292 paragraphs, 291 unique (the pool); 30 candidates" in printed
    assert main(["data", "check", str(out / "eval_50.json"), "--preset", "presets/memagent_smollm2_cpu.yaml"]) == 0
    report = capsys.readouterr().out
    assert "documents per context: 50-50, mean 50.0" in report
    assert "reading budget (preset presets/memagent_smollm2_cpu.yaml)" in report


def test_cli_filter_drops_what_a_real_model_answers_without_context(tmp_path, capsys):
    out = tmp_path / "sets"
    argv = ["data", "build", str(DEV), "--out", str(out), "--n", "2", "--candidates", "4", "--sizes", "20"]
    argv += ["--filter-model", "smollm2-135m-instruct", "--filter-max-new-tokens", "12"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    found = re.search(r"filter smollm2-135m-instruct: answers (\d) of 4 candidates without context", printed)
    assert found, printed
    indices = [r["index"] for r in json.loads((out / "eval_20.json").read_text(encoding="utf-8"))]
    assert len(indices) == 2 and indices == sorted(indices) and set(indices) <= {0, 1, 2, 3}
