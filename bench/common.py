"""What the benchmarks share: bench/RESULTS.md's sections, and for the GRPO benchmarks a continuous
reward and a trainer on the tiny preset's shape.

Imported by the bench scripts run as ``python bench/<script>.py`` (their folder is on sys.path).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(heading: str, body: str, path: Path = RESULTS) -> None:
    """Replace the section under ``heading`` (a ``## `` line, up to the next one) with ``body``, or
    append it: a benchmark rewrites its own figures and leaves the others' alone."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    section = f"{heading}\n\n{body.strip()}\n"
    lines = text.split("\n")
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "\n".join(lines[end:])
        text = "\n".join(lines[:start]).rstrip("\n") + "\n\n" + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")
    print(f"wrote {heading!r} in {path}")


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a measured GRPO step: model, steps, group, tokens and context sizes."""
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=2, help="measured steps per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--context", type=int, default=128, help="agent_options.max_context_tokens")


def step_arguments(args: argparse.Namespace) -> list[str]:
    """``add_step_arguments``' values as command-line arguments, for a child process."""
    return [f"--{name}={getattr(args, name)}" for name in ("model", "steps", "warmup", "group", "tokens", "context")]


def vowel_share(text: str) -> float:
    """Share of vowels among the letters: a reward every sample scores differently on."""
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0


def bench_trainer(
    model: str,
    workdir: Path,
    *,
    steps: int,
    prompts: int,
    group: int,
    tokens: int,
    context: int,
    lr: float = 1e-5,
    overrides: list[str] | None = None,
) -> Any:
    """``GRPOTrainer`` on ``model``: ``prompts`` x ``group`` completions of up to ``tokens`` tokens
    (no stop strings), document context up to ``context`` tokens, the vowel-share reward."""
    from memfactory.config import load_preset
    from memfactory.envs.base import Reward
    from memfactory.paths import presets_dir
    from memfactory.trainer.loop import GRPOTrainer

    class VowelShare(Reward):
        name = "vowels"

        def score(self, trajectories):
            return [vowel_share(t.answer) for t in trajectories]

    preset = load_preset(
        presets_dir() / "tiny_test.yaml",
        [
            f"model.path={model}",
            f"trainer.steps={steps}",
            f"trainer.batch_size={prompts}",
            f"trainer.group_size={group}",
            f"trainer.micro_batch_size={group}",
            f"trainer.max_new_tokens={tokens}",
            "trainer.stop=[]",
            f"trainer.lr={lr}",
            f"agent_options.max_context_tokens={context}",
            f"logging.runs_dir={workdir}/runs",
            f"logging.runs_db={workdir}/runs/memfactory.db",
            *(overrides or []),
        ],
    )
    trainer = GRPOTrainer(preset)
    trainer.env.rewards = {"vowels": VowelShare()}
    trainer.env.weights = {"vowels": 1.0}
    return trainer
