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


def spearman_ci(rho: float, n: int, level: float = 0.95) -> list[float]:
    """Confidence interval of a Spearman correlation ``rho`` over ``n`` paired items (layers).

    Fisher's z-transform with the standard error of Spearman's rho, ``sqrt(1.06 / (n - 3))``
    (Fieller, Hartley & Pearson 1957; Bonett & Wright 2000 compare it with alternatives):
    ``tanh(atanh(rho) -+ z_{(1+level)/2} * se)``. ``|rho| = 1`` is clipped just inside, so the
    interval reaches +-1 on that side.

    Returns:
        ``[low, high]``; ``[nan, nan]`` when ``rho`` is not finite or ``n < 4`` (no standard error).
    """
    from scipy.stats import norm

    if not np.isfinite(rho) or n < 4:
        return [float("nan"), float("nan")]
    z = np.arctanh(np.clip(rho, -1 + 1e-12, 1 - 1e-12))
    half = float(norm.ppf(0.5 + level / 2)) * np.sqrt(1.06 / (n - 3))
    return [float(np.tanh(z - half)), float(np.tanh(z + half))]


def rank_agreement(score: np.ndarray, reference: np.ndarray, k: int) -> dict:
    """How well the ranking of ``score`` agrees with the ranking of ``reference``.

    Args:
        score: ``(L,)`` per-layer values (higher = ranked first).
        reference: ``(L,)`` per-layer values of the reference ranking (higher = ranked first).
        k: size of the top sets compared.

    Returns:
        ``{"spearman", "spearman_ci" (95 %, :func:`spearman_ci` over the L layers), "p_value"
        (two-sided, scipy), "top_k_overlap", "top_k_chance" (= k^2/L,
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
    return {"spearman": rho, "spearman_ci": spearman_ci(rho, L), "p_value": p, "top_k_overlap": len(set(te) & set(ta)),
            "top_k_chance": kk * kk / L, "top_k_score": te, "top_k_reference": ta, "verdict": verdict}


def bottom_k(score: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` smallest values of ``score`` ``(L,)``, smallest first; ties: lower index first."""
    s = np.asarray(score, dtype=np.float64)
    return [int(i) for i in np.argsort(s, kind="stable")[:min(k, len(s))]]


def removal_cost(score: np.ndarray, cost: np.ndarray, k: int) -> dict:
    """What removing the ``k`` lowest-``score`` layers costs by a ground truth, against the cheapest
    ``k`` (the oracle).

    Args:
        score: ``(L,)`` importance (higher = keep); its ``k`` lowest layers are the ones removed.
        cost: ``(L,)`` ground-truth cost of removing each layer alone (e.g. the calibration-loss
            increase when it is skipped, nats/token).
        k: number of layers removed.

    Returns:
        ``{"k", "removed" (sorted), "cost" (sum of the removed layers' single-layer costs),
        "oracle_removed", "oracle_cost" (sum of the k smallest costs), "overlap" (layers in both
        sets), "excess" (cost - oracle_cost, >= 0)}``. Single-layer costs do not add up exactly
        when layers are removed together; the sum is the first-order estimate the comparison uses.

    Raises:
        ValueError: inputs of different length, or k outside 1..L.
    """
    s, c = np.asarray(score, dtype=np.float64), np.asarray(cost, dtype=np.float64)
    if s.shape != c.shape or s.ndim != 1:
        raise ValueError(f"removal_cost needs two (L,) vectors, got {s.shape} and {c.shape}")
    if not 1 <= k <= len(s):
        raise ValueError(f"k={k} must be in 1..{len(s)}")
    removed, oracle = sorted(bottom_k(s, k)), sorted(bottom_k(c, k))
    got, best = float(c[removed].sum()), float(c[oracle].sum())
    return {"k": k, "removed": removed, "cost": got, "oracle_removed": oracle, "oracle_cost": best,
            "overlap": len(set(removed) & set(oracle)), "excess": got - best}
