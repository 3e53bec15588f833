"""Human-readable outputs of the AVSS commands (score, prune, eval, run): ``report.md`` and ``avss.png``,
and the typed sections those reports hold."""

from __future__ import annotations

import os
from typing import TypedDict

from eavss.report.common import format_ci, format_number, header_lines, pyplot, save_figure, timings_table

_fmt = format_number
_ci = format_ci


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
    mean_retention: dict


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


def _with_ci(value, ci, nd: int = 4) -> str:
    """``value [lo, hi]`` (``value`` alone without an interval)."""
    if value is None:
        return "–"
    text = _fmt(value, nd)
    if ci and len(ci) == 2 and ci[0] is not None and ci[1] is not None:
        text += f" [{_fmt(ci[0], nd)}, {_fmt(ci[1], nd)}]"
    return text


def _items(result: dict) -> str:
    n, total = result.get("n_samples"), result.get("n_total")
    if n is None:
        return "–"
    return f"{n} of {total}" if total is not None and total != n else str(n)


def eval_table(evaluation: dict) -> str:
    """Markdown table of original vs pruned metrics (value [95% CI]), items, retention [95% CI]
    and chance-corrected retention where it applies, then notes: originals not clearly above
    chance, and the tasks left out of the mean as duplicate capabilities."""
    orig = evaluation.get("original", {})
    pruned = evaluation.get("pruned", {})
    ret = evaluation.get("retention", {})
    level = next((r.get("bootstrap", {}).get("level") for r in orig.values() if r.get("bootstrap")), 0.95)
    pct = f"{100 * level:.0f}% CI"
    lines = [f"| task | metric | original [{pct}] | pruned [{pct}] | items | retention % [{pct}] | "
             f"chance-corrected retention % [{pct}] |", "|---|---|---|---|---|---|---|"]
    notes = []
    for task, r in ret.items():
        o_res, p_res = orig.get(task, {}), pruned.get(task, {})
        rows = [(r.get("metric"), r)] + list((r.get("secondary") or {}).items())
        for i, (metric, e) in enumerate(rows):
            o = o_res.get("metrics", {}).get(metric, e.get("original"))
            p = p_res.get("metrics", {}).get(metric, e.get("pruned"))
            o_ci = (o_res.get("ci") or {}).get(metric) or e.get("original_ci")
            p_ci = (p_res.get("ci") or {}).get(metric) or e.get("pruned_ci")
            if e.get("chance_corrected"):
                raw = _with_ci(e.get("retention_raw_pct"), e.get("ci_raw"), 1)
                cc = _with_ci(e.get("retention_pct"), e.get("ci"), 1) + f" (chance {e.get('chance'):g})"
                if e.get("near_chance"):
                    cc += " ⚠"
            else:
                raw, cc = _with_ci(e.get("retention_pct"), e.get("ci"), 1), "–"
            name = task if i == 0 else ""
            lines.append(f"| {name} | {metric} | {_with_ci(o, o_ci)} | {_with_ci(p, p_ci)} | "
                         f"{_items(o_res) if i == 0 else ''} | {raw} | {cc} |")
            if e.get("note"):
                notes.append(f"- ⚠ {e['note']}.")
    text = "\n".join(lines) + "\n"
    mean = evaluation.get("mean_retention") or {}
    dup = mean.get("tasks_skipped_duplicate_capability") or []
    caps = mean.get("capabilities") or {}
    if dup:
        parts = []
        for t in dup:
            cap = (ret.get(t) or {}).get("capability", "?")
            parts.append(f"{t} ({cap}: counted through {caps.get(cap, '?')})")
        notes.append("- Excluded from the mean as duplicate capabilities: " + "; ".join(parts) + ".")
    near = mean.get("tasks_skipped_near_chance") or []
    if near:
        notes.append(f"- Excluded from the mean because the original is not clearly above chance: {', '.join(near)}.")
    undefined = mean.get("tasks_skipped_undefined") or []
    if undefined:
        notes.append(f"- Excluded from the mean because retention is undefined (a division by zero or a missing value): "
                     f"{', '.join(undefined)}.")
    if notes:
        text += "\n" + "\n".join(notes) + "\n"
    return text


def alternatives_table(report: dict) -> str:
    """Markdown: the pruned model's retention beside other choices of the same number of layers."""
    ev, pr = report["evaluation"], report["pruning"]
    tasks = list(ev["retention"])
    rows = [(f"**{pr['score']}** (this run)", pr["removed"], ev.get("mean_retention") or
             {"mean_pct": ev.get("mean_retention_pct")}, ev["retention"])]
    rows += [(name, a["removed"], a.get("mean_retention") or {"mean_pct": a.get("mean_retention_pct")}, a["retention"])
             for name, a in ev["alternatives"].items()]
    lines = [f"## {len(pr['removed'])} layers chosen another way\n",
             "Each alternative is evaluated with its layers skipped in place, on the same tasks and items; "
             "retention % [95 % paired bootstrap CI].\n",
             "| selection | removed | mean retention % | " + " | ".join(f"{t} %" for t in tasks) + " |",
             "|---|---|---|" + "---|" * len(tasks)]

    def with_ci(v, ci) -> str:
        s = _fmt(v, 1)
        return s + f" [{_fmt(ci[0], 1)}, {_fmt(ci[1], 1)}]" if v is not None and ci and ci[0] is not None else s

    for name, removed, mean, ret in rows:
        cells = [with_ci((ret.get(t) or {}).get("retention_pct"), (ret.get(t) or {}).get("ci")) for t in tasks]
        lines.append(f"| {name} | {removed} | {with_ci(mean.get('mean_pct'), mean.get('ci'))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ground_truth_table(gt: dict) -> str:
    """Markdown: how well each score tracks the ground truth (single-layer skip cost)."""
    lines = ["## Does the score measure the layer? (ground truth)\n",
             f"Ground truth: {gt['definition']}; {gt['num_samples']} calibration sequences ({gt['num_tokens']} "
             f"target tokens), base loss {_fmt(gt['base_loss'])}. For each score: Spearman with it over layers, and "
             f"the summed skip cost of the k = {gt['k']} layers the score ranks lowest against the k cheapest "
             "(oracle).\n",
             "| score | Spearman [95% CI] | p | overlap with the k cheapest | cost of its k (nats/token) | oracle cost | "
             "removes |", "|---|---|---|---|---|---|---|"]
    for name, a in sorted(gt["agreement"].items(), key=lambda kv: -(kv[1]["spearman"] if kv[1]["spearman"] is not None else -9)):
        lines.append(f"| {name} | {_fmt(a['spearman'], 2)}{_ci(a.get('spearman_ci'))} | {_fmt(a['p_value'], 3)} | "
                     f"{a['overlap']} / {a['k']} | "
                     f"{_fmt(a['cost'], 3)} | {_fmt(a['oracle_cost'], 3)} | {a['removed']} |")
    best = gt.get("best_score")
    if best:
        lines.append(f"\nTracks the ground truth best: **{best}**.")
    return "\n".join(lines) + "\n"


def results_table(results: dict) -> str:
    """Markdown table of every metric of one model's evaluation results (value [95% CI], items)."""
    lines = ["| task | metric | value [95% CI] | items |", "|---|---|---|---|"]
    for task, r in results.items():
        for i, (k, v) in enumerate((r.get("metrics") or {}).items()):
            lines.append(f"| {task if i == 0 else ''} | {k} | {_with_ci(v, (r.get('ci') or {}).get(k))} | "
                         f"{_items(r) if i == 0 else ''} |")
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
        m = ev.get("mean_retention") or {}
        mean = m.get("mean_pct", ev.get("mean_retention_pct"))
        if mean is not None:
            ci = m.get("ci")
            ci_text = f" [{ci[0]:.1f}, {ci[1]:.1f}] ({100 * m.get('level', 0.95):.0f}% CI)" if ci else ""
            used = f" over {', '.join(m['tasks_used'])} (one task per capability)" if m.get("tasks_used") else ""
            out.append(f"Mean retention{used}: **{mean:.1f}%**{ci_text} (paper claims > 90%).\n")
        out.append("Items are a seeded random sample of each set (the same items for both models); CIs are "
                   "percentile bootstrap intervals over items, paired for retention; per-item values are in "
                   "report.json.\n")
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
