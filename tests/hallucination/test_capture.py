"""Batched greedy generation with capture: equal to one-at-a-time decoding and to teacher forcing."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from eavss.hallucination.capture import (Capture, PooledFeatures, PrefixCache, greedy_generate, newline_token_ids)
from eavss.stats import ActivationStatsCollector, SparsityRule
from eavss.stats.accumulators import F
from eavss.testing.tiny import tiny_model, tiny_tokenizer

TAU = 0.01

from hallucination_helpers import _capture


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


@pytest.mark.parametrize("arch", ["gemma3", "mistral"])
def test_batched_generation_is_exact_on_sliding_window_models(arch):
    """Window (4 / 8 tokens) shorter than the prompt: batched rows with a cached prefix would see
    left padding inside the window; the generation falls back to uncached prompts and stays exact."""
    tok = tiny_tokenizer()
    model = tiny_model(arch, seed=3, num_layers=3, initializer_range=0.3)
    prefix = tok("Question: What is the capital of France? Answer: Paris\n", add_special_tokens=True).input_ids
    qs = ["Who wrote Hamlet?", "How many legs does a spider have? Answer", "What is two plus three?", "The sun",
          "Light travels faster than sound, which is why", "Numbers: 0 1 2"]
    suffixes = [tok("Question: " + q + " Answer:", add_special_tokens=False).input_ids for q in qs]
    kw = dict(max_new_tokens=8, newline_ids=[], eos_ids=[2], pad_id=3)
    info: dict = {}
    batched = greedy_generate(model, suffixes, PrefixCache(model, prefix), batch_size=4, stats=info, **kw)
    assert info["prefix_cache"].startswith("off: sliding window")
    for b, suf in zip(batched, suffixes):
        x = torch.tensor([prefix + suf])
        ref = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=8, pad_token_id=3,
                             eos_token_id=[2])[0, x.shape[1]:].tolist()
        assert b.tokens == ref
