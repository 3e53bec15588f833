"""sparsity_information: hand-computed inputs for each warning and for an informative vector."""

from __future__ import annotations

import numpy as np
import pytest

from eavss.errors import EavssError
from eavss.scores.diagnostics import sparsity_information

N = 1_000_000  # elements per layer


def _info(counts, n=N, **kw):
    c = np.asarray(counts, dtype=np.float64)
    return sparsity_information(c / n, c, np.full(len(c), float(n)), **kw)


def test_informative_sparsity_has_no_warning():
    # 2,000 .. 8,000 near-zero elements of 1e6: every count >= 1000, max/min = 4
    r = _info([2000, 4000, 8000])
    assert r["informative"] and r["warnings"] == []
    assert r["ratio"] == pytest.approx(4.0)
    assert (r["argmin_layer"], r["argmax_layer"]) == (0, 2)
    assert r["low_count_layers"] == [] and r["zero_layers"] == [] and not r["nearly_constant"]
    np.testing.assert_allclose(r["relative_se"], 1 / np.sqrt([2000, 4000, 8000]))
    assert r["min_count_layer"] == 0 and r["min_count_value"] == 2000
    assert r["thresholds"] == {"min_count": 1000.0, "min_range": 1.5}


def test_counting_noise_warning_names_the_layers():
    # the official |a| < 1e-5 rule on a residual stream: a few dozen elements of ~1.9 M (SmolLM2-like)
    r = _info([18, 40, 3, 2500], n=1_866_240)
    assert r["low_count_layers"] == [0, 1, 2] and r["zero_layers"] == []
    assert r["min_count_layer"] == 2 and r["min_count_value"] == 3
    assert r["ratio"] == pytest.approx(2500 / 3)  # a huge range -- made of noise
    assert not r["nearly_constant"] and not r["informative"]
    (w,) = r["warnings"]
    assert "3 of 4 layers rest on fewer than 1000 near-zero elements (layers 0, 1, 2" in w
    assert "fewest: 3 of 1866240 at layer 2" in w and "58%" in w  # 1/sqrt(3) = 0.577
    assert "counting noise" in w


def test_nearly_constant_warning():
    # relative rule: ~1.5-2.2 % of 1e6 elements everywhere -> max/min = 0.0148/0.0110 = 1.345 < 1.5
    r = _info([11_000, 14_800, 12_000])
    assert r["nearly_constant"] and r["ratio"] == pytest.approx(14_800 / 11_000)
    (w,) = r["warnings"]
    assert "nearly constant" in w and "max/min = 1.35 < 1.5" in w and "from layer 0 to layer 1" in w
    assert "AVSS is then essentially variance" in w
    # the threshold is an argument: at min_range 1.3 the same vector is informative
    assert _info([11_000, 14_800, 12_000], min_range=1.3)["informative"]


def test_zero_layers_warn_and_make_the_ratio_infinite():
    r = _info([0, 5000, 0, 7000])
    assert r["zero_layers"] == [0, 2] and r["low_count_layers"] == []
    assert r["ratio"] == np.inf and not r["nearly_constant"]
    assert np.isinf(r["relative_se"][[0, 2]]).all()
    (w,) = r["warnings"]
    assert "2 of 4 layers have no near-zero element at all (layers 0, 2)" in w and "guard" in w


def test_warning_combinations_and_all_zero():
    r = _info([0, 10, 2000, 2100, 2200], min_count=1000)
    zero_w, noise_w = r["warnings"]  # in this order
    assert "no near-zero element at all (layers 0)" in zero_w and "(layers 1;" in noise_w
    assert "fewest: 10 of 1000000 at layer 1" in noise_w  # the fewest non-zero count, not the zero layer
    assert r["min_count_layer"] == 0 and r["min_count_value"] == 0
    assert r["ratio"] == np.inf  # a zero layer: no "nearly constant" claim on an infinite range
    c = np.array([0.0, 0.0])
    r = sparsity_information(c, c, np.array([10.0, 10.0]))
    assert np.isnan(r["ratio"]) and r["zero_layers"] == [0, 1] and len(r["warnings"]) == 1
    # a zero layer makes the range infinite, so "zero" and "nearly constant" never come together;
    # counting noise and a flat range do
    r = _info([900, 1000, 1100])
    assert r["low_count_layers"] == [0] and r["nearly_constant"] and len(r["warnings"]) == 2


@pytest.mark.parametrize("bad", [
    {"sparsity": [0.1, 0.2], "near_zero_counts": [1, 2, 3], "n_elements": [10, 10]},
    {"sparsity": [], "near_zero_counts": [], "n_elements": []},
    {"sparsity": [0.1, np.nan], "near_zero_counts": [1, 2], "n_elements": [10, 10]},
    {"sparsity": [0.1, 0.2], "near_zero_counts": [1, -2], "n_elements": [10, 10]},
    {"sparsity": [0.1, 0.2], "near_zero_counts": [1, 20], "n_elements": [10, 10]},
    {"sparsity": [0.1, 0.2], "near_zero_counts": [1, 2], "n_elements": [10, 10], "min_range": 1.0},
])
def test_bad_inputs_are_refused(bad):
    with pytest.raises(EavssError):
        sparsity_information(**bad)
