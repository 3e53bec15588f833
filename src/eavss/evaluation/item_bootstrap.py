"""Bootstrap confidence intervals over evaluation items, and paired before/after differences.

An evaluation result that supports intervals carries its per-item values (the layout the harness
uses for every task)::

    {"item_ids": [id, ...],                                  # the scored items, one per row
     "per_item": {"columns": {name: [value per item]},       # item order = item_ids order
                  "aggregation": {metric: [kind, [column, ...]]}}}

with a ``kind`` of :data:`AGGREGATIONS`: ``mean`` (accuracy, exact match, AP, ...) or a ratio of
sums for perplexities (``perplexity_of_sums`` = exp(sum nll / sum tokens), ``ratio_of_sums``).

* :func:`bootstrap_ci`: percentile bootstrap over items (Efron & Tibshirani 1993, ch. 13): the
  index rows are ``numpy.random.default_rng(seed).integers(0, n, (resamples, n))``; a perplexity is
  recomputed from the resampled sums (never a mean of per-item perplexities); the interval is the
  ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of the resampled values.
* :func:`paired_change`: two results on the *same* items (a model before and after training): the
  same index rows resample both, so the interval of ``after - before`` (and of the relative change
  ``(after - before) / before``) reflects only how the two models differ item by item, not how hard
  the sampled items are -- much narrower than two independent intervals when the models agree on
  most items.
* :func:`paired_change_mean`: the mean change of several trained models (e.g. three random-layer
  seeds) against one baseline, with the same index rows for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from eavss.errors import EavssError
from eavss.evaluation.intervals import AGGREGATIONS, LEVEL, RESAMPLES, resample_indices  # one definition each


def mean_per_item(columns: Mapping[str, Sequence[float]]) -> dict:
    """``per_item`` for metrics that are plain means of their own column."""
    return {"columns": {k: [float(v) for v in vals] for k, vals in columns.items()},
            "aggregation": {k: ["mean", [k]] for k in columns}}


def _columns(result: Mapping[str, Any], metric: str) -> tuple[Callable[..., np.ndarray], list[np.ndarray]]:
    per_item = result.get("per_item") or {}
    agg = (per_item.get("aggregation") or {}).get(metric)
    if agg is None:
        raise EavssError(f"the result has no per-item values for metric {metric!r}; evaluate with a task that "
                         "keeps them (per_item)")
    kind, cols = agg[0], list(agg[1])
    if kind not in AGGREGATIONS:
        raise EavssError(f"unknown aggregation {kind!r} for {metric}; choose one of {sorted(AGGREGATIONS)}")
    arity, fn = AGGREGATIONS[kind]
    if len(cols) != arity:
        raise EavssError(f"aggregation {kind} of {metric} needs {arity} column(s), got {cols}")
    return fn, [np.asarray(per_item["columns"][c], dtype=np.float64) for c in cols]


def metric_from_items(result: Mapping[str, Any], metric: str) -> float:
    """The metric recomputed from the per-item values (equals the reported metric)."""
    fn, cols = _columns(result, metric)
    if cols[0].size == 0:
        raise EavssError(f"no items for metric {metric}")
    return float(fn(*cols))


def _quantiles(draws: np.ndarray, level: float) -> list[float | None]:
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return [None, None]
    lo, hi = np.percentile(draws, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return [float(lo), float(hi)]


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise EavssError(f"level={level} must be between 0 and 1 (e.g. 0.95)")


def bootstrap_ci(result: Mapping[str, Any], metric: str, resamples: int = RESAMPLES, seed: int = 0,
                 level: float = LEVEL) -> dict:
    """Percentile bootstrap interval of one metric over the result's items.

    Returns:
        ``{"value", "lo", "hi", "level", "resamples", "n"}`` (``lo``/``hi`` None when every
        resampled value is non-finite).

    Raises:
        EavssError: no per-item values for the metric, no items, a bad level.
    """
    _check_level(level)
    fn, cols = _columns(result, metric)
    n = cols[0].size
    idx = resample_indices(n, resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        draws = fn(*(c[idx] for c in cols))
        value = float(fn(*cols))
    lo, hi = _quantiles(draws, level)
    return {"value": value, "lo": lo, "hi": hi, "level": level, "resamples": int(resamples), "n": int(n)}


def _aligned(before: Mapping[str, Any], after: Mapping[str, Any], metric: str):
    """Columns of ``after`` reordered to ``before``'s item order."""
    fb, cb = _columns(before, metric)
    _, ca = _columns(after, metric)
    ib = [str(i) for i in before.get("item_ids") or range(cb[0].size)]
    ia = [str(i) for i in after.get("item_ids") or range(ca[0].size)]
    if len(ib) != cb[0].size or len(ia) != ca[0].size:
        raise EavssError(f"item_ids and per-item values of {metric} differ in length")
    if ib != ia:
        if sorted(ib) != sorted(ia):
            raise EavssError(f"before and after were scored on different items for {metric} ({len(ib)} vs {len(ia)}); "
                             "evaluate both on the same items (same splits, limits and seed)")
        pos = {q: k for k, q in enumerate(ia)}
        order = np.array([pos[q] for q in ib])
        ca = [c[order] for c in ca]
    return fb, cb, ca


def _change_stats(fn, cb, cas: list[list[np.ndarray]], resamples: int, seed: int, level: float,
                  higher_is_better: bool) -> dict:
    n = cb[0].size
    idx = resample_indices(n, resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        b = float(fn(*cb))
        a_vals = [float(fn(*ca)) for ca in cas]
        a = float(np.mean(a_vals))
        b_draws = fn(*(c[idx] for c in cb))
        a_draws = np.mean([fn(*(c[idx] for c in ca)) for ca in cas], axis=0)
        d_draws = np.round(a_draws - b_draws, 12)  # a mean over several models leaves float noise where nothing changed
        r_draws = d_draws / b_draws
    diff = float(np.round(a - b, 12))
    rel = diff / b if b != 0 and math.isfinite(b) else None
    lo, hi = _quantiles(d_draws, level)
    rlo, rhi = _quantiles(r_draws, level) if rel is not None else (None, None)
    good = (lambda x: x > 0) if higher_is_better else (lambda x: x < 0)
    verdict = "no change"
    if lo is not None and hi is not None:
        if good(lo) and good(hi):
            verdict = "better"
        elif not good(lo) and not good(hi) and lo != 0 and hi != 0:
            verdict = "worse"
        else:
            verdict = "inconclusive" if lo != hi else "no change"
    finite = d_draws[np.isfinite(d_draws)]
    p_better = float(np.mean(good(finite))) if finite.size else None
    return {"before": b, "after": a, "after_each": a_vals if len(cas) > 1 else None, "abs_change": diff,
            "abs_ci": [lo, hi], "rel_change": rel, "rel_ci": [rlo, rhi], "n": int(n), "level": level,
            "resamples": int(resamples), "higher_is_better": bool(higher_is_better), "verdict": verdict,
            "p_better": p_better}


def paired_change(before: Mapping[str, Any], after: Mapping[str, Any], metric: str, *, higher_is_better: bool = True,
                  resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict:
    """``after - before`` of one metric with a paired bootstrap interval over the common items.

    Args:
        before, after: results with ``item_ids`` and ``per_item`` on the same items (any order).
        metric: the metric (a key of ``per_item["aggregation"]``).
        higher_is_better: direction, for the verdict and ``p_better``.
        resamples, seed, level: the bootstrap (same index rows for both results).

    Returns:
        ``{"before", "after", "abs_change", "abs_ci": [lo, hi], "rel_change" ((after - before) /
        before; None when before is 0), "rel_ci", "n", "level", "resamples", "higher_is_better",
        "verdict" ("better" | "worse": the interval excludes 0; else "inconclusive", or "no change"
        when every resample gives 0), "p_better" (share of resamples that moved the good way)}``.

    Raises:
        EavssError: missing per-item values, different item sets, a bad level.
    """
    _check_level(level)
    fn, cb, ca = _aligned(before, after, metric)
    return _change_stats(fn, cb, [ca], resamples, seed, level, higher_is_better)


def paired_change_mean(before: Mapping[str, Any], afters: Sequence[Mapping[str, Any]], metric: str, *,
                       higher_is_better: bool = True, resamples: int = RESAMPLES, seed: int = 0,
                       level: float = LEVEL) -> dict:
    """Mean over ``afters`` of ``after - before`` (e.g. several random-layer seeds), with one set of
    paired index rows for all of them; ``after`` is the mean of the afters' values and
    ``after_each`` lists them. See :func:`paired_change` for the rest.

    Raises:
        EavssError: no afters; see :func:`paired_change`.
    """
    _check_level(level)
    if not afters:
        raise EavssError("paired_change_mean needs at least one result after training")
    cas = []
    for a in afters:
        fn, cb, ca = _aligned(before, a, metric)
        cas.append(ca)
    return _change_stats(fn, cb, cas, resamples, seed, level, higher_is_better)


def with_cis(result: dict, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict:
    """``result`` with ``ci[metric] = bootstrap_ci(...)`` for every metric that has per-item values."""
    aggs = (result.get("per_item") or {}).get("aggregation") or {}
    result["ci"] = {m: bootstrap_ci(result, m, resamples, seed, level) for m in aggs}
    return result
