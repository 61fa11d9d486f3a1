"""The Module layer: one memory operation with three ways to run it.

- ``generate``: with the training backend; records trainable calls, the reward comes later.
- ``rollout``: with the training backend; the episode is scored when it ends.
- ``inference``: with any backend (hf, OpenAI-compatible, vLLM); no token bookkeeping.
Concrete modules define their own state types; agents know which module they hold.
"""

from __future__ import annotations

from abc import ABC
from typing import ClassVar

from pydantic import BaseModel


class MemoryModule(ABC):
    name: ClassVar[str] = "module"

    def __init__(self, options: BaseModel):
        self.options = options
