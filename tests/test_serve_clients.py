"""`memfactory serve` checked by clients no one here wrote (issue 28 item 4): the official ``openai``
package (chat, streaming, n, log-probs, completions, errors) and lm-evaluation-harness (a generation
task over /v1/chat/completions and a log-likelihood task over /v1/completions with echo), both
against the real tiny model behind uvicorn on 127.0.0.1, offline: the harness's tasks are built
here from local files. Each client's answers are checked against the same model in-process."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import pytest
import torch

from memfactory.backends.sources import resolve_model_path
from memfactory.serve.app import create_app
from memfactory.serve.protocol import apply_stop
from memfactory.serve.server import ServerThread
from memfactory.types import ChatPrompt, SamplingParams
from tests.numerics import assert_equal_up_to_rounding

NAME = "tiny-clients"
KEY = "sk-clients-test"
LOGPROB_TERMS = 2000  # a log-prob's longest reduction: the log-softmax over the tiny model's vocabulary
QUESTIONS = [f"Document {i}: the key is {i * 7}. What is the key?" for i in range(5)]


@pytest.fixture(scope="module")
def server(tiny_backend):
    app = create_app(tiny_backend, NAME, api_key=KEY, batch_window_ms=10, max_n=8, max_logprobs=5)
    with ServerThread(app) as running:
        yield running


# --------------------------------------------------------------------------- the openai package


@pytest.fixture(scope="module")
def client(request):
    openai = pytest.importorskip("openai", reason="the openai package is not installed (pip install -e '.[dev]')")
    server = request.getfixturevalue("server")  # started only where the client can run
    with openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120) as client:
        yield client


def greedy(tiny_backend, question: str, tokens: int, stop: list[str] | None = None):
    [gen] = tiny_backend.generate([ChatPrompt([{"role": "user", "content": question}])],
                                  SamplingParams(max_new_tokens=tokens, temperature=0.0, stop=stop or []))
    return gen


def test_openai_chat_and_stream(tiny_backend, client):
    local = greedy(tiny_backend, QUESTIONS[0], 10)
    reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": QUESTIONS[0]}],
                                           max_tokens=10, temperature=0)
    assert reply.choices[0].message.content == local.text
    assert reply.usage.completion_tokens == len(local.response_ids)
    stream = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": QUESTIONS[0]}],
                                            max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == local.text
    assert chunks[-1].usage.total_tokens == reply.usage.total_tokens


def test_openai_n_and_logprobs(tiny_backend, client):
    reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": QUESTIONS[1]}],
                                           n=4, max_tokens=6, temperature=1.0, seed=9, logprobs=True, top_logprobs=2)
    local = tiny_backend.generate([ChatPrompt([{"role": "user", "content": QUESTIONS[1]}])] * 4,
                                  SamplingParams(max_new_tokens=6, temperature=1.0, seed=9))
    assert [c.message.content for c in reply.choices] == [g.text for g in local]
    for choice, gen in zip(reply.choices, local):
        got = torch.tensor([t.logprob for t in choice.logprobs.content])
        assert_equal_up_to_rounding(got, torch.tensor(gen.logprobs), terms=LOGPROB_TERMS, what="chat log-probs")
        assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    stream = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": QUESTIONS[1]}],
                                            n=2, max_tokens=6, temperature=0, stream=True)
    texts: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert texts == {0: greedy(tiny_backend, QUESTIONS[1], 6).text, 1: greedy(tiny_backend, QUESTIONS[1], 6).text}


def test_openai_completions(tiny_backend, client):
    ids = tiny_backend.tokenizer("the key is", add_special_tokens=False)["input_ids"]
    reply = client.completions.create(model=NAME, prompt=[ids, ids[:2]], max_tokens=4, temperature=0, logprobs=1,
                                      echo=True)
    assert [c.index for c in reply.choices] == [0, 1]
    first = reply.choices[0]
    assert first.logprobs.token_logprobs[0] is None and len(first.logprobs.tokens) == len(ids) + 4
    assert first.text.startswith(tiny_backend.tokenizer.decode(ids))
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=NAME, prompt="the key is", max_tokens=5, temperature=0, stream=True) if c.choices)
    whole = client.completions.create(model=NAME, prompt="the key is", max_tokens=5, temperature=0)
    assert streamed == whole.choices[0].text and whole.usage.completion_tokens == 5


def test_openai_errors(client, request):
    openai = pytest.importorskip("openai")
    server = request.getfixturevalue("server")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "x"}], n=9)
    assert "--max-n" in caught.value.message and caught.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=NAME, prompt=[], max_tokens=1)
    assert caught.value.body["param"] == "prompt"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    with openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0) as stranger, \
            pytest.raises(openai.AuthenticationError):
        stranger.completions.create(model=NAME, prompt="x", max_tokens=1)
    assert [m.id for m in client.models.list()] == [NAME]


# --------------------------------------------------------------------------- lm-evaluation-harness


def _task_yaml(name: str, data: Path, cache: Path, body: str) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"  cache_dir: {cache}\ntest_split: test\n{body}metadata:\n  version: 1.0\n")


@pytest.fixture
def lm_eval(monkeypatch):
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[dev]')")
    pytest.importorskip("tenacity", reason="lm-eval's API models need lm-eval[api] (pip install -e '.[dev]')")
    import datasets

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # what lm-eval's local models send as the bearer key
    return lm_eval


def simple_evaluate(lm_eval, **kwargs):
    """``lm_eval.simple_evaluate`` in a thread of its own, as a user's script runs it: its concurrent API
    model calls ``asyncio.run``, which refuses a thread whose event loop runs already (the test worker's
    main thread after the browser tests' Playwright session, under ``make test``'s xdist)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lm_eval.simple_evaluate, **kwargs).result()


def test_lm_eval_log_likelihood_task_over_completions(tiny_backend, lm_eval, tmp_path, request):
    """A multiple-choice task: lm-eval scores each choice from /v1/completions' echoed prompt
    log-probs. The gold label is the model's own best choice (computed here with a forward pass), so
    the harness must read every log-prob right to score 1.0."""
    from lm_eval.tasks import TaskManager

    server = request.getfixturevalue("server")
    tokenizer = tiny_backend.tokenizer
    rows, expected = [], {}
    for i, question in enumerate(QUESTIONS):
        choices = [f"{i * 7}", f"{i * 7 + 1}", "seven", "the key"]
        scores = []
        for choice in choices:
            context = tokenizer.encode(question)
            whole = tokenizer.encode(f"{question} {choice}")  # the harness puts a space between them
            with torch.no_grad():
                logits = tiny_backend.model(input_ids=torch.tensor([whole])).logits[0, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(whole[1:])[:, None]).squeeze(1)
            scores.append(float(logp[len(context) - 1 :].sum()))
        expected[question] = scores
        rows.append({"question": question, "choices": choices, "label": max(range(4), key=scores.__getitem__)})
    data = tmp_path / "choices.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    body = ('output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
            'doc_to_target: "{{label}}"\nmetric_list:\n  - metric: acc\n    aggregation: mean\n'
            '    higher_is_better: true\n')
    (tmp_path / "choices.yaml").write_text(_task_yaml("memfactory_choices", data, tmp_path / "cache", body))
    results = simple_evaluate(
        lm_eval, model="local-completions",
        model_args={"base_url": server.url + "/completions", "model": NAME, "tokenizer_backend": "huggingface",
                    "tokenizer": resolve_model_path("tiny://qwen3-mini"), "max_retries": 1, "num_concurrent": 2},
        tasks=["memfactory_choices"], task_manager=TaskManager(include_path=str(tmp_path)), log_samples=True)
    assert results["results"]["memfactory_choices"]["acc,none"] == 1.0
    for sample in results["samples"]["memfactory_choices"]:
        got = torch.tensor([resp[0][0] for resp in sample["resps"]])
        want = torch.tensor(expected[sample["doc"]["question"]])
        assert_equal_up_to_rounding(got, want, terms=LOGPROB_TERMS * 8, what="a choice's log-likelihood")


def test_lm_eval_generation_task_over_chat(tiny_backend, lm_eval, tmp_path, request):
    """A generate-until task through /v1/chat/completions: the gold answer is the model's own greedy
    answer (in-process), so the harness scores 1.0 only if every request came back as it should."""
    from lm_eval.tasks import TaskManager

    server = request.getfixturevalue("server")
    rows = []
    for question in QUESTIONS:
        gen = greedy(tiny_backend, question, 8, stop=["\n"])
        rows.append({"question": question, "answer": apply_stop(gen.text, ["\n"], keep=False)[0]})
    data = tmp_path / "answers.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    body = ('output_type: generate_until\ndoc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
            'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n  temperature: 0\n'
            'metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n')
    (tmp_path / "answers.yaml").write_text(_task_yaml("memfactory_answers", data, tmp_path / "cache", body))
    results = simple_evaluate(
        lm_eval, model="local-chat-completions",
        model_args={"base_url": server.url + "/chat/completions", "model": NAME, "max_retries": 1,
                    "eos_string": "<|im_end|>"},
        tasks=["memfactory_answers"], task_manager=TaskManager(include_path=str(tmp_path)),
        apply_chat_template=True, log_samples=True)
    samples = results["samples"]["memfactory_answers"]
    assert [s["resps"][0][0] for s in samples] == [r["answer"] for r in rows]
    assert results["results"]["memfactory_answers"]["exact_match,none"] == 1.0
