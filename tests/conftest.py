"""Shared fixtures: real models, loaded once per test session.

- ``tiny_backend``: an ``HFBackend`` over ``tiny://qwen3-mini`` (random-init Qwen3, 2 layers,
  vocab 2000; built into the model cache on first use, ~30 ms to load after). Shared by every
  test in the session, so **never train or modify it** — use ``fresh_tiny_backend`` for that.
- ``fresh_tiny_backend``: a private copy per test (same weights), safe to train.
- ``smollm2_backend``: an ``HFBackend`` over SmolLM2-135M-Instruct (a real instruct model that
  answers short document questions). The first use on a machine converts the GGUF (~25 s);
  later sessions load it in well under a second. Read-only, like ``tiny_backend``.

All run on CPU in float32 with sdpa attention, greedy-deterministic.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from memfactory.backends.hf import HFBackend
from memfactory.backends.sources import load_model_and_tokenizer
from memfactory.config import ModelConfig

# Property tests on a loaded CI machine: no per-example deadline (a worker descheduled for 250 ms failed
# an example with DeadlineExceeded or "Unreliable test timings"), and slow data generation is no error
settings.register_profile("memfactory", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("memfactory")

TINY = ModelConfig(path="tiny://qwen3-mini", dtype="float32", attn="sdpa")
SMOLLM2 = ModelConfig(path="smollm2-135m-instruct", dtype="float32", attn="sdpa")


def _backend(cfg: ModelConfig) -> HFBackend:
    model, tokenizer = load_model_and_tokenizer(cfg)
    return HFBackend(model, tokenizer, enable_thinking=cfg.enable_thinking)


@pytest.fixture(scope="session")
def tiny_backend() -> HFBackend:
    """Session-wide tiny backend; read-only (do not train it)."""
    return _backend(TINY)


@pytest.fixture
def fresh_tiny_backend() -> HFBackend:
    """A private tiny backend for one test; train it freely."""
    return _backend(TINY)


@pytest.fixture(scope="session")
def smollm2_backend() -> HFBackend:
    """Session-wide SmolLM2-135M-Instruct backend; read-only (do not train it)."""
    return _backend(SMOLLM2)
