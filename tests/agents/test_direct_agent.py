"""DirectAgent: window truncation, one-shot prompt, answer prefix, stop strings, training records."""

import pytest

from memfactory.agents.build import build_agent
from memfactory.agents.direct import DirectAgent, DirectConfig, OneShot
from memfactory.backends.hf import HFBackend
from memfactory.text import TokenizerCodec
from memfactory.types import Sample, SamplingParams


class CountingBackend(HFBackend):
    def __init__(self, inner: HFBackend):
        super().__init__(inner.model, inner.tokenizer, enable_thinking=inner.enable_thinking)
        self.log = []

    def generate(self, prompts, params):
        generations = super().generate(prompts, params)
        self.log.append((prompts, params, generations))
        return generations


@pytest.fixture
def backend(tiny_backend):
    return CountingBackend(tiny_backend)


def doc(n: int) -> str:
    return "\n".join(f"Document {i}: The capital of Karo{i} is Velmar{i}." for i in range(n))


def test_over_long_context_is_cut_in_the_middle(backend):
    context = doc(30)
    total = len(TokenizerCodec(backend.tokenizer).encode(context))
    agent = DirectAgent({}, DirectConfig(max_context_tokens=40))
    (trajectory,) = agent.run([Sample("s", "Where?", ["x"], context)], backend, params=SamplingParams(max_new_tokens=4))
    assert trajectory.counters["context_tokens_dropped"] == total - 40
    prompt = backend.tokenizer.decode(trajectory.calls[0].prompt_ids)
    assert "Document 0: The capital" in prompt and "Karo29 is Velmar29." in prompt
    assert "Document 15:" not in prompt
    assert "Question: Where?" in prompt


def test_short_context_is_untouched(backend):
    agent = DirectAgent({}, DirectConfig(max_context_tokens=4096))
    (trajectory,) = agent.run([Sample("s", "Where?", ["x"], doc(3))], backend, params=SamplingParams(max_new_tokens=4))
    assert "context_tokens_dropped" not in trajectory.counters
    assert doc(3) in backend.tokenizer.decode(trajectory.calls[0].prompt_ids)


def test_one_shot_prefix_and_stop_strings(backend):
    options = DirectConfig(
        answer_prefix="\\boxed{",
        system_prompt="Answer briefly.",
        one_shot=OneShot(
            context="Document 1: The capital of Dorma is Lin.", question="Capital of Dorma?", answer="\\boxed{Lin}"
        ),
    )
    agent = DirectAgent({}, options)
    prompt = agent.prompt("Document 1: text", "Q?")
    assert [m["role"] for m in prompt.messages] == ["system", "user", "assistant", "user"]
    assert "Capital of Dorma?" in prompt.messages[1]["content"] and prompt.messages[2]["content"] == "\\boxed{Lin}"
    assert prompt.assistant_prefix == "\\boxed{"
    params = SamplingParams(max_new_tokens=12, stop=["}"], seed=0)
    trajectories = agent.run(
        [Sample("s", "Q?", ["x"], "Document 1: text")], backend, params=params, group_size=3, train=True
    )
    ((prompts, passed, _),) = backend.log
    assert passed.stop == ["}"] and len(prompts) == 3
    for trajectory in trajectories:
        assert trajectory.answer.startswith("\\boxed{")
        text = trajectory.calls[0].text
        assert "}" not in text[:-1]  # generation ended at the first stop string, if any


def test_train_mode_records_exact_ids_per_group_member(backend):
    samples = [
        Sample("a", "Capital of Karo1?", ["Velmar1"], doc(3)),
        Sample("b", "Capital of Karo2?", ["Velmar2"], doc(5)),
    ]
    trajectories = DirectAgent({}, DirectConfig()).run(
        samples, backend, params=SamplingParams(max_new_tokens=6), group_size=4, train=True
    )
    ((prompts, _, generations),) = backend.log
    assert len(prompts) == 8 and [t.group for t in trajectories] == [0] * 4 + [1] * 4
    for trajectory, generation in zip(trajectories, generations):
        (call,) = trajectory.calls
        assert call.trainable and call.module == "direct.answer"
        assert (call.prompt_ids, call.response_ids, call.logprobs) == (
            generation.prompt_ids,
            generation.response_ids,
            generation.logprobs,
        )
        assert trajectory.answer == generation.text


def test_bad_template_is_rejected():
    with pytest.raises(ValueError, match="unknown placeholder"):
        DirectConfig(prompt_template="{context} {question} {answer}")


def test_build_direct_agent_from_preset():
    from memfactory.config import parse_preset

    data = {
        "name": "demo",
        "agent": "direct",
        "agent_options": {"max_context_tokens": 256, "answer_prefix": "\\boxed{"},
        "model": {"backend": "hf", "path": "tiny://qwen3-mini"},
        "env": {"type": "long_context", "data": "synthetic://docqa?n=8"},
        "rewards": {"sub_em": 1.0},
    }
    agent = build_agent(parse_preset(data))
    assert isinstance(agent, DirectAgent) and agent.options.max_context_tokens == 256 and agent.modules == {}


def test_non_text_context_is_a_named_data_error(backend):
    from memfactory.errors import DataError

    sample = Sample("rec7", "Q?", ["x"], ["doc-1", "doc-2"])  # unresolved document ids
    with pytest.raises(DataError, match="rec7.context"):
        DirectAgent({}, DirectConfig()).run([sample], backend, params=SamplingParams(max_new_tokens=2))
