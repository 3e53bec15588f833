"""Diagnostics of the per-layer statistics that AVSS rests on.

Pure numpy functions over per-layer vectors of length ``L``; they say whether a score's inputs
carry information, they never change a score. See ``docs/method.md`` ("Does the sparsity term
carry information?") for the thresholds and the reasons behind them.
"""

from __future__ import annotations

import numpy as np

from eavss.errors import EavssError

MIN_COUNT = 1000
"""Default ``min_count``: near-zero elements a layer's sparsity should rest on. A count ``c`` has a
relative standard error of about ``1/sqrt(c)`` (binomial with a small fraction, ~Poisson):
3.2 % at 1,000, 16 % at 40 -- below ~1,000 the ratios between layers that AVSS divides by are
mostly counting noise."""

MIN_RANGE = 1.5
"""Default ``min_range``: the smallest across-layer ratio ``max / min`` of sparsity for the
sparsity term to move AVSS appreciably. AVSS = ``var_norm / sparsity_norm``; a sparsity that varies
by less than 1.5x across layers changes each layer's AVSS by less than 1.5x, while residual-stream
variance varies by 10-1000x across layers (docs/method.md, "Measured"), so the ranking is then
essentially the variance ranking."""


def sparsity_information(sparsity, near_zero_counts, n_elements, min_count: float = MIN_COUNT,
                         min_range: float = MIN_RANGE) -> dict:
    """Whether a per-layer sparsity vector carries information, with the reasons when it does not.

    Args:
        sparsity: ``(L,)`` fraction of near-zero elements per layer (``LayerStatistics.sparsity()``).
        near_zero_counts: ``(L,)`` near-zero element counts the sparsity was measured from (the
            ``near_zero`` field of the statistics).
        n_elements: ``(L,)`` elements observed per layer (``LayerStatistics.n_elements()``).
        min_count: a layer whose count is below this is flagged as resting on counting noise.
        min_range: an across-layer ``max / min`` below this is flagged as nearly constant.

    Returns:
        dict with ``sparsity``, ``near_zero_counts``, ``n_elements`` (``(L,)`` float arrays, as
        given), ``relative_se`` (``(L,)``, ``1/sqrt(count)``, inf at 0: the counting noise of each
        layer's sparsity), ``min_count_layer`` (the layer with the fewest near-zero elements) and
        ``min_count_value``, ``ratio`` (``max / min`` sparsity across layers; inf when some layer is
        0 and another is not, NaN when all are 0), ``argmax_layer``, ``argmin_layer``,
        ``low_count_layers`` and ``zero_layers`` (lists of layer indices), ``nearly_constant``
        (bool), ``informative`` (bool: no warning), ``warnings`` (list of sentences, in the order
        zero / counting noise / nearly constant) and ``thresholds`` (``min_count``, ``min_range``).

    Raises:
        EavssError: the three vectors differ in shape or are empty; a value is negative or not
            finite; a count exceeds its element count; a non-positive threshold.
    """
    s = np.asarray(sparsity, dtype=np.float64)
    c = np.asarray(near_zero_counts, dtype=np.float64)
    n = np.asarray(n_elements, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or c.shape != s.shape or n.shape != s.shape:
        raise EavssError(f"sparsity, near_zero_counts and n_elements must be non-empty vectors of one length (L,); "
                         f"got shapes {s.shape}, {c.shape}, {n.shape}")
    for name, x in (("sparsity", s), ("near_zero_counts", c), ("n_elements", n)):
        if not np.all(np.isfinite(x)) or np.any(x < 0):
            raise EavssError(f"{name} must be finite and non-negative on every layer (a layer with no tokens gives "
                             f"NaN); got {x.tolist()}")
    if np.any(c > n):
        raise EavssError("a near-zero count exceeds its layer's element count; the vectors do not belong together")
    if not (min_count > 0 and min_range > 1):
        raise EavssError(f"min_count must be > 0 and min_range > 1; got {min_count}, {min_range}")

    L = s.size
    with np.errstate(divide="ignore"):
        rse = np.where(c > 0, 1.0 / np.sqrt(np.maximum(c, 1.0)), np.inf)
    lo, hi = float(s.min()), float(s.max())
    ratio = float("nan") if hi == 0 else (float("inf") if lo == 0 else hi / lo)
    zero = [int(i) for i in np.flatnonzero(c == 0)]
    low = [int(i) for i in np.flatnonzero((c > 0) & (c < min_count))]
    nearly_constant = bool(np.isfinite(ratio) and ratio < min_range)
    i_min = int(np.argmin(c))

    warnings: list[str] = []
    if zero:
        warnings.append(
            f"{len(zero)} of {L} layers have no near-zero element at all (layers {_layers(zero)}): their sparsity is 0 "
            f"and AVSS = variance / sparsity rests on the guard (scores.sparsity_guard), not on a measurement.")
    if low:
        j = low[int(np.argmin(c[low]))]  # the fewest among the non-zero counts
        warnings.append(
            f"{len(low)} of {L} layers rest on fewer than {min_count:g} near-zero elements (layers {_layers(low)}; "
            f"fewest: {c[j]:.0f} of {n[j]:.0f} at layer {j}, relative standard error ~1/sqrt(count) = "
            f"{rse[j]:.0%}): their sparsity, and AVSS's ratios between layers, are counting noise.")
    if nearly_constant:
        warnings.append(
            f"sparsity is nearly constant across layers (max/min = {ratio:.2f} < {min_range:g}, from layer "
            f"{int(np.argmin(s))} to layer {int(np.argmax(s))}): AVSS is then essentially variance.")
    return {
        "sparsity": s,
        "near_zero_counts": c,
        "n_elements": n,
        "relative_se": rse,
        "min_count_layer": i_min,
        "min_count_value": float(c[i_min]),
        "ratio": ratio,
        "argmax_layer": int(np.argmax(s)),
        "argmin_layer": int(np.argmin(s)),
        "low_count_layers": low,
        "zero_layers": zero,
        "nearly_constant": nearly_constant,
        "informative": not warnings,
        "warnings": warnings,
        "thresholds": {"min_count": float(min_count), "min_range": float(min_range)},
    }


def _layers(idx: list[int], limit: int = 12) -> str:
    """``0, 3, 7`` or ``0, 1, ..., 29 (30 layers)`` past ``limit`` entries."""
    if len(idx) <= limit:
        return ", ".join(map(str, idx))
    return ", ".join(map(str, idx[:limit])) + f", ... ({len(idx)} layers)"
