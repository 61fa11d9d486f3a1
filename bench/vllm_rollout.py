"""GRPO step time of the CPU demo with rollouts from the policy itself vs an in-process vLLM engine.

Both sides train ``presets/tiny_cpu_demo.yaml`` (SmolLM2-135M-Instruct + LoRA, 4 prompts x 8
samples x <= 16 tokens at T 0.7, float32) for ``--steps`` steps with the same seed, each in its
own child process (vLLM binds the threads of the process it lives in, so the sides must not share
one). Reported per side: the time to build the trainer (vLLM: engine start included), and the
median over the steps after the first of the step's sampling (``time/rollout_s`` less the push),
weight push (``time/sync_s``: the LoRA-merged weights into the engine, vLLM only) and update,
plus the mean reward. ``--episode`` instead times one MemAgent training-mode episode batch on
SmolLM2 (a group of ``--group`` samples at T 1 over a 4-chunk context, 256 tokens a chunk, memory
<= 32 new tokens: ``bench/memagent_rollout.py`` (c)'s shape) through the ``hf`` backend and the
``vllm`` backend, each in its own child. Run it in the vLLM environment (``make vllm``):

    OMP_NUM_THREADS=1 .venv-vllm/bin/python bench/vllm_rollout.py [--steps 4] [--json out.json]
    OMP_NUM_THREADS=1 .venv-vllm/bin/python bench/vllm_rollout.py --episode [--group 8] [--repeats 2]
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


def episode_child(backend_name: str, group: int, repeats: int) -> dict:
    """Median seconds of one MemAgent group episode through ``backend_name``, after one warm-up episode."""
    from memagent_rollout import context_of_length  # bench/ is this script's own folder on sys.path

    from memfactory.agents.memagent import MemoryAgent
    from memfactory.backends.build import build_backend
    from memfactory.config import ModelConfig
    from memfactory.modules.recurrent import RecurrentConfig, RecurrentMemoryModule
    from memfactory.types import Sample, SamplingParams

    options = {"max_model_len": 2048} if backend_name == "vllm" else {}
    began = time.perf_counter()
    backend = build_backend(ModelConfig(path="smollm2-135m-instruct", backend=backend_name, dtype="float32",
                                        options=options))
    build_s = time.perf_counter() - began
    chunk, memory_tokens = 256, 32
    agent = MemoryAgent({"memory": RecurrentMemoryModule(
        RecurrentConfig(chunk_tokens=chunk, memory_tokens=memory_tokens, answer_tokens=16))})
    params = SamplingParams(max_new_tokens=memory_tokens, temperature=1.0, seed=0)
    sample = Sample(id="group", question="Which river runs through the city where the first person was born?",
                    answers=["x"], context=context_of_length(backend.tokenizer, 4 * chunk))
    times, tokens, calls = [], 0, 0
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        trajectories = agent.run([sample], backend, params=params, group_size=group, train=True)
        if attempt:  # the first episode is the warm-up
            times.append(time.perf_counter() - start)
        tokens = sum(len(c.response_ids) for t in trajectories for c in t.calls)
        calls = sum(len(t.calls) for t in trajectories)
    if backend_name == "vllm":
        backend.close()
    return {"engine": backend_name, "build_s": build_s, "episode_s": statistics.median(times),
            "calls": calls, "tokens": tokens}


def episode_table(rows: list[dict]) -> str:
    lines = ["| backend | build s | episode s (median) | model calls | generated tokens | tokens/s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['build_s']:.1f} | {r['episode_s']:.2f} | {r['calls']} | {r['tokens']} | "
                     f"{r['tokens'] / r['episode_s']:.1f} |")
    return "\n".join(lines)


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
    parser.add_argument("--episode", action="store_true", help="one MemAgent group episode, hf vs vllm backend")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=ENGINES + ("hf",), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = (episode_child(args.child, args.group, args.repeats) if args.episode
                  else child(args.child, args.steps))
        print("RESULT " + json.dumps(result), flush=True)
        return
    results = []
    engines = ("hf", "vllm") if args.episode else args.engines.split(",")
    for engine in engines:
        command = [sys.executable, __file__, "--child", engine, "--steps", str(args.steps),
                   "--group", str(args.group), "--repeats", str(args.repeats)] + (["--episode"] if args.episode else [])
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if done.returncode or line is None:
            sys.exit(f"{engine}: the child failed\n{done.stderr[-3000:]}")
        results.append(json.loads(line[len("RESULT "):]))
    load = os.getloadavg()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {load[0]:.1f} / {load[2]:.1f} "
          f"(1 / 15 min) at the end; " + (f"group {args.group}, median of {args.repeats} episodes after a warm-up"
                                           if args.episode else f"medians of steps 2..{args.steps}"))
    print(episode_table(results) if args.episode else table([summarise(r) for r in results]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
