"""Does GRPO *learn* on this device? A few dozen steps on a task the tiny model can learn.

``bench/gpu_check.py``'s ``learns`` section: the tiny random Qwen3 (``tiny://qwen3-mini``) is trained
with the GPU presets' training path (``trainer.precision: bf16_mixed``: fp32 masters under bf16
autocast; gradient checkpointing; a frozen reference with a small KL) on the test suite's
continuous reward, the share of vowels among the answer's letters (``tests/vowel_reward.py``), which
varies within every group of a random model's samples, so every step carries signal. The check:
the mean reward of the last fifth of the steps beats the first fifth by ``min_rise``; otherwise
the section fails with the curve. The same function runs on the CPU in the test suite
(``tests/test_learn_check.py``) with fewer steps, so the GPU run is known to work the first time.
Measured on the CPU (seeds 0, 1, 2): the last fifth beats the first by 0.13-0.46 after 10 steps,
0.17-0.46 after 15; the curve then settles (the groups' samples agree and are skipped).

    python bench/learn_check.py                     # on whatever device torch finds (CUDA first)
    python bench/learn_check.py --steps 10 --precision fp32 --no-checkpointing
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memfactory.commands.demo import fifths
from tests.vowel_reward import VowelShare

# The GPU presets' training path, on a task the tiny model learns in a few dozen steps.
LEARN_OVERRIDES = [
    "model.dtype=bfloat16",
    "model.options={decode: eager}",  # compiling the tiny model's decode step would outlast the training
    "trainer.precision=bf16_mixed",
    "trainer.gradient_checkpointing=true",
    "trainer.beta=0.001",
    "trainer.stop=[]",
    "trainer.max_new_tokens=16",
    "trainer.group_size=8",
    "trainer.batch_size=4",
    "trainer.micro_batch_size=8",
    "trainer.lr=1e-2",
    "trainer.warmup_steps=0",
    "trainer.skip_equal_groups=true",
]


def learns(steps: int = 30, *, min_rise: float = 0.1, precision: str = "bf16_mixed",
           checkpointing: bool = True, seed: int = 0) -> dict:
    """Train ``steps`` GRPO steps of the tiny model on the vowel-share reward; raise AssertionError
    (with the curve) unless the last fifth's mean reward beats the first fifth's by ``min_rise``."""
    from memfactory.config import load_preset
    from memfactory.paths import presets_dir
    from memfactory.trainer.loop import GRPOTrainer

    overrides = [*LEARN_OVERRIDES, f"trainer.steps={steps}", f"trainer.seed={seed}",
                 f"trainer.precision={precision}", f"trainer.gradient_checkpointing={str(checkpointing).lower()}"]
    if precision == "fp32":
        overrides.append("model.dtype=float32")
    preset = load_preset(presets_dir() / "tiny_test.yaml", overrides)
    trainer = GRPOTrainer(preset)
    trainer.env.rewards, trainer.env.weights = {"vowels": VowelShare()}, {"vowels": 1.0}
    started = time.perf_counter()
    curve, kls, norms = [], [], []
    for _ in range(steps):
        m = trainer.train_step().metrics
        curve.append(round(m["reward/mean"], 4))
        kls.append(m.get("kl", 0.0))
        norms.append(m.get("grad_norm", 0.0))
    first, last = fifths(curve)
    out = {
        "device": str(trainer.accelerator.device),
        **trainer.precision_info,
        "steps": steps,
        "seconds": round(time.perf_counter() - started, 1),
        "reward_first_fifth": round(first, 4),
        "reward_last_fifth": round(last, 4),
        "rise": round(last - first, 4),
        "min_rise": min_rise,
        "kl_max": max(kls),
        "grad_norm_max": max(norms),
        "curve": curve,
        "summary": (f"reward {first:.3f} -> {last:.3f} (first -> last fifth of {steps} steps) on "
                    f"{trainer.accelerator.device}, {trainer.precision.name}, "
                    f"checkpointing {preset.trainer.gradient_checkpointing}"),
    }
    if not all(math.isfinite(v) for v in [*kls, *norms]):
        raise AssertionError(f"non-finite KL or gradient norm while learning: {out}")
    if last - first < min_rise:
        raise AssertionError(f"the reward did not rise by {min_rise}: first fifth {first:.3f}, "
                             f"last fifth {last:.3f}; curve {curve}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--min-rise", type=float, default=0.1)
    parser.add_argument("--precision", default="bf16_mixed", choices=["bf16_mixed", "fp32"])
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(learns(args.steps, min_rise=args.min_rise, precision=args.precision,
                            checkpointing=not args.no_checkpointing, seed=args.seed), indent=2))


if __name__ == "__main__":
    main()
