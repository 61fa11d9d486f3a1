"""The report: avg@k per (row, set), per-category tables for LoCoMo-shaped sets, markdown and CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from memfactory.types import SamplingParams


@dataclass
class CategoryTable:
    """avg@k per (row, category) of one set, plus the set's overall avg@k (all its questions).

    ``categories`` are column labels (the category name, else the category itself), ordered by
    category; ``cells[row][name]`` is None where that row answered no question of the category.
    """

    set: str
    rows: list[str]
    categories: list[str]
    cells: dict[str, dict[str, float | None]]
    overall: dict[str, float | None]
    counts: dict[str, dict[str, int]]  # questions per (row, category)
    k: int
    digits: int = 4

    def _fmt(self, value: float | None) -> str:
        return "-" if value is None else f"{value:.{self.digits}f}"

    def header(self) -> list[str]:
        return ["model", *self.categories, "overall"]

    def body(self) -> list[list[str]]:
        return [
            [row, *(self._fmt(self.cells[row][c]) for c in self.categories), self._fmt(self.overall[row])]
            for row in self.rows
        ]

    def markdown(self) -> str:
        lines = [f"{self.set}: avg@{self.k} per category", ""]
        lines += ["| " + " | ".join(self.header()) + " |", "|" + "---|" * len(self.header())]
        lines += ["| " + " | ".join(cells) + " |" for cells in self.body()]
        return "\n".join(lines) + "\n"


def _category_sort_key(category: Any) -> tuple[int, Any]:
    return (0, category) if isinstance(category, (int, float)) else (1, str(category))


def build_category_tables(
    records: Sequence[dict[str, Any]], rows: Sequence[str], sets: Sequence[str], k: int, digits: int = 4
) -> list[CategoryTable]:
    """One :class:`CategoryTable` for each set in which any evaluated record has a category."""
    tables = []
    for set_name in sets:
        mine = [r for r in records if r.get("set") == set_name and r.get("row") in rows]
        labelled = [r for r in mine if r.get("category") is not None]
        if not labelled:
            continue
        order: dict[str, tuple[int, Any]] = {}
        for r in labelled:
            name = str(r.get("category_name") or r["category"])
            key = _category_sort_key(r["category"])
            order[name] = min(order.get(name, key), key)
        names = sorted(order, key=lambda n: (order[n], n))
        sums: dict[tuple[str, str], float] = {}
        paths: dict[tuple[str, str], int] = {}
        counts = {row: {name: 0 for name in names} for row in rows}
        for r in mine:
            scores = [float(x) for x in (r.get("scores") or [r["score"]])]
            keys = [(r["row"], "")]  # "" = overall, every question of the set
            if r.get("category") is not None:
                name = str(r.get("category_name") or r["category"])
                keys.append((r["row"], name))
                counts[r["row"]][name] += 1
            for key in keys:
                sums[key] = sums.get(key, 0.0) + sum(scores)
                paths[key] = paths.get(key, 0) + len(scores)
        means = {key: sums[key] / paths[key] for key in sums if paths[key]}
        cells = {row: {name: means.get((row, name)) for name in names} for row in rows}
        overall = {row: means.get((row, "")) for row in rows}
        tables.append(CategoryTable(set_name, list(rows), names, cells, overall, counts, k, digits))
    return tables


def categories_markdown(tables: Sequence[CategoryTable]) -> str:
    return "\n".join(t.markdown() for t in tables)


def categories_csv(tables: Sequence[CategoryTable]) -> str:
    """All sets in one CSV: ``set, model, <every category of any set>, overall`` ('-' = none)."""
    columns: list[str] = []
    for t in tables:
        columns += [c for c in t.categories if c not in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["set", "model", *columns, "overall"])
    for t in tables:
        for row in t.rows:
            writer.writerow([t.set, row, *(t._fmt(t.cells[row].get(c)) for c in columns), t._fmt(t.overall[row])])
    return buffer.getvalue()


@dataclass
class Table:
    """avg@k per (row, set); ``cells[row][set]`` is None where nothing was evaluated.

    ``categories`` holds a per-category table for every set whose samples carry a category.
    """

    rows: list[str]
    sets: list[str]
    cells: dict[str, dict[str, float | None]]
    counts: dict[str, dict[str, int]]
    k: int
    digits: int = 4
    categories: list[CategoryTable] = field(default_factory=list)
    title: str = ""  # the report header (the protocol and its settings); printed above the table

    def average(self, row: str) -> float | None:
        values = [self.cells[row][s] for s in self.sets]
        if not values or any(v is None for v in values):
            return None
        return sum(values) / len(values)  # type: ignore[arg-type]

    def _fmt(self, value: float | None) -> str:
        return "-" if value is None else f"{value:.{self.digits}f}"

    def header(self) -> list[str]:
        return ["model", *self.sets, "avg"]

    def body(self) -> list[list[str]]:
        return [
            [row, *(self._fmt(self.cells[row][s]) for s in self.sets), self._fmt(self.average(row))]
            for row in self.rows
        ]

    def markdown(self, title: bool = True) -> str:
        lines = [self.title, ""] if title and self.title else []
        lines += ["| " + " | ".join(self.header()) + " |", "|" + "---|" * len(self.header())]
        lines += ["| " + " | ".join(cells) + " |" for cells in self.body()]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.header())
        writer.writerows(self.body())
        return buffer.getvalue()


def build_table(
    records: Sequence[dict[str, Any]],
    rows: Sequence[str],
    sets: Sequence[str],
    k: int,
    digits: int = 4,
    title: str = "",
) -> Table:
    """avg@k: the mean of every path's score over the questions of each (row, set)."""
    sums: dict[tuple[str, str], float] = {}
    paths: dict[tuple[str, str], int] = {}
    counts: dict[str, dict[str, int]] = {r: {s: 0 for s in sets} for r in rows}
    for record in records:
        key = (record["row"], record["set"])
        if key[0] not in counts or key[1] not in counts[key[0]]:
            continue
        scores = record.get("scores") or [record["score"]]
        sums[key] = sums.get(key, 0.0) + float(sum(scores))
        paths[key] = paths.get(key, 0) + len(scores)
        counts[key[0]][key[1]] += 1
    cells = {r: {s: (sums[(r, s)] / paths[(r, s)] if paths.get((r, s)) else None) for s in sets} for r in rows}
    categories = build_category_tables(records, rows, sets, k, digits)
    return Table(list(rows), list(sets), cells, counts, k, digits, categories, title)


def set_metrics(records: Sequence[dict[str, Any]], table: Table) -> str:
    """``"eval_50: memagent_sub_em; eval_fwe: memagent_string_match_all"`` from the per-sample records."""
    metrics: dict[str, set[str]] = {}
    for r in records:
        if r["row"] in table.rows and r.get("metric"):
            metrics.setdefault(r["set"], set()).add(r["metric"])
    return "; ".join(f"{s}: {', '.join(sorted(metrics[s]))}" for s in table.sets if s in metrics)


def report_title(protocol: str, k: int, params: SamplingParams, records: Sequence[dict[str, Any]], table: Table) -> str:
    """The report's header line: the protocol, avg@k, the sampling settings and each set's metric."""
    per_set = set_metrics(records, table)
    return (
        f"protocol {protocol}: avg@{k}{f' ({per_set})' if per_set else ''}, temperature {params.temperature}, "
        f"top-p {params.top_p}, max {params.max_new_tokens} new tokens"
    )
