"""The hallucination report's warnings: the sentences a reader must see."""

from __future__ import annotations

from eavss.report.hallucination import warnings


def _report(permutations=200, bootstrap=200, p_max_hsav=0.01):
    return {"config": {"scores": {"permutations": permutations, "bootstrap": bootstrap, "min_per_class": 5}},
            "eavss": {"permutation": {"p_max_hsav": p_max_hsav, "p_max_hss": 0.01, "permutations": permutations},
                      "per_source": {}, "per_layer": [{"layer": 0, "top_k": True, "p_eavss": 0.01}], "top_k": [0],
                      "k": 1, "rank_by": "effect"},
            "sources": {}}


def test_no_noise_estimate_is_said():
    assert not any("No noise estimate" in w for w in warnings(_report()))
    assert any("No noise estimate" in w for w in warnings(_report(permutations=0, bootstrap=0)))
    assert not any("No noise estimate" in w for w in warnings(_report(permutations=0, bootstrap=50)))


def test_component_noise_warning_says_it_is_another_test_than_the_table():
    w = [x for x in warnings(_report(p_max_hsav=0.46)) if "within label-permutation noise" in x]
    assert len(w) == 1 and "family-wise p = 0.46" in w[0] and "the top-k table's p-values test each layer's EAVSS" in w[0]
