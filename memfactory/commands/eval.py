"""``memfactory eval PRESET_OR_MODEL [...] --sets eval_50,eval_100,eval_fwe_16384 [--protocol memagent]``.

Prints the paper's Table 2 shape (rows = models/checkpoints, columns = sets + average, cells =
avg@k) under a header naming the eval protocol (``memfactory`` by default, or ``memagent``; see
``memfactory.eval.protocols``) and writes table.md, table.csv, samples.jsonl and eval.json under
--out; rerunning with the same --out (and protocol) resumes where an interrupted eval stopped.
Sets whose samples carry a category (LoCoMo) also get a per-category table, printed after the
main one and written to categories.md/.csv.
"""

from __future__ import annotations

import argparse

from memfactory.errors import MemFactoryError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="avg@k of presets/models over eval sets, as a Table-2-shaped report",
        description="Answer every question k times (one batched run per batch of questions), score each path "
        "and print avg@k per model and set, under a named protocol. --protocol memfactory (default; the "
        "MemFactory paper's): boxed answer template, temperature 1.0, top-p 1.0, at most 2048 new tokens, "
        "k 4, scored by the LLM judge when the preset has a judge, else boxed_em. --protocol memagent "
        "(MemAgent's published eval): 'Therefore, the answer is' template, temperature 0.7, top-p 0.95, "
        "chunks of 5000 tokens, memory and answer capped at 1024 tokens, k 1, MemAgent's extraction and "
        "sub-EM (memagent_sub_em; memagent_string_match_all for RULER synthetic sets). Sets that name a "
        "metric (RULER string_match_all, LoCoMo f1) keep it (MemAgent's version under memagent). A positional argument is a preset YAML or a "
        "model (folder, hub id, tiny://qwen3-mini, smollm2-135m-instruct) run with the default MemAgent preset.",
    )
    parser.add_argument("targets", nargs="+", metavar="PRESET_OR_MODEL", help="preset .yaml file or model path/name")
    parser.add_argument(
        "--sets", help="comma-separated eval sets (default: the preset's env.eval), e.g. eval_50,eval_100"
    )
    parser.add_argument("--data-dir", help="folder holding the eval sets (default: the preset's env.data_dir)")
    parser.add_argument(
        "--protocol",
        choices=["memfactory", "memagent"],
        default="memfactory",
        help="eval protocol: prompts, sampling, caps and scoring (default memfactory); the report, eval.json "
        "and samples.jsonl name it, and an --out folder made with another protocol is refused",
    )
    parser.add_argument(
        "--k", type=int, help="paths per question; cells are avg@k (overrides the protocol's: memfactory 4, memagent 1)"
    )
    parser.add_argument("--n", type=int, help="evaluate at most N samples of each set")
    parser.add_argument(
        "--temperature",
        type=float,
        help="sampling temperature (overrides the protocol's: memfactory 1.0, memagent 0.7)",
    )
    parser.add_argument(
        "--top-p", type=float, help="nucleus sampling (overrides the protocol's: memfactory 1.0, memagent 0.95)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help="cap on every call's new tokens (overrides the protocol's: memfactory 2048 or the preset's "
        "trainer.max_new_tokens if lower, memagent 1024); module budgets such as memory_tokens still apply",
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
    parser.add_argument(
        "--metric",
        help="metric for sets that do not name one (overrides the protocol's: memfactory llm_judge with a "
        "judge, else boxed_em; memagent memagent_sub_em); under memagent, sub_em/em/f1/string_match_all "
        "mean MemAgent's versions",
    )
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
    from memfactory.eval.protocols import get_protocol
    from memfactory.eval.run import run_eval
    from memfactory.targets import make_rows

    protocol = get_protocol(args.protocol)
    k = args.k if args.k is not None else protocol.k
    if k < 1:
        raise MemFactoryError(f"--k must be >= 1, got {k}")
    if args.n is not None and args.n < 1:
        raise MemFactoryError(f"--n must be >= 1, got {args.n}")
    if args.batch_size < 1:
        raise MemFactoryError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise MemFactoryError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise MemFactoryError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    rows = make_rows(
        args.targets,
        args.checkpoint,
        args.overrides,
        runs_db=args.runs_db,
        keep_chunk_cap=args.keep_chunk_cap,
        protocol=protocol,
    )
    sets = (
        [s.strip() for s in args.sets.split(",") if s.strip()]
        if args.sets
        else list(rows[0].preset.env.options.get("eval") or [])
    )
    params = protocol.params(
        rows[0].preset, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens
    )
    metric = args.metric or protocol.default_metric([r.preset for r in rows])
    import torch

    torch.manual_seed(args.seed)
    table, folder = run_eval(
        rows,
        sets,
        out=args.out,
        k=k,
        n=args.n,
        params=params,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        default_metric=metric,
        progress=not args.no_progress,
        protocol=protocol,
    )
    print()
    print(table.markdown(), end="")  # its first line names the protocol, avg@k, each set's metric, sampling
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
