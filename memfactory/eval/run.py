"""``run_eval``: every row on every set, resumable, then the report files; one model loaded at a time."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from memfactory.agents.build import build_agent
from memfactory.backends.build import build_backend
from memfactory.config import Preset, apply_override, parse_preset
from memfactory.envs.build import build_env
from memfactory.errors import MemFactoryError
from memfactory.eval.results import ResultsStore, check_manifest, default_out_dir
from memfactory.eval.scoring import DEFAULT_METRIC, SampleResult
from memfactory.eval.tables import Table, build_table, categories_csv, categories_markdown, report_title
from memfactory.eval.workflow import evaluate_workflow
from memfactory.targets import EvalRow
from memfactory.types import Sample, SamplingParams


def load_sets(
    preset: Preset, sets: Sequence[str], *, data_dir: str | None = None, n: int | None = None
) -> dict[str, list[Sample]]:
    """Each named set's samples from the preset's environment (``data_dir`` overrides its folder)."""
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


def _free_accelerator_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


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
    ``protocol`` (a :class:`~memfactory.eval.protocols.Protocol`; None = "custom") renames the
    sets' metrics through its ``metric_map`` and is named in eval.json, samples.jsonl and
    table.md's header; a folder made under another protocol is refused.
    """
    if not sets:
        raise MemFactoryError("no eval sets: name them with --sets eval_50,eval_100,... or set env.eval in the preset")
    folder = Path(out) if out else default_out_dir()
    store = ResultsStore(folder)
    protocol_name = protocol.name if protocol is not None else "custom"
    metric_map = dict(protocol.metric_map) if protocol is not None else None
    default_metric = (metric_map or {}).get(default_metric, default_metric)
    data = {row.label: load_sets(row.preset, sets, data_dir=data_dir, n=n) for row in rows}
    check_manifest(
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
