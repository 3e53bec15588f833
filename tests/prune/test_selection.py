"""The layer-selection rules, against hand-computed values."""


from __future__ import annotations

import numpy as np
import pytest

from eavss.errors import EavssError
from eavss.prune.selection import select_by_count, select_by_mass, select_layers


def test_count_rule_floor_and_protection():
    scores = np.array([5, 1, 4, 2, 3, 0.5, 6, 7], dtype=float)
    assert select_by_count(scores, 0.25) == [1, 5]          # floor(0.25*8) = 2 lowest
    assert select_by_count(scores, 0.3) == [1, 5]           # floor(2.4) = 2
    assert select_by_count(scores, 0.5, protect_first=2) == [2, 3, 4, 5]  # floor(0.5*8)=4 among layers 2..7
    assert select_by_count(np.arange(30.0)[::-1], 0.25) == list(range(23, 30))  # 7 of 30
    # protection changes which layers go, never how many: floor(0.25 * 30) = 7 with 1 + 1 protected
    assert select_by_count(np.arange(30.0)[::-1], 0.25, protect_first=1, protect_last=1) == list(range(22, 29))
    with pytest.raises(EavssError, match="leaves 2 candidates"):
        select_by_count(scores, 0.5, protect_first=3, protect_last=3)


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
