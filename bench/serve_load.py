"""`memfactory serve` under hostile load: 100 concurrent clients, valid and hostile requests mixed.

Half the clients send valid chat requests (short greedy or sampled completions; on 429 they wait
the server's Retry-After and try again, as OpenAI clients do); the other half send what a careless
or hostile user sends: a 6 MB body, a chunked body past the limit, prompts longer than the context
(one provably so from its characters, one only after tokenising), max_tokens 10^9, n=64, broken
JSON, NaN, 20,000-deep nesting, wrong types, a 2^80 seed, 1,000 stop strings, an unknown model,
negative max_tokens, n 0, top_logprobs past the limit, and on /v1/completions a prompt list mixing
strings and token ids, token ids outside the vocabulary, an empty prompt list, n and logprobs past
the limits (they too retry on 429, so each reaches the check it is meant for). A quarter of the
valid clients ask /v1/completions for n=2 with log-probs and echo.
Meanwhile one thread polls /v1/models and another samples the server's RSS.

Checks: every valid request answered (200 with a completion), every hostile one a 4xx JSON error in
OpenAI's shape, /v1/models answering throughout; reports p50/p99 latencies and peak RSS.
tests/test_serve_limits.py runs the same mix (``run_load``) against an in-process server.

    OMP_NUM_THREADS=1 python bench/serve_load.py            # a `memfactory serve` subprocess, tiny model
    OMP_NUM_THREADS=1 python bench/serve_load.py --write    # and append the figures to bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
from common import RESULTS, write_section

from memfactory.tracking.process import free_port

HEADING = "## Serving under hostile load"

# Small limits so the hostile requests are cheap to build and the run is short.
CONTEXT = 1024
MAX_BODY = 64 * 1024
MAX_QUEUE = 24

HOSTILE_KINDS = (
    "oversized_body", "chunked_oversized", "prompt_too_long_chars", "prompt_too_long_tokens", "max_tokens_huge",
    "n_many", "bad_json", "nan_temperature", "deep_nesting", "wrong_types", "huge_seed", "stop_flood",
    "unknown_model", "negative_max_tokens", "n_zero", "top_logprobs_many", "prompt_mixed", "prompt_token_out_of_vocab",
    "prompt_empty_list", "completion_n_many", "completion_logprobs_many",
)
# The hostile kinds sent to /v1/completions (the others go to /v1/chat/completions).
COMPLETION_KINDS = {"prompt_mixed", "prompt_token_out_of_vocab", "prompt_empty_list", "completion_n_many",
                    "completion_logprobs_many"}
# The field a kind's 400 must name (OpenAI's error "param").
HOSTILE_PARAMS = {"n_many": "n", "n_zero": "n", "top_logprobs_many": "top_logprobs", "prompt_mixed": "prompt",
                  "prompt_token_out_of_vocab": "prompt", "prompt_empty_list": "prompt", "completion_n_many": "n",
                  "completion_logprobs_many": "logprobs", "max_tokens_huge": "max_tokens"}


@dataclass
class Call:
    kind: str  # "valid" or a hostile kind
    status: int = 0
    latency_s: float = 0.0  # first send to final answer (retries included)
    attempts: int = 0
    error: str = ""  # transport error, if any
    body: dict = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.kind == "valid"

    @property
    def ok(self) -> bool:
        """Valid: a 200 with a completion. Hostile: a 4xx whose body is OpenAI's error shape (not a 429
        left after every retry: the request must reach the check it is meant for)."""
        if self.error:
            return False
        if self.valid:
            choices = self.body.get("choices") or [{}]
            text = choices[0]["text"] if "text" in choices[0] else choices[0].get("message", {}).get("content")
            return self.status == 200 and isinstance(text, str)
        err = self.body.get("error")
        return (400 <= self.status < 500 and self.status != 429 and isinstance(err, dict) and isinstance(err.get("message"), str)
                and err.get("code") == self.status)


def _chunks(data: bytes, size: int = 16 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def hostile_request(kind: str, model: str, i: int, context: int, max_body: int) -> tuple[bytes | Iterator[bytes], dict]:
    """(body, headers) of one hostile request; a generator body is sent chunked (no Content-Length)."""
    msg = [{"role": "user", "content": f"question {i}"}]
    base = {"model": model, "messages": msg, "max_tokens": 4}

    def dump(obj: object) -> bytes:
        return json.dumps(obj).encode()

    if kind == "oversized_body":  # the 6 MB body of issue 17
        return dump({**base, "messages": [{"role": "user", "content": "word " * 1_200_000}]}), {}
    if kind == "chunked_oversized":
        return _chunks(dump({**base, "messages": [{"role": "user", "content": "x" * (max_body * 2)}]})), {}
    if kind == "prompt_too_long_chars":  # provably too long from its characters alone
        return dump({**base, "messages": [{"role": "user", "content": "hello " * min(context * 8, max_body // 7)}]}), {}
    if kind == "prompt_too_long_tokens":  # only tokenising shows it: 1 token per "hello "
        return dump({**base, "messages": [{"role": "user", "content": "hello " * (context + 64)}]}), {}
    if kind == "max_tokens_huge":
        return dump({**base, "max_tokens": 1_000_000_000}), {}
    if kind == "n_many":
        return dump({**base, "n": 64}), {}
    if kind == "bad_json":
        return b'{"model": "' + model.encode() + b'", "messages": [{"role": "user", "content": "x"', {}
    if kind == "nan_temperature":
        return dump(base)[:-1] + b', "temperature": NaN}', {}
    if kind == "deep_nesting":
        depth = min(20_000, max_body // 3)
        return b'{"model": "' + model.encode() + b'", "messages": ' + b"[" * depth + b"]" * depth + b"}", {}
    if kind == "wrong_types":
        return dump({**base, "messages": "please answer", "max_tokens": "many"}), {}
    if kind == "huge_seed":
        return dump({**base, "seed": 2**80}), {}
    if kind == "stop_flood":
        return dump({**base, "stop": [f"s{j}" for j in range(1000)]}), {}
    if kind == "unknown_model":
        return dump({**base, "model": "gpt-4"}), {}
    if kind == "negative_max_tokens":
        return dump({**base, "max_tokens": -5}), {}
    if kind == "n_zero":
        return dump({**base, "n": 0}), {}
    if kind == "top_logprobs_many":
        return dump({**base, "logprobs": True, "top_logprobs": 500}), {}
    completion = {"model": model, "prompt": f"question {i}", "max_tokens": 4}
    if kind == "prompt_mixed":
        return dump({**completion, "prompt": ["question", 17, "answer"]}), {}
    if kind == "prompt_token_out_of_vocab":
        return dump({**completion, "prompt": [[1, 2, 3], [4, 10**9]]}), {}
    if kind == "prompt_empty_list":
        return dump({**completion, "prompt": []}), {}
    if kind == "completion_n_many":
        return dump({**completion, "n": 10_000}), {}
    if kind == "completion_logprobs_many":
        return dump({**completion, "logprobs": 500, "echo": True}), {}
    raise ValueError(kind)


def request_path(kind: str, i: int) -> str:
    """Where a request of ``kind`` (from client ``i``) goes."""
    if kind in COMPLETION_KINDS or (kind == "valid" and i % 4 == 2):
        return "/v1/completions"
    return "/v1/chat/completions"


def valid_request(model: str, i: int, round_: int) -> bytes:
    question = f"Client {i}, round {round_}: the key is {i * 7 % 97}. What is the key?"
    if request_path("valid", i) == "/v1/completions":  # n choices with log-probs, prompt echoed
        body = {"model": model, "prompt": question, "max_tokens": 8, "n": 2, "temperature": 0.7, "seed": i,
                "logprobs": 1, "echo": True}
        return json.dumps(body).encode()
    body = {
        # Two sampling settings, so the server batches requests of equal parameters together.
        "model": model, "max_tokens": 8, **({"temperature": 0} if i % 4 else {"temperature": 0.7, "seed": 1}),
        "messages": [{"role": "user", "content": question}],
    }
    return json.dumps(body).encode()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class LoadResult:
    calls: list[Call]
    models_latencies: list[float]  # /v1/models while the load ran
    models_failures: int
    rss_start: int
    rss_peak: int
    wall_s: float

    def valid(self) -> list[Call]:
        return [c for c in self.calls if c.valid]

    def hostile(self) -> list[Call]:
        return [c for c in self.calls if not c.valid]

    def failures(self) -> list[Call]:
        return [c for c in self.calls if not c.ok]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def run_load(base_url: str, model: str, *, server_pid: int, clients: int = 100, rounds: int = 2,
             context: int = CONTEXT, max_body: int = MAX_BODY, timeout_s: float = 120.0,
             max_attempts: int = 60) -> LoadResult:
    """``clients`` threads, half valid (``rounds`` requests each), half hostile (``rounds`` each,
    kinds in turn); all start together, and all retry on 429 after Retry-After. ``base_url`` is the server root (no /v1)."""
    root = base_url.rstrip("/")
    calls: list[Call] = []
    lock = threading.Lock()
    start_line = threading.Barrier(clients + 1)
    done = threading.Event()

    def client(i: int) -> None:
        is_valid = i % 2 == 0
        with httpx.Client(timeout=timeout_s) as http:
            start_line.wait()
            for round_ in range(rounds):
                kind = "valid" if is_valid else HOSTILE_KINDS[(i // 2 + round_ * 7) % len(HOSTILE_KINDS)]
                call = Call(kind)
                began = time.perf_counter()
                while call.attempts < max_attempts:
                    call.attempts += 1
                    if is_valid:
                        content, headers = valid_request(model, i, round_), {}
                    else:
                        content, headers = hostile_request(kind, model, i, context, max_body)
                    try:
                        response = http.post(root + request_path(kind, i), content=content,
                                             headers={"content-type": "application/json", **headers})
                    except httpx.HTTPError as exc:
                        call.error = f"{type(exc).__name__}: {exc}"
                        break
                    call.status = response.status_code
                    try:
                        call.body = response.json()
                    except ValueError:
                        call.body = {}
                    if response.status_code == 429:  # every client waits and retries, so each hostile
                        # request also reaches the check it is meant for
                        time.sleep(float(response.headers.get("retry-after", "1")))
                        continue
                    break
                call.latency_s = time.perf_counter() - began
                with lock:
                    calls.append(call)

    models_latencies: list[float] = []
    models_failures = 0
    rss = [rss_bytes(server_pid)]

    def watch() -> None:
        nonlocal models_failures
        with httpx.Client(timeout=10) as http:
            while not done.is_set():
                began = time.perf_counter()
                try:
                    ok = http.get(base_url.rstrip("/") + "/v1/models").status_code == 200
                except httpx.HTTPError:
                    ok = False
                models_latencies.append(time.perf_counter() - began)
                models_failures += not ok
                rss.append(rss_bytes(server_pid))
                done.wait(0.05)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start_line.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join(timeout_s * 2)
    wall = time.perf_counter() - began
    done.set()
    watcher.join(15)
    return LoadResult(calls, models_latencies, models_failures, rss[0], max(rss), wall)


# --------------------------------------------------------------------------- the benchmark


def wait_until_serving(base: str, proc: subprocess.Popen, timeout_s: float, poll_s: float = 0.3) -> None:
    """Poll ``/v1/models`` until the server answers; RuntimeError with its output if it dies or stays silent."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(base + "/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            output = proc.stdout.read() if proc.stdout and proc.poll() is not None else ""
            raise RuntimeError(f"the server at {base} did not come up:\n{output}")
        time.sleep(poll_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny://qwen3-mini", help="model the served subprocess loads")
    parser.add_argument("--clients", type=int, default=100, help="concurrent clients (half valid, half hostile)")
    parser.add_argument("--rounds", type=int, default=3, help="requests each client sends in turn")
    parser.add_argument("--write", action="store_true", help=f"append the figures to {RESULTS}")
    args = parser.parse_args()

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "memfactory", "serve", "--model", args.model, "--port", str(port), "--name", "bench",
           "--max-context", str(CONTEXT), "--max-body-bytes", str(MAX_BODY), "--max-queue", str(MAX_QUEUE)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_serving(base, proc, timeout_s=180)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        idle_rss = rss_bytes(proc.pid)
        load_start = os.getloadavg()[0]
        result = run_load(base, "bench", server_pid=proc.pid, clients=args.clients, rounds=args.rounds)
        health = httpx.get(base + "/health").json()
        term_began = time.perf_counter()
        proc.terminate()
        proc.wait(30)
        stop_s = time.perf_counter() - term_began
    finally:
        if proc.poll() is None:
            proc.kill()

    valid, hostile = result.valid(), result.hostile()
    failures = result.failures()
    valid_lat = [c.latency_s for c in valid]
    hostile_lat = [c.latency_s for c in hostile]
    retried = sum(c.attempts > 1 for c in valid)
    direct_lat = [c.latency_s for c in valid if c.attempts == 1]
    statuses: dict[str, int] = {}
    for call in hostile:
        statuses[str(call.status)] = statuses.get(str(call.status), 0) + 1
    ms = 1000.0
    lines = [
        (f"{args.clients} concurrent clients × {args.rounds} requests ({len(valid)} valid, {len(hostile)} hostile of "
         f"{len(HOSTILE_KINDS)} kinds), `memfactory serve --model {args.model} --max-context {CONTEXT} "
         f"--max-body-bytes {MAX_BODY} --max-queue {MAX_QUEUE}` as a subprocess on 127.0.0.1; valid requests "
         f"ask for 8 new tokens and retry on 429 after Retry-After. CPU ({platform.processor() or platform.machine()}, "
         f"{os.cpu_count()} cores visible, shared with other jobs), OMP_NUM_THREADS={env['OMP_NUM_THREADS']}. "
         f"Load average {load_start:.2f} at start."),
        "",
        "| measure | value |",
        "|---|---:|",
        f"| valid answered (200) | {sum(c.ok for c in valid)}/{len(valid)} ({retried} after a 429) |",
        f"| 429s answered (queue full), then retried | {sum(c.attempts - 1 for c in result.calls)} |",
        (f"| hostile refused with a 4xx JSON error | {sum(c.ok for c in hostile)}/{len(hostile)} "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))}) |"),
        (f"| valid latency p50 / p99 (incl. 429 waits) | {percentile(valid_lat, 50) * ms:.0f} ms / "
        f"{percentile(valid_lat, 99) * ms:.0f} ms |"),
        (f"| valid latency p50 / p99, admitted at once (no 429) | {percentile(direct_lat, 50) * ms:.0f} ms / "
         f"{percentile(direct_lat, 99) * ms:.0f} ms |"),
        f"| hostile latency p50 / p99 | {percentile(hostile_lat, 50) * ms:.0f} ms / {percentile(hostile_lat, 99) * ms:.0f} ms |",
        (f"| /v1/models during the load: p50 / p99 / max, failures | {percentile(result.models_latencies, 50) * ms:.0f} ms / "
        f"{percentile(result.models_latencies, 99) * ms:.0f} ms / {max(result.models_latencies) * ms:.0f} ms, "
        f"{result.models_failures} of {len(result.models_latencies)} |"),
        f"| server RSS idle → peak | {idle_rss / 2**20:.0f} MiB → {result.rss_peak / 2**20:.0f} MiB |",
        f"| wall time of the load | {result.wall_s:.1f} s |",
        (f"| server batches (mean size) | {health['batching']['batches']} "
        f"({health['batching']['requests'] / max(1, health['batching']['batches']):.1f}) |"),
        f"| SIGTERM → exit | {stop_s:.2f} s |",
    ]
    lines += [
        "",
        ("The p99 of requests that met a full queue is the Retry-After wait (whole seconds, at least 1) plus a "
         "second attempt; hostile requests retry on 429 too, so each reaches the check it is meant for. "
         "Each hostile kind's status is asserted by tests/test_serve_limits.py on the same mix."),
    ]
    table = "\n".join(lines)
    print(table)
    if failures:
        print(f"\n{len(failures)} FAILED:", file=sys.stderr)
        for call in failures[:20]:
            print(f"  {call.kind}: status {call.status} {call.error} {str(call.body)[:200]}", file=sys.stderr)
    if args.write:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        write_section(HEADING, f"`python bench/serve_load.py` ({stamp}):\n\n{table}\n")
    return 1 if failures or result.models_failures else 0


if __name__ == "__main__":
    sys.exit(main())
