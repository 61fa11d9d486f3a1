"""MemAgent's no-context filter with a real model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

from memfactory.eval.closed_book import TEMPLATE, ClosedBook, answered, known_questions


def test_answered_is_memagents_boxed_match_or_containment():
    assert answered("so the answer is \\boxed{Paris}", ["paris"])  # boxed, case-insensitive
    assert answered("It was Chief of Protocol, I think.", ["Chief of Protocol"])  # contained
    assert not answered("\\boxed{Lyon}", ["Paris"])
    assert answered("\\boxed{Pa ris}", ["Paris"])  # boxed_em drops spaces; "paris" is not in "pa ris"
    assert not answered("\\boxed{Pa ris}" + " and so on" * 40, ["Paris"])  # the box is outside the last 300 chars
    assert TEMPLATE.format(prompt="Q?") == "Q?\nYour final answer in \\boxed{}.\n"


def test_a_question_the_model_knows_is_caught_and_an_invented_one_is_not(smollm2_backend):
    questions = [
        (7, "What is the capital of France?", ["Paris"]),
        (9, "What is the capital city of the invented country Zorblaxia?", ["Quentarillo Vexmoor"]),
    ]
    how = ClosedBook(max_new_tokens=32)
    assert known_questions(smollm2_backend, questions, how) == {7}
    assert known_questions(smollm2_backend, questions, how) == {7}  # seeded: the same answers again
