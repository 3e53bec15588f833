"""AVSS: Activation Variance-Sparsity Score (Song et al., arXiv 2411.02117, Sec. 3).

Pure numpy functions over per-layer vectors of length ``L``. The paper defines, for layer ``l``,
``AVSS_l = Var_norm(l) / Sparsity_norm(l)`` from layer-normalised activation variance and
sparsity, normalises AVSS across layers, and ranks layers by it (higher = more important).
Its choices that the paper leaves open are arguments here, documented in ``docs/method.md``.
"""

from __future__ import annotations

import numpy as np

from eavss.errors import EavssError
from eavss.registry import choices

NORMALISATIONS = choices(("sum", "x / sum over layers (official code; keeps the ranking)"),
                         ("max", "x / max over layers"), ("none", "unchanged"),
                         kind="normalisation", key="scores.normalisation")
GUARDS = choices(("half_count", "floor sparsity at 0.5 / elements counted, only active at sparsity 0"),
                 ("none", "no floor; a zero sparsity raises"), kind="sparsity guard", key="scores.sparsity_guard")


def normalise(x: np.ndarray, method: str = "sum") -> np.ndarray:
    """Normalise a non-negative per-layer vector across layers.

    ``sum``: ``x / sum(x)`` (the official code's normalisation of AVSS; values sum to 1).
    ``max``: ``x / max(x)``. ``none``: unchanged. Both keep ratios, hence AVSS's ranking.
    (Min-max and z-score were considered and rejected: they map a layer to 0 or below,
    which makes a ratio of normalised values undefined or sign-flipping.)

    Args:
        x: ``(L,)`` float array, non-negative.

    Raises:
        EavssError: unknown method, negative or non-finite input, or all-zero input.
    """
    x = np.asarray(x, dtype=np.float64)
    if method not in NORMALISATIONS:
        raise EavssError(f"unknown normalisation {method!r}; choose one of {list(NORMALISATIONS)}")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise EavssError("cannot normalise: per-layer values must be finite and non-negative "
                         f"(got min {np.nanmin(x):.3g}); check the statistics for empty layers")
    if method == "none":
        return x.copy()
    denom = x.sum() if method == "sum" else x.max()
    if denom <= 0:
        raise EavssError("cannot normalise: every layer's value is 0; the statistics carry no signal "
                         "(is the sparsity threshold so high that everything is 'near zero'?)")
    return x / denom


def guarded_sparsity(sparsity: np.ndarray, n_elements: np.ndarray, guard: str = "half_count") -> tuple[np.ndarray, np.ndarray]:
    """Floor sparsity so that ``variance / sparsity`` stays finite.

    ``half_count`` (default): ``s_l <- max(s_l, 0.5 / N_l)``, ``N_l`` the number of elements the
    sparsity was measured on -- half of the smallest non-zero value the estimate can take, a
    continuity correction that is only active when no element at all was near zero. ``none``:
    no floor (a zero sparsity then raises).

    Args:
        sparsity: ``(L,)`` fractions in [0, 1].
        n_elements: ``(L,)`` element counts.

    Returns:
        ``(guarded, hit)``: the floored ``(L,)`` sparsity and a bool ``(L,)`` mask of layers
        where the floor was used.

    Raises:
        EavssError: unknown guard, or ``guard="none"`` with a zero sparsity.
    """
    s = np.asarray(sparsity, dtype=np.float64)
    n = np.asarray(n_elements, dtype=np.float64)
    if guard not in GUARDS:
        raise EavssError(f"unknown sparsity guard {guard!r}; choose one of {list(GUARDS)}")
    floor = 0.5 / np.maximum(n, 1.0)
    hit = s < floor
    if guard == "none":
        if np.any(s <= 0):
            raise EavssError(f"sparsity is 0 on layers {np.flatnonzero(s <= 0).tolist()}, so AVSS = variance/0 is "
                             "infinite; use scores.sparsity_guard=half_count or a relative threshold (stats.sparsity.mode=relative)")
        return s.copy(), np.zeros_like(hit)
    return np.maximum(s, floor), hit


def avss_scores(variance: np.ndarray, sparsity: np.ndarray, n_elements: np.ndarray,
                normalisation: str = "sum", guard: str = "half_count") -> dict[str, np.ndarray]:
    """Per-layer AVSS and its parts.

    ``var_norm = normalise(variance)``, ``sparsity_norm = normalise(guarded sparsity)``,
    ``avss = var_norm / sparsity_norm``, ``avss_norm = avss / sum(avss)``; ``importance_rank`` is
    1 for the highest AVSS (most important), ``L`` for the lowest; ties broken by lower index first.

    Args:
        variance: ``(L,)`` per-layer activation variance (act^2 units).
        sparsity: ``(L,)`` fraction of near-zero elements.
        n_elements: ``(L,)`` elements the sparsity was measured on (for the guard).

    Returns:
        dict of ``(L,)`` arrays: ``variance``, ``sparsity``, ``var_norm``, ``sparsity_norm``,
        ``avss``, ``avss_norm``, ``importance_rank`` (int), ``guard_hit`` (bool).

    Raises:
        EavssError: see :func:`normalise` and :func:`guarded_sparsity`.
    """
    v = np.asarray(variance, dtype=np.float64)
    s_g, hit = guarded_sparsity(sparsity, n_elements, guard)
    v_n = normalise(v, normalisation)
    s_n = normalise(s_g, normalisation)
    a = v_n / s_n
    return {
        "variance": v,
        "sparsity": np.asarray(sparsity, dtype=np.float64),
        "var_norm": v_n,
        "sparsity_norm": s_n,
        "avss": a,
        "avss_norm": normalise(a, "sum"),
        "importance_rank": importance_rank(a),
        "guard_hit": hit,
    }


def importance_rank(score: np.ndarray) -> np.ndarray:
    """Rank ``1..L`` with 1 = highest score; equal scores rank the lower layer index first."""
    score = np.asarray(score, dtype=np.float64)
    order = sorted(range(len(score)), key=lambda i: (-score[i], i))
    rank = np.empty(len(score), dtype=np.int64)
    rank[order] = np.arange(1, len(score) + 1)
    return rank
