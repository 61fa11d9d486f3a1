"""``memfactory train PRESET [--set key=value ...] [--resume RUN] [--run-id ID]``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an agent with GRPO from a preset",
        description="Train with GRPO. Writes runs/<id>/ (preset copy, metrics.jsonl, samples.jsonl, "
        "stdout.log, checkpoints/) and a row in the runs database.",
    )
    parser.add_argument("preset", help="preset YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset field, e.g. --set trainer.lr=1e-5 (repeatable)")
    parser.add_argument("--resume", metavar="RUN_ID", help="continue a run from its last checkpoint")
    parser.add_argument("--run-id", help="use this id for a new run (the web UI picks it)")
    parser.add_argument("--runs-dir", help="override logging.runs_dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memfactory.config import load_preset
    from memfactory.trainer.session import TrainingSession

    overrides = list(args.overrides)
    if args.runs_dir:
        overrides.append(f"logging.runs_dir={args.runs_dir}")
        overrides.append(f"logging.runs_db={args.runs_dir}/memfactory.db")
    preset = load_preset(args.preset, overrides)
    from memfactory.preflight import check_preflight

    check_preflight(preset, args.preset)  # model path, data files, judge: before the run row exists
    session = TrainingSession(preset, run_id=args.run_id, resume=args.resume)
    session.run(progress=not args.no_progress)
    return 0 if session.status == "finished" else 1
