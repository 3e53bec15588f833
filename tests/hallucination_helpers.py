"""Shared helpers of the hallucination tests: synthetic labelled samples, capture on tiny models,
and a slow float64 reference of HSAV/HSS."""

from __future__ import annotations


import numpy as np

from eavss.hallucination.capture import (Capture, PooledFeatures, PrefixCache, teacher_forced_pass)
from eavss.stats import ActivationStatsCollector, SparsityRule

TAU = 0.01



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


def _stats_from_arrays(acts, tau=TAU):
    """Per-sample :class:`LayerStatistics` (one group per sample) from plain activations, reduced by
    the engine's own per-sequence reduction (:func:`eavss.stats.reduce.reduce_activations`).

    Args:
        acts: per sample, an ``(L, T, D)`` float array (every token counts).
    """
    import torch

    from eavss.stats.accumulators import LayerStatistics
    from eavss.stats.reduce import reduce_activations

    rule = SparsityRule(tau=tau)
    L, _, D = acts[0].shape
    sums = np.zeros((len(acts), L, len(__import__("eavss.stats.accumulators", fromlist=["FIELDS"]).FIELDS)))
    for i, a in enumerate(acts):
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # (L, T, D): layers as the batch axis
        sums[i] = reduce_activations(t, torch.ones(t.shape[:2], dtype=torch.bool), rule, pooled=False).numpy()
    return LayerStatistics(sums, np.full(L, D, dtype=np.int64), "resid_post", [str(i) for i in range(len(acts))],
                           rule.describe(), False)


def _planted_confounds(seed=0, n_pairs=40, n_gen=80, L=6, D=32, planted=4, length_layer=1, first_token_layer=2,
                       scale=1.12, massive=60.0):
    """Synthetic answers in which one layer differs by class and two layers carry massive-activation
    artefacts that follow the answer's *form*, as measured on SmolLM2 (docs/hallucination.md):

    * source ``pairs`` (teacher-forced pairs, one question = one truthful + one hallucinated
      answer): hallucinated answers are about twice as long (4-8 vs 8-16 tokens); at
      ``length_layer`` a token carries a massive activation (a few dimensions ~``massive`` times
      the rest, heavy-tailed magnitude) with probability 3% from position 4 on -- so long answers
      hold more of them, rarely and noisily;
    * source ``gen`` (generated answers, half of each class): the first answer token is id 7 in 60%
      of hallucinated and 40% of truthful answers; at ``first_token_layer`` token 7 in first
      position carries a massive activation;
    * at ``planted`` every token of a hallucinated answer is scaled by ``scale`` (a small, steady
      class difference on every token).

    Returns:
        ``(SampleStatistics, answer token ids per sample)``.
    """
    from eavss.scores.hallucination import SampleStatistics

    g = np.random.default_rng(seed)
    acts, ids, labels, strata, clusters = [], [], [], [], []

    def answer(y, n, first7):
        tok = g.integers(10, 400, size=n)
        if first7:
            tok[0] = 7
        a = g.standard_normal((L, n, D)) * np.linspace(1, 4, L)[:, None, None]
        for t in range(n):
            if t >= 4 and g.random() < 0.03:
                a[length_layer, t, :3] *= massive * g.lognormal(0, 0.7)
            if t == 0 and tok[0] == 7:
                a[first_token_layer, t, :3] *= massive * g.lognormal(0, 0.7)
        if y == 1:
            a[planted] *= scale
        return a, tok.tolist()

    for q in range(n_pairs):
        for y in (0, 1):
            n = int(g.integers(4, 9)) if y == 0 else int(g.integers(8, 17))
            a, tok = answer(y, n, False)
            acts.append(a), ids.append(tok), labels.append(y), strata.append("pairs"), clusters.append(f"pairs:{q}")
    for q in range(n_gen):
        y = q % 2
        a, tok = answer(y, int(g.integers(3, 9)), g.random() < (0.6 if y else 0.4))
        acts.append(a), ids.append(tok), labels.append(y), strata.append("gen"), clusters.append(f"gen:{q}")
    ss = SampleStatistics(_stats_from_arrays(acts), np.array(labels), np.array(strata, dtype=object),
                          np.array(clusters, dtype=object))
    return ss, ids
