"""RecurrentMemoryModule: chunking, truncation, memory overwrite, unterminated thinking."""

import math

import pytest
from pydantic import ValidationError

from memfactory.modules.recurrent import NO_MEMORY, MemoryState, RecurrentConfig, RecurrentMemoryModule
from memfactory.text import CharCodec, TokenizerCodec, strip_thinking, truncate_sequence, truncate_text
from memfactory.types import Generation, Sample, SamplingParams, Trajectory

NUMBERS = "".join(f"{i:03d}," for i in range(50))  # 50 "tokens" of 4 characters under CharCodec


@pytest.fixture
def backend(tiny_backend):
    return tiny_backend


def doc(n: int) -> str:
    return " ".join(f"Document {i}: The capital of Karo{i} is Velmar{i}." for i in range(n))


# --------------------------------------------------------------------------- text helpers


def test_strip_thinking_cases():
    assert strip_thinking("<think>a</think>\n\nmemory") == ("memory", True)
    assert strip_thinking("<think>a</think>b</think> last") == ("last", True)
    assert strip_thinking("plain text ") == ("plain text", True)
    assert strip_thinking("reasoning</think>answer") == ("answer", True)  # template opened the block
    assert strip_thinking("<think>never closed") == ("", False)


def test_truncate_sequence_modes():
    items = list(range(10))
    assert truncate_sequence(items, 4, "tail") == [0, 1, 2, 3]
    assert truncate_sequence(items, 4, "head") == [6, 7, 8, 9]
    assert truncate_sequence(items, 5, "middle") == [0, 1, 2, 8, 9]
    assert truncate_sequence(items, 20, "middle") == items
    assert truncate_sequence(items, 0, "middle") == []


def test_truncate_text_keeps_fitting_text_unchanged():
    assert truncate_text("abcdefgh", 2, CharCodec()) == ("abcdefgh", 0)
    assert truncate_text("abcdefghij", 2, CharCodec(), "tail") == ("abcdefgh", 1)


# --------------------------------------------------------------------------- chunking


def test_chunk_count_and_round_trip_with_backend_tokenizer(backend):
    module = RecurrentMemoryModule(RecurrentConfig(chunk_tokens=16))
    codec = TokenizerCodec(backend.tokenizer)
    context = doc(12)
    ids = codec.encode(context)
    chunks, total, dropped = module.split(context, codec)
    assert total == len(ids) and dropped == 0
    assert len(chunks) == math.ceil(len(ids) / 16) > 3
    assert "".join(chunks) == context  # consecutive token slices decode back to the whole text
    assert module.split("", codec) == ([], 0, 0)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("tail", "".join(f"{i:03d}," for i in range(10))),
        ("head", "".join(f"{i:03d}," for i in range(40, 50))),
        ("middle", "".join(f"{i:03d}," for i in [*range(5), *range(45, 50)])),
    ],
)
def test_over_long_context_is_truncated_not_asserted(mode, expected):
    module = RecurrentMemoryModule(RecurrentConfig(chunk_tokens=5, max_chunks=2, truncate=mode))
    chunks, total, dropped = module.split(NUMBERS, CharCodec())
    assert len(chunks) == 2 and all(len(c) == 20 for c in chunks)
    assert "".join(chunks) == expected
    assert (total, dropped) == (50, 40)


def test_group_members_share_chunks_and_count_dropped_tokens(backend):
    module = RecurrentMemoryModule(RecurrentConfig(chunk_tokens=8, max_chunks=2))
    samples = [Sample("a", "q?", ["x"], doc(6)), Sample("b", "q?", ["y"], "")]
    states = module.init_states(samples, backend, group_size=3)
    assert [s.trajectory.group for s in states] == [0, 0, 0, 1, 1, 1]
    assert states[0].chunks is states[2].chunks and len(states[0].chunks) == 2
    assert states[0].trajectory.counters["context_tokens_dropped"] == states[0].context_tokens - 16
    assert states[3].chunks == [] and states[3].done and "context_tokens_dropped" not in states[3].trajectory.counters
    assert all(s.memory == NO_MEMORY for s in states)


def test_templates_are_validated():
    with pytest.raises(ValidationError, match="chunk"):
        RecurrentConfig(update_template="{prompt} {memory}")
    with pytest.raises(ValidationError, match="unknown placeholder"):
        RecurrentConfig(answer_template="{prompt} {memory} {context}")
    with pytest.raises(ValidationError):
        RecurrentConfig(chunk_tokens=0)
    boxed = RecurrentConfig().final_template.format(prompt="Q", memory="M")
    assert (
        "\\boxed{}" in boxed and "Therefore, the answer is" in RecurrentConfig(answer_format="answer_is").final_template
    )


# --------------------------------------------------------------------------- memory updates


def test_memory_is_overwritten_by_each_update(backend):
    module = RecurrentMemoryModule(RecurrentConfig(chunk_tokens=24, memory_tokens=12, answer_tokens=6))
    sample = Sample("s", "What is the capital of Karo3?", ["Velmar3"], doc(8))
    states = module.inference(
        module.init_states([sample], backend), backend, SamplingParams(max_new_tokens=50, temperature=0)
    )
    state = states[0]
    trajectory = state.trajectory
    n = len(state.chunks)
    assert n >= 3 and state.done
    updates, final = trajectory.calls[:n], trajectory.calls[n]
    assert [c.module for c in trajectory.calls] == ["recurrent.update"] * n + ["recurrent.answer"]
    memory = NO_MEMORY
    for i, (call, entry) in enumerate(zip(updates, trajectory.trace)):
        prompt = backend.tokenizer.decode(call.prompt_ids)
        assert f"<memory>\n{memory}\n</memory>" in prompt  # the previous memory goes into this call
        assert state.chunks[i] in prompt
        assert len(call.response_ids) <= 12  # memory_tokens caps the update
        text, terminated = strip_thinking(call.text)
        memory = text if terminated else memory
        assert entry == {
            "step": i,
            "chunk": i,
            "memory": memory,
            "tokens": len(call.response_ids),
            "kept_previous": not terminated,
        }
    assert state.memory == memory
    assert f"<memory>\n{memory}\n</memory>" in backend.tokenizer.decode(final.prompt_ids)
    assert trajectory.answer == final.text and trajectory.trace[-1]["answer"] == final.text
    assert not any(c.trainable for c in trajectory.calls)  # inference records calls for display only


def test_unterminated_think_keeps_previous_memory_and_is_counted():
    module = RecurrentMemoryModule(RecurrentConfig())
    state = MemoryState(
        Sample("s", "q", ["a"]), ["chunk one", "chunk two"], Trajectory(Sample("s", "q", ["a"])), "old memory"
    )
    prompt = module.update_prompt(state)
    unterminated = Generation("<think>still reasoning about", [1, 2], [3, 4, 5], [-0.1, -0.2, -0.3], "length")
    module.apply_update(state, prompt, unterminated, train=True)
    assert state.memory == "old memory" and state.step == 1
    assert state.trajectory.counters == {"unterminated_think": 1.0, "update_hit_token_cap": 1.0}
    assert state.trajectory.trace[-1]["kept_previous"] is True
    closed = Generation("<think>done</think>\n\nnew memory", [1], [6, 7], [-0.5, -0.5], "stop")
    module.apply_update(state, module.update_prompt(state), closed, train=True)
    assert state.memory == "new memory" and state.trajectory.counters["unterminated_think"] == 1.0
    assert [c.response_ids for c in state.trajectory.calls] == [[3, 4, 5], [6, 7]]


def test_real_model_stuck_in_thinking_keeps_memory(fresh_tiny_backend):
    """A real model biased to emit only <think> never closes it: every update keeps the memory."""
    backend = fresh_tiny_backend
    think_id = backend.tokenizer.convert_tokens_to_ids("<think>")
    head = backend.model.get_output_embeddings()

    def bias(_module, _inputs, logits):
        logits[..., think_id] += 1e4
        return logits

    handle = head.register_forward_hook(bias)
    try:
        module = RecurrentMemoryModule(
            RecurrentConfig(chunk_tokens=32, memory_tokens=4, answer_tokens=4, memory_init="start")
        )
        state = module.inference(
            module.init_states([Sample("s", "q?", ["a"], doc(4))], backend), backend, SamplingParams(temperature=0)
        )[0]
    finally:
        handle.remove()
    n = len(state.chunks)
    assert n >= 2 and state.memory == "start"
    assert all(call.text.startswith("<think>") for call in state.trajectory.calls)
    assert state.trajectory.counters["unterminated_think"] == n + 1  # every update and the answer
    assert [entry["memory"] for entry in state.trajectory.trace[:n]] == ["start"] * n
