"""``memfactory eval PRESET_OR_MODEL [...] --sets eval_50,eval_100,eval_fwe_16384 --k 4``.

Prints the paper's Table 2 shape (rows = models/checkpoints, columns = sets + average, cells =
avg@k) and writes table.md, table.csv and samples.jsonl under --out; rerunning with the same
--out resumes where an interrupted eval stopped. Sets whose samples carry a category (LoCoMo)
also get a per-category table, printed after the main one and written to categories.md/.csv.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="avg@k of presets/models over eval sets, as a Table-2-shaped report",
        description="Answer every question k times (one batched run per batch of questions), score each path "
        "with the set's metric (sub_em; string_match_all for RULER sets) and print avg@k per model and set. "
        "A positional argument is a preset YAML or a model (folder, hub id, tiny://qwen3-mini, "
        "smollm2-135m-instruct) run with the default MemAgent preset.",
    )
    parser.add_argument("targets", nargs="+", metavar="PRESET_OR_MODEL", help="preset .yaml file or model path/name")
    parser.add_argument(
        "--sets", help="comma-separated eval sets (default: the preset's env.eval), e.g. eval_50,eval_100"
    )
    parser.add_argument("--data-dir", help="folder holding the eval sets (default: the preset's env.data_dir)")
    parser.add_argument("--k", type=int, default=4, help="paths per question; cells are avg@k (default 4)")
    parser.add_argument("--n", type=int, help="evaluate at most N samples of each set")
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature (default 1.0, the paper's)"
    )
    parser.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling (MemAgent: 0.95 with temperature 0.7)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help="cap on every call's new tokens (default: the preset's trainer.max_new_tokens; "
        "2048 for a bare model); module budgets such as memory_tokens still apply",
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="RUN_OR_DIR",
        help="a run id (its newest checkpoint) or a folder; once for every model, or once per "
        "model in order ('none' = base weights)",
    )
    parser.add_argument(
        "--runs-db", help="runs database for --checkpoint run ids (default: the preset's logging.runs_db)"
    )
    parser.add_argument("--out", help="output folder (default evals/<timestamp>/); reuse it to resume")
    parser.add_argument("--batch-size", type=int, default=4, help="questions per batched run (x k paths)")
    parser.add_argument("--metric", default="sub_em", help="metric for sets that do not name one (default sub_em)")
    parser.add_argument(
        "--keep-chunk-cap",
        action="store_true",
        help="keep the preset's max_chunks (by default eval reads whole contexts, as the paper)",
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed set once before sampling")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset field for every target, e.g. --set modules.memory.chunk_tokens=1024",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memfactory.errors import MemFactoryError
    from memfactory.evaluate import make_rows, run_eval
    from memfactory.types import SamplingParams

    if args.k < 1:
        raise MemFactoryError(f"--k must be >= 1, got {args.k}")
    if args.n is not None and args.n < 1:
        raise MemFactoryError(f"--n must be >= 1, got {args.n}")
    if args.batch_size < 1:
        raise MemFactoryError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 < args.top_p <= 1:
        raise MemFactoryError(f"--top-p must be in (0, 1], got {args.top_p}")
    rows = make_rows(
        args.targets, args.checkpoint, args.overrides, runs_db=args.runs_db, keep_chunk_cap=args.keep_chunk_cap
    )
    sets = (
        [s.strip() for s in args.sets.split(",") if s.strip()]
        if args.sets
        else list(rows[0].preset.env.options.get("eval") or [])
    )
    first = rows[0].preset.trainer
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens or first.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        stop=list(first.stop),
    )
    import torch

    torch.manual_seed(args.seed)
    table, folder = run_eval(
        rows,
        sets,
        out=args.out,
        k=args.k,
        n=args.n,
        params=params,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        default_metric=args.metric,
        progress=not args.no_progress,
    )
    from memfactory.evaluate import ResultsStore

    metrics: dict[str, set[str]] = {}  # the metric each set was scored with, from the per-sample results
    for r in ResultsStore(folder).records():
        if r["row"] in table.rows and r.get("metric"):
            metrics.setdefault(r["set"], set()).add(r["metric"])
    per_set = "; ".join(f"{s}: {', '.join(sorted(metrics[s]))}" for s in table.sets if s in metrics)
    print()
    print(
        f"avg@{args.k} ({per_set or args.metric}), temperature {args.temperature}, "
        f"top-p {args.top_p}, max {params.max_new_tokens} new tokens"
    )
    print(table.markdown(), end="")
    counts = ", ".join(f"{s}: {table.counts[table.rows[0]][s]}" for s in table.sets)
    print(f"questions per set ({table.rows[0]}): {counts}")
    for cat in table.categories:  # LoCoMo-shaped sets: avg@k per question category
        print()
        print(cat.markdown(), end="")
        per = ", ".join(f"{c}: {cat.counts[cat.rows[0]][c]}" for c in cat.categories)
        print(f"questions per category ({cat.rows[0]}): {per}")
    extra = ", categories.md, categories.csv" if table.categories else ""
    print(f"wrote {folder}/table.md, table.csv, samples.jsonl{extra}")
    return 0
