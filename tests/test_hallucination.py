"""EAVSS (``eavss hallucination``): scores vs. a float64 reference, a planted layer, the judge,
batched generation, splits without leakage, and the CLI end to end on the real default model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eavss.errors import EavssError
from eavss.hallucination.capture import (Capture, PooledFeatures, PrefixCache, greedy_generate, newline_token_ids,
                                         teacher_forced_pass)
from eavss.hallucination.judge import judge_options, match_answer, normalize_answer
from eavss.hallucination.probe import agreement, probe_layers
from eavss.hallucination.scores import (COMBINATIONS, EavssOptions, SampleStatistics, bootstrap_eavss, compute_eavss,
                                        permutation_test)
from eavss.hallucination.splits import assign_part, build_splits, check_disjoint, load_splits, split_source
from eavss.models.layers import find_decoder_layers
from eavss.stats import ActivationStatsCollector, SparsityRule
from eavss.stats.accumulators import F
from eavss.testing.tiny import tiny_model, tiny_tokenizer
from reference import reference_activations

TAU = 0.01


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """Tiny models run fastest on one thread (and multi-threaded tiny matmuls crawl on a busy CPU)."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# helpers


def _synthetic(n_per_source=10, sources=("a", "b"), seed=0, vocab=(5, 500), odd_for_class1=False):
    """Random (suffix, answer) token rows with labels; class-1 answers use odd ids if asked."""
    g = np.random.default_rng(seed)
    rows, labels, strata, clusters = [], [], [], []
    for s in sources:
        for i in range(n_per_source):
            y = i % 2
            suffix = g.integers(*vocab, size=int(g.integers(3, 8))).tolist()
            ans = g.integers(*vocab, size=int(g.integers(2, 7)))
            if odd_for_class1:
                ans = ans // 2 * 2 + y  # class 1: odd ids, class 0: even ids
            rows.append((suffix, ans.tolist(), len(rows)))
            labels.append(y)
            strata.append(s)
            clusters.append(f"{s}:{i}")
    return rows, np.array(labels), np.array(strata, dtype=object), np.array(clusters, dtype=object)


def _capture(model, rows, prefix, rule=None, batch_size=3, max_counted=None):
    N = len(rows)
    col = ActivationStatsCollector(model, rule=rule or SparsityRule(tau=TAU), group_names=[str(i) for i in range(N)],
                                   pooled=False, block_influence=False)
    feats = PooledFeatures(model, N)
    cap = Capture(col, feats)
    cache = PrefixCache(model, prefix) if prefix else None
    teacher_forced_pass(model, rows, cache, batch_size=batch_size, capture=cap, pad_id=0, max_counted=max_counted)
    return col.result(), feats.result()


def _reference_scores(outs, labels, strata, hsav="log_ratio", min_per_class=2):
    """Independent float64 implementation of the default HSAV/HSS/EAVSS (and cohens_d HSAV)."""
    L = len(outs)

    def var_sp(arrs):
        a = np.concatenate(arrs, 0)
        rms = np.sqrt((a ** 2).mean(1, keepdims=True))
        return a.var(), (np.abs(a) < TAU * rms).sum() / a.size, a.size

    E_v, E_s, W = [], [], []
    for s in dict.fromkeys(strata.tolist()):
        idx = {c: [i for i in range(len(labels)) if strata[i] == s and labels[i] == c] for c in (0, 1)}
        n_t, n_h = len(idx[0]), len(idx[1])
        if min(n_t, n_h) < min_per_class:
            continue
        ev, es = [], []
        for layer in range(L):
            (vt, pt, Nt), (vh, ph, Nh) = (var_sp([outs[layer][i] for i in idx[c]]) for c in (0, 1))
            if hsav == "log_ratio":
                ev.append(np.log(vh / vt))
            else:  # cohens_d of per-sample log variance
                xt = np.array([np.log(outs[layer][i].var()) for i in idx[0]])
                xh = np.array([np.log(outs[layer][i].var()) for i in idx[1]])
                sd = np.sqrt(((n_t - 1) * xt.var(ddof=1) + (n_h - 1) * xh.var(ddof=1)) / (n_t + n_h - 2))
                ev.append((xh.mean() - xt.mean()) / sd)
            pt = np.clip(pt, 0.5 / Nt, 1 - 0.5 / Nt)
            ph = np.clip(ph, 0.5 / Nh, 1 - 0.5 / Nh)
            es.append(np.log(ph / (1 - ph)) - np.log(pt / (1 - pt)))
        E_v.append(ev)
        E_s.append(es)
        W.append(n_h * n_t / (n_h + n_t))
    E_v, E_s, W = np.array(E_v), np.array(E_s), np.array(W)
    h = np.abs((W[:, None] * E_v).sum(0) / W.sum())
    s = np.abs((W[:, None] * E_s).sum(0) / W.sum())
    e = (h / h.sum() + s / s.sum()) / 2
    return h, s, e / e.sum()


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
    e = np.linspace(0, 1, 10)
    good = agreement(e, 0.5 + 0.4 * e, top_k=3)
    assert good["spearman"] == pytest.approx(1.0) and good["warning"] is None and good["top_k_overlap"] == 3
    bad = agreement(e, 0.9 - 0.4 * e, top_k=3)
    assert bad["spearman"] == pytest.approx(-1.0) and "does NOT" in bad["warning"] and "disagrees" in bad["verdict"]


# ---------------------------------------------------------------------------------------------
# generation


def _gen_setup(seed=3, init=0.3):
    tok = tiny_tokenizer()
    model = tiny_model("llama", seed=seed, num_layers=3, initializer_range=init)
    prefix = tok("Question: What is the capital of France? Answer: Paris\n", add_special_tokens=True).input_ids
    qs = ["Who wrote Hamlet?", "How many legs does a spider have? Answer", "What is two plus three?", "The sun",
          "Light travels faster than sound, which is why", "Numbers: 0 1 2"]
    suffixes = [tok("Question: " + q + " Answer:", add_special_tokens=False).input_ids for q in qs]
    return tok, model, prefix, suffixes


def test_batched_generation_equals_one_at_a_time():
    tok, model, prefix, suffixes = _gen_setup()
    # frequent ids act as "newline" tokens so that rows stop at different steps
    probe = greedy_generate(model, suffixes, PrefixCache(model, prefix), max_new_tokens=12, newline_ids=[],
                            eos_ids=[2], pad_id=3, batch_size=6)
    stops = sorted({g.tokens[3] for g in probe if len(g.tokens) > 3})[:2]
    kw = dict(max_new_tokens=12, newline_ids=stops, eos_ids=[2], pad_id=3)
    cache = PrefixCache(model, prefix)
    batched = greedy_generate(model, suffixes, cache, batch_size=4, **kw)
    single = [greedy_generate(model, [s], cache, batch_size=1, **kw)[0] for s in suffixes]
    no_cache = greedy_generate(model, [prefix + s for s in suffixes], None, batch_size=6, **kw)
    assert {g.stop for g in batched} >= {"newline", "length"}
    for b, s, n, suf in zip(batched, single, no_cache, suffixes):
        assert b.tokens == s.tokens == n.tokens
        assert b.stop == s.stop == n.stop
        assert b.answer_tokens == (b.tokens[:-1] if b.stop != "length" else b.tokens)
        # and equal to transformers' own greedy generate with the same stop tokens
        x = torch.tensor([prefix + suf])
        ref = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=12, pad_token_id=3,
                             eos_token_id=[2, *stops])[0, x.shape[1]:].tolist()
        assert ref == b.tokens


@pytest.mark.parametrize("max_counted", [None, 2])
def test_generation_capture_equals_teacher_forced_on_generated_tokens(max_counted):
    tok, model, prefix, suffixes = _gen_setup(seed=4)
    N = len(suffixes)
    col = ActivationStatsCollector(model, group_names=[str(i) for i in range(N)], pooled=False, block_influence=False)
    feats = PooledFeatures(model, N)
    cap = Capture(col, feats)
    cache = PrefixCache(model, prefix)
    probe = greedy_generate(model, suffixes, cache, max_new_tokens=10, newline_ids=[], eos_ids=[2], pad_id=3, batch_size=6)
    stops = [probe[0].tokens[2]]
    gens = greedy_generate(model, suffixes, cache, max_new_tokens=10, newline_ids=stops, eos_ids=[2], pad_id=3,
                           batch_size=4, capture=cap, sample_indices=list(range(N)), max_counted=max_counted)
    assert any(g.stop == "length" for g in gens) and any(g.stop == "newline" for g in gens)
    rows = [(s, g.answer_tokens, i) for i, (s, g) in enumerate(zip(suffixes, gens)) if g.answer_tokens]
    tf_stats, (tf_feats, _) = _capture(model, rows, prefix, rule=SparsityRule(), max_counted=max_counted)
    gen_stats = col.result()
    gen_feats, counts = feats.result()
    fields = [F[k] for k in ("n_tokens", "within_m2", "sum_mean", "sum_mean_sq", "near_zero", "nonfinite")]
    for s, a, i in rows:
        assert counts[i] == (len(a) if max_counted is None else min(len(a), max_counted))
        # (n_seqs counts forward passes with a counted token: one per generated token here)
        np.testing.assert_allclose(gen_stats.sums[i][:, fields], tf_stats.sums[i][:, fields], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(gen_feats[i].numpy(), tf_feats[i].numpy(), rtol=1e-4, atol=1e-4)


def test_newline_tokens_found():
    tok = tiny_tokenizer()
    nl = newline_token_ids(tok)
    assert nl and all("\n" in tok.decode([i]) for i in nl)


# ---------------------------------------------------------------------------------------------
# judge


@pytest.mark.parametrize("pred,golds,expected", [
    ("The Eiffel Tower", ["Eiffel Tower"], True),               # articles
    ("an apple", ["Apple"], True),
    ("Washington, D.C.", ["Washington DC"], True),               # punctuation
    ("washington d.c", ["Washington, D.C."], True),
    ("Paris.", ["paris"], True),
    ("1,000", ["1000"], True),                                   # numbers
    ("two", ["2"], True),
    ("twenty-one", ["21"], True),
    ("3", ["three"], True),
    ("3", ["13"], False),
    ("Jay-Z", ["Jay Z"], True),                                  # separators
    ("Pokémon", ["Pokemon"], True),                              # accents
    ("“Hamlet”", ["Hamlet"], True),                              # unicode quotes
    ("Mark Twain", ["Samuel Clemens", "Mark Twain"], True),      # aliases
    ("not Mark Twain", ["Mark Twain"], False),                   # negation, exact mode
    ("Twain", ["Mark Twain"], False),
    ("", ["x"], False),
    ("the", ["the"], False),                                     # empty after normalisation
])
def test_judge_exact(pred, golds, expected):
    assert match_answer(pred, golds, "exact")["correct"] is expected


@pytest.mark.parametrize("pred,golds,expected,detail", [
    ("It was Mark Twain", ["Mark Twain"], True, "contained"),
    ("not Mark Twain", ["Mark Twain"], False, "negated"),
    ("It is not Paris, it is London", ["Paris"], False, "negated"),
    ("Paris, not London", ["Paris"], True, "contained"),
    ("isn't Paris", ["Paris"], False, "negated"),
    ("Parisian food", ["Paris"], False, "no_match"),             # whole words only
    ("in 1969", ["1969"], True, "contained"),
])
def test_judge_contains_guards_negation(pred, golds, expected, detail):
    r = match_answer(pred, golds, "contains")
    assert r["correct"] is expected and r["detail"] == detail


def test_judge_normalisation_and_options():
    assert normalize_answer("  The  Quick, Brown-Fox!  ") == "quick brown fox"
    assert normalize_answer("Two Hundred", number_words=False) == "two hundred"
    opts = ["oxygen", "carbon dioxide", "nitrogen", "helium"]
    assert judge_options("Carbon dioxide.", opts, "carbon dioxide")["correct"]
    r = judge_options("oxygen", opts, "carbon dioxide")
    assert not r["correct"] and r["detail"] == "distractor"
    assert judge_options("water", opts, "carbon dioxide")["detail"] == "no_option"
    with pytest.raises(EavssError):
        match_answer("x", ["x"], "fuzzy")


# ---------------------------------------------------------------------------------------------
# splits


def test_splits_are_disjoint_deterministic_and_stable():
    from eavss.hallucination.sources import QAItem

    ids = [f"q{i}" for i in range(2000)]
    a = split_source("nq_open", ids, 0, (0.5, 0.25, 0.25))
    b = split_source("nq_open", list(reversed(ids)), 0, (0.5, 0.25, 0.25))
    assert a == b
    sets = [set(a[p]) for p in ("score", "train", "eval")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set().union(*sets) == set(ids)
    assert abs(len(a["score"]) / 2000 - 0.5) < 0.05
    # adding questions never moves an existing one
    c = split_source("nq_open", ids + [f"new{i}" for i in range(100)], 0, (0.5, 0.25, 0.25))
    for p in a:
        assert set(a[p]) <= set(c[p])
    assert all(assign_part(0, "nq_open", q, (0.5, 0.25, 0.25)) == "score" for q in a["score"])
    # another seed gives another split
    assert split_source("nq_open", ids, 1, (0.5, 0.25, 0.25))["score"] != a["score"]
    items = {"nq_open": [QAItem("nq_open", q, q) for q in ids]}
    sp = build_splits(items, 0, (0.5, 0.25, 0.25), {"nq_open": a["score"][:10]})
    check_disjoint(sp)
    bad = json.loads(json.dumps(sp))
    bad["sources"]["nq_open"]["used_here"].append(a["train"][0])
    with pytest.raises(EavssError, match="outside its score part"):
        check_disjoint(bad)
    bad = json.loads(json.dumps(sp))
    bad["sources"]["nq_open"]["parts"]["eval"].append(a["score"][0])
    with pytest.raises(EavssError, match="leak"):
        check_disjoint(bad)
    with pytest.raises(EavssError, match="repeated"):
        split_source("x", ["a", "a"], 0, (0.5, 0.25, 0.25))


def test_real_sources_load_with_unique_ids():
    from eavss.hallucination.sources import LOADERS, load_source

    expected = {"truthfulqa": 817, "halueval": 500, "nq_open": 3610, "triviaqa": 7993, "sciq": 1000}
    for name in LOADERS:
        items = load_source(name)
        assert len({it.qid for it in items}) == len(items)
        assert len(items) <= expected[name] and len(items) > 0.95 * expected[name]
        assert all(it.golds for it in items)
        if name in ("truthfulqa", "halueval"):
            assert all(it.incorrect for it in items)
        if name == "sciq":
            assert all(len(it.options) == 4 and it.correct == it.options[0] for it in items)


def test_bad_config_is_one_line():
    from eavss.hallucination.config import load_hallucination_config

    for ov, needle in ((["sources=[foo]"], "unknown or empty sources"), (["split.score=0.9"], "sum to 1"),
                       (["scores.combine=max"], "scores.combine"), (["stats.variance=pooled"], "element or token"),
                       (["probe.folds=1"], "probe.folds")):
        with pytest.raises(EavssError, match=needle) as e:
            load_hallucination_config(None, ov)
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# the CLI end to end


@pytest.mark.parametrize("extra", [["--no-probe"], ["--with-avss", "--judge", "contains", "stats.first_answer_tokens=2"]])
def test_cli_end_to_end_on_a_tiny_model(tmp_path, capsys, extra):
    """All code paths of the command on a tiny saved model (fast); the real model is tested below."""
    from eavss.cli import main

    model, tok = tiny_model("llama", seed=0, num_layers=3), tiny_tokenizer()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = tmp_path / "h"
    rc = main(["hallucination", "--model", str(tmp_path / "m"), "--sources", "truthfulqa,halueval,sciq", "--limit", "6",
               "--out", str(out), "--no-progress", "--max-new-tokens", "4", "--top-k", "2", *extra, "scores.bootstrap=5",
               "scores.permutations=5", "scores.min_per_class=2", "probe.folds=2"])
    err = capsys.readouterr().err
    assert rc == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert len(rep["eavss"]["top_k"]) == 2 and sorted(rep["eavss"]["ranking"]) == [0, 1, 2]
    assert (rep["probe"] is None) == ("--no-probe" in extra)
    assert rep["sources"]["sciq"]["kind"] == "generated"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 * 2 * 2 + 6
    if "stats.first_answer_tokens=2" in extra:
        assert all(s["n_counted_tokens"] <= 2 for s in samples)
        assert rep["config"]["scores"]["with_avss"] and rep["judge"]["match"] == "contains"
    load_splits(out)
    md = (out / "report.md").read_text()
    assert "EAVSS ranking" in md and ("Probes were disabled" in md) == ("--no-probe" in extra)


# the real default model


@pytest.mark.slow
def test_cli_end_to_end_on_default_model(tmp_path, capsys, default_model):
    from eavss.cli import main

    out = tmp_path / "h"
    rc = main(["hallucination", "--limit", "6", "--out", str(out), "--no-progress", "--batch-size", "8",
               "scores.bootstrap=10", "scores.permutations=10", "scores.min_per_class=2", "probe.folds=3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "EAVSS top-5 layers" in captured.out
    for f in ("report.json", "report.md", "eavss.png", "separability.png", "splits.json", "samples.jsonl"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    rep = json.loads((out / "report.json").read_text())
    assert rep["kind"] == "hallucination" and rep["schema"] == "eavss.report"
    L = rep["model"]["num_layers"]
    assert sorted(rep["eavss"]["ranking"]) == list(range(L)) and len(rep["eavss"]["top_k"]) == 5
    assert len(rep["eavss"]["per_layer"]) == L and len(rep["probe"]["auroc"]) == L
    assert rep["agreement"]["spearman"] is not None
    assert set(rep["sources"]) == {"truthfulqa", "halueval", "nq_open", "triviaqa", "sciq"}
    for src in ("nq_open", "triviaqa", "sciq"):
        assert rep["sources"][src]["kind"] == "generated"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 * 2 * 2 + 6 * 3  # two teacher-forced pair sources, three generated
    assert all(s["judge"] is not None for s in samples if s["kind"] == "generated")
    splits = load_splits(out)
    for src, d in splits["sources"].items():
        used = {s["qid"] for s in samples if s["source"] == src}
        assert used == set(d["used_here"]) and used <= set(d["parts"]["score"])
        assert not used & (set(d["parts"]["train"]) | set(d["parts"]["eval"]))
    md = (out / "report.md").read_text()
    for needle in ("Hallucination rate per source", "EAVSS ranking", "Spearman", "Per-layer table", "stop rule"):
        assert needle in md
    # an existing output folder is refused with a one-line error
    rc = main(["hallucination", "--limit", "2", "--out", str(out), "--no-progress"])
    assert rc == 2 and "already exists" in capsys.readouterr().err
