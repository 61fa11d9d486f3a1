"""bench/learn_check.py (gpu_check's ``learns`` section) on the CPU: the same function, fewer steps.

The tiny model under the GPU presets' training path (bf16_mixed: fp32 masters under bf16 autocast,
gradient checkpointing, a frozen reference) raises the vowel-share reward within ten steps; on a
lent GPU the section trains 30.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import learn_check


def test_the_learning_check_passes_on_the_cpu_under_bf16_mixed_with_checkpointing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = learn_check.learns(10, min_rise=0.05)
    assert result["device"] == "cpu" and result["steps"] == 10 == len(result["curve"])
    assert (result["precision"], result["trainable_dtype"], result["gradient_checkpointing"]) == (
        "bf16_mixed", "float32", True)
    assert result["rise"] >= 0.05 and result["grad_norm_max"] > 0
    assert "->" in result["summary"]


def test_a_reward_that_does_not_rise_fails_the_check_with_its_curve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match=r"did not rise by 1\.0: first fifth .*curve \["):
        learn_check.learns(3, min_rise=1.0, precision="fp32", checkpointing=False)
