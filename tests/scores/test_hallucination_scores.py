"""HSAV / HSS / EAVSS against a float64 reference and a planted layer; rank agreement."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from eavss.errors import EavssError
from eavss.hallucination.probe import probe_layers
from eavss.scores.agreement import rank_agreement
from eavss.scores.hallucination import (COMBINATIONS, EavssOptions, SampleStatistics, bootstrap_eavss, compute_eavss,
                                        permutation_test)
from eavss.models.layers import find_decoder_layers
from eavss.testing.tiny import tiny_model
from reference import reference_activations

TAU = 0.01

from hallucination_helpers import _capture, _reference_scores, _synthetic


# ---------------------------------------------------------------------------------------------
# HSAV / HSS / EAVSS


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_scores_match_float64_reference(arch):
    model = tiny_model(arch, seed=1, num_layers=4)
    rows, y, strata, clusters = _synthetic(n_per_source=8, seed=2)
    prefix = list(range(40, 52))
    stats, _ = _capture(model, rows, prefix)
    seqs = [prefix + s + a for s, a, _ in rows]
    masks = [[False] * (len(prefix) + len(s)) + [True] * len(a) for s, a, _ in rows]
    outs, _ = reference_activations(model, seqs, masks)
    ss = SampleStatistics(stats, y, strata, clusters)
    for hsav in ("log_ratio", "cohens_d"):
        res = compute_eavss(ss, EavssOptions(hsav=hsav, min_per_class=2))
        h, s, e = _reference_scores(outs, y, strata, hsav=hsav)
        np.testing.assert_allclose(res["hsav"], h, rtol=2e-3, atol=1e-5)
        np.testing.assert_allclose(res["hss"], s, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(res["eavss"], e, rtol=5e-3, atol=2e-3)
        assert abs(res["eavss"].sum() - 1) < 1e-12
        assert sorted(res["ranking"]) == list(range(4)) and res["top_k"] == res["ranking"][:4]
    # class statistics are the engine's, on answer tokens only
    ref_nt = [sum(len(a) for _, a, i in rows if y[i] == c) for c in (0, 1)]
    assert res["n_tokens_truthful"][0] == ref_nt[0] and res["n_tokens_hallucinated"][0] == ref_nt[1]


def _plant(model, layer: int, scale: float = 3.0, zero_frac: float = 0.4):
    """Make layer ``layer``'s output differ only at odd-token positions (the 'hallucinated' answers):
    scaled and partly zeroed; the next layer gets the unmodified tensor, so no other layer changes."""
    _, layers = find_decoder_layers(model)
    state = {}
    base = model.model if hasattr(model, "model") else model

    def grab_ids(mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        state["odd"] = (ids % 2 == 1) if ids is not None else None

    def modify(mod, args, output):
        out = output if isinstance(output, torch.Tensor) else output[0]
        state["orig"] = out
        odd = state["odd"].unsqueeze(-1).to(out.dtype)
        D = out.shape[-1]
        keep = torch.ones(D, dtype=out.dtype)
        keep[: int(zero_frac * D)] = 0
        new = out * (1 - odd) + out * odd * scale * keep
        return new if isinstance(output, torch.Tensor) else (new, *output[1:])

    def restore(mod, args, kwargs):
        if args:
            return (state["orig"], *args[1:]), kwargs
        kwargs["hidden_states"] = state["orig"]
        return args, kwargs

    hs = [base.register_forward_pre_hook(grab_ids, with_kwargs=True), layers[layer].register_forward_hook(modify),
          layers[layer + 1].register_forward_pre_hook(restore, with_kwargs=True)]
    return hs


@pytest.mark.parametrize("planted", [1, 3])
def test_planted_layer_ranks_first(planted):
    model = tiny_model("llama", seed=3, num_layers=6)
    rows, y, strata, clusters = _synthetic(n_per_source=16, seed=4, odd_for_class1=True)
    prefix = list(range(40, 50))
    clean, _ = _capture(model, rows, prefix)
    handles = _plant(model, planted)
    try:
        stats, (feats, _) = _capture(model, rows, prefix)
    finally:
        for h in handles:
            h.remove()
    # only the planted layer changed
    changed = np.flatnonzero(np.abs(stats.sums - clean.sums).max(axis=(0, 2)) > 1e-6)
    assert changed.tolist() == [planted]
    ss = SampleStatistics(stats, y, strata, clusters)
    for combine in COMBINATIONS:
        for pooling in ("stratified", "stratified_abs", "pooled"):
            res = compute_eavss(ss, EavssOptions(combine=combine, pooling=pooling, min_per_class=2))
            assert res["ranking"][0] == planted, (combine, pooling, res["eavss"])
    res = compute_eavss(ss, EavssOptions(min_per_class=2))
    assert res["hsav_signed"][planted] > 0  # hallucinated answers have the larger variance there
    assert res["hss_signed"][planted] > 0  # ... and more near-zero elements
    perm = permutation_test(ss, EavssOptions(min_per_class=2), 50, seed=0)
    assert perm["p_hsav"][planted] < 0.05 and perm["p_max_hsav"] < 0.05
    boot = bootstrap_eavss(ss, EavssOptions(min_per_class=2, top_k=1), 30, seed=0)
    assert boot["p_top_k"][planted] > 0.9
    # the linear probe finds the planted layer separable, and the agreement check is computed
    use = ss.used()
    pr = probe_layers(feats.numpy()[use], y[use], clusters[use], strata[use], folds=4, seed=0)
    assert pr["auroc"].shape == (6,)
    assert pr["auroc"][planted] >= 0.9


def test_no_signal_gives_large_permutation_p():
    model = tiny_model("llama", seed=5, num_layers=4)
    rows, y, strata, clusters = _synthetic(n_per_source=16, seed=0)  # labels unrelated to content
    stats, _ = _capture(model, rows, list(range(40, 48)))
    ss = SampleStatistics(stats, y, strata, clusters)
    perm = permutation_test(ss, EavssOptions(min_per_class=2), 60, seed=1)
    assert perm["p_max_hsav"] > 0.05


def test_too_few_per_class_is_a_clear_error():
    model = tiny_model("llama", seed=5, num_layers=2)
    rows, y, strata, clusters = _synthetic(n_per_source=4, seed=7)
    stats, _ = _capture(model, rows, None)
    ss = SampleStatistics(stats, y, strata, clusters)
    with pytest.raises(EavssError, match="min_per_class"):
        compute_eavss(ss, EavssOptions(min_per_class=5))
    with pytest.raises(EavssError, match="scores.hsav"):
        compute_eavss(ss, EavssOptions(hsav="nope"))


def test_agreement_flags_a_disagreeing_ranking():
    from eavss.recipes.hallucination import agreement_with_probe

    e = np.linspace(0, 1, 10)
    good = agreement_with_probe(e, 0.5 + 0.4 * e, 3)
    assert good["spearman"] == pytest.approx(1.0) and good["warning"] is None and good["top_k_overlap"] == 3
    bad = agreement_with_probe(e, 0.9 - 0.4 * e, 3)
    assert bad["spearman"] == pytest.approx(-1.0) and "does NOT" in bad["warning"] and "disagrees" in bad["verdict"]


def test_rank_agreement_against_hand_computation():
    # ranks of a: 1..5; b reverses the last two -> d = (0,0,0,1,-1), rho = 1 - 6*2/(5*24) = 0.9
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    b = np.array([10.0, 20.0, 30.0, 50.0, 40.0])
    r = rank_agreement(a, b, 2)
    assert r["spearman"] == pytest.approx(0.9)
    assert r["top_k_score"] == [4, 3] and r["top_k_reference"] == [3, 4] and r["top_k_overlap"] == 2
    assert r["top_k_chance"] == pytest.approx(4 / 5) and r["verdict"] == "agrees"
    const = rank_agreement(np.ones(5), b, 2)
    assert np.isnan(const["spearman"]) and const["verdict"].startswith("undefined")
    with pytest.raises(ValueError):
        rank_agreement(a, b[:3], 2)
