"""``memfactory eval``: user mistakes exit 2 with a readable message; a real run writes parseable files;
a LoCoMo-shaped set gets per-category tables."""

from __future__ import annotations

import csv
import json

import pytest

from memfactory.cli import main
from memfactory.paths import presets_dir

TINY_PRESET = str(presets_dir() / "memagent_tiny_test.yaml")


def test_missing_set_exits_2_and_lists_the_available_ones(tmp_path, capsys):
    code = main(
        [
            "eval",
            TINY_PRESET,
            "--sets",
            "eval_docqa,eval_nope",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "eval_nope" in err and "Available:" in err and "eval_docqa" in err
    assert "memfactory data download memagent" in err  # how to get the real sets
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing was started


def test_unknown_model_and_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["eval", "./no/such/model", "--sets", "eval_docqa"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing.yaml"), "--sets", "eval_docqa"]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["eval", TINY_PRESET, "--sets", "eval_docqa", "--k", "0"]) == 2
    assert main(["eval", TINY_PRESET, TINY_PRESET, "--checkpoint", "a", "--checkpoint", "b", "--checkpoint", "c"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_eval_writes_table_csv_and_samples(tmp_path, capsys):
    out = tmp_path / "ev"
    code = main(
        [
            "eval",
            TINY_PRESET,
            "tiny://qwen3-mini",
            "--sets",
            "eval_docqa,eval_fwe_1024",
            "--k",
            "2",
            "--n",
            "2",
            "--max-new-tokens",
            "4",
            "--set",
            "modules.memory.chunk_tokens=512",
            "--set",
            "modules.memory.max_chunks=2",
            "--keep-chunk-cap",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    stdout = capsys.readouterr().out
    assert code == 0
    assert "| model | eval_docqa | eval_fwe_1024 | avg |" in stdout and "avg@2" in stdout
    rows = list(csv.reader((out / "table.csv").open()))
    assert rows[0] == ["model", "eval_docqa", "eval_fwe_1024", "avg"]
    assert [r[0] for r in rows[1:]] == ["memagent_tiny_test", "tiny://qwen3-mini"]
    for r in rows[1:]:
        assert all(0.0 <= float(x) <= 1.0 and len(x.split(".")[1]) == 4 for x in r[1:])
    md = (out / "table.md").read_text().splitlines()
    assert md[0].startswith("protocol memfactory: avg@2 (eval_docqa: boxed_em; eval_fwe_1024: string_match_all)")
    assert md[2] == "| model | eval_docqa | eval_fwe_1024 | avg |"
    assert md[0] in stdout  # the printed report has the same header
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 2 * 2  # rows x sets x questions
    assert {(r["row"], r["set"]) for r in records} == {
        (row, s) for row in ("memagent_tiny_test", "tiny://qwen3-mini") for s in ("eval_docqa", "eval_fwe_1024")
    }
    for r in records:
        assert len(r["answers"]) == len(r["scores"]) == len(r["traces"]) == 2
        # the default protocol (memfactory): boxed EM without a judge; RULER synthetic sets keep theirs
        assert r["metric"] == ("string_match_all" if r["set"] == "eval_fwe_1024" else "boxed_em")
        assert r["protocol"] == "memfactory"
        assert r["question"] and r["gold"] and r["latency_s"] > 0
    manifest = json.loads((out / "eval.json").read_text())
    assert manifest["k"] == 2 and manifest["max_new_tokens"] == 4
    assert manifest["protocol"] == "memfactory" and manifest["metric"] == "boxed_em"
    assert (manifest["temperature"], manifest["top_p"]) == (1.0, 1.0)


def test_unknown_protocol_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", TINY_PRESET, "--sets", "eval_docqa", "--protocol", "memagnet"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--protocol" in err and "invalid choice: 'memagnet'" in err and "memagent" in err


def _eval(out, *extra: str) -> int:
    return main(
        [
            "eval",
            TINY_PRESET,
            "--sets",
            "eval_docqa,eval_fwe_1024",
            "--n",
            "2",
            "--max-new-tokens",
            "4",
            "--out",
            str(out),
            "--no-progress",
            *extra,
        ]
    )


def test_memagent_protocol_run_and_resume_under_another_protocol_is_refused(tmp_path, capsys):
    out = tmp_path / "ma"
    assert _eval(out, "--protocol", "memagent") == 0
    stdout = capsys.readouterr().out
    header = "protocol memagent: avg@1 (eval_docqa: memagent_sub_em; eval_fwe_1024: memagent_string_match_all)"
    assert header + ", temperature 0.7, top-p 0.95, max 4 new tokens" in stdout
    assert (out / "table.md").read_text().startswith(header)
    manifest = json.loads((out / "eval.json").read_text())
    assert (manifest["protocol"], manifest["k"], manifest["temperature"], manifest["top_p"]) == (
        "memagent",
        1,
        0.7,
        0.95,
    )
    assert manifest["metric"] == "memagent_sub_em"
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["protocol"] == "memagent" and len(r["scores"]) == 1 for r in records)
    for r in records:  # MemAgent's extraction: no "the answer is" / box -> no prediction -> 0
        for answer, prediction, s in zip(r["answers"], r["predictions"], r["scores"]):
            if prediction is None or prediction == "":
                assert s == 0.0
            if "the answer is" not in answer and "\\boxed" not in answer:
                assert prediction is None

    # the same folder under the other protocol: refused before any model loads, nothing appended
    assert _eval(out) == 2
    err = capsys.readouterr().err
    assert "--protocol memagent" in err and "--protocol memfactory" in err and "another --out" in err
    assert len((out / "samples.jsonl").read_text().splitlines()) == 4


def test_explicit_flags_override_the_protocol(tmp_path):
    out = tmp_path / "o"
    assert (
        _eval(out, "--protocol", "memagent", "--temperature", "0.3", "--top-p", "0.5", "--k", "2", "--metric", "em")
        == 0
    )
    manifest = json.loads((out / "eval.json").read_text())
    assert (manifest["temperature"], manifest["top_p"], manifest["k"]) == (0.3, 0.5, 2)
    assert manifest["metric"] == "memagent_em"  # "em" means MemAgent's em under this protocol
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["metric"] for r in records} == {"memagent_em", "memagent_string_match_all"}


def test_locomo_eval_reports_per_category_scores(tmp_path, capsys):
    """A real Memory-R1 eval on the tiny model; the answer prefix closes a box holding
    'Vinterby July' so some questions score a non-zero F1 and the cells differ per category."""
    out = tmp_path / "ev"
    code = main(
        [
            "eval",
            str(presets_dir() / "memory_r1_tiny_cpu.yaml"),
            "--sets",
            "locomo_synth",
            "--n",
            "9",
            "--k",
            "2",
            "--set",
            "model.path=tiny://qwen3-mini",
            "--set",
            "agent_options.embedder=hashing",
            "--set",
            "agent_options.answer_prefix=\\boxed{Vinterby July} ",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 9 and all(r["metric"] == "f1" and len(r["scores"]) == 2 for r in records)
    assert all(isinstance(r["category"], int) and r["category_name"] for r in records)

    # recompute every cell from the per-sample JSONL
    by_name: dict[str, list[float]] = {}
    for r in records:
        by_name.setdefault(r["category_name"], []).extend(r["scores"])
    names = [n for _, n in sorted({(r["category"], r["category_name"]) for r in records})]
    assert len(names) >= 3  # the first 9 synthetic questions span several categories
    every = [s for r in records for s in r["scores"]]
    assert any(s > 0 for s in every)  # the prefix makes some answers right: non-trivial arithmetic
    expected = ["memory_r1_tiny_cpu", *(f"{sum(by_name[n]) / len(by_name[n]):.4f}" for n in names)]
    expected.append(f"{sum(every) / len(every):.4f}")

    rows = list(csv.reader((out / "categories.csv").read_text().splitlines()))
    assert rows[0] == ["set", "model", *names, "overall"]
    assert rows[1:] == [["locomo_synth", *expected]]
    md = (out / "categories.md").read_text()
    assert "| " + " | ".join(["model", *names, "overall"]) + " |" in md
    assert "| " + " | ".join(expected) + " |" in md
    assert "(locomo_synth: f1)" in printed  # the header names the metric the set was scored with
    # printed after the main table; overall equals the main table's cell
    assert printed.index("| model | locomo_synth | avg |") < printed.index("per category")
    main_row = next(line for line in (out / "table.md").read_text().splitlines() if "memory_r1_tiny_cpu" in line)
    assert main_row.split(" | ")[1] == expected[-1]
