"""Rank agreement and removal cost against hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from eavss.scores.agreement import bottom_k, removal_cost


def test_removal_cost_against_hand_computation():
    cost = np.array([5.0, 0.1, 0.3, 2.0, 0.2])   # cheapest two: layers 1 (0.1) and 4 (0.2) -> 0.3
    score = np.array([1.0, 0.9, 0.1, 0.2, 3.0])   # lowest two: layers 2 (0.1) and 3 (0.2) -> 0.3 + 2.0
    r = removal_cost(score, cost, 2)
    assert r["removed"] == [2, 3] and r["oracle_removed"] == [1, 4] and r["overlap"] == 0
    assert r["cost"] == pytest.approx(2.3) and r["oracle_cost"] == pytest.approx(0.3) and r["excess"] == pytest.approx(2.0)
    assert removal_cost(-cost, cost, 2)["cost"] == pytest.approx(7.0)   # the worst choice
    assert removal_cost(cost, cost, 2)["excess"] == 0.0
    assert bottom_k([3, 1, 1, 0], 3) == [3, 1, 2]
    with pytest.raises(ValueError):
        removal_cost(score, cost, 0)


def test_spearman_ci_against_hand_computation_and_coverage():
    """Fisher z with se = sqrt(1.06 / (n - 3)): rho 0.79 over 30 layers by hand; NaN when undefined;
    narrower with more layers; and ~95 % coverage of the true rank correlation in simulation
    (bivariate normal, rho_s = 6/pi * asin(r/2))."""
    import math

    from eavss.scores.agreement import rank_agreement, spearman_ci

    se = math.sqrt(1.06 / 27)
    want = [math.tanh(math.atanh(0.79) - 1.959964 * se), math.tanh(math.atanh(0.79) + 1.959964 * se)]
    assert spearman_ci(0.79, 30) == pytest.approx(want, abs=1e-6)
    assert spearman_ci(0.79, 30)[0] == pytest.approx(0.594, abs=1e-3)
    assert np.isnan(spearman_ci(0.5, 3)).all() and np.isnan(spearman_ci(float("nan"), 30)).all()
    assert spearman_ci(1.0, 10)[1] == pytest.approx(1.0) and spearman_ci(-1.0, 10)[0] == pytest.approx(-1.0)
    lo30, hi30 = spearman_ci(0.3, 30)
    lo100, hi100 = spearman_ci(0.3, 100)
    assert lo30 < lo100 < 0.3 < hi100 < hi30
    r, n, trials = 0.6, 30, 2000
    true_rs = 6 / math.pi * math.asin(r / 2)
    g = np.random.default_rng(0)
    cov = [[1, r], [r, 1]]
    hits = 0
    for _ in range(trials):
        x = g.multivariate_normal([0, 0], cov, size=n)
        lo, hi = rank_agreement(x[:, 0], x[:, 1], 3)["spearman_ci"]
        hits += lo <= true_rs <= hi
    assert 0.93 <= hits / trials <= 0.975
