"""Surface baselines: how well does the *form* of an answer alone predict its label?

A probe AUROC means little if trivial features of the answer text reach it too. On the default
run, answer length alone separates HaluEval's pairs about as well as the best probe layer
(HaluEval's hallucinated answers are sentences, its right answers names), and the first answer
tokens separate TruthfulQA's pairs (its incorrect answers open with different words). So beside
every probe AUROC the report puts the out-of-fold AUROC of three surface models, fitted with
**the same folds** as the probe (:func:`eavss.hallucination.probe.cv_folds`: grouped by
question, stratified by source x label, same seed) and summarised the same way (per source,
within-source mean, pooled; :func:`eavss.hallucination.probe.source_aurocs`):

================  ==========================================================================
name              features of an answer (its counted token ids ``a_1..a_n``)
================  ==========================================================================
``length``        ``n`` and ``log n`` (standardised): the answer length in tokens
``first_tokens``  one-hot of ``(position, token id)`` for positions ``1..k`` (default k = 3),
                  plus one "no token" indicator per position for answers shorter than ``k``
``bag_of_tokens`` token-id counts over the whole answer (a bag of words on token ids)
================  ==========================================================================

Each is an L2 logistic regression (sklearn, strength ``C``). The answer tokens are those the
statistics and the probe see (all answer tokens, or the first ``stats.first_answer_tokens``), so
a baseline never uses text the probe could not read. :func:`compare_with_probe` says whether the
best probe layer beats the best baseline by a margin.
"""

from __future__ import annotations

import time
import warnings
from typing import Sequence

import numpy as np

from eavss.errors import EavssError

BASELINES = {
    "length": "answer length in tokens (n, log n; standardised)",
    "first_tokens": "one-hot of the first k answer token ids, by position",
    "bag_of_tokens": "token-id counts over the answer",
}
"""The surface baselines and what each one sees."""


def _vocab(answers: Sequence[Sequence[int]]) -> dict[int, int]:
    ids = sorted({int(t) for a in answers for t in a})
    return {t: j for j, t in enumerate(ids)}


def length_features(answers: Sequence[Sequence[int]]) -> np.ndarray:
    """``(N, 2)`` float: ``n`` and ``log n`` per answer (``n`` = number of tokens, at least 1)."""
    n = np.array([max(len(a), 1) for a in answers], dtype=np.float64)
    return np.stack([n, np.log(n)], 1)


def first_token_features(answers: Sequence[Sequence[int]], k: int = 3):
    """``(N, k * (V + 1))`` sparse one-hot of the token id at each of the first ``k`` positions
    (``V`` = distinct ids at that position; the extra column marks an answer shorter than the
    position). Column order: position, then token id."""
    from scipy.sparse import csr_matrix

    rows, cols = [], []
    offset = 0
    for pos in range(k):
        vocab = _vocab([a[pos:pos + 1] for a in answers])
        for i, a in enumerate(answers):
            rows.append(i)
            cols.append(offset + (vocab[int(a[pos])] if len(a) > pos else len(vocab)))
        offset += len(vocab) + 1
    return csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(answers), offset))


def bag_of_tokens_features(answers: Sequence[Sequence[int]]):
    """``(N, V)`` sparse token-id counts (``V`` = distinct ids over all answers)."""
    from scipy.sparse import csr_matrix

    vocab = _vocab(answers)
    rows, cols = [], []
    for i, a in enumerate(answers):
        rows += [i] * len(a)
        cols += [vocab[int(t)] for t in a]
    return csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(answers), max(len(vocab), 1)))


def _oof(X, y: np.ndarray, splits, C: float, max_iter: int, scale: bool) -> np.ndarray:
    """Out-of-fold decision values of an L2 logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    oof = np.zeros(len(y))
    for tr, te in splits:
        if len(np.unique(y[tr])) < 2:
            continue
        lr = LogisticRegression(C=C, max_iter=max_iter)
        clf = make_pipeline(StandardScaler(), lr) if scale else lr
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on separable data
            clf.fit(X[tr], y[tr])
        oof[te] = clf.decision_function(X[te])
    return oof


def surface_baselines(answers: Sequence[Sequence[int]], y: np.ndarray, groups: np.ndarray, strata: np.ndarray,
                      folds: int = 5, seed: int = 0, first_tokens: int = 3, C: float = 1.0,
                      max_iter: int = 1000) -> dict:
    """Out-of-fold AUROC of the surface baselines (:data:`BASELINES`), with the probe's folds.

    Args:
        answers: per sample, the counted answer token ids (non-empty).
        y: ``(N,)`` labels, 1 = hallucinated, 0 = truthful.
        groups: ``(N,)`` question ids; strata: ``(N,)`` source names -- the same arrays, in the same
            order, as given to :func:`eavss.hallucination.probe.probe_layers`, so the folds are identical.
        folds, seed: as for the probe. first_tokens: ``k`` of the first-token baseline.
        C: inverse L2 strength (one-hot and count features are not standardised; length is).

    Returns:
        ``{"auroc": {name: within-source mean}, "auroc_pooled": {name: float}, "auroc_by_source":
        {name: {source: float}}, "sources_used", "best" (name with the highest within-source
        AUROC), "features": {name: description}, "folds", "first_tokens", "C", "mean_tokens":
        {"truthful", "hallucinated"}, "seconds", "protocol"}``.

    Raises:
        EavssError: shapes that disagree, an empty answer, or fewer than 2 answers of a class.
    """
    from threadpoolctl import threadpool_limits

    from eavss.hallucination.probe import cv_folds, source_aurocs

    y = np.asarray(y).astype(int)
    strata = np.asarray(strata, dtype=object)
    if not (len(answers) == len(y) == len(groups) == len(strata)):
        raise EavssError(f"baselines: {len(answers)} answers, {len(y)} labels, {len(groups)} groups and "
                         f"{len(strata)} strata; they must be one per sample")
    if any(len(a) == 0 for a in answers):
        raise EavssError("baselines: an answer has no counted tokens; leave such answers out")
    if min((y == 0).sum(), (y == 1).sum()) < 2:
        raise EavssError(f"baselines need at least 2 answers of each class, got {(y == 0).sum()} truthful and "
                         f"{(y == 1).sum()} hallucinated; raise the limits")
    t0 = time.perf_counter()
    splits = cv_folds(y, np.asarray(groups, dtype=object), strata, folds, seed)
    feats = {"length": (length_features(answers), True),
             "first_tokens": (first_token_features(answers, first_tokens), False),
             "bag_of_tokens": (bag_of_tokens_features(answers), False)}
    out: dict = {"auroc": {}, "auroc_pooled": {}, "auroc_by_source": {}}
    with threadpool_limits(1):
        for name, (X, scale) in feats.items():
            oof = _oof(X, y, splits, C, max_iter, scale)
            within, pooled, by_source = source_aurocs(y, oof, strata)
            out["auroc"][name], out["auroc_pooled"][name], out["auroc_by_source"][name] = within, pooled, by_source
    n = np.array([len(a) for a in answers], dtype=np.float64)
    out.update({
        "sources_used": list(next(iter(out["auroc_by_source"].values()))),
        "best": max(out["auroc"], key=lambda k: out["auroc"][k]),
        "features": {k: v.replace("first k", f"first {first_tokens}") for k, v in BASELINES.items()},
        "folds": len(splits), "first_tokens": first_tokens, "C": C,
        "mean_tokens": {"truthful": float(n[y == 0].mean()), "hallucinated": float(n[y == 1].mean())},
        "seconds": time.perf_counter() - t0,
        "protocol": f"{len(splits)}-fold CV with the probe's folds (grouped by question, stratified by label x source, "
                    "same seed); L2 LogisticRegression(C) per baseline on the counted answer token ids; AUROC of "
                    "out-of-fold decision values; headline = mean of per-source AUROCs",
    })
    return out


def compare_with_probe(probe_auroc: Sequence[float], probe_by_source: dict, baselines: dict, margin: float = 0.05) -> dict:
    """Does the best probe layer beat the best surface baseline by ``margin``?

    Args:
        probe_auroc: ``(L,)`` within-source mean probe AUROC per layer.
        probe_by_source: ``{source: (L,)}`` probe AUROC per source.
        baselines: the output of :func:`surface_baselines`.
        margin: AUROC units.

    Returns:
        ``{"margin", "probe_layer", "probe_auroc", "baseline", "baseline_auroc", "gap" (probe -
        baseline), "beats" (gap >= margin), "by_source": {source: {"probe_layer", "probe_auroc",
        "baseline", "baseline_auroc", "gap", "beats"}}, "warning" (None when the probe beats the
        baseline)}``. The probe's best layer is picked after the fact (the maximum over layers),
        which favours the probe; a baseline that still comes within the margin is a strong sign
        that the probe reads answer form.
    """
    au = np.asarray(probe_auroc, dtype=np.float64)
    layer = int(np.argmax(au))
    b_name = max(baselines["auroc"], key=lambda k: baselines["auroc"][k])
    b_val = float(baselines["auroc"][b_name])
    gap = float(au[layer] - b_val)
    res = {"margin": margin, "probe_layer": layer, "probe_auroc": float(au[layer]), "baseline": b_name,
           "baseline_auroc": b_val, "gap": gap, "beats": bool(gap >= margin), "by_source": {}, "warning": None}
    weak = []
    for src, v in probe_by_source.items():
        bs = {n: d[src] for n, d in baselines["auroc_by_source"].items() if src in d}
        if not bs:
            continue
        v = np.asarray(v, dtype=np.float64)
        bn = max(bs, key=lambda k: bs[k])
        g = float(v.max() - bs[bn])
        res["by_source"][src] = {"probe_layer": int(np.argmax(v)), "probe_auroc": float(v.max()), "baseline": bn,
                                 "baseline_auroc": float(bs[bn]), "gap": g, "beats": bool(g >= margin)}
        if g < margin:
            weak.append(f"{src} ({bn} {bs[bn]:.2f} vs probe {v.max():.2f})")
    if not res["beats"]:
        res["warning"] = (f"The best probe layer ({layer}, AUROC {au[layer]:.3f}) does not beat the best surface baseline "
                          f"({b_name}, AUROC {b_val:.3f}) by {margin:g}: the probe may read the form of the answers "
                          "(length, first words) rather than whether they are true."
                          + (f" Sources where a baseline comes within {margin:g} of the probe: {', '.join(weak)}." if weak else ""))
    elif weak:
        res["warning"] = (f"In some sources a surface baseline comes within {margin:g} of the best probe layer: "
                          f"{', '.join(weak)}; the probe AUROC there may reflect answer form.")
    return res
