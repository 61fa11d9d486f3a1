"""envs layer."""
from memfactory.envs import long_context, memory_bank, rewards  # noqa: F401  (registers the envs and the rewards)
