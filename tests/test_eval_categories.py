"""Per-category avg@k for LoCoMo-shaped sets: table arithmetic, and a real tiny Memory-R1 eval."""

from __future__ import annotations

import csv
import json

import pytest

from memfactory.cli import main
from memfactory.evaluate import build_category_tables, build_table, categories_csv
from memfactory.paths import presets_dir


def rec(row: str, set_name: str, sid: str, scores: list[float], category=None, name=None) -> dict:
    out = {"row": row, "set": set_name, "sample_id": sid, "scores": scores, "score": sum(scores) / len(scores)}
    if category is not None:
        out["category"], out["category_name"] = category, name
    return out


def test_category_cells_are_avg_at_k_per_category_and_overall():
    records = [
        rec("a", "loc", "q1", [1.0, 0.0], 4, "single-hop"),
        rec("a", "loc", "q2", [0.5, 0.5], 4, "single-hop"),
        rec("a", "loc", "q3", [0.2, 0.4], 1, "multi-hop"),
        rec("a", "loc", "q4", [1.0, 1.0]),  # no category: only counts towards overall
        rec("b", "loc", "q1", [0.0, 0.0], 4, "single-hop"),
        rec("a", "hotpot", "h1", [1.0, 1.0]),  # a set without categories gets no table
    ]
    table = build_table(records, ["a", "b"], ["loc", "hotpot"], k=2)
    (cat,) = table.categories
    assert cat.set == "loc" and cat.categories == ["multi-hop", "single-hop"]  # ordered by category id
    assert cat.cells["a"]["single-hop"] == pytest.approx(0.5)
    assert cat.cells["a"]["multi-hop"] == pytest.approx(0.3)
    assert cat.overall["a"] == pytest.approx(4.6 / 8) == pytest.approx(table.cells["a"]["loc"])
    assert cat.cells["b"]["multi-hop"] is None and cat.cells["b"]["single-hop"] == 0.0
    assert cat.counts["a"] == {"multi-hop": 1, "single-hop": 2}
    assert cat.body() == [["a", "0.3000", "0.5000", "0.5750"], ["b", "-", "0.0000", "0.0000"]]
    assert build_category_tables(records, ["a"], ["hotpot"], k=2) == []


def test_categories_csv_unions_the_categories_of_all_sets():
    records = [rec("a", "s1", "q", [1.0], 2, "temporal"), rec("a", "s2", "q", [0.0], 5, "adversarial")]
    rows = list(csv.reader(categories_csv(build_category_tables(records, ["a"], ["s1", "s2"], k=1)).splitlines()))
    assert rows == [
        ["set", "model", "temporal", "adversarial", "overall"],
        ["s1", "a", "1.0000", "-", "1.0000"],
        ["s2", "a", "-", "0.0000", "0.0000"],
    ]


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
