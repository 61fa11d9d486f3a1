"""Answer-scoring rewards: exact match, sub-string match, token F1, RULER's string match, format,
an LLM judge, and MemAgent's own training reward and evaluation metrics.

The prediction is ``trajectory.answer`` exactly as the model wrote it, including any assistant
prefix that opened the turn (``"\\boxed{"``); the gold strings are ``trajectory.sample.answers``.

Two families of scorers live here.

**MemAgent's definitions, reproduced** (BytedTsinghua-SIA/MemAgent: verl/utils/reward_score/
hotpotqa.py and taskutils/memory_eval; re-implemented from their published behaviour, checked by
the hand-derived tables in tests/envs/rewards_cases.json):

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
import string
import unicodedata
from collections import Counter
from typing import Any, ClassVar, Literal

from memfactory.envs.base import Reward
from memfactory.errors import MemFactoryError
from memfactory.registry import register
from memfactory.types import ChatPrompt, SamplingParams, Trajectory

log = logging.getLogger(__name__)

ExtractMode = Literal["auto", "boxed", "answer_is", "raw"]
MAX_BOXED_CHARS = 40  # the floor of the boxed-length cap; the cap is max(40, 2 x the longest gold)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_BOXED = "\\boxed{"
_ANSWER_IS = re.compile(r"the answer is", re.IGNORECASE)


# --------------------------------------------------------------------------- text helpers


def normalize_answer(text: str) -> str:
    """SQuAD/MemAgent normalisation, Unicode-aware: NFKC, lowercase, DELETE punctuation (ASCII and
    Unicode: "U.S." = "US", "1,500" = "1500"), drop a/an/the, collapse spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT and not unicodedata.category(ch).startswith("P"))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def em(prediction: str, gold: str) -> float:
    pred = normalize_answer(prediction)
    return float(bool(pred) and pred == normalize_answer(gold))


def _contains_run(tokens: list[str], run: list[str]) -> bool:
    """Whether ``run`` occurs in ``tokens`` as a contiguous sequence of whole tokens."""
    n = len(run)
    return any(tokens[i : i + n] == run for i in range(len(tokens) - n + 1))


def sub_em(prediction: str, gold: str) -> float:
    """Whole-token sub-string match after normalisation (safe as a training reward).

    1 when the gold's tokens occur as a contiguous run in the prediction's, or the prediction's
    tokens occur as a run in the gold's and cover at least half of them; an empty side scores 0.
    A character fragment of the gold ("e" in "france") or a minor word of a longer gold ("of" in
    "Bank of America") is not paid; MemAgent's character-level metric is ``memagent_sub_em``.
    """
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return 0.0
    if _contains_run(pred, ref):
        return 1.0
    return float(2 * len(pred) >= len(ref) and _contains_run(ref, pred))


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


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the ``}`` that closes the first ``{`` at or after ``start`` (braces balanced); None if none does."""
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces; None when absent or unclosed."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    i = start + len(_BOXED)
    end = _closing_brace(text, i - 1)  # from the box's own "{"
    return None if end is None else text[i:end]


def extract_answer_is(text: str) -> str | None:
    """Text after the last "the answer is" (case-insensitive), stripped of a leading colon; None if absent."""
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].strip()
    return rest.lstrip(":").strip()


def boxed_cap(golds: list[str] | tuple[str, ...] = ()) -> int:
    """The longest boxed answer that may be scored: ``max(40, 2 x the longest gold)`` characters."""
    longest = max((len(g.strip()) for g in golds if isinstance(g, str)), default=0)
    return max(MAX_BOXED_CHARS, 2 * longest)


def extract_prediction(
    text: str, mode: ExtractMode = "auto", max_boxed_chars: int | None = MAX_BOXED_CHARS
) -> str | None:
    """The answer a response gives, or None when it gives none that may be scored.

    ``auto``: last boxed, else after "the answer is", else the raw text; ``boxed`` / ``answer_is``
    / ``raw`` use one rule only. A started but unclosed ``\\boxed{``, or boxed content longer than
    ``max_boxed_chars`` (None = no cap; rewards pass :func:`boxed_cap` of the golds), gives None
    (scored 0) instead of falling back to the raw text.
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


# --------------------------------------------------------------------------- MemAgent's definitions

MEMAGENT_BOXED_WINDOW = 300  # boxed_em reads only the last 300 characters of the answer
# Chat end-of-turn markers MemAgent's "the answer is" extraction removes (DeepSeek-R1 style).
_MEMAGENT_END_TOKENS = ("<\uff5cAssistant\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>")
_MEMAGENT_YES_NO = ("yes", "no", "noanswer")
# boxed_em's string clean-up, in order: (old, new) replacements before and after the decimal fix.
_LATEX_CLEANUP = (
    ("\n", ""),
    ("\\!", ""),
    ("\\\\", "\\"),
    ("tfrac", "frac"),
    ("dfrac", "frac"),
    ("\\left", ""),
    ("\\right", ""),
    ("^{\\circ}", ""),
    ("^\\circ", ""),
    ("\\$", ""),
    ("\\%", ""),
    (" .", " 0."),
    ("{.", "{0."),
)


def memagent_normalize(text: str) -> str:
    """MemAgent's (= SQuAD's) normalisation: lowercase, DELETE ASCII punctuation, a/an/the -> space, collapse."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def memagent_em(prediction: str, gold: str) -> float:
    return float(memagent_normalize(prediction) == memagent_normalize(gold))


def memagent_sub_em(prediction: str, gold: str) -> float:
    """MemAgent's headline metric: normalised gold in prediction, or prediction in gold (characters).

    An evaluation metric only: a prediction that normalises to "" is inside every gold.
    """
    pred, ref = memagent_normalize(prediction), memagent_normalize(gold)
    return float(ref in pred or pred in ref)


def memagent_f1(prediction: str, gold: str) -> float:
    """MemAgent's token F1 (unrounded): 0 when a yes/no/noanswer side differs from the other."""
    pred, ref = memagent_normalize(prediction), memagent_normalize(gold)
    if (pred in _MEMAGENT_YES_NO or ref in _MEMAGENT_YES_NO) and pred != ref:
        return 0.0
    common = Counter(pred.split()) & Counter(ref.split())
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred.split()), overlap / len(ref.split())
    return 2 * precision * recall / (precision + recall)


def memagent_boxed(text: str) -> str | None:
    """Content of MemAgent's "last boxed" (``\\boxed{..}`` with balanced braces, or ``\\boxed x$``); None if none.

    As MemAgent: when ``"\\boxed "`` (with a space) occurs anywhere, the answer is the text after
    its last occurrence up to the first ``$``; else the last ``\\boxed`` must open a ``{`` whose
    brace closes (``\\fbox`` and unclosed boxes give None).
    """
    if "\\boxed " in text:
        return text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    end = _closing_brace(text, start)
    if end is None:
        return None
    whole = text[start : end + 1]
    return whole[len(_BOXED) : -1] if whole.startswith(_BOXED) else None


def _latex_clean(text: str) -> str:
    for old, new in _LATEX_CLEANUP:
        text = text.replace(old, new)
    return text.replace(" ", "")


def boxed_em(answer: str, golds: list[str] | tuple[str, ...]) -> float:
    """MemAgent's training reward: the last box in the last 300 characters equals a gold (see module doc)."""
    boxed = memagent_boxed((answer or "")[-MEMAGENT_BOXED_WINDOW:].lower())
    if boxed is None:
        return 0.0
    mine = _latex_clean(boxed)
    return float(any(mine == _latex_clean(gold.lower()) for gold in golds if isinstance(gold, str)))


def memagent_answer_text(response: str) -> str:
    """The text MemAgent extracts from: after the last ``</think>``; the whole response if that is empty."""
    response = (response or "").strip()
    if "</think>" not in response:
        return response
    return response.split("</think>")[-1].strip() or response


def memagent_extract(response: str) -> str | None:
    """MemAgent's evaluation extraction: the text after the last "the answer is" (case-sensitive,
    ``*`` removed, end-of-turn tokens and surrounding dots stripped), else the last ``\\boxed{}``;
    None when neither occurs. No raw-text fallback, no length cap."""
    text = memagent_answer_text(response)
    plain = text.replace("*", "")
    if "the answer is" in plain:
        answer = plain.rsplit("the answer is", 1)[-1].strip()
        for token in _MEMAGENT_END_TOKENS:
            answer = answer.replace(token, "")
        return answer.strip().strip(".").strip()
    return memagent_boxed(text)


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
            boxed = extract_boxed(strip_thinking(trajectory.answer or ""))
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
