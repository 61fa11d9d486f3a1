"""GRPO step time of the CPU demo with rollouts from the policy itself vs an in-process vLLM engine.

Both sides train ``presets/tiny_cpu_demo.yaml`` (SmolLM2-135M-Instruct + LoRA, 4 prompts x 8
samples x <= 16 tokens at T 0.7, float32) for ``--steps`` steps with the same seed, each in its
own child process (vLLM binds the threads of the process it lives in, so the sides must not share
one). Reported per side: the time to build the trainer (vLLM: engine start included), and the
median over the steps after the first of the step's sampling (``time/rollout_s`` less the push),
weight push (``time/sync_s``: the LoRA-merged weights into the engine, vLLM only) and update,
plus the mean reward. Run it in the
vLLM environment (``make vllm``):

    OMP_NUM_THREADS=1 .venv-vllm/bin/python bench/vllm_rollout.py [--steps 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("policy", "vllm")
KEYS = ("time/rollout_s", "time/sync_s", "time/update_s", "time/step_s")


def child(engine: str, steps: int) -> dict:
    """Train ``steps`` steps with ``trainer.rollout.engine: engine``; the step metrics and the build time."""
    from memfactory.config import load_preset
    from memfactory.paths import presets_dir
    from memfactory.trainer.loop import GRPOTrainer

    overrides = ["logging.swanlab=disabled", f"trainer.steps={steps}", f"trainer.rollout.engine={engine}"]
    if engine == "vllm":
        overrides.append("trainer.rollout.options={max_model_len: 1024}")
    os.chdir(tempfile.mkdtemp(prefix="vllm-bench-"))
    preset = load_preset(presets_dir() / "tiny_cpu_demo.yaml", overrides)
    began = time.perf_counter()
    trainer = GRPOTrainer(preset)
    build_s = time.perf_counter() - began
    metrics = [trainer.train_step().metrics for _ in range(steps)]
    if engine == "vllm":
        trainer.backend.close()
    return {"engine": engine, "build_s": build_s, "steps": metrics}


def summarise(result: dict) -> dict:
    later = result["steps"][1:] or result["steps"]
    row = {"engine": result["engine"], "build_s": result["build_s"]}
    for key in KEYS:
        row[key] = statistics.median(m.get(key, 0.0) for m in later)
    # time/rollout_s runs from the step's start, so it holds the push: sampling alone is the rest.
    row["sample_s"] = statistics.median(m["time/rollout_s"] - m.get("time/sync_s", 0.0) for m in later)
    row["first_step_s"] = result["steps"][0]["time/step_s"]
    row["reward"] = statistics.mean(m["reward/mean"] for m in result["steps"])
    return row


def table(rows: list[dict]) -> str:
    lines = ["| engine | build s | first step s | sampling s | sync s | update s | step s | mean reward |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['build_s']:.1f} | {r['first_step_s']:.1f} | {r['sample_s']:.2f} | "
                     f"{r['time/sync_s']:.2f} | {r['time/update_s']:.2f} | {r['time/step_s']:.2f} | {r['reward']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--json", help="write the raw step metrics here")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.steps)), flush=True)
        return
    results = []
    for engine in args.engines.split(","):
        done = subprocess.run([sys.executable, __file__, "--child", engine, "--steps", str(args.steps)],
                              capture_output=True, text=True, cwd=ROOT, check=False)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if done.returncode or line is None:
            sys.exit(f"{engine}: the child failed\n{done.stderr[-3000:]}")
        results.append(json.loads(line[len("RESULT "):]))
    load = os.getloadavg()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {load[0]:.1f} / {load[2]:.1f} "
          f"(1 / 15 min) at the end; medians of steps 2..{args.steps}")
    print(table([summarise(r) for r in results]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
