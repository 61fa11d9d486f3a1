"""``memfactory eval``: user mistakes exit 2 with a readable message; a real run writes parseable files."""

from __future__ import annotations

import csv
import json

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
    assert (out / "table.md").read_text().startswith("| model |")
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 2 * 2  # rows x sets x questions
    assert {(r["row"], r["set"]) for r in records} == {
        (row, s) for row in ("memagent_tiny_test", "tiny://qwen3-mini") for s in ("eval_docqa", "eval_fwe_1024")
    }
    for r in records:
        assert len(r["answers"]) == len(r["scores"]) == len(r["traces"]) == 2
        assert r["metric"] == ("string_match_all" if r["set"] == "eval_fwe_1024" else "sub_em")
        assert r["question"] and r["gold"] and r["latency_s"] > 0
    manifest = json.loads((out / "eval.json").read_text())
    assert manifest["k"] == 2 and manifest["max_new_tokens"] == 4
