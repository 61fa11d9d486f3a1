"""`memfactory data check` compares every context with max_chunks x chunk_tokens (issue 15, item 6)."""

from __future__ import annotations

import json

import pytest

from memfactory.cli import main
from memfactory.config import load_preset
from memfactory.data.check import budget_from_preset, budget_report, count_documents
from memfactory.data.sources import load_samples
from memfactory.paths import presets_dir


def _set(tmp_path):
    """Four contexts of known length (~4 characters a token): 10, 40, 100 and 20 tokens."""
    c4 = "Document 1:\nab\n\nDocument 2:\n"
    c4 += "w" * (80 - len(c4))
    records = [
        {"context": "x" * 40, "input": "q1?", "answers": ["a"]},  # no document count at all
        {"context": "y" * 160, "input": "q2?", "answers": ["a"], "num_docs": 4},
        {"context": "z" * 400, "input": "q3?", "answers": ["a"], "num_docs": 10},
        {"context": c4, "input": "q4?", "answers": ["a"]},  # two "Document N:" headers
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_document_counts_and_what_a_budget_cuts(tmp_path):
    samples = load_samples(_set(tmp_path))
    assert [count_documents(s) for s in samples] == [None, 4, 10, 2]

    half = budget_report(samples, chunk_tokens=10, max_chunks=2)  # 20 tokens: 40 and 100 are cut
    assert half.tokens == [10, 40, 100, 20] and half.budget == 20
    assert half.cut == 2 and half.cut_fraction == 0.5
    assert half.kept_fraction == pytest.approx((0.5 + 0.2) / 2)
    assert half.unread_documents == pytest.approx((4 * 0.5 + 10 * 0.8) / 2)
    assert half.warning() is None  # half is not "most"

    most = budget_report(samples, chunk_tokens=10, max_chunks=1)  # 10 tokens: three of four are cut
    assert most.cut == 3 and most.cut_fraction == 0.75
    assert most.kept_fraction == pytest.approx((0.25 + 0.1 + 0.5) / 3)
    assert most.unread_documents == pytest.approx((4 * 0.75 + 10 * 0.9 + 2 * 0.5) / 3)
    warning = most.warning()
    assert warning.startswith("warning: 75% of the contexts are longer than max_chunks x chunk_tokens = 10 tokens")
    assert "cut in the middle (72% of each" in warning and "raise max_chunks" in warning

    whole = budget_report(samples, chunk_tokens=10, max_chunks=None)
    assert whole.cut == 0 and whole.warning() is None
    assert "no chunk cap" in whole.lines()[-1]


def test_data_check_cli_warns_with_flags_or_a_preset(tmp_path, capsys):
    path = str(_set(tmp_path))
    assert main(["data", "check", path]) == 0  # the GPU presets' 6 x 2500 tokens: nothing cut
    out = capsys.readouterr().out
    assert "documents per context: 2-10, mean 5.3 (3 of 4 contexts counted)" in out
    assert "6 x 2500 = 15000 tokens; 0 of 4 contexts (0%) are longer" in out and "warning" not in out

    assert main(["data", "check", path, "--chunk-tokens", "10", "--max-chunks", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 x 10 = 10 tokens; 3 of 4 contexts (75%) are longer" in out
    assert "warning: 75% of the contexts" in out and "~4.3 documents, is never read" in out

    tiny = presets_dir() / "memagent_tiny_test.yaml"  # chunk_tokens 32 x max_chunks 3 = 96 tokens
    assert budget_from_preset(load_preset(tiny)) == (32, 3, "middle")
    assert main(["data", "check", path, "--preset", str(tiny)]) == 0  # counted by the preset model's tokenizer
    out = capsys.readouterr().out
    assert "context length: 40-400 tokens, mean 166\n" in out  # the tiny model's tokenizer: a token a character
    assert "tokens counted with the tokenizer of tiny://qwen3-mini" in out
    assert "3 x 32 = 96 tokens; 2 of 4 contexts (50%) are longer" in out and "warning" not in out
    assert main(["data", "check", path, "--preset", str(tiny), "--max-chunks", "0"]) == 0
    assert "no chunk cap" in capsys.readouterr().out


def test_data_check_bad_budget_arguments_exit_2(tmp_path, capsys):
    path = str(_set(tmp_path))
    assert main(["data", "check", path, "--chunk-tokens", "0"]) == 2
    assert "--chunk-tokens must be >= 1" in capsys.readouterr().err
    assert main(["data", "check", path, "--preset", str(presets_dir() / "tiny_test.yaml")]) == 2
    assert "no recurrent memory module" in capsys.readouterr().err
