"""`memfactory data synth|check|download` through the real CLI, and the offline download path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from memfactory.cli import main
from memfactory.data.download import download_memagent
from memfactory.data.sources import load_samples
from memfactory.errors import MemFactoryError


def test_synth_commands_write_loadable_sets(tmp_path, capsys):
    out = tmp_path / "h.json"
    assert main(["data", "synth", "hotpotqa", "--n", "5", "--docs", "7", "--seed", "2", "--out", str(out)]) == 0
    samples = load_samples(out)
    assert len(samples) == 5 and all(s.meta["num_docs"] == 7 for s in samples)
    assert main(["data", "synth", "fwe", "--n", "2", "--length", "300", "--out", str(tmp_path / "f.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["answer_prefix"].startswith(" Answer:")
    assert main(["data", "synth", "docqa", "--out", str(tmp_path / "d.json")]) == 0
    assert len(json.loads((tmp_path / "d.json").read_text())) == 64
    assert main(["data", "check", str(out)]) == 0
    assert "5 samples (hotpotqa 5)" in capsys.readouterr().out


def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "none.json")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["data", "synth", "hotpotqa", "--docs", "1", "--n", "2", "--out", str(tmp_path / "x.json")]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_download_offline_raises_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MemFactoryError, match="HF_HUB_OFFLINE"):
        download_memagent(tmp_path / "d")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_download_cli_offline_or_unreachable_no_traceback(tmp_path, env):
    full = {**os.environ, **env, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "memfactory", "data", "download", "memagent", "--to", str(tmp_path / "d")],
        check=False,
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "BytedTsinghua-SIA/hotpotqa" in lines[0]
