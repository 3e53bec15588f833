"""Human-readable outputs of ``eavss compare``: ``report.md`` and ``compare.png``, and the typed
sections a ``compare`` report holds (beside the header of :mod:`eavss.report.schema`)."""

from __future__ import annotations

import os
from typing import TypedDict

import numpy as np

from eavss.report.common import format_ci, format_number, header_lines, pyplot, save_figure, timings_table

_fmt = format_number
_ci = format_ci


class SettingsSection(TypedDict):
    """``report["settings"]``: how many layers every metric removes."""

    num_layers: int
    k: int
    fraction: float
    rule: str


class GroundTruthSection(TypedDict):
    """``report["ground_truth"]``: single-layer skip cost (the ground truth) and the oracle set."""

    definition: str
    num_samples: int
    num_tokens: int
    base_loss: float
    delta: list[float]
    importance_rank: list[int]
    k: int
    oracle_removed: list[int]
    oracle_cost: float
    seconds: float | None


class CostEntry(TypedDict):
    """``rows[row]["ground_truth_cost"]``: what the removed set costs by the ground truth."""

    cost: float  # sum of the removed layers' single-layer skip costs (nats/token)
    oracle_cost: float  # the same for the k cheapest layers
    excess: float  # cost - oracle_cost (>= 0)
    overlap_with_oracle: int
    spearman_with_ground_truth: float | None  # None for metrics without a per-layer score
    spearman_ci: list[float] | None  # its 95 % interval over the layers (schema 2.3; Fisher z)
    p_value: float | None
    joint_loss: float | None  # calibration loss with the whole set removed at once
    joint_loss_increase: float | None


class RetentionBlock(TypedDict):
    """Retention of one model against a reference: the harness's per-task entries and the mean."""

    retention: dict  # {task: {"metric", "original", "pruned", "retention_pct", "ci", ...}}
    mean_retention: dict  # {"mean_pct", "ci", "tasks_used", "rule", ...}


class RowHealing(TypedDict):
    """``rows[row]["healing"]``: the pruned copy healed and evaluated again."""

    train: dict  # eavss.training.heal.heal summary
    evaluation: dict
    vs_original: RetentionBlock
    vs_healed_unpruned: RetentionBlock  # what removal cost, with healing's own effect divided out


class Row(TypedDict, total=False):
    """``report["rows"][row]``: one metric (one seed of a seeded metric)."""

    metric: str
    seed: int | None
    removed: list[int]
    removed_paths: list[str]
    score: list[float] | None  # (L,) higher = more important; None for selection rules and baselines
    seconds: float  # stand-alone cost of choosing the layers (shared passes included)
    shared_passes: list[str]
    details: dict
    ground_truth_cost: CostEntry
    params_before: int
    params_after: int
    params_kept_pct: float
    evaluation: dict  # per-task results of the pruned model (descriptions left out)
    retention: dict
    mean_retention: dict
    healing: RowHealing
    same_layers_as: str  # present when an earlier row removes the same layers (evaluated once, shared)


class AgreementSection(TypedDict):
    """``report["agreement"]``: pairwise Spearman of the per-layer scores; overlap of removed sets."""

    scored: list[str]
    spearman: list[list[float | None]]
    p_value: list[list[float | None]]
    rows: list[str]
    removed_overlap: list[list[int]]


class PairedSection(TypedDict, total=False):
    """``report["paired"]``: :func:`eavss.recipes.compare_eval.paired_rows` before healing
    (``before``) and, with ``--heal``, against the healed unpruned model
    (``healed_vs_healed_unpruned``): ``{"best", "random_rows", "block", "rows": {row: {"vs_best",
    "vs_random_mean"}}}``, each ``{"diff", "ci", "resamples"}`` in percentage points."""

    before: dict | None
    healed_vs_healed_unpruned: dict | None


class HealingSection(TypedDict, total=False):
    """``report["healing"]`` (``--heal``): the healing text and the unpruned control."""

    text: dict  # dataset, source, disjoint_from_evaluation, why, train/held-out sequences and tokens
    note: str
    unpruned: dict  # {"train", "evaluation", "vs_original": RetentionBlock}


def _pct(entry: dict | None) -> str:
    """``retention [lo, hi]`` of a retention entry or mean."""
    if not entry:
        return "–"
    v = entry.get("retention_pct", entry.get("mean_pct"))
    ci = entry.get("ci")
    s = "–" if v is None else f"{v:.1f}"
    if ci and ci[0] is not None and ci[1] is not None:
        s += f" [{ci[0]:.1f}, {ci[1]:.1f}]"
    if entry.get("near_chance"):
        s += " (original near chance)"
    return s


def _label(row: str, r: dict) -> str:
    """A row's name, with the row it shares its removed layers (and so its evaluation) with."""
    return f"{row} (same layers as {r['same_layers_as']})" if r.get("same_layers_as") else row


def selection_table(report: dict) -> str:
    """Markdown: which layers each metric removes and what the set costs by the ground truth."""
    gt = report["ground_truth"]
    lines = ["| metric | removed (0-based) | skip cost of the set | excess over oracle | overlap with oracle | "
             "joint Δloss | Spearman with ground truth | scoring s | parameters kept |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row, r in report["rows"].items():
        c = r["ground_truth_cost"]
        lines.append(f"| {_label(row, r)} | {r['removed']} | {_fmt(c['cost'], 3)} | {_fmt(c['excess'], 3)} | "
                     f"{c['overlap_with_oracle']} / {gt['k']} | {_fmt(c.get('joint_loss_increase'), 3)} | "
                     f"{_fmt(c.get('spearman_with_ground_truth'), 2)}{_ci(c.get('spearman_ci'))} | {r['seconds']:.2f} | "
                     f"{_fmt(r.get('params_kept_pct'), 1)}% |")
    lines.append(f"| *oracle (k cheapest)* | {gt['oracle_removed']} | {_fmt(gt['oracle_cost'], 3)} | 0 | "
                 f"{gt['k']} / {gt['k']} | | | | |")
    return "\n".join(lines) + "\n"


def retention_table(rows: dict, tasks: list[str], block: str | None = None, extra_rows: dict | None = None) -> str:
    """Markdown: retention % [CI] per row and task, and the mean. ``block`` picks a nested retention
    block of each row (``("healing", "vs_healed_unpruned")`` as ``"healing.vs_healed_unpruned"``)."""
    lines = ["| metric | " + " | ".join(tasks) + " | mean |", "|---|" + "---|" * (len(tasks) + 1)]
    items = list((extra_rows or {}).items()) + list(rows.items())
    for row, r in items:
        b = r
        for part in (block.split(".") if block else []):
            b = (b or {}).get(part)
        if not b:
            continue
        ret = b.get("retention", {})
        cells = [_pct(ret.get(t)) for t in tasks]
        lines.append(f"| {_label(row, r)} | " + " | ".join(cells) + f" | {_pct(b.get('mean_retention'))} |")
    return "\n".join(lines) + "\n"


def original_table(original: dict) -> str:
    """Markdown: the original model's primary metric per task."""
    lines = ["| task | metric | original [95 % CI] | items |", "|---|---|---|---|"]
    for task, r in original.items():
        m = r.get("primary_metric")
        ci = (r.get("ci") or {}).get(m)
        ci_s = f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci and ci[0] is not None else ""
        lines.append(f"| {task} | {m} | {_fmt((r.get('metrics') or {}).get(m))}{ci_s} | {_fmt(r.get('n_samples'))} |")
    return "\n".join(lines) + "\n"


def agreement_table(agree: dict) -> str:
    """Markdown: Spearman between every two metrics' per-layer scores."""
    names = agree["scored"]
    if len(names) < 2:
        return "(fewer than two metrics with a per-layer score)\n"
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, a in enumerate(names):
        lines.append(f"| {a} | " + " | ".join(_fmt(v, 2) for v in agree["spearman"][i]) + " |")
    return "\n".join(lines) + "\n"


def _diff(e: dict | None) -> str:
    """``diff [lo, hi]`` of a paired difference (percentage points)."""
    if not e or e.get("diff") is None:
        return "–"
    out = f"{e['diff']:+.1f}"
    if e.get("ci"):
        out += f" [{e['ci'][0]:+.1f}, {e['ci'][1]:+.1f}]"
    return out


def paired_table(paired: dict | None) -> str:
    """Markdown: each row's mean retention minus the best row's and minus the random seeds' mean,
    in percentage points with the paired bootstrap interval (same items, same resamples)."""
    if not paired:
        return "(no mean retention to compare)\n"
    lines = [f"| metric | minus the best ({paired['best']}) | minus the random mean ({', '.join(paired['random_rows']) or 'no random rows'}) |",
             "|---|---|---|"]
    for row, e in paired["rows"].items():
        lines.append(f"| {_label(row, e)} | {_diff(e['vs_best'])} | {_diff(e['vs_random_mean'])} |")
    return "\n".join(lines) + "\n"


def paired_section(report: dict) -> list[str]:
    """Markdown of ``report["paired"]``: before healing and, with healing, against the healed unpruned model."""
    p = report.get("paired") or {}
    if not p:
        return []
    out = ["## Is one metric's choice better than another's? (paired differences)\n",
           "Mean retention of a row minus another's, percentage points; 95 % paired bootstrap interval: every "
           "model is scored on the same items, and each bootstrap resample draws the same items for every row, so "
           "the difference is resampled as a whole. An interval that excludes 0 separates the two rows. The random "
           "mean is the mean of these seeds' rows: its interval is over items for these seeds, not over other random "
           "choices of layers (the spread between seeds is in the random line above).\n",
           "Before healing (against the original):\n", paired_table(p.get("before"))]
    if p.get("healed_vs_healed_unpruned"):
        out += ["Healed, against the healed unpruned model:\n", paired_table(p["healed_vs_healed_unpruned"])]
    return out


def random_lines(report: dict) -> list[str]:
    """One line per seeded metric: mean (min-max) over seeds."""
    out = []
    for metric, s in (report.get("random") or {}).items():
        m = s["mean_retention"]
        out.append(f"- `{metric}` over seeds {s['seeds']}: mean retention {_fmt(m['mean'], 1)}% "
                   f"(min {_fmt(m['min'], 1)}, max {_fmt(m['max'], 1)}); skip cost of the set "
                   f"{_fmt(s['ground_truth_cost']['mean'], 3)} on average")
    return out


def healing_section(report: dict, tasks: list[str]) -> list[str]:
    """Markdown of the healing tables (``--heal``)."""
    h = report.get("healing")
    if not h:
        return []
    t = h["text"]
    un = h["unpruned"]
    tr = un["train"]
    out = ["## Healing\n",
           f"{h['note']}.\n",
           f"- healing text: {t['source']} — {t['why']}; {t.get('train_sequences')} training sequences "
           f"({t.get('train_tokens')} tokens in all, {t.get('packing')}), {t.get('held_out_sequences')} held out",
           f"- budget (the same for every model): {tr['method']} on layers "
           f"{'all' if report['config']['heal']['layers'] is None else report['config']['heal']['layers']}, "
           f"{tr['steps']} steps × {tr['grad_accum']} micro-batches, lr {tr['lr']}, {tr['dtype']}, seed {tr['seed']}",
           "",
           "**Control: the unpruned model healed with the same budget**, against the original (what healing alone "
           "does, in domain and out of it):\n",
           retention_table({}, tasks, None, {"unpruned, healed": un["vs_original"]}),
           "**Healed pruned models against the healed unpruned model** (what removal cost once both are healed):\n",
           retention_table(report["rows"], tasks, "healing.vs_healed_unpruned"),
           "**Healed pruned models against the original**:\n",
           retention_table(report["rows"], tasks, "healing.vs_original"),
           "**Before healing** (pruned against the original, from the retention table above), mean: " +
           ", ".join(f"{row} {_pct(r.get('mean_retention'))}" for row, r in report["rows"].items()) + "\n"]
    held = [(row, r["healing"]["train"]) for row, r in report["rows"].items() if r.get("healing")]
    if held and held[0][1].get("loss_before") is not None:
        out.append("Held-out loss of the healing text (nats/token), before -> after: unpruned "
                   f"{_fmt(tr.get('loss_before'), 3)} -> {_fmt(tr.get('loss_after'), 3)}; " +
                   "; ".join(f"{row} {_fmt(s['loss_before'], 3)} -> {_fmt(s['loss_after'], 3)}" for row, s in held) + "\n")
    return out


def render_markdown(report: dict) -> str:
    """The ``report.md`` text of a ``compare`` report."""
    s, gt, ev = report["settings"], report["ground_truth"], report["evaluation"]
    cal = report.get("calibration") or {}
    tasks = list(ev["tasks"])
    out = ["# eavss compare report: which layers can go\n"]
    out += header_lines(report)
    out.append(f"- every metric removes k = floor({s['fraction']} · {s['num_layers']}) = **{s['k']}** layers")
    out.append(f"- calibration (statistics, angular): {cal.get('dataset')} ({cal.get('packing')}), "
               f"{cal.get('num_samples')} sequences, {cal.get('num_tokens')} tokens; ground truth, layer_ppl, sleb, "
               f"joint loss: the first {gt['num_samples']} sequences ({gt['num_tokens']} targets), base loss "
               f"{_fmt(gt['base_loss'], 4)} nats/token")
    out.append(f"- evaluation: tasks {tasks}, limits `{ev.get('limits')}`, the same items for every model")
    out.append("")
    out.append("## Which layers each metric removes\n")
    out.append("Skip cost of the set = sum of its layers' single-layer skip costs (the ground truth, nats/token; "
               "first-order: costs do not add up exactly); oracle = the k cheapest layers; joint Δloss = calibration "
               "loss with the whole set removed at once minus the full model's; scoring s = stand-alone cost of "
               "choosing the layers (shared passes included).\n")
    out.append(selection_table(report))
    out.append("## Retention (pruned / original, %)\n")
    out.append("Per task: retention % [CI when the harness gives one]; higher-is-better metrics pruned/original, "
               "perplexities original/pruned. Mean: " +
               (next(iter(report["rows"].values()))["mean_retention"].get("rule", "") if report["rows"] else "") + ".\n")
    out.append(retention_table(report["rows"], tasks))
    out += random_lines(report)
    out.append("\nOriginal model:\n")
    out.append(original_table(ev["original"]))
    out.append("## Do the metrics agree? (Spearman between per-layer scores)\n")
    out.append(agreement_table(report["agreement"]))
    out += healing_section(report, tasks)
    out += paired_section(report)
    out.append("## Metrics\n")
    for m, meta in report.get("metrics", {}).items():
        out.append(f"- `{m}` ({meta.get('needs')}; {meta.get('direction')}): {meta.get('help')}")
    out.append("")
    t = report.get("timings")
    if t:
        out.append("## Timings (seconds)\n")
        out.append(timings_table(t))
    return "\n".join(out) + "\n"


def summary_lines(report: dict) -> list[str]:
    """What the terminal shows after a run: the selection and retention tables."""
    tasks = list(report["evaluation"]["tasks"])
    lines = [f"k = {report['settings']['k']} of {report['settings']['num_layers']} layers removed by every metric",
             selection_table(report), retention_table(report["rows"], tasks)]
    if report.get("healing"):
        lines += ["healed, against the healed unpruned model:",
                  retention_table(report["rows"], tasks, "healing.vs_healed_unpruned")]
    return lines


def plot_compare(report: dict, path: str | os.PathLike) -> None:
    """``compare.png``: retention per metric and task (bars with their 95 % intervals; healed against
    the healed unpruned model in a second panel with ``--heal``) and a heat map of every metric's per-layer importance
    rank with its removed layers marked. Written atomically."""
    plt = pyplot()
    rows = report["rows"]
    names = list(rows)
    tasks = list(report["evaluation"]["tasks"])
    L = report["settings"]["num_layers"]
    healed = bool(report.get("healing"))
    n_panels = 3 if healed else 2
    fig, axes = plt.subplots(n_panels, 1, figsize=(max(8, 0.6 * len(names) * max(1, len(tasks)) / 2 + 3, 0.35 * L + 3),
                                                   4 * n_panels))
    x = np.arange(len(names))
    width = 0.8 / max(1, len(tasks) + 1)

    def bars(ax, block: str | None, title: str):
        for j, t in enumerate(tasks + ["mean"]):
            vals, err = [], []
            for r in names:
                b = rows[r]
                for part in (block.split(".") if block else []):
                    b = (b or {}).get(part) or {}
                e = (b.get("mean_retention") or {}) if t == "mean" else ((b.get("retention") or {}).get(t) or {})
                v = e.get("mean_pct" if t == "mean" else "retention_pct")
                ci = e.get("ci")
                vals.append(np.nan if v is None else v)
                ok = v is not None and ci and len(ci) == 2 and None not in ci
                err.append([max(0.0, v - ci[0]), max(0.0, ci[1] - v)] if ok else [np.nan, np.nan])
            ax.bar(x + (j - len(tasks) / 2) * width, vals, width, label=t, yerr=np.asarray(err, dtype=float).T,
                   error_kw={"elinewidth": 0.8, "capsize": 2}, color="black" if t == "mean" else None, alpha=0.8)
        ax.axhline(100, color="grey", lw=0.8, ls="--")
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("retention %")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, ncol=min(6, len(tasks) + 1))

    bars(axes[0], None, f"retention after removing k = {report['settings']['k']} of {L} layers (pruned / original)")
    if healed:
        bars(axes[1], "healing.vs_healed_unpruned", "healed pruned / healed unpruned (same healing budget)")
    ax = axes[-1]
    ranks = np.full((len(names), L), np.nan)
    for i, r in enumerate(names):
        sc = rows[r].get("score")
        if sc is not None:
            s = np.asarray([np.nan if v is None else v for v in sc], dtype=np.float64)
            order = np.argsort(-s, kind="stable")
            ranks[i, order] = np.arange(1, L + 1)
    cmap = plt.get_cmap("viridis_r").with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(ranks), aspect="auto", cmap=cmap, vmin=1, vmax=L)
    for i, r in enumerate(names):
        for layer in rows[r]["removed"]:
            ax.text(layer, i, "x", ha="center", va="center", color="red", fontsize=8, fontweight="bold")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xticks(range(L))
    ax.set_xticklabels(range(L), fontsize=7)
    ax.set_xlabel("layer (x = removed; grey = no per-layer score)")
    ax.set_title("importance rank per layer (1 = most important)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03, label="rank")
    fig.suptitle(f"eavss compare: {(report.get('model') or {}).get('model_id')}", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
