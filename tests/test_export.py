"""``memfactory export``: a LoRA run merged into a full model that plain transformers loads."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from memfactory.backends.sources import load_model_and_tokenizer
from memfactory.cli import main
from memfactory.config import load_preset
from memfactory.errors import MemFactoryError
from memfactory.export import export_checkpoint
from memfactory.paths import presets_dir
from memfactory.targets import resolve_checkpoint
from memfactory.tracking.runs import RunsDB
from memfactory.trainer import loop, session
from tests.vowel_reward import VowelShare

PRESET = str(presets_dir() / "tiny_test.yaml")
LORA = "trainer.lora={r: 4, alpha: 8}"




class VowelTrainer(loop.GRPOTrainer):
    """The real trainer with a reward that always has signal, so the adapters really move."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.env.rewards = {"vowels": VowelShare()}
        self.env.weights = {"vowels": 1.0}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setattr(session, "GRPOTrainer", VowelTrainer)  # the name the training session builds
        assert (
            main(
                [
                    "train",
                    PRESET,
                    "--set",
                    LORA,
                    "--set",
                    "trainer.lr=5e-2",
                    "--set",
                    "trainer.steps=2",
                    "--run-id",
                    "lora-run",
                    "--no-progress",
                ]
            )
            == 0
        )
    return root


def greedy(model, tokenizer, text: str) -> tuple[list[int], torch.Tensor]:
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1] :].tolist(), logits


def test_merge_gives_a_plain_model_identical_to_base_plus_adapter(lora_run, monkeypatch):
    monkeypatch.chdir(lora_run)
    adapter = lora_run / "runs" / "lora-run" / "checkpoints" / "step-000002" / "model"
    lora_b = [v for k, v in load_file(str(adapter / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert any(v.abs().max() > 0 for v in lora_b)  # the adapter is not a no-op

    assert main(["export", "lora-run", "--merge", "--out", "merged", "--db", "runs/memfactory.db"]) == 0
    out = lora_run / "merged"
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())

    preset = load_preset(lora_run / "runs" / "lora-run" / "preset.yaml")
    with_adapter, _ = load_model_and_tokenizer(preset.model.model_copy(update={"checkpoint": str(adapter)}))
    base, _ = load_model_and_tokenizer(preset.model)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Where was the king born?"}], tokenize=False, add_generation_prompt=True
    )
    merged_tokens, merged_logits = greedy(merged, tokenizer, text)
    adapter_tokens, adapter_logits = greedy(with_adapter, tokenizer, text)
    _, base_logits = greedy(base, tokenizer, text)
    assert merged_tokens == adapter_tokens and len(merged_tokens) > 0
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4)
    assert (merged_logits - base_logits).abs().max() > 1e-3  # the merge changed the weights


def test_export_without_merge_copies_the_adapter_folder(lora_run, monkeypatch):
    monkeypatch.chdir(lora_run)
    out = export_checkpoint("runs/lora-run", db="runs/memfactory.db")  # a run folder works too
    assert out.resolve() == lora_run / "runs" / "lora-run" / "export" / "step-000002-adapter"
    source = lora_run / "runs" / "lora-run" / "checkpoints" / "step-000002" / "model"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in source.iterdir())
    assert (out / "adapter_model.safetensors").read_bytes() == (source / "adapter_model.safetensors").read_bytes()
    with pytest.raises(MemFactoryError, match="already exists"):
        export_checkpoint("runs/lora-run", db="runs/memfactory.db")
    assert export_checkpoint("runs/lora-run", db="runs/memfactory.db", force=True).resolve() == out.resolve()
    # a checkpoint folder is accepted as is
    assert resolve_checkpoint(str(source.parent)).step == 2


def test_clear_errors(lora_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(lora_run)
    assert main(["export", "lora-rum", "--db", "runs/memfactory.db"]) == 2
    err = capsys.readouterr().err
    assert "no run 'lora-rum'" in err and "lora-run" in err and "Traceback" not in err

    db = RunsDB(lora_run / "runs" / "memfactory.db")
    (lora_run / "runs" / "empty").mkdir()
    db.create_run("tiny_test", lora_run / "runs" / "empty", run_id="empty")
    with pytest.raises(MemFactoryError, match="run 'empty' has no complete checkpoint"):
        export_checkpoint("empty", db="runs/memfactory.db")
    with pytest.raises(MemFactoryError, match="no runs database"):
        export_checkpoint("lora-run", db=str(tmp_path / "nowhere.db"))

    # a full fine-tune has nothing to merge
    monkeypatch.chdir(tmp_path)
    assert main(["train", PRESET, "--set", "trainer.steps=1", "--run-id", "full", "--no-progress"]) == 0
    with pytest.raises(MemFactoryError, match="full model weights, not a LoRA adapter"):
        export_checkpoint("full", merge=True)
    copied = export_checkpoint("full")
    assert (copied / "config.json").is_file()


def test_dtype_sets_the_written_weights_of_a_merge_and_of_an_adapter_copy(lora_run, monkeypatch):
    from safetensors import safe_open

    monkeypatch.chdir(lora_run)
    merged = export_checkpoint("lora-run", merge=True, db="runs/memfactory.db", dtype="bfloat16")
    assert merged.name == "step-000002-merged-bfloat16"
    model = AutoModelForCausalLM.from_pretrained(merged)  # the dtype the folder records
    assert model.dtype == torch.bfloat16
    assert main(["export", "lora-run", "--dtype", "float16", "--out", "half", "--db", "runs/memfactory.db"]) == 0
    source = lora_run / "runs" / "lora-run" / "checkpoints" / "step-000002" / "model" / "adapter_model.safetensors"
    with safe_open(str(lora_run / "half" / "adapter_model.safetensors"), "pt") as half, safe_open(str(source), "pt") as full:
        assert set(half.keys()) == set(full.keys())
        for key in full.keys():  # noqa: SIM118 - not a dict
            assert half.get_tensor(key).dtype == torch.float16
            assert torch.allclose(half.get_tensor(key).float(), full.get_tensor(key), rtol=1e-3, atol=1e-6)
    with pytest.raises(MemFactoryError, match="export dtype 'int8' is not one of float32, bfloat16, float16"):
        export_checkpoint("lora-run", db="runs/memfactory.db", dtype="int8")
