"""bench/gpu_check.py, the prepared GPU script, dry-runs on CPU with the tiny model.

A session that is lent a GPU has minutes of device time: the script must work the first time.
Here every section runs on ``tiny://qwen3-mini`` in bfloat16 on the CPU; sections that need
flash-attn, vLLM or CUDA say they were skipped instead of failing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_gpu_check_dry_run_measures_every_section(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--shape", "qwen3-mini", "--out", str(tmp_path)],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    results = report["results"]
    presets = ["memagent_qwen3_1.7b", "memagent_qwen3_4b", "memory_r1_qwen3", "rmm_qwen3"]
    assert set(results) == {"cuda_tests", "learns", "generate_hf_sdpa", "generate_hf_flash_attention_2", "generate_vllm",
                            "grpo_step_lora_vllm_engine", "decode_speed", "planner_out_of_sample",
                            *(f"preset:{p}" for p in presets)}
    for name, result in results.items():
        assert "error" not in result, (name, result.get("trace"))
    assert results["cuda_tests"] == {"skipped": "no CUDA", "wall_s": results["cuda_tests"]["wall_s"]}
    # learning: bench/learn_check.py under bf16_mixed + checkpointing, the reward rose (10 steps here)
    learned = results["learns"]
    assert (learned["precision"], learned["gradient_checkpointing"], learned["steps"]) == ("bf16_mixed", True, 10)
    assert learned["rise"] >= 0.05
    assert results["generate_hf_sdpa"]["new_tokens"] > 0 and results["generate_hf_sdpa"]["tokens_per_s"] > 0
    # decode speed: eager and compiled (aot_eager in the dry run) at two batch sizes, each against the roofline
    decode = results["decode_speed"]
    measured = [(r["engine"], r["batch"]) for r in decode["rows"] if "skipped" not in r]
    assert measured[:4] == [("eager", 2), ("eager", 4), ("compiled", 2), ("compiled", 4)]
    assert decode["bandwidth_gbs"] > 0 and decode["weights_gib"] > 0
    for r in decode["rows"][:4]:
        assert r["tokens_per_s"] > 0 and 0 < r["roofline_ratio"] and r["roofline_ms_per_step"] > 0
    if not importlib.util.find_spec("vllm"):
        assert decode["rows"][-1] == {"engine": "vllm", "skipped": "not installed"}
    for name in presets:
        r = results[f"preset:{name}"]
        # Every shipped GPU preset trains with fp32 master weights under bf16 autocast, checkpointed.
        assert (r["precision"], r["trainable_dtype"], r["gradient_checkpointing"]) == ("bf16_mixed", "float32", True)
        assert r["update"]["step_s"] > 0 and r["update"]["tokens_per_s"] > 0
        assert r["steps"]["update_s"] > 0, (name, r["steps"])  # the whole step really trained
        assert r["steps"]["kl"] > 0  # against the reference (beta 0.001)
        # The memory planner's estimate for the rows measured, next to the peak (no CUDA: no error %).
        u = r["update"]
        assert u["estimate_gib"] > 0 and u["estimate_moment"] in ("forward", "backward", "optimizer step")
        assert u["estimate_error_pct"] is None and u["peak_gib"] is None
        assert u["mfu_6n_pct"] > 0 and u["mfu_executed_pct"] > 0  # both conventions, against the measured matmul rate
        parts = u["estimate_parts_gib"]
        assert set(parts) == {"weights", "reference", "grads", "optimizer", "activations", "logits"}
        assert abs(parts["weights"] - u["weights_gib"]) <= 0.01 and abs(parts["optimizer"] - u["optimizer_gib"]) <= 0.01
    assert results["preset:memagent_qwen3_1.7b"]["calls_per_trajectory_real"] == 7  # 6 chunks + the answer
    assert results["preset:memagent_qwen3_1.7b"]["steps"]["calls_per_trajectory"] == 3.0  # capped: 2 chunks + answer
    cases = results["planner_out_of_sample"]["cases"]  # bench/planner_check.py, every case on CPU
    assert set(cases) == {"lora_4b", "no_ckpt_1.7b", "ragged_1.7b", "beta0_4b", "rollout_1.7b", "ddp2_1.7b", "fsdp2_1.7b"}
    for name, case in cases.items():
        assert "error" not in case and case["planned_gib"] >= 0, (name, case)
        if name != "rollout_1.7b":
            assert case["mfu_6n_pct"] > 0 and case["mfu_executed_pct"] > 0, (name, case)
    assert cases["ddp2_1.7b"]["strategy"] == "MULTI_CPU" and len(cases["ddp2_1.7b"]["peak_gib_ranks"]) == 2
    assert cases["fsdp2_1.7b"]["strategy"] == "FSDP2"
    md = (tmp_path / "gpu_check.md").read_text()
    assert "### Planner out of sample" in md and "| ragged_1.7b |" in md
    assert "| memagent_qwen3_4b | qwen3-mini | bf16_mixed | True |" in md
    assert "planner estimate GiB (error)" in md and "(not measured)" in md
    assert "| compiled | 4 |" in md and "share of roofline" in md


def test_preset_shapes_are_the_presets_real_longest_calls():
    """The update section measures each GPU preset at its own longest call, read from the preset
    by the memory planner's own function (so estimate and measurement agree on the rows)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check

    from memfactory.backends import shape

    assert gpu_check.preset_shape is shape.preset_shape

    from memfactory.config import load_preset
    from memfactory.paths import presets_dir

    shapes = {name: gpu_check.preset_shape(load_preset(presets_dir() / f"{name}.yaml")) for name in gpu_check.GPU_PRESETS}
    t = gpu_check.TEMPLATE_TOKENS
    assert shapes == {
        "memagent_qwen3_1.7b": (2500 + 2500 + t, 2500, 7),  # chunk + memory + template; 6 chunks + answer
        "memagent_qwen3_4b": (2500 + 1500 + t, 1500, 7),
        "memory_r1_qwen3": (gpu_check.BANK_PROMPT_TOKENS, 512, 3),
        "rmm_qwen3": (gpu_check.BANK_PROMPT_TOKENS, 768, 4),
    }
    assert set(gpu_check.GPU_PRESETS.values()) == {"qwen3-1.7b-shape", "qwen3-4b-shape"}


def test_the_out_of_sample_predictions_recorded_in_results_are_the_planners():
    """bench/RESULTS.md holds the planner's GiB for bench/planner_check.py's cases, written before any GPU
    measured them: they must be what the planner says now (a planner change re-records them)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import planner_check

    table = planner_check.predictions()
    assert table.count("\n") == 2 + len(planner_check.CASES)
    assert table in (ROOT / "bench" / "RESULTS.md").read_text()
