"""Surface baselines (answer length, first tokens, bag of tokens) on planted signals, and the
comparison with the probe."""

from __future__ import annotations

import numpy as np
import pytest

from eavss.errors import EavssError
from eavss.hallucination.baselines import (bag_of_tokens_features, compare_with_probe, first_token_features,
                                           length_features, surface_baselines)
from eavss.hallucination.probe import cv_folds


def _answers(n_q=40, seed=0, rule="length"):
    """Teacher-forced-like pairs (source ``a``) and singles (source ``b``) whose label is planted in one surface feature."""
    g = np.random.default_rng(seed)
    answers, y, groups, strata = [], [], [], []
    for src, pairs in (("a", True), ("b", False)):
        for q in range(n_q):
            for lab in ((0, 1) if pairs else (q % 2,)):
                n = int(g.integers(3, 7))
                toks = g.integers(100, 400, size=n + (6 if rule == "length" and lab else 0)).tolist()
                if rule == "first":
                    toks[0] = 11 if lab else 12
                if rule == "bag":
                    toks.insert(int(g.integers(3, len(toks) + 1)), 13 if lab else 14)  # never among the first 3
                answers.append(toks)
                y.append(lab)
                groups.append(f"{src}:{q}")
                strata.append(src)
    return answers, np.array(y), np.array(groups, dtype=object), np.array(strata, dtype=object)


def test_features_by_hand():
    a = [[5, 6, 7], [6], [5, 5]]
    np.testing.assert_allclose(length_features(a), [[3, np.log(3)], [1, 0], [2, np.log(2)]])
    ft = first_token_features(a, 2).toarray()
    # position 0: ids {5, 6} + "none"; position 1: ids {5, 6} + "none"
    assert ft.shape == (3, 6)
    np.testing.assert_array_equal(ft, [[1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, 1], [1, 0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(bag_of_tokens_features(a).toarray(), [[1, 1, 1], [0, 1, 0], [2, 0, 0]])


@pytest.mark.parametrize("rule, best", [("length", "length"), ("first", "first_tokens"), ("bag", "bag_of_tokens")])
def test_planted_surface_signal_is_found(rule, best):
    answers, y, groups, strata = _answers(rule=rule)
    r = surface_baselines(answers, y, groups, strata, folds=4, seed=0)
    assert r["auroc"][best] > 0.97, r["auroc"]
    assert set(r["auroc_by_source"][best]) == {"a", "b"} and r["sources_used"] == ["a", "b"]
    if rule == "length":
        assert r["best"] == "length" and r["mean_tokens"]["hallucinated"] - r["mean_tokens"]["truthful"] == pytest.approx(6, abs=1)
    if rule == "first":  # the first token says nothing about length
        assert abs(r["auroc"]["length"] - 0.5) < 0.2
    if rule == "bag":  # the planted token is never among the first 3
        assert r["auroc"]["first_tokens"] < 0.8


def test_no_signal_gives_chance_and_folds_are_the_probes():
    answers, y, groups, strata = _answers(rule="none", n_q=60, seed=1)
    r = surface_baselines(answers, y, groups, strata, folds=5, seed=3)
    for v in r["auroc"].values():
        assert abs(v - 0.5) < 0.15
    # the folds are the probe's: same function, same arguments; pairs never split
    folds = cv_folds(y, groups, strata, 5, 3)
    assert r["folds"] == len(folds) == 5
    for _, te in folds:
        qs = set(groups[te])
        assert all(set(np.flatnonzero(groups == q)) <= set(te) for q in qs)


def test_compare_with_probe_warns_and_names_the_baseline():
    bl = {"auroc": {"length": 0.74, "first_tokens": 0.6, "bag_of_tokens": 0.7},
          "auroc_by_source": {"length": {"a": 0.9, "b": 0.55}, "first_tokens": {"a": 0.6, "b": 0.6},
                              "bag_of_tokens": {"a": 0.7, "b": 0.7}}}
    probe = np.array([0.6, 0.76, 0.7])
    by_src = {"a": np.array([0.8, 0.85, 0.7]), "b": np.array([0.6, 0.67, 0.8])}
    c = compare_with_probe(probe, by_src, bl, margin=0.05)
    assert c["probe_layer"] == 1 and c["baseline"] == "length" and c["gap"] == pytest.approx(0.02) and not c["beats"]
    assert "length" in c["warning"] and "layer 1" not in c["warning"] and "(1, AUROC 0.760)" in c["warning"]
    assert c["by_source"]["a"]["baseline"] == "length" and not c["by_source"]["a"]["beats"]
    assert c["by_source"]["b"]["beats"] and c["by_source"]["b"]["probe_layer"] == 2
    c = compare_with_probe(probe + 0.2, {}, bl, margin=0.05)
    assert c["beats"] and c["warning"] is None


def test_bad_inputs_are_one_line_errors():
    answers, y, groups, strata = _answers(n_q=4)
    with pytest.raises(EavssError, match="one per sample"):
        surface_baselines(answers[:-1], y, groups, strata)
    with pytest.raises(EavssError, match="no counted tokens"):
        surface_baselines([[]] + answers[1:], y, groups, strata)
    with pytest.raises(EavssError, match="each class"):
        surface_baselines(answers, np.zeros_like(y), groups, strata)
