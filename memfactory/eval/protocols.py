"""Named evaluation protocols: how ``memfactory eval`` prompts, samples, caps and scores.

A number is only comparable with numbers made under the same protocol, so every report names
its protocol (table.md's first line, the printed header, ``eval.json``, each ``samples.jsonl``
record) and an output folder made under one protocol refuses to be resumed under another.

``memagent`` -- MemAgent's published memory-agent evaluation (BytedTsinghua-SIA/MemAgent,
taskutils/memory_eval, ``--api recurrent``): its update and final-answer templates ("...format
your response as follows "Therefore, the answer is (insert answer here)""), no system prompt,
no assistant prefix (a RULER sample's ``answer_prefix`` is not used); chunks of 5000 tokens, the
whole context (no chunk cap), memory and answer capped at 1024 new tokens, no stop strings;
temperature 0.7, top-p 0.95, one answer per question (k = 1, avg@1). Scoring: MemAgent's
extraction (after ``</think>``; "the answer is", else the last ``\\boxed{}``; nothing found -> 0,
no raw-text fallback, no length cap) and metrics: ``memagent_sub_em`` against ``answers[0]`` for
QA sets (HotpotQA ``eval_N``, RULER ``qa_*``), ``memagent_string_match_all`` for the other RULER
tasks, ``memagent_f1`` where a set names f1 (LoCoMo).

``memfactory`` -- the MemFactory paper's evaluation (arXiv 2603.29493): the preset's modules with
the boxed final-answer template (``put the answer in \\boxed{}``; a preset's own answer template
and assistant prefix are kept), the preset's chunk size without its chunk cap; temperature 1.0,
top-p 1.0, at most 2048 new tokens per call (fewer where the preset trains with fewer), 4 answers
per question (avg@4). Scoring: the LLM judge (``llm_judge``) when every evaluated preset has a
``judge:`` model, else ``boxed_em`` (the last ``\\boxed{}`` equals a gold); sets that name their own
metric keep it (RULER synthetic tasks ``string_match_all``, LoCoMo ``f1``).

Explicit ``memfactory eval`` flags (``--k``, ``--temperature``, ``--top-p``, ``--max-new-tokens``,
``--metric``) and ``--set modules.<slot>.<field>=...`` override the protocol's values; the
overridden values are what ``eval.json`` records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memfactory.config import Preset, parse_preset
from memfactory.errors import MemFactoryError
from memfactory.types import SamplingParams

_DROP = object()  # marker: remove the field so the module's default (MemAgent's value) applies


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    k: int
    temperature: float
    top_p: float
    max_new_tokens: int
    use_preset_stop: bool
    recurrent: Mapping[str, Any]  # field -> value (or _DROP) for every recurrent memory module
    metric_map: Mapping[str, str] = field(default_factory=dict)  # a set's metric -> the metric scored

    def default_metric(self, presets: Sequence[Preset]) -> str:
        """The metric of sets that do not name one."""
        if self.name == "memagent":
            return "memagent_sub_em"
        if presets and all(p.judge is not None for p in presets):
            return "llm_judge"
        return "boxed_em"

    def metric(self, name: str) -> str:
        return self.metric_map.get(name, name)

    def params(
        self,
        preset: Preset,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
    ) -> SamplingParams:
        """The protocol's sampling settings; an explicit argument (a CLI flag) wins."""
        trainer = preset.trainer
        cap = self.max_new_tokens if self.name == "memagent" else min(self.max_new_tokens, trainer.max_new_tokens)
        return SamplingParams(
            max_new_tokens=max_new_tokens if max_new_tokens is not None else cap,
            temperature=temperature if temperature is not None else self.temperature,
            top_p=top_p if top_p is not None else self.top_p,
            stop=list(trainer.stop) if self.use_preset_stop else [],
        )

    def apply(self, preset: Preset, overrides: Sequence[str] = ()) -> Preset:
        """The preset with the protocol's prompt settings on every recurrent memory module.

        A field the user set with ``--set modules.<slot>.<field>=...`` is left as they set it.
        """
        explicit = {o.split("=", 1)[0].strip() for o in overrides if "=" in o}
        data = preset.model_dump(mode="json", exclude_none=True)
        changed = False
        for slot, spec in data.get("modules", {}).items():
            if spec.get("type") != "recurrent":
                continue
            for key, value in self.recurrent.items():
                if f"modules.{slot}.{key}" in explicit:
                    continue
                if value is _DROP:
                    if key in spec:
                        del spec[key]
                        changed = True
                elif spec.get(key) != value:
                    spec[key] = value
                    changed = True
        return parse_preset(data, f"preset {preset.name!r} under --protocol {self.name}") if changed else preset

    def describe(self, k: int, params: SamplingParams) -> str:
        return (
            f"protocol {self.name}: avg@{k}, temperature {params.temperature}, top-p {params.top_p}, "
            f"max {params.max_new_tokens} new tokens"
        )


MEMAGENT = Protocol(
    name="memagent",
    summary="MemAgent's published eval: 'Therefore, the answer is' template, T 0.7, top-p 0.95, "
    "chunk 5000, memory/answer 1024 tokens, k 1, MemAgent's extraction and sub-EM",
    k=1,
    temperature=0.7,
    top_p=0.95,
    max_new_tokens=1024,
    use_preset_stop=False,
    recurrent={
        "chunk_tokens": _DROP,  # 5000
        "memory_tokens": _DROP,  # 1024
        "answer_tokens": _DROP,  # 1024
        "memory_init": _DROP,  # "No previous memory"
        "update_template": _DROP,  # MemAgent's update prompt
        "answer_template": _DROP,
        "answer_format": "answer_is",  # "... Therefore, the answer is (insert answer here)"
        "answer_prefix": _DROP,  # no assistant prefix
        "sample_answer_prefix": _DROP,  # RULER's answer_prefix is not used
        "system_prompt": _DROP,
        "update_stop": _DROP,
    },
    metric_map={
        "sub_em": "memagent_sub_em",
        "em": "memagent_em",
        "f1": "memagent_f1",
        "string_match_all": "memagent_string_match_all",
    },
)

MEMFACTORY = Protocol(
    name="memfactory",
    summary="the MemFactory paper's eval: boxed template, T 1.0, at most 2048 new tokens, avg@4, "
    "LLM judge (or boxed EM without a judge)",
    k=4,
    temperature=1.0,
    top_p=1.0,
    max_new_tokens=2048,
    use_preset_stop=True,
    recurrent={
        "answer_format": "boxed",  # "... put the answer in \\boxed{}" (a preset's own template is kept)
        "sample_answer_prefix": _DROP,  # RULER's answer_prefix: opt-in, off
    },
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (MEMAGENT, MEMFACTORY)}
DEFAULT_PROTOCOL = "memfactory"


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise MemFactoryError(f"unknown eval protocol {name!r}; choose one of {', '.join(PROTOCOLS)}") from None
