"""Text generation backends. Importing this package registers the built-in ones."""

from memfactory.backends import (  # noqa: F401  (register "hf", "openai", "vllm")
    hf,
    openai_api,
    vllm_engine,
)
from memfactory.backends.base import Backend

__all__ = ["Backend"]
