"""Judging the model's own answers against gold answers.

Normalisation (:func:`normalize_answer`) is the SQuAD v1.1 / TriviaQA / NQ-open rule -- lower
case, remove punctuation, remove the articles a/an/the, collapse whitespace (Rajpurkar et al.
2016, ``evaluate-v1.1.py``; the same function is used by NQ-open and, up to punctuation-as-space,
by TriviaQA's official scorer) -- with three documented extensions, each visible in the judge
record of the report:

* Unicode: NFKD, combining accents dropped ("Pokémon" = "Pokemon"), Unicode punctuation removed
  like ASCII punctuation (curly quotes, en dashes).
* Separators: ``- – — /`` become spaces ("Jay-Z" = "Jay Z"); other punctuation is deleted
  ("1,000" = "1000", "D.C." = "dc").
* Numbers (``number_words=True``): number words become digits ("two" = "2", "twenty-one" =
  "21"); digits are left alone.

A prediction is correct when its normalised form equals the normalised form of any gold alias
(``match="exact"``, the field's exact match). ``match="contains"`` also accepts an alias that occurs
as a whole-word span of the prediction, unless a negation word ("not", "no", "never", "isnt", ...)
occurs before it ("not Mark Twain" never matches "Mark Twain").
"""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Sequence

from eavss.errors import EavssError
from eavss.registry import choices

MATCH_MODES = choices(("exact", "normalised prediction equals a normalised alias (the field's rule)"),
                      ("contains", "a normalised alias occurs as a whole-word span, no negation before it"),
                      kind="judge match", key="judge.match")
SCIQ_MODES = choices(("options", "the four options are listed; the answer must equal the correct option"),
                     ("open", "no options shown; exact match to the correct option"), kind="SciQ judge", key="judge.sciq")

FORMAT_FAILURES = frozenset({"no_option"})
"""Judge details that mean the answer has the wrong *form* rather than a wrong fact: a SciQ answer
that names none of the four options it was shown (``judge_options``'s ``no_option``). The command
labels such answers ``format_failure`` and leaves them out of both classes by default."""

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SEPARATORS = re.compile(r"[-\u2010-\u2015/]")
_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
NEGATIONS = frozenset({"not", "no", "never", "neither", "nor", "none", "nobody", "nothing", "cannot", "cant",
                       "isnt", "arent", "wasnt", "werent", "dont", "doesnt", "didnt", "wont", "wouldnt",
                       "couldnt", "shouldnt", "hasnt", "havent", "hadnt", "aint"})
"""Negation words after normalisation (apostrophes are removed: "isn't" -> "isnt")."""


def _strip_accents(s: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKD", s) if not unicodedata.combining(ch))


def _remove_punct(s: str) -> str:
    s = _SEPARATORS.sub(" ", s)
    return "".join(ch for ch in s if ch not in string.punctuation and not unicodedata.category(ch).startswith("P"))


def _numbers_to_digits(tokens: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t in _TENS:
            v = _TENS[t]
            if i + 1 < len(tokens) and tokens[i + 1] in _UNITS and 0 < _UNITS[tokens[i + 1]] < 10:
                v += _UNITS[tokens[i + 1]]
                i += 1
            out.append(str(v))
        elif t in _UNITS:
            out.append(str(_UNITS[t]))
        else:
            out.append(t)
        i += 1
    return out


def normalize_answer(text: str, number_words: bool = True) -> str:
    """Normalise an answer for comparison (see the module doc for the exact rule and its source).

    Args:
        text: any string (``None`` is treated as empty).
        number_words: map number words to digits.

    Returns:
        The normalised string (possibly empty): lower case, no punctuation, no articles,
        single spaces.
    """
    s = _strip_accents(str(text or "")).lower().replace("_", " ")
    s = _remove_punct(s)
    s = _ARTICLES.sub(" ", s)
    tokens = s.split()
    if number_words:
        tokens = _numbers_to_digits(tokens)
    return " ".join(tokens)


def _span_positions(hay: list[str], needle: list[str]) -> list[int]:
    n = len(needle)
    return [i for i in range(len(hay) - n + 1) if hay[i:i + n] == needle]


def match_answer(prediction: str, golds: Sequence[str], mode: str = "exact", number_words: bool = True) -> dict:
    """Judge one prediction against gold aliases.

    Args:
        prediction: the model's answer text.
        golds: gold answers / aliases (any one matching suffices).
        mode: ``exact`` | ``contains`` (see the module doc).
        number_words: passed to :func:`normalize_answer`.

    Returns:
        ``{"correct": bool, "matched": alias or None, "detail": str, "prediction_normalized": str}``;
        ``detail`` is one of ``exact``, ``contained``, ``negated`` (alias found after a negation,
        not accepted), ``empty`` (nothing to judge), ``no_match``.

    Raises:
        EavssError: unknown mode.
    """
    if mode not in MATCH_MODES:
        raise EavssError(f"unknown judge mode {mode!r}; choose one of {list(MATCH_MODES)}")
    pred = normalize_answer(prediction, number_words)
    res = {"correct": False, "matched": None, "detail": "no_match", "prediction_normalized": pred}
    if not pred:
        res["detail"] = "empty"
        return res
    normed = [(g, normalize_answer(g, number_words)) for g in golds]
    normed = [(g, n) for g, n in normed if n]
    for g, n in normed:
        if pred == n:
            res.update(correct=True, matched=g, detail="exact")
            return res
    if mode == "contains":
        ptoks = pred.split()
        neg_at = [i for i, t in enumerate(ptoks) if t in NEGATIONS]
        negated = None
        for g, n in normed:
            for pos in _span_positions(ptoks, n.split()):
                if any(i < pos for i in neg_at):
                    negated = negated or g
                    continue
                res.update(correct=True, matched=g, detail="contained")
                return res
        if negated is not None:
            res.update(detail="negated", matched=None)
    return res


def judge_options(prediction: str, options: Sequence[str], correct: str, number_words: bool = True) -> dict:
    """Judge a multiple-choice answer generated with the options shown (SciQ ``options`` mode).

    The prediction is mapped to the option whose normalised text it equals exactly. It is correct
    only if that option is ``correct``; an answer equal to no option is wrong (``detail="no_option"``).

    Returns:
        ``{"correct", "matched", "detail" ("exact" | "distractor" | "no_option" | "empty"),
        "prediction_normalized"}``.
    """
    pred = normalize_answer(prediction, number_words)
    res = {"correct": False, "matched": None, "detail": "no_option", "prediction_normalized": pred}
    if not pred:
        res["detail"] = "empty"
        return res
    for opt in options:
        if pred == normalize_answer(opt, number_words):
            ok = normalize_answer(opt, number_words) == normalize_answer(correct, number_words)
            res.update(correct=ok, matched=opt, detail="exact" if ok else "distractor")
            return res
    return res


def judge_rule(mode: str, number_words: bool, sciq: str, format_failure: str = "exclude") -> dict:
    """JSON-able description of the judge, for the report."""
    norm = ("lower case; NFKD and drop accents; '-', dashes and '/' -> space; remove ASCII and Unicode "
            "punctuation; remove articles a/an/the; collapse whitespace"
            + ("; number words -> digits (two -> 2, twenty-one -> 21)" if number_words else ""))
    rule = ("correct iff normalised prediction == normalised gold alias (any alias)" if mode == "exact" else
            "correct iff normalised prediction == a normalised alias, or an alias is a whole-word span of it with "
            f"no negation word ({', '.join(sorted(NEGATIONS)[:6])}, ...) before the span")
    sciq_rule = ("options listed in the prompt; correct iff the answer equals the correct option; equal to a "
                 "distractor = hallucinated; equal to no option = "
                 + ("format failure (not scored)" if format_failure == "exclude" else "hallucinated")
                 if sciq == "options" else
                 "no options in the prompt; judged like the open sources against the correct option")
    return {"normalisation": norm, "match": mode, "rule": rule, "sciq": sciq, "sciq_rule": sciq_rule,
            "label": "wrong answer = hallucinated (1), right answer = truthful (0); empty answers are kept in "
                     "samples.jsonl but excluded from the statistics (no answer tokens)"
                     + ("; answers of the wrong form (" + ", ".join(sorted(FORMAT_FAILURES)) + ") are labelled "
                        "format_failure and excluded from both classes" if format_failure == "exclude" else ""),
            "format_failure": format_failure,
            "source": "SQuAD v1.1 evaluate-v1.1.py normalize_answer, with the extensions listed"}
