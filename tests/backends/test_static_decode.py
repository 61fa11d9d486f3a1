"""Compiled static-cache decoding (model.options.decode: compiled) on the tiny model, on CPU.

The decode step is compiled with the ``aot_eager`` backend: the same dynamo graph and AOTAutograd
functionalisation of the in-place cache writes as inductor, without generating C++ (seconds, not
a minute per compile). The inductor path itself is measured, and its greedy tokens compared, by
``bench/decode_speed.py`` (bench/RESULTS.md). Tolerances: float32 on both paths; the static cache
attends over a longer, masked key range, so log-probs agree to float32 rounding over a 2-layer
model (observed 1e-5), checked at 1e-4 as the backend's other log-prob tests.
"""

from __future__ import annotations

import pytest
import torch

from memfactory.backends import static_decode
from memfactory.backends.hf import HFBackend, HFOptions
from memfactory.backends.model_api import base_model
from memfactory.backends.sources import load_model_and_tokenizer
from memfactory.config import ModelConfig, load_preset
from memfactory.errors import ConfigError, MemFactoryError
from memfactory.paths import presets_dir
from memfactory.types import SamplingParams
from tests.backends.test_hf_backend import PROMPTS, _forward_logprobs, _group_prompts
from tests.conftest import TINY

GREEDY = SamplingParams(max_new_tokens=16, temperature=0.0)
SAMPLED = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    """One private tiny model for the module, so the decode step compiles once (plus once dynamic)."""
    return load_model_and_tokenizer(TINY)


def backends(model_and_tokenizer) -> tuple[HFBackend, HFBackend]:
    model, tokenizer = model_and_tokenizer
    eager = HFBackend(model, tokenizer, decode="eager")
    compiled = HFBackend(model, tokenizer, decode="compiled", compile_backend="aot_eager")
    return eager, compiled


def assert_same(a, b) -> None:
    assert [g.response_ids for g in a] == [g.response_ids for g in b]
    assert [(g.text, g.finish_reason) for g in a] == [(g.text, g.finish_reason) for g in b]
    for x, y in zip(a, b):
        assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4)


@pytest.mark.timeout(300)
def test_compiled_decoding_gives_the_eager_greedy_tokens_and_logprobs(model_and_tokenizer):
    eager, compiled = backends(model_and_tokenizer)
    assert not eager.compiled and compiled.compiled
    lengths = {len(eager.render_prompt(p)) for p in PROMPTS}
    assert len(lengths) == len(PROMPTS)  # left padding exercised; one prompt has an assistant_prefix
    expected = eager.generate(PROMPTS, GREEDY)
    got = compiled.generate(PROMPTS, GREEDY)
    assert_same(expected, got)
    assert hasattr(base_model(compiled.model), "_compiled_call")  # generate compiled the decode step
    # the log-probs are those of the sampled tokens under the model
    for gen in got:
        reference = _forward_logprobs(compiled.model, gen.prompt_ids, gen.response_ids, 1.0)
        assert torch.allclose(torch.tensor(gen.logprobs), reference, atol=1e-4)
    # stop strings cut the same rows at the same token
    stop = SamplingParams(max_new_tokens=16, temperature=0.0, stop=[expected[1].text[3:5]])
    cut = compiled.generate(PROMPTS, stop)
    assert_same(eager.generate(PROMPTS, stop), cut)
    assert cut[1].finish_reason == "stop"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_prefill_once_per_group_applies_to_compiled_decoding(model_and_tokenizer, params):
    """The distinct prompts are prefilled once and copied into the static cache row by row."""
    eager, compiled = backends(model_and_tokenizer)
    assert_same(eager.generate(_group_prompts(), params), compiled.generate(_group_prompts(), params))
    assert compiled.prefill_stats == eager.prefill_stats == {"rows": 16, "prefilled": 4}


def test_static_cache_holds_each_rows_shared_prefix(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    backend = HFBackend(model, tokenizer, decode="eager")
    ids = torch.tensor([[0, 5, 6, 7], [9, 8, 7, 6], [0, 5, 6, 7]])
    mask = (ids != 0).long()
    with torch.no_grad():
        prefix, owner, _ = backend._shared_prefix_cache(ids, mask)
    assert owner.tolist() == [0, 1, 0] and prefix.get_seq_length() == 3
    length = static_decode.cache_length(4, 5)
    assert length == static_decode.CACHE_BUCKET
    cache = static_decode.static_cache(static_decode.new_static_cache(model.config, length), 3, prefix, owner)
    assert int(cache.get_seq_length()) == 3
    for layer, source in zip(cache.layers, prefix.layers):
        assert layer.keys.shape[:3] == (3, source.keys.shape[1], length)
        assert torch.equal(layer.keys[:, :, :3], source.keys[owner]) and not layer.keys[:, :, 3:].any()
        assert torch.equal(layer.values[:, :, :3], source.values[owner])
    assert static_decode.cache_length(static_decode.CACHE_BUCKET - 2, 7) == 2 * static_decode.CACHE_BUCKET


def test_auto_compiles_on_cuda_only_and_options_are_validated():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [static_decode.compiled_on(d, cpu) for d in ("auto", "eager", "compiled")] == [False, False, True]
    assert [static_decode.compiled_on(d, cuda) for d in ("auto", "eager", "compiled")] == [True, False, True]
    assert static_decode.compile_config(cuda).mode == "reduce-overhead"
    on_cpu = static_decode.compile_config(cpu)
    assert on_cpu.mode == "default" and on_cpu._compile_all_devices
    assert HFOptions.of(ModelConfig(options={"decode": "compiled"})).decode == "compiled"
    assert HFOptions.of(ModelConfig(backend="openai", options={"timeout": 5})).decode == "auto"
    with pytest.raises(ConfigError, match=r"model\.options\.decode"):
        load_preset(presets_dir() / "tiny_test.yaml", ["model.options={decode: fast}"])
    backend = HFBackend.from_config(TINY.model_copy(update={"options": {"decode": "compiled"}}), device="cpu")
    assert backend.decode == "compiled" and backend.compile_backend == "inductor"
    assert HFBackend.from_config(TINY, device="cpu", decode="eager").decode == "eager"


def _failing_backend(graph, example_inputs):
    raise RuntimeError("this compiler cannot compile anything")


def test_a_failing_compile_is_a_clear_error_or_falls_back_to_eager(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    torch._dynamo.reset()  # forget the module's compiled graphs: the broken backend must really run
    broken = static_decode.compile_config(torch.device("cpu"), "inductor")
    broken.backend, broken.mode = _failing_backend, None
    monkeypatch.setattr(static_decode, "compile_config", lambda device, backend: broken)
    explicit = HFBackend(model, tokenizer, decode="compiled")
    with pytest.raises(MemFactoryError, match=r"model\.options\.decode 'compiled'.*set model\.options\.decode to eager"):
        explicit.generate(PROMPTS[:1], GREEDY)
    # auto (as on CUDA): warn once, decode eagerly from then on, with the eager path's results
    monkeypatch.setattr(static_decode, "compiled_on", lambda decode, device: decode != "eager")
    auto = HFBackend(model, tokenizer)
    assert auto.compiled
    got = auto.generate(_group_prompts(2), GREEDY)
    assert auto.decode == "eager" and auto.prefill_stats == {"rows": 8, "prefilled": 4}
    assert_same(HFBackend(model, tokenizer, decode="eager").generate(_group_prompts(2), GREEDY), got)
    torch._dynamo.reset()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.timeout(600)
def test_auto_decoding_on_cuda_is_compiled_and_matches_eager():
    """On CUDA the default (auto) compiles with inductor and CUDA graphs (reduce-overhead)."""
    model, tokenizer = load_model_and_tokenizer(TINY)
    model.to("cuda")
    eager, auto = HFBackend(model, tokenizer, decode="eager"), HFBackend(model, tokenizer)
    assert auto.compiled and auto.device.type == "cuda"
    assert_same(eager.generate(PROMPTS, GREEDY), auto.generate(PROMPTS, GREEDY))
    assert_same(eager.generate(_group_prompts(), SAMPLED), auto.generate(_group_prompts(), SAMPLED))
    assert auto.prefill_stats == eager.prefill_stats
