"""Time per GRPO step: ours (``GRPOTrainer.train_step``) against TRL 1.16's ``GRPOTrainer``.

Both trainers load the SAME weights from one folder (a copy of ``tiny://qwen3-mini``), see the
SAME prompts (ours runs first and records the token ids of every prompt it renders; TRL then
gets those prompts, in order, with ``shuffle_dataset=False``), sample ``group_size``
completions per prompt at temperature 1, and make one optimizer step per rollout batch (fp32,
beta 0, ``loss_type="grpo"``, one forward/backward over the whole batch).

Equal work: completions must all be exactly ``--tokens`` long in both. The copy's tokenizer and
generation config declare an EOS token whose id lies outside the model's vocabulary, so it can
never be sampled and neither trainer stops early (no stop strings either). The reward is a
continuous function of the text (share of vowels), so groups always carry signal and both take
a real optimizer step every time.

Timing: ours = wall time of each ``train_step()``; TRL = time between consecutive
``on_step_end`` callbacks (the whole step: batch fetch, generation, scoring, loss, backward,
optimizer). The first ``--warmup`` steps of each are dropped; the median of the rest is reported.

    OMP_NUM_THREADS=1 python bench/grpo_step.py [--steps 20] [--warmup 3] [--prompts 1] [--group 8]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

BENCH_EOS = "<|bench_never_eos|>"


def vowel_share(text: str) -> float:
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0


def build_model_dir(folder: Path) -> Path:
    """Copy the tiny model with an EOS id >= vocab_size: generation can never stop before the cap."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memfactory.backends.sources import resolve_model_path

    source = resolve_model_path("tiny://qwen3-mini")
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.add_special_tokens({"eos_token": BENCH_EOS})
    assert tokenizer.eos_token_id >= model.config.vocab_size
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- ours


def run_ours(model_dir: Path, args: argparse.Namespace, workdir: Path) -> tuple[list[float], list[list[int]], dict]:
    from memfactory.config import load_preset
    from memfactory.envs.base import Reward
    from memfactory.paths import presets_dir
    from memfactory.trainer.loop import GRPOTrainer

    class Vowels(Reward):
        name = "vowels"

        def score(self, trajectories):
            return [vowel_share(t.answer) for t in trajectories]

    total = args.warmup + args.steps
    preset = load_preset(
        presets_dir() / "tiny_test.yaml",
        [
            f"model.path={model_dir}",
            f"trainer.steps={total}",
            f"trainer.batch_size={args.prompts}",
            f"trainer.group_size={args.group}",
            f"trainer.max_new_tokens={args.tokens}",
            f"trainer.micro_batch_size={args.prompts * args.group}",
            "trainer.stop=[]",
            "trainer.beta=0.0",
            "trainer.temperature=1.0",
            "trainer.lr=1e-6",
            "trainer.loss_type=grpo",
            f"logging.runs_dir={workdir}/runs",
            f"logging.runs_db={workdir}/runs/memfactory.db",
        ],
    )
    trainer = GRPOTrainer(preset)
    trainer.env.rewards = {"vowels": Vowels()}
    trainer.env.weights = {"vowels": 1.0}
    prompts: list[list[int]] = []
    render = trainer.backend.render_prompt

    def recording_render(prompt):
        ids = render(prompt)
        prompts.append(ids)
        return ids

    trainer.backend.render_prompt = recording_render
    times, lengths, split = [], [], {"rollout": [], "update": []}
    for _ in range(total):
        began = time.perf_counter()
        result = trainer.train_step()
        times.append(time.perf_counter() - began)
        lengths.append(result.metrics["response_length/mean"])
        split["rollout"].append(result.metrics["time/rollout_s"])
        split["update"].append(result.metrics["time/update_s"])
        assert result.metrics.get("skipped_group_fraction", 0.0) == 0.0, "a group had no signal"
    info = {
        "response_length_mean": statistics.mean(lengths),
        "rollout_median_s": statistics.median(split["rollout"][args.warmup :]),
        "update_median_s": statistics.median(split["update"][args.warmup :]),
    }
    # Each sample's prompt is rendered once and shared by its group.
    # The agent repeats each prompt group_size times (sample 0 x group, sample 1 x group, ...).
    assert len(prompts) == total * args.prompts * args.group, len(prompts)
    return times, prompts[:: args.group], info


# --------------------------------------------------------------------------- TRL


def run_trl(
    model_dir: Path, prompt_ids: list[list[int]], args: argparse.Namespace, workdir: Path
) -> tuple[list[float], dict]:
    import datasets
    import trl
    from transformers import AutoTokenizer, TrainerCallback

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [tokenizer.decode(ids, skip_special_tokens=False) for ids in prompt_ids]
    same = all(tokenizer(t)["input_ids"] == ids for t, ids in zip(texts, prompt_ids))
    total = args.warmup + args.steps
    config = trl.GRPOConfig(
        output_dir=str(workdir / "trl"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to="none",
        per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group,
        gradient_accumulation_steps=1,
        max_completion_length=args.tokens,
        temperature=1.0,
        beta=0.0,
        loss_type="grpo",
        learning_rate=1e-6,
        max_steps=total,
        logging_steps=10**6,
        shuffle_dataset=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )

    def reward(completions, **kwargs):
        return [vowel_share(c) for c in completions]

    ends: list[float] = []
    lengths: list[int] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            ends.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())

    dataset = datasets.Dataset.from_dict({"prompt": texts})
    trainer = trl.GRPOTrainer(
        model=str(model_dir),
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    generate = trainer._generate_single_turn

    def measured(*a, **k):
        completion_ids, logprobs = generate(*a, **k)
        lengths.extend(len(c) for c in completion_ids)
        return completion_ids, logprobs

    trainer._generate_single_turn = measured
    trainer.train()
    times = [b - a for a, b in itertools.pairwise(ends)]
    return times, {"same_prompt_tokens": same, "completion_length_mean": statistics.mean(lengths)}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="measured steps per trainer")
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped before measuring")
    parser.add_argument("--prompts", type=int, default=1, help="prompts per step")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--tokens", type=int, default=32, help="completion length (forced)")
    parser.add_argument("--only", choices=["ours", "trl"], help="run one side (profiling)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = build_model_dir(workdir / "model")
        ours, prompts, our_info = run_ours(model_dir, args, workdir)
        our_med = statistics.median(ours[args.warmup :])
        print(
            f"ours: median {our_med:.4f} s/step over {args.steps} steps "
            f"(rollout {our_info['rollout_median_s']:.4f} s, update {our_info['update_median_s']:.4f} s, "
            f"response length {our_info['response_length_mean']:.1f}, "
            f"prompt length {statistics.mean(len(p) for p in prompts):.0f} tokens)",
            flush=True,
        )
        if args.only == "ours":
            return 0
        trl_times, trl_info = run_trl(model_dir, prompts, args, workdir)
        trl_med = statistics.median(trl_times[args.warmup :])
        print(
            f"trl:  median {trl_med:.4f} s/step over {len(trl_times) - args.warmup} steps "
            f"(completion length {trl_info['completion_length_mean']:.1f}, "
            f"prompt tokens identical: {trl_info['same_prompt_tokens']})",
            flush=True,
        )
    load_end = os.getloadavg()[0]
    ratio = our_med / trl_med
    import transformers
    import trl

    print(f"ratio ours/TRL: {ratio:.2f} (goal <= 0.80: {'met' if ratio <= 0.8 else 'NOT met'})")
    print(
        f"setup: {args.prompts} prompt(s) x {args.group} completions x {args.tokens} tokens, fp32, beta 0, "
        f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"{os.cpu_count()} CPUs visible, load average {load_start:.2f} -> {load_end:.2f}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
        f"Python {platform.python_version()}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
