"""Pure answer metrics: SQuAD normalisation, string metrics and their edge cases, extraction rules."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memfactory.envs.answer_metrics import (
    em,
    extract_answer_is,
    extract_boxed,
    extract_prediction,
    f1,
    normalize_answer,
    string_match_all,
    sub_em,
)

# --------------------------------------------------------------------------- helpers


def test_normalize_answer_squad_rules():
    # punctuation is DELETED, as in SQuAD and MemAgent: "U.S. Army" = "US Army", "1,500" = "1500"
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("U.S. Army") == normalize_answer("US Army") == "us army"
    assert normalize_answer("1,500") == "1500"
    assert em("U.S. Army", "US Army") == 1.0 and em("1,500", "1500") == 1.0
    assert normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("  ") == ""
    # articles only as whole words
    assert normalize_answer("Theatre Anatomy") == "theatre anatomy"


def test_normalize_answer_unicode():
    assert normalize_answer("«Zürich»") == "zürich"
    assert normalize_answer("São Paulo — Brazil") == "são paulo brazil"
    assert normalize_answer("ＰＡＲＩＳ") == "paris"  # full-width letters fold under NFKC
    assert sub_em("It is Zürich.", "zürich") == 1.0


def test_em_sub_em_f1():
    assert em("the Paris", "Paris") == 1.0
    assert em("Paris, France", "Paris") == 0.0
    assert sub_em("Paris, France", "Paris") == 1.0  # gold inside prediction
    assert sub_em("Paris", "Paris, France") == 1.0  # prediction inside gold
    assert sub_em("", "Paris") == 0.0
    assert sub_em("the", "Paris") == 0.0  # normalises to empty
    assert em("", "") == 0.0
    assert f1("new york city", "New York") == pytest.approx(0.8)
    assert f1("boston", "New York") == 0.0
    assert f1("", "x") == 0.0


def test_string_match_all_ruler():
    assert string_match_all("abcdef, ghijkl and xxxxxx", ["abcdef", "ghijkl", "mnopqr"]) == pytest.approx(2 / 3)
    assert string_match_all("ABCDEF", ["abcdef"]) == 1.0
    assert string_match_all("anything", []) == 0.0


def test_extract_boxed_nested_and_unclosed():
    assert extract_boxed(r"so \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{a} then \boxed{b}") == "b"
    assert extract_boxed(r"\boxed{Paris") is None
    assert extract_boxed(r"\boxed{a} and \boxed{b") is None  # the last one is unclosed
    assert extract_boxed("no box") is None
    assert extract_boxed(r"\boxed{}") == ""


def test_extract_answer_is_and_thinking():
    assert extract_answer_is("I think the answer is: Rome. The Answer is Oslo") == "Oslo"
    assert extract_answer_is("nothing here") is None
    # thinking is dropped with memfactory.text.strip_thinking (the one copy; tested in tests/modules)
    assert extract_prediction("<think>the answer is x</think>\nreal") == "real"
    assert extract_prediction("<think>a</think>b</think>c") == "c"
    assert extract_prediction("<think>the answer is x") is None  # never closed: nothing was answered
    assert extract_prediction("plain") == "plain"


def test_extract_prediction_rules():
    assert extract_prediction(r"\boxed{Paris}") == "Paris"
    assert extract_prediction(r"the answer is Rome. \boxed{Paris}") == "Paris"  # boxed first
    assert extract_prediction("Blah. The answer is Rome") == "Rome"
    assert extract_prediction("  Rome  ") == "Rome"
    assert extract_prediction(r"\boxed{Rome") is None  # started a box and never closed it
    assert extract_prediction("x" * 50, mode="boxed") is None
    assert extract_prediction("The answer is Rome", mode="raw") == "The answer is Rome"
    assert extract_prediction("<think>\\boxed{Oslo}</think>\\boxed{Rome}") == "Rome"
    assert extract_prediction("<think>\\boxed{Oslo}") is None
    long = "\\boxed{" + "word " * 20 + "}"
    assert extract_prediction(long) is None
    assert extract_prediction(long, max_boxed_chars=None) == ("word " * 20).strip()
    with pytest.raises(ValueError):
        extract_prediction("x", mode="nope")


# --------------------------------------------------------------------------- properties

_balanced = st.recursive(
    st.text(alphabet=st.characters(blacklist_characters="{}\\"), max_size=8),
    lambda inner: st.builds(lambda a, b: a + "{" + b + "}", inner, inner),
    max_leaves=6,
)


@given(_balanced, st.text(alphabet=st.characters(blacklist_characters="\\"), max_size=20))
def test_extract_boxed_returns_balanced_content(content, before):
    assert extract_boxed(before + "\\boxed{" + content + "}") == content


@given(st.text(max_size=30), st.text(max_size=30))
def test_sub_em_is_bounded_and_whole_token(a, b):
    assert sub_em(a, b) in (0.0, 1.0)
    assert 0.0 <= f1(a, b) <= 1.0
    assert em(a, b) <= sub_em(a, b)
    if sub_em(a, b):  # a paid prediction shares a whole token with the gold
        assert set(normalize_answer(a).split()) & set(normalize_answer(b).split())
    normal = normalize_answer(a)
    assert not any(ch in string.punctuation for ch in normal)
    assert not {"a", "an", "the"} & set(normal.split())


@given(st.text(max_size=30), st.text(max_size=30))
def test_sub_em_fragments_of_a_gold_never_pay(gold, cut):
    """Any strict character fragment of a one-token gold scores 0 (MemAgent's eval metric pays it)."""
    token = normalize_answer(gold).replace(" ", "")
    if len(token) >= 2:
        fragment = token[: max(1, len(cut) % len(token))]
        assert sub_em(fragment, token) == 0.0
