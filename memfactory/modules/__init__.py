"""modules layer."""

from memfactory.modules import recurrent  # noqa: F401  (registers the module)
