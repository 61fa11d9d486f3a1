"""envs layer."""
from memfactory.envs import long_context, rewards  # noqa: F401  (registers env long_context and the rewards)
