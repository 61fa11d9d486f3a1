"""Checkpoints with a real tiny Qwen3 model, AdamW and a warm-up scheduler (and a peft LoRA model)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from memfactory.errors import MemFactoryError
from memfactory.trainer.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def _model(seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return Qwen3ForCausalLM(config)


def _train(model, optimizer, scheduler, steps: int = 2) -> None:
    ids = torch.randint(0, 64, (2, 8))
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def _setup(seed: int = 0):
    model = _model(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 5))
    return model, optimizer, scheduler


def _snapshot(model, optimizer):
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = {
        i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
        for i, s in optimizer.state_dict()["state"].items()
    }
    return params, opt


def test_save_modify_load_restores_weights_optimizer_scheduler_and_rng(tmp_path):
    model, optimizer, scheduler = _setup()
    _train(model, optimizer, scheduler, steps=3)
    params, opt = _snapshot(model, optimizer)
    lr = scheduler.get_last_lr()

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    path = save_checkpoint(tmp_path, 20, model, optimizer, scheduler, extra={"best_reward": 0.5, "nan": float("nan")})
    assert path == tmp_path / "checkpoints" / "step-000020"
    expected_random = (random.random(), np.random.rand(), torch.rand(1).item())
    assert (path / "model" / "model.safetensors").is_file() and (path / "model" / "config.json").is_file()
    assert {p.name for p in path.iterdir()} >= {"optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"}

    _train(model, optimizer, scheduler, steps=2)  # move everything away from the saved state
    assert not torch.equal(
        model.state_dict()["model.layers.0.self_attn.q_proj.weight"], params["model.layers.0.self_attn.q_proj.weight"]
    )
    assert scheduler.get_last_lr() != lr

    # restore into the trained objects, and into fresh ones built from a different seed
    for target in [(model, optimizer, scheduler), _setup(seed=7)]:
        state = load_checkpoint(path, *target)
        assert state["step"] == 20 and state["extra"] == {"best_reward": 0.5, "nan": None}
        got_params, got_opt = _snapshot(target[0], target[1])
        assert got_params.keys() == params.keys()
        for key, value in params.items():
            assert torch.equal(got_params[key], value), key
        assert got_opt.keys() == opt.keys()
        for i, saved in opt.items():
            for name, value in saved.items():
                assert torch.equal(got_opt[i][name], value) if torch.is_tensor(value) else got_opt[i][name] == value
        assert target[2].get_last_lr() == lr
        assert target[2].last_epoch == scheduler.last_epoch or target[2] is scheduler
        assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_random

    # tied embeddings stay tied after loading
    fresh = _setup(seed=3)
    load_checkpoint(path, *fresh)
    assert fresh[0].lm_head.weight.data_ptr() == fresh[0].model.embed_tokens.weight.data_ptr()


def test_partial_checkpoints_are_ignored(tmp_path):
    model, optimizer, scheduler = _setup()
    save_checkpoint(tmp_path, 10, model, optimizer, scheduler)
    root = tmp_path / "checkpoints"
    (root / "step-000030" / "model").mkdir(parents=True)  # no trainer_state.json: a torn copy
    (root / ".step-000040.tmp-dead").mkdir()  # a crashed save's temp folder
    (root / "notes").mkdir()
    assert latest_checkpoint(tmp_path) == root / "step-000010"
    assert load_checkpoint(tmp_path, model)["step"] == 10  # a run folder resolves to its latest
    assert latest_checkpoint(tmp_path / "nothing") is None
    with pytest.raises(MemFactoryError, match="no complete checkpoint"):
        load_checkpoint(tmp_path / "nothing", model)

    # a save that fails midway leaves nothing behind and the old latest stays
    class Broken:
        def state_dict(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path, 50, model, optimizer, Broken())
    assert latest_checkpoint(tmp_path) == root / "step-000010"
    assert not [p for p in root.iterdir() if p.name.startswith(".step-000050")]


def test_keep_n_prunes_old_checkpoints_and_resaving_a_step_replaces_it(tmp_path):
    model, optimizer, scheduler = _setup()
    for step in (5, 10, 15, 20, 25):
        save_checkpoint(tmp_path, step, model, optimizer, scheduler, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000020", "step-000025"]
    save_checkpoint(tmp_path, 25, model, optimizer, scheduler, extra={"again": True}, keep=2)
    assert json.loads((latest_checkpoint(tmp_path) / "trainer_state.json").read_text())["extra"] == {"again": True}
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000020", "step-000025"]
    save_checkpoint(tmp_path, 30, model, keep=None)
    assert len(list_checkpoints(tmp_path)) == 3


def test_peft_lora_model_saves_only_adapters_and_restores_them(tmp_path):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    def lora(seed):
        return get_peft_model(_model(seed), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))

    model = lora(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    _train(model, optimizer, scheduler, steps=2)  # lora_B becomes non-zero
    path = save_checkpoint(tmp_path, 3, model, optimizer, scheduler)

    files = {p.name for p in (path / "model").iterdir()}
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert "model.safetensors" not in files
    saved = load_file(path / "model" / "adapter_model.safetensors")
    assert saved and all("lora_" in key for key in saved)
    assert sum(t.numel() for t in saved.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert json.loads((path / "trainer_state.json").read_text())["peft"] is True

    trained = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    other = lora(0)  # same base weights, fresh adapters
    other_opt = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad], lr=1e-2)
    load_checkpoint(path, other, other_opt)
    restored = {k: v for k, v in other.named_parameters() if v.requires_grad}
    assert restored.keys() == trained.keys()
    for key, value in trained.items():
        assert torch.equal(restored[key], value), key
    assert other_opt.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()

    with pytest.raises(MemFactoryError, match="LoRA adapters"):
        load_checkpoint(path, _model(0))


def test_full_model_checkpoint_with_tokenizer_is_a_loadable_hf_folder(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memfactory.backends.tiny import tiny_model_dir

    source = tiny_model_dir()
    model = AutoModelForCausalLM.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    path = save_checkpoint(tmp_path, 1, model, tokenizer=tokenizer)
    reloaded = AutoModelForCausalLM.from_pretrained(path / "model")
    again = AutoTokenizer.from_pretrained(path / "model")
    assert again("hello world").input_ids == tokenizer("hello world").input_ids
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
