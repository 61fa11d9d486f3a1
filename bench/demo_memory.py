"""Peak memory of the CPU demo under each way of running the update, same seed, same steps.

Variants of ``presets/tiny_cpu_demo.yaml`` (SmolLM2-135M + LoRA): ``before`` = as shipped until
checkpointing existed (micro-batch 16, no checkpointing), ``checkpointed`` = the same with
checkpointing, ``checkpointed_mb4`` = checkpointing at micro-batch 4 (shipped until the shared
prompt forward existed), ``unshared_mb8`` = micro-batch 8 without checkpointing and with
``trainer.shared_prompt_forward`` off, ``shipped`` = the preset now (micro-batch 8 = one group,
no checkpointing, the group's prompt run once per micro-batch). Each trains for
``--steps`` GRPO steps in its own child process, so each peak RSS (``VmHWM``) is that run's
alone. Printed per variant: peak RSS, seconds per step (rollout / update), and the mean reward of
every step: with the same seed the curves must agree (checkpointing recomputes the same
activations and the loss is normalised over the whole step: memory changes, not maths).

    OMP_NUM_THREADS=2 python bench/demo_memory.py --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


VARIANTS = {
    "before": ["trainer.gradient_checkpointing=false", "trainer.micro_batch_size=16"],
    "checkpointed": ["trainer.gradient_checkpointing=true", "trainer.micro_batch_size=16"],
    "checkpointed_mb4": ["trainer.gradient_checkpointing=true", "trainer.micro_batch_size=4"],
    "unshared_mb8": [
        "trainer.gradient_checkpointing=false",
        "trainer.micro_batch_size=8",
        "trainer.shared_prompt_forward=false",
    ],
    "shipped": [],
}


def child(variant: str, steps: int, workdir: str) -> None:
    """One variant, in this process: prints a JSON line with its peak RSS and per-step metrics."""
    os.chdir(workdir)
    from memfactory.config import load_preset
    from memfactory.paths import presets_dir
    from memfactory.trainer.hardware import peak_rss_gib
    from memfactory.trainer.loop import GRPOTrainer

    preset = load_preset(presets_dir() / "tiny_cpu_demo.yaml", [*VARIANTS[variant], f"trainer.steps={steps}"])
    trainer = GRPOTrainer(preset)
    loaded_mb = peak_rss_gib() * 1024  # VmHWM: ru_maxrss would carry over the parent's peak
    rows = []
    for _ in range(steps):
        m = trainer.train_step().metrics
        rows.append({k: round(m[k], 4) for k in ("reward/mean", "loss", "time/step_s", "time/rollout_s", "time/update_s")})
    cfg = preset.trainer
    print(json.dumps({"checkpointing": cfg.gradient_checkpointing, "micro_batch_size": cfg.micro_batch_size,
                      "loaded_rss_mb": round(loaded_mb),
                      "peak_rss_mb": round(peak_rss_gib() * 1024), "steps": rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="which variants to run (default all; the first is the baseline of the ratios)")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.workdir)
        return
    import tempfile

    results = {}
    for variant in args.variants:
        with tempfile.TemporaryDirectory() as workdir:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(args.steps),
                                   "--workdir", workdir], capture_output=True, text=True, check=True)
            results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
            results[variant]["wall_s"] = round(time.perf_counter() - started, 1)
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"tiny_cpu_demo, {args.steps} steps, OMP_NUM_THREADS={threads}")
    print("| variant | checkpointing | micro-batch | peak RSS MB | after loading MB | s/step | rollout s | update s | reward per step |")
    print("|---|---|---|---|---|---|---|---|---|")
    def mean(steps: list[dict], key: str) -> float:
        return round(sum(s[key] for s in steps) / len(steps), 2)

    for variant, r in results.items():
        steps = r["steps"]
        print(f"| {variant} | {r['checkpointing']} | {r['micro_batch_size']} | {r['peak_rss_mb']} | {r['loaded_rss_mb']} | {mean(steps, 'time/step_s')} | {mean(steps, 'time/rollout_s')} "
              f"| {mean(steps, 'time/update_s')} | {', '.join(str(s['reward/mean']) for s in steps)} |")
    baseline = args.variants[0]
    before = results[baseline]
    for variant in args.variants[1:]:
        r = results[variant]
        update = sum(s["time/update_s"] for s in r["steps"]) / sum(s["time/update_s"] for s in before["steps"])
        same = [s["reward/mean"] for s in r["steps"]] == [s["reward/mean"] for s in before["steps"]]
        print(f"{variant} vs {baseline}: peak RSS x{r['peak_rss_mb'] / before['peak_rss_mb']:.2f}, "
              f"update time x{update:.2f}, same rewards: {same}")


if __name__ == "__main__":
    main()
