"""The tiny offline model: tokenizer, chat template, determinism and the on-disk cache."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from memfactory.backends import tiny
from memfactory.errors import MemFactoryError


@pytest.fixture(scope="module")
def tokenizer():
    return tiny.build_tokenizer(0)


def test_tokenizer_vocab_and_special_tokens(tokenizer):
    assert 1900 <= len(tokenizer) <= 2000
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    for special in ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"]:
        assert len(tokenizer(special, add_special_tokens=False)["input_ids"]) == 1, special
    # Qwen-style digit splitting: one token per digit
    assert len(tokenizer("2026", add_special_tokens=False)["input_ids"]) == 4


@pytest.mark.parametrize(
    "text",
    [
        "Document 3: The capital of Freedonia is Zorbia, founded in 1987.",
        "Question: What is 12 + 7? Answer: \\boxed{19} (yes!) — naïve café ✓",
        '<think>\nmemory: {"op": "ADD"}\n</think>\n\nDone.',
    ],
)
def test_tokenizer_round_trips_text(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8"))  # merges were learned, not just bytes


def test_chat_template_is_qwen_style(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    base = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    render = lambda **kw: tokenizer.apply_chat_template(messages, tokenize=False, **kw)
    assert render() == base
    assert render(add_generation_prompt=True) == base + "<|im_start|>assistant\n"
    assert render(add_generation_prompt=True, enable_thinking=True) == base + "<|im_start|>assistant\n"
    assert render(add_generation_prompt=True, enable_thinking=False) == (
        base + "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_build_is_deterministic_for_a_seed(tokenizer):
    again = tiny.build_tokenizer(0)
    assert again.get_vocab() == tokenizer.get_vocab()
    a = tiny.build_model("qwen3-mini", tokenizer, seed=0).state_dict()
    b = tiny.build_model("qwen3-mini", again, seed=0).state_dict()
    c = tiny.build_model("qwen3-mini", again, seed=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_architecture(tiny_backend):
    config = tiny_backend.model.config
    assert config.model_type == "qwen3"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (
        64,
        2,
        4,
        2,
    )
    assert config.vocab_size == len(tiny_backend.tokenizer)
    assert config.eos_token_id == tiny_backend.tokenizer.eos_token_id
    assert sum(p.numel() for p in tiny_backend.model.parameters()) < 500_000


def test_cached_on_disk_once_and_reloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMFACTORY_CACHE", str(tmp_path))
    folder = tiny.tiny_model_dir("tiny://qwen3-mini", seed=3)
    assert folder.parent == tmp_path / "models" and folder.name == f"tiny-qwen3-mini-s3-v{tiny.BUILD_VERSION}"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in folder.iterdir()
    }
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert tiny.tiny_model_dir("tiny://qwen3-mini", seed=3) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert not [p for p in (tmp_path / "models").iterdir() if ".tmp-" in p.name]  # no leftovers


def test_concurrent_builders_build_once(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder)
        time.sleep(0.3)  # long enough for the other thread to arrive mid-build
        (folder / "config.json").write_text("{}")

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(tiny.build_cached(tmp_path, "m", build))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [tmp_path / "m"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", "m"]


def test_failed_build_leaves_no_half_model(tmp_path):
    def broken(folder):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        tiny.build_cached(tmp_path, "m", broken)
    assert not (tmp_path / "m").exists()
    assert [p.name for p in tmp_path.iterdir()] == [".m.lock"]


def test_unknown_tiny_name():
    with pytest.raises(MemFactoryError, match="tiny://qwen3-mini"):
        tiny.parse_tiny_path("tiny://qwen3-huge")
