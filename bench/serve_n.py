"""`memfactory serve`: one request for n=8 samples vs eight n=1 requests for the same prompt.

A GRPO group or an avg@k evaluation needs k samples of one prompt. Over HTTP a client can ask for
them in ONE request (``n=8``: one batcher job of 8 rows, the prompt prefilled once) or in eight
(``n=1`` each): sent concurrently (the server's batching queue may still merge them into one
generate call) or one after the other (eight generate calls). Same prompt, same ``max_tokens``,
temperature 1, no seed; the tokens counted are the server's own ``usage.completion_tokens``.
The modes run interleaved, repeat after repeat, in one run per model (tiny, then SmolLM2 when its
package is installed), against uvicorn on 127.0.0.1 in a thread of this process.

    OMP_NUM_THREADS=1 python bench/serve_n.py            # print the table
    OMP_NUM_THREADS=1 python bench/serve_n.py --write    # and put it in bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass

os.environ.setdefault("OMP_NUM_THREADS", "1")

import httpx
import torch
from common import write_section

from memfactory.backends.hf import HFBackend
from memfactory.backends.sources import SMOLLM2, smollm2_gguf
from memfactory.config import ModelConfig
from memfactory.errors import MemFactoryError
from memfactory.serve.app import create_app
from memfactory.serve.server import ServerThread

HEADING = "## Serving n samples: one n=8 request vs eight n=1 (`bench/serve_n.py`)"
MODES = ("one n=8", "8 x n=1 concurrent", "8 x n=1 sequential")
NOTE = ("One n=8 request is one batcher job of 8 rows: one generate call, the prompt prefilled once. Eight "
        "concurrent n=1 requests are merged when they arrive within the batching window, but while no recent "
        "batch held more than one request the first starts at once (the batcher's lone-client rule) and the "
        "other seven wait for it: about two generate calls, plus eight HTTP round trips and eight replies to "
        "build. Eight sequential requests are eight generate calls of one row.")
QUESTION = "Document 3: the code word is item39. Other words: alpha, beta, gamma. What is the code word?"


@dataclass
class Measure:
    """One mode's runs: wall seconds and completion tokens per repeat, plus what the server did."""

    seconds: list[float]
    tokens: list[int]
    generate_calls: int = 0  # backend.generate calls the server made, all repeats
    prefilled: int = 0  # prompts the hf backend prefilled, all repeats (8 rows each repeat)

    @property
    def tokens_per_s(self) -> float:
        return statistics.median(t / s for t, s in zip(self.tokens, self.seconds))


def _chat(http: httpx.Client, url: str, n: int, max_tokens: int) -> int:
    body = {"model": "bench", "messages": [{"role": "user", "content": QUESTION}], "n": n,
            "max_tokens": max_tokens, "temperature": 1.0}
    response = http.post(url + "/chat/completions", json=body)
    response.raise_for_status()
    reply = response.json()
    if len(reply["choices"]) != n:
        raise RuntimeError(f"asked for {n} choices, got {len(reply['choices'])}")
    return int(reply["usage"]["completion_tokens"])


def _one_n8(url: str, max_tokens: int) -> int:
    with httpx.Client(timeout=600) as http:
        return _chat(http, url, 8, max_tokens)


def _eight_concurrent(url: str, max_tokens: int) -> int:
    counts = [0] * 8
    start = threading.Barrier(8)

    def client(i: int) -> None:
        with httpx.Client(timeout=600) as http:
            start.wait()
            counts[i] = _chat(http, url, 1, max_tokens)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if not all(counts):
        raise RuntimeError("a concurrent n=1 request failed")
    return sum(counts)


def _eight_sequential(url: str, max_tokens: int) -> int:
    with httpx.Client(timeout=600) as http:
        return sum(_chat(http, url, 1, max_tokens) for _ in range(8))


RUNNERS = dict(zip(MODES, (_one_n8, _eight_concurrent, _eight_sequential)))


def measure(backend: HFBackend, *, max_tokens: int, repeats: int) -> dict[str, Measure]:
    """Each mode ``repeats`` times, interleaved (after one unmeasured warm-up of each)."""
    app = create_app(backend, "bench", max_batch=16, batch_window_ms=5, max_n=8)
    stats = app.state.server.batcher.stats
    results = {mode: Measure([], []) for mode in MODES}
    with ServerThread(app) as server:
        for run in RUNNERS.values():
            run(server.url, max_tokens)
        for _ in range(repeats):
            for mode, run in RUNNERS.items():
                calls, prefilled = stats.batches, backend.prefill_stats["prefilled"]
                began = time.perf_counter()
                tokens = run(server.url, max_tokens)
                results[mode].seconds.append(time.perf_counter() - began)
                results[mode].tokens.append(tokens)
                results[mode].generate_calls += stats.batches - calls
                results[mode].prefilled += backend.prefill_stats["prefilled"] - prefilled
    return results


def available_models(requested: list[str]) -> list[str]:
    """The requested models this machine has (SmolLM2 only with its package installed)."""
    out = []
    for model in requested:
        if model == SMOLLM2:
            try:
                smollm2_gguf()
            except MemFactoryError as exc:
                print(f"skipping {model}: {exc}", file=sys.stderr)
                continue
        out.append(model)
    return out


def table(rows: list[tuple[str, dict[str, Measure]]], repeats: int) -> str:
    lines = [("| model | mode | completion tokens (mean) | tok/s (median) | vs one n=8 | generate calls / run | "
              "prompts prefilled / run |"), "|---|---|---:|---:|---:|---:|---:|"]
    for model, results in rows:
        base = results[MODES[0]].tokens_per_s
        for mode, m in results.items():
            lines.append(f"| `{model}` | {mode} | {statistics.mean(m.tokens):.0f} | {m.tokens_per_s:.0f} | "
                         f"{m.tokens_per_s / base:.2f} | {m.generate_calls / repeats:.1f} | {m.prefilled / repeats:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny://qwen3-mini", SMOLLM2])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="put the table in bench/RESULTS.md")
    args = parser.parse_args()

    load_start = os.getloadavg()
    began = time.perf_counter()
    rows = []
    for model in available_models(args.models):
        backend = HFBackend.from_config(ModelConfig(path=model, dtype="float32", attn="sdpa"))
        rows.append((model, measure(backend, max_tokens=args.max_tokens, repeats=args.repeats)))
        print(table(rows[-1:], args.repeats), flush=True)
    load_end = os.getloadavg()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"
    text = "\n".join([
        (f"The same chat prompt, `max_tokens` {args.max_tokens}, temperature 1, no seed; {args.repeats} repeats of "
         f"each mode, interleaved, after a warm-up; tokens are the server's `usage.completion_tokens` (sampled "
         f"lengths vary a little, hence tok/s). {device}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
         f"torch threads {torch.get_num_threads()}; server = uvicorn in a thread of the same process "
         f"(`--max-batch 16`, 5 ms window). Load average (1/5/15 min) {load_start[0]:.2f}/{load_start[1]:.2f}/"
         f"{load_start[2]:.2f} at start, {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f} at end, "
         f"on a machine shared with other jobs; {time.perf_counter() - began:.0f} s in all."),
        "",
        table(rows, args.repeats),
        "",
        NOTE,
    ])
    print("\n" + text)
    if args.write:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        write_section(HEADING, f"`python bench/serve_n.py` ({stamp}):\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
