"""avg@k tables: cells over paths and questions, missing cells, per-category tables, markdown and CSV."""

from __future__ import annotations

import csv
import io

import pytest

from memfactory.eval.tables import build_category_tables, build_table, categories_csv


def record(row: str, set_name: str, sid: str, scores: list[float]) -> dict:
    return {"row": row, "set": set_name, "sample_id": sid, "scores": scores, "score": sum(scores) / len(scores)}


def test_table_cells_are_avg_at_k_over_paths_and_questions():
    records = [
        record("base", "eval_50", "q1", [1, 0, 0, 1]),  # 0.5
        record("base", "eval_50", "q2", [1, 1, 1, 0]),  # 0.75
        record("base", "eval_fwe", "q1", [1 / 3, 2 / 3, 1, 0]),  # 0.5
        record("rl", "eval_50", "q1", [1, 1, 1, 1]),
        record("rl", "eval_50", "q2", [0, 0, 0, 1]),
        record("rl", "eval_fwe", "q1", [0, 0, 0, 0]),
        record("other", "eval_50", "q1", [1, 1, 1, 1]),  # a row not asked for is ignored
    ]
    table = build_table(records, ["base", "rl"], ["eval_50", "eval_fwe"], k=4)
    assert table.cells["base"]["eval_50"] == pytest.approx(0.625)
    assert table.cells["base"]["eval_fwe"] == pytest.approx(0.5)
    assert table.average("base") == pytest.approx(0.5625)
    assert table.cells["rl"]["eval_50"] == pytest.approx(0.625)
    assert table.average("rl") == pytest.approx(0.3125)
    assert table.counts["base"] == {"eval_50": 2, "eval_fwe": 1}

    lines = table.markdown().splitlines()
    assert lines[0] == "| model | eval_50 | eval_fwe | avg |"
    assert lines[2] == "| base | 0.6250 | 0.5000 | 0.5625 |"
    assert lines[3] == "| rl | 0.6250 | 0.0000 | 0.3125 |"
    parsed = list(csv.reader(io.StringIO(table.csv())))
    assert parsed == [
        ["model", "eval_50", "eval_fwe", "avg"],
        ["base", "0.6250", "0.5000", "0.5625"],
        ["rl", "0.6250", "0.0000", "0.3125"],
    ]


def test_missing_cell_prints_a_dash_and_no_average():
    table = build_table([record("a", "s1", "q", [1.0])], ["a"], ["s1", "s2"], k=1)
    assert table.body() == [["a", "1.0000", "-", "-"]]


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
