"""The recurrent module's final answer opens with the sample's RULER answer_prefix only when opted in
(``sample_answer_prefix``; MemAgent's memory-agent eval never uses it); the option wins."""

from __future__ import annotations

from memfactory.data.sources import load_samples
from memfactory.data.synth import FWE_ANSWER_PREFIX, gen_fwe, write_json
from memfactory.modules.recurrent import RecurrentConfig, RecurrentMemoryModule
from memfactory.types import Sample, SamplingParams

PARAMS = SamplingParams(max_new_tokens=6, temperature=1.0)


def ruler_and_hotpot(tmp_path) -> list[Sample]:
    """A RULER fwe sample loaded from its published record shape, and a sample without a prefix."""
    path = write_json(gen_fwe(n=1, seed=0, length=96), tmp_path / "eval_fwe_96.json")
    (ruler,) = load_samples(path)
    assert ruler.meta["answer_prefix"] == FWE_ANSWER_PREFIX
    plain = Sample(id="h0", question="Where is Karo?", answers=["Velmar"], context="Karo is in Velmar. " * 8)
    return [ruler, plain]


def answer_calls(module: RecurrentMemoryModule, samples: list[Sample], backend) -> list:
    states = module.inference(module.init_states(samples, backend), backend, PARAMS)
    return [(s.trajectory, s.trajectory.calls[-1]) for s in states]


def test_ruler_prefix_is_not_used_by_default(tmp_path, tiny_backend):
    """MemAgent's memory-agent eval answers a RULER sample without its answer_prefix."""
    samples = ruler_and_hotpot(tmp_path)
    module = RecurrentMemoryModule(RecurrentConfig(chunk_tokens=64, memory_tokens=6, answer_tokens=6))
    assert module.options.sample_answer_prefix is False
    for trajectory, call in answer_calls(module, samples, tiny_backend):
        seen = tiny_backend.tokenizer.decode(call.prompt_ids)
        assert FWE_ANSWER_PREFIX not in seen
        assert trajectory.answer == call.text


def test_ruler_sample_answers_after_its_own_prefix_when_opted_in(tmp_path, tiny_backend):
    samples = ruler_and_hotpot(tmp_path)
    module = RecurrentMemoryModule(
        RecurrentConfig(chunk_tokens=64, memory_tokens=6, answer_tokens=6, sample_answer_prefix=True)
    )
    (ruler_traj, ruler_call), (plain_traj, plain_call) = answer_calls(module, samples, tiny_backend)

    # the prompt the model saw ends with the RULER prefix: it opens the assistant turn
    assert ruler_call.module == "recurrent.answer"
    seen = tiny_backend.tokenizer.decode(ruler_call.prompt_ids)
    assert seen.endswith(FWE_ANSWER_PREFIX)
    last_turn = seen[: -len(FWE_ANSWER_PREFIX)].rsplit("<|im_start|>", 1)[1]
    assert last_turn.startswith("assistant") and "<|im_end|>" not in last_turn  # inside the assistant turn
    assert ruler_traj.answer.startswith(FWE_ANSWER_PREFIX)
    assert ruler_traj.answer == FWE_ANSWER_PREFIX + ruler_call.text

    # the sample without one in the same batch gets no prefix
    assert not tiny_backend.tokenizer.decode(plain_call.prompt_ids).endswith(FWE_ANSWER_PREFIX)
    assert plain_traj.answer == plain_call.text


def test_configured_answer_prefix_wins_over_the_samples(tmp_path, tiny_backend):
    samples = ruler_and_hotpot(tmp_path)
    module = RecurrentMemoryModule(
        RecurrentConfig(
            chunk_tokens=64, memory_tokens=6, answer_tokens=6, answer_prefix="\\boxed{", sample_answer_prefix=True
        )
    )
    for trajectory, call in answer_calls(module, samples, tiny_backend):
        seen = tiny_backend.tokenizer.decode(call.prompt_ids)
        assert seen.endswith("\\boxed{") and FWE_ANSWER_PREFIX not in seen
        assert trajectory.answer.startswith("\\boxed{")
    assert "meta['answer_prefix']" in RecurrentConfig.model_fields["sample_answer_prefix"].description
