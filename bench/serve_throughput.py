"""Serving throughput: `memfactory serve` over HTTP vs. the same backend called in-process.

For each concurrency c in (1, 4, 16) the same N greedy prompts are run
  * in-process: ``backend.generate`` on batches of c prompts (the best a local caller can do), and
  * over HTTP: ``OpenAIBackend(concurrency=c)`` against the server (uvicorn on 127.0.0.1 in a thread
    of this process, batching concurrent requests into one generate call).
Greedy outputs are checked to be identical, so the token counts of the in-process run are the
HTTP run's too. Prints a table (median of --repeats runs) and, with --write, appends it to
bench/RESULTS.md under "## Serving".

    OMP_NUM_THREADS=1 python bench/serve_throughput.py --write
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from common import RESULTS, write_section

from memfactory.backends.hf import HFBackend
from memfactory.backends.openai_api import OpenAIBackend
from memfactory.config import ModelConfig
from memfactory.serve.app import create_app
from memfactory.serve.server import ServerThread
from memfactory.types import ChatPrompt, SamplingParams

HEADING = "## Serving"


def make_prompts(n: int) -> list[ChatPrompt]:
    return [
        ChatPrompt([{"role": "user", "content": f"Document {i}: the code word is item{i * 13 % 97}. What is the code word?"}])
        for i in range(n)
    ]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny://qwen3-mini")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"append the table to {RESULTS}")
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    backend = HFBackend.from_config(ModelConfig(path=args.model))
    prompts = make_prompts(args.requests)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    reference = backend.generate(prompts, params)
    tokens = sum(len(g.response_ids or []) for g in reference)

    rows = []
    app = create_app(backend, "bench", max_batch=max(args.concurrency), batch_window_ms=5)
    with ServerThread(app) as server:
        for c in args.concurrency:
            client = OpenAIBackend(server.url, "bench", concurrency=c, max_retries=0, timeout=300)
            remote = client.generate(prompts[:c], params)  # warm-up (connections, first batch)
            local_t, http_t = [], []
            before = app.state.server.batcher.stats.as_dict()
            for _ in range(args.repeats):
                local_t.append(timed(lambda c=c: [backend.generate(prompts[i : i + c], params) for i in range(0, len(prompts), c)]))
                http_t.append(timed(lambda client=client, remote=remote: remote.extend(client.generate(prompts, params))))
            after = app.state.server.batcher.stats.as_dict()
            client.close()
            mismatches = sum(r.text != g.text for r, g in zip(remote[c:], reference * args.repeats))
            if mismatches:
                print(f"warning: {mismatches} HTTP answers differ from in-process at concurrency {c}", file=sys.stderr)
            lt, ht = statistics.median(local_t), statistics.median(http_t)
            mean_batch = (after["requests"] - before["requests"]) / max(1, after["batches"] - before["batches"])
            rows.append((c, len(prompts) / lt, tokens / lt, len(prompts) / ht, tokens / ht, lt / ht, mean_batch))

    threads = os.environ.get("OMP_NUM_THREADS")
    lines = [
        (f"{args.requests} greedy requests × ≤{args.max_new_tokens} new tokens ({tokens} generated), model `{args.model}`, "
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible), OMP_NUM_THREADS={threads}, "
        f"torch threads {torch.get_num_threads()}, median of {args.repeats} runs; server = uvicorn in a thread of the "
        "same process; in-process = `backend.generate` on batches of c prompts. "
        f"Load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end (a machine shared with other jobs: "
        "absolute figures are noisy; both columns of a row are measured interleaved in the same run)."),
        "",
        "| concurrency | in-process req/s | in-process tok/s | HTTP req/s | HTTP tok/s | HTTP / in-process | mean server batch |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, lr, ltok, hr, htok, ratio, mb in rows:
        lines.append(f"| {c} | {lr:.1f} | {ltok:.0f} | {hr:.1f} | {htok:.0f} | {ratio:.2f} | {mb:.1f} |")
    table = "\n".join(lines)
    print(table)

    if args.write:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        write_section(HEADING, f"`python bench/serve_throughput.py` ({stamp}):\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
