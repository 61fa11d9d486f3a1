"""Text generation backends. Importing this package registers the built-in ones."""

from memfactory.backends.base import Backend
from memfactory.backends import hf  # noqa: F401  (registers "hf")
from memfactory.backends import openai_api, vllm_engine  # noqa: F401  (register "openai", "vllm")

__all__ = ["Backend"]
