"""OpenAIBackend against small real HTTP servers on 127.0.0.1 (no mocks).

The servers here are deliberately tiny FastAPI apps that record what they received and
misbehave on purpose (fail, rate-limit, echo secrets), so retries, back-off, request mapping
and key redaction are observed over real sockets.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from memfactory.backends import openai_api
from memfactory.backends.openai_api import OpenAIBackend, normalise_base_url
from memfactory.config import ModelConfig
from memfactory.errors import MemFactoryError
from memfactory.registry import REGISTRY
from memfactory.serve.server import ServerThread
from memfactory.tracking.process import free_port
from memfactory.types import ChatPrompt, SamplingParams

SECRET = "sk-test-0123456789abcdef-SECRET"


def completion(text: str, finish: str = "stop", stop_reason: str | None = None) -> dict:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish, "stop_reason": stop_reason}],
    }


def recording_app(fail_first: int = 0, fail_status: int = 503, retry_after: str | None = None) -> FastAPI:
    """Fails the first ``fail_first`` chat requests with ``fail_status``, then echoes the last user
    message upper-cased. Records bodies, attempt times and the peak number of requests in flight."""
    app = FastAPI()
    app.state.bodies, app.state.times, app.state.in_flight, app.state.peak = [], [], 0, 0

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "m", "object": "model"}, {"id": "other", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.bodies.append(body)
        app.state.times.append(time.monotonic())
        if len(app.state.times) <= fail_first:
            headers = {"Retry-After": retry_after} if retry_after else {}
            return JSONResponse({"error": {"message": "try later"}}, status_code=fail_status, headers=headers)
        app.state.in_flight += 1
        app.state.peak = max(app.state.peak, app.state.in_flight)
        await asyncio.sleep(0.05)
        app.state.in_flight -= 1
        user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        if body.get("stop") and "STOP" in body["stop"]:
            return completion(user.upper(), stop_reason="STOP")
        return completion(user.upper(), finish="length" if body["max_tokens"] < 4 else "stop")

    return app


@pytest.fixture
def server_factory():
    started: list[ServerThread] = []

    def start(app: FastAPI) -> ServerThread:
        server = ServerThread(app).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def prompts(n: int) -> list[ChatPrompt]:
    return [ChatPrompt([{"role": "system", "content": "be brief"}, {"role": "user", "content": f"question {i}"}]) for i in range(n)]


def test_registered_with_its_options():
    entry = REGISTRY.get("backend", "openai")
    assert entry.target is OpenAIBackend
    assert set(entry.config.model_fields) == {"timeout", "max_retries", "concurrency", "use_n"}


def test_generate_in_order_with_bounded_concurrency(server_factory):
    server = server_factory(recording_app())
    with OpenAIBackend(server.url, "m", concurrency=3) as backend:
        gens = backend.generate(prompts(9), SamplingParams(max_new_tokens=8, temperature=0))
    assert [g.text for g in gens] == [f"QUESTION {i}" for i in range(9)]
    assert all(g.finish_reason == "stop" and g.latency_s > 0 for g in gens)
    assert not backend.exposes_tokens and gens[0].response_ids is None
    # 9 requests of 50 ms each: several in flight at once, never more than the bound.
    assert 2 <= server.app.state.peak <= 3


def test_request_body_maps_sampling_params_and_prefix(server_factory):
    server = server_factory(recording_app())
    backend = OpenAIBackend(server.url, "m")
    params = SamplingParams(max_new_tokens=2, temperature=0.7, top_p=0.9, top_k=5, stop=["\n\n"], seed=11)
    prompt = ChatPrompt([{"role": "user", "content": "hi"}], assistant_prefix="\\boxed{")
    [gen] = backend.generate([prompt], params)
    body = server.app.state.bodies[-1]
    assert body["model"] == "m" and body["n"] == 1
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["top_k"], body["stop"], body["seed"]) == (
        2, 0.7, 0.9, 5, ["\n\n"], 11)
    # The prefix travels as a final assistant message continued by the server (vLLM's extension) ...
    assert body["messages"][-1] == {"role": "assistant", "content": "\\boxed{"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    # ... and is not prepended to the returned continuation.
    assert gen.text == "HI" and gen.finish_reason == "length"
    # Without a prefix or top_k, no extension fields are sent (OpenAI's own API rejects unknown ones).
    backend.generate(prompts(1), SamplingParams(temperature=0))
    plain = server.app.state.bodies[-1]
    assert not {"continue_final_message", "add_generation_prompt", "top_k", "stop", "seed"} & set(plain)
    assert plain["temperature"] == 0


def test_a_server_that_ignores_n_is_asked_for_the_rest(server_factory):
    """This server answers one choice whatever ``n`` says: the backend asks again for each copy left,
    and from then on sends one request per copy."""
    server = server_factory(recording_app())
    backend = OpenAIBackend(server.url, "m")
    gens = backend.generate(prompts(1) * 3, SamplingParams(temperature=0))
    assert [g.text for g in gens] == ["QUESTION 0"] * 3
    assert [b["n"] for b in server.app.state.bodies] == [3, 1, 1] and backend.n_supported is False
    backend.generate(prompts(1) * 2, SamplingParams(temperature=0))
    assert [b["n"] for b in server.app.state.bodies[3:]] == [1, 1]


def test_stop_string_is_put_back_from_stop_reason(server_factory):
    server = server_factory(recording_app())
    [gen] = OpenAIBackend(server.url, "m").generate(prompts(1), SamplingParams(stop=["STOP"]))
    assert gen.text == "QUESTION 0STOP"  # MemFactory keeps the stop text, like the hf backend


@pytest.mark.parametrize("status", [429, 500, 503])
def test_retries_with_backoff_then_succeeds(server_factory, status, monkeypatch):
    # the jitter at its middle (x1.0): drawn near its ends, 0.125 s then 0.15 s left a 25 ms margin that a
    # loaded machine's scheduling could eat
    monkeypatch.setattr(openai_api, "random", SimpleNamespace(random=lambda: 0.5))
    server = server_factory(recording_app(fail_first=2, fail_status=status))
    backend = OpenAIBackend(server.url, "m", max_retries=4, backoff_s=0.1)
    [gen] = backend.generate(prompts(1), SamplingParams())
    assert gen.text == "QUESTION 0"
    times = server.app.state.times
    assert len(times) == 3
    first_wait, second_wait = times[1] - times[0], times[2] - times[1]
    # exponential back-off: 0.1 s then 0.2 s (plus the request's own time)
    assert 0.095 <= first_wait < 1.0 and second_wait >= 0.195 and second_wait > first_wait


def test_retry_after_header_is_honoured(server_factory):
    server = server_factory(recording_app(fail_first=1, fail_status=429, retry_after="0.3"))
    OpenAIBackend(server.url, "m", backoff_s=0.01).generate(prompts(1), SamplingParams())
    times = server.app.state.times
    assert times[1] - times[0] >= 0.28


def test_gives_up_after_max_retries(server_factory):
    server = server_factory(recording_app(fail_first=100, fail_status=503))
    backend = OpenAIBackend(server.url, "m", max_retries=2, backoff_s=0.01)
    with pytest.raises(MemFactoryError, match=r"HTTP 503: try later \(gave up after 3 attempts\)"):
        backend.generate(prompts(1), SamplingParams())
    assert len(server.app.state.times) == 3


def test_client_errors_are_not_retried(server_factory):
    server = server_factory(recording_app(fail_first=100, fail_status=400))
    with pytest.raises(MemFactoryError, match="HTTP 400"):
        OpenAIBackend(server.url, "m", backoff_s=0.01).generate(prompts(4), SamplingParams())
    sent = [b["messages"][-1]["content"] for b in server.app.state.bodies]
    assert 1 <= len(sent) <= 4 and len(set(sent)) == len(sent)  # no prompt sent twice; the rest cancelled


def test_dead_endpoint_fails_fast_with_a_clear_message():
    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = OpenAIBackend(url, "m", max_retries=2, backoff_s=0.05)
    start = time.monotonic()
    with pytest.raises(MemFactoryError) as info:
        backend.generate(prompts(8), SamplingParams())
    elapsed = time.monotonic() - start
    assert str(info.value).startswith(f"cannot reach {url} : connection refused; is the server running?")
    assert elapsed < 2.0
    with pytest.raises(MemFactoryError, match="connection refused"):
        backend.list_models()


def test_timeout_is_reported(server_factory):
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def slow():
        await asyncio.sleep(0.8)
        return completion("late")

    server = server_factory(app)
    with pytest.raises(MemFactoryError, match=r"did not answer within 0.2 s"):
        OpenAIBackend(server.url, "m", timeout=0.2, max_retries=0).generate(prompts(1), SamplingParams())


def test_api_key_is_sent_but_never_shown(server_factory, monkeypatch):
    app = FastAPI()
    seen: list[str] = []

    @app.post("/v1/chat/completions")
    async def echo_auth(request: Request):
        auth = request.headers.get("authorization", "")
        seen.append(auth)
        # A careless server that echoes the credential back in its error.
        return JSONResponse({"error": {"message": f"bad credential {auth}"}}, status_code=401)

    server = server_factory(app)
    monkeypatch.setenv("MF_TEST_KEY", SECRET)
    backend = OpenAIBackend.from_config(ModelConfig(backend="openai", path="m", base_url=server.url, api_key_env="MF_TEST_KEY"))
    with pytest.raises(MemFactoryError) as info:
        backend.generate(prompts(1), SamplingParams())
    assert seen == [f"Bearer {SECRET}"]
    message = str(info.value)
    assert SECRET not in message and "bad credential Bearer ***" in message and "$MF_TEST_KEY" in message
    assert SECRET not in repr(backend) and "'***'" in repr(backend)
    # ... nor in the preset: the key lives only in the environment.
    assert SECRET not in ModelConfig(backend="openai", path="m", base_url=server.url, api_key_env="MF_TEST_KEY").model_dump_json()


def test_list_models(server_factory):
    server = server_factory(recording_app())
    assert OpenAIBackend(server.url, "m").list_models() == ["m", "other"]


def test_from_config_and_url_normalisation():
    with pytest.raises(MemFactoryError, match="model.base_url"):
        OpenAIBackend.from_config(ModelConfig(backend="openai", path="m"))
    assert normalise_base_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert normalise_base_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1"
    assert normalise_base_url("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"
    with pytest.raises(MemFactoryError, match="not an http"):
        normalise_base_url("127.0.0.1:8000")


def test_a_server_without_prefix_support_gets_a_hint(server_factory):
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def strict(request: Request):
        body = await request.json()
        unknown = sorted(set(body) - {"model", "messages", "max_tokens", "temperature", "top_p", "n", "stop", "seed"})
        if unknown:  # what OpenAI's own API answers to vLLM's extensions
            return JSONResponse({"error": {"message": f"Unrecognized request argument supplied: {unknown[0]}"}}, status_code=400)
        return completion("ok")

    server = server_factory(app)
    backend = OpenAIBackend(server.url, "m", max_retries=0)
    assert backend.generate(prompts(1), SamplingParams())[0].text == "ok"
    with pytest.raises(MemFactoryError, match="does not continue an assistant prefix"):
        backend.generate([ChatPrompt([{"role": "user", "content": "q"}], assistant_prefix="A:")], SamplingParams())
