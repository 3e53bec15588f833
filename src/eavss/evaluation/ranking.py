"""Ranking metrics for answer-sentence selection: average precision, reciprocal rank, MAP and MRR.

For one question with candidates ranked by score (highest first) and ``R`` correct candidates at
1-based ranks ``r_1 < ... < r_R``:

* ``AP = (1/R) * sum_j precision@r_j = (1/R) * sum_j j / r_j``
* ``RR = 1 / r_1``

MAP and MRR are their means over questions (Voorhees 1999, TREC-8 QA track, for MRR; Yang et al.
2015, WikiQA, report both). A question with **no correct candidate** has neither AP nor RR; as in
Yang et al. 2015 (answer-sentence selection is evaluated on the questions that have a correct
sentence: 243 of WikiQA's 633 test questions) :func:`map_mrr` excludes it and reports how many were
excluded. ``exclude_all_correct=True`` also drops questions whose candidates are all correct
(trivially AP = RR = 1), the "clean" variant some later papers use (237 WikiQA test questions).

**Ties** (equal scores) are broken deterministically by ``ties``:

* ``"stable"`` (default): tied candidates keep their input order — what a stable sort by score
  does, and what the common WikiQA evaluation scripts do (Python ``sorted(..., reverse=True)``
  is stable), so numbers compare with published ones;
* ``"pessimistic"``: incorrect before correct among ties (a lower bound; a constant scorer gets
  the worst ranking, not the file order's);
* ``"optimistic"``: correct before incorrect (an upper bound).

:func:`map_mrr` counts the questions where a tie involved a correct and an incorrect candidate, so
it is visible when the choice matters.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

from eavss.errors import EavssError

TIES = ("stable", "pessimistic", "optimistic")
"""Accepted tie-breaking rules."""


def _check(scores: Sequence[float], labels: Sequence[int], ties: str) -> tuple[list[float], list[int]]:
    if ties not in TIES:
        raise EavssError(f"unknown ties rule {ties!r}; choose one of {', '.join(TIES)}")
    s = [float(x) for x in scores]
    y = [int(v) for v in labels]
    if len(s) != len(y):
        raise EavssError(f"{len(s)} scores but {len(y)} labels; pass one score per candidate")
    if not s:
        raise EavssError("a question has no candidates; pass at least one (score, label)")
    if any(not math.isfinite(x) for x in s):
        raise EavssError("a score is NaN or infinite; pass finite scores")
    if any(v not in (0, 1) for v in y):
        raise EavssError(f"labels must be 0 or 1, got {sorted(set(y) - {0, 1})}")
    return s, y


def ranked_labels(scores: Sequence[float], labels: Sequence[int], ties: str = "stable") -> list[int]:
    """Labels in rank order (highest score first), ties broken by ``ties`` (see the module docstring).

    Raises:
        EavssError: lengths differ, no candidate, a non-finite score, a label not 0/1, unknown ``ties``.
    """
    s, y = _check(scores, labels, ties)
    tie = {"stable": lambda i: 0, "pessimistic": lambda i: y[i], "optimistic": lambda i: -y[i]}[ties]
    return [y[i] for i in sorted(range(len(s)), key=lambda i: (-s[i], tie(i), i))]


def _no_correct(fn: str) -> EavssError:
    return EavssError(f"{fn}: the question has no correct candidate, so it is undefined; "
                      "exclude such questions (map_mrr does and reports the count)")


def average_precision(scores: Sequence[float], labels: Sequence[int], ties: str = "stable") -> float:
    """Average precision of one question: mean of precision@k over the ranks k of the correct candidates.

    Args:
        scores: one score per candidate (higher = ranked first). labels: 0/1 per candidate.
        ties: "stable" (default), "pessimistic" or "optimistic".

    Returns:
        AP in (0, 1].

    Raises:
        EavssError: no correct candidate (AP is undefined), or see :func:`ranked_labels`.
    """
    ranked = ranked_labels(scores, labels, ties)
    if not any(ranked):
        raise _no_correct("average_precision")
    hits, total = 0, 0.0
    for k, rel in enumerate(ranked, start=1):
        if rel:
            hits += 1
            total += hits / k
    return total / hits


def reciprocal_rank(scores: Sequence[float], labels: Sequence[int], ties: str = "stable") -> float:
    """1 / (1-based rank of the highest-ranked correct candidate).

    Raises:
        EavssError: no correct candidate (RR is undefined), or see :func:`ranked_labels`.
    """
    ranked = ranked_labels(scores, labels, ties)
    if not any(ranked):
        raise _no_correct("reciprocal_rank")
    return 1.0 / (ranked.index(1) + 1)


def _pair(q: object) -> tuple[Sequence[float], Sequence[int]]:
    if isinstance(q, Mapping):
        return q["scores"], q["labels"]
    scores, labels = q  # type: ignore[misc]
    return scores, labels


def map_mrr(
    per_question: Iterable[tuple[Sequence[float], Sequence[int]] | Mapping[str, Sequence]],
    ties: str = "stable",
    exclude_all_correct: bool = False,
) -> dict:
    """MAP and MRR over questions, excluding those with no correct candidate (Yang et al. 2015).

    Args:
        per_question: one ``(scores, labels)`` pair (or a dict with ``"scores"`` and ``"labels"``)
            per question.
        ties: tie rule for every question (see the module docstring).
        exclude_all_correct: also exclude questions whose candidates are all correct (default False).

    Returns:
        dict: ``map``, ``mrr`` (means over the evaluated questions), ``n_questions`` (given),
        ``n_evaluated``, ``n_excluded_no_correct``, ``n_excluded_all_correct``,
        ``n_with_mixed_ties`` (evaluated questions where a correct and an incorrect candidate tie),
        ``ties``, ``exclusion`` (the rule, in words).

    Raises:
        EavssError: no question left to evaluate, or a malformed question (see :func:`ranked_labels`).
    """
    n = no_correct = all_correct = mixed = 0
    aps: list[float] = []
    rrs: list[float] = []
    for q in per_question:
        n += 1
        scores, labels = _pair(q)
        s, y = _check(scores, labels, ties)
        if not any(y):
            no_correct += 1
            continue
        if exclude_all_correct and all(y):
            all_correct += 1
            continue
        by_score: dict[float, set[int]] = {}
        for sc, lab in zip(s, y):
            by_score.setdefault(sc, set()).add(lab)
        mixed += any(len(v) == 2 for v in by_score.values())
        aps.append(average_precision(s, y, ties))
        rrs.append(reciprocal_rank(s, y, ties))
    if not aps:
        raise EavssError(f"none of the {n} questions has a correct candidate to rank; MAP/MRR are undefined")
    rule = "questions with no correct candidate excluded (Yang et al. 2015)"
    if exclude_all_correct:
        rule += "; questions with only correct candidates excluded"
    return {
        "map": sum(aps) / len(aps),
        "mrr": sum(rrs) / len(rrs),
        "n_questions": n,
        "n_evaluated": len(aps),
        "n_excluded_no_correct": no_correct,
        "n_excluded_all_correct": all_correct,
        "n_with_mixed_ties": mixed,
        "ties": ties,
        "exclusion": rule,
    }
