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

``--model smollm2-135m-instruct`` measures the real CPU demo instead: SmolLM2-135M-Instruct (a copy
with the same never-sampled EOS), the prompts of ``presets/tiny_cpu_demo.yaml`` (one-shot document
QA, ~250 tokens, the ``\boxed{`` answer prefix), 4 prompts x 8 samples x 16 tokens at temperature
0.7, LoRA r 16 / alpha 32 on the same projections and the preset's gradient checkpointing on both sides. Each
side then runs in its own process, so each one's peak RSS (``VmHWM``) is its own; the rollout
/ update split, tokens/s and which prefill path ours took are printed.

    OMP_NUM_THREADS=2 python bench/grpo_step.py --model smollm2-135m-instruct --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import itertools
import math
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


def build_model_dir(folder: Path, model: str = "tiny://qwen3-mini") -> Path:
    """Copy the model with an EOS id >= vocab_size: generation can never stop before the cap."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memfactory.backends.sources import resolve_model_path

    source = resolve_model_path(model)
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
    common = [
        f"model.path={model_dir}",
        f"trainer.steps={total}",
        f"trainer.batch_size={args.prompts}",
        f"trainer.group_size={args.group}",
        f"trainer.max_new_tokens={args.tokens}",
        "trainer.stop=[]",
        "trainer.beta=0.0",
        "trainer.lr=1e-6",
        "trainer.loss_type=grpo",
        "trainer.skip_equal_groups=false",
        f"logging.runs_dir={workdir}/runs",
        f"logging.runs_db={workdir}/runs/memfactory.db",
    ]
    if demo_mode(args):  # the demo's prompts, LoRA, micro-batch, checkpointing and temperature
        preset = load_preset(presets_dir() / "tiny_cpu_demo.yaml", common)
    else:
        preset = load_preset(
            presets_dir() / "tiny_test.yaml",
            [*common, f"trainer.micro_batch_size={args.prompts * args.group}", "trainer.temperature=1.0"],
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
        "prefill_path": "shared per group" if trainer.backend.prefill_stats["prefilled"] < trainer.backend.prefill_stats["rows"]
        else "one per row",
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
    demo = demo_mode(args)
    extra: dict = {}
    checkpointing = False
    rows_per_pass = args.prompts * args.group  # the tiny-model bench: one pass per step, as before
    if demo:
        from peft import LoraConfig

        demo_cfg = demo_trainer_config()
        lora = demo_cfg.lora
        extra["peft_config"] = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                          target_modules=list(lora.target_modules))
        checkpointing = demo_cfg.gradient_checkpointing  # as ours: the preset's setting
        # As ours: passes of the preset's micro-batch, accumulated into one optimizer step per
        # generation batch (TRL's steps_per_generation follows gradient_accumulation_steps).
        rows_per_pass = math.gcd(demo_cfg.micro_batch_size, args.prompts * args.group)
    config = trl.GRPOConfig(
        output_dir=str(workdir / "trl"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        save_strategy="no",
        report_to="none",
        per_device_train_batch_size=rows_per_pass,
        num_generations=args.group,
        gradient_accumulation_steps=args.prompts * args.group // rows_per_pass,
        max_completion_length=args.tokens,
        temperature=DEMO_TEMPERATURE if demo else 1.0,
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
        **extra,
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

DEMO_MODEL = "smollm2-135m-instruct"
DEMO_TEMPERATURE = 0.7  # tiny_cpu_demo's rollout temperature


def demo_mode(args: argparse.Namespace) -> bool:
    return args.model == DEMO_MODEL


def demo_trainer_config():
    """``presets/tiny_cpu_demo.yaml``'s trainer section: LoRA and checkpointing for both sides."""
    from memfactory.config import load_preset
    from memfactory.paths import presets_dir

    return load_preset(presets_dir() / "tiny_cpu_demo.yaml").trainer


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM; ``ru_maxrss`` would carry over the parent's peak)."""
    from memfactory.trainer.hardware import peak_rss_gib

    return peak_rss_gib() * 1024


def run_side(args: argparse.Namespace) -> None:
    """One trainer in this process (``--side``); its timings and peak RSS go to ``--result``."""
    import json

    workdir, model_dir = Path(args.workdir), Path(args.model_dir)
    if args.side == "ours":
        times, prompts, info = run_ours(model_dir, args, workdir)
    else:
        prompts = json.loads(Path(args.prompts_file).read_text())
        times, info = run_trl(model_dir, prompts, args, workdir)
    Path(args.result).write_text(json.dumps({"times": times, "prompts": prompts, "info": info,
                                             "peak_rss_mb": peak_rss_mb()}))


def spawn(side: str, args: argparse.Namespace, workdir: Path, model_dir: Path) -> dict:
    import json
    import subprocess

    result = workdir / f"{side}.json"
    command = [sys.executable, __file__, "--side", side, "--workdir", str(workdir), "--model-dir", str(model_dir),
               "--result", str(result), "--prompts-file", str(workdir / "ours.json"), "--model", args.model,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--prompts", str(args.prompts),
               "--group", str(args.group), "--tokens", str(args.tokens)]
    subprocess.run(command, check=True)
    data = json.loads(result.read_text())
    if side == "ours":  # TRL reads the prompts ours rendered
        (workdir / "ours.json").write_text(json.dumps(data["prompts"]))
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", DEMO_MODEL],
                        help="tiny (random tiny Qwen3) or the CPU demo's SmolLM2 set-up")
    parser.add_argument("--steps", type=int, default=20, help="measured steps per trainer")
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped before measuring")
    parser.add_argument("--prompts", type=int, help="prompts per step (default 1; 4 with the demo model)")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--tokens", type=int, help="completion length (forced; default 32, 16 with the demo model)")
    parser.add_argument("--only", choices=["ours", "trl"], help="run one side (profiling)")
    for hidden in ("--side", "--workdir", "--model-dir", "--result", "--prompts-file"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.prompts = args.prompts or (4 if demo_mode(args) else 1)
    args.tokens = args.tokens or (16 if demo_mode(args) else 32)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.side:
        run_side(args)
        return 0
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = build_model_dir(workdir / "model", "tiny://qwen3-mini" if args.model == "tiny" else DEMO_MODEL)
        ours = spawn("ours", args, workdir, model_dir)
        our_med = statistics.median(ours["times"][args.warmup :])
        prompt_len = statistics.mean(len(p) for p in ours["prompts"])
        rows = args.prompts * args.group

        def tokens_per_s(seconds: float) -> float:
            return rows * (prompt_len + args.tokens) / seconds

        info = ours["info"]
        print(
            f"ours: median {our_med:.4f} s/step over {args.steps} steps "
            f"(rollout {info['rollout_median_s']:.4f} s, update {info['update_median_s']:.4f} s, "
            f"{tokens_per_s(our_med):.0f} tokens/s, peak RSS {ours['peak_rss_mb']:.0f} MB, prefill {info['prefill_path']}, "
            f"response length {info['response_length_mean']:.1f}, prompt length {prompt_len:.0f} tokens)",
            flush=True,
        )
        if args.only == "ours":
            return 0
        trl_side = spawn("trl", args, workdir, model_dir)
        trl_med = statistics.median(trl_side["times"][args.warmup :])
        print(
            f"trl:  median {trl_med:.4f} s/step over {len(trl_side['times']) - args.warmup} steps "
            f"({tokens_per_s(trl_med):.0f} tokens/s, peak RSS {trl_side['peak_rss_mb']:.0f} MB, "
            f"completion length {trl_side['info']['completion_length_mean']:.1f}, "
            f"prompt tokens identical: {trl_side['info']['same_prompt_tokens']})",
            flush=True,
        )
    load_end = os.getloadavg()[0]
    ratio = our_med / trl_med
    import transformers
    import trl

    goal = 0.5 if demo_mode(args) else 0.8
    print(f"ratio ours/TRL: {ratio:.2f} (goal <= {goal}: {'met' if ratio <= goal else 'NOT met'}); "
          f"peak RSS ours/TRL: {ours['peak_rss_mb'] / trl_side['peak_rss_mb']:.2f}")
    setup = f"{args.model}, {args.prompts} prompt(s) x {args.group} completions x {args.tokens} tokens, fp32, beta 0"
    if demo_mode(args):
        demo_cfg = demo_trainer_config()
        setup += (f", LoRA r16, gradient checkpointing {'on' if demo_cfg.gradient_checkpointing else 'off'} (both sides), "
                  f"micro-batch {demo_cfg.micro_batch_size} (both sides), T 0.7")
    print(
        f"setup: {setup}, "
        f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"{os.cpu_count()} CPUs visible, load average {load_start:.2f} -> {load_end:.2f}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
        f"Python {platform.python_version()}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
