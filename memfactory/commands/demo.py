"""``memfactory demo``: the tiny CPU GRPO demo end to end, with a reward table at the end.

Trains presets/tiny_cpu_demo.yaml (SmolLM2-135M-Instruct + LoRA on synthetic document QA) as a
normal run under runs/, then prints the reward per step and held-out greedy accuracy before and
after training — the quickest way to see that the whole stack really learns on a laptop.
"""

from __future__ import annotations

import argparse

from memfactory.paths import presets_dir
from memfactory.tracking import metric_keys as keys
from memfactory.tracking.metrics import read_records


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the tiny CPU training demo and print its reward table")
    parser.add_argument("--preset", default=str(presets_dir() / "tiny_cpu_demo.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out accuracy before/after")
    parser.set_defaults(func=run)


def reward_table(metrics: list[dict]) -> str:
    rows = ["| step | reward mean | reward std | skipped groups | step time (s) |", "|---|---|---|---|---|"]
    for m in metrics:
        rows.append(
            f"| {m[keys.STEP]} | {m[keys.REWARD_MEAN]:.3f} | {m[keys.REWARD_STD]:.3f} | "
            f"{m.get(keys.SKIPPED_GROUP_FRACTION, 0.0):.2f} | {m[keys.STEP_S]:.1f} |"
        )
    return "\n".join(rows)


def fifths(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last fifth of a curve (at least one point each)."""
    k = max(1, len(values) // 5)
    return sum(values[:k]) / k, sum(values[-k:]) / k


def run(args: argparse.Namespace) -> int:
    from memfactory.config import load_preset
    from memfactory.trainer.session import TrainingSession

    preset = load_preset(args.preset, args.overrides)
    session = TrainingSession(preset)
    held_out = [] if args.no_eval else session_held_out(session)
    before = None
    print(f"MemFactory demo: {preset.name} — {preset.description}")
    print(f"run folder: {session.run_dir.path}")
    session.run(progress=True)
    trainer = session.trainer
    if held_out:
        # Accuracy before training is measured on the same weights with adapters disabled.
        after = trainer.evaluate(held_out)
        with trainer.reference_context():
            before = trainer.evaluate(held_out)
    metrics = read_records(session.run_dir.metrics_path)
    print()
    print(reward_table(metrics))
    first, last = fifths([m[keys.REWARD_MEAN] for m in metrics])
    print(f"\nmean reward, first fifth of steps: {first:.3f}; last fifth: {last:.3f} (change {last - first:+.3f})")
    if before is not None:
        print(f"held-out greedy accuracy ({len(held_out)} questions): before {before:.3f}, after {after:.3f}")
    print(f"status: {session.status}; inspect with `memfactory runs show {session.run_id}`")
    return 0 if session.status == "finished" else 1


def session_held_out(session) -> list:
    from memfactory.envs.build import build_env

    env = build_env(session.preset)
    return env.samples("test")
