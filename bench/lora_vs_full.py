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
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

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

    from memfactory.config import load_preset
    from memfactory.envs.base import Reward
    from memfactory.paths import presets_dir
    from memfactory.trainer.checkpoint import save_checkpoint
    from memfactory.trainer.loop import GRPOTrainer

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    class Vowels(Reward):
        name = "vowels"

        def score(self, trajectories):
            out = []
            for t in trajectories:
                letters = [c for c in t.answer.lower() if c.isalpha()]
                out.append(sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0)
            return out

    with tempfile.TemporaryDirectory() as tmp:
        preset = load_preset(
            presets_dir() / "tiny_test.yaml",
            [
                f"model.path={args.model}",
                f"trainer.steps={args.warmup + args.steps}",
                "trainer.batch_size=1",
                f"trainer.group_size={args.group}",
                f"trainer.micro_batch_size={args.group}",
                f"trainer.max_new_tokens={args.tokens}",
                "trainer.stop=[]",
                "trainer.lr=1e-5",
                f"agent_options.max_context_tokens={args.context}",
                f"logging.runs_dir={tmp}/runs",
                f"logging.runs_db={tmp}/runs/memfactory.db",
                *overrides,
            ],
        )
        trainer = GRPOTrainer(preset)
        trainer.env.rewards = {"vowels": Vowels()}
        trainer.env.weights = {"vowels": 1.0}
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
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "checkpoint_model_mb": model_bytes / 2**20,
            "checkpoint_mb": all_bytes / 2**20,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=2, help="measured steps per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--context", type=int, default=128, help="agent_options.max_context_tokens")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = parser.parse_args(argv)
    if args.only is not None:
        print("RESULT " + json.dumps(one(args, CONFIGS[args.only])))
        return 0
    load_start = os.getloadavg()[0]
    rows = []
    for name in CONFIGS:
        cmd = [sys.executable, __file__, "--only", name, "--model", args.model, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--group", str(args.group), "--tokens", str(args.tokens),
               "--context", str(args.context)]  # fmt: skip
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
