"""Peak memory of the CPU demo under each way of running the update, same seed, same steps.

Variants of ``presets/tiny_cpu_demo.yaml`` (SmolLM2-135M + LoRA): ``before`` = as shipped until
checkpointing existed (micro-batch 16, no checkpointing), ``checkpointed`` = the same with
checkpointing, ``checkpointed_mb4`` = checkpointing at micro-batch 4 (shipped until the shared
prompt forward existed), ``unshared_mb8`` = micro-batch 8 without checkpointing and with
``trainer.shared_prompt_forward`` off, ``shipped`` = the preset now. Issue 27's candidates for a
demo that learns on every seed, each from ``t07`` = the demo as shipped until then (16 training
questions seen five times each, 4 groups a step, answers capped at 16 new tokens, rollouts at T
0.7): ``t10`` (T 1.0), ``t07_warm4`` / ``t07_warm2`` (4 / 2 warm-up steps), ``t07_n80`` (80
questions, each seen once), ``t07_warm4_n80``, ``t07_n80_cap8`` (answers capped at 8 tokens),
``t07_n60_b3_cap8`` (60 questions, 3 groups a step, the cap: shipped since). Each trains for
``--steps`` GRPO steps in its own child process, so each peak RSS (``VmHWM``) is that run's
alone. Printed per variant: peak RSS, seconds per step (rollout / update), the child's own CPU
seconds per step (one thread: comparable whatever else loads the machine; ``--parallel`` runs the
variants side by side so their wall seconds see the same load too), and the mean reward of
every step: with the same seed the curves must agree (checkpointing recomputes the same
activations and the loss is normalised over the whole step: memory changes, not maths).

    OMP_NUM_THREADS=2 python bench/demo_memory.py --steps 3
    OMP_NUM_THREADS=1 python bench/demo_memory.py --steps 20 --variants t07 shipped --parallel
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


# the demo as shipped until issue 27's fix; a variant's later override of the same key wins
OLD_SHAPE = [
    "trainer.temperature=0.7", "trainer.warmup_steps=0", "trainer.batch_size=4", "trainer.max_new_tokens=16",
    "env.train_size=16",
]  # fmt: skip
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
    # issue 27, each spelt out whatever the preset ships: ``t07`` = the demo as shipped until then (16
    # questions seen five times each, 4 groups a step, 16 new tokens, rollouts at T 0.7), then one change
    "t07": OLD_SHAPE,
    "t10": [*OLD_SHAPE, "trainer.temperature=1.0"],
    "t07_warm4": [*OLD_SHAPE, "trainer.warmup_steps=4"],
    "t07_warm2": [*OLD_SHAPE, "trainer.warmup_steps=2"],
    "t07_n80": [*OLD_SHAPE, "env.train_size=80"],
    "t07_warm4_n80": [*OLD_SHAPE, "env.train_size=80", "trainer.warmup_steps=4"],
    "t07_n80_cap8": [*OLD_SHAPE, "env.train_size=80", "trainer.max_new_tokens=8"],
    "t07_n60_b3_cap8": [*OLD_SHAPE, "env.train_size=60", "trainer.batch_size=3", "trainer.max_new_tokens=8"],
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
        cpu = time.process_time()  # this process's CPU seconds: comparable under any load (1 thread)
        m = trainer.train_step().metrics
        row = {k: round(m[k], 4) for k in ("reward/mean", "loss", "time/step_s", "time/rollout_s", "time/update_s")}
        rows.append(row | {"cpu_s": round(time.process_time() - cpu, 2)})
    cfg = preset.trainer
    print(json.dumps({"checkpointing": cfg.gradient_checkpointing, "micro_batch_size": cfg.micro_batch_size,
                      "loaded_rss_mb": round(loaded_mb),
                      "peak_rss_mb": round(peak_rss_gib() * 1024), "steps": rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="which variants to run (default all; the first is the baseline of the ratios)")
    parser.add_argument("--parallel", action="store_true",
                        help="run the variants side by side (the same load on each: compare their s/step)")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.workdir)
        return
    import tempfile

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        children = {}
        for variant in args.variants:
            workdir = Path(tmp) / variant
            workdir.mkdir()
            cmd = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps), "--workdir", str(workdir)]
            children[variant] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            if not args.parallel:
                children[variant].wait()
        for variant, proc in children.items():
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"variant {variant} failed (exit {proc.returncode})")
            results[variant] = json.loads(out.strip().splitlines()[-1])
            results[variant]["wall_s"] = round(time.perf_counter() - started, 1)
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"tiny_cpu_demo, {args.steps} steps, OMP_NUM_THREADS={threads}")
    print("| variant | checkpointing | micro-batch | peak RSS MB | after loading MB | s/step | CPU s/step | rollout s | update s | reward per step |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    def mean(steps: list[dict], key: str) -> float:
        return round(sum(s[key] for s in steps) / len(steps), 2)

    for variant, r in results.items():
        steps = r["steps"]
        print(f"| {variant} | {r['checkpointing']} | {r['micro_batch_size']} | {r['peak_rss_mb']} | {r['loaded_rss_mb']} | {mean(steps, 'time/step_s')} | {mean(steps, 'cpu_s')} | {mean(steps, 'time/rollout_s')} "
              f"| {mean(steps, 'time/update_s')} | {', '.join(str(s['reward/mean']) for s in steps)} |")
    baseline = args.variants[0]
    before = results[baseline]
    for variant in args.variants[1:]:
        r = results[variant]
        update = sum(s["time/update_s"] for s in r["steps"]) / sum(s["time/update_s"] for s in before["steps"])
        same = [s["reward/mean"] for s in r["steps"]] == [s["reward/mean"] for s in before["steps"]]
        step = mean(r["steps"], "time/step_s") / mean(before["steps"], "time/step_s")
        cpu = mean(r["steps"], "cpu_s") / mean(before["steps"], "cpu_s")
        print(f"{variant} vs {baseline}: peak RSS x{r['peak_rss_mb'] / before['peak_rss_mb']:.2f}, "
              f"step time x{step:.2f} (CPU x{cpu:.2f}), update time x{update:.2f}, same rewards: {same}")


if __name__ == "__main__":
    main()
