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
