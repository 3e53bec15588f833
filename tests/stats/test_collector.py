"""Statistics engine vs. a float64 one-sequence-at-a-time reference, on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eavss.data.calibration import make_batches
from eavss.errors import EavssError, NonFiniteActivationError
from eavss.models.layers import find_decoder_layers
from eavss.stats import SparsityRule, collect_statistics
from eavss.testing.tiny import TINY_ARCHS, tiny_model
from reference import reference_activations, reference_stats

ARCHS = [a for a in ("llama", "qwen2", "gemma3", "gpt2", "mistral", "gpt_neox", "opt", "phi3") if a in TINY_ARCHS]


def _seqs(n=7, vocab=500, seed=0, lo=3, hi=23):
    g = np.random.default_rng(seed)
    return [g.integers(5, vocab, size=int(g.integers(lo, hi))).tolist() for _ in range(n)]


def _run(model, seqs, batch_size=3, rule=None, **kw):
    batches = make_batches(seqs, batch_size, pad_id=0)
    stats, info = collect_statistics(model, batches, rule=rule or SparsityRule(), progress=False, **kw)
    return stats, info


@pytest.mark.parametrize("arch", ARCHS)
def test_statistics_match_float64_reference(arch):
    model = tiny_model(arch, seed=1)
    seqs = _seqs(seed=2)
    stats, info = _run(model, seqs)
    ref = reference_stats(*reference_activations(model, seqs), tau=0.01)
    assert info["num_tokens"] == sum(map(len, seqs))
    np.testing.assert_array_equal(stats.n_tokens()[0], ref["n_tokens"])
    np.testing.assert_allclose(stats.element_variance()[0], ref["element_variance"], rtol=2e-4)
    np.testing.assert_allclose(stats.token_variance()[0], ref["token_variance"], rtol=2e-4)
    np.testing.assert_allclose(stats.pooled_variance()[0], ref["pooled_variance"], rtol=2e-4)
    np.testing.assert_allclose(stats.sparsity()[0], ref["sparsity"], atol=2e-3)
    np.testing.assert_allclose(stats.block_influence()[0], ref["block_influence"], atol=1e-4, rtol=1e-3)
    # relative sparsity should not be degenerate on a residual stream
    assert np.all(stats.sparsity()[0] > 0)


@pytest.mark.parametrize("arch", ARCHS[:2])
def test_absolute_threshold_matches_reference(arch):
    model = tiny_model(arch, seed=3)
    seqs = _seqs(seed=4)
    rule = SparsityRule(mode="absolute", epsilon=1e-2)
    stats, _ = _run(model, seqs, rule=rule)
    ref = reference_stats(*reference_activations(model, seqs), mode="absolute", eps=1e-2)
    np.testing.assert_allclose(stats.sparsity()[0], ref["sparsity"], atol=2e-3)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_padding_has_zero_weight(arch):
    """The same text padded to 16 or to 512 tokens gives the same statistics."""
    model = tiny_model(arch, seed=5)
    seq = _seqs(n=1, seed=6, lo=9, hi=10)[0]
    res = []
    for T in (16, 512):
        ids = torch.zeros(1, T, dtype=torch.long)
        am = torch.zeros(1, T, dtype=torch.long)
        ids[0, :len(seq)] = torch.tensor(seq)
        am[0, :len(seq)] = 1
        s, _ = collect_statistics(model, [{"input_ids": ids, "attention_mask": am}], progress=False)
        res.append(s)
    np.testing.assert_allclose(res[0].sums, res[1].sums, rtol=1e-5, atol=1e-6)
    # and equal to the unpadded, batch-of-one run
    s1, _ = _run(model, [seq], batch_size=1)
    np.testing.assert_allclose(res[1].sums, s1.sums, rtol=1e-5, atol=1e-6)


def test_stat_mask_restricts_to_answer_tokens():
    model = tiny_model("llama", seed=7)
    seqs = _seqs(n=4, seed=8, lo=8, hi=14)
    masks = [[t >= 4 for t in range(len(s))] for s in seqs]  # "answer" = tokens from position 4 on
    batches = make_batches(seqs, 4, 0, sort_by_length=False)
    sm = torch.zeros_like(batches[0]["attention_mask"])
    for r, m in enumerate(masks):
        sm[r, :len(m)] = torch.tensor(m)
    batches[0]["stat_mask"] = sm
    stats, _ = collect_statistics(model, batches, progress=False)
    ref = reference_stats(*reference_activations(model, seqs, masks))
    np.testing.assert_allclose(stats.element_variance()[0], ref["element_variance"], rtol=2e-4)
    np.testing.assert_allclose(stats.sparsity()[0], ref["sparsity"], atol=2e-3)
    assert stats.n_tokens()[0, 0] == sum(sum(m) for m in masks)


def test_groups_equal_separate_runs():
    model = tiny_model("qwen2" if "qwen2" in TINY_ARCHS else "llama", seed=9)
    seqs = _seqs(n=6, seed=10)
    groups = [0, 1, 0, 1, 1, 0]
    batches = make_batches(seqs, 6, 0, sort_by_length=False)
    batches[0]["groups"] = torch.tensor(groups)
    both, _ = collect_statistics(model, batches, group_names=("truthful", "hallucinated"), progress=False)
    for g, name in enumerate(("truthful", "hallucinated")):
        sub = [s for s, gg in zip(seqs, groups) if gg == g]
        alone, _ = _run(model, sub, batch_size=6)
        np.testing.assert_allclose(both.group(name).sums, alone.sums, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both.pooled().sums, _run(model, seqs, 6)[0].sums, rtol=1e-5, atol=1e-6)


def test_float32_accumulator_matches_float64():
    model = tiny_model("llama", seed=11)
    seqs = _seqs(n=9, seed=12)
    s64, _ = _run(model, seqs)
    s32, _ = _run(model, seqs, accum_dtype=torch.float32)
    np.testing.assert_allclose(s32.element_variance(), s64.element_variance(), rtol=1e-5)
    np.testing.assert_allclose(s32.sparsity(), s64.sparsity(), rtol=1e-6)


def test_mlp_act_site_width_is_intermediate_size():
    model = tiny_model("llama", seed=13)
    stats, _ = _run(model, _seqs(n=3, seed=14), site="mlp_act")
    assert stats.site == "mlp_act"
    assert np.all(stats.width == model.config.intermediate_size)
    assert np.all(np.isfinite(stats.block_influence()))  # collected from the layer outputs in the same pass
    assert np.all((stats.sparsity() > 0) & (stats.sparsity() < 1))


def test_non_finite_activation_names_the_layer():
    model = tiny_model("llama", seed=15)
    _, layers = find_decoder_layers(model)
    with torch.no_grad():
        layers[2].mlp.down_proj.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteActivationError, match="decoder layer 2"):
        _run(model, _seqs(n=2, seed=16))


def test_empty_calibration_is_a_clear_error():
    model = tiny_model("llama", seed=17)
    with pytest.raises(EavssError, match="no tokens were collected"):
        collect_statistics(model, [], progress=False)


def test_statistics_roundtrip_dict():
    from eavss.stats import LayerStatistics

    model = tiny_model("llama", seed=18)
    stats, _ = _run(model, _seqs(n=3, seed=19))
    back = LayerStatistics.from_dict(stats.to_dict())
    np.testing.assert_array_equal(back.sums, stats.sums)
    np.testing.assert_array_equal(back.width, stats.width)


@pytest.mark.slow
def test_real_model_relative_sparsity_is_informative_where_absolute_is_not(default_model):
    """On SmolLM2's residual stream the official |a| < 1e-5 rule finds (almost) no near-zero
    elements, so AVSS would divide by ~0; the relative rule measures ~0.8% per layer."""
    from eavss.data.calibration import calibration_batches

    tok, model = default_model.tokenizer, default_model.model
    batches, info = calibration_batches(tok, "wikitext2", num_samples=8, max_length=48, batch_size=4)
    rel, _ = collect_statistics(model, batches, rule=SparsityRule("relative", tau=0.01), progress=False)
    ab, _ = collect_statistics(model, batches, rule=SparsityRule("absolute", epsilon=1e-5), progress=False)
    assert rel.n_tokens()[0, 0] == info["num_tokens"]
    s_rel, s_abs = rel.sparsity()[0], ab.sparsity()[0]
    assert np.all((s_rel > 0.002) & (s_rel < 0.05)), s_rel
    assert np.all(s_abs < 1e-4) and np.mean(s_abs == 0) > 0.5, s_abs
    # variances are identical whatever the sparsity rule; residual-stream variance grows with depth
    np.testing.assert_allclose(rel.element_variance(), ab.element_variance(), rtol=1e-12)
    v = rel.element_variance()[0]
    assert v[-3] > 10 * v[0]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_resid_delta_site_matches_reference(arch):
    """resid_delta captures output - input of each decoder layer (the block's update)."""
    model = tiny_model(arch, seed=21)
    seqs = _seqs(n=5, seed=22)
    stats, _ = _run(model, seqs, site="resid_delta")
    outs, ins = reference_activations(model, seqs)
    deltas = [[o - x for o, x in zip(ol, il)] for ol, il in zip(outs, ins)]
    ref = reference_stats(deltas, ins, tau=0.01)
    np.testing.assert_allclose(stats.element_variance()[0], ref["element_variance"], rtol=2e-4)
    np.testing.assert_allclose(stats.sparsity()[0], ref["sparsity"], atol=2e-3)
    # block influence is that of the layer (output vs input), collected in the same pass
    np.testing.assert_allclose(stats.block_influence()[0], reference_stats(outs, ins, tau=0.01)["block_influence"],
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt"])
def test_left_padded_batches_equal_unpadded_single_runs(arch):
    """Left padding through the Python API: positions count real tokens only (position_ids from the
    mask), so absolute-position models (GPT-2, OPT) give the statistics of unpadded single runs."""
    model = tiny_model(arch, seed=5)
    seqs = _seqs(n=4, seed=8, lo=4, hi=14)
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    am = torch.zeros(len(seqs), T, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, T - len(s):] = torch.tensor(s)
        am[b, T - len(s):] = 1
    left, _ = collect_statistics(model, [{"input_ids": ids, "attention_mask": am}], progress=False, pooled=False)
    single, _ = _run(model, seqs, batch_size=1, pooled=False)
    np.testing.assert_allclose(left.sums, single.sums, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("site", ["mlp_act", "resid_delta"])
def test_block_influence_at_any_site_equals_the_resid_post_pass(site):
    """One pass at another site also gives ShortGPT block influence, equal to the resid_post pass's
    (both token-weighted over the same counted tokens; groups kept apart)."""
    model = tiny_model("llama", seed=2)
    seqs = _seqs(n=6, seed=9)
    batches = make_batches(seqs, 4, pad_id=0)
    for b in batches:
        b["groups"] = torch.arange(b["input_ids"].shape[0]) % 2
    ref, _ = collect_statistics(model, batches, site="resid_post", group_names=("a", "b"), progress=False)
    got, _ = collect_statistics(model, batches, site=site, group_names=("a", "b"), progress=False)
    assert got.has_block_influence
    np.testing.assert_allclose(got.block_influence(), ref.block_influence(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_mlp_act_site_runs_on_every_architecture(arch):
    """The default capture site works on every tiny architecture, OPT's flattened (B*T, D) MLP included,
    and equals a single-sequence run (padding has no weight)."""
    model = tiny_model(arch, seed=3)
    seqs = _seqs(n=4, seed=4)
    batched, _ = _run(model, seqs, batch_size=4, site="mlp_act")
    single, _ = _run(model, seqs, batch_size=1, site="mlp_act")
    np.testing.assert_allclose(batched.sums, single.sums, rtol=1e-4, atol=1e-5)
    assert np.all(batched.n_tokens() == sum(len(s) for s in seqs))
