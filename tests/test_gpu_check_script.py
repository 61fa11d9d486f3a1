"""bench/gpu_check.py, the prepared GPU script, dry-runs on CPU with the tiny model.

A session that is lent a GPU has minutes of device time: the script must work the first time.
Here every section runs on ``tiny://qwen3-mini`` in bfloat16 on the CPU; sections that need
flash-attn, vLLM or CUDA say they were skipped instead of failing.
"""

from __future__ import annotations

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
    assert set(results) == {"generate_hf_sdpa", "generate_hf_flash_attention_2", "generate_vllm",
                            "grpo_step_full", "grpo_step_lora", "memagent_grpo_step_4_chunks",
                            "grpo_step_lora_vllm_engine"}
    for name, result in results.items():
        assert "error" not in result, (name, result.get("trace"))
    assert results["generate_hf_sdpa"]["new_tokens"] > 0 and results["generate_hf_sdpa"]["tokens_per_s"] > 0
    full, lora = results["grpo_step_full"], results["grpo_step_lora"]
    assert lora["trainable_parameters"] < full["trainable_parameters"]
    assert full["seconds"] > 0 and lora["tokens_per_s"] > 0
    memagent = results["memagent_grpo_step_4_chunks"]
    assert memagent["calls_per_trajectory"] == 5.0  # 4 memory updates + the answer
    assert "| memagent_grpo_step_4_chunks |" in (tmp_path / "gpu_check.md").read_text()
