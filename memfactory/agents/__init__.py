"""agents layer."""

from memfactory.agents import direct, memagent, memory_r1, rmm  # noqa: F401  (registers agents)
