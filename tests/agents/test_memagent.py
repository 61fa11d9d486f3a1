"""MemoryAgent: batching across samples and group members, exact token records, credit, build."""

import pytest
from fastapi import FastAPI, Request

from memfactory.agents.build import build_agent
from memfactory.agents.memagent import MemAgentConfig, MemoryAgent
from memfactory.backends.hf import HFBackend
from memfactory.backends.openai_api import OpenAIBackend
from memfactory.errors import ConfigError, MemFactoryError
from memfactory.modules.recurrent import RecurrentConfig, RecurrentMemoryModule
from memfactory.serve.server import ServerThread
from memfactory.text import TokenizerCodec
from memfactory.types import Sample, SamplingParams


class CountingBackend(HFBackend):
    """The real tiny backend, remembering each generate call's prompts, params and generations."""

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
    return " ".join(f"Document {i}: The capital of Karo{i} is Velmar{i}." for i in range(n))


SAMPLES = [
    Sample("short", "What is the capital of Karo1?", ["Velmar1"], doc(2)),
    Sample("long", "What is the capital of Karo5?", ["Velmar5"], doc(9)),
    Sample("mid", "What is the capital of Karo3?", ["Velmar3"], doc(5)),
]


def agent(credit="all_calls", **module_options) -> MemoryAgent:
    options = {"chunk_tokens": 24, "memory_tokens": 8, "answer_tokens": 6} | module_options
    return MemoryAgent({"memory": RecurrentMemoryModule(RecurrentConfig(**options))}, MemAgentConfig(credit=credit))


def test_one_backend_call_per_chunk_index_plus_answer(backend):
    codec = TokenizerCodec(backend.tokenizer)
    chunk_counts = [-(-len(codec.encode(s.context)) // 24) for s in SAMPLES]
    assert len(set(chunk_counts)) == 3  # three different lengths
    trajectories = agent().run(SAMPLES, backend, params=SamplingParams(max_new_tokens=32), group_size=2, train=True)
    assert len(backend.log) == max(chunk_counts) + 1
    # chunk i of every live trajectory is in call i; shorter ones drop out
    for i, (prompts, _, _) in enumerate(backend.log[:-1]):
        assert len(prompts) == 2 * sum(1 for n in chunk_counts if n > i)
    assert len(backend.log[-1][0]) == 6
    assert [t.sample.id for t in trajectories] == ["short", "short", "long", "long", "mid", "mid"]
    assert [t.group for t in trajectories] == [0, 0, 1, 1, 2, 2]
    for t, n in zip(trajectories, [c for c in chunk_counts for _ in range(2)]):
        assert len(t.calls) == n + 1 and len(t.trace) == n + 1


def test_train_calls_carry_the_exact_sampled_ids(backend):
    params = SamplingParams(max_new_tokens=32, temperature=1.0, seed=3)
    trajectories = agent(answer_prefix="\\boxed{").run(SAMPLES, backend, params=params, group_size=2, train=True)
    # Replay the backend's log: call k holds, in order, the trajectories still reading at step k.
    for k, (prompts, call_params, generations) in enumerate(backend.log):
        final = k == len(backend.log) - 1
        live = [t for t in trajectories if final or len(t.calls) - 1 > k]
        assert len(live) == len(generations)
        assert call_params.max_new_tokens == (6 if final else 8)
        for trajectory, generation in zip(live, generations):
            call = trajectory.calls[-1] if final else trajectory.calls[k]
            assert call.response_ids == generation.response_ids
            assert call.logprobs == generation.logprobs
            assert call.prompt_ids == generation.prompt_ids
            assert len(call.logprobs) == len(call.response_ids) > 0
            assert call.trainable
    for trajectory in trajectories:
        assert trajectory.answer == "\\boxed{" + trajectory.calls[-1].text
        assert backend.tokenizer.decode(trajectory.calls[-1].prompt_ids).endswith("\\boxed{")


def test_final_only_credit_marks_updates_untrainable(backend):
    trajectories = agent(credit="final_only").run(
        SAMPLES[:2], backend, params=SamplingParams(max_new_tokens=8), group_size=2, train=True
    )
    for trajectory in trajectories:
        assert [c.trainable for c in trajectory.calls] == [False] * (len(trajectory.calls) - 1) + [True]
        assert [c.module for c in trajectory.calls][-1] == "recurrent.answer"


def test_inference_mode_returns_memory_trace_and_nothing_trainable(backend):
    trajectories = agent().run(
        SAMPLES[:1], backend, params=SamplingParams(max_new_tokens=8, temperature=0), group_size=1
    )
    (trajectory,) = trajectories
    assert not any(c.trainable for c in trajectory.calls)
    chunks = [e for e in trajectory.trace if "chunk" in e]
    assert [e["chunk"] for e in chunks] == list(range(len(trajectory.calls) - 1))
    assert "answer" in trajectory.trace[-1]


def test_chunk_cap_truncates_long_contexts(backend):
    trajectories = agent(max_chunks=2).run(SAMPLES, backend, params=SamplingParams(max_new_tokens=8), group_size=1)
    assert len(backend.log) == 3
    assert trajectories[1].counters["context_tokens_dropped"] > 0
    assert all(len(t.calls) <= 3 for t in trajectories)


def section_echo_app() -> FastAPI:
    """A real OpenAI-compatible server: an update answers with its section, the answer with the memory."""
    app = FastAPI()
    app.state.sections = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        user = (await request.json())["messages"][-1]["content"]
        if "<section>" in user:
            section = user.split("<section>\n", 1)[1].split("\n</section>", 1)[0]
            app.state.sections.append(section)
            text = f"<think>reading</think>seen[{section}]"
        else:
            text = "boxed:" + user.split("<memory>\n", 1)[1].split("\n</memory>", 1)[0]
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    return app


def test_inference_on_a_backend_without_tokenizer_uses_chars_over_4():
    server = ServerThread(section_echo_app()).start()
    try:
        with OpenAIBackend(server.url, "m") as remote:
            sample = Sample("s", "q?", ["a"], "".join(f"{i:03d}," for i in range(12)))  # 48 characters
            (trajectory,) = agent(chunk_tokens=5).run([sample], remote, params=SamplingParams(max_new_tokens=8))
            with pytest.raises(MemFactoryError, match="does not expose token ids"):
                agent().run([sample], remote, params=SamplingParams(max_new_tokens=4), train=True)
    finally:
        server.stop()
    # 5 "tokens" x 4 characters per chunk: 20 + 20 + 8 characters
    assert server.app.state.sections == [sample.context[:20], sample.context[20:40], sample.context[40:]]
    memories = [e["memory"] for e in trajectory.trace[:-1]]
    assert memories == [f"seen[{s}]" for s in server.app.state.sections]  # thinking dropped, memory overwritten
    assert trajectory.answer == "boxed:" + memories[-1]
    assert all(c.response_ids == [] and not c.trainable for c in trajectory.calls)


# --------------------------------------------------------------------------- build_agent


def preset(**changes) -> dict:
    data = {
        "name": "t",
        "agent": "memagent",
        "modules": {
            "memory": {"type": "recurrent", "chunk_tokens": 64, "memory_tokens": 16, "answer_prefix": "\\boxed{"}
        },
        "agent_options": {"credit": "final_only"},
        "model": {"backend": "hf", "path": "tiny://qwen3-mini"},
        "env": {"type": "long_context", "data": "synthetic://docqa?n=8"},
        "rewards": {"sub_em": 1.0},
    }
    return data | changes


def test_build_agent_from_a_preset_dict():
    from memfactory.config import parse_preset

    built = build_agent(parse_preset(preset()))
    assert isinstance(built, MemoryAgent)
    assert built.options.credit == "final_only"
    memory = built.modules["memory"]
    assert isinstance(memory, RecurrentMemoryModule)
    assert (memory.options.chunk_tokens, memory.options.memory_tokens, memory.options.answer_prefix) == (
        64,
        16,
        "\\boxed{",
    )
    assert memory.options.answer_tokens == 1024  # defaults fill the rest


def test_build_agent_reports_bad_options_with_paths():
    from memfactory.config import Preset

    data = preset(modules={"memory": {"type": "recurrent", "chunk_tokens": -1}})
    with pytest.raises(ConfigError) as info:
        build_agent(Preset.model_validate(data))
    assert info.value.problems[0][0] == "modules.memory.chunk_tokens"
    with pytest.raises(ConfigError) as info:
        build_agent(Preset.model_validate(preset(modules={})))
    assert info.value.problems[0][0] == "modules.memory"


def test_credit_defaults_to_the_trainer_setting():
    from memfactory.config import parse_preset

    data = preset(trainer={"credit": "final_only"})
    del data["agent_options"]
    assert build_agent(parse_preset(data)).options.credit == "final_only"
    data["agent_options"] = {"credit": "all_calls"}
    assert build_agent(parse_preset(data)).options.credit == "all_calls"


def test_smollm2_cpu_preset_reads_its_chunks_and_answers_boxed(smollm2_backend):
    """The shipped CPU preset on the real model: 2-3 memory updates per sample, then a boxed answer."""
    from memfactory.config import load_preset
    from memfactory.envs.build import build_env
    from memfactory.paths import presets_dir

    preset = load_preset(presets_dir() / "memagent_smollm2_cpu.yaml")
    agent, env = build_agent(preset), build_env(preset)
    samples = env.samples("train")[:2]
    params = SamplingParams(max_new_tokens=preset.trainer.max_new_tokens, temperature=0.0, stop=list(preset.trainer.stop))
    trajectories = agent.run(samples, smollm2_backend, params=params, group_size=1, train=True)
    env.score(trajectories)
    for t in trajectories:
        updates = [c for c in t.calls if c.module.endswith(".update")]
        assert 2 <= len(updates) <= 3 and t.calls[-1].module.endswith(".answer")
        assert all(c.trainable for c in t.calls)  # credit: all_calls
        assert t.answer.startswith("\\boxed{") and 0.0 <= t.reward <= 1.0
        assert any(step["memory"] != "No previous memory" for step in t.trace if "memory" in step)


def test_first_chunk_is_prefilled_once_per_group(fresh_tiny_backend):
    """At chunk 0 every group member reads the same chunk with the same (initial) memory."""
    backend = HFBackend(fresh_tiny_backend.model, fresh_tiny_backend.tokenizer)
    counts = []
    original = backend._shared_prefix_cache

    def counting(input_ids, attention_mask, **kwargs):
        before = dict(backend.prefill_stats)
        cache = original(input_ids, attention_mask, **kwargs)
        counts.append((backend.prefill_stats["rows"] - before["rows"], backend.prefill_stats["prefilled"] - before["prefilled"]))
        return cache

    backend._shared_prefix_cache = counting
    agent().run(SAMPLES, backend, params=SamplingParams(max_new_tokens=8, temperature=1.0, seed=0), group_size=4, train=True)
    assert counts[0] == (12, 3)  # chunk 0: 3 questions x 4 members, 3 prefills
    assert all(prefilled <= rows for rows, prefilled in counts)
