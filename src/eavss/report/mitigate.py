"""Human-readable outputs of ``eavss mitigate``: ``report.md`` and the typed sections of its report.

The report (kind ``mitigate``) holds, after the common header:

``model`` (the trained model, as loaded), ``analysis`` (:class:`AnalysisSection`), ``variants``
(list of :class:`VariantRecord`), ``data`` (:class:`DataSection`), ``objective`` (the loss in
words), ``training`` (variant -> :class:`TrainingSummary`), ``evaluation`` (``base``: the untrained
model's results per task, ``variants``: each trained variant's, both in the harness layout with
``item_ids``, ``per_item`` and ``details.ci``), ``comparison`` (``in_distribution`` and ``lodo``:
lists of :class:`ComparisonRow`), ``outputs``, ``warnings``, ``timings``, ``threads``.
"""

from __future__ import annotations

from typing import Any, TypedDict

from eavss.report.common import format_number, header_lines, timings_table


class AnalysisSection(TypedDict):
    """``report["analysis"]``: what was read from ``--from``."""

    dir: str
    created: str | None
    model_id: str
    file_sha256: str | None
    num_layers: int
    ranking: list[int]
    top_k: list[int]
    probe_auroc: list[float] | None


class VariantRecord(TypedDict):
    """One entry of ``report["variants"]``."""

    name: str
    kind: str  # main | random | lowest | probe | lora_all | none
    group: str  # in_distribution | lodo
    heldout: str | None
    layers: list[int]
    contrast_layers: list[int]
    method: str | None
    lr: float | None
    sources: list[str]
    tasks: list[str]
    seed: int | None
    note: str


class DataSection(TypedDict):
    """``report["data"]``: per source the train part, the questions used, the examples and why some were skipped."""

    sources: dict
    own_answers: dict
    prompt: str
    examples_total: int
    leakage: dict


class TrainingSummary(TypedDict, total=False):
    """``report["training"][variant]``: trainable parameters and the loop's record."""

    method: str
    layers: list[int]
    trainable_parameters: int
    total_parameters: int
    trainable_fraction: float
    steps: int
    epochs_completed: int
    loss_history: list[float]
    metrics_history: dict
    tokens: int | None
    seconds: float
    tokens_per_second: float | None
    peak_memory_bytes: int | None
    peak_memory_kind: str | None
    resumed_from_step: int | None
    dtype: str
    examples: int


class ComparisonRow(TypedDict, total=False):
    """One row of ``report["comparison"][group]``: a variant against the untrained model on one metric."""

    variant: str
    kind: str
    layers: list[int] | None
    heldout: str | None
    task: str
    metric: str
    primary: bool
    before: float
    before_ci: list
    after: float
    after_ci: list
    abs_change: float
    abs_ci: list
    rel_change: float | None
    rel_ci: list
    verdict: str  # better | worse | inconclusive | no change
    p_better: float | None
    n: int


def objective_definition(cfg: Any) -> dict:
    """The loss and representation in force, in words."""
    o = cfg.objective
    return {
        "representation": f"{o.site} of each contrasted layer, pooled over the answer tokens ({o.answer_pooling}); "
                          f"anchor = the prompt's {o.anchor_pooling} token(s); layers combined by {o.layer_reduction}",
        "loss": f"InfoNCE(anchor, truthful answer, hallucinated answers of the same question; cosine / tau, tau = "
                f"{o.temperature}) + {o.lm_weight} * mean next-token NLL of the truthful answer tokens",
        "pairing": "positive = the question's truthful answer (TruthfulQA best answer, HaluEval right answer, WikiQA "
                   "correct sentence, SciQ correct option, NQ-open/TriviaQA gold answer); negatives = TruthfulQA "
                   "incorrect answers, HaluEval hallucinated answer, WikiQA incorrect sentences, SciQ distractors, the "
                   "model's own wrong greedy answers (NQ-open/TriviaQA), at most data.max_negatives",
        "contrast_layers": "the trained layers (lora_all: the main variant's layers)",
        "temperature": o.temperature, "lm_weight": o.lm_weight,
    }


def warnings(report: dict) -> list[str]:
    """Sentences the reader must see."""
    out = []
    for s, d in report["data"]["sources"].items():
        if d.get("tokenized_examples", 0) == 0:
            out.append(f"Source {s} gave no training example ({d.get('skipped_no_negative', 0)} questions without a "
                       f"hallucinated answer, {d.get('skipped_no_positive', 0)} without a truthful one).")
    rows = [r for r in report["comparison"]["in_distribution"] if r["variant"] == "main" and r["primary"]]
    if rows and not any(r["verdict"] == "better" for r in rows):
        out.append("The main variant improves no dataset beyond its paired 95% interval; with these item counts the "
                   "intervals are wide (raise eval.limits).")
    small = [t for t, r in report["evaluation"]["base"].items() if (r.get("n_samples") or 0) < 30]
    if small:
        out.append(f"Fewer than 30 evaluation items on {', '.join(small)}: intervals are wide; raise eval.limits.")
    flat = []
    for name, t in report["training"].items():
        h = (t.get("metrics_history") or {}).get("info_nce") or []
        q = max(1, len(h) // 4)
        if len(h) >= 2 and sum(h[-q:]) / q >= sum(h[:q]) / q:
            flat.append(f"{name} ({sum(h[:q]) / q:.3f} -> {sum(h[-q:]) / q:.3f})")
    if flat:
        out.append("InfoNCE did not fall (mean of the first vs. the last quarter of the steps) for: " + ", ".join(flat)
                   + "; per-step values mix sources with 1 to 4 negatives (chance log 2 to log 5), so short runs are "
                   "noisy; more steps or a higher learning rate may be needed.")
    return out


def _f(x: Any, nd: int = 3) -> str:
    return format_number(x, nd=nd, exp_digits=2)


def _ci(ci: Any, nd: int = 3) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" [{_f(ci[0], nd)}, {_f(ci[1], nd)}]"


def _mem(peak: Any, kind: Any) -> str:
    return "–" if not peak else f"{peak / 2**30:.2f} GiB ({kind})"


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * x:+.1f}%"


def _pct_ci(ci: Any) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def comparison_table(rows: list[dict], primary_only: bool = True) -> str:
    """Markdown: before / after / absolute and relative change with paired intervals, per variant and task."""
    lines = ["| variant | layers | task | metric | before [95% CI] | after [95% CI] | change [paired 95% CI] | "
             "relative [paired 95% CI] | verdict | n |", "|" + "---|" * 10]
    for r in rows:
        if primary_only and not r["primary"]:
            continue
        lay = "–" if r.get("layers") is None else (str(r["layers"]) if len(r["layers"]) <= 8 else f"{len(r['layers'])} layers")
        lines.append(f"| {r['variant']} | {lay} | {r['task']} | {r['metric']} | {_f(r['before'])}{_ci(r.get('before_ci'))} | "
                     f"{_f(r['after'])}{_ci(r.get('after_ci'))} | {_f(r['abs_change'])}{_ci(r.get('abs_ci'))} | "
                     f"{_pct(r.get('rel_change'))}{_pct_ci(r.get('rel_ci'))} | {r['verdict']} | {r['n']} |")
    return "\n".join(lines) + "\n"


def render_markdown(report: dict) -> str:
    """The ``report.md`` text."""
    a = report["analysis"]
    cfg = report["config"]
    out = ["# eavss mitigate report\n"]
    out += header_lines(report)
    out.append(f"- analysis: `{a['dir']}` ({a['model_id']}, {a['num_layers']} layers; EAVSS top-k {a['top_k']})")
    out.append(f"- objective: {report['objective']['loss']}")
    out.append(f"- representation: {report['objective']['representation']}")
    ev = report["evaluation"]
    out.append(f"- evaluation: the `{ev['part']}` part of `{ev['splits']}`; dtype {ev['train_dtype']}; every interval a "
               f"{int(100 * cfg['eval']['level'])}% percentile bootstrap over questions ({cfg['eval']['resamples']} "
               "resamples), before/after differences paired (the same resampled questions for both models)")
    tm = report["timings"]
    total = f"- total time: {tm.get('total', tm.get('total_before_write', 0)):.0f} s"
    if tm.get("total_all_sittings") is not None:
        total += (f" in this sitting; {tm['total_all_sittings']:.0f} s over {len(tm['earlier_sittings']) + 1} sittings "
                  "(the run was interrupted and resumed)")
    out.append(total + "\n")
    if report.get("warnings"):
        out.append("## Warnings\n")
        out += [f"- **{w}**" for w in report["warnings"]]
        out.append("")
    out.append("## Variants\n")
    out.append("| variant | group | layers trained | contrasted at | method | lr | trainable params | steps | InfoNCE first -> last "
               "| LM first -> last | tokens/s | peak memory | note |\n|" + "---|" * 13)
    for v in report["variants"]:
        t = report["training"].get(v["name"], {})
        h = t.get("metrics_history") or {}
        nce, lm = h.get("info_nce") or [], h.get("lm") or []
        peak = t.get("peak_memory_bytes")
        lay = str(v["layers"]) if len(v["layers"]) <= 8 else f"all {len(v['layers'])}"
        out.append(f"| {v['name']} | {v['group'] if not v['heldout'] else 'lodo, without ' + v['heldout']} | {lay} | "
                   f"{v['contrast_layers'] if v['contrast_layers'] else '–'} | {v['method'] or '–'} | {_f(v['lr'], 6)} | "
                   f"{t.get('trainable_parameters', '–')} | {t.get('steps', '–')} | "
                   f"{(_f(nce[0]) + ' -> ' + _f(nce[-1])) if nce else '–'} | {(_f(lm[0]) + ' -> ' + _f(lm[-1])) if lm else '–'} | "
                   f"{_f(t.get('tokens_per_second'), 1)} | {_mem(peak, t.get('peak_memory_kind'))} | "
                   f"{v['note']} |")
    out.append("")
    out.append("## In distribution: before / after (primary metric of each dataset)\n")
    out.append("Trained on the train parts of every source, evaluated on the eval parts. Verdict: the paired interval "
               "of the change excludes 0 (better / worse), or not (inconclusive).\n")
    out.append(comparison_table(report["comparison"]["in_distribution"]))
    sec = [r for r in report["comparison"]["in_distribution"] if not r["primary"]]
    if sec:
        out.append("Other metrics:\n")
        out.append(comparison_table(sec, primary_only=False))
    if report["comparison"]["lodo"]:
        out.append("## Leave one dataset out\n")
        out.append("Each held-out dataset: trained on the other sources' train parts only, evaluated on its eval part.\n")
        out.append(comparison_table(report["comparison"]["lodo"]))
    out.append("## Training data\n")
    d = report["data"]
    out.append(f"Prompt `{d['prompt']}`; {d['examples_total']} examples in all. Train questions are the first "
               "`data.limits` ids of each source's train part (split-hash order); none is in the score or eval part "
               "(checked; `question_ids.json`).\n")
    out.append("| source | train part | used | origin | examples | no truthful | no hallucinated | negatives/example | "
               "own answers used |\n|" + "---|" * 9)
    for s, x in d["sources"].items():
        out.append(f"| {s} | {x['train_part']} | {x['used']} | {x['origin']} | {x['tokenized_examples']} | "
                   f"{x['skipped_no_positive']} | {x['skipped_no_negative']} | {_f(x['negatives_per_example'], 2)} | "
                   f"{x['own_answers_used']} |")
    if d["own_answers"]:
        out.append("\nThe model's own greedy answers to the train questions (exact match after normalisation):\n")
        out.append("| source | questions | correct | wrong (negatives) | empty |\n|---|---|---|---|---|")
        for s, x in d["own_answers"].items():
            out.append(f"| {s} | {x['questions']} | {x['correct']} | {x['wrong']} | {x['empty']} |")
    out.append("\nEvaluated vs trained vs scored questions (must not overlap):\n")
    out.append("| task | source | evaluated | trained | analysis score part | overlaps |\n|---|---|---|---|---|---|")
    for t, x in d["leakage"].items():
        out.append(f"| {t} | {x['source']} | {x['evaluated']} | {x['trained']} | {x['score_part']} | "
                   f"{x['overlap_train'] + x['overlap_score']} |")
    out.append("\n## Untrained model, every metric\n")
    out.append("| task | metric | value [95% CI] | items (of the part) |\n|---|---|---|---|")
    for t, r in ev["base"].items():
        for m, ci in r["details"]["ci"].items():
            out.append(f"| {t} | {m} | {_f(ci['value'])}{_ci([ci['lo'], ci['hi']])} | {r['n_samples']} ({r.get('n_total')}) |")
    out.append("\n## Timings (seconds)\n")
    out.append(timings_table(report["timings"]))
    out.append("\nConfiguration: `eavss mitigate --config` with the `config` section of report.json reproduces this run.")
    return "\n".join(out) + "\n"


def summary(report: dict) -> list[str]:
    """Short terminal summary: the main variant's change per dataset, then the warnings."""
    lines = []
    main = next((v for v in report["variants"] if v["name"] == "main"), None)
    if main:
        lines.append(f"trained layers {main['layers']} ({main['method']}); {report['data']['examples_total']} examples")
    for r in report["comparison"]["in_distribution"]:
        if r["primary"] and r["variant"] in ("main", "random (mean)", "lowest", "probe", "lora_all"):
            lines.append(f"{r['variant']:>14} {r['task']:>10} {r['metric']:<16} {_f(r['before'])} -> {_f(r['after'])} "
                         f"({_f(r['abs_change'])}{_ci(r['abs_ci'])}, {r['verdict']})")
    for w in report.get("warnings", []):
        lines.append(f"warning: {w}")
    return lines
