"""``memfactory plan PRESET [--gpus N] [--gpu-mem GiB] [--strategy ddp|fsdp2] [--set k=v ...] [--json]``."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from memfactory.errors import MemFactoryError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="estimate a preset's peak memory per device before training",
        description="Estimate peak memory per device (weights, gradients, optimizer, reference, activations, "
        "logits, KV cache, runtime) from the model's config.json and the preset's caps, without loading "
        "weights. Says whether it fits and which knob to turn when it does not. Exit code 0: fits (or no "
        "device memory known), 1: does not fit, 2: a mistake in the request. Formulas: docs/gpu.md.",
    )
    parser.add_argument("preset", help="preset YAML file")
    parser.add_argument("--gpus", type=int, default=1, help="processes, one per GPU (default 1)")
    parser.add_argument("--gpu-mem", type=float, default=None, metavar="GiB",
                        help="memory of each device in GiB (default: this machine's GPU, else host RAM)")
    parser.add_argument("--strategy", choices=["ddp", "fsdp2"], default=None,
                        help="how several GPUs split the model (default ddp: every device holds everything)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset field, e.g. --set trainer.micro_batch_size=2 (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of markdown")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memfactory.config import load_preset
    from memfactory.planner.plan import estimate_memory

    if args.gpus < 1:
        raise MemFactoryError(f"--gpus {args.gpus}: the number of processes must be at least 1")
    if args.gpu_mem is not None and not args.gpu_mem > 0:
        raise MemFactoryError(f"--gpu-mem {args.gpu_mem}: device memory must be a positive number of GiB, e.g. 80")
    preset = load_preset(args.preset, list(args.overrides))
    plan = estimate_memory(preset, gpus=args.gpus, gpu_mem_gib=args.gpu_mem, strategy=args.strategy)
    print(json.dumps(asdict(plan), indent=2) if args.json else plan.to_markdown(), end="" if not args.json else "\n")
    return 1 if plan.fits is False else 0
