"""``memfactory data check``: does a data set fit the recurrent memory's reading budget?

A MemAgent preset reads at most ``max_chunks x chunk_tokens`` tokens of a training context; a
longer context is cut (``truncate: middle`` drops its middle) and the documents there are never
read, so the question may become unanswerable while the reward still expects the gold. MemAgent's
training parquet holds 50-80 documents a question (~10K tokens) while the paper presets read
6 x 2500 = 15000 tokens; a set with 200 documents (~28K tokens) would lose about half of every
context. This module counts documents and tokens per context and says how much a budget cuts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from memfactory.data.synth import approx_tokens
from memfactory.types import Sample

# The MemAgent GPU presets' budget (presets/memagent_qwen3_*.yaml): 6 chunks of 2500 tokens.
DEFAULT_CHUNK_TOKENS = 2500
DEFAULT_MAX_CHUNKS = 6
WARN_FRACTION = 0.5  # warn when more than half of the contexts would be cut
_DOCUMENT = re.compile(r"^Document \d+:", re.MULTILINE)


def count_documents(sample: Sample) -> int | None:
    """``meta["num_docs"]`` when the record carries it, else the ``Document N:`` headers; None if neither."""
    meta = sample.meta if isinstance(sample.meta, dict) else {}
    if isinstance(meta.get("num_docs"), int):
        return int(meta["num_docs"])
    found = len(_DOCUMENT.findall(sample.context or ""))
    return found or None


@dataclass
class BudgetReport:
    """Documents and tokens per context against ``max_chunks x chunk_tokens`` (None = no cap)."""

    samples: int
    chunk_tokens: int
    max_chunks: int | None
    truncate: str
    tokens: list[int]
    documents: list[int]  # per context that has a count
    cut: int  # contexts longer than the budget
    kept_fraction: float  # mean share of a cut context that is read
    unread_documents: float  # mean documents of a cut context that are never read (proportional estimate)
    exact_tokens: bool  # a tokenizer counted (else ~4 characters a token)
    source: str  # where the budget came from

    @property
    def budget(self) -> int | None:
        return None if self.max_chunks is None else self.max_chunks * self.chunk_tokens

    @property
    def cut_fraction(self) -> float:
        return self.cut / self.samples if self.samples else 0.0

    def lines(self) -> list[str]:
        unit = "tokens" if self.exact_tokens else "tokens (~4 characters a token; --tokenizer to count exactly)"
        out = []
        if self.documents:
            mean = sum(self.documents) / len(self.documents)
            out.append(
                f"documents per context: {min(self.documents)}-{max(self.documents)}, mean {mean:.1f} "
                f"({len(self.documents)} of {self.samples} contexts counted)"
            )
        if self.tokens:
            out.append(
                f"context length: {min(self.tokens)}-{max(self.tokens)} {unit}, mean {sum(self.tokens) // len(self.tokens)}"
            )
        if self.budget is None:
            out.append(f"reading budget ({self.source}): no chunk cap, every context is read whole")
            return out
        out.append(
            f"reading budget ({self.source}): max_chunks x chunk_tokens = {self.max_chunks} x {self.chunk_tokens} = "
            f"{self.budget} tokens; {self.cut} of {self.samples} contexts ({self.cut_fraction:.0%}) are longer"
        )
        if self.cut:
            out.append(
                f"  a longer context is cut (truncate: {self.truncate}): on average {1 - self.kept_fraction:.0%} of it"
                + (f", ~{self.unread_documents:.1f} documents, is never read" if self.documents else " is never read")
            )
        return out

    def warning(self) -> str | None:
        """A warning when most contexts would be cut, with what to change."""
        if self.budget is None or self.cut_fraction <= WARN_FRACTION:
            return None
        where = "in the middle" if self.truncate == "middle" else f"at the {self.truncate}"
        return (
            f"warning: {self.cut_fraction:.0%} of the contexts are longer than max_chunks x chunk_tokens = "
            f"{self.budget} tokens and would be cut {where} ({1 - self.kept_fraction:.0%} of each on average "
            "never read, the answer's documents possibly among them); raise max_chunks or chunk_tokens, or "
            "use a set with fewer documents per question"
        )


def budget_report(
    samples: Sequence[Sample],
    *,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    max_chunks: int | None = DEFAULT_MAX_CHUNKS,
    truncate: str = "middle",
    count_tokens: Callable[[str], int] | None = None,
    source: str = "the MemAgent GPU presets'",
) -> BudgetReport:
    """Count documents and tokens of every context and what ``max_chunks x chunk_tokens`` leaves of them."""
    counter = count_tokens or approx_tokens
    tokens = [counter(s.context or "") for s in samples]
    docs = [count_documents(s) for s in samples]
    budget = None if max_chunks is None else max_chunks * chunk_tokens
    kept, unread = [], []
    for n_tokens, n_docs in zip(tokens, docs):
        if budget is not None and n_tokens > budget:
            share = budget / n_tokens
            kept.append(share)
            if n_docs is not None:
                unread.append(n_docs * (1 - share))
    return BudgetReport(
        samples=len(samples),
        chunk_tokens=chunk_tokens,
        max_chunks=max_chunks,
        truncate=truncate,
        tokens=tokens,
        documents=[d for d in docs if d is not None],
        cut=len(kept),
        kept_fraction=sum(kept) / len(kept) if kept else 1.0,
        unread_documents=sum(unread) / len(unread) if unread else 0.0,
        exact_tokens=count_tokens is not None,
        source=source,
    )


def budget_from_preset(preset: Any) -> tuple[int, int | None, str] | None:
    """``(chunk_tokens, max_chunks, truncate)`` of the preset's recurrent memory module; None without one."""
    for spec in preset.modules.values():
        if spec.type == "recurrent":
            options = preset.component_options(spec, "module")  # the recurrent module's own schema
            return options.chunk_tokens, options.max_chunks, options.truncate
    return None
