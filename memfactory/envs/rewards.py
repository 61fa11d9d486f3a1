"""Answer-scoring rewards: exact match, sub-string match, token F1, RULER's string match, format,
and an LLM judge.

The prediction is ``trajectory.answer`` exactly as the model wrote it, including any assistant
prefix that opened the turn (``"\\boxed{"``); the gold strings are ``trajectory.sample.answers``.
The text is reduced to a prediction by ``extract_prediction``: thinking up to the last
``</think>`` is dropped, then the last ``\\boxed{...}`` wins, else the text after the last "the
answer is", else the raw text (MemAgent scores boxed answers in training and "the answer is" in
evaluation). Two guards keep rewards honest:

* a ``\\boxed{`` that is never closed, or boxed content longer than ``max_boxed_chars`` (40 by
  default), scores 0 — otherwise boxing the whole document would win a containment metric;
* an LLM judge call that fails or cannot be parsed is never a silent 0: it is retried, then
  counted in ``trajectory.counters["judge_failures"]`` (summed into the step metrics) and logged
  as a warning; it scores 0.0. If the judge backend raises on every attempt for the whole batch
  (server down) a ``MemFactoryError`` is raised instead.
"""

from __future__ import annotations

import logging
import re
import string
import unicodedata
from collections import Counter
from typing import Any, Literal

from memfactory.envs.base import Reward
from memfactory.errors import MemFactoryError
from memfactory.registry import register
from memfactory.types import ChatPrompt, SamplingParams, Trajectory

log = logging.getLogger(__name__)

ExtractMode = Literal["auto", "boxed", "answer_is", "raw"]
MAX_BOXED_CHARS = 40
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_BOXED = "\\boxed{"
_ANSWER_IS = re.compile(r"the answer is", re.IGNORECASE)


# --------------------------------------------------------------------------- text helpers


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, strip punctuation (ASCII and Unicode), drop a/an/the, collapse spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch in _PUNCT or unicodedata.category(ch).startswith("P") else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def em(prediction: str, gold: str) -> float:
    return float(bool(normalize_answer(prediction)) and normalize_answer(prediction) == normalize_answer(gold))


def sub_em(prediction: str, gold: str) -> float:
    """Gold inside prediction or prediction inside gold, after normalisation; an empty side scores 0."""
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if not pred or not ref:
        return 0.0
    return float(ref in pred or pred in ref)


def f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 over normalised tokens."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(pred) & Counter(ref)
    overlap = sum(common.values())
    if not pred or not ref or overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def string_match_all(prediction: str, golds: list[str]) -> float:
    """RULER: the fraction of gold strings contained (case-insensitive) in the prediction."""
    if not golds:
        return 0.0
    pred = prediction.lower()
    return sum(1.0 for gold in golds if gold.lower() in pred) / len(golds)


def strip_thinking(text: str) -> str:
    """Drop everything up to the last ``</think>``; an opened, never-closed block leaves nothing."""
    close = text.rfind("</think>")
    if close >= 0:
        return text[close + len("</think>") :]
    if "<think>" in text:
        return ""
    return text


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces; None when absent or unclosed."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def extract_answer_is(text: str) -> str | None:
    """Text after the last "the answer is" (case-insensitive), stripped of a leading colon; None if absent."""
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].strip()
    return rest.lstrip(":").strip()


def extract_prediction(
    text: str, mode: ExtractMode = "auto", max_boxed_chars: int | None = MAX_BOXED_CHARS
) -> str | None:
    """The answer a response gives, or None when it gives none that may be scored.

    ``auto``: last boxed, else after "the answer is", else the raw text; ``boxed`` / ``answer_is``
    / ``raw`` use one rule only. A started but unclosed ``\\boxed{``, or boxed content longer than
    ``max_boxed_chars``, gives None (scored 0) instead of falling back to the raw text.
    """
    visible = strip_thinking(text or "")
    if mode in ("auto", "boxed"):
        boxed = extract_boxed(visible)
        if boxed is not None:
            if max_boxed_chars is not None and len(boxed.strip()) > max_boxed_chars:
                return None
            return boxed.strip() or None
        if mode == "boxed" or _BOXED in visible:
            return None
    if mode in ("auto", "answer_is"):
        after = extract_answer_is(visible)
        if after:
            return after
        if mode == "answer_is":
            return None
    if mode in ("auto", "raw"):
        return visible.strip() or None
    raise ValueError(f"unknown extraction mode {mode!r}; expected auto, boxed, answer_is or raw")


# --------------------------------------------------------------------------- rewards


class AnswerReward(Reward):
    """A reward that compares an extracted prediction with the gold answers (best over golds)."""

    name = "answer"
    extract_mode: ExtractMode = "auto"
    max_boxed_chars: int = MAX_BOXED_CHARS

    def prediction(self, trajectory: Trajectory) -> str | None:
        return extract_prediction(trajectory.answer, self.extract_mode, self.max_boxed_chars)

    def metric(self, prediction: str, golds: list[str]) -> float:
        raise NotImplementedError

    def score(self, trajectories: list[Trajectory]) -> list[float]:
        scores = []
        for trajectory in trajectories:
            prediction = self.prediction(trajectory)
            golds = [g for g in trajectory.sample.answers if isinstance(g, str)]
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
    description="Sub-string exact match, gold in prediction or prediction in gold (MemAgent's headline metric)",
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


@register("reward", "format", description="1 for a closed, non-empty \\boxed{} answer of at most 40 characters, else 0")
class BoxedFormat(Reward):
    name = "format"
    max_boxed_chars: int = MAX_BOXED_CHARS

    def score(self, trajectories: list[Trajectory]) -> list[float]:
        out = []
        for trajectory in trajectories:
            boxed = extract_boxed(strip_thinking(trajectory.answer or ""))
            out.append(float(boxed is not None and 0 < len(boxed.strip()) <= self.max_boxed_chars))
        return out


# --------------------------------------------------------------------------- LLM judge

JUDGE_PROMPT = """You are grading an answer to a question. Decide whether the predicted answer means the same as the gold answer.
Question: {question}
Gold answer: {gold}
Predicted answer: {prediction}
Reply with exactly one word: True if the predicted answer is correct, False otherwise."""

_VERDICT = re.compile(r"\b(true|false)\b", re.IGNORECASE)


def parse_verdict(text: str) -> bool | None:
    """The first True/False word after any thinking; None when there is none."""
    match = _VERDICT.search(strip_thinking(text or ""))
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
    max_boxed_chars: int = MAX_BOXED_CHARS

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
            prediction = extract_prediction(trajectory.answer, self.extract_mode, self.max_boxed_chars)
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
