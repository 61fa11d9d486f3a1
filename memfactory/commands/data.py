"""``memfactory data``: generate synthetic sets, download MemAgent's sets, check a data file."""

from __future__ import annotations

import argparse
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
    check.add_argument("--tokenizer", help="local tokenizer folder to count tokens exactly (default ~4 chars/token)")
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
    report = _budget_report(args, samples)
    for line in report.lines():
        print(line)
    warning = report.warning()
    if warning:
        print(warning)
    return 0


def _budget_report(args: argparse.Namespace, samples: list):
    from memfactory.data.check import DEFAULT_CHUNK_TOKENS, DEFAULT_MAX_CHUNKS, budget_from_preset, budget_report

    chunk_tokens, max_chunks, truncate = DEFAULT_CHUNK_TOKENS, DEFAULT_MAX_CHUNKS, "middle"
    source = "the MemAgent GPU presets'"
    if args.preset:
        from memfactory.config import load_preset

        found = budget_from_preset(load_preset(args.preset))
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
    if args.tokenizer:
        from memfactory.data.synth import token_counter

        counter = token_counter(_load_tokenizer(args.tokenizer))
    return budget_report(
        samples,
        chunk_tokens=chunk_tokens,
        max_chunks=max_chunks,
        truncate=truncate,
        count_tokens=counter,
        source=source,
    )
