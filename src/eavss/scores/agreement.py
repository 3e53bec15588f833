"""Rank agreement between two per-layer scores: Spearman correlation and top-k overlap.

Used wherever one ranking of layers is held against another: EAVSS against probe separability,
a layer-importance score against the ground-truth ablation, metrics against each other.
"""

from __future__ import annotations

import numpy as np

AGREEMENT_LEVELS = ((0.5, "agrees"), (0.3, "weak agreement"), (0.0, "little or no agreement"))
"""Verdict thresholds on Spearman's rho (>= 0.5 agrees, >= 0.3 weak, >= 0 little or none;
negative: disagrees)."""


def top_k(score: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` largest values of ``score`` ``(L,)``, largest first; ties: lower index first."""
    s = np.asarray(score, dtype=np.float64)
    return [int(i) for i in np.argsort(-s, kind="stable")[:min(k, len(s))]]


def rank_agreement(score: np.ndarray, reference: np.ndarray, k: int) -> dict:
    """How well the ranking of ``score`` agrees with the ranking of ``reference``.

    Args:
        score: ``(L,)`` per-layer values (higher = ranked first).
        reference: ``(L,)`` per-layer values of the reference ranking (higher = ranked first).
        k: size of the top sets compared.

    Returns:
        ``{"spearman", "p_value" (two-sided, scipy), "top_k_overlap", "top_k_chance" (= k^2/L,
        the expected overlap of two random top-k sets), "top_k_score", "top_k_reference",
        "verdict"}``. Spearman and p are NaN (verdict "undefined") when either input is constant.

    Raises:
        ValueError: the two inputs differ in length or are empty.

    Source: Spearman (1904) rank correlation, ``scipy.stats.spearmanr``.
    """
    from scipy.stats import spearmanr

    e = np.asarray(score, dtype=np.float64)
    a = np.asarray(reference, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1 or len(e) == 0:
        raise ValueError(f"rank_agreement needs two (L,) vectors of equal length, got {e.shape} and {a.shape}")
    L = len(e)
    kk = min(k, L)
    if np.ptp(e) == 0 or np.ptp(a) == 0:
        rho, p = float("nan"), float("nan")
    else:
        res = spearmanr(e, a)
        rho, p = float(res.statistic), float(res.pvalue)
    te, ta = top_k(e, kk), top_k(a, kk)
    verdict = "undefined (constant scores)"
    if np.isfinite(rho):
        verdict = "disagrees (negative correlation)" if rho < 0 else next(
            (name for thr, name in AGREEMENT_LEVELS if rho >= thr), "little or no agreement")
    return {"spearman": rho, "p_value": p, "top_k_overlap": len(set(te) & set(ta)), "top_k_chance": kk * kk / L,
            "top_k_score": te, "top_k_reference": ta, "verdict": verdict}
