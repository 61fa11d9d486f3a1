"""Build the backend a ModelConfig names, through the registry."""

from __future__ import annotations

from memfactory.backends.base import Backend
from memfactory.config import ModelConfig
from memfactory.registry import REGISTRY


def build_backend(cfg: ModelConfig, *, where: str = "model.backend") -> Backend:
    entry = REGISTRY.get("backend", cfg.backend, where=where)
    options = entry.config.model_validate(cfg.options).model_dump(exclude_unset=True)
    return entry.target.from_config(cfg, **options)
