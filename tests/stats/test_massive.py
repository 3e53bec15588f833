"""Massive-token exclusion (``massive=k``): engine vs. a float64 one-sequence-at-a-time reference,
hand-built activations with a planted sink token, padding, and the off switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eavss.data.calibration import make_batches
from eavss.errors import EavssError
from eavss.stats import LayerStatistics, SparsityRule, collect_statistics, reduce_activations
from eavss.stats.accumulators import F, FIELDS
from eavss.testing.tiny import tiny_model
from reference import reference_activations, reference_drop_massive, reference_stats


def _seqs(n=7, vocab=500, seed=0, lo=3, hi=23):
    g = np.random.default_rng(seed)
    return [g.integers(5, vocab, size=int(g.integers(lo, hi))).tolist() for _ in range(n)]


def _plant_sink(model, factor: float):
    """Multiply the input embedding of every sequence's first token by ``factor`` (an attention
    sink made by hand: the residual stream then carries a token ``factor`` times the others)."""

    def hook(module, args, output):
        out = output.clone()
        out[:, 0] = out[:, 0] * factor
        return out

    return model.get_input_embeddings().register_forward_hook(hook)


def _stats_of(sums: torch.Tensor, width: int) -> LayerStatistics:
    """LayerStatistics of one layer from reduce_activations' ``(B, NUM_FIELDS)`` sums."""
    return LayerStatistics(sums.sum(0, keepdim=True).numpy()[None], np.array([width]), "resid_post", ["all"])


@pytest.mark.parametrize("arch,site,k", [("llama", "resid_post", 20.0), ("llama", "resid_post", 1.5),
                                         ("llama", "resid_delta", 1.5), ("gemma3", "resid_post", 20.0),
                                         ("gemma3", "resid_post", 1.1), ("gpt2", "resid_post", 20.0),
                                         ("gpt2", "resid_post", 1.15)])
def test_matches_float64_reference_per_batch_median(arch, site, k):
    """Every statistic, with massive tokens left out, equals the reference computed without them;
    the median is per batch, so the reference uses the engine's batches (3 consecutive sequences)."""
    model = tiny_model(arch, seed=1)
    seqs = _seqs(seed=2)
    _plant_sink(model, 1000.0)  # the reference's float64 deep copy carries the hook along
    batches = make_batches(seqs, 3, pad_id=0, sort_by_length=False)
    stats, info = collect_statistics(model, batches, site=site, massive=k, progress=False)
    outs, ins = reference_activations(model, seqs)
    if site == "resid_delta":
        outs = [[o - x for o, x in zip(ol, il)] for ol, il in zip(outs, ins)]
    groups = [list(range(s, min(s + 3, len(seqs)))) for s in range(0, len(seqs), 3)]
    outs_k, ins_k, n_massive, margin = reference_drop_massive(outs, ins, groups, k)
    assert margin > 1e-4, "a token sits on the threshold: float32 round-off could flip it; pick another seed"
    ref = reference_stats(outs_k, ins_k, tau=0.01)

    assert stats.massive == k
    assert info["num_tokens"] == sum(map(len, seqs))  # massive tokens are still counted tokens
    np.testing.assert_array_equal(stats.n_massive()[0], n_massive)
    np.testing.assert_array_equal(stats.n_tokens()[0], ref["n_tokens"])
    np.testing.assert_array_equal(stats.n_tokens()[0] + stats.n_massive()[0], sum(map(len, seqs)))
    np.testing.assert_allclose(stats.element_variance()[0], ref["element_variance"], rtol=2e-4)
    np.testing.assert_allclose(stats.token_variance()[0], ref["token_variance"], rtol=2e-4)
    np.testing.assert_allclose(stats.pooled_variance()[0], ref["pooled_variance"], rtol=2e-4)
    np.testing.assert_allclose(stats.sparsity()[0], ref["sparsity"], atol=2e-3)
    if site == "resid_post":
        np.testing.assert_allclose(stats.block_influence()[0], ref["block_influence"], atol=1e-4, rtol=1e-3)
    if k == 20.0:  # only the planted sink (one per sequence) is massive, at every layer
        np.testing.assert_array_equal(stats.n_massive()[0], len(seqs))
    else:  # a small k also leaves out ordinary tokens: the median rule, not just the sink, is tested
        assert stats.n_massive()[0].max() > len(seqs)


def _hand_built(seed=0, B=2, T=8, D=32, sink=1000.0):
    g = torch.Generator().manual_seed(seed)
    act = torch.randn(B, T, D, generator=g) + 0.3
    act[0, 0] *= sink
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 5:] = False  # three padding positions
    return act, mask


@pytest.mark.parametrize("with_input", [False, True])
def test_planted_sink_is_left_out_of_every_field(with_input, monkeypatch):
    """A token 1000x the others: with massive on, every sum equals the sums without that token
    (both from the eager reduction, which is the one massive uses)."""
    monkeypatch.setenv("EAVSS_REDUCE", "eager")
    act, mask = _hand_built()
    x = torch.randn_like(act) if with_input else None
    rule = SparsityRule()
    on = reduce_activations(act, mask, rule, layer_input=x, massive=20)
    without = mask.clone()
    without[0, 0] = False
    off = reduce_activations(act, without, rule, layer_input=x)
    assert on[:, F["n_massive"]].tolist() == [1.0, 0.0]
    keep = [f for f in FIELDS if f != "n_massive"]
    np.testing.assert_allclose(on[:, [F[f] for f in keep]], off[:, [F[f] for f in keep]], rtol=1e-12, atol=1e-12)
    # and the variance equals numpy's over the remaining real tokens
    st = _stats_of(on, act.shape[-1])
    rest = act[without].double().numpy()
    np.testing.assert_allclose(st.element_variance()[0, 0], rest.var(), rtol=1e-6)
    assert st.n_tokens()[0, 0] == len(rest) and st.n_massive()[0, 0] == 1
    # massive off: the sink dominates the variance
    assert _stats_of(reduce_activations(act, mask, rule), act.shape[-1]).element_variance()[0, 0] > 100 * rest.var()


@pytest.mark.parametrize("pad_value", [0.0, 1e6, float("nan")])
def test_padding_never_counts_toward_the_median(pad_value):
    """Padding holding zeros (median 0 -> every token massive), huge values (median huge -> none)
    or NaN must give the same result as no padding at all."""
    g = torch.Generator().manual_seed(1)
    real = torch.randn(1, 5, 16, generator=g)
    real[0, 2] *= 30.0  # the one massive token (k = 10)
    T = 45
    act = torch.full((1, T, 16), pad_value)
    act[0, :5] = real[0]
    mask = torch.zeros(1, T, dtype=torch.bool)
    mask[0, :5] = True
    padded = reduce_activations(act, mask, SparsityRule(), massive=10)
    bare = reduce_activations(real, torch.ones(1, 5, dtype=torch.bool), SparsityRule(), massive=10)
    assert padded[0, F["n_massive"]] == 1 and padded[0, F["n_tokens"]] == 4
    np.testing.assert_allclose(padded, bare, rtol=1e-7, atol=1e-12)  # NaN padding: another pooled-sum order


def test_median_is_over_the_whole_batch_and_lower_median():
    """The median pools every sequence (and group) of the batch; with an even count it is the
    lower of the two middle values."""
    D = 4
    rms = torch.tensor([[1.0, 2.0, 3.0], [4.0, 10.0, 100.0]])  # 6 tokens: lower median 3
    act = rms[..., None].expand(2, 3, D).contiguous()  # constant rows: RMS = the value
    mask = torch.ones(2, 3, dtype=torch.bool)
    out = reduce_activations(act, mask, SparsityRule(), massive=3.2)  # > 9.6 are massive: 10 and 100
    assert out[:, F["n_massive"]].tolist() == [0.0, 2.0]
    assert out[:, F["n_tokens"]].tolist() == [3.0, 1.0]
    # per-sequence medians would have been 2 and 10: nothing in sequence 1 would be massive at 3.2 x 10
    one = reduce_activations(act[1:], mask[1:], SparsityRule(), massive=3.2)
    assert one[0, F["n_massive"]] == 1  # alone, its median is 10: only 100 is massive


def test_a_sequence_with_only_massive_tokens_has_no_pooled_weight():
    act = torch.ones(3, 2, 8)
    act[0] *= 1000.0  # the whole first sequence is massive
    act[1, :, ::2] = -1.0  # some spread so the pooled variance is not 0
    mask = torch.ones(3, 2, dtype=torch.bool)
    out = reduce_activations(act, mask, SparsityRule(), massive=5)
    assert out[0, F["n_tokens"]] == 0 and out[0, F["n_seqs"]] == 0 and out[0, F["pooled_var_sum"]] == 0
    assert out[0, F["n_massive"]] == 2
    assert out[1:, F["n_seqs"]].tolist() == [1.0, 1.0]


def test_all_padding_batch_and_empty_rows():
    act = torch.randn(2, 4, 8)
    out = reduce_activations(act, torch.zeros(2, 4, dtype=torch.bool), SparsityRule(), massive=20)
    assert not out.any()
    out = reduce_activations(act[:, :0], torch.zeros(2, 0, dtype=torch.bool), SparsityRule(), massive=20)
    assert not out.any()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_massive_off_is_bit_identical(arch, monkeypatch):
    """None, 0 and the default are the same code path; a factor no token reaches (1e300) goes
    through the exclusion code and still gives bit-identical sums (of the eager reduction: with
    massive on, the fused one is never used)."""
    monkeypatch.setenv("EAVSS_REDUCE", "eager")
    model = tiny_model(arch, seed=3)
    seqs = _seqs(n=5, seed=4)
    runs = [collect_statistics(model, make_batches(seqs, 2, 0), progress=False, **kw)[0]
            for kw in ({}, {"massive": None}, {"massive": 0}, {"massive": 1e300})]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.sums, runs[0].sums)
    assert not runs[0].n_massive().any() and runs[0].massive is None and runs[3].massive == 1e300
    act, mask = _hand_built()
    a = reduce_activations(act, mask, SparsityRule())
    for m in (None, 0, 1e300):
        assert torch.equal(reduce_activations(act, mask, SparsityRule(), massive=m), a)


def test_statistics_dict_groups_and_pooled_keep_n_massive():
    model = tiny_model("llama", seed=5)
    seqs = _seqs(n=6, seed=6)
    _plant_sink(model, 1000.0)
    batches = make_batches(seqs, 6, 0, sort_by_length=False)
    batches[0]["groups"] = torch.tensor([0, 1, 0, 1, 1, 0])
    st, _ = collect_statistics(model, batches, group_names=("a", "b"), massive=20, progress=False)
    np.testing.assert_array_equal(st.n_massive(), 3)  # one sink per sequence, three sequences per group
    np.testing.assert_array_equal(st.pooled().n_massive(), 6)
    np.testing.assert_array_equal(st.group("b").n_massive(), 3)
    assert st.pooled().massive == st.group("a").massive == 20
    np.testing.assert_allclose(st.massive_fraction(), 3 / (st.n_tokens() + 3))
    back = LayerStatistics.from_dict(st.to_dict())
    np.testing.assert_array_equal(back.sums, st.sums)
    assert back.massive == 20.0
    # statistics written before n_massive existed load with zeros there
    old = st.to_dict()
    j = old["fields"].index("n_massive")
    old["fields"] = old["fields"][:j] + old["fields"][j + 1:]
    old["sums"] = np.delete(np.asarray(old["sums"]), j, axis=-1).tolist()
    del old["massive"]
    back = LayerStatistics.from_dict(old)
    assert back.massive is None and not back.n_massive().any()
    np.testing.assert_array_equal(back.n_tokens(), st.n_tokens())
    old["fields"][0] = "something_else"
    with pytest.raises(EavssError, match="incompatible"):
        LayerStatistics.from_dict(old)


@pytest.mark.parametrize("bad", [-1, 0.5, 1, float("inf"), float("nan")])
def test_invalid_factor_is_refused(bad):
    act, mask = _hand_built()
    with pytest.raises(EavssError, match="massive"):
        reduce_activations(act, mask, SparsityRule(), massive=bad)


def test_fused_implementation_refuses_massive():
    from eavss.stats.reduce import reduce_activations_ext

    act, mask = _hand_built()
    with pytest.raises(EavssError, match="fused reduction does not implement massive"):
        reduce_activations_ext(act, mask, SparsityRule(), implementation="fused", massive=20)
