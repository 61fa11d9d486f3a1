"""`memfactory serve` end to end: the real tiny HF model behind uvicorn on 127.0.0.1, driven by the
real OpenAIBackend and raw HTTP, compared with the same HFBackend called in-process."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from memfactory.backends.hf import HFBackend
from memfactory.backends.openai_api import OpenAIBackend
from memfactory.cli import main as cli_main
from memfactory.errors import MemFactoryError
from memfactory.serve.app import create_app
from memfactory.serve.batcher import Batcher
from memfactory.serve.protocol import apply_stop
from memfactory.serve.server import ServerThread
from memfactory.tracking.process import free_port
from memfactory.types import ChatPrompt, Generation, SamplingParams

NAME = "tiny-test"
GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def hf_backend(tiny_backend) -> HFBackend:
    """The session's read-only tiny model (tests/conftest.py); called in-process and served over HTTP,
    never both at the same moment."""
    return tiny_backend


@pytest.fixture(scope="module")
def server(hf_backend):
    with ServerThread(create_app(hf_backend, NAME, batch_window_ms=20)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with OpenAIBackend(server.url, NAME, concurrency=8, max_retries=0) as backend:
        yield backend


def chat_prompts(n: int = 6) -> list[ChatPrompt]:
    out = []
    for i in range(n):
        messages = [{"role": "user", "content": f"Document {i}: the key is {i * 7}. What is the key?"}]
        out.append(ChatPrompt(messages, assistant_prefix="\\boxed{" if i % 2 else ""))
    return out


def stats(server: ServerThread) -> dict:
    return httpx.get(f"http://{server.host}:{server.port}/health").json()["batching"]


# --------------------------------------------------------------------------- through HTTP == in-process


def test_greedy_over_http_equals_in_process(hf_backend, client):
    prompts = chat_prompts()
    local = hf_backend.generate(prompts, GREEDY)
    remote = client.generate(prompts, GREEDY)
    assert [g.text for g in remote] == [g.text for g in local]
    assert [g.finish_reason for g in remote] == [g.finish_reason for g in local]
    assert len({g.text for g in local}) > 1  # the prompts really differ


def test_stop_strings_match_in_process(hf_backend, client):
    prompts = chat_prompts(4)
    free = hf_backend.generate(prompts, GREEDY)
    stop = free[0].text[4:7]  # a piece the model will certainly produce
    assert stop.strip()
    params = SamplingParams(max_new_tokens=12, temperature=0.0, stop=[stop])
    local = hf_backend.generate(prompts, params)
    remote = client.generate(prompts, params)
    assert local[0].text.endswith(stop) and local[0].finish_reason == "stop"
    assert [(g.text, g.finish_reason) for g in remote] == [(g.text, g.finish_reason) for g in local]


def test_seeded_sampling_is_reproducible_over_http(hf_backend, client):
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=7)
    prompt = chat_prompts(1)
    first, second = client.generate(prompt, params), client.generate(prompt, params)
    assert first[0].text == second[0].text == hf_backend.generate(prompt, params)[0].text


def test_response_shape_and_usage(hf_backend, server):
    prompt = chat_prompts(2)[1]  # with an assistant prefix
    [local] = hf_backend.generate([prompt], GREEDY)
    body = {
        "model": NAME, "max_tokens": 12, "temperature": 0,
        "messages": [*prompt.messages, {"role": "assistant", "content": prompt.assistant_prefix}],
        "continue_final_message": True, "add_generation_prompt": False,
        "logprobs": False, "frequency_penalty": 0,  # fields we ignore are accepted
    }
    reply = httpx.post(server.url + "/chat/completions", json=body).json()
    assert reply["object"] == "chat.completion" and reply["model"] == NAME and reply["id"].startswith("chatcmpl-")
    [choice] = reply["choices"]
    assert choice["message"] == {"role": "assistant", "content": local.text}
    assert choice["finish_reason"] == local.finish_reason
    assert reply["usage"] == {
        "prompt_tokens": len(local.prompt_ids),
        "completion_tokens": len(local.response_ids),
        "total_tokens": len(local.prompt_ids) + len(local.response_ids),
    }
    models = httpx.get(server.url + "/models").json()
    assert [m["id"] for m in models["data"]] == [NAME]


# --------------------------------------------------------------------------- batching


def test_concurrent_requests_are_batched(client, server):
    before = stats(server)
    client.generate(chat_prompts(8), GREEDY)
    after = stats(server)
    assert after["requests"] - before["requests"] == 8
    assert after["batches"] - before["batches"] < 8  # fewer generate calls than requests
    assert after["max_batch"] > 1


class EchoBackend:
    """A real, deterministic Backend: echoes the last user message, records each generate call."""

    name = "echo"
    exposes_tokens = False

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []
        self.gate = threading.Event()

    def generate(self, prompts: list[ChatPrompt], params: SamplingParams) -> list[Generation]:
        self.gate.wait(5)
        self.calls.append((len(prompts), params.temperature))
        if any(p.messages[-1]["content"] == "boom" for p in prompts):
            raise RuntimeError("backend exploded")
        return [Generation(text=p.assistant_prefix + p.messages[-1]["content"][::-1]) for p in prompts]


def test_batcher_groups_by_sampling_params_and_routes_results():
    backend = EchoBackend()
    batcher = Batcher(backend, max_batch=16, window_s=0.05)
    try:
        hot, cold = SamplingParams(temperature=1.0), SamplingParams(temperature=0.5)
        # The first job holds the worker at the gate, so the next six are all queued when it looks again.
        blocker = batcher.submit(ChatPrompt([{"role": "user", "content": "first"}]), SamplingParams(temperature=0.0))
        while batcher.stats.requests == 0:
            time.sleep(0.001)
        futures = [batcher.submit(ChatPrompt([{"role": "user", "content": f"m{i}"}]), hot if i % 2 else cold) for i in range(6)]
        backend.gate.set()
        assert [g.text for g in blocker.result(5)] == ["tsrif"]
        assert [f.result(5)[0].text for f in futures] == [f"{i}m" for i in range(6)]
        assert sorted(backend.calls) == [(1, 0.0), (3, 0.5), (3, 1.0)]  # one generate call per parameter group
        assert batcher.stats.max_batch == 3 and batcher.stats.requests == 7
        bad = [batcher.submit(ChatPrompt([{"role": "user", "content": c}]), cold) for c in ("ok", "boom")]
        with pytest.raises(RuntimeError, match="exploded"):  # a failing batch fails the requests in it ...
            bad[1].result(5)
        assert bad[0].exception(5) is None or "exploded" in str(bad[0].exception())
        # ... and the worker keeps serving.
        assert batcher.submit(ChatPrompt([{"role": "user", "content": "abc"}]), cold).result(5)[0].text == "cba"
    finally:
        batcher.stop()


def test_backend_failure_is_a_500_and_server_keeps_serving():
    backend = EchoBackend()
    backend.gate.set()
    with ServerThread(create_app(backend, "echo")) as srv:
        client = OpenAIBackend(srv.url, "echo", max_retries=0)
        with pytest.raises(MemFactoryError, match="HTTP 500: generation failed: RuntimeError: backend exploded"):
            client.generate([ChatPrompt([{"role": "user", "content": "boom"}])], GREEDY)
        [gen] = client.generate([ChatPrompt([{"role": "user", "content": "hello"}])], GREEDY)
        assert gen.text == "olleh"
        # A text-only backend has no honest token counts, so usage is left out.
        reply = httpx.post(srv.url + "/chat/completions", json={"model": "echo", "messages": [{"role": "user", "content": "x"}]}).json()
        assert "usage" not in reply


# --------------------------------------------------------------------------- streaming


def sse_events(server: ServerThread, body: dict) -> list[str]:
    with httpx.stream("POST", server.url + "/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def test_streaming_sse_chunks(hf_backend, server, client):
    prompt = chat_prompts(1)[0]
    [local] = hf_backend.generate([prompt], GREEDY)
    events = sse_events(server, {
        "model": NAME, "messages": prompt.messages, "max_tokens": 12, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    })
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == NAME for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == local.text
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals == [local.finish_reason]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(local.response_ids)
    assert len(chunks) > 4  # the text really arrives in pieces
    # The client's stream() yields the same text, and generate_streaming the same Generation as generate.
    assert "".join(client.stream(prompt, GREEDY)) == local.text
    seen: list[str] = []
    streamed = client.generate_streaming(prompt, GREEDY, seen.append)
    assert (streamed.text, streamed.finish_reason) == (local.text, local.finish_reason)
    assert len(seen) > 4 and seen[-1] == local.text and all(b.startswith(a) for a, b in itertools.pairwise(seen))


# --------------------------------------------------------------------------- request errors


@pytest.mark.parametrize(
    ("change", "status", "fragment"),
    [
        ({"model": "gpt-4"}, 404, "does not exist"),
        ({"n": 0}, 400, "n: must be at least 1"),
        ({"continue_final_message": True}, 400, "last message to be from the assistant"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
          "continue_final_message": True, "add_generation_prompt": True}, 400, "cannot both be true"),
        ({"temperature": -1}, 400, "temperature"),
        ({"messages": []}, 400, "messages"),
    ],
)
def test_bad_requests_get_openai_errors(server, change, status, fragment):
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **change}
    response = httpx.post(server.url + "/chat/completions", json=body)
    assert response.status_code == status
    assert fragment in response.json()["error"]["message"]


def test_wrong_model_name_is_a_clear_client_error(server):
    with pytest.raises(MemFactoryError, match=r"HTTP 404: .*does not exist.*served model name"):
        OpenAIBackend(server.url, "not-served", max_retries=0).generate(chat_prompts(1), GREEDY)


def test_server_api_key(tmp_path):
    backend = EchoBackend()
    backend.gate.set()
    key = "sk-serve-9f8e7d6c5b4a-SECRET"
    with ServerThread(create_app(backend, "echo", api_key=key)) as srv:
        with pytest.raises(MemFactoryError) as info:
            OpenAIBackend(srv.url, "echo", api_key="sk-wrong-key-123456", max_retries=0).generate(chat_prompts(1), GREEDY)
        assert "HTTP 401" in str(info.value) and "sk-wrong-key-123456" not in str(info.value)
        [gen] = OpenAIBackend(srv.url, "echo", api_key=key).generate([ChatPrompt([{"role": "user", "content": "ab"}])], GREEDY)
        assert gen.text == "ba"
        assert httpx.get(f"http://{srv.host}:{srv.port}/health").status_code == 200  # health needs no key


def test_apply_stop_cuts_where_generation_stopped():
    assert apply_stop("abc\n\nrest", ["\n\n", "c"], keep=False) == ("ab", "c")
    assert apply_stop("abc\n\nrest", ["\n\n"], keep=True) == ("abc\n\n", "\n\n")
    assert apply_stop("xab", ["b", "ab"], keep=False) == ("x", "ab")
    assert apply_stop("none here", ["zz"], keep=False) == ("none here", None)


# --------------------------------------------------------------------------- the CLI


def test_cli_serve_rejects_a_missing_checkpoint(capsys):
    assert cli_main(["serve", "--checkpoint", "/nonexistent/ckpt", "--port", "0"]) == 2
    assert "--checkpoint /nonexistent/ckpt: no such folder" in capsys.readouterr().err


def test_cli_serves_a_checkpoint_in_a_subprocess(hf_backend, tmp_path):
    import copy

    import torch

    # A "trained" checkpoint: the tiny model with perturbed weights, so serving the base by mistake shows.
    trained = copy.deepcopy(hf_backend.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in trained.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    ckpt = tmp_path / "step-3"
    trained.save_pretrained(ckpt)
    hf_backend.tokenizer.save_pretrained(ckpt)
    prompts = chat_prompts(2)
    expected = [g.text for g in HFBackend(trained, hf_backend.tokenizer).generate(prompts, GREEDY)]
    assert expected != [g.text for g in hf_backend.generate(prompts, GREEDY)]
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "memfactory", "serve", "--checkpoint", str(ckpt), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        client = OpenAIBackend(f"http://127.0.0.1:{port}", "step-3", max_retries=0)
        deadline = time.monotonic() + 90
        while True:
            try:
                assert client.list_models() == ["step-3"]
                break
            except MemFactoryError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.3)
        assert [g.text for g in client.generate(prompts, GREEDY)] == expected
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"serving 'step-3' at http://127.0.0.1:{port}/v1" in out


def test_cli_serve_reports_a_busy_port(capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli_main(["serve", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_a_preset_model_section_reaches_the_server(hf_backend, server):
    from memfactory.config import ModelConfig
    from memfactory.registry import REGISTRY

    cfg = ModelConfig(backend="openai", path=NAME, base_url=f"http://127.0.0.1:{server.port}")  # /v1 is added
    backend = REGISTRY.get("backend", cfg.backend).target.from_config(cfg)
    prompts = chat_prompts(3)
    assert [g.text for g in backend.generate(prompts, GREEDY)] == [g.text for g in hf_backend.generate(prompts, GREEDY)]
