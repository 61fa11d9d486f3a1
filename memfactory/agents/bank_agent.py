"""The common frame of the agents that answer from per-conversation memory banks (Memory-R1, RMM).

Both agents did the same things the same way: default modules for empty slots, a bank cache kept
between inference calls, ``run``'s checks, a temporary bank folder and a final ``bank`` trace per
trajectory, the frozen answer temperature, and one shared bank per conversation. ``BankAgent``
does them once; each agent says how a shared episode starts (``start_episode``) and how it answers
a batch from its banks (``answer``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from memfactory.agents.banks import BankCache, BankFolder, Episode, answer_with_memories, bank_trace, conversation_banks
from memfactory.agents.base import Agent
from memfactory.agents.common import check_run, group_trajectories
from memfactory.backends.base import Backend
from memfactory.memory.records import MemoryHit
from memfactory.memory.store import MemoryStore
from memfactory.types import Sample, SamplingParams, Trajectory


class BankAgent(Agent):
    """An agent that answers from per-conversation memory banks.

    Subclasses name their ``default_modules`` (slot -> factory) and ``options_type``, say how a
    shared episode starts (``start_episode``) and answer a batch from its banks (``answer``). Their
    options need ``embedder``, ``reuse_banks`` and ``frozen_answer_temperature``.
    """

    default_modules: ClassVar[dict[str, Callable[[], Any]]] = {}
    options_type: ClassVar[type[BaseModel]]

    def __init__(self, modules: dict[str, Any] | None = None, options: BaseModel | None = None):
        modules = dict(modules or {})
        for slot, make in self.default_modules.items():
            modules.setdefault(slot, make())
        super().__init__(modules, options or self.options_type())
        self.bank_cache = BankCache()

    def run(
        self,
        samples: list[Sample],
        backend: Backend,
        *,
        params: SamplingParams,
        group_size: int = 1,
        train: bool = False,
    ) -> list[Trajectory]:
        if not check_run(samples, backend, group_size, train):
            return []
        trajectories = group_trajectories(samples, group_size)
        with BankFolder(self.options.embedder) as folder:
            banks = self.answer(samples, trajectories, folder, backend, params, group_size=group_size, train=train)
            for trajectory, bank in zip(trajectories, banks):
                trajectory.trace.append(bank_trace(bank))
        return trajectories

    @abstractmethod
    def answer(
        self,
        samples: list[Sample],
        trajectories: list[Trajectory],
        folder: BankFolder,
        backend: Backend,
        params: SamplingParams,
        *,
        group_size: int,
        train: bool,
    ) -> list[MemoryStore]:
        """Fill ``trajectories`` (answers, calls, trace) from banks made in ``folder``; each one's bank."""

    @abstractmethod
    def respond(
        self,
        samples: list[Sample],
        trajectories: list[Trajectory],
        banks: list[MemoryStore],
        backend: Backend,
        params: SamplingParams,
        *,
        group_size: int,
        train: bool,
    ) -> None:
        """Answer every trajectory's question from its bank (``group_size`` consecutive ones per sample):
        retrieval, the agent's own selection and one batched answer call. The trace records what was
        retrieved with its scores and what the answer cited; ``answer`` calls it, and so does the Chat tab."""

    @property
    def reflects(self) -> bool:
        """Whether a conversation step goes through the extractor and updater (else its turns are stored as they are)."""
        return True

    @abstractmethod
    def start_episode(self, episode: Episode) -> None:
        """Prepare a new shared episode: its steps, or a bank filled without model calls."""

    def answer_params(self, params: SamplingParams, *, train: bool, answer_trains: bool) -> SamplingParams:
        """The answer call's sampling: at ``frozen_answer_temperature`` while training leaves it frozen,
        so the reward reflects the trained part."""
        frozen = self.options.frozen_answer_temperature
        if train and not answer_trains and frozen is not None:
            return replace(params, temperature=frozen)
        return params

    def answer_call(
        self,
        trajectories: list[Trajectory],
        memories: list[list[MemoryHit]],
        backend: Backend,
        params: SamplingParams,
        *,
        train: bool,
        answer_trains: bool,
        template: str,
        module: str,
        citations: Literal["ids", "text", "none"],
    ) -> list[list[str]]:
        """The answer call over each trajectory's memories, with the answer options both bank agents share
        (prefix, system prompt, token cap, stop strings); per trajectory the memory ids its answer cited."""
        return answer_with_memories(
            trajectories,
            memories,
            backend,
            self.answer_params(params, train=train, answer_trains=answer_trains),
            template=template,
            assistant_prefix=self.options.answer_prefix,
            system_prompt=self.options.system_prompt,
            max_tokens=self.options.answer_tokens,
            train=train,
            trainable=answer_trains,
            module=module,
            stop=self.options.answer_stop,
            citations=citations,
        )

    def build_temperature(self, train: bool) -> float | None:
        """The temperature of a shared bank's build calls (None = the rollout's)."""
        return None

    def shared_banks(
        self,
        samples: list[Sample],
        trajectories: list[Trajectory],
        folder: BankFolder,
        backend: Any,
        params: SamplingParams,
        *,
        train: bool = False,
    ) -> list[MemoryStore]:
        """One bank per conversation (non-trainable calls), shared by its samples and group members."""
        return conversation_banks(
            samples,
            trajectories,
            folder,
            backend,
            params,
            bank_cache=self.bank_cache,
            reuse=self.options.reuse_banks,
            embedder=self.options.embedder,
            start=self.start_episode,
            extractor=self.modules["extractor"],
            updater=self.modules["updater"],
            train=train,
            build_temperature=self.build_temperature(train),
        )
