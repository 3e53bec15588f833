"""The AVSS recipes: score -> prune -> evaluate -> report.

Each step is a function over explicit inputs (a loaded model, a config, a statistics object), so
the one-call :func:`run` and the CLI's sub-commands share one code path.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from eavss.config import RunConfig, to_dict
from eavss.errors import EavssError
from eavss.io import atomic_dir, check_not_inside, check_out_dir, write_json_atomic, write_text_atomic
from eavss.report.render import plot_avss, render_markdown
from eavss.report.schema import check_report, jsonable, new_report
from eavss.scores.registry import ScoreConfig, compute_scores
from eavss.stats import LayerStatistics, SparsityRule, collect_statistics

ACCUM_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def setup_threads(threads: int | None) -> None:
    """Set torch's intra-op threads when asked (None keeps torch's default)."""
    if threads is not None:
        if threads < 1:
            raise EavssError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def validate(cfg: RunConfig, steps: tuple[str, ...] = ("score", "prune", "eval")) -> None:
    """Check every option before any slow work (model loading), so a typo fails in a second.

    Raises:
        EavssError: the first invalid option, naming the key and the valid choices.
    """
    from eavss.prune.selection import RULES
    from eavss.scores.avss import GUARDS, NORMALISATIONS
    from eavss.scores.registry import SCORES
    from eavss.stats.accumulators import VARIANCE_DEFINITIONS
    from eavss.stats.sites import SITES

    def choice(key: str, value, options) -> None:
        if value not in options:
            raise EavssError(f"{key}={value!r} is not valid; choose one of {sorted(options)}")

    if "score" in steps:
        sparsity_rule(cfg)  # validates mode, tau, epsilon
        choice("stats.site", cfg.stats.site, SITES)
        choice("stats.accum_dtype", cfg.stats.accum_dtype, ACCUM_DTYPES)
        choice("scores.variance", cfg.scores.variance, VARIANCE_DEFINITIONS)
        choice("scores.normalisation", cfg.scores.normalisation, NORMALISATIONS)
        choice("scores.sparsity_guard", cfg.scores.sparsity_guard, GUARDS)
        choice("calibration.packing", cfg.calibration.packing, ("documents", "packed"))
        for key in ("num_samples", "batch_size"):
            if getattr(cfg.calibration, key) < 1:
                raise EavssError(f"calibration.{key} must be >= 1, got {getattr(cfg.calibration, key)}")
        if cfg.calibration.max_length < 2:
            raise EavssError(f"calibration.max_length must be >= 2, got {cfg.calibration.max_length}")
    if "prune" in steps:
        p = cfg.prune
        choice("prune.rule", p.rule, RULES)
        choice("prune.score", p.score, SCORES)
        if not 0 < p.fraction < 1:
            raise EavssError(f"prune fraction must be in (0, 1), got {p.fraction}; e.g. --fraction 0.25")
        if not 0 < p.mass < 1:
            raise EavssError(f"prune mass must be in (0, 1), got {p.mass}; e.g. --mass 0.25")
        if p.protect_first < 0 or p.protect_last < 0:
            raise EavssError("prune.protect_first and prune.protect_last must be >= 0")
    if "eval" in steps:
        from eavss.evaluation.harness import TASKS

        for t in cfg.eval.tasks:
            choice("eval.tasks", t, TASKS)
        if not cfg.eval.tasks:
            raise EavssError(f"eval.tasks is empty; choose from {sorted(TASKS)}")
        for t, lim in cfg.eval.limits.items():
            if lim is not None and lim < 1:
                raise EavssError(f"eval.limits.{t} must be >= 1 or null (the full set), got {lim}")
        if cfg.eval.batch_size < 1:
            raise EavssError(f"eval.batch_size must be >= 1, got {cfg.eval.batch_size}")


def start(cfg: RunConfig, steps: tuple[str, ...], *inputs: str | None) -> None:
    """Common start of every command: check options and the output folder (which must not be or
    contain an input folder) before any slow work, then seed and set threads."""
    validate(cfg, steps)
    check_out_dir(cfg.out, cfg.overwrite)
    check_not_inside(cfg.out, *inputs)
    seed_everything(cfg.seed)
    setup_threads(cfg.threads)


def load(cfg: RunConfig, name: str | None = None):
    """Load ``name`` (default ``cfg.model.name``) with the configured dtype/device/cache."""
    from eavss.models.loading import load_model

    if not cfg.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    name = name or cfg.model.name
    if Path(name).expanduser().exists():  # record local paths absolutely, so later steps find them
        name = str(Path(name).expanduser().resolve())
    return load_model(name, dtype=cfg.model.dtype, device=cfg.model.device,
                      cache_dir=cfg.model.cache_dir, trust_remote_code=cfg.model.trust_remote_code)


def sparsity_rule(cfg: RunConfig) -> SparsityRule:
    """The :class:`SparsityRule` of a config."""
    s = cfg.stats.sparsity
    return SparsityRule(mode=s.mode, epsilon=s.epsilon, tau=s.tau)


def score_config(cfg: RunConfig) -> ScoreConfig:
    """The :class:`ScoreConfig` of a config."""
    return ScoreConfig(variance=cfg.scores.variance, normalisation=cfg.scores.normalisation,
                       sparsity_guard=cfg.scores.sparsity_guard)


def collect(cfg: RunConfig, model, tokenizer) -> tuple[LayerStatistics, dict, dict]:
    """Calibration batches -> statistics. Returns ``(stats, calibration_info, collection_info)``."""
    from eavss.data.calibration import calibration_batches

    c = cfg.calibration
    if cfg.stats.accum_dtype not in ACCUM_DTYPES:
        raise EavssError(f"unknown stats.accum_dtype {cfg.stats.accum_dtype!r}; choose float64 or float32")
    rule = sparsity_rule(cfg)
    batches, cal_info = calibration_batches(tokenizer, c.dataset, c.num_samples, c.max_length, c.batch_size,
                                            c.packing, cfg.seed, cfg.data_dir)
    # --- torchrun (eavss.distributed): each rank runs every world-th batch; the sums are
    # all-reduced inside collect_statistics, so every rank returns the whole set's statistics.
    from eavss import distributed as edist

    dist_on = edist.is_distributed()
    if dist_on:
        batches = edist.shard(batches)
    # --- end torchrun
    stats, info = collect_statistics(model, batches, site=cfg.stats.site, rule=rule,
                                     pooled=True, block_influence=cfg.stats.block_influence,
                                     accum_dtype=ACCUM_DTYPES[cfg.stats.accum_dtype],
                                     progress=cfg.progress and edist.is_main(), total=len(batches),
                                     distributed=dist_on)
    return stats, cal_info, info


def statistics_section(stats: LayerStatistics, cfg: RunConfig, layer_paths: list[str]) -> tuple[dict, dict]:
    """Per-layer table + all registered scores. Returns ``(statistics_section, scores_section)``."""
    scfg = score_config(cfg)
    scores = compute_scores(stats, scfg)
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
    section = {
        "site": stats.site, "variance_definition": scfg.variance, "normalisation": scfg.normalisation,
        "sparsity_guard": scfg.sparsity_guard, "sparsity_rule": stats.sparsity_rule,
        "guard_hit_layers": [int(i) for i in np.flatnonzero(a["guard_hit"])],
        "ranking_most_to_least_important": [int(i) for i in np.argsort(a["importance_rank"])],
        "per_layer": rows, "sums": stats.to_dict(),
    }
    score_sec = {name: {"score": v["score"]} for name, v in scores.items()}
    return jsonable(section), jsonable(score_sec)


def prune_model(model, scores: list[float], cfg: RunConfig) -> dict:
    """Select layers by ``cfg.prune`` from per-layer ``scores`` (higher = keep) and remove them in place."""
    from eavss.models.layers import layer_module_paths
    from eavss.models.surgery import remove_layers
    from eavss.prune.selection import select_layers

    p = cfg.prune
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


def evaluate_model(model, tokenizer, cfg: RunConfig, tasks: list[str] | None = None,
                   limits: dict | None = None) -> tuple[dict, dict]:
    """Run each evaluation task with its own limit. Returns ``(results_by_task, seconds_by_task)``."""
    from eavss.evaluation.harness import evaluate

    e = cfg.eval
    results, secs = {}, {}
    limits = e.limits if limits is None else limits
    for task in tasks or e.tasks:
        t0 = time.perf_counter()
        opts = {}
        if task == "ppl":
            opts = {"ppl": {"context_length": e.ppl_context_length, "max_tokens": e.ppl_max_tokens}}
        res = evaluate(model, tokenizer, [task], limit=limits.get(task), data_dir=cfg.data_dir,
                       batch_size=e.batch_size, seed=cfg.seed, max_gen_toks=e.max_gen_toks, max_length=e.max_length,
                       task_options=opts)
        results[task] = res[task]
        secs[task] = time.perf_counter() - t0
    return jsonable(results), secs


def _model_section(loaded) -> dict:
    info = dict(loaded.info)
    info["num_parameters"] = sum(t.numel() for t in loaded.model.parameters())
    return jsonable(info)


def write_outputs(out: Path, report: dict, plot: bool = True) -> None:
    """report.json, report.md and (for reports with statistics) avss.png into ``out``."""
    write_json_atomic(out / "report.json", jsonable(report))
    write_text_atomic(out / "report.md", render_markdown(report))
    st = report.get("statistics")
    if plot and st:
        removed = report.get("pruning", {}).get("removed", [])
        m = report.get("model", {})
        plot_avss(st["per_layer"], removed, out / "avss.png",
                  title=f"AVSS per layer: {m.get('model_id')} ({st['site']}, {st['sparsity_rule'].get('rule')})")


def score(cfg: RunConfig) -> dict:
    """``eavss score``: per-layer statistics and AVSS of ``cfg.model`` into ``cfg.out``."""
    start(cfg, ("score",), cfg.model.name)
    timings = {}
    t0 = time.perf_counter()
    loaded = load(cfg)
    timings["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats, cal_info, col_info = collect(cfg, loaded.model, loaded.tokenizer)
    timings["statistics"] = time.perf_counter() - t0
    from eavss.models.layers import layer_module_paths

    st, sc = statistics_section(stats, cfg, layer_module_paths(loaded.model))
    report = new_report("score", to_dict(cfg), cfg.seed)
    report.update({"model": _model_section(loaded), "calibration": {**cal_info, **col_info},
                   "statistics": st, "scores": sc, "timings": timings})
    from eavss import distributed as edist  # --- torchrun: rank 0 alone writes

    if not edist.is_main():
        return report
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        write_outputs(tmp, report)
    return report


def read_scores(from_dir: str | Path) -> dict:
    """Load and check ``report.json`` of a score or run output folder.

    Raises:
        EavssError: folder or report missing, or not a score/run report.
    """
    p = Path(from_dir) / "report.json"
    if not p.is_file():
        raise EavssError(f"{p} not found; --from must be the --out folder of `eavss score` or `eavss run`")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EavssError(f"{p} is not valid JSON; re-run `eavss score`") from None
    return check_report(d, kinds=("score", "run"))


def prune(cfg: RunConfig, from_dir: str) -> dict:
    """``eavss prune``: remove layers by the scores in ``from_dir`` and save the smaller HF model to ``cfg.out``."""
    from eavss.models.surgery import save_model

    start(cfg, ("prune",), from_dir)
    src = read_scores(from_dir)
    score_name = cfg.prune.score
    if score_name not in src.get("scores", {}):
        raise EavssError(f"score {score_name!r} is not in {from_dir}/report.json (has {sorted(src.get('scores', {}))}); "
                         "set prune.score to one of those")
    scores = src["scores"][score_name].get("score") if isinstance(src["scores"][score_name], dict) else None
    if not isinstance(scores, list) or not scores or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in scores):
        raise EavssError(f"score {score_name!r} in {from_dir}/report.json is missing, non-finite or not numeric; "
                         "re-run `eavss score` or choose another prune.score")
    model_id = (src.get("model") or {}).get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise EavssError(f"{from_dir}/report.json names no model (model.model_id); re-run `eavss score`")
    cfg.model.name = model_id  # prune always loads the model that was scored
    loaded = load(cfg)
    if len(scores) != loaded.info["num_layers"]:
        raise EavssError(f"{from_dir} scores {len(scores)} layers but {model_id} has {loaded.info['num_layers']}; "
                         "score this model first")
    pr = prune_model(loaded.model, scores, cfg)
    loaded.model.config.eavss_source_model = model_id
    save_model(loaded.model, loaded.tokenizer, cfg.out, overwrite=cfg.overwrite)
    report = new_report("prune", to_dict(cfg), cfg.seed)
    report.update({"model": src["model"], "source_report": str(Path(from_dir) / "report.json"), "pruning": pr})
    write_json_atomic(Path(cfg.out) / "eavss_pruning.json", jsonable(report))
    return report


def evaluate_cmd(cfg: RunConfig) -> dict:
    """``eavss eval``: evaluate ``cfg.model.name`` on ``cfg.eval.tasks`` into ``cfg.out``."""
    start(cfg, ("eval",), cfg.model.name)
    t0 = time.perf_counter()
    loaded = load(cfg)
    timings = {"load": time.perf_counter() - t0}
    res, secs = evaluate_model(loaded.model, loaded.tokenizer, cfg)
    timings.update({f"eval.{k}": v for k, v in secs.items()})
    report = new_report("eval", to_dict(cfg), cfg.seed)
    report.update({"model": _model_section(loaded), "evaluation": {"original": res, "limits": cfg.eval.limits},
                   "timings": timings})
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        write_json_atomic(tmp / "report.json", jsonable(report))
        write_text_atomic(tmp / "report.md", render_markdown(report) + _eval_only_md(res))
    return report


def _eval_only_md(res: dict) -> str:
    lines = ["## Evaluation\n", "| task | metric | value |", "|---|---|---|"]
    for task, r in res.items():
        for k, v in (r.get("metrics") or {}).items():
            lines.append(f"| {task} | {k} | {v} |")
    return "\n".join(lines) + "\n"


def run(cfg: RunConfig, save_pruned: bool = True) -> dict:
    """``eavss run``: score -> prune -> evaluate original and pruned -> report, all in ``cfg.out``.

    The output folder is built atomically: it appears complete or not at all.
    """
    from eavss.evaluation.harness import retention
    from eavss.models.layers import layer_module_paths
    from eavss.models.surgery import save_model

    start(cfg, ("score", "prune", "eval"), cfg.model.name)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    loaded = load(cfg)
    timings["load"] = time.perf_counter() - t0
    model, tok = loaded.model, loaded.tokenizer
    model_sec = _model_section(loaded)

    t0 = time.perf_counter()
    stats, cal_info, col_info = collect(cfg, model, tok)
    timings["statistics"] = time.perf_counter() - t0
    st, sc = statistics_section(stats, cfg, layer_module_paths(model))
    from eavss import distributed as edist  # --- torchrun: only the statistics are data-parallel;

    if not edist.is_main():  # rank 0 alone prunes, evaluates and writes
        return {"kind": "run", "rank": edist.rank(), "timings": timings}
    if cfg.prune.score not in sc:
        raise EavssError(f"prune.score {cfg.prune.score!r} is not available; choose one of {sorted(sc)}")

    original, secs = evaluate_model(model, tok, cfg)
    timings.update({f"eval_original.{k}": v for k, v in secs.items()})

    t0 = time.perf_counter()
    pr = prune_model(model, sc[cfg.prune.score]["score"], cfg)
    timings["pruning"] = time.perf_counter() - t0

    pruned, secs = evaluate_model(model, tok, cfg)
    timings.update({f"eval_pruned.{k}": v for k, v in secs.items()})
    ret = retention(original, pruned)
    vals = [r["retention_pct"] for r in ret.values() if r.get("retention_pct") is not None]

    report = new_report("run", to_dict(cfg), cfg.seed)
    report.update({
        "model": model_sec, "calibration": {**cal_info, **col_info}, "statistics": st, "scores": sc,
        "pruning": pr,
        "evaluation": {"original": original, "pruned": pruned, "retention": ret, "limits": cfg.eval.limits,
                       "mean_retention_pct": float(np.mean(vals)) if vals else None},
        "timings": timings,
    })
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        if save_pruned:
            t0 = time.perf_counter()
            model.config.eavss_source_model = cfg.model.name
            save_model(model, tok, tmp / "pruned")
            timings["save_pruned"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_all
        write_outputs(tmp, report)
    return report
