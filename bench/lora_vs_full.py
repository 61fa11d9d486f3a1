"""LoRA against full fine-tuning in the GRPO loop: step time, trainable parameters, memory, checkpoint size.

Each configuration runs in its own process (so peak RSS is its own): ``GRPOTrainer`` on the
given model, 1 prompt x ``--group`` completions x ``--tokens`` tokens (forced: no stop strings;
the model may still end early on EOS), a continuous reward so every step really updates, fp32.
With beta > 0 full fine-tuning keeps a frozen copy of the model as the reference; LoRA uses the
same model with adapters disabled, so it holds no copy.

    OMP_NUM_THREADS=1 python bench/lora_vs_full.py [--model smollm2-135m-instruct] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import add_step_arguments, step_arguments

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LORA = "trainer.lora={r: 16, alpha: 32, target_modules: [q_proj, k_proj, v_proj, o_proj, up_proj, down_proj]}"
CONFIGS = {
    "full, beta 0": [],
    "full, beta 0.04": ["trainer.beta=0.04"],
    "LoRA r16, beta 0": [LORA],
    "LoRA r16, beta 0.04": [LORA, "trainer.beta=0.04"],
}


def one(args: argparse.Namespace, overrides: list[str]) -> dict:
    """Run one configuration in this process and return its measurements."""
    import torch
    from common import bench_trainer

    from memfactory.trainer.checkpoint import save_checkpoint
    from memfactory.trainer.hardware import peak_rss_gib

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    with tempfile.TemporaryDirectory() as tmp:
        trainer = bench_trainer(
            args.model, Path(tmp), steps=args.warmup + args.steps, prompts=1, group=args.group,
            tokens=args.tokens, context=args.context, overrides=overrides,
        )  # fmt: skip
        steps, updates = [], []
        for _ in range(args.warmup + args.steps):
            began = time.perf_counter()
            m = trainer.train_step().metrics
            steps.append(time.perf_counter() - began)
            updates.append(m["time/update_s"])
        path = save_checkpoint(Path(tmp) / "ckpt", 1, trainer.policy, trainer.optimizer, trainer.scheduler)
        model_bytes = sum(f.stat().st_size for f in (path / "model").rglob("*") if f.is_file())
        all_bytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        total_params = sum(p.numel() for p in trainer.policy.parameters())
        return {
            "step_s": statistics.median(steps[args.warmup :]),
            "update_s": statistics.median(updates[args.warmup :]),
            "trainable": trainer.trainable_parameters,
            "total": total_params,
            "reference_copy": trainer.reference is not None,
            "peak_rss_mb": peak_rss_gib() * 1024,  # VmHWM: ru_maxrss carries over the parent's peak
            "checkpoint_model_mb": model_bytes / 2**20,
            "checkpoint_mb": all_bytes / 2**20,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser)
    parser.add_argument("--only", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = parser.parse_args(argv)
    if args.only is not None:
        print("RESULT " + json.dumps(one(args, CONFIGS[args.only])))
        return 0
    load_start = os.getloadavg()[0]
    rows = []
    for name in CONFIGS:
        cmd = [sys.executable, __file__, "--only", name, *step_arguments(args)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
        rows.append((name, result))
        print(name, result, flush=True)
    print()
    print(
        "| configuration | trainable params | s/step | update s | reference copy | peak RSS MB | checkpoint model MB | checkpoint total MB |"
    )
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for name, r in rows:
        share = 100 * r["trainable"] / r["total"]
        print(f"| {name} | {r['trainable']:,} ({share:.2f}%) | {r['step_s']:.2f} | {r['update_s']:.2f} | "
              f"{'yes' if r['reference_copy'] else 'no'} | {r['peak_rss_mb']:.0f} | {r['checkpoint_model_mb']:.1f} | "
              f"{r['checkpoint_mb']:.1f} |")  # fmt: skip
    print(
        f"\nmodel {args.model}, 1 prompt x {args.group} completions x <= {args.tokens} tokens, context <= "
        f"{args.context} tokens, fp32, median of {args.steps} steps after {args.warmup} warm-up, "
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {os.cpu_count()} CPUs visible, load average "
        f"{load_start:.2f} -> {os.getloadavg()[0]:.2f}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
