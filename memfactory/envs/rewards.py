"""Answer-scoring rewards: exact match, sub-string match, token F1, RULER's string match, format,
an LLM judge, and MemAgent's own training reward and evaluation metrics.

The prediction is ``trajectory.answer`` exactly as the model wrote it, including any assistant
prefix that opened the turn (``"\\boxed{"``); the gold strings are ``trajectory.sample.answers``.

Two families of rewards are registered here; the metrics and the answer extraction behind them
are the pure functions of ``envs/answer_metrics.py``.

**MemAgent's definitions, reproduced** (BytedTsinghua-SIA/MemAgent: verl/utils/reward_score/
hotpotqa.py and taskutils/memory_eval; re-implemented from their published behaviour, checked by
the hand-derived tables in tests/envs/rewards_cases.yaml):

* ``boxed_em`` -- its TRAINING reward: the last ``\\boxed{...}`` within the last 300 characters of
  the lower-cased answer, compared with each lower-cased gold after its LaTeX-ish string clean-up
  (newlines and spaces removed, ``\\left``/``\\right``/``\\!``/``^\\circ``/``\\$``/``\\%`` dropped,
  ``tfrac``/``dfrac`` -> ``frac``); 1 if any gold is equal, 0 without a closed box. A fragment
  (``\\boxed{e}``), an empty box or an article (``\\boxed{the}``) never equals a gold.
* ``memagent_sub_em`` / ``memagent_em`` / ``memagent_f1`` / ``memagent_string_match_all`` -- its
  EVALUATION metrics, scored against ``answers[0]`` (string_match_all: against all golds). The
  prediction is extracted the MemAgent way (:func:`memagent_extract`): text after the last
  ``</think>`` (the whole response when nothing follows it), ``*`` removed, then the text after the
  last case-sensitive "the answer is" with the end-of-turn tokens and surrounding dots stripped,
  else the last ``\\boxed{}``; nothing found, or an empty prediction, scores 0 -- no raw-text
  fallback and no length cap. Normalisation (:func:`memagent_normalize`): lowercase, DELETE ASCII
  punctuation ("U.S. Army" = "US Army", "1,500" = "1500"), drop a/an/the, collapse spaces. F1 is
  0 when either side is yes/no/noanswer and they differ; f1 and string_match_all are rounded to 2
  decimals per answer, as MemAgent's scripts do.
  ``memagent_sub_em`` accepts a prediction that is ANY substring of the gold (``\\boxed{e}`` against
  "Paris, France" scores 1; so does ``\\boxed{the}``, which normalises to nothing), so these four
  are evaluation-only: naming one under ``rewards:`` of a preset is refused
  (:func:`memfactory.config.check_training_rewards`), with ``boxed_em`` or ``sub_em`` offered instead.

**MemFactory's answer rewards** (``em``, ``sub_em``, ``f1``, ``string_match_all``, ``format``,
``llm_judge``): the text is reduced to a prediction by ``extract_prediction``: thinking up to the
last ``</think>`` is dropped, then the last ``\\boxed{...}`` wins, else the text after the last "the
answer is", else the raw text (Memory-R1/LoCoMo answers are plain text). Normalisation is
SQuAD's/MemAgent's, extended to Unicode (NFKC, Unicode punctuation deleted too). Guards that keep
them honest as TRAINING rewards:

* ``sub_em`` counts WHOLE normalised tokens: the gold's tokens must appear as a contiguous run in the
  prediction's, or the prediction's tokens as a run in the gold's covering at least half of it
  ("Paris" for "Paris, France" scores 1; "e", "the", "" and "of" for "Bank of America" score 0).
  A character-level fragment of the gold is never paid.
* a ``\\boxed{`` that is never closed scores 0, and so does boxed content longer than
  ``max(40, 2 x the longest gold)`` characters (the cap scales with the gold, so a long gold can be
  matched, while boxing the whole document still cannot win a containment metric);
* an LLM judge call that fails or cannot be parsed is never a silent 0: it is retried, then
  counted in ``trajectory.counters["judge_failures"]`` (summed into the step metrics) and logged
  as a warning; it scores 0.0. If the judge backend raises on every attempt for the whole batch
  (server down) a ``MemFactoryError`` is raised instead.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

from memfactory.envs.answer_metrics import (
    MEMAGENT_BOXED_WINDOW,
    ExtractMode,
    boxed_cap,
    boxed_em,
    em,
    extract_boxed,
    extract_prediction,
    f1,
    memagent_boxed,
    memagent_em,
    memagent_extract,
    memagent_f1,
    memagent_sub_em,
    string_match_all,
    sub_em,
)
from memfactory.envs.base import Reward
from memfactory.errors import MemFactoryError
from memfactory.registry import register
from memfactory.text import strip_thinking
from memfactory.types import ChatPrompt, SamplingParams, Trajectory

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- rewards


def _golds(trajectory: Trajectory) -> list[str]:
    return [g for g in trajectory.sample.answers if isinstance(g, str)]


class AnswerReward(Reward):
    """A reward that compares an extracted prediction with the gold answers (best over golds)."""

    name = "answer"
    extract_mode: ExtractMode = "auto"
    max_boxed_chars: int | None = None  # None = scaled to the golds (boxed_cap); set an int to fix it

    def prediction(self, trajectory: Trajectory) -> str | None:
        cap = self.max_boxed_chars if self.max_boxed_chars is not None else boxed_cap(_golds(trajectory))
        return extract_prediction(trajectory.answer, self.extract_mode, cap)

    def metric(self, prediction: str, golds: list[str]) -> float:
        raise NotImplementedError

    def score(self, trajectories: list[Trajectory]) -> list[float]:
        scores = []
        for trajectory in trajectories:
            prediction = self.prediction(trajectory)
            golds = _golds(trajectory)
            scores.append(0.0 if not prediction or not golds else float(self.metric(prediction, golds)))
        return scores


@register("reward", "em", description="Exact match after SQuAD normalisation (boxed, else 'the answer is', else raw)")
class ExactMatch(AnswerReward):
    name = "em"

    def metric(self, prediction: str, golds: list[str]) -> float:
        return max(em(prediction, g) for g in golds)


@register(
    "reward",
    "sub_em",
    description="Whole-token sub-string match: gold tokens in the prediction, or the prediction covering "
    ">= half of the gold (no character fragments; safe to train on)",
)
class SubEM(AnswerReward):
    name = "sub_em"

    def metric(self, prediction: str, golds: list[str]) -> float:
        return max(sub_em(prediction, g) for g in golds)


@register("reward", "f1", description="SQuAD token F1 of the extracted answer against the best gold")
class TokenF1(AnswerReward):
    name = "f1"

    def metric(self, prediction: str, golds: list[str]) -> float:
        return max(f1(prediction, g) for g in golds)


@register("reward", "string_match_all", description="RULER: fraction of gold words contained in the answer")
class StringMatchAll(AnswerReward):
    name = "string_match_all"

    def metric(self, prediction: str, golds: list[str]) -> float:
        return string_match_all(prediction, golds)


@register(
    "reward",
    "format",
    description="1 for a closed, non-empty \\boxed{} answer of at most max(40, 2 x longest gold) characters, else 0",
)
class BoxedFormat(Reward):
    name = "format"
    max_boxed_chars: int | None = None  # None = scaled to the golds (boxed_cap)

    def score(self, trajectories: list[Trajectory]) -> list[float]:
        out = []
        for trajectory in trajectories:
            cap = self.max_boxed_chars if self.max_boxed_chars is not None else boxed_cap(_golds(trajectory))
            boxed = extract_boxed(strip_thinking(trajectory.answer or "")[0])
            out.append(float(boxed is not None and 0 < len(boxed.strip()) <= cap))
        return out


@register(
    "reward",
    "boxed_em",
    description="MemAgent's training reward: the last \\boxed{} in the last 300 characters equals a gold "
    "(lower-cased, spaces removed); 0 without a box",
)
class BoxedEM(Reward):
    name = "boxed_em"

    def prediction(self, trajectory: Trajectory) -> str | None:
        return memagent_boxed((trajectory.answer or "")[-MEMAGENT_BOXED_WINDOW:].lower())

    def score(self, trajectories: list[Trajectory]) -> list[float]:
        return [boxed_em(t.answer, _golds(t)) for t in trajectories]


class MemAgentMetric(Reward):
    """One of MemAgent's evaluation metrics: MemAgent extraction, 0 for no/empty prediction, ``answers[0]``."""

    name = "memagent"
    #: why it may not be trained on, and what to use instead (see memfactory.config.checks.eval_only_problems)
    eval_only: ClassVar[str] = (
        "it is MemAgent's evaluation metric, which pays a prediction that is any fragment of the gold "
        "(\\boxed{e} against 'Paris, France'); train with boxed_em (MemAgent's training reward) or sub_em "
        "(whole-token match)"
    )

    def prediction(self, trajectory: Trajectory) -> str | None:
        return memagent_extract(trajectory.answer)

    def metric(self, prediction: str, golds: list[str]) -> float:
        raise NotImplementedError

    def score(self, trajectories: list[Trajectory]) -> list[float]:
        scores = []
        for trajectory in trajectories:
            prediction, golds = self.prediction(trajectory), _golds(trajectory)
            scores.append(float(self.metric(prediction, golds)) if prediction and golds else 0.0)
        return scores


@register("reward", "memagent_sub_em", description="MemAgent's eval sub-EM against answers[0] (evaluation only)")
class MemAgentSubEM(MemAgentMetric):
    name = "memagent_sub_em"

    def metric(self, prediction: str, golds: list[str]) -> float:
        return memagent_sub_em(prediction, golds[0])


@register("reward", "memagent_em", description="MemAgent's eval exact match against answers[0] (evaluation only)")
class MemAgentEM(MemAgentMetric):
    name = "memagent_em"

    def metric(self, prediction: str, golds: list[str]) -> float:
        return memagent_em(prediction, golds[0])


@register(
    "reward", "memagent_f1", description="MemAgent's eval token F1 against answers[0], 2 decimals (evaluation only)"
)
class MemAgentF1(MemAgentMetric):
    name = "memagent_f1"

    def metric(self, prediction: str, golds: list[str]) -> float:
        return round(memagent_f1(prediction, golds[0]), 2)


@register(
    "reward",
    "memagent_string_match_all",
    description="MemAgent's RULER metric: fraction of golds in the extracted answer, 2 decimals (evaluation only)",
)
class MemAgentStringMatchAll(MemAgentMetric):
    name = "memagent_string_match_all"
    eval_only: ClassVar[str] = (
        "it is MemAgent's RULER evaluation metric and pays any answer that merely contains the gold words; "
        "train with boxed_em or sub_em"
    )

    def metric(self, prediction: str, golds: list[str]) -> float:
        return round(string_match_all(prediction, golds), 2)


# --------------------------------------------------------------------------- LLM judge

JUDGE_PROMPT = """You are grading an answer to a question. Decide whether the predicted answer means the same as the gold answer.
Question: {question}
Gold answer: {gold}
Predicted answer: {prediction}
Reply with exactly one word: True if the predicted answer is correct, False otherwise."""

_VERDICT = re.compile(r"\b(true|false)\b", re.IGNORECASE)


def parse_verdict(text: str) -> bool | None:
    """The first True/False word after any thinking; None when there is none."""
    match = _VERDICT.search(strip_thinking(text or "")[0])
    return None if match is None else match.group(1).lower() == "true"


@register(
    "reward",
    "llm_judge",
    description="An LLM compares the boxed answer with answers[0] (True/False); needs a judge backend",
)
class LLMJudge(Reward):
    """MemFactory's long-context reward: 0 without a ``\\boxed{}`` answer, else a judge's True/False.

    ``extract_mode`` is ``"boxed"`` as in MemFactory (set it to ``"auto"`` on a subclass to also
    judge "the answer is ..." and raw answers).

    ``judge`` is any ``Backend``; it is asked greedily. Unparseable or failed verdicts are retried
    ``retries`` times, then counted in ``trajectory.counters["judge_failures"]``, warned about, and
    scored 0.0 (visible in the metrics, never silent). If the backend raised on every attempt and
    no verdict at all came back, a ``MemFactoryError`` is raised: a dead judge must stop the run.
    """

    name = "llm_judge"
    extract_mode: ExtractMode = "boxed"
    max_boxed_chars: int | None = None  # None = scaled to the golds (boxed_cap)

    def __init__(self, judge: Any = None, retries: int = 2, prompt: str = JUDGE_PROMPT, max_new_tokens: int = 16):
        if judge is None:  # fail when the env is built, not after the first rollouts
            raise MemFactoryError("reward 'llm_judge' needs a judge backend: build rewards with judge=<Backend>")
        self.judge = judge
        self.retries = retries
        self.prompt = prompt
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)

    def score(self, trajectories: list[Trajectory]) -> list[float]:
        scores = [0.0] * len(trajectories)
        pending: dict[int, ChatPrompt] = {}
        for i, trajectory in enumerate(trajectories):
            cap = self.max_boxed_chars if self.max_boxed_chars is not None else boxed_cap(_golds(trajectory))
            prediction = extract_prediction(trajectory.answer, self.extract_mode, cap)
            if prediction and trajectory.sample.answers:
                text = self.prompt.format(
                    question=trajectory.sample.question, gold=trajectory.sample.answers[0], prediction=prediction
                )
                pending[i] = ChatPrompt(messages=[{"role": "user", "content": text}])
        errors: list[str] = []
        answered = False
        for _attempt in range(self.retries + 1):
            if not pending:
                break
            order = list(pending)
            try:
                generations = self.judge.generate([pending[i] for i in order], self.params)
            except Exception as exc:  # noqa: BLE001  a remote judge fails in many ways; each attempt is retried
                errors.append(f"{type(exc).__name__}: {exc}")
                log.warning("judge call failed (%s); retrying", errors[-1])
                continue
            answered = True
            for i, generation in zip(order, generations):
                verdict = parse_verdict(generation.text)
                if verdict is not None:
                    scores[i] = float(verdict)
                    del pending[i]
        if pending and not answered:
            raise MemFactoryError(f"the judge backend failed on every attempt ({self.retries + 1}): {errors[-1]}")
        for i in pending:
            trajectories[i].count("judge_failures")
        if pending:
            log.warning(
                "judge gave no True/False verdict for %d of %d answers after %d attempts; scored 0 and "
                "counted in judge_failures",
                len(pending),
                len(trajectories),
                self.retries + 1,
            )
        return scores
