"""agents layer."""

from memfactory.agents import direct, memagent  # noqa: F401  (registers agents)
