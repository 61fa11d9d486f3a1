"""The vllm backend without vllm installed: registered, and a clear install hint instead of an ImportError."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from memfactory.backends.vllm_engine import NOT_INSTALLED, VLLMBackend, vllm_available
from memfactory.config import ModelConfig
from memfactory.errors import MemFactoryError
from memfactory.registry import REGISTRY

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")


def test_registered_without_importing_vllm():
    entry = REGISTRY.get("backend", "vllm")
    assert entry.target is VLLMBackend
    assert "gpu_memory_utilization" in entry.config.model_fields
    assert "vllm" not in sys.modules and not vllm_available()


def test_constructing_raises_the_install_hint():
    with pytest.raises(MemFactoryError) as info:
        VLLMBackend("some/model")
    assert str(info.value) == NOT_INSTALLED
    assert "make vllm" in NOT_INSTALLED and ".venv-vllm/bin/memfactory" in NOT_INSTALLED
    with pytest.raises(MemFactoryError, match=r"^vLLM is not installed"):
        VLLMBackend.from_config(ModelConfig(backend="vllm", path="some/model"))
