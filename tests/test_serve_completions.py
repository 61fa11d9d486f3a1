"""`memfactory serve` beyond one chat answer (issue 28): n choices sampled as one batch, log-probs
from the same forwards as the sampled tokens, and /v1/completions. The real tiny model behind
uvicorn on 127.0.0.1, checked against the same HFBackend in-process and a plain forward pass."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
import torch

from memfactory.backends.base import ServingFeatures
from memfactory.backends.hf import HFBackend
from memfactory.serve.app import create_app
from memfactory.serve.batcher import Batcher
from memfactory.serve.server import ServerThread
from memfactory.types import ChatPrompt, Generation, SamplingParams, TokenPrompt
from tests.numerics import assert_equal_up_to_rounding

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import serve_n

NAME = "tiny-n"
CONTEXT = 256
LOGPROB_TERMS = 2000  # a log-prob's longest reduction: the log-softmax over the tiny model's vocabulary
QUESTION = [{"role": "user", "content": "Document 3: the key is 21. What is the key?"}]


@pytest.fixture(scope="module")
def server(tiny_backend):
    app = create_app(tiny_backend, NAME, context_length=CONTEXT, batch_window_ms=20, max_n=8, max_logprobs=5)
    with ServerThread(app) as running:
        yield running


def post(server: ServerThread, path: str, **body) -> httpx.Response:
    return httpx.post(server.url + path, json={"model": NAME, **body}, timeout=120)


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def forward_logprobs(model, ids: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log p(ids[j] | ids[:j]) for j >= 1, from one plain forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits / temperature, -1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)


# --------------------------------------------------------------------------- n


def test_n_choices_are_one_batch_with_one_prefill(tiny_backend, server):
    before = dict(tiny_backend.prefill_stats)
    reply = ok(post(server, "/chat/completions", messages=QUESTION, n=4, max_tokens=8, temperature=1.0, seed=5))
    after = tiny_backend.prefill_stats
    assert (after["rows"] - before["rows"], after["prefilled"] - before["prefilled"]) == (4, 1)
    choices = reply["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    # the same batch in-process: the same four samples, drawn from one generator
    local = tiny_backend.generate([ChatPrompt(QUESTION)] * 4, SamplingParams(max_new_tokens=8, temperature=1.0, seed=5))
    assert [c["message"]["content"] for c in choices] == [g.text for g in local]
    assert len({g.text for g in local}) > 1  # really four samples, not one copied
    assert [c["finish_reason"] for c in choices] == [g.finish_reason for g in local]
    usage = reply["usage"]
    assert usage["prompt_tokens"] == len(local[0].prompt_ids)  # the prompt counted once
    assert usage["completion_tokens"] == sum(len(g.response_ids) for g in local)


def test_n_is_bounded_by_the_server(server):
    for n, fragment in ((0, "n: must be at least 1"), (9, "n: at most 8 choices per prompt")):
        response = post(server, "/chat/completions", messages=QUESTION, n=n, max_tokens=2)
        assert response.status_code == 400
        error = response.json()["error"]
        assert fragment in error["message"] and error["param"] == "n"
    assert "--max-n" in post(server, "/completions", prompt="x", n=9).json()["error"]["message"]


def test_a_job_of_n_is_n_rows_of_one_generate_call():
    class Recorder:
        name, exposes_tokens = "recorder", False

        def __init__(self) -> None:
            self.calls: list[int] = []

        def generate(self, prompts, params):
            self.calls.append(len(prompts))
            return [Generation(text=f"{i}") for i in range(len(prompts))]

    backend = Recorder()
    batcher = Batcher(backend, max_batch=4, window_s=0.0)
    try:
        gens = batcher.submit(ChatPrompt(QUESTION), SamplingParams(), n=3).result(5)
        assert [g.text for g in gens] == ["0", "1", "2"] and backend.calls == [3]
        assert batcher.stats.max_batch == 3 and batcher.stats.requests == 1
    finally:
        batcher.stop()


def test_the_n_bench_measures_one_group_against_eight_requests(tiny_backend):
    """bench/serve_n.py's measurement, small: one n=8 request is one generate call with one prefill,
    eight sequential n=1 requests are eight of each, and every mode counts the server's tokens."""
    results = serve_n.measure(tiny_backend, max_tokens=3, repeats=1)
    one, concurrent, sequential = (results[mode] for mode in serve_n.MODES)
    assert (one.generate_calls, one.prefilled) == (1, 1)
    assert (sequential.generate_calls, sequential.prefilled) == (8, 8)
    assert 1 <= concurrent.generate_calls <= 8
    assert all(0 < m.tokens[0] <= 24 and m.tokens_per_s > 0 for m in results.values())


# --------------------------------------------------------------------------- log-probs


def test_chat_logprobs_are_the_sampled_tokens_own(tiny_backend, server):
    reply = ok(post(server, "/chat/completions", messages=QUESTION, max_tokens=6, temperature=0.7, seed=3,
                    logprobs=True, top_logprobs=3))
    [local] = tiny_backend.generate([ChatPrompt(QUESTION)], SamplingParams(max_new_tokens=6, temperature=0.7, seed=3))
    content = reply["choices"][0]["logprobs"]["content"]
    tokenizer = tiny_backend.tokenizer
    assert [c["token"] for c in content] == [tokenizer.decode([t]) for t in local.response_ids]
    got = torch.tensor([c["logprob"] for c in content])
    expected = forward_logprobs(tiny_backend.model, local.prompt_ids + local.response_ids, 0.7)[-len(local.response_ids):]
    assert_equal_up_to_rounding(got, expected, terms=LOGPROB_TERMS, what="sampled log-probs")
    for entry in content:
        tops = [t["logprob"] for t in entry["top_logprobs"]]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] >= entry["logprob"]
        assert all(t["bytes"] == list(t["token"].encode()) or "\ufffd" in t["token"] for t in entry["top_logprobs"])


def test_greedy_tokens_are_their_own_top_alternative(server):
    reply = ok(post(server, "/chat/completions", messages=QUESTION, max_tokens=5, temperature=0, logprobs=True,
                    top_logprobs=2))
    for entry in reply["choices"][0]["logprobs"]["content"]:
        assert entry["top_logprobs"][0]["token"] == entry["token"]
        assert entry["top_logprobs"][0]["logprob"] == pytest.approx(entry["logprob"], rel=1e-6)


def test_echo_gives_the_prompts_log_probs_from_the_prefill(tiny_backend, server):
    ids = tiny_backend.tokenizer("the key is twenty one, said the keeper", add_special_tokens=False)["input_ids"]
    reply = ok(post(server, "/completions", prompt=ids, max_tokens=1, temperature=0, logprobs=1, echo=True))
    logprobs = reply["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(ids) + 1  # the prompt, then the one generated token
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    got = torch.tensor(logprobs["token_logprobs"][1 : len(ids)])
    assert_equal_up_to_rounding(got, forward_logprobs(tiny_backend.model, ids), terms=LOGPROB_TERMS,
                                what="prompt log-probs")
    assert logprobs["token_logprobs"][-1] == max(logprobs["top_logprobs"][-1].values())  # greedy: the top token
    # each top dict holds the most likely token and the one that is there
    for token, value, top in zip(logprobs["tokens"][1:], logprobs["token_logprobs"][1:], logprobs["top_logprobs"][1:]):
        assert top[token] == value and max(top.values()) >= value and len(top) <= 2
    offsets = logprobs["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets)
    assert reply["choices"][0]["text"].startswith(tiny_backend.tokenizer.decode(ids))


def test_a_log_prob_request_the_backend_cannot_answer_is_refused():
    class TextOnly:
        name, exposes_tokens = "text-only", False

        def generate(self, prompts, params):
            return [Generation(text="fine") for _ in prompts]

    with ServerThread(create_app(TextOnly(), "text")) as srv:
        body = {"model": "text", "messages": QUESTION, "logprobs": True}
        error = httpx.post(srv.url + "/chat/completions", json=body).json()["error"]
        assert error["param"] == "logprobs" and "returns no token log-probs" in error["message"]
        error = httpx.post(srv.url + "/completions", json={"model": "text", "prompt": "x"}).json()["error"]
        assert error["param"] == "prompt" and "chat prompts only" in error["message"]
        # ... and the plain request still works
        reply = httpx.post(srv.url + "/chat/completions", json={"model": "text", "messages": QUESTION}).json()
        assert reply["choices"][0]["message"]["content"] == "fine"


def test_echo_the_backend_cannot_score_is_refused_streaming_or_not(tiny_backend):
    """A backend that gives sampled log-probs but no prompt log-probs: echo with logprobs is a 400
    naming echo (streaming or not), never a reply without them; echo alone, streamed, still works."""

    class NoPromptScores(HFBackend):
        features = ServingFeatures(token_prompts=True, logprobs=True, top_logprobs=5, prompt_logprobs=False)

    backend = NoPromptScores(tiny_backend.model, tiny_backend.tokenizer)
    with ServerThread(create_app(backend, NAME)) as srv:
        for stream in (True, False):
            response = post(srv, "/completions", prompt="alpha beta", max_tokens=2, echo=True, logprobs=1,
                            stream=stream)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["param"] == "echo" and "no prompt log-probs" in error["message"]
        with httpx.stream("POST", srv.url + "/completions", json={"model": NAME, "prompt": "alpha beta", "echo": True,
                          "max_tokens": 2, "temperature": 0, "stream": True}, timeout=120) as response:
            assert response.status_code == 200
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert "".join(c["text"] for e in events[:-1] for c in json.loads(e)["choices"]).startswith("alpha beta")
        # sampled tokens' log-probs, which it has, are still answered
        reply = ok(post(srv, "/completions", prompt="alpha beta", max_tokens=2, logprobs=1))
        assert len(reply["choices"][0]["logprobs"]["token_logprobs"]) == reply["usage"]["completion_tokens"] >= 1


# --------------------------------------------------------------------------- /v1/completions


def test_completions_of_a_prompt_list_with_n(tiny_backend, server):
    prompts = ["The key is", "Once upon a time"]
    reply = ok(post(server, "/completions", prompt=prompts, n=2, max_tokens=6, temperature=0.9, seed=11))
    assert reply["object"] == "text_completion"
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2, 3]
    ids = [tiny_backend.tokenizer(p)["input_ids"] for p in prompts]
    local = tiny_backend.generate([TokenPrompt(i) for i in ids for _ in range(2)],
                                  SamplingParams(max_new_tokens=6, temperature=0.9, seed=11))
    assert [c["text"] for c in reply["choices"]] == [g.text for g in local]
    assert reply["usage"]["prompt_tokens"] == sum(len(i) for i in ids)
    again = ok(post(server, "/completions", prompt=prompts, n=2, max_tokens=6, temperature=0.9, seed=11))
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in reply["choices"]]  # seeded


def test_completions_stop_strings_and_finish_reasons(tiny_backend, server):
    free = ok(post(server, "/completions", prompt=[5, 6, 7, 8], max_tokens=12, temperature=0))["choices"][0]
    stop = free["text"][3:6]
    assert stop.strip()
    cut = ok(post(server, "/completions", prompt=[5, 6, 7, 8], max_tokens=12, temperature=0, stop=[stop]))["choices"][0]
    assert free["text"].startswith(cut["text"]) and stop not in cut["text"]
    assert cut["finish_reason"] == "stop" and cut["stop_reason"] == stop
    kept = ok(post(server, "/completions", prompt=[5, 6, 7, 8], max_tokens=12, temperature=0, stop=[stop],
                   include_stop_str_in_output=True))["choices"][0]
    assert kept["text"] == cut["text"] + stop
    assert ok(post(server, "/completions", prompt=[5, 6], max_tokens=2, temperature=0))["choices"][0]["finish_reason"] == "length"


def test_completions_stream_the_same_text(server):
    body = {"prompt": ["alpha beta", "gamma"], "max_tokens": 10, "temperature": 0, "n": 2,
            "stream": True, "stream_options": {"include_usage": True}}
    whole = ok(post(server, "/completions", **{**body, "stream": False}))
    with httpx.stream("POST", server.url + "/completions", json={"model": NAME, **body}, timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in chunks[:-1]:
        [choice] = chunk["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"]:
            finish[choice["index"]] = choice["finish_reason"]
    assert texts == {c["index"]: c["text"] for c in whole["choices"]}
    assert finish == {c["index"]: c["finish_reason"] for c in whole["choices"]}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_echo_streams_the_prompt_first(server):
    body = {"prompt": "alpha beta", "max_tokens": 3, "temperature": 0, "echo": True, "logprobs": 0, "stream": True}
    with httpx.stream("POST", server.url + "/completions", json={"model": NAME, **body}, timeout=120) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    first = events[0]["choices"][0]
    assert first["text"].startswith("alpha beta") and first["logprobs"]["token_logprobs"][0] is None


def test_completions_fit_the_context(server):
    error = post(server, "/completions", prompt=[5] * 250, max_tokens=10).json()["error"]
    assert error["param"] == "max_tokens" and "256" in error["message"]
    error = post(server, "/completions", prompt=[5] * 300).json()["error"]
    assert error["param"] == "prompt" and "300 tokens" in error["message"]
    reply = ok(post(server, "/completions", prompt=[5] * 250, max_tokens=None, temperature=0))
    assert reply["usage"]["completion_tokens"] <= 6  # without max_tokens: what the context leaves


@pytest.mark.parametrize(
    ("path", "change", "param", "fragment"),
    [
        ("/completions", {"prompt": []}, "prompt", "an empty list"),
        ("/completions", {"prompt": ["a", 5]}, "prompt", "mixing strings and token ids"),
        ("/completions", {"prompt": [[5, 6], ["a"]]}, "prompt", "mixing"),
        ("/completions", {"prompt": [5, 2000]}, "prompt", "token id 2000 is outside the vocabulary (0 to 1999)"),
        ("/completions", {"prompt": [[5], [-1]]}, "prompt", "prompt[1]: token id -1"),
        ("/completions", {"prompt": [[5], []]}, "prompt", "prompt[1]: empty"),
        ("/completions", {"prompt": ""}, "prompt", "empty"),
        ("/completions", {"prompt": {"text": "x"}}, "prompt", "not dict"),
        ("/completions", {"prompt": "x", "logprobs": 6}, "logprobs", "--max-logprobs"),
        ("/completions", {"prompt": "x", "suffix": "y"}, "suffix", "not supported"),
        ("/completions", {"prompt": "x", "best_of": 3}, "best_of", "best_of = n"),
        ("/completions", {"prompt": ["x"] * 40, "n": 8}, "prompt", "at most 256"),
        ("/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ("/chat/completions", {"messages": QUESTION, "top_logprobs": 2}, "top_logprobs", "needs logprobs: true"),
        ("/chat/completions", {"messages": QUESTION, "logprobs": True, "top_logprobs": 6}, "top_logprobs",
         "at most 5 alternatives"),
        ("/chat/completions", {"messages": QUESTION, "logprobs": True, "top_logprobs": -1}, "top_logprobs",
         "greater than or equal to 0"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(server, path, change, param, fragment):
    response = post(server, path, max_tokens=2, **change) if "max_tokens" not in change else post(server, path, **change)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"], error
    assert error["type"] == "invalid_request_error" and error["code"] == 400
    # the server keeps answering
    assert ok(post(server, "/completions", prompt="still", max_tokens=1, temperature=0))["choices"][0]["text"] is not None


def test_health_names_the_new_limits(server):
    limits = httpx.get(f"http://{server.host}:{server.port}/health", timeout=10).json()["limits"]
    assert limits["max_n"] == 8 and limits["max_logprobs"] == 5
