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
    if planted == 3:  # worker processes (the command's CPU phases) give the same values, exactly
        pr2 = probe_layers(feats.numpy()[use], y[use], clusters[use], strata[use], folds=4, seed=0, n_jobs=2)
        np.testing.assert_array_equal(pr2["auroc"], pr["auroc"])
        np.testing.assert_array_equal(pr2["auroc_pooled"], pr["auroc_pooled"])
        from eavss.scores.hallucination import variant_table

        kw = dict(rank_by="z", permutations=20, seed=3)
        one = variant_table(ss, EavssOptions(min_per_class=2), **kw)
        two = variant_table(ss, EavssOptions(min_per_class=2), n_jobs=2, **kw)
        assert list(one) == list(two) and len(one) > 3
        for name in one:
            assert one[name].keys() == two[name].keys()
            for key in ("eavss", "score", "z"):
                if key in one[name]:
                    np.testing.assert_array_equal(one[name][key], two[name][key])


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


# ---------------------------------------------------------------------------------------------
# noise-calibrated ranking (scores.rank_by=z)


def test_calibrate_against_hand_computation():
    from eavss.scores.hallucination import calibrate, rank_layers

    obs = np.array([0.65, 0.5, 0.2])
    null = np.array([[0.4, 0.1, 0.3], [0.6, 0.3, 0.5]])  # mean (0.5, 0.2, 0.4), SD (ddof=1) 0.1414 on every layer
    c = calibrate(obs, null)
    sd = np.sqrt(0.02)
    np.testing.assert_allclose(c["null_mean"], [0.5, 0.2, 0.4])
    np.testing.assert_allclose(c["null_sd"], [sd] * 3)
    np.testing.assert_allclose(c["z"], [0.15 / sd, 0.3 / sd, -0.2 / sd])
    # p: (1 + #{null >= obs}) / (1 + P)
    np.testing.assert_allclose(c["p"], [1 / 3, 1 / 3, 3 / 3])
    # standardised null rows are (-0.71, -0.71, -0.71) and (0.71, 0.71, 0.71): max -0.71 and 0.71
    np.testing.assert_allclose(c["p_fwer"], [1 / 3, 1 / 3, 3 / 3])
    assert c["p_max"] == pytest.approx(1 / 3)
    # the z ranking differs from the effect ranking: layer 1 stands furthest above its null
    assert rank_layers(obs, "z", c["z"], 2)["ranking"] == [1, 0, 2]
    assert rank_layers(obs, "effect", c["z"], 2)["ranking"] == [0, 1, 2]
    assert rank_layers(obs, "z", c["z"], 2)["top_k"] == [1, 0]
    with pytest.raises(EavssError, match="permutations"):
        rank_layers(obs, "z", None, 2)
    with pytest.raises(EavssError, match="scores.rank_by"):
        rank_layers(obs, "nope", c["z"], 2)
    # a layer whose null never moves has no noise scale: z = 0
    assert calibrate(np.array([1.0, 2.0]), np.array([[1.0, 1.0], [1.0, 3.0]]))["z"][0] == 0.0


def test_rank_by_z_against_hand_computation():
    """permutation_test's z is the z of T = (HSAV / sd_V + HSS / sd_S) / 2 over the same permutations,
    recomputed here from compute_eavss on each permuted labelling."""
    from eavss.scores.hallucination import permuted_labels, rank_layers

    model = tiny_model("llama", seed=3, num_layers=5)
    rows, y, strata, clusters = _synthetic(n_per_source=12, seed=4, odd_for_class1=True)
    stats, _ = _capture(model, rows, list(range(40, 48)))
    ss = SampleStatistics(stats, y, strata, clusters)
    opts = EavssOptions(min_per_class=2, top_k=2)
    P = 40
    perm = permutation_test(ss, opts, P, seed=3)
    obs = compute_eavss(ss, opts)
    NV, NS = [], []
    for yp in permuted_labels(ss, P, seed=3):
        r = compute_eavss(SampleStatistics(stats, yp, strata, clusters), opts)
        NV.append(r["hsav"])
        NS.append(r["hss"])
    NV, NS = np.array(NV), np.array(NS)
    sv, s_s = NV.std(0, ddof=1), NS.std(0, ddof=1)
    t_obs = (obs["hsav"] / sv + obs["hss"] / s_s) / 2
    t_null = (NV / sv + NS / s_s) / 2
    z = (t_obs - t_null.mean(0)) / t_null.std(0, ddof=1)
    np.testing.assert_allclose(perm["z_eavss"], z, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(perm["p_eavss"], (1 + (t_null >= t_obs).sum(0)) / (1 + P))
    ranked = rank_layers(obs["eavss"], "z", perm["z_eavss"], 2)
    assert ranked["ranking"] == sorted(range(5), key=lambda i: (-z[i], i))
    assert ranked["top_k"] == ranked["ranking"][:2]
    # the permutations keep one answer of each class per question of a paired source
    paired = SampleStatistics(stats, y, strata, np.array([f"{s}:{i // 2}" for i, s in enumerate(strata)], dtype=object))
    for yp in permuted_labels(paired, 5, seed=0):
        assert all(sorted(yp[2 * q: 2 * q + 2]) == [0, 1] for q in range(len(y) // 2))


@pytest.mark.parametrize("seed", [1, 2])
def test_z_ranking_finds_the_planted_layer_despite_length_and_first_token_artefacts(seed):
    """Layer 4 differs by class on every token; layer 1 carries rare massive activations that long
    (mostly hallucinated) answers hold more of, layer 2 massive activations on a first token that
    hallucinated answers start with more often. The raw effect ranks an artefact layer first; the
    permutation z ranks the planted layer first and leaves the artefacts non-significant."""
    from eavss.hallucination.baselines import surface_baselines
    from eavss.scores.hallucination import rank_layers
    from hallucination_helpers import _planted_confounds

    ss, ids = _planted_confounds(seed=seed)
    opts = EavssOptions(min_per_class=2, top_k=1)
    res = compute_eavss(ss, opts)
    assert res["ranking"][0] in (1, 2)  # the raw effect is fooled (why rank_by=z exists)
    perm = permutation_test(ss, opts, 100, seed=seed)
    ranked = rank_layers(res["eavss"], "z", perm["z_eavss"], 1)
    assert ranked["top_k"] == [4]
    assert perm["z_eavss"][4] > 5 and perm["p_eavss_fwer"][4] < 0.05
    assert perm["p_eavss_fwer"][1] > 0.05 and perm["p_eavss_fwer"][2] > 0.05
    boot = bootstrap_eavss(ss, opts, 30, seed=seed, calibration=perm["calibration"])
    assert boot["ranked_by"] == "z" and boot["p_top_k"][4] > 0.9 and boot["z_lo"][4] > 2
    # and the surface baselines see the planted form differences
    bl = surface_baselines(ids, ss.labels, ss.clusters, ss.strata, folds=4, seed=0)
    assert bl["auroc_by_source"]["length"]["pairs"] > 0.95
    assert bl["auroc_by_source"]["first_tokens"]["gen"] > bl["auroc_by_source"]["length"]["gen"]  # a 60/40 first-token cue
