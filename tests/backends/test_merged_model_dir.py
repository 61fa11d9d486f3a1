"""sources.merged_model_dir: a checkpoint folded into a plain model folder (what vLLM loads), cached."""

from __future__ import annotations

import os

import torch
from peft import LoraConfig, get_peft_model

from memfactory.backends.sources import load_model_and_tokenizer, merged_model_dir
from memfactory.config import ModelConfig


def test_an_adapter_checkpoint_is_merged_once_and_again_when_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMFACTORY_CACHE", str(tmp_path / "cache"))
    base = ModelConfig(path="tiny://qwen3-mini", dtype="float32", attn="sdpa")
    model, tokenizer = load_model_and_tokenizer(base)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking adapter, so merging changes the weights
    ckpt = tmp_path / "ckpt"
    peft.save_pretrained(ckpt)
    cfg = base.model_copy(update={"checkpoint": str(ckpt)})
    folder = merged_model_dir(cfg)
    assert (folder / "config.json").is_file() and not (folder / "adapter_config.json").exists()
    merged, _ = load_model_and_tokenizer(base.model_copy(update={"path": str(folder)}))
    ids = torch.tensor([tokenizer("hello world")["input_ids"]])
    adapted, _ = load_model_and_tokenizer(cfg)
    with torch.no_grad():
        # W + BA folded once vs added per forward: float32 rounding of the two sums, ~1e-6 relative
        # per layer on logits of magnitude ~10 through 2 layers.
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, rtol=1e-4, atol=1e-4)
    assert merged_model_dir(cfg) == folder  # cached
    later = os.stat(ckpt / "adapter_model.safetensors").st_mtime_ns + 10**9
    os.utime(ckpt / "adapter_model.safetensors", ns=(later, later))
    assert merged_model_dir(cfg) != folder  # a rewritten checkpoint is merged again
