"""AVSS math and the layer-selection rules, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from eavss.errors import EavssError
from eavss.prune.selection import select_by_count, select_by_mass, select_layers
from eavss.scores.avss import avss_scores, guarded_sparsity, importance_rank, normalise


def test_avss_hand_computed():
    var = np.array([1.0, 2.0, 3.0, 4.0])
    sp = np.array([0.1, 0.1, 0.3, 0.5])
    out = avss_scores(var, sp, n_elements=np.full(4, 1000.0))
    v_n = var / 10.0
    s_n = sp / 1.0
    np.testing.assert_allclose(out["var_norm"], v_n)
    np.testing.assert_allclose(out["sparsity_norm"], s_n)
    np.testing.assert_allclose(out["avss"], v_n / s_n)
    np.testing.assert_allclose(out["avss_norm"].sum(), 1.0)
    # avss = [1, 2, 1, 0.8] -> most important is layer 1, then 0 (tie with 2 broken by index), 2, 3
    assert out["importance_rank"].tolist() == [2, 1, 3, 4]
    assert not out["guard_hit"].any()


def test_max_normalisation_keeps_ranking():
    var = np.array([5.0, 1.0, 3.0])
    sp = np.array([0.2, 0.05, 0.4])
    a = avss_scores(var, sp, np.full(3, 100.0), normalisation="sum")
    b = avss_scores(var, sp, np.full(3, 100.0), normalisation="max")
    assert a["importance_rank"].tolist() == b["importance_rank"].tolist()


def test_zero_sparsity_guard_keeps_avss_finite_and_reports_it():
    var = np.array([1.0, 1.0, 1.0])
    sp = np.array([0.0, 0.01, 0.02])
    out = avss_scores(var, sp, n_elements=np.array([1e4, 1e4, 1e4]))
    assert np.all(np.isfinite(out["avss"]))
    assert out["guard_hit"].tolist() == [True, False, False]
    g, _ = guarded_sparsity(sp, np.array([1e4, 1e4, 1e4]))
    assert g[0] == pytest.approx(0.5e-4)
    with pytest.raises(EavssError, match="infinite"):
        avss_scores(var, sp, np.full(3, 1e4), guard="none")


def test_normalise_errors():
    with pytest.raises(EavssError, match="unknown normalisation"):
        normalise(np.ones(3), "zscore")
    with pytest.raises(EavssError, match="every layer"):
        normalise(np.zeros(3))
    with pytest.raises(EavssError, match="finite"):
        normalise(np.array([1.0, np.nan]))


def test_importance_rank_ties_by_index():
    assert importance_rank(np.array([1.0, 1.0, 2.0])).tolist() == [2, 3, 1]


def test_count_rule_floor_and_protection():
    scores = np.array([5, 1, 4, 2, 3, 0.5, 6, 7], dtype=float)
    assert select_by_count(scores, 0.25) == [1, 5]          # floor(0.25*8) = 2 lowest
    assert select_by_count(scores, 0.3) == [1, 5]           # floor(2.4) = 2
    assert select_by_count(scores, 0.5, protect_first=2) == [3, 4, 5]  # floor(0.5*6)=3 among layers 2..7
    assert select_by_count(np.arange(30.0)[::-1], 0.25) == list(range(23, 30))  # 7 of 30


def test_mass_rule_sorts_before_cumsum():
    """The official code cumsums in layer order, then sorts: it would pick layers 0 and 1 here
    (cumulative 0.10, 0.20 in layer order) although they are the two most important."""
    scores = np.array([0.10, 0.10, 0.30, 0.02, 0.03, 0.05, 0.40])
    assert select_by_mass(scores, 0.10) == [3, 4, 5]         # 0.02 + 0.03 + 0.05 = 0.10
    assert select_by_mass(scores, 0.05) == [3, 4]
    # the buggy official order would have been:
    buggy = [i for i, c in enumerate(np.cumsum(scores / scores.sum())) if c <= 0.2 + 1e-12]
    assert buggy == [0, 1] and select_by_mass(scores, 0.2) == [0, 3, 4, 5]


def test_selection_errors():
    s = np.arange(1.0, 9.0)
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(EavssError, match=r"in \(0, 1\)"):
            select_by_count(s, bad)
    with pytest.raises(EavssError, match="rounds down to 0"):
        select_by_count(s, 0.1)
    with pytest.raises(EavssError, match="selects no layer"):
        select_by_mass(np.array([1.0, 1.0, 1.0]), 0.1)
    with pytest.raises(EavssError, match="leaves nothing"):
        select_by_count(s, 0.5, protect_first=4, protect_last=4)
    with pytest.raises(EavssError, match="unknown prune rule"):
        select_layers(s, rule="magic")
    with pytest.raises(EavssError, match="NaN"):
        select_by_count(np.array([1.0, np.nan, 2.0, 3.0]), 0.5)
