"""Text generation backends. Importing this package registers the built-in ones."""

from memfactory.backends.base import Backend

__all__ = ["Backend"]
