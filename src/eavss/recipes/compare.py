"""``eavss compare``: AVSS against the field's depth-pruning metrics, measured side by side.

The command is :func:`run`, a sequence of named steps over library code:

1. :func:`metric_context` -- the calibration batches (statistics passes, angular distance) and the
   first ``ground_truth.num_samples`` of them (the loss-based metrics and the ground truth);
2. :func:`ground_truth` -- the calibration-loss increase when each layer alone is skipped
   (:func:`eavss.scores.ablation.layer_skip_loss`, the same pass ``layer_ppl`` reads);
3. :func:`choose_layers` -- every metric of ``compare.metrics`` chooses its ``k = floor(fraction *
   L)`` layers (:data:`eavss.prune.metrics.METRICS`; ``random`` once per seed), each shared pass
   computed once;
4. :func:`removal_costs` and :func:`agreement` -- the ground-truth cost of each removed set
   (:func:`eavss.scores.agreement.removal_cost`), the calibration loss with the set removed
   together, and the pairwise Spearman correlation of the per-layer scores;
5. :func:`evaluate_rows` -- the original model once, then for each metric a fresh copy of the
   loaded model with its layers removed, on the same tasks and items; with ``--heal`` each pruned
   copy and the unpruned model (the control) are healed with the same budget
   (:mod:`eavss.training.heal`) and evaluated again; every finished step is kept in the work folder
   (``OUT.work``), so an interrupted run resumes where it stopped when the same command is run again;
6. :func:`write_outputs` -- ``report.json`` (kind ``compare``), ``report.md`` and ``compare.png``,
   written atomically.

Evaluation goes through the small wrappers of :mod:`eavss.recipes.compare_eval`. ``docs/method.md``
("Comparing pruning metrics and healing") defines every metric and explains the defaults.
"""

from __future__ import annotations

import copy
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eavss.config import ModelSection, RunOptions, SparsitySection, option, section, to_dict, validate
from eavss.errors import EavssError
from eavss.recipes.avss import CalibrationSection, EvalSection, ScoresSection
from eavss.recipes.common import (check_work_dir, input_files, load, model_section, open_work, start, timed,
                                  work_folder)
from eavss.recipes.heal import HealSection

_METRICS = "eavss.prune.metrics:METRICS"
_TASKS = "eavss.evaluation.harness:TASKS"

# ---------------------------------------------------------------------------------------------
# config


@dataclass
class CompareSection:
    """Which metrics choose layers, and what is measured besides retention (:mod:`eavss.prune.metrics`)."""

    metrics: list[str] = option(help="pruning metrics compared: avss, avss_delta, avss_mlp, block_influence, angular, "
                                "angular_all, layer_ppl, sleb (~k*L passes), random, last", flag="--metrics",
                                choices=_METRICS, factory=lambda: ["avss", "avss_delta", "avss_mlp", "block_influence",
                                                                   "angular", "angular_all", "layer_ppl", "sleb",
                                                                   "random", "last"])
    random_seeds: int = option(3, "seeds of the random baseline: seed, seed+1, ..., seed+N-1 (one row each, and "
                               "their mean)", flag="--random-seeds", min=1)
    joint_loss: bool = option(True, "also measure the calibration loss with each metric's k layers removed together "
                              "(one pass over the ground-truth batches per metric)")
    heal: bool = option(False, "heal every pruned model and the unpruned model (the control) with the same budget "
                        "(heal.*) and evaluate again", flag="--heal", action="store_true")

    def check(self) -> None:
        if not self.metrics:
            raise EavssError("compare.metrics is empty; pass e.g. --metrics avss,block_influence,layer_ppl")


@dataclass
class CompareCalibrationSection(CalibrationSection):
    """Calibration set of the statistics passes and the angular distance (:mod:`eavss.data.calibration`)."""

    num_samples: int = option(64, "calibration sequences of the statistics passes and the angular distance (a "
                              "seeded random sample of the set)", flag="--num-samples", min=1)


@dataclass
class CompareStatsSection:
    """How activations become statistics for the AVSS readings; each reading has its own capture site."""

    variance: str = option("element", "variance definition: element | token | pooled", flag="--variance",
                           choices="eavss.stats.accumulators:VARIANCE_DEFINITIONS")
    sparsity: SparsitySection = section(SparsitySection)
    massive: float | None = option(None, "leave out massive-activation tokens (attention sinks) from the statistics: a "
                                   "token whose RMS exceeds this multiple of the batch-median token RMS at a layer "
                                   "(null = keep every token)", min=1)
    accum_dtype: str = option("float64", "accumulator dtype of the streaming sums", choices=("float64", "float32"))


@dataclass
class LossSection:
    """The loss-based passes: ground truth, layer_ppl, sleb and the joint removal loss."""

    num_samples: int = option(16, "calibration sequences (the first of the seeded calibration sample) of the ground "
                              "truth (1 + L passes; layer_ppl reads the same), sleb (~k*L passes) and the joint "
                              "removal loss (1 pass per metric)", min=1)


@dataclass
class ComparePruneSection:
    """How many layers every metric removes."""

    fraction: float = option(0.25, "k = floor(fraction * L) layers removed by every metric", flag="--fraction")

    def check(self) -> None:
        if not 0 < self.fraction < 1:
            raise EavssError(f"prune fraction must be in (0, 1), got {self.fraction}; e.g. --fraction 0.25")


@dataclass
class CompareEvalSection(EvalSection):
    """Retention evaluation (:mod:`eavss.evaluation.harness`): the same tasks and items for every model.
    ``limits`` caps items per task (null = the whole set); ``ppl``/``ptb`` are capped by ``ppl_max_tokens``."""

    tasks: list[str] = option(help="evaluation tasks: ppl (WikiText-2 test), ptb, squad, sciq (domains the healing text "
                              "is not from), wikitext2, sst2", flag="--tasks", choices=_TASKS,
                              factory=lambda: ["ppl", "ptb", "squad", "sciq"])
    limits: dict[str, int | None] = option(
        help="items per task (null = the whole set); --limit N sets every task in eval.tasks", flag="--limit",
        broadcast="eval.tasks", keys=_TASKS, min=1,
        factory=lambda: {"ppl": None, "ptb": None, "wikitext2": 2, "squad": 40, "sst2": 200, "sciq": 100})
    ppl_context_length: int = option(1024, "ppl/ptb: tokens per window", min=2)
    ppl_max_tokens: int | None = option(8192, "ppl/ptb: first N test tokens (null = all)", min=2)


@dataclass
class CompareConfig(RunOptions):
    """``eavss compare``: every metric's k layers removed, evaluated side by side (and healed with --heal)."""

    out: str = option("runs/compare", "output folder (refused if it exists and is not empty, unless --overwrite)",
                      flag="--out")
    model: ModelSection = section(ModelSection)
    compare: CompareSection = section(CompareSection)
    prune: ComparePruneSection = section(ComparePruneSection)
    calibration: CompareCalibrationSection = section(CompareCalibrationSection)
    stats: CompareStatsSection = section(CompareStatsSection)
    scores: ScoresSection = section(ScoresSection)
    ground_truth: LossSection = section(LossSection)
    eval: CompareEvalSection = section(CompareEvalSection)
    heal: HealSection = section(HealSection, help="healing with --heal (the same settings as eavss heal)")
    work_dir: str | None = option(None, "where finished evaluations (and healings) are kept until the run ends "
                                  "(default OUT.work, beside --out)")
    keep_work: bool = option(False, "keep the work folder after a successful run")
    resume: bool = option(True, "continue an interrupted run from the work folder; --restart clears it first",
                          flag="--restart", action="store_false")

    @staticmethod
    def check_given(cfg: "CompareConfig", given: dict[str, str]) -> None:
        """Refuse command-line settings the run would ignore: ``heal.*`` without ``--heal``.

        ``given`` maps each dotted key set by a flag or a ``key=value`` override to how it was
        spelled (the flag, or the key); a ``--config`` file may set ``heal.*`` for runs with and
        without ``--heal``, so it is not checked.

        Raises:
            EavssError: a healing setting was given and ``compare.heal`` is off.
        """
        unused = [label for key, label in sorted(given.items()) if key.startswith("heal.")]
        if unused and not cfg.compare.heal:
            raise EavssError(f"{', '.join(unused)} only act with --heal (compare.heal=true); add --heal or drop "
                             + ("it" if len(unused) == 1 else "them"))


# ---------------------------------------------------------------------------------------------
# steps


def number_removed(fraction: float, num_layers: int) -> int:
    """``k = floor(fraction * L)`` (as :func:`eavss.prune.selection.select_by_count`).

    Raises:
        EavssError: ``k`` is 0, or would leave no layer.
    """
    k = math.floor(fraction * num_layers + 1e-9)
    if k < 1:
        raise EavssError(f"prune.fraction={fraction} of {num_layers} layers rounds down to k=0 layers to remove; raise "
                         f"--fraction to at least {1 / num_layers:.3g}")
    if k >= num_layers:
        raise EavssError(f"prune.fraction={fraction} removes all {num_layers} layers; lower --fraction")
    return k


def check_after_loading(cfg: CompareConfig, model) -> int:
    """Checks that need the model, before any slow work: lengths fit the context (``eval.max_length``
    null becomes min(2048, context)), ``k`` is valid, healing can run. Returns ``k``."""
    from eavss.models.layers import check_lengths, find_decoder_layers

    lengths = {"calibration.max_length": cfg.calibration.max_length, "eval.max_length": cfg.eval.max_length,
               "eval.ppl_context_length": cfg.eval.ppl_context_length}
    ctx = check_lengths(model, lengths)
    if cfg.eval.max_length is None:
        cfg.eval.max_length = min(2048, ctx) if ctx else 2048
    k = number_removed(cfg.prune.fraction, len(find_decoder_layers(model)[1]))
    if cfg.compare.heal:
        from eavss.recipes.heal import check_heal_model

        check_heal_model(cfg.heal, model)
        if cfg.heal.layers is not None:  # indices of the pruned models: they have L - k layers
            from eavss.training.params import validate_layers

            validate_layers(cfg.heal.layers, len(find_decoder_layers(model)[1]) - k)
    return k


def metric_context(cfg: CompareConfig, model, tokenizer, texts: list[str]):
    """The :class:`eavss.prune.metrics.MetricContext` of this run (its batches built, no pass run yet).

    Returns:
        ``(ctx, calibration_info, loss_info)``.
    """
    import torch

    from eavss.data.calibration import calibration_batches
    from eavss.prune.metrics import MetricContext
    from eavss.scores.registry import ScoreOptions

    c = cfg.calibration
    batches, info = calibration_batches(tokenizer, c.dataset, c.num_samples, c.max_length, c.batch_size, c.packing,
                                        cfg.seed, cfg.data_dir, texts=texts)
    n = min(cfg.ground_truth.num_samples, c.num_samples)
    loss_batches, loss_info = calibration_batches(tokenizer, c.dataset, n, c.max_length, c.batch_size, c.packing,
                                                  cfg.seed, cfg.data_dir, texts=texts)
    ctx = MetricContext(
        model=model, batches=batches, loss_batches=loss_batches, seed=cfg.seed,
        score_options=ScoreOptions(variance=cfg.stats.variance, normalisation=cfg.scores.normalisation,
                                   sparsity_guard=cfg.scores.sparsity_guard),
        sparsity_rule=cfg.stats.sparsity.rule(),
        accum_dtype={"float64": torch.float64, "float32": torch.float32}[cfg.stats.accum_dtype],
        massive=cfg.stats.massive, progress=cfg.progress)
    return ctx, info, loss_info


def ground_truth(ctx, loss_info: dict, k: int) -> dict:
    """The ground-truth section: per-layer skip cost and the oracle (the k cheapest layers)."""
    from eavss.prune.metrics import layer_skip
    from eavss.report.schema import jsonable
    from eavss.scores.agreement import removal_cost

    skip = layer_skip(ctx)
    delta = np.asarray(skip["delta"], dtype=np.float64)
    oracle = removal_cost(delta, delta, k)
    return jsonable({
        "definition": "calibration-loss increase (nats/token) when the layer alone is skipped (Shortened LLaMA PPL "
                      "criterion); higher = more important",
        "num_samples": loss_info["num_samples"], "num_tokens": skip["num_tokens"], "base_loss": skip["base_loss"],
        "delta": delta, "importance_rank": skip["importance_rank"], "k": k,
        "oracle_removed": oracle["oracle_removed"], "oracle_cost": oracle["oracle_cost"],
        "seconds": ctx.shared_seconds.get("layer_skip"),
    })


def row_names(metrics: list[str], seed: int, n_seeds: int) -> list[tuple[str, str, int | None]]:
    """``(row, metric, seed)`` for every row of the comparison: one per metric, one per seed of a
    seeded metric (``random(seed=S)``, seeds ``seed .. seed + n_seeds - 1``)."""
    from eavss.prune.metrics import METRICS

    rows = []
    for m in metrics:
        if METRICS.entry(m).meta.get("seeded"):
            rows += [(f"{m}(seed={s})", m, s) for s in range(seed, seed + n_seeds)]
        else:
            rows.append((m, m, None))
    return rows


def choose_layers(cfg: CompareConfig, ctx, k: int) -> dict[str, dict]:
    """Every row's selection: ``{row: {"metric", "seed", "removed", "score", "seconds", "shared", "details"}}``."""
    from eavss.prune.metrics import METRICS

    out = {}
    base_seed = ctx.seed
    try:
        for row, metric, seed in row_names(cfg.compare.metrics, cfg.seed, cfg.compare.random_seeds):
            ctx.seed = base_seed if seed is None else seed
            sel = METRICS[metric](ctx, k)
            out[row] = {"metric": metric, "seed": seed, **sel}
    finally:
        ctx.seed = base_seed
    return out


def removal_costs(ctx, selections: dict, gt: dict, joint: bool) -> dict[str, dict]:
    """Per row: the removed set's ground-truth cost (:func:`eavss.scores.agreement.removal_cost`
    of the set against the single-layer skip costs), Spearman of its score with the ground truth,
    and (``joint``) the calibration loss with the whole set skipped at once."""
    from eavss.models.surgery import skip_layers
    from eavss.scores.ablation import calibration_loss
    from eavss.scores.agreement import rank_agreement, removal_cost

    delta = np.asarray(gt["delta"], dtype=np.float64)
    k = gt["k"]
    out = {}
    for row, sel in selections.items():
        indicator = np.ones(len(delta))
        indicator[sel["removed"]] = 0.0  # its k lowest are exactly the removed set
        rc = removal_cost(indicator, delta, k)
        entry = {"cost": rc["cost"], "oracle_cost": rc["oracle_cost"], "excess": rc["excess"],
                 "overlap_with_oracle": rc["overlap"], "spearman_with_ground_truth": None, "spearman_ci": None,
                 "p_value": None,
                 "joint_loss": None, "joint_loss_increase": None}
        if sel["score"] is not None:
            ra = rank_agreement(sel["score"], delta, k)
            entry.update(spearman_with_ground_truth=ra["spearman"], spearman_ci=ra["spearman_ci"], p_value=ra["p_value"])
        if joint:
            with skip_layers(ctx.model, sel["removed"]):
                loss = calibration_loss(ctx.model, ctx.loss_batches)["loss"]
            entry.update(joint_loss=loss, joint_loss_increase=loss - gt["base_loss"])
        out[row] = entry
    return out


def agreement(selections: dict, k: int) -> dict:
    """Pairwise Spearman of the per-layer scores (rows that have one) and the overlap of every two
    removed sets."""
    from eavss.scores.agreement import rank_agreement

    scored = [r for r, s in selections.items() if s["score"] is not None]
    n = len(scored)
    rho = [[None] * n for _ in range(n)]
    pv = [[None] * n for _ in range(n)]
    for i, a in enumerate(scored):
        for j, b in enumerate(scored):
            ra = rank_agreement(selections[a]["score"], selections[b]["score"], k)
            rho[i][j], pv[i][j] = ra["spearman"], ra["p_value"]
    rows = list(selections)
    overlap = [[len(set(selections[a]["removed"]) & set(selections[b]["removed"])) for b in rows] for a in rows]
    return {"scored": scored, "spearman": rho, "p_value": pv, "rows": rows, "removed_overlap": overlap}


def _evaluate(cfg: CompareConfig, model, tok) -> tuple[dict, float]:
    from eavss.recipes.compare_eval import evaluate_tasks

    t0 = time.perf_counter()
    res, _ = evaluate_tasks(model, tok, cfg.eval, cfg.data_dir, cfg.seed, cfg.progress)
    return res, time.perf_counter() - t0


def _retention_block(cfg: CompareConfig, reference: dict, results: dict) -> dict:
    from eavss.recipes.compare_eval import retention_of

    ret, mean = retention_of(reference, results, cfg.seed)
    return {"retention": ret, "mean_retention": mean}


def _heal(cfg: CompareConfig, model, train, held) -> tuple[object, dict]:
    from eavss.recipes.heal import heal_model
    from eavss.report.schema import jsonable

    healed, summ = heal_model(model, train, held, cfg.heal, cfg.seed, cfg.progress)
    return healed, jsonable(summ)


def evaluate_rows(cfg: CompareConfig, model, tok, selections: dict, heal_data: tuple | None, timings: dict,
                  work: Path | None = None) -> dict:
    """Evaluate the original, every row's pruned copy and (with healing) the healed copies and control.

    With ``work`` (the run's work folder), every finished step -- the original's evaluation, the healed
    control, each row -- is kept there as JSON and read back instead of recomputed when the run is
    resumed (the selections are deterministic, so a row's name and removed layers identify it).
    Rows that remove the same layers share one evaluation (and healing): the later ones carry
    ``same_layers_as`` naming the first.

    Returns:
        ``{"original": results, "rows": {row: {...}}, "healing": {...} | None}``.
    """
    from eavss.models.surgery import remove_layers
    from eavss.recipes.compare_eval import compact

    n_params = sum(t.numel() for t in model.parameters())
    step = _Steps(work, timings)
    got = step.get("original")
    if got is None:
        original, secs = _evaluate(cfg, model, tok)
        got = step.put("original", {"results": original}, {"eval_original": secs})
    original = got["results"]
    healing = None
    healed_ref = None
    if heal_data is not None:
        train, held = heal_data
        got = step.get("healed_unpruned")
        if got is None:
            t0 = time.perf_counter()
            healed_unpruned, summ = _heal(cfg, copy.deepcopy(model), train, held)
            t_heal = time.perf_counter() - t0
            hres, secs = _evaluate(cfg, healed_unpruned, tok)
            del healed_unpruned
            got = step.put("healed_unpruned", {"results": hres, "train": summ},
                           {"heal_unpruned": t_heal, "eval_healed_unpruned": secs})
        healed_ref, summ = got["results"], got["train"]
        healing = {"unpruned": {"train": summ, "evaluation": compact(healed_ref),
                                "vs_original": _retention_block(cfg, original, healed_ref)}}
    rows = {}
    first_with: dict[tuple, str] = {}  # removed set -> the first row that removes it
    for row, sel in selections.items():
        removed = tuple(sel["removed"])
        if removed in first_with:  # the same pruned model: evaluated (and healed) once, shared
            rows[row] = {**rows[first_with[removed]], "same_layers_as": first_with[removed]}
            continue
        first_with[removed] = row
        key = f"row.{row}.removed={','.join(map(str, sel['removed']))}"
        got = step.get(key)
        if got is not None:
            rows[row] = got["entry"]
            continue
        row_t: dict[str, float] = {}
        pruned = copy.deepcopy(model)  # a fresh copy of the loaded model: every row starts from the same weights
        info = remove_layers(pruned, sel["removed"])
        kept = sum(t.numel() for t in pruned.parameters())
        res, secs = _evaluate(cfg, pruned, tok)
        row_t[f"eval.{row}"] = secs
        entry = {"removed_paths": info["removed_paths"], "params_before": n_params, "params_after": kept,
                 "params_kept_pct": 100.0 * kept / n_params, "evaluation": compact(res),
                 **_retention_block(cfg, original, res)}
        if heal_data is not None:
            train, held = heal_data
            t0 = time.perf_counter()
            healed, summ = _heal(cfg, pruned, train, held)
            row_t[f"heal.{row}"] = time.perf_counter() - t0
            hres, secs = _evaluate(cfg, healed, tok)
            row_t[f"eval_healed.{row}"] = secs
            del healed
            entry["healing"] = {"train": summ, "evaluation": compact(hres),
                                "vs_original": _retention_block(cfg, original, hres),
                                "vs_healed_unpruned": _retention_block(cfg, healed_ref, hres)}
        del pruned
        rows[row] = step.put(key, {"entry": entry}, row_t)["entry"]
    return {"original": original, "rows": rows, "healing": healing}


class _Steps:
    """Finished steps of :func:`evaluate_rows` kept as JSON in the work folder (none without one).
    ``put`` records the step's seconds in ``timings`` and stores them with it; ``get`` of a kept step
    puts its recorded seconds back, so a resumed report has every phase's time."""

    def __init__(self, work: Path | None, timings: dict):
        self.work, self.timings = work, timings
        self.index: dict = {}
        if work is not None:
            from eavss.recipes.common import cached_json

            self.index = cached_json(work / "steps.json") or {}

    def _file(self, key: str) -> Path:
        import hashlib

        return self.work / "steps" / (hashlib.sha256(key.encode()).hexdigest()[:20] + ".json")

    def get(self, key: str) -> dict | None:
        if self.work is None or key not in self.index:
            return None
        from eavss.recipes.common import cached_json

        got = cached_json(self._file(key))
        if got is not None:
            self.timings.update(got["seconds"])
        return got

    def put(self, key: str, value: dict, seconds: dict) -> dict:
        from eavss.report.schema import jsonable

        self.timings.update(seconds)
        value = jsonable({**value, "seconds": seconds})
        if self.work is not None:
            from eavss.io import write_json_atomic

            write_json_atomic(self._file(key), value)
            self.index[key] = self._file(key).name
            write_json_atomic(self.work / "steps.json", self.index)
        return value


def random_summary(rows: dict) -> dict | None:
    """Mean, min and max over the seeds of the seeded rows' mean retention (and per task)."""
    seeded = {r: v for r, v in rows.items() if v.get("seed") is not None}
    if not seeded:
        return None
    by_metric: dict[str, list[str]] = {}
    for r, v in seeded.items():
        by_metric.setdefault(v["metric"], []).append(r)
    out = {}
    for metric, names in by_metric.items():
        def stats(vals):
            vals = [v for v in vals if v is not None]
            return {"mean": float(np.mean(vals)) if vals else None, "min": min(vals) if vals else None,
                    "max": max(vals) if vals else None, "n": len(vals)}
        tasks = list(rows[names[0]]["retention"])
        out[metric] = {"rows": names, "seeds": [rows[r]["seed"] for r in names],
                       "mean_retention": stats([rows[r]["mean_retention"]["mean_pct"] for r in names]),
                       "per_task": {t: stats([rows[r]["retention"][t]["retention_pct"] for r in names]) for t in tasks},
                       "ground_truth_cost": stats([rows[r]["ground_truth_cost"]["cost"] for r in names])}
        if all("healing" in rows[r] for r in names):
            out[metric]["healed_mean_retention_vs_healed_unpruned"] = stats(
                [rows[r]["healing"]["vs_healed_unpruned"]["mean_retention"]["mean_pct"] for r in names])
    return out


def healing_note(text_info: dict) -> str:
    """The sentence the report opens its healing section with: what the model healed on and why the
    controls are there."""
    what = ("healing text: WikiText-2 validation only (never test), so every evaluation text is unseen"
            if text_info["dataset"] == "wikitext2" else
            f"healing text: {text_info['source']}, a user file ({text_info['why']})")
    return (f"{what}; ptb, squad and sciq are domains the healing text is not from, ppl/wikitext2 the one it is "
            "from; retention against the unpruned model healed with the same budget isolates what removal cost")


def write_outputs(out: Path, report: dict) -> None:
    """report.json, report.md and compare.png into ``out``."""
    from eavss.io import write_json_atomic, write_text_atomic
    from eavss.report.compare import plot_compare, render_markdown
    from eavss.report.schema import jsonable

    write_json_atomic(out / "report.json", jsonable(report))
    write_text_atomic(out / "report.md", render_markdown(report))
    plot_compare(report, out / "compare.png")


# ---------------------------------------------------------------------------------------------
# command


_NOT_IN_FINGERPRINT = {"out", "overwrite", "progress", "threads", "work_dir", "keep_work", "resume"}


def compare_settings(cfg: CompareConfig, model_sha: str | None) -> dict:
    """What a resumed ``compare`` must share with the interrupted one: the config less output and
    display settings, and the model file (by sha256 when it is a file): the work folder's key."""
    from eavss.recipes.common import fingerprint_settings

    d = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_IN_FINGERPRINT}
    return fingerprint_settings(d, model=model_sha)


def run(cfg: CompareConfig) -> dict:
    """``eavss compare``: every metric's layers removed and evaluated side by side, into ``cfg.out``."""
    from eavss.io import atomic_dir
    from eavss.models.layers import find_decoder_layers
    from eavss.prune.metrics import METRICS
    from eavss.recipes.avss import check_before_loading
    from eavss.report.schema import jsonable, new_report

    validate(cfg)
    threads = start(cfg, cfg.model.name)
    check_work_dir(work_folder(cfg.out, cfg.work_dir), cfg.out, cfg.model.name, *input_files(cfg),
                   data_dir=cfg.data_dir, cache_dir=cfg.model.cache_dir)
    pre = check_before_loading(cfg)
    heal_texts = text_info = None
    if cfg.compare.heal:
        from eavss.recipes.heal import check_heal_text

        heal_texts, text_info = check_heal_text(cfg.heal, cfg.data_dir)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    with timed(timings, "load"):
        loaded = load(cfg.model, cfg.progress)
    model, tok = loaded.model, loaded.tokenizer
    k = check_after_loading(cfg, model)  # the last change to cfg (eval.max_length) before the fingerprint
    work = open_work(work_folder(cfg.out, cfg.work_dir), compare_settings(cfg, loaded.info.get("file_sha256")),
                     cfg.resume, "compare", cfg.out)  # before the scoring passes: a refusal costs no minutes
    model_sec = model_section(loaded)
    L = len(find_decoder_layers(model)[1])

    ctx, cal_info, loss_info = metric_context(cfg, model, tok, pre["texts"])
    with timed(timings, "ground_truth"):
        gt = ground_truth(ctx, loss_info, k)
    with timed(timings, "choose_layers"):
        selections = choose_layers(cfg, ctx, k)
    with timed(timings, "joint_loss"):
        costs = removal_costs(ctx, selections, gt, cfg.compare.joint_loss)
    agree = agreement(selections, k)

    heal_data = data_info = None
    if cfg.compare.heal:
        from eavss.recipes.heal import heal_batches

        train, held, data_info = heal_batches(tok, heal_texts, cfg.heal, cfg.seed)
        heal_data = (train, held)
    try:
        ev = evaluate_rows(cfg, model, tok, selections, heal_data, timings, work)
    except KeyboardInterrupt:
        print(f"eavss compare: finished evaluations are kept in {work}; run the same command again to resume",
              file=sys.stderr)
        raise

    from eavss.recipes.compare_eval import paired_rows, strip_draws

    rows = {}
    for row, sel in selections.items():
        rows[row] = {"metric": sel["metric"], "seed": sel["seed"], "removed": sel["removed"],
                     "score": sel["score"], "seconds": sel["seconds"], "shared_passes": sel["shared"],
                     "details": sel["details"], "ground_truth_cost": costs[row], **ev["rows"][row]}
    metrics_meta = {m: {"help": METRICS.entry(m).help, **{key: METRICS.entry(m).meta.get(key)
                                                          for key in ("needs", "direction", "seeded", "site")}}
                    for m in cfg.compare.metrics}
    report = new_report("compare", to_dict(cfg), cfg.seed, tok)
    report.update({
        "model": model_sec,
        "settings": {"num_layers": L, "k": k, "fraction": cfg.prune.fraction,
                     "rule": "k = floor(fraction * L) layers removed by every metric"},
        "calibration": cal_info, "loss_calibration": loss_info,
        "statistics_passes": {f"statistics:{s}": ctx.shared_seconds.get(f"statistics:{s}") for s in ctx.stats},
        "metrics": metrics_meta,
        "ground_truth": gt,
        "rows": strip_draws(rows),
        "agreement": agree,
        "random": random_summary(rows),
        "paired": {"before": paired_rows(rows),
                   "healed_vs_healed_unpruned": paired_rows(rows, "healing.vs_healed_unpruned") if cfg.compare.heal
                   else None},
        "evaluation": {"original": ev["original"], "tasks": cfg.eval.tasks, "limits": cfg.eval.limits},
        "healing": None if not cfg.compare.heal else {
            "text": {**text_info, **data_info},
            "note": healing_note(text_info),
            **strip_draws(ev["healing"])},
        "timings": timings, "threads": threads,
    })
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        timings["total"] = time.perf_counter() - t_all
        write_outputs(tmp, report)
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return jsonable(report)


def summary(report: dict, cfg) -> list[str]:
    """The retention table of report.md, then where the outputs are."""
    from eavss.report.compare import summary_lines

    return summary_lines(report) + [f"outputs: {cfg.out}/report.json, {cfg.out}/report.md, {cfg.out}/compare.png"]
