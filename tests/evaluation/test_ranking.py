"""eavss.evaluation.ranking: AP, RR, MAP and MRR against hand-computed values; exclusions; ties."""

from __future__ import annotations

import pytest

from eavss.errors import EavssError
from eavss.evaluation.ranking import average_precision, map_mrr, ranked_labels, reciprocal_rank

Q1 = ([0.9, 0.8, 0.7, 0.6, 0.5], [0, 1, 0, 1, 1])  # correct at ranks 2, 4, 5
Q2 = ([0.1, 0.3, 0.2], [1, 0, 0])  # correct at rank 3
Q_NONE = ([0.5, 0.4], [0, 0])
Q_ALL = ([0.2, 0.1], [1, 1])


def test_average_precision_and_reciprocal_rank_by_hand():
    assert average_precision(*Q1) == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)
    assert reciprocal_rank(*Q1) == pytest.approx(1 / 2)
    assert average_precision(*Q2) == pytest.approx(1 / 3)
    assert reciprocal_rank(*Q2) == pytest.approx(1 / 3)
    assert average_precision(*Q_ALL) == 1.0 and reciprocal_rank(*Q_ALL) == 1.0
    assert average_precision([3.0], [1]) == 1.0


def test_map_mrr_by_hand_and_exclusions():
    res = map_mrr([Q1, Q2, Q_NONE, {"scores": Q_ALL[0], "labels": Q_ALL[1]}])
    ap1, ap2 = (0.5 + 0.5 + 0.6) / 3, 1 / 3
    assert res["map"] == pytest.approx((ap1 + ap2 + 1) / 3)
    assert res["mrr"] == pytest.approx((0.5 + 1 / 3 + 1) / 3)
    assert (res["n_questions"], res["n_evaluated"], res["n_excluded_no_correct"], res["n_excluded_all_correct"]) == (4, 3, 1, 0)
    clean = map_mrr([Q1, Q2, Q_NONE, Q_ALL], exclude_all_correct=True)
    assert clean["map"] == pytest.approx((ap1 + ap2) / 2) and clean["mrr"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert (clean["n_evaluated"], clean["n_excluded_no_correct"], clean["n_excluded_all_correct"]) == (2, 1, 1)
    with pytest.raises(EavssError, match="none of the 1 questions"):
        map_mrr([Q_NONE])
    with pytest.raises(EavssError, match="undefined"):
        average_precision(*Q_NONE)
    with pytest.raises(EavssError, match="undefined"):
        reciprocal_rank(*Q_NONE)


def test_ties_are_deterministic_and_documented():
    tied = ([1.0, 1.0, 1.0], [0, 1, 0])
    assert ranked_labels(*tied) == [0, 1, 0]
    assert average_precision(*tied) == pytest.approx(1 / 2)
    assert average_precision(*tied, ties="pessimistic") == pytest.approx(1 / 3)
    assert average_precision(*tied, ties="optimistic") == 1.0
    partly = ([0.5, 0.5, 0.2], [1, 0, 1])
    assert average_precision(*partly) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(*partly, ties="pessimistic") == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert reciprocal_rank(*partly, ties="pessimistic") == pytest.approx(1 / 2)
    res = map_mrr([tied, partly, Q1])
    assert res["n_with_mixed_ties"] == 2 and res["ties"] == "stable"


def test_matches_sklearn_without_ties():
    import numpy as np
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 12))
        labels = rng.integers(0, 2, n)
        if not labels.any():
            labels[0] = 1
        scores = rng.permutation(n).astype(float)  # distinct scores
        assert average_precision(scores.tolist(), labels.tolist()) == pytest.approx(average_precision_score(labels, scores))


def test_validation():
    with pytest.raises(EavssError, match="scores but"):
        average_precision([1.0, 2.0], [1])
    with pytest.raises(EavssError, match="no candidates"):
        average_precision([], [])
    with pytest.raises(EavssError, match="NaN"):
        average_precision([float("nan")], [1])
    with pytest.raises(EavssError, match="0 or 1"):
        average_precision([1.0], [2])
    with pytest.raises(EavssError, match="ties"):
        average_precision([1.0], [1], ties="random")
