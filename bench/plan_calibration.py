"""The memory planner's estimate against the measured peak RSS of real short CPU runs.

On a machine without CUDA the planner's "device" is host RAM, so its estimate must match a run's
peak resident memory. Each case runs in its own child process (so ``VmHWM`` is that run's
alone): build the ``GRPOTrainer``, one real GRPO step (rollouts, scoring, update), then two
optimizer steps over ``2 x micro_batch_size`` rows of the planner's longest-call shape, as
bench/gpu_check.py does on a GPU (the caps, not the data, decide what a preset must fit).
``baseline`` is a child that only imports torch, transformers and the trainer: the planner's
``HOST_BASELINE_GIB``.

    OMP_NUM_THREADS=2 python bench/plan_calibration.py                 # every case (a few minutes)
    python bench/plan_calibration.py --cases tiny_no_ckpt,smollm2_demo
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# A tiny model where activations dominate: long rows, micro-batch 8, no checkpointing.
TINY_LONG = ["agent_options.max_context_tokens=3800", "trainer.max_new_tokens=32", "trainer.micro_batch_size=8",
             "trainer.group_size=4", "trainer.batch_size=2", "trainer.gradient_checkpointing=false"]
# The CPU demo's settings when its calibration was measured (it now ships without checkpointing,
# one 8-row group per micro-batch, see presets/tiny_cpu_demo.yaml): pinned so the cases keep meaning.
DEMO_CKPT = ["trainer.gradient_checkpointing=true", "trainer.micro_batch_size=4"]
CASES: dict[str, tuple[str, list[str]]] = {
    "tiny_no_ckpt": ("tiny_test.yaml", TINY_LONG),
    "tiny_ckpt": ("tiny_test.yaml", [*TINY_LONG, "trainer.gradient_checkpointing=true"]),
    "smollm2_demo": ("tiny_cpu_demo.yaml", DEMO_CKPT),  # LoRA, checkpointing, micro-batch 4
    # Without checkpointing every layer's activations stay: 2 rows at the cap shape already cost ~2 GiB.
    "smollm2_demo_no_ckpt": ("tiny_cpu_demo.yaml", ["trainer.gradient_checkpointing=false",
                                                    "trainer.micro_batch_size=2"]),
    "smollm2_full_ft": ("tiny_cpu_demo.yaml", [*DEMO_CKPT, "trainer.lora=null", "trainer.lr=1e-5"]),
    # As shipped: no checkpointing, one 8-row group per micro-batch, the group's prompt run once.
    "smollm2_demo_shared": ("tiny_cpu_demo.yaml", []),
}
FAST = ["trainer.steps=1", "trainer.save_every=1000", "trainer.sample_every=1000", "logging.swanlab=disabled"]


def _rss_gib() -> float:
    """This child's own peak RSS (VmHWM: ru_maxrss would carry over the parent's peak, e.g. pytest's)."""
    from memfactory.trainer.hardware import peak_rss_gib

    return peak_rss_gib()


def baseline_child() -> dict:
    """Peak RSS of a process that imported what training imports, before any model."""
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import memfactory.trainer.loop  # noqa: F401

    return {"peak_rss_gib": round(_rss_gib(), 3)}


def case_child(name: str, workdir: str) -> dict:
    """One real GRPO step plus two updates at the planner's shape; peak RSS and the estimate."""
    os.chdir(workdir)
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_check import synthetic_calls

    from memfactory.backends.shape import preset_shape
    from memfactory.config import load_preset
    from memfactory.paths import presets_dir
    from memfactory.planner.costs import HOST_BASELINE_GIB, HOST_FRAGMENTATION
    from memfactory.planner.plan import estimate_memory
    from memfactory.trainer.loop import GRPOTrainer

    file, overrides = CASES[name]
    preset = load_preset(presets_dir() / file, [*overrides, *FAST])
    plan = estimate_memory(preset, padded=False)  # the update below runs rows of one length: no padding mask
    started = time.perf_counter()
    trainer = GRPOTrainer(preset)
    loaded = _rss_gib()
    trainer.train_step()
    after_step = _rss_gib()
    print(f"{name}: loaded {loaded:.2f} GiB, after one GRPO step {after_step:.2f} GiB", file=sys.stderr, flush=True)
    prompt, response, _ = preset_shape(preset)
    rows = 2 * preset.trainer.micro_batch_size
    # Rows come group by group, as the trainer's buffers hold them: a group shares its prompt.
    calls = synthetic_calls(rows, prompt, response, trainer.policy.config.vocab_size,
                            group=preset.trainer.group_size if preset.agent == "direct" else 1)
    advantages = [1.0 if i % 2 else -1.0 for i in range(rows)]
    for _ in range(2):
        trainer.policy_update([(calls, advantages)])
    peak = _rss_gib()
    # The update ran at the planner's cap shape; the rollout ran on the data (often far below the caps),
    # so the update phase with the process's runtime is the like-for-like number.
    update = plan.phases["update"] * (1 + HOST_FRAGMENTATION) + HOST_BASELINE_GIB
    return {"case": name, "estimate_gib": plan.peak_gib, "measured_gib": round(peak, 3),
            "error_pct": round(100 * (plan.peak_gib - peak) / peak, 1), "update_estimate_gib": round(update, 3),
            "update_error_pct": round(100 * (update - peak) / peak, 1), "loaded_gib": round(loaded, 3),
            "after_step_gib": round(after_step, 3), "phases": plan.phases, "components": plan.components,
            "seconds": round(time.perf_counter() - started, 1)}


def run_child(args: list[str], timeout: float = 900, mmap_threshold: int | None = None) -> dict:
    """Run this script's child mode in a fresh process; its last stdout line is JSON.

    ``mmap_threshold`` fixes glibc's mmap threshold (``MALLOC_MMAP_THRESHOLD_``): by default glibc
    raises it to the size of each large block freed, after which a many-layer model's per-layer
    temporaries come from the heap and its RSS keeps what they fragmented (measured: 2-3x the live
    tensors for SmolLM2 at 4 x 784 tokens); fixed at 64 KiB, freed blocks go back to the OS.
    """
    env = dict(os.environ)
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    with tempfile.TemporaryDirectory() as workdir:
        done = subprocess.run([sys.executable, __file__, *args, "--workdir", workdir], capture_output=True,
                              text=True, timeout=timeout, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"child {args} exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--mmap-threshold", type=int, default=None,
                        help="MALLOC_MMAP_THRESHOLD_ for the children (e.g. 65536; default: glibc's dynamic one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=".", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out = baseline_child() if args.child == "baseline" else case_child(args.child, args.workdir)
        print(json.dumps(out))
        return
    baseline = run_child(["--child", "baseline"], mmap_threshold=args.mmap_threshold)
    print(f"MALLOC_MMAP_THRESHOLD_: {args.mmap_threshold or 'glibc default (dynamic)'}")
    print(f"baseline RSS (torch + transformers + trainer imported): {baseline['peak_rss_gib']:.2f} GiB")
    print("| case | overrides | estimate GiB (error) | update phase + runtime GiB (error) | measured peak RSS GiB "
          "| after loading | after one step | s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.cases.split(","):
        r = run_child(["--child", name], mmap_threshold=args.mmap_threshold)
        file, overrides = CASES[name]
        print(f"| {name} | {file} {' '.join(overrides) or '(as shipped)'} | {r['estimate_gib']:.2f} "
              f"({r['error_pct']:+.0f}%) | {r['update_estimate_gib']:.2f} ({r['update_error_pct']:+.0f}%) "
              f"| {r['measured_gib']:.2f} | {r['loaded_gib']:.2f} | {r['after_step_gib']:.2f} | {r['seconds']} |",
              flush=True)


if __name__ == "__main__":
    main()
