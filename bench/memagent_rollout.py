"""MemAgent rollout cost: (a) wall time vs context length, (b) our HF backend vs raw ``model.generate``,
(c) a GRPO group's episode with and without prefill once per group.

(a) One MemAgent episode (greedy) per context length, the chunk size fixed: the memory is
    overwritten each chunk, so every update call has a bounded prompt and the cost must grow
    linearly with the number of chunks. We fit ``time = a + b * length`` and report b and R².
(b) The same batch of rendered prompts, greedy, ``max_new_tokens`` new tokens, once through
    ``HFBackend.generate`` (chat template, log-prob recording, stop handling, unpadding) and once
    through a bare ``model.generate`` on the same left-padded ids. Greedy outputs are checked to be
    identical, so both sides generate the same tokens; the ratio of tokens/s is reported
    (goal >= 0.8). Runs are interleaved and the median of --repeats is taken.

(c) One training-mode episode over a 4-chunk context with a group of ``--group`` (8) samples at
    temperature 1, seeded: with the HF backend's shared prefill (at chunk 0 every member reads the
    same chunk with the same initial memory; later turns share where prompts coincide) and without
    it. The sampled token ids are checked to be identical; the time ratio is reported.

    OMP_NUM_THREADS=1 python bench/memagent_rollout.py [--model smollm2-135m-instruct] [--write]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from common import RESULTS, write_section  # bench/common.py: this script's folder is on sys.path

from memfactory.agents.memagent import MemoryAgent
from memfactory.backends.hf import HFBackend
from memfactory.backends.sources import load_model_and_tokenizer
from memfactory.config import ModelConfig
from memfactory.data.synth import gen_hotpotqa
from memfactory.modules.recurrent import RecurrentConfig, RecurrentMemoryModule
from memfactory.types import ChatPrompt, Sample, SamplingParams

HEADING = "## MemAgent rollout"


def load_avg() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def context_of_length(tokenizer, tokens: int) -> str:
    """Synthetic HotpotQA-style documents cut to exactly ``tokens`` tokenizer tokens."""
    text = gen_hotpotqa(n=1, seed=0, docs=max(4, tokens // 60))[0]["context"]
    ids = tokenizer.encode(text, add_special_tokens=False)
    while len(ids) < tokens:
        text = text + "\n\n" + text
        ids = tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.decode(ids[:tokens])


def bench_lengths(backend: HFBackend, lengths: list[int], chunk: int, memory_tokens: int, repeats: int) -> list[dict]:
    module = RecurrentMemoryModule(RecurrentConfig(chunk_tokens=chunk, memory_tokens=memory_tokens, answer_tokens=16))
    agent = MemoryAgent({"memory": module})
    params = SamplingParams(max_new_tokens=memory_tokens, temperature=0.0)
    rows = []
    samples = {
        n: Sample(
            id=f"len{n}",
            question="Which river runs through the city where the first person was born?",
            answers=["x"],
            context=context_of_length(backend.tokenizer, n),
        )
        for n in lengths
    }
    agent.run([samples[lengths[0]]], backend, params=params, train=False)  # warm-up
    times: dict[int, list[float]] = {n: [] for n in lengths}
    calls: dict[int, int] = {}
    gen_tokens: dict[int, int] = {}
    for _ in range(repeats):
        for n in lengths:
            start = time.perf_counter()
            (trajectory,) = agent.run([samples[n]], backend, params=params, train=False)
            times[n].append(time.perf_counter() - start)
            calls[n] = len(trajectory.calls)
            gen_tokens[n] = sum(len(c.response_ids) for c in trajectory.calls)
    for n in lengths:
        rows.append(
            {
                "length": n,
                "chunks": calls[n] - 1,
                "calls": calls[n],
                "generated": gen_tokens[n],
                "time_s": statistics.median(times[n]),
            }
        )
    return rows


def bench_group_episode(backend: HFBackend, chunk: int, memory_tokens: int, group: int, repeats: int) -> dict:
    """(c) one 4-chunk episode x ``group`` samples, shared prefill on and off, interleaved."""
    module = RecurrentMemoryModule(RecurrentConfig(chunk_tokens=chunk, memory_tokens=memory_tokens, answer_tokens=16))
    agent = MemoryAgent({"memory": module})
    params = SamplingParams(max_new_tokens=memory_tokens, temperature=1.0, seed=0)
    sample = Sample(id="group", question="Which river runs through the city where the first person was born?",
                    answers=["x"], context=context_of_length(backend.tokenizer, 4 * chunk))
    times: dict[bool, list[float]] = {True: [], False: []}
    tokens: dict[bool, list] = {}
    fraction = 0.0
    for _ in range(repeats):
        for shared in (False, True):
            backend.shared_prefill = shared
            before = dict(backend.prefill_stats)
            start = time.perf_counter()
            trajectories = agent.run([sample], backend, params=params, group_size=group, train=True)
            times[shared].append(time.perf_counter() - start)
            tokens[shared] = [[c.response_ids for c in t.calls] for t in trajectories]
            if shared:
                rows = backend.prefill_stats["rows"] - before["rows"]
                fraction = 1 - (backend.prefill_stats["prefilled"] - before["prefilled"]) / rows
    backend.shared_prefill = True
    return {
        "group": group, "calls": len(tokens[True][0]), "identical": tokens[True] == tokens[False],
        "plain_s": statistics.median(times[False]), "shared_s": statistics.median(times[True]),
        "shared_fraction": fraction,
    }


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    slope, intercept = np.polyfit(xs, ys, 1)
    predicted = slope * np.asarray(xs) + intercept
    ss_res = float(np.sum((np.asarray(ys) - predicted) ** 2))
    ss_tot = float(np.sum((np.asarray(ys) - np.mean(ys)) ** 2))
    return float(slope), float(intercept), 1.0 - ss_res / ss_tot if ss_tot else 1.0


def bench_generate(backend: HFBackend, batch: int, max_new_tokens: int, repeats: int) -> dict:
    """HFBackend.generate vs bare model.generate on the same left-padded prompts, greedy."""
    tokenizer, model = backend.tokenizer, backend.model
    docs = gen_hotpotqa(n=batch, seed=1, docs=3)
    prompts = [
        ChatPrompt([{"role": "user", "content": f"{d['context']}\n\nQuestion: {d['input']}\nSummarise the documents."}])
        for d in docs
    ]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    rendered = [backend.render_prompt(p) for p in prompts]
    width = max(len(r) for r in rendered)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rendered])
    attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rendered])
    eos = backend.eos_token_ids()

    def raw() -> list[list[int]]:
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
                eos_token_id=eos,
            )
        rows = []
        for row in out[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in eos), None)
            rows.append(row if cut is None else row[: cut + 1])
        return rows

    def ours() -> list[list[int]]:
        return [g.response_ids for g in backend.generate(prompts, params)]

    raw(), ours()  # warm-up
    t_raw, t_ours = [], []
    raw_ids = ours_ids = None
    for _ in range(repeats):
        start = time.perf_counter()
        raw_ids = raw()
        t_raw.append(time.perf_counter() - start)
        start = time.perf_counter()
        ours_ids = ours()
        t_ours.append(time.perf_counter() - start)
    tokens = sum(len(r) for r in ours_ids)
    return {
        "batch": batch,
        "prompt_tokens": [min(map(len, rendered)), max(map(len, rendered))],
        "max_new_tokens": max_new_tokens,
        "tokens": tokens,
        "raw_tokens": sum(len(r) for r in raw_ids),
        "identical": raw_ids == ours_ids,
        "raw_s": statistics.median(t_raw),
        "ours_s": statistics.median(t_ours),
        "raw_tok_s": tokens / statistics.median(t_raw),
        "ours_tok_s": tokens / statistics.median(t_ours),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--lengths", type=int, nargs=4, default=[512, 1024, 1536, 2048])
    parser.add_argument("--chunk", type=int, default=256, help="context tokens per chunk (fixed)")
    parser.add_argument("--memory-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--group", type=int, default=8, help="GRPO group size for (c)")
    parser.add_argument("--write", action="store_true", help=f"write the report as its section of {RESULTS}")
    args = parser.parse_args()

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load_start = load_avg()
    began = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    model, tokenizer = load_model_and_tokenizer(ModelConfig(path=args.model, dtype="float32", attn="sdpa"))
    backend = HFBackend(model, tokenizer)

    lengths = bench_lengths(backend, args.lengths, args.chunk, args.memory_tokens, args.repeats)
    slope, intercept, r2 = linear_fit([r["length"] for r in lengths], [r["time_s"] for r in lengths])
    gen = bench_generate(backend, args.batch, args.max_new_tokens, args.repeats)
    ratio = gen["ours_tok_s"] / gen["raw_tok_s"]
    episode = bench_group_episode(backend, args.chunk, args.memory_tokens, args.group, args.repeats)
    load_end = load_avg()

    out = [
        (
            f"`python bench/memagent_rollout.py --model {args.model}` ({began}): model `{args.model}` (float32, sdpa), "
            f"CPU ({platform.machine()}, {os.cpu_count()} cores visible), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
            f"torch threads {torch.get_num_threads()}, median of {args.repeats} runs, greedy. Load average {load_start} at "
            f"start, {load_end} at end: other engineers' processes were using the CPU, so absolute times are noisy; "
            "each comparison is measured interleaved in the same run."
        ),
        "",
        (
            f"### (a) One MemAgent episode vs context length (chunk {args.chunk} tokens, memory ≤ {args.memory_tokens} "
            "new tokens, answer ≤ 16)"
        ),
        "",
        "| context tokens | chunks | model calls | generated tokens | wall s | s per call |",
        "|---|---|---|---|---|---|",
    ]
    for r in lengths:
        out.append(
            f"| {r['length']} | {r['chunks']} | {r['calls']} | {r['generated']} | {r['time_s']:.2f} | "
            f"{r['time_s'] / r['calls']:.2f} |"
        )
    out += [
        "",
        (
            f"Linear fit: time = {intercept:.2f} s + {slope * 1000:.3f} s per 1k context tokens; R² = {r2:.4f} "
            f"({'linear' if r2 >= 0.98 else 'NOT linear'})."
        ),
        "",
        "### (b) Batched generation: HFBackend.generate vs bare model.generate",
        "",
        (
            f"{gen['batch']} prompts ({gen['prompt_tokens'][0]}–{gen['prompt_tokens'][1]} tokens, left-padded), greedy, "
            f"≤{gen['max_new_tokens']} new tokens; outputs identical: {gen['identical']}."
        ),
        "",
        "| path | generated tokens | wall s | tokens/s |",
        "|---|---|---|---|",
        f"| model.generate (bare) | {gen['raw_tokens']} | {gen['raw_s']:.2f} | {gen['raw_tok_s']:.1f} |",
        (
            f"| HFBackend.generate (template, log-probs, stops, unpadding) | {gen['tokens']} | {gen['ours_s']:.2f} | "
            f"{gen['ours_tok_s']:.1f} |"
        ),
        "",
        f"Ratio ours / bare = **{ratio:.3f}** (goal ≥ 0.8: {'met' if ratio >= 0.8 else 'NOT met'}).",
        "",
        f"### (c) A GRPO group's episode: 4 chunks of {args.chunk} tokens, group {episode['group']}, T 1.0, seeded",
        "",
        "| prefill | model calls per trajectory | wall s |",
        "|---|---|---|",
        f"| one per row | {episode['calls']} | {episode['plain_s']:.2f} |",
        (f"| once per group where prompts coincide ({episode['shared_fraction']:.0%} of rows shared) | "
         f"{episode['calls']} | {episode['shared_s']:.2f} |"),
        "",
        f"Shared / plain = **{episode['shared_s'] / episode['plain_s']:.2f}**; sampled tokens identical: {episode['identical']}.",
    ]
    report = "\n".join(out) + "\n"
    print(report)
    if args.write:
        write_section(HEADING, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
