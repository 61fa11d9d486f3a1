"""``memfactory data``: generate synthetic sets, build MemAgent's HotpotQA sets from the raw dev file,
download MemAgent's sets, check a data file."""

from __future__ import annotations

import argparse
import os
from collections import Counter

from memfactory.errors import MemFactoryError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="generate, download or check long-context QA data")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = sub.add_parser("synth", help="write a seeded synthetic set in MemAgent's JSON format")
    synth.add_argument("kind", choices=["hotpotqa", "fwe", "docqa", "locomo"], help="which generator")
    synth.add_argument("--n", type=int, default=None, help="number of samples (default 128; docqa 64)")
    synth.add_argument("--docs", type=int, default=50, help="hotpotqa: documents per question")
    synth.add_argument("--length", type=int, default=16384, help="fwe: context length in tokens")
    synth.add_argument(
        "--tokenizer", default=None, help="fwe: local tokenizer folder to measure length (default ~4 chars/token)"
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--sessions", type=int, default=4, help="locomo: sessions per conversation")
    synth.add_argument("--out", required=True, help="output .json or .jsonl file")
    synth.set_defaults(func=run_synth)

    build = sub.add_parser(
        "build",
        help="build MemAgent's HotpotQA eval sets (eval_{N}.json) from the raw dev file, offline",
        description="MemAgent's recipe (taskutils/memory_data/): the pool of the file's unique paragraphs, "
        "each question's own paragraphs plus distractors sampled from the pool up to N documents (random "
        "seeded 42), shuffled with random.Random(4), joined as 'Document i:'. Questions: the first "
        "--candidates of the file, less those --filter-model answers without context, the first --n of "
        "the rest. Streams the input (bounded memory); the same input and options give byte-identical files.",
    )
    build.add_argument("dev_file", help="hotpot_dev_distractor_v1.json (or a Hugging Face / IRCoT export)")
    build.add_argument("--out", required=True, help="output folder (use it as env.data_dir)")
    build.add_argument(
        "--sizes", type=int, nargs="+", default=[50, 100, 200], help="documents per context, one file each"
    )
    build.add_argument("--n", type=int, default=128, help="questions per file (MemAgent: 128)")
    build.add_argument(
        "--candidates", type=int, default=200, help="the file's first questions to choose from (MemAgent: 200)"
    )
    build.add_argument("--seed", type=int, default=42, help="the distractor sampler's seed (MemAgent: 42)")
    build.add_argument(
        "--filter-model",
        action="append",
        default=[],
        metavar="MODEL",
        help="drop questions this model answers without context (repeatable; MemAgent: Qwen2.5-7B base and "
        "instruct); a model folder, hub id or built-in name",
    )
    build.add_argument("--filter-samples", type=int, default=2, help="answers per question and model (MemAgent: 2)")
    build.add_argument(
        "--filter-max-new-tokens", type=int, default=512, help="cap on each filter answer (MemAgent: 512)"
    )
    build.set_defaults(func=run_build)

    download = sub.add_parser("download", help="download a public data set (needs internet)")
    download.add_argument(
        "dataset",
        choices=["memagent", "locomo"],
        help="MemAgent's BytedTsinghua-SIA/hotpotqa, or LoCoMo's locomo10.json",
    )
    download.add_argument("--to", required=True, help="target folder (use it as env.data_dir)")
    download.add_argument(
        "--files", nargs="*", default=None, help="file patterns (default: eval_50/100/200.json and *.parquet)"
    )
    download.set_defaults(func=run_download)

    check = sub.add_parser(
        "check",
        help="validate a data file, summarise it, and check its contexts against the reading budget",
        description="Validate a data file and summarise it; count documents and tokens per context and "
        "compare them with max_chunks x chunk_tokens of a recurrent memory (default: the MemAgent GPU "
        "presets' 6 x 2500), warning when most contexts would be cut.",
    )
    check.add_argument("path", help=".json/.jsonl/.parquet file or synthetic://kind?n=..")
    check.add_argument(
        "--preset", help="take chunk_tokens, max_chunks and truncate from this preset's recurrent module"
    )
    check.add_argument("--chunk-tokens", type=int, help="tokens per chunk (default 2500, or the preset's)")
    check.add_argument(
        "--max-chunks", type=int, help="chunks read per context, 0 = no cap (default 6, or the preset's)"
    )
    check.add_argument(
        "--tokenizer",
        help="tokenizer to count tokens exactly: a local folder or a built-in model name (default: the --preset's "
        "model when it is on this machine, else ~4 characters a token)",
    )
    check.set_defaults(func=run_check)


def run_synth(args: argparse.Namespace) -> int:
    from memfactory.data.synth import synth_dataset, write_json

    if args.kind == "locomo":
        return _synth_locomo(args)
    kw = {}
    if args.kind == "hotpotqa":
        kw["docs"] = args.docs
    elif args.kind == "fwe":
        kw["length"] = args.length
        if args.tokenizer:
            kw["tokenizer"] = _load_tokenizer(args.tokenizer)
    n = args.n if args.n is not None else (64 if args.kind == "docqa" else 128)
    try:
        records = synth_dataset(args.kind, n, args.seed, **kw)
    except ValueError as exc:
        raise MemFactoryError(str(exc)) from None
    path = write_json(records, args.out)
    print(f"wrote {len(records)} {args.kind} samples to {path}")
    return 0


def _synth_locomo(args: argparse.Namespace) -> int:
    from memfactory.data.synth_locomo import synth_locomo, write_locomo

    try:
        records = synth_locomo(args.n if args.n is not None else 4, args.seed, sessions=args.sessions)
    except ValueError as exc:
        raise MemFactoryError(str(exc)) from None
    path = write_locomo(records, args.out)
    print(f"wrote {len(records)} locomo conversations ({sum(len(r['qa']) for r in records)} questions) to {path}")
    return 0


def _load_tokenizer(folder: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001  transformers raises OSError, ValueError, ...
        raise MemFactoryError(f"cannot load a tokenizer from {folder}: {exc}") from None


def run_build(args: argparse.Namespace) -> int:
    from memfactory.data.hotpotqa_build import build_eval_sets, choose, open_dev

    with open_dev(args.dev_file, candidates=args.candidates) as dev:
        print(
            f"{args.dev_file}: {dev.records} questions, {dev.paragraphs} paragraphs, {dev.pool.size} unique "
            f"(the pool); {len(dev.questions)} candidates"
        )
        drop: set[int] = set()
        for model in args.filter_model:
            known = _closed_book(model, dev.questions, args)
            print(f"filter {model}: answers {len(known)} of {len(dev.questions)} candidates without context")
            drop |= known
        questions = choose(dev, args.n, drop)
        for path in build_eval_sets(dev, questions, args.sizes, args.out, seed=args.seed):
            print(f"wrote {path} ({len(questions)} questions)")
    return 0


def _closed_book(model: str, questions: list, args: argparse.Namespace) -> set[int]:
    from memfactory.backends.build import build_backend
    from memfactory.eval.closed_book import ClosedBook, known_questions
    from memfactory.targets import resolve_target

    if args.filter_samples < 1 or args.filter_max_new_tokens < 1:
        raise MemFactoryError("--filter-samples and --filter-max-new-tokens must be at least 1")
    backend = build_backend(resolve_target(model).model)
    how = ClosedBook(samples=args.filter_samples, max_new_tokens=args.filter_max_new_tokens)
    try:
        return known_questions(backend, [(q.index, q.question, [q.answer]) for q in questions], how)
    finally:
        if callable(getattr(backend, "close", None)):
            backend.close()


def run_download(args: argparse.Namespace) -> int:
    from memfactory.data.download import download_memagent

    if args.dataset == "locomo":
        from memfactory.data.locomo import download_locomo

        print(download_locomo(args.to))
        return 0
    files = download_memagent(args.to, patterns=args.files)
    for path in files:
        print(path)
    return 0


def run_check(args: argparse.Namespace) -> int:
    from memfactory.data.sources import load_any

    samples = load_any(args.path)
    formats = Counter(s.meta.get("format", "?") for s in samples)
    chars = [len(s.context) for s in samples]
    print(
        f"{args.path}: {len(samples)} samples ({', '.join(f'{k} {v}' for k, v in formats.items())}); "
        f"context {min(chars)}-{max(chars)} chars, mean {sum(chars) // len(chars)}"
    )
    first = samples[0]
    print(f"first: {first.id}: {first.question[:100]!r} -> {first.answers}")
    report, tokenizer = _budget_report(args, samples)
    for line in report.lines():
        print(line)
    if tokenizer:
        print(f"tokens counted with the tokenizer of {tokenizer}")
    warning = report.warning()
    if warning:
        print(warning)
    return 0


def _local_model(path: str) -> str | None:
    """``path`` when it names a model on this machine (a folder or a built-in), else None (a hub id)."""
    from memfactory.backends.sources import BUILTIN_PATHS, model_path_problem

    if path.lower() in BUILTIN_PATHS or (model_path_problem(path) is None and os.path.isdir(os.path.expanduser(path))):
        return path
    return None


def _budget_report(args: argparse.Namespace, samples: list):
    """The budget report, and the model whose tokenizer counted (None: ~4 characters a token)."""
    from memfactory.data.check import DEFAULT_CHUNK_TOKENS, DEFAULT_MAX_CHUNKS, budget_from_preset, budget_report

    chunk_tokens, max_chunks, truncate = DEFAULT_CHUNK_TOKENS, DEFAULT_MAX_CHUNKS, "middle"
    source = "the MemAgent GPU presets'"
    tokenizer = args.tokenizer
    if args.preset:
        from memfactory.config import load_preset

        preset = load_preset(args.preset)
        tokenizer = tokenizer or _local_model(preset.model.path)
        found = budget_from_preset(preset)
        if found is None:
            raise MemFactoryError(f"preset {args.preset} has no recurrent memory module: nothing reads in chunks")
        chunk_tokens, max_chunks, truncate = found
        source = f"preset {args.preset}"
    if args.chunk_tokens is not None:
        if args.chunk_tokens < 1:
            raise MemFactoryError(f"--chunk-tokens must be >= 1, got {args.chunk_tokens}")
        chunk_tokens = args.chunk_tokens
        source = f"{source}, --chunk-tokens" if args.preset else "command line"
    if args.max_chunks is not None:
        if args.max_chunks < 0:
            raise MemFactoryError(f"--max-chunks must be >= 0 (0 = no cap), got {args.max_chunks}")
        max_chunks = args.max_chunks or None
        source = f"{source}, --max-chunks" if args.preset else "command line"
    counter = None
    if tokenizer:
        from memfactory.backends.sources import resolve_model_path
        from memfactory.data.synth import token_counter

        counter = token_counter(_load_tokenizer(resolve_model_path(tokenizer)))
    report = budget_report(
        samples,
        chunk_tokens=chunk_tokens,
        max_chunks=max_chunks,
        truncate=truncate,
        count_tokens=counter,
        source=source,
    )
    return report, tokenizer
