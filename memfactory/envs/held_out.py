"""HeldOutEnv: the sample-source plumbing that the long_context and memory_bank envs share.

Both read a training source, hold out a seeded ``test_fraction`` of it as ``test`` (never trained
on), look any other split name up as an eval set, cap eval sets at ``eval_size`` and cache what
they loaded. Sources are resolved by :mod:`memfactory.data.sources` in the subclass's
``data_family`` (which :mod:`memfactory.preflight` reads too); subclasses say how to read a resolved
source. Their options model (set as ``options_model``) must have ``data``, ``eval``, ``data_dir``,
``eval_size``, ``train_size``, ``test_fraction`` and ``seed``.
"""

from __future__ import annotations

import math
import random
from abc import abstractmethod
from typing import ClassVar

from pydantic import BaseModel

from memfactory.data.sources import File, SetFamily, Synthetic, resolve
from memfactory.envs.base import Environment
from memfactory.errors import DataError
from memfactory.types import Sample


class HeldOutEnv(Environment):
    options_model: ClassVar[type[BaseModel]]
    data_family: ClassVar[SetFamily]

    def __init__(self, options, rewards, weights):
        if not isinstance(options, self.options_model):
            options = self.options_model.model_validate(options if isinstance(options, dict) else options.model_dump())
        super().__init__(options, rewards, weights)
        self._cache: dict[str, list[Sample]] = {}

    @abstractmethod
    def _read(self, source: Synthetic | File) -> list[Sample]:
        """The samples of a resolved source (a parsed URI or a found file)."""

    def _load(self, name: str) -> list[Sample]:
        """A source string (a set name, a file or a synthetic:// URI) resolved, read and cached."""
        if name not in self._cache:
            self._cache[name] = self._read(resolve(name, self.data_family, self.options.data_dir))
        return self._cache[name]

    def _source(self) -> list[Sample]:
        """The training source (``options.data``), before the held-out split."""
        return self._load(self.options.data)

    def _eval_set(self, name: str) -> list[Sample]:
        """A split other than train/test: an eval set name, a file or a synthetic:// URI."""
        return self._load(name)

    def _split(self) -> tuple[list[Sample], list[Sample]]:
        """(train, test): a seeded shuffle of the source, the first ``test_fraction`` of it held out.

        ``train_size`` then keeps the first that many training samples (a small set that GRPO
        revisits every few steps, as the CPU demos use).
        """
        samples = self._source()
        held = math.ceil(len(samples) * self.options.test_fraction) if self.options.test_fraction > 0 else 0
        if held >= len(samples):
            raise DataError(
                self.options.data,
                f"test_fraction {self.options.test_fraction} leaves no training samples out of {len(samples)}",
            )
        order = list(range(len(samples)))
        random.Random(self.options.seed).shuffle(order)
        test_idx = set(order[:held])
        train = [s for i, s in enumerate(samples) if i not in test_idx]
        test = [s for i, s in enumerate(samples) if i in test_idx]
        return train[: self.options.train_size], test

    def samples(self, split: str = "train") -> list[Sample]:
        if split in ("train", "test"):
            train, test = self._split()
            return train if split == "train" else self._cap(test)
        return self._cap(self._eval_set(split))

    def _cap(self, samples: list[Sample]) -> list[Sample]:
        return samples[: self.options.eval_size] if self.options.eval_size else list(samples)
