"""OpenAIBackend asks for a group of copies of one prompt in ONE request with ``n`` (issue 28 item 5),
against `memfactory serve` over the real tiny model on 127.0.0.1, and falls back to one request per
copy against the same server started with ``--max-n 1`` (which refuses n > 1 with a 400 naming n)."""

from __future__ import annotations

import json

import httpx
import pytest

from memfactory.backends.openai_api import OpenAIBackend
from memfactory.serve.app import create_app
from memfactory.serve.server import ServerThread
from memfactory.types import ChatPrompt, SamplingParams

NAME = "tiny-group"
P = ChatPrompt([{"role": "user", "content": "Document 1: the key is 7. What is the key?"}])
Q = ChatPrompt([{"role": "user", "content": "Document 2: the key is 14. What is the key?"}])


def recorded(backend: OpenAIBackend) -> list[tuple[int, int]]:
    """(status, n) of every request the backend sends from now on, as the server answered it."""
    seen: list[tuple[int, int]] = []

    def hook(response: httpx.Response) -> None:
        seen.append((response.status_code, json.loads(response.request.content or b"{}").get("n", 1)))

    backend._client.event_hooks["response"].append(hook)
    return seen


@pytest.fixture(scope="module")
def server(tiny_backend):
    app = create_app(tiny_backend, NAME, max_n=8, batch_window_ms=5)
    with ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def refusing(tiny_backend):
    app = create_app(tiny_backend, NAME, max_n=1)
    with ServerThread(app) as running:
        yield running


def test_a_group_is_one_request_sampled_as_one_batch(tiny_backend, server):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=4)
    stats = server.app.state.server.batcher.stats
    jobs, prefilled = stats.requests, tiny_backend.prefill_stats["prefilled"]
    with OpenAIBackend(server.url, NAME, max_retries=0, timeout=120) as backend:
        sent = recorded(backend)
        gens = backend.generate([P] * 4, params)
    assert sent == [(200, 4)] and backend.n_supported is True
    assert stats.requests - jobs == 1  # one batcher job of 4 rows ...
    assert tiny_backend.prefill_stats["prefilled"] - prefilled == 1  # ... whose prompt is prefilled once
    local = tiny_backend.generate([P] * 4, params)  # the same call in-process: the same four samples
    assert [g.text for g in gens] == [g.text for g in local]
    assert [g.finish_reason for g in gens] == [g.finish_reason for g in local]
    assert len({g.text for g in gens}) > 1  # four samples, not one copied


def test_interleaved_groups_come_back_in_order(tiny_backend, server):
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    with OpenAIBackend(server.url, NAME, max_retries=0, timeout=120) as backend:
        sent = recorded(backend)
        gens = backend.generate([P, Q, P, Q, Q], params)
    assert sorted(sent) == [(200, 2), (200, 3)]  # one request per distinct prompt
    [p_text, q_text] = [g.text for g in tiny_backend.generate([P, Q], params)]
    assert [g.text for g in gens] == [p_text, q_text, p_text, q_text, q_text]


def test_stop_strings_are_put_back_in_every_choice(tiny_backend, server):
    free = tiny_backend.generate([P], SamplingParams(max_new_tokens=10, temperature=0.0))[0].text
    stop = free[2:4]
    assert stop.strip()
    params = SamplingParams(max_new_tokens=10, temperature=0.0, stop=[stop])
    with OpenAIBackend(server.url, NAME, max_retries=0, timeout=120) as backend:
        gens = backend.generate([P] * 3, params)
    local = tiny_backend.generate([P], params)[0]
    assert [g.text for g in gens] == [local.text] * 3 and local.text.endswith(stop)


def test_a_server_refusing_n_is_asked_once_per_copy(tiny_backend, refusing):
    params = SamplingParams(max_new_tokens=5, temperature=0.0)
    stats = refusing.app.state.server.batcher.stats
    jobs = stats.requests
    with OpenAIBackend(refusing.url, NAME, max_retries=0, timeout=120) as backend:
        sent = recorded(backend)
        gens = backend.generate([P] * 3, params)
        assert sent == [(400, 3), (200, 1), (200, 1), (200, 1)] and backend.n_supported is False
        sent.clear()
        again = backend.generate([P, P, Q], params)  # learnt: no request with n > 1 from now on
    assert sent == [(200, 1)] * 3
    assert stats.requests - jobs == 6  # the refused request never reached the model
    greedy = tiny_backend.generate([P, Q], params)
    assert [g.text for g in gens] == [greedy[0].text] * 3
    assert [g.text for g in again] == [greedy[0].text, greedy[0].text, greedy[1].text]


def test_use_n_off_sends_one_request_per_copy(server):
    with OpenAIBackend(server.url, NAME, max_retries=0, timeout=120, use_n=False) as backend:
        sent = recorded(backend)
        gens = backend.generate([P] * 3, SamplingParams(max_new_tokens=3, temperature=0.0))
    assert sent == [(200, 1)] * 3 and len(gens) == 3 and backend.n_supported is None
