"""A bounded `memfactory serve` (issue 17, items 1 and 7): body size, context, max_tokens, n, stop,
queue, deadline and shutdown, over the real tiny model behind uvicorn on 127.0.0.1; the 100-client
hostile mix of bench/serve_load.py; SIGTERM / Ctrl-C of a real `memfactory serve` subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from memfactory.serve.app import create_app
from memfactory.serve.server import ServerThread
from memfactory.tracking.process import free_port
from memfactory.types import ChatPrompt, Generation, SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import serve_load

NAME = "tiny-limits"
CONTEXT = 512
BODY = 32 * 1024


@pytest.fixture(scope="module")
def server(tiny_backend):
    app = create_app(tiny_backend, NAME, context_length=CONTEXT, max_body_bytes=BODY, request_timeout_s=60)
    with ServerThread(app) as running:
        yield running


def post(server: ServerThread, body: dict | bytes, **kw) -> httpx.Response:
    url = server.url + "/chat/completions"
    if isinstance(body, bytes):
        return httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=60, **kw)
    return httpx.post(url, json=body, timeout=60, **kw)


def request(content: str = "hi", **extra) -> dict:
    return {"model": NAME, "messages": [{"role": "user", "content": content}], **extra}


def openai_error(response: httpx.Response, status: int) -> dict:
    """The response is ``status`` with OpenAI's error shape; returns the error object."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["code"] == status
    return error


def test_cli_defaults_match_the_server():
    from memfactory.commands import serve as command
    from memfactory.serve import protocol

    assert command.DEFAULT_MAX_BODY_BYTES == protocol.DEFAULT_MAX_BODY_BYTES
    assert command.DEFAULT_MAX_QUEUE == protocol.DEFAULT_MAX_QUEUE
    assert command.DEFAULT_REQUEST_TIMEOUT_S == protocol.DEFAULT_REQUEST_TIMEOUT_S
    assert command.DEFAULT_MAX_N == protocol.DEFAULT_MAX_N
    assert command.DEFAULT_MAX_LOGPROBS == protocol.DEFAULT_MAX_LOGPROBS


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--max-queue", "0"], "--max-queue 0: must be at least 1"),
        (["--max-n", "0"], "--max-n 0: must be at least 1"),
        (["--max-logprobs", "-1"], "--max-logprobs -1: must be at least 0"),
        (["--max-body-bytes", "10"], "--max-body-bytes 10: must be at least 1024"),
        (["--request-timeout", "nan"], "--request-timeout nan: must be a positive number of seconds"),
        (["--request-timeout", "0"], "--request-timeout 0.0: must be a positive number of seconds"),
        (["--max-context", "1"], "--max-context 1: must be at least 2 tokens"),
        (["--max-context", "100000"], "--max-context 100000: the model's context is 8192 tokens"),
    ],
)
def test_cli_refuses_limits_it_cannot_honour(capsys, flags, fragment):
    from memfactory.cli import main as cli_main

    assert cli_main(["serve", "--port", "0", *flags]) == 2
    assert fragment in capsys.readouterr().err


# --------------------------------------------------------------------------- body, context, max_tokens


def test_a_body_over_the_limit_is_413_before_it_is_read(server):
    error = openai_error(post(server, request("x" * (BODY * 3))), 413)
    assert f"at most {BODY}" in error["message"] and "--max-body-bytes" in error["message"]
    # Without a Content-Length (chunked), the server stops reading at the limit.
    data = json.dumps(request("x" * (BODY * 3))).encode()
    chunked = (data[i : i + 4096] for i in range(0, len(data), 4096))
    response = httpx.post(server.url + "/chat/completions", content=chunked, headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    error = openai_error(response, 413)
    assert f"at most {BODY}" in error["message"]


def test_a_prompt_longer_than_the_context_names_both_numbers(server):
    # Tokenised ("hello " is several tokens): more than CONTEXT tokens, but not provably so from its characters.
    error = openai_error(post(server, request("hello " * (CONTEXT + 40), max_tokens=4)), 400)
    assert error["param"] == "messages"
    prompt_tokens = int(error["message"].split("the prompt is ")[1].split(" tokens")[0])
    assert prompt_tokens > CONTEXT and f"context is {CONTEXT} tokens" in error["message"]
    # Provably too long from its characters alone (no tokenising needed).
    error = openai_error(post(server, request("hello " * 4000, max_tokens=4)), 400)
    assert "the prompt is at least" in error["message"] and f"context is {CONTEXT} tokens" in error["message"]


def test_max_tokens_past_the_context_is_refused_with_the_numbers(server):
    error = openai_error(post(server, request(max_tokens=1_000_000_000)), 400)
    assert error["param"] == "max_tokens"
    assert "max_tokens 1000000000 + the prompt's" in error["message"] and f"context of {CONTEXT} tokens" in error["message"]
    prompt_tokens = int(error["message"].split("the prompt's ")[1].split(" tokens")[0])
    ok = post(server, request(max_tokens=CONTEXT - prompt_tokens, temperature=0))  # exactly fits
    assert ok.status_code == 200, ok.text
    error = openai_error(post(server, request(max_completion_tokens=CONTEXT)), 400)
    assert error["param"] == "max_completion_tokens"


def test_the_default_max_tokens_is_cut_to_what_the_context_leaves(server):
    reply = post(server, request("hello " * 100, temperature=0)).json()  # ~300 tokens; no max_tokens: default 256
    usage = reply["usage"]
    assert usage["prompt_tokens"] > CONTEXT - 256
    assert usage["total_tokens"] <= CONTEXT


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (request(n=64), "n: at most 16 choices"),
        (request(stop=[f"s{i}" for i in range(100)]), "at most 16 strings"),
        (request(stop=["x" * 5000]), "at most 1000 characters"),
        (b'{"model": "tiny-limits", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "temperature"),
        (b'{"model": "tiny-limits", "messages": [', "not valid JSON"),
        (b'{"model": "tiny-limits", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", "JSON"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (request(messages="hello"), "messages"),
        (request(seed=2**80), "seed"),
        (request(top_k=10**30), "top_k"),
        (request(max_tokens=-5), "max_tokens"),
        (request(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]), "text only"),
    ],
)
def test_hostile_shapes_are_400s_in_openai_form(server, body, fragment):
    error = openai_error(post(server, body), 400)
    assert fragment in error["message"], error


def test_health_reports_the_limits(server):
    health = httpx.get(f"http://{server.host}:{server.port}/health").json()
    assert health["limits"] == {"context_length": CONTEXT, "max_body_bytes": BODY, "request_timeout_s": 60,
                                "max_n": 16, "max_logprobs": 20}
    [model] = httpx.get(server.url + "/models").json()["data"]
    assert model["max_model_len"] == CONTEXT


# --------------------------------------------------------------------------- queue and deadline


class GatedEcho:
    """A real backend that echoes reversed text once its gate opens; records each generate call."""

    name = "echo"
    exposes_tokens = False

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()  # set once a generation waits at the gate
        self.calls: list[list[str]] = []

    def generate(self, prompts: list[ChatPrompt], params: SamplingParams) -> list[Generation]:
        self.entered.set()
        self.gate.wait(10)
        self.calls.append([p.messages[-1]["content"] for p in prompts])
        return [Generation(text=p.messages[-1]["content"][::-1]) for p in prompts]


def _send_async(url: str, content: str, results: dict) -> threading.Thread:
    def go() -> None:
        results[content] = httpx.post(url, json={"model": "echo", "messages": [{"role": "user", "content": content}]},
                                      timeout=30)

    thread = threading.Thread(target=go)
    thread.start()
    return thread


def test_a_full_queue_is_429_with_retry_after_and_models_still_answers():
    backend = GatedEcho()
    with ServerThread(create_app(backend, "echo", max_queue=2)) as srv:
        url = srv.url + "/chat/completions"
        results: dict[str, httpx.Response] = {}
        threads = [_send_async(url, f"m{i}", results) for i in range(2)]
        deadline = time.monotonic() + 10
        while httpx.get(f"http://{srv.host}:{srv.port}/health").json()["load"]["admitted"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        response = httpx.post(url, json={"model": "echo", "messages": [{"role": "user", "content": "third"}]})
        error = openai_error(response, 429)
        assert error["type"] == "rate_limit_error" and "--max-queue 2" in error["message"]
        assert int(response.headers["retry-after"]) >= 1
        assert httpx.get(srv.url + "/models").status_code == 200  # not queued behind the work
        backend.gate.set()
        for thread in threads:
            thread.join(30)
        assert sorted(r.json()["choices"][0]["message"]["content"] for r in results.values()) == ["0m", "1m"]
        ok = httpx.post(url, json={"model": "echo", "messages": [{"role": "user", "content": "again"}]})
        assert ok.json()["choices"][0]["message"]["content"] == "niaga"  # admitted again once there is room


def test_the_deadline_is_504_and_a_queued_request_past_it_never_runs():
    backend = GatedEcho()
    with ServerThread(create_app(backend, "echo", request_timeout_s=0.5, batch_window_ms=0)) as srv:
        url = srv.url + "/chat/completions"
        results: dict[str, httpx.Response] = {}
        first = _send_async(url, "first", results)  # holds the worker at the gate
        assert backend.entered.wait(10)
        second = _send_async(url, "second", results)  # queued behind it
        first.join(10)
        second.join(10)
        for content in ("first", "second"):
            error = openai_error(results[content], 504)
            assert error["type"] == "timeout_error" and "deadline of 0.5 s" in error["message"]
        backend.gate.set()
        third = httpx.post(url, json={"model": "echo", "messages": [{"role": "user", "content": "third"}]}, timeout=30)
        assert third.json()["choices"][0]["message"]["content"] == "driht"  # the worker has passed "second" by now
        assert [c for call in backend.calls for c in call] == ["first", "third"]  # skipped: nobody waited for it


def test_the_deadline_interrupts_a_running_generation(tiny_backend):
    app = create_app(tiny_backend, NAME, request_timeout_s=1.0)  # the model's own context: 8192
    with ServerThread(app) as srv:
        began = time.monotonic()
        error = openai_error(post(srv, request("hello", max_tokens=6000, temperature=0)), 504)
        assert time.monotonic() - began < 5
        assert "deadline of 1 s" in error["message"]
        # The worker is free again at once (the 6000-token generation was stopped, not finished).
        began = time.monotonic()
        assert post(srv, request("hi", max_tokens=4, temperature=0)).status_code == 200
        assert time.monotonic() - began < 3


def test_a_client_that_goes_away_frees_the_model(tiny_backend):
    app = create_app(tiny_backend, NAME)  # the default 600 s deadline: only the disconnect can stop it
    with ServerThread(app) as srv:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(srv.url + "/chat/completions", json=request("hello", max_tokens=6000, temperature=0), timeout=0.5)
        began = time.monotonic()
        assert post(srv, request("hi", max_tokens=4, temperature=0)).status_code == 200
        assert time.monotonic() - began < 4  # not queued behind the rest of the 6000 tokens (~8 s)


# --------------------------------------------------------------------------- 100 clients


def rss_now() -> int:
    return serve_load.rss_bytes(os.getpid())


def test_100_concurrent_clients_valid_and_hostile(tiny_backend):
    app = create_app(tiny_backend, "load", context_length=serve_load.CONTEXT, max_body_bytes=serve_load.MAX_BODY,
                     max_queue=serve_load.MAX_QUEUE, request_timeout_s=60)
    with ServerThread(app) as srv:
        base = f"http://{srv.host}:{srv.port}"
        result = serve_load.run_load(base, "load", server_pid=os.getpid(), clients=100, rounds=2, timeout_s=60)
        health = httpx.get(base + "/health").json()
    valid, hostile = result.valid(), result.hostile()
    assert len(valid) == 100 and len(hostile) == 100
    failures = [(c.kind, c.status, c.error, str(c.body)[:160]) for c in result.failures()]
    assert failures == []  # every valid one answered, every hostile one a 4xx JSON error
    kinds = {c.kind: c.status for c in hostile}
    assert set(kinds) == set(serve_load.HOSTILE_KINDS)
    assert kinds["oversized_body"] == kinds["chunked_oversized"] == 413
    assert kinds["unknown_model"] == 404
    assert all(status == 400 for kind, status in kinds.items() if kind not in {"oversized_body", "chunked_oversized",
                                                                              "unknown_model"})
    named = {c.kind: c.body["error"]["param"] for c in hostile if c.kind in serve_load.HOSTILE_PARAMS}
    assert named == serve_load.HOSTILE_PARAMS  # each 400 names the field that is wrong
    # /v1/models answered throughout.
    assert result.models_failures == 0 and len(result.models_latencies) >= 5
    assert max(result.models_latencies) < 5.0
    # The server's memory stayed bounded (this process holds server and clients; the 6 MB bodies
    # are built by the clients): no growth with the prompts' sizes.
    assert result.rss_peak - result.rss_start < 400 * 2**20, (result.rss_start, result.rss_peak)
    assert health["load"]["admitted"] == 0
    assert health["batching"]["max_batch"] > 1  # valid requests were still batched
    print(f"\n100 clients: wall {result.wall_s:.1f} s, valid p50 {serve_load.percentile([c.latency_s for c in valid], 50):.2f} s"
          f" p99 {serve_load.percentile([c.latency_s for c in valid], 99):.2f} s, 429s {health['load']['refused_full']}, "
          f"RSS {result.rss_start / 2**20:.0f} -> {result.rss_peak / 2**20:.0f} MiB")


# --------------------------------------------------------------------------- shutdown


def test_server_thread_stop_does_not_wait_for_a_generation(tiny_backend):
    app = create_app(tiny_backend, NAME)
    srv = ServerThread(app).start()
    results: dict[str, httpx.Response] = {}

    def go() -> None:
        results["r"] = post(srv, request("hello", max_tokens=7000, temperature=0))

    thread = threading.Thread(target=go)
    thread.start()
    while app.state.server.batcher.stats.requests == 0:
        time.sleep(0.01)
    began = time.monotonic()
    srv.stop()
    assert time.monotonic() - began < 10
    thread.join(10)
    openai_error(results["r"], 503)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_stops_memfactory_serve_within_seconds_while_it_generates(sig):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "memfactory", "serve", "--port", str(port), "--name", "t"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        serve_load.wait_until_serving(base, proc, timeout_s=120, poll_s=0.2)
        results: dict[str, object] = {}

        def go() -> None:
            body = {"model": "t", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8000, "temperature": 0}
            try:
                results["r"] = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)
            except httpx.HTTPError as exc:
                results["r"] = exc
            results["answered"] = time.monotonic()

        thread = threading.Thread(target=go)
        thread.start()
        while httpx.get(base + "/health").json()["batching"]["requests"] == 0:
            time.sleep(0.02)
        time.sleep(0.3)  # well into the 8000-token generation (about 10 s on this model)
        assert "r" not in results
        began = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=30)  # the exit itself (torch's teardown) may be slow on a loaded machine
        thread.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the claim: the generation in flight is cut short and answered at once, not run to its end (~10 s)
    assert results["answered"] - began < 8, results["answered"] - began
    response = results["r"]
    assert isinstance(response, httpx.Response), response  # answered, not cut off
    assert openai_error(response, 503)["message"] == "the server is shutting down"
