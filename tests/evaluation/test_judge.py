"""The answer judge: SQuAD normalisation, exact and negation-guarded contains matching, options."""

from __future__ import annotations


import pytest

from eavss.errors import EavssError
from eavss.evaluation.judge import judge_options, match_answer, normalize_answer

TAU = 0.01



# ---------------------------------------------------------------------------------------------
# judge


@pytest.mark.parametrize("pred,golds,expected", [
    ("The Eiffel Tower", ["Eiffel Tower"], True),               # articles
    ("an apple", ["Apple"], True),
    ("Washington, D.C.", ["Washington DC"], True),               # punctuation
    ("washington d.c", ["Washington, D.C."], True),
    ("Paris.", ["paris"], True),
    ("1,000", ["1000"], True),                                   # numbers
    ("two", ["2"], True),
    ("twenty-one", ["21"], True),
    ("3", ["three"], True),
    ("3", ["13"], False),
    ("Jay-Z", ["Jay Z"], True),                                  # separators
    ("Pokémon", ["Pokemon"], True),                              # accents
    ("“Hamlet”", ["Hamlet"], True),                              # unicode quotes
    ("Mark Twain", ["Samuel Clemens", "Mark Twain"], True),      # aliases
    ("not Mark Twain", ["Mark Twain"], False),                   # negation, exact mode
    ("Twain", ["Mark Twain"], False),
    ("", ["x"], False),
    ("the", ["the"], False),                                     # empty after normalisation
])
def test_judge_exact(pred, golds, expected):
    assert match_answer(pred, golds, "exact")["correct"] is expected


@pytest.mark.parametrize("pred,golds,expected,detail", [
    ("It was Mark Twain", ["Mark Twain"], True, "contained"),
    ("not Mark Twain", ["Mark Twain"], False, "negated"),
    ("It is not Paris, it is London", ["Paris"], False, "negated"),
    ("Paris, not London", ["Paris"], True, "contained"),
    ("isn't Paris", ["Paris"], False, "negated"),
    ("Parisian food", ["Paris"], False, "no_match"),             # whole words only
    ("in 1969", ["1969"], True, "contained"),
])
def test_judge_contains_guards_negation(pred, golds, expected, detail):
    r = match_answer(pred, golds, "contains")
    assert r["correct"] is expected and r["detail"] == detail


def test_judge_normalisation_and_options():
    assert normalize_answer("  The  Quick, Brown-Fox!  ") == "quick brown fox"
    assert normalize_answer("Two Hundred", number_words=False) == "two hundred"
    opts = ["oxygen", "carbon dioxide", "nitrogen", "helium"]
    assert judge_options("Carbon dioxide.", opts, "carbon dioxide")["correct"]
    r = judge_options("oxygen", opts, "carbon dioxide")
    assert not r["correct"] and r["detail"] == "distractor"
    assert judge_options("water", opts, "carbon dioxide")["detail"] == "no_option"
    with pytest.raises(EavssError):
        match_answer("x", ["x"], "fuzzy")


def test_triviaqa_punctuation_becomes_a_space():
    """TriviaQA's official scorer replaces punctuation with a space (handle_punc); SQuAD deletes it."""
    assert normalize_answer("J.D. Salinger", punctuation="space") == normalize_answer("J. D. Salinger", punctuation="space")
    assert normalize_answer("J.D. Salinger") != normalize_answer("J. D. Salinger")  # SQuAD rule: "jd" vs "j d"
    assert match_answer("J. D. Salinger", ["J.D. Salinger"], punctuation="space")["correct"]
    assert not match_answer("J. D. Salinger", ["J.D. Salinger"])["correct"]
    with pytest.raises(EavssError, match="punctuation"):
        normalize_answer("x", punctuation="keep")
