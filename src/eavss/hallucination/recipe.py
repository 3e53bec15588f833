"""``eavss hallucination``: labelled answers -> per-class statistics -> HSAV/HSS/EAVSS -> probes -> report.

One call, :func:`run`, does everything and writes the output folder atomically:

``report.json`` (the eavss report schema, kind ``hallucination``), ``report.md``, ``eavss.png``,
``separability.png``, ``splits.json`` (every question id by part, and those used here) and
``samples.jsonl`` (every labelled answer with its judge record).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from eavss.config import to_dict
from eavss.errors import EavssError
from eavss.hallucination.config import HallucinationConfig, validate
from eavss.hallucination.prompts import ANSWER_TEMPLATE, PREFIXES, Prompt, describe_prompts, options_prompt, qa_prompt
from eavss.hallucination.sources import TEACHER_FORCED, QAItem, load_source
from eavss.hallucination.splits import build_splits, split_source, unit_hash

LABEL_NAMES = {0: "truthful", 1: "hallucinated", -1: "excluded"}


@dataclass
class Sample:
    """One labelled (or to-be-judged) answer.

    ``kind``: ``teacher_forced`` | ``generated``; ``label``: 0 truthful, 1 hallucinated, -1
    excluded/not yet judged; ``reference``: which reference answer a teacher-forced sample is.
    """

    index: int
    source: str
    qid: str
    kind: str
    question: str
    prompt: Prompt
    golds: list[str]
    answer: str | None = None
    label: int = -1
    reference: str | None = None
    options: list[str] = field(default_factory=list)
    correct: str | None = None
    judge: dict | None = None
    stop: str | None = None
    answer_ids: list[int] = field(default_factory=list)
    n_counted: int = 0

    def record(self) -> dict:
        """JSON-able row of ``samples.jsonl``."""
        return {
            "index": self.index, "source": self.source, "qid": self.qid, "split": "score", "kind": self.kind,
            "question": self.question, "prompt_suffix": self.prompt.suffix, "prefix": self.prompt.prefix,
            "answer": self.answer, "label": self.label if self.label >= 0 else None,
            "label_name": LABEL_NAMES[self.label], "reference": self.reference,
            "golds": self.golds[:20], "options": self.options or None, "correct_option": self.correct,
            "judge": self.judge, "stop": self.stop, "n_answer_tokens": len(self.answer_ids),
            "n_counted_tokens": self.n_counted,
        }


def select_questions(items: list[QAItem], source: str, seed: int, fractions, limit: int | None) -> list[QAItem]:
    """The questions used here: the first ``limit`` of the source's score part, in split-hash order."""
    parts = split_source(source, [it.qid for it in items], seed, fractions)
    by_id = {it.qid: it for it in items}
    ids = parts["score"][:limit] if limit else parts["score"]
    return [by_id[q] for q in ids]


def _strip_period(text: str) -> str:
    t = " ".join(text.split())
    return t[:-1].rstrip() if t.endswith(".") and not t.endswith("..") else t


def build_samples(selected: dict[str, list[QAItem]], cfg: HallucinationConfig) -> list[Sample]:
    """Samples for the selected questions (teacher-forced pairs first, then generated answers).

    Teacher-forced: per question, ``pairs_per_question`` truthful references (TruthfulQA: the best
    answer first, then the other correct answers; HaluEval: the right answer) and as many
    hallucinated ones (the incorrect answers in file order; HaluEval: the hallucinated answer). A
    single trailing period is stripped from every reference answer (HaluEval's hallucinated
    answers end in "." and its right answers do not -- a cue unrelated to hallucination).
    Generated: one sample per question; SciQ options are shuffled by a per-question seeded RNG.
    """
    samples: list[Sample] = []
    p = cfg.teacher_forced.pairs_per_question
    for src in cfg.sources:
        for it in selected.get(src, []):
            if src in TEACHER_FORCED:
                pr = qa_prompt(it.question)
                pairs = list(zip(it.golds[:p], it.incorrect[:p]))
                for j, (good, bad) in enumerate(pairs):
                    for label, ans, ref in ((0, good, "best_answer" if j == 0 and src == "truthfulqa" else "correct_answer"),
                                            (1, bad, "incorrect_answer" if src == "truthfulqa" else "hallucinated_answer")):
                        samples.append(Sample(len(samples), src, it.qid, "teacher_forced", it.question, pr, list(it.golds),
                                              answer=_strip_period(ans), label=label, reference=ref))
            else:
                if src == "sciq" and cfg.judge.sciq == "options":
                    opts = list(it.options)
                    random.Random(int(unit_hash(cfg.seed, "sciq-options", it.qid) * 2**53)).shuffle(opts)
                    pr = options_prompt(it.question, opts)
                else:
                    opts = list(it.options)
                    pr = qa_prompt(it.question)
                samples.append(Sample(len(samples), src, it.qid, "generated", it.question, pr, list(it.golds),
                                      options=opts, correct=it.correct))
    return samples


def judge_samples(samples: list[Sample], cfg: HallucinationConfig) -> None:
    """Label every generated sample in place (see :mod:`eavss.hallucination.judge`)."""
    from eavss.hallucination.judge import judge_options, match_answer

    j = cfg.judge
    for s in samples:
        if s.kind != "generated":
            continue
        if s.source == "sciq" and j.sciq == "options":
            r = judge_options(s.answer or "", s.options, s.correct or "", j.number_words)
        else:
            r = match_answer(s.answer or "", s.golds, j.match, j.number_words)
        s.judge = r
        if r["detail"] == "empty" or not s.answer_ids:
            s.label = -1
        else:
            s.label = 0 if r["correct"] else 1


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def choose_threads(requested: int | None) -> dict:
    """Set torch's CPU threads and say why.

    ``requested`` wins. ``None`` (auto) uses the idle cores: ``cpu_count - round(1-min load
    average)``, at least 1, at most torch's default. On a shared 2-core machine multi-threaded
    small matmuls wait on descheduled threads; one thread was 2-4x faster there under load.

    Returns:
        ``{"threads", "rule", "cpu_count", "load_average_1min", "previous"}``.
    """
    import os

    prev = torch.get_num_threads()
    cpu = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        load = 0.0
    if requested:
        if requested < 1:
            raise EavssError(f"threads must be >= 1, got {requested}")
        n, rule = requested, "configured"
    else:
        n, rule = max(1, min(prev, int(round(cpu - load)))), "auto: idle cores = cpu_count - round(load average), >= 1"
    torch.set_num_threads(n)
    return {"threads": n, "rule": rule, "cpu_count": cpu, "load_average_1min": round(load, 2), "previous": prev}


def _source_summary(samples: list[Sample]) -> dict:
    out = {}
    for src in dict.fromkeys(s.source for s in samples):
        ss = [s for s in samples if s.source == src]
        n_t = sum(s.label == 0 for s in ss)
        n_h = sum(s.label == 1 for s in ss)
        n_x = sum(s.label == -1 for s in ss)
        kind = ss[0].kind
        d = {"kind": kind, "questions": len({s.qid for s in ss}), "samples": len(ss), "truthful": n_t,
             "hallucinated": n_h, "excluded": n_x,
             "hallucination_rate": (n_h / (n_t + n_h)) if kind == "generated" and (n_t + n_h) else None,
             "mean_answer_tokens": {LABEL_NAMES[c]: float(np.mean([len(s.answer_ids) for s in ss if s.label == c]))
                                    for c in (0, 1) if any(s.label == c for s in ss)}}
        if kind == "generated":
            det: dict = {}
            stops: dict = {}
            for s in ss:
                det[s.judge["detail"]] = det.get(s.judge["detail"], 0) + 1
                stops[s.stop] = stops.get(s.stop, 0) + 1
            d["judge_details"] = det
            d["stop_reasons"] = stops
        out[src] = d
    return out


def run(cfg: HallucinationConfig) -> dict:
    """Run the whole hallucination analysis and write ``cfg.out`` atomically.

    Returns:
        The report dict (also written as ``report.json``).

    Raises:
        EavssError: bad configuration, missing data or model, too few labelled answers, an
        existing output folder without ``overwrite``.
    """
    from eavss.data.paths import resolve_data_dir
    from eavss.io import check_not_inside, check_out_dir

    validate(cfg)
    check_out_dir(cfg.out, cfg.overwrite)
    check_not_inside(cfg.out, cfg.model.name, cfg.model.cache_dir, resolve_data_dir(cfg.data_dir))
    _seed_everything(cfg.seed)
    threads = choose_threads(cfg.threads)
    try:
        return _run(cfg, threads)
    finally:
        torch.set_num_threads(threads["previous"])


def _run(cfg: HallucinationConfig, threads: dict) -> dict:
    """The body of :func:`run` (threads already chosen)."""
    from eavss.hallucination import report as rep
    from eavss.hallucination.capture import (Capture, PooledFeatures, PrefixCache, answer_text, eos_token_ids,
                                             greedy_generate, newline_token_ids, teacher_forced_pass)
    from eavss.hallucination.judge import judge_rule
    from eavss.hallucination.probe import agreement, probe_layers
    from eavss.hallucination.scores import (EavssOptions, SampleStatistics, bootstrap_eavss, compute_eavss,
                                            permutation_test, variant_table)
    from eavss.io import atomic_dir
    from eavss.models.layers import layer_module_paths
    from eavss.models.loading import load_model
    from eavss.report.schema import jsonable, new_report
    from eavss.stats import ActivationStatsCollector, SparsityRule
    from threadpoolctl import threadpool_limits

    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    # --- data and splits (before the model: fail fast on missing files) ---------------------
    t0 = time.perf_counter()
    fractions = (cfg.split.score, cfg.split.train, cfg.split.eval)
    items = {src: load_source(src, cfg.data_dir, halueval_file=cfg.teacher_forced.halueval_file) for src in cfg.sources}
    selected = {src: select_questions(items[src], src, cfg.seed, fractions, cfg.limits.get(src)) for src in cfg.sources}
    splits = build_splits(items, cfg.seed, fractions, {s: [it.qid for it in v] for s, v in selected.items()})
    samples = build_samples(selected, cfg)
    if not samples:
        raise EavssError("no samples were built; check --sources and limits")
    per_class_max = max(sum(s.source == src and s.label in (0, -1) for s in samples) for src in cfg.sources)
    if per_class_max < cfg.scores.min_per_class:
        raise EavssError(f"at most {per_class_max} answers per class and source, fewer than scores.min_per_class="
                         f"{cfg.scores.min_per_class}; raise --limit or lower scores.min_per_class")
    timings["data"] = time.perf_counter() - t0

    # --- model -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    loaded = load_model(cfg.model.name, dtype=cfg.model.dtype, device=cfg.model.device,
                        cache_dir=cfg.model.cache_dir, trust_remote_code=cfg.model.trust_remote_code)
    model, tok = loaded.model, loaded.tokenizer
    timings["load"] = time.perf_counter() - t0
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    # --- tokenise ----------------------------------------------------------------------------
    t0 = time.perf_counter()
    prefix_ids = {name: tok(text, add_special_tokens=True)["input_ids"] for name, text in PREFIXES.items()}
    use_cache = cfg.generation.prefix_cache
    suffix_ids = {}
    for s in samples:
        suf = tok(s.prompt.suffix, add_special_tokens=False)["input_ids"]
        suffix_ids[s.index] = suf if use_cache else prefix_ids[s.prompt.prefix] + suf
        if s.kind == "teacher_forced":
            s.answer_ids = tok(ANSWER_TEMPLATE.format(answer=s.answer), add_special_tokens=False)["input_ids"][
                :cfg.teacher_forced.max_answer_tokens]
    nl_ids = newline_token_ids(tok)
    eos_ids = eos_token_ids(model, tok)
    timings["tokenise"] = time.perf_counter() - t0

    # --- forward passes with capture -----------------------------------------------------------
    sp = cfg.stats.sparsity
    rule = SparsityRule(mode=sp.mode, epsilon=sp.epsilon, tau=sp.tau)
    N = len(samples)
    used_prefixes = sorted({s.prompt.prefix for s in samples})
    caches = {p: PrefixCache(model, prefix_ids[p]) for p in used_prefixes} if use_cache else {}
    collector = ActivationStatsCollector(model, site=cfg.stats.site, rule=rule, group_names=[str(i) for i in range(N)],
                                         pooled=False, block_influence=False)
    features = PooledFeatures(model, N) if cfg.probe.enabled else None
    capture = Capture(collector, features)
    passes: dict[str, dict] = {}
    try:
        t0 = time.perf_counter()
        tf = [s for s in samples if s.kind == "teacher_forced"]
        for p in used_prefixes:
            rows = [(suffix_ids[s.index], s.answer_ids, s.index) for s in tf if s.prompt.prefix == p]
            if rows:
                passes[f"teacher_forced:{p}"] = teacher_forced_pass(model, rows, caches.get(p), cfg.stats.batch_size,
                                                                   capture, pad_id, progress=cfg.progress,
                                                                   max_counted=cfg.stats.first_answer_tokens)
        timings["teacher_forced"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        gen = [s for s in samples if s.kind == "generated"]
        for p in used_prefixes:
            group = [s for s in gen if s.prompt.prefix == p]
            if not group:
                continue
            info: dict = {}
            outs = greedy_generate(model, [suffix_ids[s.index] for s in group], caches.get(p),
                                   max_new_tokens=cfg.generation.max_new_tokens, newline_ids=nl_ids, eos_ids=eos_ids,
                                   pad_id=pad_id, batch_size=cfg.generation.batch_size, capture=capture,
                                   sample_indices=[s.index for s in group], progress=cfg.progress, stats=info,
                                   max_counted=cfg.stats.first_answer_tokens)
            passes[f"generation:{p}"] = info
            for s, g in zip(group, outs):
                s.answer_ids = g.answer_tokens
                s.stop = g.stop
                s.answer = answer_text(tok, g)
        timings["generation"] = time.perf_counter() - t0
    finally:
        capture.off()
    judge_samples(samples, cfg)

    # --- scores --------------------------------------------------------------------------------
    t0 = time.perf_counter()
    stats = collector.result()
    n_tok = stats.n_tokens()[:, 0]
    for s in samples:  # an answer whose tokens were all cut (should not happen) cannot be scored
        s.n_counted = int(n_tok[s.index])
        if s.label >= 0 and n_tok[s.index] == 0:
            s.label = -1
    ss = SampleStatistics(stats, np.array([s.label for s in samples]), np.array([s.source for s in samples], dtype=object),
                          np.array([f"{s.source}:{s.qid}" for s in samples], dtype=object))
    sc = cfg.scores
    opts = EavssOptions(hsav=sc.hsav, hss=sc.hss, pooling=sc.pooling, normalisation=sc.normalisation, combine=sc.combine,
                        with_avss=sc.with_avss, variance=cfg.stats.variance, min_per_class=sc.min_per_class, top_k=sc.top_k)
    with threadpool_limits(1):  # small numpy products: one BLAS thread is fastest (and much faster on a busy CPU)
        result = compute_eavss(ss, opts)
        boot = bootstrap_eavss(ss, opts, sc.bootstrap, cfg.seed)
        perm = permutation_test(ss, opts, sc.permutations, cfg.seed)
        variants = variant_table(ss, opts)
    timings["scores"] = time.perf_counter() - t0

    # --- probes ----------------------------------------------------------------------------------
    probe = agree = None
    variant_agreement = {}
    if cfg.probe.enabled:
        t0 = time.perf_counter()
        feats, counts = features.result()
        use = ss.used() & (counts.numpy() > 0)
        probe = probe_layers(feats.numpy()[use], ss.labels[use], ss.clusters[use], ss.strata[use], folds=cfg.probe.folds,
                             C=cfg.probe.C, max_iter=cfg.probe.max_iter, seed=cfg.seed, progress=cfg.progress)
        agree = agreement(result["eavss"], probe["auroc"], sc.top_k)
        agree["pooled_auroc"] = {k: v for k, v in agreement(result["eavss"], probe["auroc_pooled"], sc.top_k).items()
                                 if k in ("spearman", "p_value", "top_k_overlap", "verdict")}
        for name, v in variants.items():
            if "eavss" in v:
                a = agreement(v["eavss"], probe["auroc"], sc.top_k)
                variant_agreement[name] = {"spearman": a["spearman"], "p_value": a["p_value"],
                                           "top_k_overlap": a["top_k_overlap"], "top_k": v["top_k"]}
        for name, key in (("HSAV alone", "hsav"), ("HSS alone", "hss"), ("AVSS (importance)", "avss_norm")):
            a = agreement(result[key], probe["auroc"], sc.top_k)
            variant_agreement[name] = {"spearman": a["spearman"], "p_value": a["p_value"],
                                       "top_k_overlap": a["top_k_overlap"], "top_k": a["top_k_eavss"]}
        timings["probe"] = time.perf_counter() - t0

    # --- report --------------------------------------------------------------------------------
    paths = layer_module_paths(model)
    L = stats.num_layers
    per_layer = []
    for i in range(L):
        row = {"layer": i, "module": paths[i] if i < len(paths) else None}
        for key in ("variance_truthful", "variance_hallucinated", "sparsity_truthful", "sparsity_hallucinated",
                    "n_tokens_truthful", "n_tokens_hallucinated", "hsav_signed", "hsav", "hsav_norm", "hss_signed",
                    "hss", "hss_norm", "avss_norm", "eavss"):
            row[key] = result[key][i]
        row["rank"] = int(result["rank"][i])
        row["top_k"] = i in result["top_k"]
        for key in ("eavss_lo", "eavss_hi", "rank_lo", "rank_hi", "p_top_k"):
            if key in boot:
                row[key] = boot[key][i]
        for key in ("p_hsav", "p_hss"):
            if key in perm:
                row[key] = perm[key][i]
        if probe:
            row["probe_auroc"] = probe["auroc"][i]
            row["probe_auroc_pooled"] = probe["auroc_pooled"][i]
            for s, v in probe["auroc_by_source"].items():
                row[f"probe_auroc_{s}"] = v[i]
        per_layer.append(row)

    report = new_report("hallucination", to_dict(cfg), cfg.seed)
    info = dict(loaded.info)
    info["num_parameters"] = sum(t.numel() for t in model.parameters())
    timings["total_before_write"] = time.perf_counter() - t_all
    report.update({
        "model": info,
        "prompts": {**describe_prompts(), "stop_rule": "greedy; stop at the first generated token whose text contains "
                    "a newline, or at EOS " + str(eos_ids) + f", or after max_new_tokens={cfg.generation.max_new_tokens}; "
                    "'.' and ',' do not stop (they would cut 'Washington, D.C.'); the answer text is the generated "
                    "text before the newline, stripped; the stop token is not an answer token",
                    "generation": {"batch_size": cfg.generation.batch_size, "padding": "left",
                                   "prefix_cache": use_cache, "newline_token_count": len(nl_ids)}},
        "judge": judge_rule(cfg.judge.match, cfg.judge.number_words, cfg.judge.sciq),
        "sources": _source_summary(samples),
        "splits": {"file": "splits.json", "seed": splits["seed"], "fractions": splits["fractions"], "rule": splits["rule"],
                   "counts": {s: {**d["counts"], "used_here": d["n_used_here"]} for s, d in splits["sources"].items()}},
        "samples": {"file": "samples.jsonl", "counted_tokens_by_class": {
                        "truthful": int(ss.class_statistics().n_tokens()[0, 0]),
                        "hallucinated": int(ss.class_statistics().n_tokens()[1, 0])}, "total": N, "labelled": int(ss.used().sum()),
                    "truthful": int(((ss.labels == 0) & ss.used()).sum()),
                    "hallucinated": int(((ss.labels == 1) & ss.used()).sum())},
        "statistics": {"site": stats.site, "variance_definition": cfg.stats.variance, "sparsity_rule": stats.sparsity_rule,
                       "answer_tokens_counted": "all" if cfg.stats.first_answer_tokens is None
                       else f"first {cfg.stats.first_answer_tokens}",
                       "passes": passes, "class_sums": ss.class_statistics().to_dict()},
        "eavss": {"definitions": rep.definitions(opts), "options": to_dict(cfg.scores),
                  "ranking": result["ranking"], "top_k": result["top_k"], "k": min(sc.top_k, L),
                  "per_layer": per_layer, "per_source": result["per_source"], "degenerate": result["degenerate"],
                  "bootstrap": {k: v for k, v in boot.items() if k in ("resamples", "failed")},
                  "permutation": {k: v for k, v in perm.items() if k in ("permutations", "p_max_hsav", "p_max_hss")},
                  "variants": {k: {kk: vv for kk, vv in v.items()} for k, v in variants.items()}},
        "probe": None if probe is None else {
            "protocol": probe["protocol"], "n": probe["n"], "n_hallucinated": probe["n_hallucinated"],
            "folds": probe["folds"], "C": probe["C"], "sources_used": probe["sources_used"],
            "auroc": probe["auroc"], "auroc_pooled": probe["auroc_pooled"], "auroc_by_source": probe["auroc_by_source"],
            "seconds": probe["seconds"]},
        "agreement": agree,
        "agreement_variants": variant_agreement,
        "timings": timings,
        "threads": threads,
    })
    report["warnings"] = rep.warnings(report)
    report = jsonable(report)
    t0 = time.perf_counter()
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        rep.write_json(tmp / "splits.json", splits)
        with open(tmp / "samples.jsonl", "w", encoding="utf-8") as fh:
            for s in samples:
                fh.write(json.dumps(jsonable(s.record()), ensure_ascii=False) + "\n")
        rep.plot_eavss(report, tmp / "eavss.png")
        rep.plot_separability(report, tmp / "separability.png")
        report["timings"]["write"] = time.perf_counter() - t0
        report["timings"]["total"] = time.perf_counter() - t_all
        rep.write_json(tmp / "report.json", report)
        (tmp / "report.md").write_text(rep.render_markdown(report), encoding="utf-8")
    return report

