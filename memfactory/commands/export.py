"""``memfactory export RUN [--merge] [--dtype DTYPE] [--out DIR] [--db PATH] [--force]``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a run's newest checkpoint: the LoRA adapter, or merged into a full model",
        description="RUN is a run id (looked up in the runs database), a run folder or a checkpoint folder. "
        "--merge folds the LoRA adapter into the base model and writes a full model + tokenizer folder that "
        "loads with AutoModelForCausalLM.from_pretrained; without it the checkpoint's model folder is copied.",
    )
    parser.add_argument("run", metavar="RUN", help="run id, run folder or checkpoint folder")
    parser.add_argument("--merge", action="store_true", help="merge the adapter into the base weights")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="dtype of the written weights (default: the run's own)")
    parser.add_argument("--out", help="output folder (default: <run>/export/step-N-merged|adapter[-DTYPE])")
    parser.add_argument("--db", help="runs database (default: logging.runs_db's default, runs/memfactory.db)")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memfactory.export import export_checkpoint

    out = export_checkpoint(args.run, args.out, merge=args.merge, db=args.db, force=args.force, dtype=args.dtype)
    print(out)
    return 0
