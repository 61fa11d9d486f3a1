"""Evaluation: avg@k of an agent over eval sets, reported in the paper's Table 2 shape.

Every question is answered ``k`` times in one batched ``agent.run(..., group_size=k,
train=False)``; each path is scored with the set's metric (``Sample.meta["metric"]``, e.g.
``string_match_all`` for RULER sets, else the default metric), and a cell of the table is the mean
over the k paths and all questions (avg@k). Rows are models/checkpoints, columns the sets plus
their average, cells printed with 4 decimals.

``memfactory eval`` runs under a named protocol (``memfactory.eval_protocols``: ``memagent`` or
``memfactory``) that sets the prompts, sampling, caps and metrics; the protocol's ``metric_map``
turns a set's metric into the one scored (``sub_em`` -> ``memagent_sub_em`` under ``memagent``),
and the report, ``eval.json`` and every ``samples.jsonl`` record name the protocol.

Two entry points:

* :func:`evaluate_workflow` — one preset, a list of samples, per-sample results (answers, scores,
  latency, tokens, memory trace). The web UI's Playground and the CLI both use it.
* :func:`run_eval` — many rows x many sets, resumable: per-sample results are appended to
  ``samples.jsonl`` under the output folder as each batch finishes, and a rerun with the same
  folder skips the (row, set, sample) triples already there. ``table.md`` / ``table.csv`` are
  rewritten at the end from everything in ``samples.jsonl``.

Sets whose samples carry ``meta["category"]`` (LoCoMo: 1 multi-hop ... 5 adversarial, named by
``meta["category_name"]``) also get a per-category table (rows = models, columns = categories +
overall, avg@k), written to ``categories.md`` / ``categories.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from memfactory.config import Preset, apply_override, load_preset, parse_preset
from memfactory.errors import MemFactoryError
from memfactory.types import Sample, SamplingParams, Trajectory

DEFAULT_METRIC = "sub_em"
PAPER_SETS = ("eval_50", "eval_100", "eval_fwe_16384")
PRESET_SUFFIXES = (".yaml", ".yml")
SAMPLES_FILE = "samples.jsonl"
MANIFEST_FILE = "eval.json"

ProgressFn = Callable[[int, int, "list[SampleResult]"], None]


# --------------------------------------------------------------------------- per-sample results


@dataclass
class SampleResult:
    """One question answered ``k`` times: every path's answer, score, tokens and memory trace."""

    sample_id: str
    question: str
    gold: list[str]
    metric: str
    answers: list[str]  # the raw final answer of each path
    predictions: list[str | None]  # what the metric compared (boxed / "the answer is" / raw), None = unscorable
    scores: list[float]  # one per path
    latency_s: float  # this sample's share of its batch's wall time
    tokens: list[int]  # generated tokens of each path, all calls together
    prompt_tokens: list[int]  # prompt tokens of each path, all calls together
    calls: list[int]  # model calls of each path
    traces: list[list[dict[str, Any]]]  # each path's memory evolution
    counters: dict[str, float] = field(default_factory=dict)  # summed over the paths
    category: int | str | None = None  # sample.meta["category"] (LoCoMo-shaped sets), else None
    category_name: str | None = None  # sample.meta["category_name"], else None

    @property
    def k(self) -> int:
        return len(self.scores)

    @property
    def score(self) -> float:
        """Mean over the paths (this sample's contribution to avg@k)."""
        return sum(self.scores) / len(self.scores) if self.scores else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["score"] = self.score
        data["k"] = self.k
        return data


def metric_for(sample: Sample, default: str = DEFAULT_METRIC, metric_map: Mapping[str, str] | None = None) -> str:
    """The set's own metric (RULER loaders put ``string_match_all`` in meta), else ``default``;
    then renamed through a protocol's ``metric_map`` (e.g. ``sub_em`` -> ``memagent_sub_em``)."""
    metric = sample.meta.get("metric") if isinstance(sample.meta, dict) else None
    name = str(metric) if metric else default
    return (metric_map or {}).get(name, name)


def category_of(sample: Sample) -> tuple[int | str | None, str | None]:
    """``(category, category_name)`` from the sample's meta; ``(None, None)`` for sets without."""
    meta = sample.meta if isinstance(sample.meta, dict) else {}
    category, name = meta.get("category"), meta.get("category_name")
    return category, (str(name) if name is not None else None)


def _scorers(names: set[str], judge: Any = None) -> dict[str, Any]:
    from memfactory.envs.build import build_rewards
    from memfactory.registry import REGISTRY, UnknownNameError

    for name in names:
        try:
            REGISTRY.get("reward", name, where="metric")
        except UnknownNameError as exc:
            raise MemFactoryError(str(exc)) from None
    return build_rewards({name: 1.0 for name in names}, judge=judge)


def _path_tokens(trajectory: Trajectory) -> tuple[int, int]:
    generated = sum(len(c.response_ids) or math.ceil(len(c.text) / 4) for c in trajectory.calls)
    prompt = sum(len(c.prompt_ids) for c in trajectory.calls)
    return generated, prompt


def _prediction(scorer: Any, trajectory: Trajectory) -> str | None:
    getter = getattr(scorer, "prediction", None)
    if getter is not None:
        return getter(trajectory)
    from memfactory.envs.rewards import extract_prediction

    return extract_prediction(trajectory.answer)


def score_trajectories(
    samples: Sequence[Sample],
    trajectories: Sequence[Trajectory],
    k: int,
    *,
    default_metric: str = DEFAULT_METRIC,
    judge: Any = None,
    latency_s: float = 0.0,
    metric_map: Mapping[str, str] | None = None,
) -> list[SampleResult]:
    """Group ``k`` consecutive trajectories per sample and score each with its sample's metric."""
    if len(trajectories) != len(samples) * k:
        raise RuntimeError(f"agent returned {len(trajectories)} trajectories for {len(samples)} samples x k={k}")
    metrics = [metric_for(s, default_metric, metric_map) for s in samples]
    scorers = _scorers(set(metrics), judge)
    scores: list[float] = [0.0] * len(trajectories)
    for name, scorer in scorers.items():
        idx = [i for i in range(len(trajectories)) if metrics[i // k] == name]
        if idx:
            for i, value in zip(idx, scorer.score([trajectories[i] for i in idx])):
                scores[i] = float(value)
    share = latency_s / max(len(samples), 1)
    results = []
    for j, sample in enumerate(samples):
        paths = list(trajectories[j * k : (j + 1) * k])
        scorer = scorers[metrics[j]]
        counters: dict[str, float] = {}
        for t in paths:
            for key, value in t.counters.items():
                counters[key] = counters.get(key, 0.0) + value
        tokens = [_path_tokens(t) for t in paths]
        category, category_name = category_of(sample)
        results.append(
            SampleResult(
                sample_id=sample.id,
                question=sample.question,
                gold=list(sample.answers),
                metric=metrics[j],
                answers=[t.answer for t in paths],
                predictions=[_prediction(scorer, t) for t in paths],
                scores=scores[j * k : (j + 1) * k],
                latency_s=share,
                tokens=[g for g, _ in tokens],
                prompt_tokens=[p for _, p in tokens],
                calls=[len(t.calls) for t in paths],
                traces=[list(t.trace) for t in paths],
                counters=counters,
                category=category,
                category_name=category_name,
            )
        )
    return results


def evaluate_workflow(
    preset: Preset,
    samples: Sequence[Sample],
    *,
    k: int = 1,
    params: SamplingParams | None = None,
    on_progress: ProgressFn | None = None,
    backend: Any = None,
    agent: Any = None,
    batch_size: int = 4,
    default_metric: str = DEFAULT_METRIC,
    judge: Any = None,
    metric_map: Mapping[str, str] | None = None,
) -> list[SampleResult]:
    """Run ``preset``'s agent over ``samples`` k times each (no training), score every path.

    ``backend`` / ``agent`` / ``judge`` are built from the preset when not given (pass a loaded
    backend to avoid reloading the model between calls). ``params`` defaults to the preset's
    rollout settings. Samples go ``batch_size`` at a time (x k paths in one batched run);
    ``on_progress(done, total, finished)`` is called after each batch with that batch's results.
    """
    if k < 1:
        raise MemFactoryError(f"k must be >= 1, got {k}")
    if batch_size < 1:
        raise MemFactoryError(f"batch_size must be >= 1, got {batch_size}")
    from memfactory.agents.build import build_agent
    from memfactory.backends.build import build_backend

    if params is None:
        t = preset.trainer
        params = SamplingParams(
            max_new_tokens=t.max_new_tokens, temperature=t.temperature, top_p=t.top_p, stop=list(t.stop)
        )
    backend = backend if backend is not None else build_backend(preset.model)
    agent = agent if agent is not None else build_agent(preset)
    if judge is None and preset.judge is not None and _needs_judge(samples, default_metric, metric_map):
        judge = build_backend(preset.judge, where="judge.backend")
    samples = list(samples)
    results: list[SampleResult] = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        began = time.perf_counter()
        trajectories = agent.run(batch, backend, params=params, group_size=k, train=False)
        elapsed = time.perf_counter() - began
        finished = score_trajectories(
            batch,
            trajectories,
            k,
            default_metric=default_metric,
            judge=judge,
            latency_s=elapsed,
            metric_map=metric_map,
        )
        results.extend(finished)
        if on_progress is not None:
            on_progress(len(results), len(samples), finished)
    return results


def _needs_judge(samples: Sequence[Sample], default_metric: str, metric_map: Mapping[str, str] | None = None) -> bool:
    return any(metric_for(s, default_metric, metric_map) == "llm_judge" for s in samples)


# --------------------------------------------------------------------------- what to evaluate


def default_preset_data(model: str) -> dict[str, Any]:
    """A MemAgent preset around ``model`` with the paper's eval recipe (chunks of 2500, no cap)."""
    from memfactory.tracking.runs import slugify

    return {
        "name": f"memagent_{slugify(Path(model).name or model)}",
        "description": f"MemAgent over {model} (default eval preset)",
        "agent": "memagent",
        "modules": {
            "memory": {"type": "recurrent", "chunk_tokens": 2500, "memory_tokens": 2048, "answer_tokens": 2048}
        },
        "model": {"backend": "hf", "path": model, "dtype": "auto", "attn": "auto"},
        "env": {"type": "long_context", "eval": list(PAPER_SETS)},
        "rewards": {"sub_em": 1.0},
        "trainer": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 2048},
        "logging": {"swanlab": "disabled"},
    }


def is_preset_path(target: str) -> bool:
    return Path(target).suffix.lower() in PRESET_SUFFIXES


def resolve_target(target: str, overrides: Sequence[str] = ()) -> Preset:
    """A preset YAML file, or a model path / built-in model name wrapped in the default MemAgent preset."""
    if is_preset_path(target):
        return load_preset(target, list(overrides))
    _check_model(target)
    data = default_preset_data(target)
    for override in overrides:
        data = apply_override(data, override, "--set")
    return parse_preset(data, f"default MemAgent preset for {target}")


def _check_model(target: str) -> None:
    """Fail before any model loads when a model path clearly points nowhere."""
    from memfactory.backends.sources import BUILTIN_PATHS, hub_offline
    from memfactory.backends.tiny import SCHEME as TINY

    if target.startswith(TINY) or target.lower() in BUILTIN_PATHS:
        return
    local = Path(target).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise MemFactoryError(
                f"model {target!r} is a folder but holds no config.json (not a saved transformers model)"
            )
        return
    if local.exists():
        raise MemFactoryError(f"{target!r} is a file but neither a preset (.yaml) nor a model folder")
    looks_local = target.startswith((".", "/", "~")) or target.count("/") > 1 or "\\" in target
    if looks_local or hub_offline() or "/" not in target:
        raise MemFactoryError(
            f"unknown model {target!r}: not a preset (.yaml), not a model folder, not a built-in model "
            f"({', '.join(BUILTIN_PATHS)}){'' if '/' in target else ', not a hub id (owner/name)'}"
        )


def resolve_checkpoint(value: str, runs_db: str | Path = "runs/memfactory.db") -> str:
    """A run id (newest complete checkpoint of that run) or a folder -> the folder to load.

    A folder may be the weights themselves, a ``step-*`` checkpoint (its ``model/`` is used) or a
    run folder (its newest checkpoint's ``model/``).
    """
    from memfactory.trainer.checkpoint import latest_checkpoint

    def from_run_dir(run_dir: Path, what: str) -> str:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise MemFactoryError(f"{what} has no complete checkpoint under {Path(run_dir) / 'checkpoints'}")
        return str(ckpt / "model")

    path = Path(value).expanduser()
    if path.is_dir():
        if (path / "model").is_dir():
            return str(path / "model")
        if (path / "checkpoints").is_dir():
            return from_run_dir(path, f"run folder {value!r}")
        return str(path)
    db_path = Path(runs_db)
    if db_path.is_file():
        from memfactory.tracking.runs import RunsDB

        db = RunsDB(db_path)
        try:
            record = db.require(value)
        finally:
            db.close()
        return from_run_dir(Path(record.run_dir), f"run {value!r}")
    raise MemFactoryError(f"--checkpoint {value!r} is neither a folder nor a run id (no runs database at {db_path})")


def without_chunk_cap(preset: Preset) -> Preset:
    """The same preset with every module's ``max_chunks`` removed (MemFactory evaluates uncapped)."""
    data = preset.model_dump(mode="json", exclude_none=True)
    changed = False
    for spec in data.get("modules", {}).values():
        if spec.pop("max_chunks", None) is not None:
            changed = True
    return parse_preset(data, f"preset {preset.name!r}") if changed else preset


@dataclass
class EvalRow:
    """One row of the table: a label, the preset to run (checkpoint already set)."""

    label: str
    preset: Preset

    @property
    def checkpoint(self) -> str | None:
        return self.preset.model.checkpoint


def row_label(preset: Preset, target: str, checkpoint: str | None) -> str:
    base = preset.name if is_preset_path(target) else target
    return f"{base} + {checkpoint}" if checkpoint else base


def make_rows(
    targets: Sequence[str],
    checkpoints: Sequence[str] = (),
    overrides: Sequence[str] = (),
    *,
    runs_db: str | None = None,
    keep_chunk_cap: bool = False,
    protocol: Any = None,
) -> list[EvalRow]:
    """Targets x checkpoints -> rows. One ``--checkpoint`` applies to every target; as many as
    targets pair up in order; ``none`` / ``base`` means the base weights. ``protocol`` (an
    ``eval_protocols.Protocol``) puts its prompt settings on every preset; ``--set`` fields win."""
    if not targets:
        raise MemFactoryError("name at least one preset (.yaml) or model to evaluate")
    if checkpoints and len(checkpoints) not in (1, len(targets)):
        raise MemFactoryError(
            f"got {len(checkpoints)} --checkpoint values for {len(targets)} models; give one for all, "
            "or one per model in order (use 'none' for the base weights)"
        )
    per_target = (
        list(checkpoints) * len(targets) if len(checkpoints) == 1 else list(checkpoints) or [None] * len(targets)
    )
    rows: list[EvalRow] = []
    seen: dict[str, int] = {}
    for target, ckpt in zip(targets, per_target):
        preset = resolve_target(target, overrides)
        if not keep_chunk_cap:
            preset = without_chunk_cap(preset)
        if protocol is not None:
            preset = protocol.apply(preset, overrides)
        ckpt = None if ckpt is None or ckpt.lower() in ("none", "base", "") else ckpt
        if ckpt is not None:
            folder = resolve_checkpoint(ckpt, runs_db or preset.logging.runs_db)
            preset = preset.model_copy(update={"model": preset.model.model_copy(update={"checkpoint": folder})})
        label = row_label(preset, target, ckpt)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label} #{seen[label]}"
        rows.append(EvalRow(label, preset))
    return rows


def load_sets(
    preset: Preset, sets: Sequence[str], *, data_dir: str | None = None, n: int | None = None
) -> dict[str, list[Sample]]:
    """Each named set's samples from the preset's environment (``data_dir`` overrides its folder)."""
    from memfactory.envs.build import build_env

    data = preset.model_dump(mode="json", exclude_none=True)
    if data_dir is not None:
        data = apply_override(data, f"env.data_dir={json.dumps(str(data_dir))}")
    # eval needs no rewards from the preset (each set brings its metric), and no judge backend
    data["rewards"] = {DEFAULT_METRIC: 1.0}
    data.pop("judge", None)
    env = build_env(parse_preset(data, f"preset {preset.name!r}"))
    out = {}
    for name in sets:
        samples = list(env.samples(name))
        if not samples:
            raise MemFactoryError(f"eval set {name!r} holds no samples")
        out[name] = samples[:n] if n else samples
    return out


# --------------------------------------------------------------------------- results file and table


class ResultsStore:
    """``samples.jsonl``: one line per finished (row, set, sample), appended as batches finish."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / SAMPLES_FILE

    def records(self) -> list[dict[str, Any]]:
        """Every complete line; a line cut off by a crash is ignored (it is rerun)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and {"row", "set", "sample_id", "score"} <= set(record):
                out.append(record)
        return out

    def done(self) -> set[tuple[str, str, str]]:
        return {(r["row"], r["set"], r["sample_id"]) for r in self.records()}

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        needs_newline = (
            self.path.is_file() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
        )
        with self.path.open("a", encoding="utf-8") as fh:
            if needs_newline:  # the previous run died mid-line; start clean
                fh.write("\n")
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()


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


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def default_out_dir() -> Path:
    return Path("evals") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def _check_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """A rerun into the same folder must sample the same way, or avg@k would mix settings."""
    path = folder / MANIFEST_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = {}
        if old and old.get("protocol") != manifest["protocol"]:
            made = f"--protocol {old['protocol']}" if old.get("protocol") else "no named protocol (an older eval)"
            raise MemFactoryError(
                f"{folder} holds an eval made with {made}, not --protocol {manifest['protocol']}: scores of "
                "different protocols must not share a table; resume it with the same protocol or choose another --out"
            )
        for key in ("k", "temperature", "top_p", "max_new_tokens", "metric"):
            if key in old and old[key] != manifest[key]:
                raise MemFactoryError(
                    f"{folder} holds an eval with {key}={old[key]!r}, not {manifest[key]!r}; "
                    "resume with the same settings or choose another --out"
                )
        manifest = {
            **old,
            **manifest,
            "rows": sorted(set(old.get("rows", [])) | set(manifest["rows"])),
            "sets": sorted(set(old.get("sets", [])) | set(manifest["sets"])),
        }
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


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


def run_eval(
    rows: Sequence[EvalRow],
    sets: Sequence[str],
    *,
    out: str | Path | None = None,
    k: int = 4,
    n: int | None = None,
    params: SamplingParams,
    data_dir: str | None = None,
    batch_size: int = 4,
    default_metric: str = DEFAULT_METRIC,
    progress: bool = True,
    backend_factory: Callable[[Preset], Any] | None = None,
    log: Callable[[str], None] = print,
    protocol: Any = None,
) -> tuple[Table, Path]:
    """Evaluate every row on every set (resumable); write table.md / table.csv; return the table.

    All sets are loaded (and missing ones reported) before any model is. ``backend_factory``
    builds a row's backend (default: the registry's ``build_backend(preset.model)``).
    ``protocol`` (an ``eval_protocols.Protocol``; None = "custom") renames the sets' metrics
    through its ``metric_map`` and is named in eval.json, samples.jsonl and table.md's header; a
    folder made under another protocol is refused.
    """
    if not sets:
        raise MemFactoryError("no eval sets: name them with --sets eval_50,eval_100,... or set env.eval in the preset")
    folder = Path(out) if out else default_out_dir()
    store = ResultsStore(folder)
    protocol_name = protocol.name if protocol is not None else "custom"
    metric_map = dict(protocol.metric_map) if protocol is not None else None
    default_metric = (metric_map or {}).get(default_metric, default_metric)
    data = {row.label: load_sets(row.preset, sets, data_dir=data_dir, n=n) for row in rows}
    _check_manifest(
        folder,
        {
            "protocol": protocol_name,
            "k": k,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_new_tokens": params.max_new_tokens,
            "metric": default_metric,
            "rows": [r.label for r in rows],
            "sets": list(sets),
            "models": {r.label: {"path": r.preset.model.path, "checkpoint": r.checkpoint} for r in rows},
        },
    )
    done = store.done()
    todo = {
        row.label: {s: [x for x in data[row.label][s] if (row.label, s, x.id) not in done] for s in sets}
        for row in rows
    }
    total = sum(len(v) for per in todo.values() for v in per.values())
    skipped = sum(len(data[r.label][s]) for r in rows for s in sets) - total
    if skipped:
        log(f"resuming {folder}: {skipped} samples already done, {total} to go")
    bar = None
    if progress and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="q", desc="eval")
    try:
        for row in rows:
            if not any(todo[row.label].values()):
                continue
            from memfactory.agents.build import build_agent
            from memfactory.backends.build import build_backend

            backend = backend_factory(row.preset) if backend_factory else build_backend(row.preset.model)
            agent = build_agent(row.preset)
            judge = None
            if default_metric == "llm_judge":
                if row.preset.judge is None:
                    raise MemFactoryError("metric llm_judge needs a judge: model in the preset")
                judge = build_backend(row.preset.judge, where="judge.backend")
            for set_name in sets:
                samples = todo[row.label][set_name]
                if not samples:
                    continue
                if bar is not None:
                    bar.set_description(f"{row.label[:30]} {set_name}")

                def record(
                    done_n: int, total_n: int, finished: list[SampleResult], _set: str = set_name, _row: EvalRow = row
                ) -> None:
                    stamp = time.time()
                    store.append(
                        [
                            {
                                "row": _row.label,
                                "set": _set,
                                "model": _row.preset.model.path,
                                "checkpoint": _row.checkpoint,
                                "protocol": protocol_name,
                                "time": stamp,
                                **r.to_dict(),
                            }
                            for r in finished
                        ]
                    )
                    if bar is not None:
                        bar.update(len(finished))

                evaluate_workflow(
                    row.preset,
                    samples,
                    k=k,
                    params=params,
                    on_progress=record,
                    backend=backend,
                    agent=agent,
                    batch_size=batch_size,
                    default_metric=default_metric,
                    judge=judge,
                    metric_map=metric_map,
                )
            if backend_factory is None and callable(getattr(backend, "close", None)):
                backend.close()  # an engine such as vLLM holds memory (and its process group) until closed
            del backend, agent
            _free_accelerator_memory()  # the next row loads another model
    finally:
        if bar is not None:
            bar.close()
    records = store.records()
    table = build_table(records, [r.label for r in rows], list(sets), k)
    table.title = report_title(protocol_name, k, params, records, table)
    (folder / "table.md").write_text(table.markdown(), encoding="utf-8")
    (folder / "table.csv").write_text(table.csv(), encoding="utf-8")
    for name in ("categories.md", "categories.csv"):  # a rerun without categories leaves none stale
        (folder / name).unlink(missing_ok=True)
    if table.categories:
        header = f"{table.title}\n\n" if table.title else ""
        (folder / "categories.md").write_text(header + categories_markdown(table.categories), encoding="utf-8")
        (folder / "categories.csv").write_text(categories_csv(table.categories), encoding="utf-8")
    return table, folder
