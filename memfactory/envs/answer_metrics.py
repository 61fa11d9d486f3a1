"""Pure answer metrics: normalisation, string metrics and answer extraction (no registry, no model).

The scores behind the registered rewards of ``envs/rewards.py`` and behind ``memfactory eval``'s
per-sample metrics, in two families (the module docstring of ``rewards.py`` says which reward uses
which, and why some are evaluation-only):

**MemAgent's definitions, reproduced** (BytedTsinghua-SIA/MemAgent: verl/utils/reward_score/
hotpotqa.py and taskutils/memory_eval; re-implemented from their published behaviour, checked by
the hand-derived tables in tests/envs/rewards_cases.yaml): ``boxed_em`` (its training reward),
``memagent_normalize`` / ``memagent_em`` / ``memagent_sub_em`` / ``memagent_f1``, its box reader
``memagent_boxed`` and its evaluation extraction ``memagent_extract``.

**MemFactory's answer metrics**: ``normalize_answer`` (SQuAD's/MemAgent's, extended to Unicode),
``em``, whole-token ``sub_em``, token ``f1``, RULER's ``string_match_all``, and
``extract_prediction`` (thinking dropped with ``text.strip_thinking``; last closed ``\\boxed{}``,
else "the answer is", else the raw text; an unclosed or over-long box gives None).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Literal

from memfactory.text import strip_thinking

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
    visible = strip_thinking(text or "")[0]
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


__all__ = [
    "MAX_BOXED_CHARS",
    "MEMAGENT_BOXED_WINDOW",
    "ExtractMode",
    "boxed_cap",
    "boxed_em",
    "em",
    "extract_answer_is",
    "extract_boxed",
    "extract_prediction",
    "f1",
    "memagent_answer_text",
    "memagent_boxed",
    "memagent_em",
    "memagent_extract",
    "memagent_f1",
    "memagent_normalize",
    "memagent_sub_em",
    "normalize_answer",
    "string_match_all",
    "sub_em",
]
