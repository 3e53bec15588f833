"""Human-readable outputs of the AVSS commands (score, prune, eval, run): ``report.md`` and ``avss.png``,
and the typed sections those reports hold."""

from __future__ import annotations

import os
from typing import TypedDict

from eavss.report.common import format_number, header_lines, pyplot, save_figure, timings_table

_fmt = format_number


class PerLayerRow(TypedDict, total=False):
    """One row of ``statistics.per_layer``."""

    layer: int
    module: str | None
    n_tokens: int
    width: int
    variance: float
    variance_element: float
    variance_token: float
    variance_pooled: float
    mean: float
    sparsity: float
    var_norm: float
    sparsity_norm: float
    avss: float
    avss_norm: float
    importance_rank: int
    guard_hit: bool
    block_influence: float | None


class StatisticsSection(TypedDict):
    """``report["statistics"]`` of score/run reports."""

    site: str
    variance_definition: str
    normalisation: str
    sparsity_guard: str
    sparsity_rule: dict
    guard_hit_layers: list[int]
    ranking_most_to_least_important: list[int]
    per_layer: list[PerLayerRow]
    sums: dict


class PruningSection(TypedDict):
    """``report["pruning"]`` of prune/run reports."""

    score: str
    rule: str
    criterion: str
    fraction: float
    mass: float
    protect_first: int
    protect_last: int
    removed: list[int]
    removed_paths: list[str]
    kept: list[int]
    num_layers_before: int
    num_layers_after: int
    params_before: int
    params_after: int


class EvaluationSection(TypedDict, total=False):
    """``report["evaluation"]``: per-task results of the original (and pruned) model, retention."""

    original: dict
    pruned: dict
    retention: dict
    limits: dict
    mean_retention_pct: float | None


def layer_table(rows: list[dict], removed: set[int] | None = None, skip_delta: list | None = None) -> str:
    """Markdown table of the per-layer statistics and AVSS (with the ground truth's skip cost when given)."""
    removed = removed or set()
    cols = [("layer", "layer"), ("variance", "variance"), ("sparsity", "sparsity"), ("var_norm", "var_norm"),
            ("sparsity_norm", "sparsity_norm"), ("avss", "AVSS"), ("avss_norm", "AVSS_norm"),
            ("importance_rank", "rank"), ("block_influence", "BI")]
    if skip_delta is not None:
        rows = [{**r, "skip_delta": skip_delta[r["layer"]]} for r in rows]
        cols.append(("skip_delta", "skip Δloss"))
    head = "| " + " | ".join(c[1] for c in cols) + " | removed |\n"
    head += "|" + "---|" * (len(cols) + 1) + "\n"
    body = ""
    for r in rows:
        cells = [_fmt(r.get(k)) for k, _ in cols]
        flag = "**removed**" if r["layer"] in removed else ""
        if r.get("guard_hit"):
            cells[2] += " (guard)"
        body += "| " + " | ".join(cells) + f" | {flag} |\n"
    return head + body


def eval_table(evaluation: dict) -> str:
    """Markdown table of original vs pruned metrics and retention."""
    orig = evaluation.get("original", {})
    pruned = evaluation.get("pruned", {})
    ret = evaluation.get("retention", {})
    lines = ["| task | metric | original | pruned | retention % | items |", "|---|---|---|---|---|---|"]
    for task, r in ret.items():
        metric = r.get("metric")
        o = orig.get(task, {}).get("metrics", {}).get(metric)
        p = pruned.get(task, {}).get("metrics", {}).get(metric)
        n = orig.get(task, {}).get("n_samples", orig.get(task, {}).get("num_tokens_scored"))
        lines.append(f"| {task} | {metric} | {_fmt(o)} | {_fmt(p)} | {_fmt(r.get('retention_pct'), 1)} | {_fmt(n)} |")
    return "\n".join(lines) + "\n"


def alternatives_table(report: dict) -> str:
    """Markdown: the pruned model's retention beside other choices of the same number of layers."""
    ev, pr = report["evaluation"], report["pruning"]
    tasks = list(ev["retention"])
    rows = [(f"**{pr['score']}** (this run)", pr["removed"], ev.get("mean_retention_pct"), ev["retention"])]
    rows += [(name, a["removed"], a.get("mean_retention_pct"), a["retention"]) for name, a in ev["alternatives"].items()]
    lines = [f"## The same {len(pr['removed'])} layers chosen another way\n",
             "Each alternative is evaluated with its layers skipped in place, on the same tasks and items.\n",
             "| selection | removed | mean retention % | " + " | ".join(f"{t} %" for t in tasks) + " |",
             "|---|---|---|" + "---|" * len(tasks)]
    for name, removed, mean, ret in rows:
        cells = [_fmt((ret.get(t) or {}).get("retention_pct"), 1) for t in tasks]
        lines.append(f"| {name} | {removed} | {_fmt(mean, 1)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ground_truth_table(gt: dict) -> str:
    """Markdown: how well each score tracks the ground truth (single-layer skip cost)."""
    lines = ["## Does the score measure the layer? (ground truth)\n",
             f"Ground truth: {gt['definition']}; {gt['num_samples']} calibration sequences ({gt['num_tokens']} "
             f"target tokens), base loss {_fmt(gt['base_loss'])}. For each score: Spearman with it over layers, and "
             f"the summed skip cost of the k = {gt['k']} layers the score ranks lowest against the k cheapest "
             "(oracle).\n",
             "| score | Spearman | p | overlap with the k cheapest | cost of its k (nats/token) | oracle cost | "
             "removes |", "|---|---|---|---|---|---|---|"]
    for name, a in sorted(gt["agreement"].items(), key=lambda kv: -(kv[1]["spearman"] if kv[1]["spearman"] is not None else -9)):
        lines.append(f"| {name} | {_fmt(a['spearman'], 2)} | {_fmt(a['p_value'], 3)} | {a['overlap']} / {a['k']} | "
                     f"{_fmt(a['cost'], 3)} | {_fmt(a['oracle_cost'], 3)} | {a['removed']} |")
    best = gt.get("best_score")
    if best:
        lines.append(f"\nTracks the ground truth best: **{best}**.")
    return "\n".join(lines) + "\n"


def results_table(results: dict) -> str:
    """Markdown table of every metric of one model's evaluation results."""
    lines = ["| task | metric | value |", "|---|---|---|"]
    for task, r in results.items():
        for k, v in (r.get("metrics") or {}).items():
            lines.append(f"| {task} | {k} | {_fmt(v)} |")
    return "\n".join(lines) + "\n"


def render_markdown(report: dict) -> str:
    """The ``report.md`` text of a score, prune, eval or run report."""
    out = [f"# eavss {report['kind']} report\n"]
    out += header_lines(report)
    cal = report.get("calibration")
    if cal:
        out.append(f"- calibration: {cal.get('dataset')} ({cal.get('packing')}), {cal.get('num_samples')} sequences, "
                   f"{cal.get('num_tokens')} tokens, max length {cal.get('max_length')}")
    st = report.get("statistics")
    if st:
        out.append(f"- capture site: `{st['site']}`; variance: `{st['variance_definition']}`; sparsity: "
                   f"`{st['sparsity_rule'].get('rule')}`; normalisation: `{st['normalisation']}`")
        if st.get("massive"):
            n = sum(r.get("massive_tokens") or 0 for r in st["per_layer"])
            out.append(f"- massive-activation tokens left out: RMS > {st['massive']}x the batch median at a layer "
                       f"({n} token-layer exclusions in all; per layer in the table)")
        for w in (st.get("sparsity_information") or {}).get("warnings", []):
            out.append(f"- **sparsity warning:** {w}")
        hit = st.get("guard_hit_layers") or []
        out.append(f"- sparsity guard ({st.get('sparsity_guard')}): " + (f"**hit on layers {hit}** (sparsity 0 there; AVSS uses the floor 0.5/N)" if hit else "not hit"))
    pr = report.get("pruning")
    if pr:
        out.append(f"- pruning: rule `{pr['rule']}` on score `{pr['score']}` ({pr.get('criterion')}); removed "
                   f"{len(pr['removed'])} of {pr['num_layers_before']} layers: {pr['removed']}")
        out.append(f"- removed modules: {', '.join('`' + p + '`' for p in pr.get('removed_paths', []))}")
        if pr.get("params_before"):
            out.append(f"- parameters: {pr['params_before']:,} -> {pr['params_after']:,} "
                       f"({100 * pr['params_after'] / pr['params_before']:.1f}%)")
    out.append("")
    if st:
        out.append("## Per-layer statistics\n")
        out.append("variance and sparsity are raw; `_norm` are normalised across layers; rank 1 = most important; "
                   "BI = ShortGPT block influence (for comparison).\n")
        gt = report.get("ground_truth")
        out.append(layer_table(st["per_layer"], set(pr["removed"]) if pr else set(), gt["delta"] if gt else None))
        if gt:
            out.append(ground_truth_table(gt))
    ev = report.get("evaluation")
    if ev and ev.get("retention"):
        out.append("## Retention after pruning\n")
        out.append(eval_table(ev))
        mean = ev.get("mean_retention_pct")
        if mean is not None:
            out.append(f"Mean retention over tasks: **{mean:.1f}%** (paper claims > 90%).\n")
        if ev.get("alternatives"):
            out.append(alternatives_table(report))
    elif ev and ev.get("original"):
        out.append("## Evaluation\n")
        out.append(results_table(ev["original"]))
    if ev:
        lim = ev.get("limits")
        if lim:
            out.append(f"Limits (items per task; null = full set): `{lim}`\n")
    t = report.get("timings")
    if t:
        out.append("## Timings (seconds)\n")
        out.append(timings_table(t))
    return "\n".join(out) + "\n"


def plot_avss(per_layer: list[dict], removed: list[int], path: str | os.PathLike, title: str = "") -> None:
    """Three stacked bar charts (variance, sparsity, AVSS per layer), removed layers in red.
    Written atomically as PNG."""
    plt = pyplot()
    layers = [r["layer"] for r in per_layer]
    colours = ["tab:red" if i in set(removed) else "tab:blue" for i in layers]
    fig, axes = plt.subplots(3, 1, figsize=(max(6, 0.3 * len(layers) + 2), 7), sharex=True)
    for ax, key, label in zip(axes, ("variance", "sparsity", "avss"), ("activation variance", "activation sparsity", "AVSS")):
        vals = [r.get(key) or 0.0 for r in per_layer]
        ax.bar(layers, vals, color=colours)
        ax.set_ylabel(label)
        if key == "variance" and max(vals) > 0 and max(vals) / max(min(v for v in vals if v > 0), 1e-30) > 100:
            ax.set_yscale("log")
    axes[-1].set_xlabel("decoder layer (0-based); red = removed")
    fig.suptitle(title or "per-layer AVSS")
    fig.tight_layout()
    save_figure(fig, path)
