"""MemAgent: the recurrent memory module run over a batch, one backend call per chunk index.

Every live trajectory's chunk i goes into the same ``backend.generate`` call (trajectories with
fewer chunks drop out), then one call answers for all, so a batch of samples x group members
costs ``max_chunks + 1`` calls. With ``credit: final_only`` only the answer call is trainable;
with ``all_calls`` (MemAgent's multi-conversation credit) every memory update shares the
trajectory's advantage.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from memfactory.agents.base import Agent
from memfactory.backends.base import Backend
from memfactory.calls import require_token_backend
from memfactory.modules.recurrent import RecurrentMemoryModule
from memfactory.registry import register
from memfactory.types import Sample, SamplingParams, Trajectory


class MemAgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    credit: Literal["all_calls", "final_only"] = Field(
        "all_calls", description="Which calls of a trajectory are trained: every memory update too, or the answer only"
    )


@register(
    "agent",
    "memagent",
    description="MemAgent: read the context chunk by chunk into an overwritten memory, answer from the memory",
    config=MemAgentConfig,
    slots={"memory": ["recurrent"]},
)
class MemoryAgent(Agent):
    options: MemAgentConfig

    def __init__(self, modules: dict[str, RecurrentMemoryModule], options: MemAgentConfig | None = None):
        if "memory" not in modules:
            raise ValueError("MemoryAgent needs a module in slot 'memory'")
        super().__init__(modules, options or MemAgentConfig())

    @property
    def memory(self) -> RecurrentMemoryModule:
        return self.modules["memory"]

    def run(
        self,
        samples: list[Sample],
        backend: Backend,
        *,
        params: SamplingParams,
        group_size: int = 1,
        train: bool = False,
    ) -> list[Trajectory]:
        if train:
            require_token_backend(backend)
        states = self.memory.init_states(samples, backend, group_size)
        if train:
            return self.memory.rollout(states, backend, params, credit=self.options.credit)
        return [state.trajectory for state in self.memory.inference(states, backend, params)]
