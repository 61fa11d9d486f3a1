"""Text generation backends. Importing this package registers the built-in ones."""

from memfactory.backends.base import Backend
from memfactory.backends import hf  # noqa: F401  (registers "hf")

__all__ = ["Backend"]
