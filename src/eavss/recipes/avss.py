"""The AVSS commands: ``score``, ``prune``, ``eval`` and ``run`` (score -> prune -> evaluate -> report).

Each command is a config class (its sections declared with :func:`eavss.config.option`) and a
``run(cfg) -> report`` function made of named steps over library calls (:func:`collect`,
:func:`statistics_section`, :func:`prune_model`, :func:`evaluate_model`), so the commands share
one code path. ``docs/method.md`` explains every option and default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eavss.config import ModelSection, RunOptions, SparsitySection, option, section, to_dict, validate
from eavss.errors import EavssError
from eavss.io import atomic_dir, write_json_atomic, write_text_atomic
from eavss.recipes.common import absolute_if_path, load, model_section, start, timed
from eavss.report.schema import jsonable, new_report, read_report

_SITES = "eavss.stats.sites:SITES"
_TASKS = "eavss.evaluation.harness:TASKS"

# ---------------------------------------------------------------------------------------------
# config


@dataclass
class CalibrationSection:
    """Calibration set for activation statistics (:mod:`eavss.data.calibration`)."""

    dataset: str = option("wikitext2", "calibration set: wikitext2, ptb, sst2, text:PATH, jsonl:PATH:FIELD",
                          flag="--calib")
    num_samples: int = option(256, "calibration sequences (a seeded random sample of the set)", flag="--num-samples",
                              min=1)
    max_length: int = option(256, "tokens per calibration sequence", flag="--max-length", min=2)
    batch_size: int = option(8, "calibration batch size", flag="--calib-batch-size", min=1)
    packing: str = option("documents", "documents (one text per sequence, padded) | packed (EOS-joined chunks)",
                          flag="--packing", choices=("documents", "packed"))

    def check(self) -> None:
        from eavss.data.calibration import CALIBRATION_SETS

        if not self.dataset.startswith(("text:", "jsonl:")) and self.dataset not in CALIBRATION_SETS:
            raise EavssError(f"calibration.dataset={self.dataset!r} is not valid; choose one of "
                             f"{CALIBRATION_SETS.names()}, or text:PATH / jsonl:PATH:FIELD")


@dataclass
class StatsSection:
    """How activations become per-layer statistics (:mod:`eavss.stats`)."""

    site: str = option("mlp_act", "capture site: mlp_act (MLP activation output; the AVSS reading that tracked the "
                       "layer-skip ground truth best on SmolLM2 and Gemma-3, docs/method.md) | resid_post (decoder "
                       "layer output, the official code's) | resid_delta (output minus input: the block update)",
                       flag="--site", choices=_SITES)
    variance: str = option("element", "variance definition: element (all masked elements) | token | pooled "
                           "(official-code mean-pool variance)", flag="--variance",
                           choices="eavss.stats.accumulators:VARIANCE_DEFINITIONS")
    sparsity: SparsitySection = section(SparsitySection)
    massive: float | None = option(None, "leave out massive-activation tokens (attention sinks): a token whose RMS "
                                   "exceeds this multiple of the batch-median token RMS at a layer is excluded there "
                                   "and counted (null = keep every token)", min=1)
    accum_dtype: str = option("float64", "accumulator dtype of the streaming sums", choices=("float64", "float32"))
    block_influence: bool = option(True, "also collect ShortGPT block influence (resid_post only)")


@dataclass
class ScoresSection:
    """How statistics become AVSS (:mod:`eavss.scores.avss`)."""

    normalisation: str = option("sum", "across-layer normalisation: sum | max | none", flag="--normalisation",
                                choices="eavss.scores.avss:NORMALISATIONS")
    sparsity_guard: str = option("half_count", "floor for zero sparsity: half_count (0.5/elements) | none",
                                 choices="eavss.scores.avss:GUARDS")


@dataclass
class GroundTruthSection:
    """Ground truth of layer importance: the calibration-loss increase when one layer alone is skipped."""

    num_samples: int = option(16, "calibration sequences (the first of the seeded calibration sample) on which every "
                              "layer is skipped in turn, one extra pass per layer; 0 = off", min=0)


@dataclass
class PruneSection:
    """Layer selection (:mod:`eavss.prune.selection`)."""

    score: str = option("block_influence", "score to prune by: block_influence (ShortGPT; tracked the layer-skip "
                        "ground truth best on both measured models, docs/method.md) | avss | variance | density",
                        flag="--score", choices="eavss.scores.registry:SCORES")
    rule: str = option("count", "count (remove floor(fraction * candidate layers)) | mass (cumulative normalised "
                       "score <= mass)", flag="--rule", choices="eavss.prune.selection:RULES")
    fraction: float = option(0.25, "share of the candidate (unprotected) layers to remove with rule=count",
                             flag="--fraction")
    mass: float = option(0.25, "share of the normalised score to remove with rule=mass", flag="--mass")
    protect_first: int = option(0, "never remove the first N layers", flag="--protect-first", min=0)
    protect_last: int = option(0, "never remove the last N layers", flag="--protect-last", min=0)

    def check(self) -> None:
        if not 0 < self.fraction < 1:
            raise EavssError(f"prune fraction must be in (0, 1), got {self.fraction}; e.g. --fraction 0.25")
        if not 0 < self.mass < 1:
            raise EavssError(f"prune mass must be in (0, 1), got {self.mass}; e.g. --mass 0.25")


@dataclass
class EvalSection:
    """Retention evaluation (:mod:`eavss.evaluation.harness`). ``limits`` is the number of items per
    task, a seeded random sample (run seed) over the whole set (null = the whole set): wikitext2
    articles, squad questions, sst2 sentences, sciq questions; for ``ppl``/``ptb`` windows, also
    capped by ``ppl_max_tokens // ppl_context_length``."""

    tasks: list[str] = option(help="evaluation tasks: ppl, wikitext2, squad, sst2, ptb, sciq", flag="--tasks",
                              choices=_TASKS, factory=lambda: ["ppl", "wikitext2", "squad", "sst2", "ptb"])
    limits: dict[str, int | None] = option(
        help="items per task, a seeded random sample over the whole set (null = the whole set); --limit N sets "
        "every task in eval.tasks", flag="--limit", broadcast="eval.tasks", keys=_TASKS, min=1,
        factory=lambda: {"ppl": None, "wikitext2": 2, "squad": 40, "sst2": 200, "ptb": None, "sciq": 200})
    batch_size: int = option(8, "evaluation batch size", flag="--batch-size", min=1)
    max_length: int | None = option(None, "lm-eval context window (rolling-window size for wikitext2); null = "
                                    "min(2048, the model's context)", min=1)
    ppl_context_length: int = option(1024, "ppl/ptb: tokens per window", min=2)
    ppl_max_tokens: int | None = option(8192, "ppl/ptb: token budget: score ppl_max_tokens // ppl_context_length "
                                        "windows drawn at random over the whole test text (null = every window)",
                                        min=2)
    max_gen_toks: int = option(32, "squad: generation budget in tokens", min=1)
    suite: str | None = option(None, "a named task list that replaces eval.tasks: hallucination = nq_open, triviaqa, "
                               "sciq_mc, truthfulqa, wikiqa (the eval part of a split) + ppl, sst2; their limits: "
                               "eval.limits.TASK=N (default 100 questions each; --limit N sets the tasks of eval.tasks "
                               "before the suite replaces them)", flag="--suite",
                               choices="eavss.evaluation.hallucination_suite:SUITES")
    splits: str | None = option(None, "hallucination suite tasks: evaluate the eval part of this split (an `eavss "
                                "hallucination` --out folder or its splits.json); null = the default split rule "
                                "(seed 0, 0.5/0.25/0.25)", flag="--splits")

    def check(self) -> None:
        if self.suite:  # the suite's tasks replace eval.tasks; its default limits fill the limits not set
            from eavss.evaluation.hallucination_suite import DEFAULT_LIMITS, SUITES

            self.tasks = list(SUITES[self.suite])
            for t in self.tasks:
                self.limits.setdefault(t, DEFAULT_LIMITS.get(t))
        if not self.tasks:
            raise EavssError("eval.tasks is empty; pass e.g. --tasks ppl,wikitext2,squad,sst2,ptb")


@dataclass
class ScoreConfig(RunOptions):
    """``eavss score``: per-layer statistics and AVSS."""

    out: str = option("runs/score", "output folder (refused if it exists and is not empty, unless --overwrite)",
                      flag="--out")
    model: ModelSection = section(ModelSection)
    calibration: CalibrationSection = section(CalibrationSection)
    stats: StatsSection = section(StatsSection)
    scores: ScoresSection = section(ScoresSection)
    ground_truth: GroundTruthSection = section(GroundTruthSection)
    prune: PruneSection = section(PruneSection, help="how many layers the ground truth's removal-cost check assumes "
                                  "are removed (score only reads prune.fraction/rule)")


@dataclass
class PruneModelSection(ModelSection):
    """How to load the model that was scored (its name comes from the scores)."""

    name: str | None = option(None, "must name the model that was scored (default: the one recorded in --from)",
                              flag="--model")


@dataclass
class PruneConfig(RunOptions):
    """``eavss prune``: remove layers by the scores of an ``eavss score``/``run`` folder."""

    out: str = option("runs/pruned", "output folder: the pruned HF model (refused if it exists and is not empty, "
                      "unless --overwrite)", flag="--out")
    source: str | None = option(None, "output folder of `eavss score` or `eavss run`", flag="--from", required=True)
    model: PruneModelSection = section(PruneModelSection)
    prune: PruneSection = section(PruneSection)


@dataclass
class EvalConfig(RunOptions):
    """``eavss eval``: evaluate a model on the retention tasks."""

    out: str = option("runs/eval", "output folder (refused if it exists and is not empty, unless --overwrite)",
                      flag="--out")
    model: ModelSection = section(ModelSection)
    eval: EvalSection = section(EvalSection)


@dataclass
class RunConfig(RunOptions):
    """``eavss run``: score -> prune -> evaluate original and pruned -> report (the main job)."""

    out: str = option("runs/avss", "output folder (refused if it exists and is not empty, unless --overwrite)",
                      flag="--out")
    model: ModelSection = section(ModelSection)
    calibration: CalibrationSection = section(CalibrationSection)
    stats: StatsSection = section(StatsSection)
    scores: ScoresSection = section(ScoresSection)
    ground_truth: GroundTruthSection = section(GroundTruthSection)
    prune: PruneSection = section(PruneSection)
    eval: EvalSection = section(EvalSection)
    compare_with: list[str] = option(
        help="other selections of the same k layers evaluated beside prune.score, each skipped in place (no copy): "
             "avss, block_influence, random (seeded); one equal to prune.score is skipped; [] = none",
        choices=("avss", "block_influence", "random"), factory=lambda: ["avss", "block_influence", "random"])
    save_model: bool = option(True, "write the pruned model folder (pruned/)", flag="--no-save-model",
                              action="store_false")


# ---------------------------------------------------------------------------------------------
# steps


def score_options(scores: ScoresSection, stats: StatsSection):
    """The library's :class:`eavss.scores.registry.ScoreOptions` of the config sections."""
    from eavss.scores.registry import ScoreOptions

    return ScoreOptions(variance=stats.variance, normalisation=scores.normalisation,
                        sparsity_guard=scores.sparsity_guard)


def check_before_loading(cfg) -> dict:
    """Every check that needs no model, before the model is loaded: the calibration texts are read
    (a missing or empty set fails here) and the evaluation data files must exist.

    Returns:
        ``{"texts": calibration texts or None}``.
    """
    from eavss.data.calibration import load_calibration_texts
    from eavss.evaluation.harness import check_task_files

    out = {"texts": None}
    if hasattr(cfg, "calibration"):
        out["texts"] = load_calibration_texts(cfg.calibration.dataset, cfg.data_dir)
    if hasattr(cfg, "eval"):
        check_task_files(cfg.eval.tasks, cfg.data_dir)
        splits = getattr(cfg.eval, "splits", None)
        if splits:  # read it now, not after lm-eval has started building the first suite task
            from eavss.hallucination.splits import load_splits

            load_splits(splits)
    return out


def check_after_loading(cfg, model) -> None:
    """The checks that need the model, right after loading and before any slow work: every
    sequence length fits the model's trained context (refused otherwise: a learned-position
    model cannot run past it and a RoPE model would run on positions it was never trained on);
    ``eval.max_length`` null becomes min(2048, context); the pruning settings can remove a layer
    of this model."""
    from eavss.models.layers import check_lengths, find_decoder_layers

    lengths = {}
    if hasattr(cfg, "calibration"):
        lengths["calibration.max_length"] = cfg.calibration.max_length
    if hasattr(cfg, "eval"):
        lengths.update({"eval.max_length": cfg.eval.max_length, "eval.ppl_context_length": cfg.eval.ppl_context_length})
    ctx = check_lengths(model, lengths)
    if hasattr(cfg, "eval") and cfg.eval.max_length is None:
        cfg.eval.max_length = min(2048, ctx) if ctx else 2048
    if hasattr(cfg, "prune"):
        from eavss.prune.selection import select_layers

        p = cfg.prune
        n = len(find_decoder_layers(model)[1])
        # protection and fraction against this model's depth (equal positive scores: the mass rule's real
        # choice depends on the scores and is checked when they exist)
        select_layers([1.0] * n, "count" if p.rule == "mass" else p.rule, p.fraction, p.mass, p.protect_first,
                      p.protect_last)


def collect(cfg: ScoreConfig | RunConfig, model, tokenizer, texts: list[str] | None = None):
    """Calibration batches -> statistics. Returns ``(stats, calibration_info, collection_info)``."""
    import torch

    from eavss import distributed as edist
    from eavss.data.calibration import calibration_batches
    from eavss.stats import collect_statistics

    c = cfg.calibration
    batches, cal_info = calibration_batches(tokenizer, c.dataset, c.num_samples, c.max_length, c.batch_size,
                                            c.packing, cfg.seed, cfg.data_dir, texts=texts)
    # --- torchrun (eavss.distributed): each rank runs every world-th batch; the sums are
    # all-reduced inside collect_statistics, so every rank returns the whole set's statistics.
    dist_on = edist.is_distributed()
    if dist_on:
        batches = edist.shard(batches)
    accum = {"float64": torch.float64, "float32": torch.float32}[cfg.stats.accum_dtype]
    stats, info = collect_statistics(model, batches, site=cfg.stats.site, rule=cfg.stats.sparsity.rule(),
                                     pooled=True, block_influence=cfg.stats.block_influence, accum_dtype=accum,
                                     massive=cfg.stats.massive,
                                     progress=cfg.progress and edist.is_main(), total=len(batches),
                                     distributed=dist_on)
    return stats, cal_info, info


def ground_truth(cfg: ScoreConfig | RunConfig, model, tokenizer, texts: list[str] | None, scores: dict) -> dict | None:
    """The ground truth of layer importance and how well every score tracks it.

    Skips each decoder layer alone (in place, restored after) on the first
    ``ground_truth.num_samples`` calibration sequences and records the loss increase
    (:func:`eavss.scores.ablation.layer_skip_loss`); then, per score, the Spearman correlation
    with it and the removal cost of the score's ``k`` lowest layers against the ``k`` cheapest
    (:func:`eavss.scores.agreement.removal_cost`), ``k`` as the prune settings would remove.

    Returns:
        The report's ``ground_truth`` section, or None when ``num_samples`` is 0.
    """
    from eavss.data.calibration import calibration_batches
    from eavss.prune.selection import select_layers
    from eavss.scores.ablation import layer_skip_loss
    from eavss.scores.agreement import rank_agreement, removal_cost

    n = cfg.ground_truth.num_samples
    if n == 0:
        return None
    c = cfg.calibration
    batches, info = calibration_batches(tokenizer, c.dataset, min(n, c.num_samples), c.max_length, c.batch_size,
                                        c.packing, cfg.seed, cfg.data_dir, texts=texts)
    skip = layer_skip_loss(model, batches, progress=cfg.progress)
    delta = np.asarray(skip["delta"], dtype=np.float64)
    L = len(delta)
    p = cfg.prune
    k = len(select_layers([0.0] * L, p.rule, p.fraction, p.mass, p.protect_first, p.protect_last)) if p.rule == "count" \
        else max(1, int(p.fraction * L))
    agreement = {}
    for name, v in scores.items():
        ra = rank_agreement(v["score"], delta, k)
        rc = removal_cost(v["score"], delta, k)
        agreement[name] = {"spearman": ra["spearman"], "spearman_ci": ra["spearman_ci"], "p_value": ra["p_value"], **rc}
    return jsonable({
        "definition": "calibration-loss increase (nats/token) when the layer alone is skipped (Shortened LLaMA PPL "
                      "criterion); higher = more important",
        "num_samples": info["num_samples"], "num_tokens": skip.get("num_tokens", info["num_tokens"]),
        "base_loss": skip["base_loss"], "delta": delta, "k": k, "agreement": agreement,
        "best_score": max(agreement, key=lambda s: -np.inf if agreement[s]["spearman"] is None or
                          not np.isfinite(agreement[s]["spearman"]) else agreement[s]["spearman"]),
    })


def statistics_section(stats, options, layer_paths: list[str]) -> tuple[dict, dict]:
    """Per-layer table + all registered scores. Returns ``(statistics_section, scores_section)``."""
    from eavss.scores.registry import compute_scores

    scores, skipped = compute_scores(stats, options)
    a = scores["avss"]
    s = stats if stats.num_groups == 1 else stats.pooled()
    bi = s.block_influence()[0]
    rows = []
    for i in range(stats.num_layers):
        rows.append({
            "layer": i, "module": layer_paths[i] if i < len(layer_paths) else None,
            "n_tokens": int(s.n_tokens()[0, i]), "width": int(s.width[i]),
            "variance": a["variance"][i], "variance_element": s.element_variance()[0, i],
            "variance_token": s.token_variance()[0, i], "variance_pooled": s.pooled_variance()[0, i],
            "mean": s.element_mean()[0, i], "sparsity": a["sparsity"][i], "var_norm": a["var_norm"][i],
            "sparsity_norm": a["sparsity_norm"][i], "avss": a["avss"][i], "avss_norm": a["avss_norm"][i],
            "importance_rank": int(a["importance_rank"][i]), "guard_hit": bool(a["guard_hit"][i]),
            "block_influence": bi[i],
        })
    from eavss.scores.diagnostics import sparsity_information
    from eavss.stats.accumulators import F

    info = sparsity_information(s.sparsity()[0], s.sums[0, :, F["near_zero"]], s.n_elements()[0])
    for i, row in enumerate(rows):
        row["near_zero_count"] = float(s.sums[0, i, F["near_zero"]])
        row["massive_tokens"] = int(s.n_massive()[0, i])
    section_ = {
        "massive": stats.massive, "sparsity_information": {k: info[k] for k in (
            "ratio", "min_count_layer", "min_count_value", "low_count_layers", "zero_layers", "nearly_constant",
            "informative", "warnings", "thresholds")},
        "site": stats.site, "variance_definition": options.variance, "normalisation": options.normalisation,
        "sparsity_guard": options.sparsity_guard, "sparsity_rule": stats.sparsity_rule,
        "guard_hit_layers": [int(i) for i in np.flatnonzero(a["guard_hit"])],
        "ranking_most_to_least_important": [int(i) for i in np.argsort(a["importance_rank"])],
        "per_layer": rows, "sums": stats.to_dict(), "scores_not_available": skipped,
    }
    score_sec = {name: {"score": v["score"]} for name, v in scores.items()}
    return jsonable(section_), jsonable(score_sec)


def select_for(scores: list[float], p: PruneSection) -> list[int]:
    """The layers the prune section removes for per-layer ``scores`` (higher = keep)."""
    from eavss.prune.selection import select_layers

    return select_layers(scores, p.rule, p.fraction, p.mass, p.protect_first, p.protect_last)


def alternative_selections(names: list[str], scores: dict, k: int, num_layers: int, seed: int,
                           p: PruneSection) -> dict[str, list[int]]:
    """The same number ``k`` of layers chosen by other rules, for the main job's comparison:
    ``block_influence`` (the k lowest, from the same statistics pass, protection honoured) and
    ``random`` (seeded, :func:`eavss.prune.baselines.random_layers`). A name equal to
    ``prune.score`` or a score the statistics lack is left out."""
    from eavss.prune.baselines import random_layers
    from eavss.prune.selection import ascending_order

    out = {}
    cands = [i for i in range(num_layers) if p.protect_first <= i < num_layers - p.protect_last]
    for name in names:
        if name == p.score:
            continue
        if name == "random":
            out[name] = random_layers(num_layers, k, seed, p.protect_first, p.protect_last)
        elif name in scores:
            out[name] = sorted(ascending_order(scores[name]["score"], cands)[:k])
    return out


def evaluate_without(model, tok, layers: list[int], original: dict, cfg, timings: dict, name: str) -> dict:
    """Evaluate the model with ``layers`` skipped in place (restored after) and its retention."""
    from eavss.evaluation.harness import mean_retention, retention
    from eavss.models.surgery import skip_layers

    with skip_layers(model, layers):
        res, secs = evaluate_model(model, tok, cfg.eval, cfg.data_dir, cfg.seed, cfg.progress)
    timings.update({f"eval_{name}.{t}": v for t, v in secs.items()})
    ret = retention(original, res, seed=cfg.seed)
    mean = mean_retention(ret)
    return jsonable({"removed": sorted(layers), "results": res, "retention": ret,
                     "mean_retention_pct": mean["mean_pct"], "mean_retention": mean})


def prune_model(model, scores: list[float], p: PruneSection) -> dict:
    """Select layers by the prune section from per-layer ``scores`` (higher = keep) and remove them in place."""
    from eavss.models.layers import layer_module_paths
    from eavss.models.surgery import remove_layers
    from eavss.prune.selection import select_layers

    chosen = select_layers(scores, p.rule, p.fraction, p.mass, p.protect_first, p.protect_last)
    paths = layer_module_paths(model)
    n_before = sum(t.numel() for t in model.parameters())
    info = remove_layers(model, chosen)
    n_after = sum(t.numel() for t in model.parameters())
    crit = f"fraction={p.fraction} -> floor(fraction*L)" if p.rule == "count" else f"mass={p.mass} of normalised score"
    return {"score": p.score, "rule": p.rule, "criterion": crit, "fraction": p.fraction, "mass": p.mass,
            "protect_first": p.protect_first, "protect_last": p.protect_last,
            "removed": info["removed"], "removed_paths": info.get("removed_paths", [paths[i] for i in chosen]),
            "kept": info["kept"], "num_layers_before": info["num_layers_before"],
            "num_layers_after": info["num_layers_after"], "params_before": n_before, "params_after": n_after}


def evaluate_model(model, tokenizer, e: EvalSection, data_dir: str | None, seed: int,
                   progress: bool = True) -> tuple[dict, dict]:
    """Run each evaluation task with its own limit (a seeded random sample of items, seed ``seed``:
    the same items for the original and the pruned model); ``progress``: lm-eval's bars. Returns
    ``(results_by_task, seconds_by_task)``."""
    from eavss.evaluation.harness import evaluate

    results, secs = {}, {}
    for task in e.tasks:
        opts = {task: {"context_length": e.ppl_context_length, "max_tokens": e.ppl_max_tokens}} if task in ("ppl", "ptb") else {}
        with timed(secs, task):
            res = evaluate(model, tokenizer, [task], limit=e.limits.get(task), data_dir=data_dir,
                           batch_size=e.batch_size, seed=seed, max_gen_toks=e.max_gen_toks, max_length=e.max_length,
                           task_options={**opts, **suite_task_options(task, e)}, progress=progress)
        results[task] = res[task]
    return jsonable(results), secs


def suite_task_options(task: str, e: EvalSection) -> dict:
    """Task options of the hallucination suite's tasks (which split's eval part they score)."""
    from eavss.evaluation.hallucination_suite import SUITE_TASKS

    return {task: {"splits": e.splits}} if task in SUITE_TASKS else {}


def write_outputs(out: Path, report: dict, plot: bool = True) -> None:
    """report.json, report.md and (for reports with statistics) avss.png into ``out``."""
    from eavss.report.avss import plot_avss, render_markdown

    write_json_atomic(out / "report.json", jsonable(report), inline_scalar_lists=True)  # per-item arrays on one line
    write_text_atomic(out / "report.md", render_markdown(report))
    st = report.get("statistics")
    if plot and st:
        removed = report.get("pruning", {}).get("removed", [])
        m = report.get("model", {})
        plot_avss(st["per_layer"], removed, out / "avss.png",
                  title=f"AVSS per layer: {m.get('model_id')} ({st['site']}, {st['sparsity_rule'].get('rule')})")


# ---------------------------------------------------------------------------------------------
# commands


def score(cfg: ScoreConfig) -> dict:
    """``eavss score``: per-layer statistics and AVSS of ``cfg.model`` into ``cfg.out``."""
    from eavss import distributed as edist
    from eavss.models.layers import layer_module_paths

    validate(cfg)
    threads = start(cfg, cfg.model.name)
    pre = check_before_loading(cfg)
    timings: dict[str, float] = {}
    with timed(timings, "load"):
        loaded = load(cfg.model, cfg.progress)
    check_after_loading(cfg, loaded.model)
    with timed(timings, "statistics"):
        stats, cal_info, col_info = collect(cfg, loaded.model, loaded.tokenizer, pre["texts"])
    st, sc = statistics_section(stats, score_options(cfg.scores, cfg.stats), layer_module_paths(loaded.model))
    with timed(timings, "ground_truth"):
        gt = ground_truth(cfg, loaded.model, loaded.tokenizer, pre["texts"], sc) if edist.is_main() else None
    report = new_report("score", to_dict(cfg), cfg.seed, loaded.tokenizer)
    report.update({"model": model_section(loaded), "calibration": {**cal_info, **col_info},
                   "statistics": st, "scores": sc, "ground_truth": gt, "timings": timings, "threads": threads})
    if not edist.is_main():  # --- torchrun: rank 0 alone writes
        return report
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        write_outputs(tmp, report)
    return report


def _scores_from(src: dict, name: str, where: str) -> list[float]:
    if name not in src.get("scores", {}):
        raise EavssError(f"score {name!r} is not in {where} (has {sorted(src.get('scores', {}))}); "
                         "set prune.score to one of those")
    scores = src["scores"][name].get("score") if isinstance(src["scores"][name], dict) else None
    if not isinstance(scores, list) or not scores or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in scores):
        raise EavssError(f"score {name!r} in {where} is missing, non-finite or not numeric; "
                         "re-run `eavss score` or choose another prune.score")
    return scores


def prune(cfg: PruneConfig) -> dict:
    """``eavss prune``: remove layers by the scores in ``cfg.source`` and save the smaller HF model to ``cfg.out``."""
    from eavss.models.surgery import save_model_files

    validate(cfg)
    where = str(Path(cfg.source) / "report.json")
    src = read_report(cfg.source, kinds=("score", "run"))
    scores = _scores_from(src, cfg.prune.score, where)
    model_id = (src.get("model") or {}).get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise EavssError(f"{where} names no model (model.model_id); re-run `eavss score`")
    if cfg.model.name is not None and absolute_if_path(cfg.model.name) != model_id:
        raise EavssError(f"--model {cfg.model.name} is not the model that was scored in {cfg.source} ({model_id}); "
                         "leave --model out (prune loads the scored model) or score this model first")
    threads = start(cfg, model_id, may_hold_out=(cfg.source,))
    loaded = load(cfg.model, cfg.progress, name=model_id)  # prune always loads the model that was scored
    want, got = src["model"].get("file_sha256"), loaded.info.get("file_sha256")
    if want and got and want != got:
        raise EavssError(f"the model file of {model_id} changed since it was scored (sha256 {got[:16]}… now, "
                         f"{want[:16]}… in {where}); score it again")
    if len(scores) != loaded.info["num_layers"]:
        raise EavssError(f"{cfg.source} scores {len(scores)} layers but {model_id} has {loaded.info['num_layers']}; "
                         "score this model first")
    check_after_loading(cfg, loaded.model)
    pr = prune_model(loaded.model, scores, cfg.prune)
    loaded.model.config.eavss_source_model = model_id
    report = new_report("prune", to_dict(cfg), cfg.seed, loaded.tokenizer)
    report.update({"model": src["model"], "source_report": where, "pruning": pr, "threads": threads})
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        save_model_files(loaded.model, loaded.tokenizer, tmp)
        write_json_atomic(tmp / "eavss_pruning.json", jsonable(report))
    return report


def evaluate(cfg: EvalConfig) -> dict:
    """``eavss eval``: evaluate ``cfg.model`` on ``cfg.eval.tasks`` into ``cfg.out``."""
    validate(cfg)
    threads = start(cfg, cfg.model.name)
    check_before_loading(cfg)
    timings: dict[str, float] = {}
    with timed(timings, "load"):
        loaded = load(cfg.model, cfg.progress)
    check_after_loading(cfg, loaded.model)
    res, secs = evaluate_model(loaded.model, loaded.tokenizer, cfg.eval, cfg.data_dir, cfg.seed, cfg.progress)
    timings.update({f"eval.{k}": v for k, v in secs.items()})
    report = new_report("eval", to_dict(cfg), cfg.seed, loaded.tokenizer)
    report.update({"model": model_section(loaded), "evaluation": {"original": res, "limits": cfg.eval.limits},
                   "timings": timings, "threads": threads})
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        write_outputs(tmp, report, plot=False)
    return report


def run(cfg: RunConfig) -> dict:
    """``eavss run``: score -> prune -> evaluate original and pruned -> report, all in ``cfg.out``.

    The output folder is built atomically: it appears complete or not at all.
    """
    import time

    from eavss import distributed as edist
    from eavss.evaluation.harness import mean_retention, retention
    from eavss.models.layers import layer_module_paths
    from eavss.models.surgery import save_model_files

    validate(cfg)
    threads = start(cfg, cfg.model.name)
    pre = check_before_loading(cfg)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    with timed(timings, "load"):
        loaded = load(cfg.model, cfg.progress)
    model, tok = loaded.model, loaded.tokenizer
    check_after_loading(cfg, model)
    model_sec = model_section(loaded)

    with timed(timings, "statistics"):
        stats, cal_info, col_info = collect(cfg, model, tok, pre["texts"])
    st, sc = statistics_section(stats, score_options(cfg.scores, cfg.stats), layer_module_paths(model))
    if not edist.is_main():  # --- torchrun: only the statistics are data-parallel; rank 0 alone continues
        return {"kind": "run", "rank": edist.rank(), "timings": timings}
    if cfg.prune.score not in sc:
        raise EavssError(f"prune.score {cfg.prune.score!r} is not available: "
                         f"{st['scores_not_available'].get(cfg.prune.score, 'not computed')}; choose one of {sorted(sc)}")
    with timed(timings, "ground_truth"):
        gt = ground_truth(cfg, model, tok, pre["texts"], sc)

    original, secs = evaluate_model(model, tok, cfg.eval, cfg.data_dir, cfg.seed, cfg.progress)
    timings.update({f"eval_original.{k}": v for k, v in secs.items()})
    chosen = select_for(sc[cfg.prune.score]["score"], cfg.prune)
    alternatives = {}
    for name, layers in alternative_selections(cfg.compare_with, sc, len(chosen), stats.num_layers, cfg.seed,
                                               cfg.prune).items():
        alternatives[name] = evaluate_without(model, tok, layers, original, cfg, timings, name)
    with timed(timings, "pruning"):
        pr = prune_model(model, sc[cfg.prune.score]["score"], cfg.prune)
    pruned, secs = evaluate_model(model, tok, cfg.eval, cfg.data_dir, cfg.seed, cfg.progress)
    timings.update({f"eval_pruned.{k}": v for k, v in secs.items()})
    ret = retention(original, pruned, seed=cfg.seed)
    mean = mean_retention(ret)

    report = new_report("run", to_dict(cfg), cfg.seed, tok)
    report.update({
        "model": model_sec, "calibration": {**cal_info, **col_info}, "statistics": st, "scores": sc,
        "ground_truth": gt, "pruning": pr,
        "evaluation": {"original": original, "pruned": pruned, "retention": jsonable(ret), "limits": cfg.eval.limits,
                       "mean_retention_pct": mean["mean_pct"], "mean_retention": jsonable(mean),
                       "alternatives": alternatives},
        "timings": timings, "threads": threads,
    })
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        if cfg.save_model:
            model.config.eavss_source_model = cfg.model.name
            with timed(timings, "save_pruned"):
                save_model_files(model, tok, tmp / "pruned")
        timings["total"] = time.perf_counter() - t_all
        write_outputs(tmp, report)
    return report


# ---------------------------------------------------------------------------------------------
# what the terminal shows


def summary(report: dict, cfg) -> list[str]:
    """report.md, then where the outputs are."""
    from eavss.report.avss import render_markdown

    files = ["report.json", "report.md"] + (["avss.png"] if report.get("statistics") else [])
    if report.get("kind") == "run" and getattr(cfg, "save_model", False):
        files.append("pruned/")
    return [render_markdown(report), "outputs: " + ", ".join(f"{cfg.out}/{f}" for f in files)]


def prune_summary(report: dict, cfg) -> list[str]:
    """One line: what was removed and where the model is."""
    pr = report["pruning"]
    return [f"removed layers {pr['removed']} ({pr['num_layers_before']} -> {pr['num_layers_after']}); "
            f"model saved to {cfg.out}"]
