"""The planner's verdict (memfactory/planner/plan.py, ``memfactory plan``): fits or not, the advice,
the CLI, the web UI's helper, bad requests, and (``slow``) the peak RSS of a short real CPU run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from memfactory.backends.shape import model_shape
from memfactory.cli import main
from memfactory.config import load_preset
from memfactory.errors import MemFactoryError
from memfactory.paths import presets_dir
from memfactory.planner.plan import estimate_memory, plan_markdown

ROOT = Path(__file__).resolve().parents[2]


def _preset(name: str, *overrides: str):
    return load_preset(presets_dir() / f"{name}.yaml", list(overrides))


# --------------------------------------------------------------------------- verdict and advice


def test_4b_on_80_gib_does_not_fit_and_names_the_knobs():
    plan = estimate_memory(_preset("memagent_qwen3_4b"), gpu_mem_gib=80)
    assert plan.fits is False and plan.peak_gib > 80
    text = " ".join(plan.advice)
    assert "trainer.lora" in text and "bf16_pure" in text and "2 GPUs with FSDP2" in text
    assert "does not fit" in plan.to_markdown()
    fits = estimate_memory(_preset("memagent_qwen3_1.7b"), gpu_mem_gib=80)
    assert fits.fits is True and fits.advice == [] and "**fits**" in fits.to_markdown()


def test_advice_shrinks_the_micro_batch_when_that_is_enough():
    plan = estimate_memory(_preset("memagent_qwen3_1.7b", "trainer.micro_batch_size=16"), gpu_mem_gib=80)
    assert plan.fits is False
    assert any(item.startswith("trainer.micro_batch_size=") for item in plan.advice), plan.advice


def test_bad_requests_raise_one_paragraph_errors():
    preset = _preset("tiny_test")
    with pytest.raises(MemFactoryError, match="--gpus 0"):
        estimate_memory(preset, gpus=0)
    with pytest.raises(MemFactoryError, match="positive"):
        estimate_memory(preset, gpu_mem_gib=-1)
    with pytest.raises(MemFactoryError, match="strategy"):
        estimate_memory(preset, gpus=2, strategy="zero3")
    with pytest.raises(MemFactoryError, match="unknown tiny model"):
        estimate_memory(_preset("tiny_test", "model.path=tiny://nope"))


# --------------------------------------------------------------------------- CLI and the UI helper


def test_cli_plan_prints_the_table_and_exits_by_verdict(capsys):
    assert main(["plan", str(presets_dir() / "memagent_qwen3_1.7b.yaml"), "--gpu-mem", "80"]) == 0
    out = capsys.readouterr().out
    assert "| weights | 6.41 |" in out and "**fits**" in out
    assert main(["plan", str(presets_dir() / "memagent_qwen3_4b.yaml"), "--gpu-mem", "80"]) == 1
    out = capsys.readouterr().out
    assert "does not fit" in out and "trainer.lora" in out
    code = main(["plan", str(presets_dir() / "memagent_qwen3_4b.yaml"), "--gpus", "2", "--strategy", "fsdp2",
                 "--gpu-mem", "80", "--json"])
    plan = json.loads(capsys.readouterr().out)
    assert code == 0 and plan["fits"] is True and plan["components"]["weights"] == pytest.approx(14.98 / 2, abs=0.01)
    assert main(["plan", str(presets_dir() / "memagent_qwen3_4b.yaml"), "--gpu-mem", "80",
                 "--set", "trainer.lora={r: 16}"]) == 0
    assert "**fits**" in capsys.readouterr().out


def test_cli_plan_without_gpu_mem_reports_against_this_machine(capsys):
    assert main(["plan", str(presets_dir() / "tiny_test.yaml")]) == 0
    out = capsys.readouterr().out
    if not torch.cuda.is_available():
        assert "host RAM" in out and "no CUDA here" in out
        # Two CPU processes share the host's RAM: each gets half.
        plan = estimate_memory(_preset("tiny_test"), gpus=2)
        assert plan.budget_gib == pytest.approx(plan.device_gib / 2, abs=0.01)
        assert "GiB per process" in plan.to_markdown()


@pytest.mark.parametrize(("argv", "message"), [
    (["--gpus", "0"], "--gpus 0"),
    (["--gpu-mem", "-4"], "--gpu-mem -4"),
    (["--set", "trainer.micro_batch_size=0"], "micro_batch_size"),
])
def test_cli_plan_user_errors_exit_2(argv, message, capsys):
    assert main(["plan", str(presets_dir() / "tiny_test.yaml"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_cli_plan_missing_and_malformed_presets(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "none.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrainer: {steps: [1\n", encoding="utf-8")
    assert main(["plan", str(bad)]) == 2
    assert "malformed YAML" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to count devices")
def test_more_gpus_than_this_machine_has_is_refused():
    with pytest.raises(MemFactoryError, match="CUDA device"):
        estimate_memory(_preset("tiny_test"), gpus=torch.cuda.device_count() + 1)


def test_plan_markdown_never_raises_for_user_mistakes():
    text = (presets_dir() / "memagent_qwen3_4b.yaml").read_text(encoding="utf-8")
    assert "does not fit" in plan_markdown(text, gpu_mem_gib=80)
    assert "**fits**" in plan_markdown(str(presets_dir() / "memagent_qwen3_4b.yaml"), gpus=2, gpu_mem_gib=141)
    assert "**fits**" in plan_markdown(text, gpu_mem_gib=80, overrides=["trainer.precision=bf16_pure"])
    for bad in ("name: [oops", "not: a preset", "", "/no/such/preset.yaml"):
        out = plan_markdown(bad)
        assert out.startswith("**Cannot plan this preset:**"), out
    assert "--gpus 0" in plan_markdown(text, gpus=0)


# --------------------------------------------------------------------------- a real CPU run


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cpu_estimate_within_30_percent_of_a_real_runs_peak_rss():
    """One real GRPO step of the tiny model plus two updates at the planner's shape (activations
    dominate: 8 rows x 4.1k tokens, no checkpointing), in a child process: its peak RSS."""
    sys.path.insert(0, str(ROOT / "bench"))
    import plan_calibration

    result = plan_calibration.run_child(["--child", "tiny_no_ckpt"], timeout=280)
    assert result["measured_gib"] > result["loaded_gib"] + 0.3  # the update really cost memory
    assert abs(result["error_pct"]) <= 30, result
    assert abs(result["update_error_pct"]) <= 30, result  # the phase that dominates, at the cap shape


def test_a_model_whose_shape_cannot_be_read_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MemFactoryError, match="cannot read its config.json|does not exist locally"):
        estimate_memory(_preset("tiny_test", "model.path=someone/not-cached-model"), gpu_mem_gib=80)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MemFactoryError, match="no config.json"):
        estimate_memory(_preset("tiny_test", f"model.path={tmp_path / 'empty'}"), gpu_mem_gib=80)
    with pytest.raises(MemFactoryError, match="backend: hf"):
        estimate_memory(_preset("tiny_test", "model.backend=openai", "model.base_url=http://127.0.0.1:9/v1"))


def test_a_local_folder_plans_from_its_config_json(tmp_path):
    """A save_pretrained folder: the shape comes from config.json alone (no weights in the folder)."""
    from memfactory.backends.sources import resolve_model_path

    source = Path(resolve_model_path("smollm2-135m-instruct")) / "config.json"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    plan = estimate_memory(_preset("tiny_cpu_demo", f"model.path={tmp_path / 'model'}"), gpu_mem_gib=80)
    assert plan.parameters == model_shape("smollm2-135m-instruct").parameters and plan.fits
