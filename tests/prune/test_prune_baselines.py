"""Score-free baselines: random and last-layers selection."""

from __future__ import annotations

import numpy as np
import pytest

from eavss.errors import EavssError
from eavss.prune.baselines import last_layers, random_layers


def test_random_layers_seeded_and_valid():
    a = random_layers(30, 7, seed=0)
    assert a == random_layers(30, 7, seed=0)  # deterministic
    assert a == sorted(int(i) for i in np.random.default_rng(0).choice(np.arange(30), 7, replace=False))
    assert len(a) == len(set(a)) == 7 and a == sorted(a) and all(0 <= i < 30 for i in a)
    assert all(type(i) is int for i in a)
    draws = {tuple(random_layers(30, 7, seed=s)) for s in range(20)}
    assert len(draws) > 15  # different seeds give different draws
    p = random_layers(10, 5, seed=3, protect_first=2, protect_last=3)
    assert all(2 <= i <= 6 for i in p) and p == [2, 3, 4, 5, 6]  # exactly the 5 candidates


def test_random_layers_uniform():
    counts = np.zeros(8)
    for s in range(2000):
        counts[random_layers(8, 2, seed=s)] += 1
    assert np.all(np.abs(counts / 2000 - 2 / 8) < 0.04)


@pytest.mark.parametrize("kw, match", [
    (dict(num_layers=4, k=4, seed=0), "remove all"),
    (dict(num_layers=4, k=0, seed=0), "k=0"),
    (dict(num_layers=10, k=3, seed=0, protect_first=5, protect_last=3), "fewer than k"),
    (dict(num_layers=10, k=3, seed=-1), "seed"),
    (dict(num_layers=10, k=2.0, seed=0), "k=2.0"),
    (dict(num_layers=10, k=2, seed=0, protect_first=-1), "protect_first"),
    (dict(num_layers=1, k=1, seed=0), "num_layers"),
])
def test_random_layers_errors(kw, match):
    with pytest.raises(EavssError, match=match):
        random_layers(**kw)


def test_last_layers():
    assert last_layers(30, 7) == [22, 23, 24, 25, 26, 27, 28]
    assert last_layers(4, 1) == [2]
    assert last_layers(4, 3) == [0, 1, 2]  # everything but the final layer
    with pytest.raises(EavssError, match="k <= 3"):
        last_layers(4, 4)
    with pytest.raises(EavssError, match="k=0"):
        last_layers(4, 0)
    with pytest.raises(EavssError, match="num_layers"):
        last_layers(True, 1)
