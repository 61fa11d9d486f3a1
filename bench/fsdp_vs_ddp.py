"""FSDP2 against DDP in the GRPO loop on two CPU processes: per-rank memory, step time, checkpoints.

Each configuration is one ``accelerate launch`` of two gloo processes (``presets/accelerate/
ddp_cpu.yaml`` / ``fsdp_cpu.yaml``) running ``GRPOTrainer`` on the given model with full
fine-tuning (where sharding matters: gradients and AdamW state are 3x the weights), one prompt
per rank x ``--group`` completions x ``--tokens`` tokens (no stop strings), a continuous reward
so every step updates, fp32. Every rank reports what it stores (parameters, gradients, optimizer
state: its shards under FSDP), its peak RSS, and the median step, rollout and update times; a
checkpoint is saved at the end (FSDP gathers full state dicts first).

    python bench/fsdp_vs_ddp.py [--model smollm2-135m-instruct] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import add_step_arguments, step_arguments

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"DDP": "ddp_cpu", "FSDP2": "fsdp_cpu"}


def tensor_bytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        local = t.to_local() if isinstance(t, DTensor) else t
        total += local.numel() * local.element_size()
    return total


def rank_job(args: argparse.Namespace) -> int:
    """One rank of one configuration (runs under ``accelerate launch``); writes rank-<i>.json."""
    import torch
    from common import bench_trainer

    from memfactory.trainer.checkpoint import save_checkpoint
    from memfactory.trainer.hardware import peak_rss_gib

    out = Path(args.rank_job)
    trainer = bench_trainer(
        args.model, out, steps=args.warmup + args.steps, prompts=2, group=args.group,  # one prompt per rank
        tokens=args.tokens, context=args.context,
    )  # fmt: skip
    steps, rollouts, updates = [], [], []
    for _ in range(args.warmup + args.steps):
        began = time.perf_counter()
        metrics = trainer.train_step().metrics
        steps.append(time.perf_counter() - began)
        rollouts.append(metrics["time/rollout_s"])
        updates.append(metrics["time/update_s"])
    began = time.perf_counter()
    state = trainer.checkpoint_state()
    if trainer.accelerator.is_main_process:
        save_checkpoint(out / "ckpt", 1, trainer.policy, trainer.optimizer, trainer.scheduler, state=state)
    trainer.accelerator.wait_for_everyone()
    checkpoint_s = time.perf_counter() - began
    policy = trainer.policy
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    record = {
        "rank": trainer.accelerator.process_index,
        "parameters": sum(p.numel() for p in policy.parameters()),
        "param_mb": tensor_bytes(policy.parameters()) / 2**20,
        "grad_mb": tensor_bytes(p.grad for p in policy.parameters() if p.grad is not None) / 2**20,
        "optimizer_mb": tensor_bytes(
            v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0
        )
        / 2**20,
        "peak_rss_mb": peak_rss_gib() * 1024,  # VmHWM: ru_maxrss carries over the parent's peak
        "step_s": statistics.median(steps[args.warmup :]),
        "rollout_s": statistics.median(rollouts[args.warmup :]),
        "update_s": statistics.median(updates[args.warmup :]),
        "checkpoint_s": checkpoint_s,
    }
    (out / f"rank-{record['rank']}.json").write_text(json.dumps(record), encoding="utf-8")
    return 0


def launch(config: str, args: argparse.Namespace, folder: Path) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "presets" / "accelerate" / f"{config}.yaml"),
        "--main_process_port", str(random.randint(20000, 60000)),
        __file__, "--rank-job", str(folder), *step_arguments(args),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    return [json.loads((folder / f"rank-{r}.json").read_text()) for r in (0, 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser)
    parser.add_argument("--rank-job", help=argparse.SUPPRESS)  # internal: one rank of one configuration
    args = parser.parse_args(argv)
    if args.rank_job is not None:
        return rank_job(args)
    load_start = os.getloadavg()[0]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in CONFIGS.items():
            rows[name] = launch(config, args, Path(tmp) / config)
            print(name, rows[name], flush=True)
    print()
    print("| launch | parameters | params MB / rank | grads MB / rank | AdamW state MB / rank | peak RSS MB (rank 0, 1) "
          "| s/step | rollout s | update s | checkpoint s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, ranks in rows.items():
        r0, r1 = ranks
        print(f"| {name} | {r0['parameters']:,} | {r0['param_mb']:.0f} | {r0['grad_mb']:.0f} | {r0['optimizer_mb']:.0f} | "
              f"{r0['peak_rss_mb']:.0f}, {r1['peak_rss_mb']:.0f} | {max(r['step_s'] for r in ranks):.2f} | "
              f"{max(r['rollout_s'] for r in ranks):.2f} | {max(r['update_s'] for r in ranks):.2f} | "
              f"{r0['checkpoint_s']:.2f} |")  # fmt: skip
    ddp, fsdp = rows["DDP"][0], rows["FSDP2"][0]

    def stored(r: dict) -> float:
        return r["param_mb"] + r["grad_mb"] + r["optimizer_mb"]

    print(f"\nFSDP2 / DDP: stored training state per rank {stored(fsdp) / stored(ddp):.2f}x, "
          f"peak RSS {fsdp['peak_rss_mb'] / ddp['peak_rss_mb']:.2f}x, "
          f"step time {max(r['step_s'] for r in rows['FSDP2']) / max(r['step_s'] for r in rows['DDP']):.2f}x")  # fmt: skip
    print(
        f"model {args.model}, full fine-tuning, 2 processes x 1 prompt x {args.group} completions x <= {args.tokens} "
        f"tokens, context <= {args.context} tokens, fp32, median of {args.steps} steps after {args.warmup} warm-up, "
        f"OMP_NUM_THREADS=1 per process, {os.cpu_count()} CPUs visible, load average {load_start:.2f} -> "
        f"{os.getloadavg()[0]:.2f}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
