"""Human-readable outputs of ``eavss hallucination``: ``report.md``, ``eavss.png``, ``separability.png``,
and the typed sections of its report."""

from __future__ import annotations

import os
from typing import TypedDict

from eavss.scores.hallucination import HSAV_METHODS, HSS_METHODS, EavssOptions
from eavss.report.common import format_ci, format_number, header_lines, pyplot, save_figure, timings_table


class SourceSummary(TypedDict, total=False):
    """``report["sources"][name]``: the labelled answers of one source."""

    kind: str
    questions: int
    samples: int
    truthful: int
    hallucinated: int
    excluded: int
    format_failures: int
    hallucination_rate: float | None
    format_failure_rate: float | None
    mean_answer_tokens: dict
    judge_details: dict
    stop_reasons: dict
    length_match: dict


class EavssSection(TypedDict):
    """``report["eavss"]``: definitions, ranking (by ``rank_by``; ``ranking_effect``/``top_k_effect``:
    by raw EAVSS), per-layer table, per-source effects, resampling."""

    definitions: dict
    options: dict
    rank_by: str
    ranking: list[int]
    top_k: list[int]
    ranking_effect: list[int]
    top_k_effect: list[int]
    k: int
    per_layer: list[dict]
    per_source: dict
    degenerate: dict
    bootstrap: dict
    permutation: dict
    variants: dict


class AgreementSection(TypedDict, total=False):
    """``report["agreement"]``: EAVSS against the probe AUROC (:func:`eavss.scores.agreement.rank_agreement`
    plus the reader's warning and the agreement with the pooled AUROC)."""

    spearman: float | None
    spearman_ci: list[float]  # 95 % over the layers (schema 2.3)
    p_value: float | None
    top_k_overlap: int
    top_k_chance: float
    top_k_score: list[int]
    top_k_reference: list[int]
    verdict: str
    warning: str | None
    pooled_auroc: dict
    ranked_by: str


class BaselinesSection(TypedDict, total=False):
    """``report["baselines"]``: out-of-fold AUROC of surface features with the probe's folds
    (:func:`eavss.hallucination.baselines.surface_baselines`) and the comparison with the probe."""

    auroc: dict
    auroc_pooled: dict
    auroc_by_source: dict
    sources_used: list[str]
    best: str
    features: dict
    folds: int
    first_tokens: int
    C: float
    mean_tokens: dict
    seconds: float
    protocol: str
    comparison: dict | None


def definitions(opts: EavssOptions) -> dict:
    """The formulas in force, in words, for the report."""
    pool = {"stratified": "per source, signed effect e_s; HSAV = |sum_s w_s e_s| / sum_s w_s with w_s = n_h n_t / (n_h + n_t)",
            "stratified_abs": "per source, signed effect e_s; HSAV = sum_s w_s |e_s| / sum_s w_s",
            "pooled": "all sources in one pool; HSAV = |e|"}[opts.pooling]
    comb = {"mean": "EAVSS = (HSAV_norm + HSS_norm) / 2", "product": "EAVSS = HSAV_norm * HSS_norm",
            "geometric": "EAVSS = sqrt(HSAV_norm * HSS_norm)", "hsav_only": "EAVSS = HSAV_norm",
            "hss_only": "EAVSS = HSS_norm"}[opts.combine]
    return {
        "hsav": f"{opts.hsav}: {HSAV_METHODS.entry(opts.hsav).help}",
        "hss": f"{opts.hss}: {HSS_METHODS.entry(opts.hss).help}",
        "pooling": f"{opts.pooling}: {pool} (same for HSS)",
        "normalisation": f"{opts.normalisation}: x / {'sum' if opts.normalisation == 'sum' else 'max'} over layers",
        "eavss": comb + (" * AVSS_norm" if opts.with_avss else "") + f", renormalised ({opts.normalisation})",
        "rank": "1 = most hallucination-prone (highest EAVSS); ties: lower layer first",
        "rank_z": "1 = most hallucination-prone by the permutation z of EAVSS, (EAVSS - null mean) / null SD over "
                  "label permutations; ties: lower layer first",
        "variance": opts.variance,
        "min_per_class": opts.min_per_class,
    }


def warnings(report: dict) -> list[str]:
    """Sentences the reader must see (weak agreement, noise-level differences, small classes...)."""
    out = []
    ag = report.get("agreement") or {}
    if ag.get("warning"):
        out.append(ag["warning"])
    ev = report["eavss"]
    perm = ev.get("permutation") or {}
    for key, name in (("p_max_hsav", "variance (HSAV)"), ("p_max_hss", "sparsity (HSS)")):
        p = perm.get(key)
        if p is not None and p > 0.05:
            out.append(f"The largest per-layer {name} difference is within label-permutation noise "
                       f"(family-wise p = {p:.2f}); its ranking reflects noise as much as signal. (This tests the "
                       f"{name.split(' ')[0]} component alone; the top-k table's p-values test each layer's EAVSS, "
                       "which combines both components, so the two can disagree.)")
    for src, d in ev.get("per_source", {}).items():
        if d["weight"] == 0:
            out.append(f"Source {src} has too few answers in a class (truthful {d['n_truthful']:.0f}, hallucinated "
                       f"{d['n_hallucinated']:.0f}; scores.min_per_class = {report['config']['scores']['min_per_class']}) "
                       "and does not enter HSAV/HSS.")
        elif min(d["n_truthful"], d["n_hallucinated"]) < 30:
            out.append(f"Source {src} has only {min(d['n_truthful'], d['n_hallucinated']):.0f} answers in its smaller "
                       "class; its contribution is noisy.")
    unstable = [r["layer"] for r in ev["per_layer"] if r.get("top_k") and r.get("p_top_k") is not None and r["p_top_k"] < 0.5]
    if unstable:
        out.append(f"Top-k layers {unstable} are in the top {ev['k']} in fewer than half of the bootstrap resamples.")
    rows = {r["layer"]: r for r in ev["per_layer"]}
    top_p = [(i, rows[i].get("p_eavss")) for i in ev["top_k"] if rows[i].get("p_eavss") is not None]
    weak = [i for i, p in top_p if p > 0.05]
    if weak:
        out.append(f"Top-{ev['k']} layers {weak} are not significant on their own (permutation p of EAVSS > 0.05): "
                   "their EAVSS is within what shuffled labels give.")
    n_perm = perm.get("permutations") or 0
    sc_cfg = (report.get("config") or {}).get("scores") or {}
    if not sc_cfg.get("permutations") and not sc_cfg.get("bootstrap"):
        out.append("No noise estimate: scores.permutations and scores.bootstrap are both 0, so nothing in this report "
                   "says whether the top-k layers differ from what shuffled labels or resampled questions give.")
    if ev.get("rank_by") == "z" and n_perm < 50:
        out.append(f"The z ranking rests on {n_perm} label permutations; the null SD (and so z) is coarse below ~50.")
    bl = report.get("baselines") or {}
    comp = bl.get("comparison") or {}
    if comp.get("warning"):
        out.append(comp["warning"])
    for src, d in report.get("sources", {}).items():
        lm = d.get("length_match") or {}
        after = lm.get("mean_tokens_after") or {}
        if len(after) == 2 and min(after.values()) > 0 and max(after.values()) / min(after.values()) > 1.5:
            out.append(f"Teacher-forced source {src}: its truthful and hallucinated answers differ in length "
                       f"({after.get('truthful', 0):.1f} vs {after.get('hallucinated', 0):.1f} tokens after "
                       f"teacher_forced.match={lm.get('match')}); class differences there are partly length differences.")
    deg = [k for k, v in (ev.get("degenerate") or {}).items() if v]
    if deg:
        out.append(f"{', '.join(deg)} is zero on every layer (no class difference at all); its normalised value is uniform.")
    return out


def _f(x, nd=3) -> str:
    return format_number(x, nd=nd, exp_digits=2)


def source_table(report: dict) -> str:
    """Markdown table: samples, classes and hallucination rate per source."""
    lines = ["| source | kind | questions | samples | truthful | hallucinated | format failures | excluded (empty) | "
             "hallucination rate | judge details |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for src, d in report["sources"].items():
        rate = d.get("hallucination_rate")
        if rate is not None:
            rate_s = f"**{100 * rate:.1f}%**"
        else:
            rate_s = "– (pairs, 50% by construction)" if d["kind"] == "teacher_forced" else "– (no judged answer)"
        if d.get("format_failure_rate"):
            rate_s += f" ({100 * d['format_failure_rate']:.1f}% format failures)"
        det = ", ".join(f"{k} {v}" for k, v in sorted((d.get("judge_details") or {}).items()))
        lines.append(f"| {src} | {d['kind']} | {d['questions']} | {d['samples']} | {d['truthful']} | {d['hallucinated']} | "
                     f"{d.get('format_failures', 0)} | {d['excluded']} | {rate_s} | {det or '–'} |")
    return "\n".join(lines) + "\n"


def layer_table(report: dict) -> str:
    """Markdown per-layer table."""
    ev = report["eavss"]
    cols = [("layer", "layer"), ("variance_truthful", "var_t"), ("variance_hallucinated", "var_h"),
            ("hsav_signed", "HSAV±"), ("p_hsav", "p"), ("sparsity_truthful", "spars_t"),
            ("sparsity_hallucinated", "spars_h"), ("hss_signed", "HSS±"), ("p_hss", "p"), ("hsav_norm", "HSAV_n"),
            ("hss_norm", "HSS_n"), ("eavss", "EAVSS"), ("eavss_ci", "95% CI"), ("eavss_z", "z"), ("p_eavss", "p"),
            ("p_eavss_fwer", "p (FWER)"), ("rank", "rank"), ("rank_effect", "rank (effect)"),
            ("p_top_k", f"P(top-{ev['k']})"), ("probe_auroc", "probe AUROC")]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in ev["per_layer"]:
        cells = []
        for k, _ in cols:
            if k == "eavss_ci":
                cells.append(f"{_f(r.get('eavss_lo'))}–{_f(r.get('eavss_hi'))}" if r.get("eavss_lo") is not None else "–")
            elif k == "rank":
                cells.append(f"**{r['rank']}**" if r.get("top_k") else str(r["rank"]))
            elif k in ("p_top_k", "eavss_z"):
                cells.append(_f(r.get(k), 2))
            else:
                cells.append(_f(r.get(k)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def baselines_lines(report: dict) -> list[str]:
    """report.md lines: the probe's best layer next to the surface baselines, per source."""
    bl = report.get("baselines")
    if not bl:
        return []
    pr = report.get("probe") or {}
    srcs = list(bl["sources_used"])
    out = [f"**Surface baselines** (what answer form alone gives; {bl['protocol']}):\n",
           "| model | within-source mean | pooled | " + " | ".join(srcs) + " |",
           "|---|---|---|" + "---|" * len(srcs)]
    if pr:
        au = pr["auroc"]
        best = max(range(len(au)), key=lambda i: au[i])
        cells = [_f(pr["auroc_by_source"][s][best], 3) if s in pr["auroc_by_source"] else "–" for s in srcs]
        out.append(f"| probe, best layer ({best}) | **{au[best]:.3f}** | {pr['auroc_pooled'][best]:.3f} | " + " | ".join(cells) + " |")
    for name, desc in bl["features"].items():
        cells = [_f(bl["auroc_by_source"][name].get(s), 3) for s in srcs]
        out.append(f"| {name}: {desc} | **{bl['auroc'][name]:.3f}** | {bl['auroc_pooled'][name]:.3f} | " + " | ".join(cells) + " |")
    comp = bl.get("comparison")
    out.append("")
    if comp:
        verdict = (f"beats the best baseline ({comp['baseline']}, {comp['baseline_auroc']:.3f}) by {comp['gap']:.3f}"
                   if comp["beats"] else
                   f"does **not** beat the best baseline ({comp['baseline']}, {comp['baseline_auroc']:.3f}) by the margin "
                   f"{comp['margin']:g} (gap {comp['gap']:.3f})")
        out.append(f"The best probe layer {verdict}. (The probe's best layer is chosen after the fact, which favours it.)\n")
    return out


def render_markdown(report: dict) -> str:
    """The ``report.md`` text."""
    ev = report["eavss"]
    cfg = report["config"]
    smp = report["samples"]
    out = ["# eavss hallucination report\n"]
    out += header_lines(report)
    out.append(f"- sources: {', '.join(report['sources'])}; {smp['labelled']} labelled answers "
               f"({smp['truthful']} truthful, {smp['hallucinated']} hallucinated) of {smp['total']} samples; seed {report['seed']}")
    st = report["statistics"]
    ct = smp.get("counted_tokens_by_class", {})
    out.append(f"- statistics: site `{st['site']}`, variance `{st['variance_definition']}`, sparsity "
               f"`{st['sparsity_rule'].get('rule')}`, answer tokens only ({st.get('answer_tokens_counted', 'all')} of each "
               f"answer; question and few-shot prefix as context): {ct.get('truthful')} truthful and "
               f"{ct.get('hallucinated')} hallucinated tokens")
    d = ev["definitions"]
    out.append(f"- HSAV: {d['hsav']}")
    out.append(f"- HSS: {d['hss']}")
    out.append(f"- pooling over sources: {d['pooling']}")
    out.append(f"- {d['eavss']}; rank: {d['rank_z'] if ev.get('rank_by') == 'z' else d['rank']}")
    out.append(f"- total time: {report['timings'].get('total', report['timings'].get('total_before_write', 0)):.0f} s\n")
    if report.get("warnings"):
        out.append("## Warnings\n")
        out += [f"- **{w}**" for w in report["warnings"]]
        out.append("")
    out.append("## Hallucination rate per source\n")
    out.append(source_table(report))
    out.append("Generated answers: wrong = hallucinated, right = truthful (judge below); an answer of the wrong form "
               "(SciQ: names none of the options) is a format failure and is not scored (judge.format_failure); "
               "teacher-forced sources give one truthful and one hallucinated reference answer per question.\n")
    lm_rows = [(src, d["length_match"]) for src, d in report["sources"].items() if d.get("length_match")]
    if lm_rows:
        out.append("Teacher-forced answer lengths (tokens, mean; before = incorrect answers in file order, after = "
                   "teacher_forced.match):\n")
        out.append("| source | match | incorrect answers per question | questions changed | truthful before | "
                   "hallucinated before | \\|pair difference\\| before | truthful after | hallucinated after | "
                   "\\|pair difference\\| after |\n|---|---|---|---|---|---|---|---|---|---|")
        for src, lm in lm_rows:
            b, a = lm.get("mean_tokens_before", {}), lm.get("mean_tokens_after", {})
            out.append(f"| {src} | {lm['match']} | {lm['candidates_per_question']:.1f} | {lm['questions_changed']} | "
                       f"{_f(b.get('truthful'), 1)} | {_f(b.get('hallucinated'), 1)} | "
                       f"{_f(lm.get('mean_abs_pair_difference_before'), 1)} | {_f(a.get('truthful'), 1)} | "
                       f"{_f(a.get('hallucinated'), 1)} | {_f(lm.get('mean_abs_pair_difference_after'), 1)} |")
        out.append("")
    out.append("## EAVSS ranking\n")
    rows = {r["layer"]: r for r in ev["per_layer"]}
    by = ev.get("rank_by", "effect")
    by_text = ("permutation z of EAVSS (noise-calibrated)" if by == "z" else "raw EAVSS (effect size)")
    out.append(f"**Top-{ev['k']} hallucination-prone layers (ranked by {by_text}): {ev['top_k']}**\n")
    if any(rows[i].get("p_eavss") is not None for i in ev["top_k"]):
        out.append("| rank | layer | EAVSS | z | p | p (FWER) | significant (p ≤ 0.05) |\n|---|---|---|---|---|---|---|")
        for i in ev["top_k"]:
            r = rows[i]
            sig = "yes" if (r.get("p_eavss") or 1) <= 0.05 else "**no**"
            out.append(f"| {r['rank']} | {i} | {_f(r['eavss'])} | {_f(r.get('eavss_z'), 2)} | {_f(r.get('p_eavss'))} | "
                       f"{_f(r.get('p_eavss_fwer'))} | {sig} |")
        out.append("")
    out.append(f"Full ranking (most to least hallucination-prone): {ev['ranking']}\n")
    if by == "z" and ev.get("ranking_effect"):
        out.append(f"By raw EAVSS (scores.rank_by=effect) the top-{ev['k']} would be {ev['top_k_effect']}.\n")
    perm = ev.get("permutation") or {}
    if perm:
        out.append(f"Label-permutation test ({perm.get('permutations')} permutations): family-wise p for 'some layer's "
                   f"variance differs' = {_f(perm.get('p_max_hsav'))}, for sparsity = {_f(perm.get('p_max_hss'))}.\n")
    ag = report.get("agreement")
    out.append("## Does the ranking agree with separability?\n")
    if ag:
        stat = "the EAVSS z" if ag.get("ranked_by") == "z" else "EAVSS"
        out.append(f"Spearman rank correlation over layers between {stat} (the ranking statistic) and the probe AUROC "
                   f"(mean within-source): "
                   f"**rho = {_f(ag['spearman'], 2)}**{format_ci(ag.get('spearman_ci'))} (p = {_f(ag['p_value'], 3)}) -- "
                   f"**{ag['verdict']}**. "
                   f"Top-{ev['k']} overlap: {ag['top_k_overlap']} (chance {ag['top_k_chance']:.1f}); probe top-{ev['k']}: "
                   f"{ag['top_k_reference']}.")
        pa = ag.get("pooled_auroc") or {}
        out.append(f"Against the pooled AUROC (all sources together): rho = {_f(pa.get('spearman'), 2)} "
                   f"(p = {_f(pa.get('p_value'), 3)}).\n")
        pr = report["probe"]
        au = pr["auroc"]
        best = max(range(len(au)), key=lambda i: au[i])
        out.append(f"Probe: {pr['protocol']}. n = {pr['n']} ({pr['n_hallucinated']} hallucinated); best layer {best} "
                   f"(AUROC {au[best]:.3f}); sources in the within-source mean: {pr['sources_used']}.\n")
        out += baselines_lines(report)
        va = report.get("agreement_variants") or {}
        if va:
            out.append("Other definitions (each changes one option of the default) against the same probe AUROC:\n")
            out.append("| definition | Spearman rho | p | top-k overlap | top-k |\n|---|---|---|---|---|")
            for name, v in va.items():
                out.append(f"| {name} | {_f(v['spearman'], 2)} | {_f(v['p_value'], 3)} | {v['top_k_overlap']} | {v['top_k']} |")
            out.append("")
    else:
        out.append("Probes were disabled (probe.enabled=false).\n")
        out += baselines_lines(report)
    out.append("## Per-layer table\n")
    out.append("var/spars: class variance and sparsity of answer tokens; HSAV± / HSS±: pooled signed effects (> 0: larger "
               "on hallucinated answers) with label-permutation p; _n: normalised across layers; CI and P(top-k): "
               "question-level bootstrap.\n")
    out.append(layer_table(report))
    out.append("## Per source\n")
    out.append("Do the sources agree? Per source: its weight in the stratified pooling, the 5 layers with the largest "
               "|per-source effect| and the sign of the variance effect on most layers, and where its probe separates best.\n")
    out.append("| source | truthful | hallucinated | weight w_s | top-5 \\|HSAV effect\\| | HSAV sign (layers >0 / <0) | "
               "top-5 \\|HSS effect\\| | probe best layer (AUROC) |\n|---|---|---|---|---|---|---|---|")
    by_src = (report.get("probe") or {}).get("auroc_by_source") or {}
    for src, dd in ev["per_source"].items():
        hv = [abs(x) for x in dd["hsav_effect"]]
        hs = [abs(x) for x in dd["hss_effect"]]
        top_v = sorted(range(len(hv)), key=lambda i: -hv[i])[:5] if dd["weight"] else "–"
        top_s = sorted(range(len(hs)), key=lambda i: -hs[i])[:5] if dd["weight"] else "–"
        pos = sum(x > 0 for x in dd["hsav_effect"])
        neg = sum(x < 0 for x in dd["hsav_effect"])
        au = by_src.get(src)
        best = f"{max(range(len(au)), key=lambda i: au[i])} ({max(au):.3f})" if au else "–"
        out.append(f"| {src} | {dd['n_truthful']:.0f} | {dd['n_hallucinated']:.0f} | {dd['weight']:.1f} | {top_v} | "
                   f"{pos} / {neg} | {top_s} | {best} |")
    out.append("")
    out.append("## Prompts, stop rule and judge\n")
    pr = report["prompts"]
    out.append(f"- format: {pr['format']}")
    out.append(f"- question: `{pr['question_template']!r}`; options: `{pr['options_template']!r}` ({pr['options_note']}); "
               f"answer: `{pr['answer_template']!r}` ({pr['answer_note']})")
    out.append(f"- stop rule: {pr['stop_rule']}")
    j = report["judge"]
    out.append(f"- judge normalisation: {j['normalisation']}")
    out.append(f"- judge rule ({j['match']}): {j['rule']}")
    out.append(f"- SciQ ({j['sciq']}): {j['sciq_rule']}")
    out.append(f"- labels: {j['label']}")
    for name, text in pr["prefixes"].items():
        out.append(f"\nprefix `{name}`:\n\n```\n{text}```")
    out.append("")
    out.append("## Splits\n")
    sp = report["splits"]
    out.append(f"`splits.json`: {sp['rule']} (fractions {sp['fractions']}, seed {sp['seed']}).\n")
    out.append("| source | score | train | eval | used here |\n|---|---|---|---|---|")
    for src, c in sp["counts"].items():
        out.append(f"| {src} | {c['score']} | {c['train']} | {c['eval']} | {c['used_here']} |")
    out.append("")
    out.append("## Timings (seconds)\n")
    out.append(timings_table(report["timings"]))
    out.append(f"\nConfiguration: `eavss hallucination --config` with the `config` section of report.json reproduces "
               f"this run (limits {cfg['limits']}).")
    return "\n".join(out) + "\n"


def summary(report: dict) -> list[str]:
    """Short terminal summary."""
    lines = []
    rates = ", ".join(f"{s} {100 * d['hallucination_rate']:.0f}%" for s, d in report["sources"].items()
                      if d.get("hallucination_rate") is not None)
    lines.append(f"hallucination rate: {rates or '–'}")
    ev = report["eavss"]
    rows = {r["layer"]: r for r in ev["per_layer"]}
    sig = ", ".join(f"{i} (z {rows[i]['eavss_z']:.1f}, p {rows[i]['p_eavss']:.2g})" for i in ev["top_k"]
                    if rows[i].get("eavss_z") is not None)
    lines.append(f"EAVSS top-{ev['k']} layers (by {ev.get('rank_by', 'effect')}): {ev['top_k']}  (ranking {ev['ranking']})")
    if sig:
        lines.append(f"  top-{ev['k']} significance: {sig}")
    bl = report.get("baselines") or {}
    if bl:
        lines.append("surface baselines (within-source AUROC): " + ", ".join(f"{k} {v:.3f}" for k, v in bl["auroc"].items()))
    ag = report.get("agreement")
    if ag:
        lines.append(f"EAVSS vs probe AUROC: Spearman {ag['spearman']:.2f} (p {ag['p_value']:.2g}), {ag['verdict']}")
    for w in report.get("warnings", []):
        lines.append(f"warning: {w}")
    return lines


def plot_eavss(report: dict, path: str | os.PathLike) -> None:
    """Three stacked bar charts per layer: HSAV_norm, HSS_norm and EAVSS (top-k in red, bootstrap CI whiskers)."""
    plt = pyplot()
    rows = report["eavss"]["per_layer"]
    layers = [r["layer"] for r in rows]
    colours = ["tab:red" if r.get("top_k") else "tab:blue" for r in rows]
    panels = [("hsav_norm", "HSAV (normalised)"), ("hss_norm", "HSS (normalised)"), ("eavss", "EAVSS")]
    if rows and rows[0].get("eavss_z") is not None:
        panels.append(("eavss_z", "EAVSS permutation z"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 0.3 * len(layers) + 2), 2.5 * len(panels)), sharex=True)
    for ax, (key, label) in zip(axes, panels):
        vals = [r.get(key) or 0.0 for r in rows]
        ax.bar(layers, vals, color=colours)
        ax.set_ylabel(label)
        if key == "eavss" and rows and rows[0].get("eavss_lo") is not None:
            lo = [max(0.0, v - (r.get("eavss_lo") or v)) for v, r in zip(vals, rows)]
            hi = [max(0.0, (r.get("eavss_hi") or v) - v) for v, r in zip(vals, rows)]
            ax.errorbar(layers, vals, yerr=[lo, hi], fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        if key == "eavss_z":
            ax.axhline(0, color="grey", lw=0.6)
    axes[-1].set_xlabel(f"decoder layer (0-based); red = top-{report['eavss']['k']} (by {report['eavss'].get('rank_by', 'effect')}); "
                        "whiskers = bootstrap 95% CI")
    m = report.get("model", {})
    fig.suptitle(f"EAVSS per layer: {m.get('model_id')} ({report['eavss']['options']['hsav']}, "
                 f"{report['eavss']['options']['hss']}, {report['eavss']['options']['combine']})")
    fig.tight_layout()
    save_figure(fig, path)


def plot_separability(report: dict, path: str | os.PathLike) -> None:
    """Probe AUROC per layer (within-source mean, pooled, per source) with EAVSS on a second axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(report["eavss"]["per_layer"]) + 2), 4.5))
    pr = report.get("probe")
    layers = [r["layer"] for r in report["eavss"]["per_layer"]]
    if pr:
        ax.plot(layers, pr["auroc"], "-o", color="black", lw=2, ms=3, label="mean within-source AUROC")
        ax.plot(layers, pr["auroc_pooled"], "--", color="grey", label="pooled AUROC")
        for s, v in pr["auroc_by_source"].items():
            ax.plot(layers, v, lw=0.9, alpha=0.8, label=s)
        ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.set_ylabel("probe AUROC (out-of-fold)")
        ag = report.get("agreement") or {}
        ax.set_title(f"linear-probe separability per layer; Spearman(EAVSS, AUROC) = {ag.get('spearman', float('nan')):.2f}")
    else:
        ax.set_title("probes disabled")
    ax2 = ax.twinx()
    ax2.bar(layers, [r.get("eavss") or 0.0 for r in report["eavss"]["per_layer"]], color="tab:red", alpha=0.2,
            label="EAVSS")
    ax2.set_ylabel("EAVSS (bars)")
    ax.set_xlabel("decoder layer (0-based)")
    if pr:
        ax.legend(loc="lower right", fontsize=7, ncol=2)
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    fig.tight_layout()
    save_figure(fig, path)
