"""AVSS math against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from eavss.errors import EavssError
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
