"""Item sampling, per-item aggregation and percentile-bootstrap intervals for evaluation results.

Three rules the harness applies to every task (see ``docs/method.md`` section 7):

* **Items**: a task's ``limit`` is a seeded random sample of item ids over the whole set
  (:func:`sample_item_ids`: ``numpy.random.default_rng(seed).choice(n_total, limit,
  replace=False)``, sorted), never the first N; the same seed gives the same ids, so an original
  and a pruned model are scored on the same items.
* **Per-item values**: a result keeps one value per item and metric in ``columns`` (arrays in item
  order) and says how each metric is built from them in ``aggregation``: ``{metric: [kind,
  [column, ...]]}`` with a kind of :data:`AGGREGATIONS` (a mean, or a ratio of sums for
  perplexities: lm-eval's ``weighted_perplexity`` = exp(-sum loglik / sum count) ...).
* **Intervals**: percentile bootstrap over items (:func:`resample_indices`: ``default_rng(seed)
  .integers(0, n, size=(resamples, n))``, one row per resample), a perplexity recomputed from the
  resampled sums (a ratio of sums, never a mean of per-item perplexities), the interval the
  ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (``numpy.nanpercentile``, linear) of the
  resampled values. Retention uses the *same* index rows for both models (a paired bootstrap,
  :func:`paired_retention_draws`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from eavss.errors import EavssError

RESAMPLES: int = 1000
"""Default number of bootstrap resamples."""

LEVEL: float = 0.95
"""Default confidence level of the intervals."""

_LN2 = math.log(2.0)


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


def _weighted_perplexity(ll: np.ndarray, count: np.ndarray) -> np.ndarray:
    return np.exp(-ll.sum(axis=-1) / count.sum(axis=-1))


def _bits_per_byte(ll: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    return -ll.sum(axis=-1) / (nbytes.sum(axis=-1) * _LN2)


def _perplexity_of_sums(nll: np.ndarray, count: np.ndarray) -> np.ndarray:
    return np.exp(nll.sum(axis=-1) / count.sum(axis=-1))


def _ratio_of_sums(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return num.sum(axis=-1) / den.sum(axis=-1)


AGGREGATIONS: dict[str, tuple[int, Callable[..., np.ndarray]]] = {
    "mean": (1, _mean),
    "weighted_perplexity": (2, _weighted_perplexity),
    "bits_per_byte": (2, _bits_per_byte),
    "perplexity_of_sums": (2, _perplexity_of_sums),
    "ratio_of_sums": (2, _ratio_of_sums),
}
"""Aggregation kind -> (number of columns, function over the last axis).

``mean`` (x): mean of x (accuracy, F1, exact match); ``weighted_perplexity`` (loglik, count):
exp(-sum loglik / sum count) (lm-eval's word/byte perplexity); ``bits_per_byte`` (loglik, bytes):
-sum loglik / (sum bytes * ln 2); ``perplexity_of_sums`` (nll, tokens): exp(sum nll / sum
tokens) (token perplexity); ``ratio_of_sums`` (num, den): sum num / sum den (NLL per token)."""


def sample_item_ids(n_total: int, limit: int | None, seed: int) -> list[int]:
    """Ids of the items a task scores: a seeded random sample over the whole set, sorted.

    Args:
        n_total: number of items in the whole set (documents, questions, windows).
        limit: how many to draw; None or ``limit >= n_total`` takes every item.
        seed: run seed; ``numpy.random.default_rng(seed).choice(n_total, limit, replace=False)``.

    Returns:
        Sorted ids in ``[0, n_total)``, without repeats (``list(range(n_total))`` for the full set).

    Raises:
        EavssError: ``n_total < 1`` or ``limit < 1``.
    """
    if n_total < 1:
        raise EavssError(f"the task has no items (n_total={n_total}); check its data file")
    if limit is not None and limit < 1:
        raise EavssError(f"limit={limit} must be a positive whole number or None (the full set)")
    if limit is None or limit >= n_total:
        return list(range(n_total))
    rng = np.random.default_rng(int(seed))
    return sorted(int(i) for i in rng.choice(n_total, size=int(limit), replace=False))


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Bootstrap index rows: ``default_rng(seed).integers(0, n, size=(resamples, n))``, int64.

    Raises:
        EavssError: ``n < 1`` or ``resamples < 1``.
    """
    if n < 1:
        raise EavssError("cannot bootstrap zero items")
    if resamples < 1:
        raise EavssError(f"resamples={resamples} must be at least 1")
    return np.random.default_rng(int(seed)).integers(0, n, size=(int(resamples), int(n)))


def _columns_for(per_item: Mapping[str, Any], metric: str) -> tuple[Callable[..., np.ndarray], list[np.ndarray]]:
    agg = (per_item.get("aggregation") or {}).get(metric)
    if agg is None:
        raise KeyError(metric)
    kind, cols = agg[0], list(agg[1])
    if kind not in AGGREGATIONS:
        raise EavssError(f"unknown aggregation {kind!r} for metric {metric}; choose one of {sorted(AGGREGATIONS)}")
    arity, fn = AGGREGATIONS[kind]
    if len(cols) != arity:
        raise EavssError(f"aggregation {kind} of metric {metric} needs {arity} column(s), got {cols}")
    arrays = [np.asarray(per_item["columns"][c], dtype=np.float64) for c in cols]
    return fn, arrays


def has_items(per_item: Mapping[str, Any] | None, metric: str) -> bool:
    """True when ``per_item`` holds the columns of ``metric`` (and at least one item)."""
    if not per_item or metric not in (per_item.get("aggregation") or {}):
        return False
    cols = per_item["aggregation"][metric][1]
    return all(c in per_item.get("columns", {}) and len(per_item["columns"][c]) > 0 for c in cols)


def metric_from_items(per_item: Mapping[str, Any], metric: str, idx: np.ndarray | None = None) -> np.ndarray | float:
    """Metric value from per-item columns; with ``idx`` of shape [R, n], one value per row.

    Args:
        per_item: ``{"columns": {name: [n values]}, "aggregation": {metric: [kind, [names]]}}``.
        metric: a key of ``per_item["aggregation"]``.
        idx: optional index rows (from :func:`resample_indices`).

    Returns:
        A float (no ``idx``) or an array of shape [R] (non-finite where undefined).
    """
    fn, arrays = _columns_for(per_item, metric)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if idx is None:
            return float(fn(*arrays))
        return fn(*(a[idx] for a in arrays))


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> tuple[float | None, float | None]:
    """``(lo, hi)``: the ``(1-level)/2`` and ``(1+level)/2`` quantiles of the finite draws
    (``numpy.nanpercentile``, linear interpolation); ``(None, None)`` when no draw is finite."""
    d = np.asarray(draws, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return None, None
    lo, hi = np.percentile(d, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def draws_array(draws: Sequence[float | None]) -> np.ndarray:
    """``(R,)`` float64 bootstrap draws; None (how JSON keeps a non-finite draw) becomes NaN."""
    return np.array([np.nan if v is None else v for v in draws], dtype=np.float64)


def mean_of_draws(draw_lists: Sequence[Sequence[float | None] | None]) -> np.ndarray | None:
    """Resample-by-resample mean of several statistics' draws from the *same* resamples (NaN where
    any is NaN); None when a list is missing or empty or their lengths differ."""
    if not draw_lists or not all(d is not None and len(d) for d in draw_lists) or len({len(d) for d in draw_lists}) != 1:
        return None
    return np.stack([draws_array(d) for d in draw_lists]).mean(axis=0)


def paired_difference(a: float | None, b: float | None, draws_a: Sequence[float | None] | None,
                      draws_b: Sequence[float | None] | None, level: float = LEVEL) -> dict[str, Any]:
    """Difference ``a - b`` of two statistics bootstrapped on the *same* resamples of the same
    items (draw ``r`` of both from resample ``r``), with its paired percentile interval: the
    percentiles of ``draws_a[r] - draws_b[r]``. Pairing removes the item-to-item variation the two
    share, so the interval is narrower than one read off two separate intervals.

    Args:
        a, b: the two point estimates (None: unknown).
        draws_a, draws_b: ``(R,)`` bootstrap draws of each (lists with None for non-finite draws,
            or arrays), from the same resample indices; None when a side has no draws.
        level: confidence level.

    Returns:
        ``{"diff": a - b | None, "ci": [lo, hi] | None, "resamples": R | None}``; ``ci`` is None
        when either side has no draws or their lengths differ.
    """
    diff = None if a is None or b is None else float(a) - float(b)
    if draws_a is None or draws_b is None or not len(draws_a) or len(draws_a) != len(draws_b):
        return {"diff": diff, "ci": None, "resamples": None}
    lo, hi = percentile_interval(draws_array(draws_a) - draws_array(draws_b), level)
    return {"diff": diff, "ci": None if lo is None else [lo, hi], "resamples": len(draws_a)}


def bootstrap_ci(
    per_item: Mapping[str, Any], metric: str, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> tuple[float | None, float | None]:
    """Percentile-bootstrap interval of one metric over the items of one result.

    Resamples items with replacement (:func:`resample_indices`) and recomputes the metric from the
    resampled columns (means of values; perplexities from the resampled sums).

    Returns:
        ``(lo, hi)``; ``(None, None)`` when no resample gives a finite value.

    Raises:
        EavssError: the metric has no per-item columns, or a bad aggregation.
    """
    if not has_items(per_item, metric):
        raise EavssError(f"no per-item values for metric {metric}; evaluate with this version of eavss")
    n = len(per_item["columns"][per_item["aggregation"][metric][1][0]])
    draws = metric_from_items(per_item, metric, resample_indices(n, resamples, seed))
    return percentile_interval(draws, level)


def retention_values(
    original: np.ndarray | float, pruned: np.ndarray | float, higher_is_better: bool, chance: float | None = None
) -> np.ndarray:
    """Retention in percent, elementwise; NaN where undefined.

    ``100 * p / o`` (higher is better), ``100 * o / p`` (lower is better, perplexities) or, with
    ``chance`` c, ``100 * (p - c) / (o - c)``.
    """
    o = np.asarray(original, dtype=np.float64)
    p = np.asarray(pruned, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if chance is not None:
            r = 100.0 * (p - chance) / (o - chance)
        elif higher_is_better:
            r = 100.0 * p / o
        else:
            r = 100.0 * o / p
    return np.where(np.isfinite(r), r, np.nan)


def paired_retention_draws(
    original_items: Mapping[str, Any],
    pruned_items: Mapping[str, Any],
    metric: str,
    higher_is_better: bool,
    chance: float | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> np.ndarray:
    """Bootstrap draws of the retention of one metric, resampling the same items for both models.

    Row r of :func:`resample_indices` picks items i_1..i_n; the metric is recomputed on those items
    for the original and for the pruned model and turned into a retention with
    :func:`retention_values`. Both results must hold the same items in the same order.

    Returns:
        Array [resamples] of retention percentages (NaN where undefined, e.g. o = chance).

    Raises:
        EavssError: missing per-item values or a different number of items.
    """
    for which, items in (("original", original_items), ("pruned", pruned_items)):
        if not has_items(items, metric):
            raise EavssError(f"{which} result has no per-item values for {metric}; evaluate with this version of eavss")
    n_o = len(original_items["columns"][original_items["aggregation"][metric][1][0]])
    n_p = len(pruned_items["columns"][pruned_items["aggregation"][metric][1][0]])
    if n_o != n_p:
        raise EavssError(f"original has {n_o} items for {metric} and pruned {n_p}; evaluate both on the same items")
    idx = resample_indices(n_o, resamples, seed)
    o = metric_from_items(original_items, metric, idx)
    p = metric_from_items(pruned_items, metric, idx)
    return retention_values(o, p, higher_is_better, chance)


def dedupe_columns(
    columns: Mapping[str, Sequence[float]], aggregation: Mapping[str, Sequence[Any]], eligible: Sequence[str] | None = None
) -> tuple[dict, dict]:
    """Drop columns equal to an earlier one and point the aggregations at the kept copy (compact JSON).

    Only columns named in ``eligible`` (default: all) are merged; pass the columns that are equal
    by construction for every model (one log-likelihood shared by several perplexities, counts of
    the same text), never per-model scores that happen to coincide.
    """
    allowed = set(columns) if eligible is None else set(eligible)
    kept: dict[str, list[float]] = {}
    alias: dict[str, str] = {}
    for name, values in columns.items():
        values = [float(v) for v in values]
        same = None
        if name in allowed:
            same = next((k for k, v in kept.items() if k in allowed and v == values), None)
        if same is None:
            kept[name] = values
        else:
            alias[name] = same
    agg = {m: [kind, [alias.get(c, c) for c in cols]] for m, (kind, cols) in aggregation.items()}
    return kept, agg


__all__ = [
    "AGGREGATIONS",
    "LEVEL",
    "RESAMPLES",
    "bootstrap_ci",
    "dedupe_columns",
    "has_items",
    "metric_from_items",
    "paired_retention_draws",
    "percentile_interval",
    "resample_indices",
    "retention_values",
    "sample_item_ids",
]
