"""Batched greedy generation with capture: equal to one-at-a-time decoding and to teacher forcing."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from eavss.errors import EavssError
from eavss.hallucination.capture import (Capture, PooledFeatures, PrefixCache, greedy_generate, newline_token_ids,
                                         teacher_forced_pass)
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


# ---------------------------------------------------------------------------------------------
# the last token of answers cut at the cap: deferred teacher-forced passes vs an extra decoding step


class _Calls:
    """Counts forward calls of a module (``n``)."""

    def __init__(self, module):
        self.n = 0
        self._h = module.register_forward_pre_hook(self._pre)

    def _pre(self, module, args):
        self.n += 1

    def close(self):
        self._h.remove()


def _counting_passes(monkeypatch, capture_mod) -> list:
    """Record the rows of every teacher-forced last-token pass (``_counted_forward`` calls)."""
    passes = []
    real = capture_mod._counted_forward
    monkeypatch.setattr(capture_mod, "_counted_forward", lambda runner, seqs, *a, **k: (passes.append(len(seqs)),
                                                                                         real(runner, seqs, *a, **k))[1])
    return passes


def _run_modes(model, prefix, suffixes, kw, site="resid_post", massive=None, modes=("step", "deferred"),
               before_deferred=None):
    """Generation with capture in each ``last_token`` mode: ``(captures, generations, model calls, stats)``."""
    N = len(suffixes)
    caps, gens, calls, info = {}, {}, {}, {}
    for mode in modes:
        if mode == "deferred" and before_deferred is not None:
            before_deferred(gens, info)
        col = ActivationStatsCollector(model, site=site, rule=SparsityRule(tau=TAU), massive=massive,
                                       group_names=[str(i) for i in range(N)], pooled=False, block_influence=False)
        caps[mode] = Capture(col, PooledFeatures(model, N, site))
        counter = _Calls(model.model)
        info[mode] = {}
        gens[mode] = greedy_generate(model, suffixes, PrefixCache(model, prefix), capture=caps[mode], last_token=mode,
                                     stats=info[mode], **kw)
        counter.close()
        calls[mode] = counter.n
    assert [(g.tokens, g.answer_tokens, g.stop) for g in gens["deferred"]] == \
        [(g.tokens, g.answer_tokens, g.stop) for g in gens["step"]]
    return caps, gens, calls, info


def _assert_same_counts_close_sums(caps, exact: bool):
    a, b = caps["deferred"].collector.result(), caps["step"].collector.result()
    (fa, ca), (fb, cb) = caps["deferred"].features.result(), caps["step"].features.result()
    torch.testing.assert_close(ca, cb, rtol=0, atol=0)
    if exact:
        np.testing.assert_array_equal(a.sums, b.sums)
        torch.testing.assert_close(fa, fb, rtol=0, atol=0, equal_nan=True)
        return
    n_tok = F["n_tokens"]
    np.testing.assert_array_equal(a.sums[:, :, n_tok], b.sums[:, :, n_tok])
    fields = [F[k] for k in ("within_m2", "sum_mean", "sum_mean_sq", "near_zero", "nonfinite")]
    np.testing.assert_allclose(a.sums[:, :, fields], b.sums[:, :, fields], rtol=1e-5, atol=1e-6)
    scale = float(fb.nan_to_num().abs().max())  # float32 round-off of the pooled means, relative to their scale
    torch.testing.assert_close(fa, fb, rtol=1e-5, atol=1e-6 * scale, equal_nan=True)


@pytest.mark.parametrize("arch,site,max_counted,budget", [
    ("llama", "resid_post", None, None), ("qwen2", "mlp_act", None, 1), ("gemma3", "resid_delta", None, None),
    ("llama", "resid_post", 8, 40), ("mistral", "resid_post", None, None), ("qwen2", "resid_post", None, "mixed")])
def test_deferred_last_token_equals_an_extra_decoding_step(arch, site, max_counted, budget, monkeypatch):
    """Counting the last token of answers cut at the cap in teacher-forced passes after the batches
    (the default) gives the extra decoding step's counts exactly and its sums up to float32
    round-off, with fewer model calls: passes of at most a batch of cut answers for the whole call
    instead of one step per batch (``budget`` small: a pass per row, and passes between batches;
    ``mixed``: a defer limit between the batches' cut tokens, so some batches defer and the others
    take the step in one call). Mistral's 8-token window is shorter than the prompts: generation
    feeds the prefix with each prompt, and so does the deferred pass. ``max_counted=8`` = the cap:
    the last token is still counted. ``forward_tokens`` trades the steps' tokens for the passes'."""
    import eavss.hallucination.capture as capture_mod

    if isinstance(budget, int):
        monkeypatch.setattr(capture_mod, "LAST_TOKEN_PASS_TOKENS", budget)
    if arch == "mistral":
        model = tiny_model(arch, seed=3, num_layers=3, initializer_range=0.3)
        _, prefix, suffixes, stops = _arch_setup("llama")
    else:
        model, prefix, suffixes, stops = _arch_setup(arch)
    N, bs = len(suffixes), 3
    order = sorted(range(N), key=lambda i: -len(suffixes[i]))  # greedy_generate's batches
    batches = [order[i:i + bs] for i in range(0, N, bs)]
    kw = dict(max_new_tokens=8, newline_ids=stops[:1], eos_ids=stops[1:], pad_id=3, batch_size=bs,
              sample_indices=list(range(N)), max_counted=max_counted)

    def cut_tokens(gens, info):  # per batch: the prompt + answer tokens of its cut answers
        pre = len(prefix) if info["step"]["prefix_cache"].startswith("off") else 0  # sliding window: not cached
        return [sum(pre + len(suffixes[j]) + len(gens["step"][j].tokens) for j in b if gens["step"][j].stop == "length")
                for b in batches]

    def set_limit(gens, info):  # "mixed": defer the batches with the fewest cut tokens, step the others
        sums = sorted(t for t in cut_tokens(gens, info) if t)
        assert sums[0] < sums[-1]
        monkeypatch.setattr(capture_mod, "LAST_TOKEN_DEFER_TOKENS", sums[0])

    passes = _counting_passes(monkeypatch, capture_mod)
    caps, gens, calls, info = _run_modes(model, prefix, suffixes, kw, site,
                                         before_deferred=set_limit if budget == "mixed" else None)
    per_batch = cut_tokens(gens, info)
    limit = capture_mod.LAST_TOKEN_DEFER_TOKENS
    deferred_batches = [t for t in per_batch if 0 < t <= limit]
    n_cut = sum(g.stop == "length" for g in gens["step"])
    n_deferred = sum(gens["step"][j].stop == "length" for b, t in zip(batches, per_batch) if 0 < t <= limit for j in b)
    assert n_cut >= 2 and len([t for t in per_batch if t]) >= 2
    # deferred: the same decoding calls without the deferred batches' extra steps, plus the passes
    assert calls["deferred"] == calls["step"] - len(deferred_batches) + len(passes)
    assert sum(passes) == n_deferred and all(p <= bs for p in passes)
    if budget is None:
        assert len(passes) == -(-n_cut // bs)  # at the end, in passes of at most a batch
    elif budget == 1:
        assert passes == [1] * n_cut  # a pass per answer, between batches
    elif budget == "mixed":
        assert 0 < n_deferred < n_cut and passes
    else:
        assert len(passes) >= 2
    assert info["deferred"]["forward_tokens"] == info["step"]["forward_tokens"] - n_deferred + sum(deferred_batches)
    _assert_same_counts_close_sums(caps, exact=False)


@pytest.mark.parametrize("why", ["limit", "max_counted", "massive"])
def test_deferred_mode_takes_the_step_exactly(why, monkeypatch):
    """Deferred mode where it must not defer gives the ``step`` mode's sums to the bit, its model
    calls and no teacher-forced pass: cut answers over ``LAST_TOKEN_DEFER_TOKENS``; ``max_counted``
    below the cap (the last token is not counted at all); massive-token exclusion (its reference is
    one pass's tokens, so deferring would change what a batch excludes)."""
    import eavss.hallucination.capture as capture_mod

    if why == "limit":
        monkeypatch.setattr(capture_mod, "LAST_TOKEN_DEFER_TOKENS", 0)
    model, prefix, suffixes, stops = _arch_setup("qwen2")
    kw = dict(max_new_tokens=8, newline_ids=stops[:1], eos_ids=stops[1:], pad_id=3, batch_size=3,
              sample_indices=list(range(len(suffixes))), max_counted=3 if why == "max_counted" else None)
    passes = _counting_passes(monkeypatch, capture_mod)
    caps, gens, calls, _ = _run_modes(model, prefix, suffixes, kw, massive=2.0 if why == "massive" else None)
    assert any(g.stop == "length" for g in gens["step"]) and not passes
    assert calls["deferred"] == calls["step"]
    _assert_same_counts_close_sums(caps, exact=True)


def test_last_token_mode_is_checked():
    tok, model, prefix, suffixes = _gen_setup()
    with pytest.raises(EavssError, match="last_token must be"):
        greedy_generate(model, suffixes, None, max_new_tokens=2, newline_ids=[], eos_ids=[], pad_id=3, batch_size=2,
                        last_token="later")


# ---------------------------------------------------------------------------------------------
# equal to the implementation before the per-step host syncs were removed; syncs per step

import hallucination_capture_reference as ref  # noqa: E402


def _arch_setup(arch, seed=5):
    """Tiny model of ``arch``, a prefix and prompts of different lengths (left padding), and stop
    ids that make rows stop at different steps while at least one row runs to the cap."""
    tok = tiny_tokenizer()
    model = tiny_model(arch, seed=seed, num_layers=3, initializer_range=0.3)
    prefix = tok("Question: What is the capital of France? Answer: Paris\n", add_special_tokens=True).input_ids
    qs = ["Who wrote Hamlet?", "How many legs does a spider have? Answer", "What is two plus three?", "The sun",
          "Light travels faster than sound, which is why", "Numbers: 0 1 2", "Why?"]
    suffixes = [tok("Question: " + q + " Answer:", add_special_tokens=False).input_ids for q in qs]
    probe = greedy_generate(model, suffixes, PrefixCache(model, prefix), max_new_tokens=10, newline_ids=[],
                            eos_ids=[], pad_id=3, batch_size=8)
    # stop ids: tokens that some rows generate at steps 2..6 but the first row never does
    never = set(probe[0].tokens)
    cand = [g.tokens[k] for k in (2, 4, 6) for g in probe[1:] if g.tokens[k] not in never]
    return model, prefix, suffixes, sorted(set(cand))[:2]


def _new_capture(model, N, features=True, cls=Capture, pf=PooledFeatures):
    col = ActivationStatsCollector(model, rule=SparsityRule(tau=TAU), group_names=[str(i) for i in range(N)],
                                   pooled=False, block_influence=False)
    return cls(col, pf(model, N) if features else None)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("max_counted", [None, 3])
def test_generation_capture_identical_to_pre_sync_removal_implementation(arch, max_counted):
    model, prefix, suffixes, stops = _arch_setup(arch)
    N = len(suffixes)
    kw = dict(max_new_tokens=8, newline_ids=stops[:1], eos_ids=stops[1:], pad_id=3, batch_size=4,
              sample_indices=list(range(N)), max_counted=max_counted)
    new_cap = _new_capture(model, N)
    kw_new = dict(kw, last_token="step")  # the reference fed the cut answers' last token in an extra step
    old_cap = _new_capture(model, N, cls=ref.Capture, pf=ref.PooledFeatures)
    new = greedy_generate(model, suffixes, PrefixCache(model, prefix), capture=new_cap, **kw_new)
    old = ref.greedy_generate(model, suffixes, ref.PrefixCache(model, prefix), capture=old_cap, **kw)
    stops_seen = [g.stop for g in new]
    assert "length" in stops_seen and {"newline", "eos"} & set(stops_seen), stops_seen
    assert len({len(g.tokens) for g in new}) >= 3  # rows stop at different steps
    assert [(g.tokens, g.answer_tokens, g.stop) for g in new] == [(g.tokens, g.answer_tokens, g.stop) for g in old]
    s_new, s_old = new_cap.collector.result(), old_cap.collector.result()
    np.testing.assert_array_equal(s_new.sums, s_old.sums)
    np.testing.assert_array_equal(s_new.width, s_old.width)
    f_new, c_new = new_cap.features.result()
    f_old, c_old = old_cap.features.result()
    torch.testing.assert_close(c_new, c_old, rtol=0, atol=0)
    torch.testing.assert_close(f_new, f_old, rtol=0, atol=0, equal_nan=True)
    # statistics only (probe off) and no capture: the same tokens
    stats_only = _new_capture(model, N, features=False)
    g2 = greedy_generate(model, suffixes, PrefixCache(model, prefix), capture=stats_only, **kw_new)
    kw.pop("sample_indices")
    g3 = greedy_generate(model, suffixes, PrefixCache(model, prefix), **kw)
    assert [g.tokens for g in g2] == [g.tokens for g in g3] == [g.tokens for g in new]
    np.testing.assert_array_equal(stats_only.collector.result().sums, s_new.sums)


def test_teacher_forced_capture_identical_to_pre_sync_removal_implementation():
    model, prefix, suffixes, _ = _arch_setup("llama")
    rows = [(s, [7 + i, 40 + 3 * i, 9][: 1 + i % 3], i) for i, s in enumerate(suffixes)]
    caps = [_new_capture(model, len(rows)), _new_capture(model, len(rows), cls=ref.Capture, pf=ref.PooledFeatures)]
    teacher_forced_pass(model, rows, PrefixCache(model, prefix), 3, caps[0], pad_id=3, max_counted=2)
    ref.teacher_forced_pass(model, rows, ref.PrefixCache(model, prefix), 3, caps[1], pad_id=3, max_counted=2)
    np.testing.assert_array_equal(caps[0].collector.result().sums, caps[1].collector.result().sums)
    for a, b in zip(caps[0].features.result(), caps[1].features.result()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


SYNC_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy", "nonzero")
"""Tensor methods that read a device tensor back to the host (each a sync on an accelerator)."""

ALLOWED_SYNCS_PER_STEP = 1
"""eavss's own host syncs per decoding step of ``greedy_generate``: the stopping rule's one read of
the new tokens (with or without capture). The model's forward has its own (transformers' SDPA mask
check reads the padding mask), the same with and without capture."""


class _SyncCounter:
    """Counts calls of :data:`SYNC_METHODS` (and ``torch.nonzero``), split into those made by eavss
    code and the others (the model's own)."""

    def __init__(self, monkeypatch):
        import traceback

        self.eavss = self.other = 0

        def wrap(f):
            def counted(*a, **k):
                frame = traceback.extract_stack(limit=2)[0]  # the caller of the tensor method
                if "/eavss/" in frame.filename.replace("\\", "/"):
                    self.eavss += 1
                else:
                    self.other += 1
                return f(*a, **k)
            return counted

        for name in SYNC_METHODS:
            monkeypatch.setattr(torch.Tensor, name, wrap(getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch, "nonzero", wrap(torch.nonzero))

    def reset(self):
        self.eavss = self.other = 0

    @property
    def total(self):
        return self.eavss + self.other


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_capture_adds_no_host_sync_per_decoding_step(arch, monkeypatch):
    model, prefix, suffixes, _ = _arch_setup(arch)
    N = len(suffixes)
    cache = PrefixCache(model, prefix)
    counter = _SyncCounter(monkeypatch)

    def count(steps, capture, gen=greedy_generate):
        counter.reset()
        # no stop ids: every row runs to the cap, so the number of steps is `steps`
        gen(model, suffixes, cache, max_new_tokens=steps, newline_ids=[], eos_ids=[], pad_id=3, batch_size=N,
            capture=capture, sample_indices=list(range(N)) if capture is not None else None)
        return counter.eavss, counter.total

    plain8, plain16 = count(8, None), count(16, None)
    cap8, cap16 = count(8, _new_capture(model, N)), count(16, _new_capture(model, N))
    stats8, stats16 = count(8, _new_capture(model, N, False)), count(16, _new_capture(model, N, False))
    d_plain = [b - a for a, b in zip(plain8, plain16)]
    # eavss: exactly the stopping rule's read per step, with or without capture
    assert d_plain[0] == 8 * ALLOWED_SYNCS_PER_STEP
    for lo, hi in ((cap8, cap16), (stats8, stats16)):
        assert hi[0] - lo[0] <= 8 * ALLOWED_SYNCS_PER_STEP
        assert hi[1] - lo[1] == d_plain[1]  # capture adds 0 syncs per step, the model's own included
    # the implementation before: the probe counts (2), the NaN check (1) and more, every step
    old8 = count(8, _new_capture(model, N, cls=ref.Capture, pf=ref.PooledFeatures), ref.greedy_generate)
    old16 = count(16, _new_capture(model, N, cls=ref.Capture, pf=ref.PooledFeatures), ref.greedy_generate)
    assert old16[1] - old8[1] >= d_plain[1] + 8 * 3


# ---------------------------------------------------------------------------------------------
# staging: decoding steps reduce every layer at once


@pytest.mark.parametrize("arch,site", [(a, s) for a in ("llama", "qwen2", "gemma3")
                                       for s in ("resid_post", "resid_delta", "mlp_act")] + [("opt", "mlp_act")])
def test_staged_generation_capture_equals_per_layer(arch, site, monkeypatch):
    _staged_equals_per_layer(arch, site, monkeypatch)


def test_staging_with_a_buffer_of_one_step_flushes_as_it_fills(monkeypatch):
    """A staging buffer that holds one decoding step (``STAGE_MAX_BYTES`` tiny) is reduced every
    time the next step does not fit: still the per-layer sums to the bit, now in several reductions
    per batch."""
    import eavss.hallucination.capture as capture_mod

    monkeypatch.setattr(capture_mod, "STAGE_MAX_BYTES", 1)
    n = _staged_equals_per_layer("llama", "resid_post", monkeypatch)
    assert n > 3


def _staged_equals_per_layer(arch, site, monkeypatch) -> int:
    """Staging (default) gives the per-layer hooks' statistics and features to the last bit, and
    the decoding steps really are staged (one reduction per batch of generation, every layer and
    step in it)."""
    model, prefix, suffixes, stops = _arch_setup(arch)
    N = len(suffixes)
    kw = dict(max_new_tokens=8, newline_ids=stops[:1], eos_ids=stops[1:], pad_id=3, batch_size=4,
              sample_indices=list(range(N)))
    caps = {}
    for stage in (True, False):
        col = ActivationStatsCollector(model, site=site, rule=SparsityRule(tau=TAU),
                                       group_names=[str(i) for i in range(N)], pooled=False, block_influence=False)
        caps[stage] = Capture(col, PooledFeatures(model, N, site), stage=stage)
    calls = []
    real = ActivationStatsCollector.reduce_layers
    monkeypatch.setattr(ActivationStatsCollector, "reduce_layers",
                        lambda self, acts, layers, **kw: (calls.append(list(layers)), real(self, acts, layers, **kw))[1])
    staged = greedy_generate(model, suffixes, PrefixCache(model, prefix), capture=caps[True], **kw)
    n_staged = len(calls)
    per_layer = greedy_generate(model, suffixes, PrefixCache(model, prefix), capture=caps[False], **kw)
    assert len(calls) == n_staged > 0 and all(c == [0, 1, 2] for c in calls)  # unstaged: never called
    import eavss.hallucination.capture as capture_mod

    if capture_mod.STAGE_MAX_BYTES > 2**20:  # every decoding step of a batch reduced together: at most once per batch
        assert n_staged <= -(-N // 4)
    assert [g.tokens for g in staged] == [g.tokens for g in per_layer]
    a, b = caps[True].collector.result(), caps[False].collector.result()
    np.testing.assert_array_equal(a.sums, b.sums)
    np.testing.assert_array_equal(a.width, b.width)
    (fa, ca), (fb, cb) = caps[True].features.result(), caps[False].features.result()
    torch.testing.assert_close(ca, cb, rtol=0, atol=0)
    torch.testing.assert_close(fa, fb, rtol=0, atol=0, equal_nan=True)
    return n_staged


def test_staging_reduces_a_misfit_layer_on_its_own_and_partial_stacks():
    """A layer whose activation does not fit the buffer is reduced at once; the others are reduced
    at the flush from a partial stack: together the same sums as three per-layer reductions."""
    model = tiny_model("llama", seed=2, num_layers=3)
    g = torch.Generator().manual_seed(0)
    acts = [torch.randn(2, 1, 64, generator=g), torch.randn(2, 1, 64, generator=g, dtype=torch.float64),
            torch.randn(2, 1, 64, generator=g)]
    mask, rows = torch.ones(2, 1, dtype=torch.bool), torch.tensor([2, 0])

    def run(stage):
        col = ActivationStatsCollector(model, rule=SparsityRule(tau=TAU), group_names=["0", "1", "2"], pooled=False,
                                       block_influence=False)
        feats = PooledFeatures(model, 3)
        cap = Capture(col, feats, stage=stage)
        cap.on(mask, rows)
        for i, a in enumerate(acts):  # what the hooks would be called with
            if stage:
                cap._stage_one(i, a, (), {})
            else:
                col.reduce_layers(a[None], [i])
                feats.add_layers(a[None], [i])
        if stage:
            assert cap._staged == [0, 2]  # layer 1 (float64, not the buffer's float32) was reduced at once
        cap.off()
        return col.result(), feats._sums

    (s1, f1), (s2, f2) = run(True), run(False)
    np.testing.assert_array_equal(s1.sums, s2.sums)
    assert list(s1.width) == [64, 64, 64] and s1.sums[:, :, F["n_tokens"]].sum() == 3 * 2
    torch.testing.assert_close(f1, f2, rtol=0, atol=0)


def test_reduce_layers_equals_the_hooks_and_refuses_what_needs_layer_inputs():
    """Stacked reduction of random activations = the per-layer hook path (float64 accumulators), for
    every group assignment; a collector with block influence or massive-token exclusion refuses."""
    from eavss.errors import EavssError

    model = tiny_model("qwen2", seed=1, num_layers=4)
    g = torch.Generator().manual_seed(1)
    acts = torch.randn(4, 3, 2, 32, generator=g, dtype=torch.float64) * 0.1
    mask = torch.tensor([[1, 1], [0, 1], [1, 0]], dtype=torch.bool)
    groups = torch.tensor([1, 0, 1])
    cols = [ActivationStatsCollector(model, group_names=["a", "b"], pooled=True, block_influence=False) for _ in range(2)]
    for c in cols:
        c.set_batch(mask, groups)
    cols[0].reduce_layers(acts, [0, 1, 2, 3])
    for layer in range(4):  # the hook's own path, layer by layer
        cols[1]._on_activation(layer, acts[layer], (), {})
    np.testing.assert_allclose(cols[0].result().sums, cols[1].result().sums, rtol=1e-12, atol=1e-12)
    # a partial stack (layers out of order) adds into the right rows
    c = ActivationStatsCollector(model, group_names=["a", "b"], pooled=True, block_influence=False)
    c.set_batch(mask, groups)
    c.reduce_layers(acts[[3, 1]], [3, 1])
    c.reduce_layers(acts[[0, 2]], [0, 2])
    np.testing.assert_allclose(c.result().sums, cols[1].result().sums, rtol=1e-12, atol=1e-12)
    for kw in (dict(block_influence=True), dict(block_influence=False, massive=4.0)):
        c = ActivationStatsCollector(model, group_names=["a", "b"], **kw)
        c.set_batch(mask, groups)
        assert not c.stackable
        with pytest.raises(EavssError, match="block_influence=False and massive=None"):
            c.reduce_layers(acts, [0, 1, 2, 3])


def test_interrupt_in_a_decoding_step_then_off_outside_inference_mode():
    """Ctrl-C inside a decoding step leaves staged layers pending; the caller's ``finally:
    capture.off()`` runs outside generation's inference mode and must still reduce them (it raised
    "Inplace update to inference tensor outside InferenceMode")."""
    model, prefix, suffixes, stops = _arch_setup("llama")
    N = len(suffixes)
    cap = _new_capture(model, N)
    calls = {"n": 0}

    def stop_on_the_fifth(module, args, output):
        calls["n"] += 1
        if calls["n"] == 5:  # the prefill (1) and three decoding steps have run; the fourth stops in layer 2
            raise KeyboardInterrupt

    from eavss.models.layers import find_decoder_layers

    h = find_decoder_layers(model)[1][-1].register_forward_hook(stop_on_the_fifth)
    try:
        with pytest.raises(KeyboardInterrupt):
            greedy_generate(model, suffixes, PrefixCache(model, prefix), max_new_tokens=8, newline_ids=[], eos_ids=[],
                            pad_id=3, batch_size=8, capture=cap, sample_indices=list(range(N)))
    finally:
        h.remove()
    assert cap._staged  # layers 0 and 1 of the interrupted step are staged
    cap.off()  # outside inference mode
    assert not cap._staged and cap.collector.result().sums[:, :, F["n_tokens"]].sum() > 0


def test_staged_passes_of_different_lengths_counts_and_buffer_release():
    """Staged passes with different token counts per row (T = 1, 3, 1), one of which stages
    nothing (no forward after ``on``), flush together: the per-layer sums and token counts of
    reducing each pass on its own; the collector counts one batch per pass; ``off`` releases the
    staging buffer; a mask that does not match the activations is refused."""
    from eavss.errors import EavssError

    model = tiny_model("llama", seed=4, num_layers=2)
    g = torch.Generator().manual_seed(3)
    passes = [(torch.tensor([[True], [True]]), torch.tensor([0, 1]), torch.randn(2, 2, 1, 32, generator=g)),
              (torch.tensor([[True, False, True]]), torch.tensor([2]), None),  # on() without a forward
              (torch.tensor([[True], [False]]), torch.tensor([1, 2]), torch.randn(2, 2, 1, 32, generator=g))]

    def run(stage):
        col = ActivationStatsCollector(model, rule=SparsityRule(tau=TAU), group_names=["0", "1", "2"], pooled=False,
                                       block_influence=False)
        feats = PooledFeatures(model, 3)
        cap = Capture(col, feats, stage=stage)
        for mask, rows, acts in passes:
            cap.on(mask, rows)
            for i in range(2 if acts is not None else 0):
                if stage:
                    cap._stage_one(i, acts[i], (), {})
                else:
                    col.reduce_layers(acts[i][None], [i])
                    feats.add_layers(acts[i][None], [i])
        if stage:
            assert cap._buf is not None
        cap.off()
        assert cap._buf is None
        return col, feats

    (c1, f1), (c2, f2) = run(True), run(False)
    np.testing.assert_array_equal(c1.result().sums, c2.result().sums)
    torch.testing.assert_close(f1._sums, f2._sums, rtol=0, atol=0)
    torch.testing.assert_close(f1.counts, f2.counts, rtol=0, atol=0)
    assert f1.counts.tolist() == [1.0, 2.0, 2.0]
    assert c1.num_batches == c2.num_batches == 3
    cap = _new_capture(model, 3)
    cap.on(torch.ones(2, 1, dtype=torch.bool), torch.tensor([0, 1]))
    with pytest.raises(EavssError, match="does not match the token mask"):
        cap._stage_one(0, torch.randn(3, 1, 32), (), {})
