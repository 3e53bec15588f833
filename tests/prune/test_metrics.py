"""The pruning-metric registry: every metric's selection on a tiny model equals a direct computation
with the library functions; shared passes run once; the model is left unchanged; bad k is one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eavss.errors import EavssError
from eavss.prune.metrics import METRICS, NEEDS, MetricContext, check_k

K = 2


def _batches(tok, n=8, max_len=24, batch_size=4):
    from eavss.data.calibration import make_batches
    from eavss.testing.tiny import TINY_TEXT

    lines = [ln for ln in TINY_TEXT.splitlines() if ln.strip()][:n]
    seqs = [tok(ln)["input_ids"][:max_len] for ln in lines]
    return make_batches(seqs, batch_size, tok.pad_token_id)


@pytest.fixture(scope="module")
def setup():
    from eavss.testing import tiny_loaded

    lm = tiny_loaded("llama", seed=7, num_layers=6)
    batches = _batches(lm.tokenizer)
    loss_batches = batches[:1]
    return lm, batches, loss_batches


def _ctx(setup, **kw):
    lm, batches, loss_batches = setup
    return MetricContext(lm.model, batches, loss_batches=loss_batches, **kw)


def _lowest(score, k):
    from eavss.prune.selection import ascending_order

    return sorted(ascending_order(score, list(range(len(score))))[:k])


@pytest.mark.parametrize("name, site", [("avss", "resid_post"), ("avss_delta", "resid_delta"), ("avss_mlp", "mlp_act")])
def test_avss_readings_remove_the_k_lowest_avss_of_their_site(setup, name, site):
    from eavss.scores.registry import ScoreOptions, compute_scores
    from eavss.stats import collect_statistics

    lm, batches, _ = setup
    stats, _ = collect_statistics(lm.model, batches, site=site, progress=False)
    ref = compute_scores(stats, ScoreOptions(), ["avss"])[0]["avss"]["score"]
    out = METRICS[name](_ctx(setup), K)
    np.testing.assert_allclose(out["score"], ref, rtol=1e-12)
    assert out["removed"] == _lowest(ref, K)
    assert out["shared"] == [f"statistics:{site}"] and out["details"]["site"] == site


def test_the_statistics_settings_reach_the_pass(setup):
    from eavss.scores.registry import ScoreOptions, compute_scores
    from eavss.stats import SparsityRule, collect_statistics

    lm, batches, _ = setup
    rule = SparsityRule(mode="absolute", epsilon=1e-3)
    opts = ScoreOptions(variance="token", normalisation="max")
    stats, _ = collect_statistics(lm.model, batches, site="resid_post", rule=rule, massive=2.0, progress=False)
    ref = compute_scores(stats, opts, ["avss"])[0]["avss"]["score"]
    out = METRICS["avss"](_ctx(setup, sparsity_rule=rule, score_options=opts, massive=2.0), K)
    np.testing.assert_allclose(out["score"], ref, rtol=1e-12)


def test_block_influence_removes_the_k_lowest_bi_layers(setup):
    from eavss.stats import collect_statistics

    lm, batches, _ = setup
    stats, _ = collect_statistics(lm.model, batches, site="resid_post", block_influence=True, progress=False)
    bi = stats.block_influence()[0]
    out = METRICS["block_influence"](_ctx(setup), K)
    np.testing.assert_allclose(out["score"], bi, rtol=1e-12)
    assert out["removed"] == _lowest(bi, K)


def test_layer_ppl_removes_the_k_cheapest_single_layer_skips(setup):
    from eavss.scores.ablation import layer_skip_loss

    lm, _, loss_batches = setup
    ref = layer_skip_loss(lm.model, loss_batches)
    out = METRICS["layer_ppl"](_ctx(setup), K)
    np.testing.assert_array_equal(out["score"], ref["delta"])
    assert out["removed"] == sorted(int(i) for i in np.argsort(ref["delta"], kind="stable")[:K])
    assert out["removed"] == _lowest(ref["loss_skipped"], K)  # = the k lowest skipped perplexities


def test_sleb_equals_the_greedy_library_selection(setup):
    from eavss.scores.ablation import sleb_select

    lm, _, loss_batches = setup
    ref = sleb_select(lm.model, loss_batches, K)
    out = METRICS["sleb"](_ctx(setup), K)
    assert out["removed"] == ref["removed_sorted"] and out["details"]["order"] == ref["removed"]
    assert out["score"] is None


@pytest.mark.parametrize("name, tokens", [("angular", "last"), ("angular_all", "all")])
def test_angular_removes_the_closest_contiguous_block(setup, name, tokens):
    from eavss.scores.angular import angular_distances, best_block

    lm, batches, _ = setup
    d = angular_distances(lm.model, batches, K, tokens=tokens)
    out = METRICS[name](_ctx(setup), K)
    assert out["removed"] == best_block(d, K)
    assert out["removed"] == list(range(out["removed"][0], out["removed"][0] + K))
    np.testing.assert_array_equal(out["details"]["block_distances"], d)


def test_random_is_seeded_and_repeatable(setup):
    from eavss.prune.baselines import random_layers

    picks = {}
    for seed in range(6):
        a = METRICS["random"](_ctx(setup, seed=seed), K)["removed"]
        b = METRICS["random"](_ctx(setup, seed=seed), K)["removed"]
        assert a == b == random_layers(6, K, seed)
        picks[seed] = tuple(a)
    assert len(set(picks.values())) > 1  # the seed matters
    assert METRICS.entry("random").meta["seeded"] and not METRICS.entry("avss").meta["seeded"]


def test_last_removes_the_layers_before_the_final_one(setup):
    L = 6
    for k in (1, 2, 5):
        assert METRICS["last"](_ctx(setup), k)["removed"] == list(range(L - 1 - k, L - 1))


def test_one_statistics_pass_per_site_is_shared(setup, monkeypatch):
    import eavss.stats as stats_mod

    calls = []
    real = stats_mod.collect_statistics

    def counting(model, batches, **kw):
        calls.append(kw.get("site"))
        return real(model, batches, **kw)

    monkeypatch.setattr(stats_mod, "collect_statistics", counting)
    ctx = _ctx(setup)
    first = METRICS["avss"](ctx, K)
    second = METRICS["block_influence"](ctx, K)
    METRICS["avss"](ctx, K)
    assert calls == ["resid_post"]
    # stand-alone cost: block influence is charged the pass it read, though avss computed it
    assert second["seconds"] >= ctx.shared_seconds["statistics:resid_post"]
    assert first["shared"] == second["shared"] == ["statistics:resid_post"]


def test_metrics_leave_the_model_unchanged(setup):
    from eavss.models.layers import find_decoder_layers

    lm, batches, _ = setup
    model = lm.model
    ids = batches[0]["input_ids"][:1]
    before = model(input_ids=ids).logits.detach().clone()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    layer_list = find_decoder_layers(model)[1]
    ctx = _ctx(setup)
    for name in METRICS.names():
        out = METRICS[name](ctx, K)
        assert len(out["removed"]) == K and out["seconds"] >= 0
        assert out["score"] is None or out["score"].shape == (6,)
    assert find_decoder_layers(model)[1] is layer_list and model.config.num_hidden_layers == 6
    assert torch.equal(model(input_ids=ids).logits, before)
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("arch", ["gemma3", "gpt2"])
def test_every_metric_runs_on_other_architectures(arch):
    from eavss.testing import tiny_loaded

    lm = tiny_loaded(arch, seed=1, num_layers=4)
    b = _batches(lm.tokenizer, n=4)
    ctx = MetricContext(lm.model, b, loss_batches=b[:1])
    for name in METRICS.names():
        out = METRICS[name](ctx, 1)
        assert len(out["removed"]) == 1 and 0 <= out["removed"][0] < 4, name


def test_metadata_declares_needs_direction_seeded_and_source():
    for e in METRICS.entries():
        assert e.meta["needs"] in NEEDS and e.meta["direction"] and isinstance(e.meta["seeded"], bool)
        assert "arXiv" in e.help, e.name
        if e.meta["needs"] == "statistics":
            assert e.meta["site"] in ("resid_post", "resid_delta", "mlp_act")
    assert set(METRICS.names()) >= {"avss", "avss_delta", "avss_mlp", "block_influence", "angular", "angular_all",
                                    "layer_ppl", "sleb", "random", "last"}


@pytest.mark.parametrize("k", [0, 6, -1, 1.5, True])
def test_bad_k_is_one_line(setup, k):
    with pytest.raises(EavssError) as e:
        METRICS["last"](_ctx(setup), k)
    assert "\n" not in str(e.value) and "1..5" in str(e.value)
    assert check_k(3, 6) == 3


def test_unknown_metric_names_the_choices():
    with pytest.raises(EavssError, match=r"compare.metrics='nope' is not valid; choose one of \['avss'"):
        METRICS["nope"]
