"""``eavss hallucination``: labelled answers -> per-class statistics -> HSAV/HSS/EAVSS -> probes -> report.

The command is :func:`run`, a sequence of named steps over library code:

1. :func:`prepare` -- read the sources, split them (score/train/eval), build the samples;
2. :func:`tokenise` -- prompt, answer, newline and EOS token ids; :func:`match_pair_lengths` --
   length-matched teacher-forced pairs (``teacher_forced.match``);
3. :func:`capture_answers` -- teacher-forced passes and greedy generation, with answer-token
   statistics (:mod:`eavss.stats`) and probe features captured in the same forward passes;
4. :func:`judge_samples` -- label the generated answers (:mod:`eavss.evaluation.judge`), format
   failures apart;
5. :func:`score_layers` -- HSAV/HSS/EAVSS, permutation null and z, ranking (``scores.rank_by``),
   bootstrap, variants (:mod:`eavss.scores.hallucination`);
6. :func:`probe_check` -- per-layer linear probes and their rank agreement with the ranking;
   :func:`baseline_check` -- surface baselines with the probe's folds
   (:mod:`eavss.hallucination.baselines`);
7. :func:`build_report` and :func:`write_outputs` -- ``report.json`` (kind ``hallucination``),
   ``report.md``, ``eavss.png``, ``separability.png``, ``splits.json`` (every question id by part,
   and those used here) and ``samples.jsonl`` (every labelled answer with its judge record),
   written atomically.

Its config, :class:`HallucinationConfig`, declares every option; ``docs/hallucination.md``
explains each default.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eavss.config import ModelSection, RunOptions, SparsitySection, option, section, to_dict, validate
from eavss.data.qa import QA_SOURCES, TEACHER_FORCED, QAItem, load_source
from eavss.errors import EavssError
from eavss.hallucination.prompts import ANSWER_TEMPLATE, PREFIXES, Prompt, describe_prompts, options_prompt, qa_prompt
from eavss.hallucination.splits import build_splits, split_source, unit_hash
from eavss.recipes.common import load, model_section, start, timed

_SOURCES = "eavss.data.qa:QA_SOURCES"
_SCORES = "eavss.scores.hallucination"

# ---------------------------------------------------------------------------------------------
# config


@dataclass
class SplitSection:
    """Fractions of each source's questions in the score / train / eval parts (must sum to 1).
    A question's part depends only on (seed, source, question id), see :mod:`eavss.hallucination.splits`."""

    score: float = option(0.5, "share of each source's questions in the score part (used here)", min=0, max=1)
    train: float = option(0.25, "share in the train part (for later training; never scored here)", min=0, max=1)
    eval: float = option(0.25, "share in the eval part (for later evaluation; never scored here)", min=0, max=1)

    def check(self) -> None:
        fr = (self.score, self.train, self.eval)
        if abs(sum(fr) - 1.0) > 1e-9 or self.score <= 0:
            raise EavssError(f"split fractions score/train/eval must be >= 0, score > 0, and sum to 1; got {fr}")


@dataclass
class GenerationSection:
    """Greedy generation of the model's own answers. "." and "," are deliberately *not* stop
    characters (they would cut "Washington, D.C.")."""

    batch_size: int = option(32, "generation batch size (left padding)", flag="--batch-size", min=1)
    max_new_tokens: int = option(16, "answer length cap in tokens", flag="--max-new-tokens", min=1)
    stop: str = option("newline", "stop rule: newline (first token whose text contains a newline, or EOS)",
                       choices=("newline",))
    prefix_cache: bool = option(True, "compute the shared few-shot prefix once and reuse its KV cache (same tokens, "
                                "~3x fewer through the model); false = full prompts every batch")


@dataclass
class JudgeSection:
    """How a generated answer is judged against the gold answers (:mod:`eavss.evaluation.judge`)."""

    match: str = option("exact", "answer judge: exact (normalised prediction equals an alias; the field's rule) | "
                        "contains (alias inside the answer, negation-guarded)", flag="--judge",
                        choices="eavss.evaluation.judge:MATCH_MODES")
    number_words: bool = option(True, "map number words to digits before comparing (two -> 2)")
    sciq: str = option("options", "SciQ: options (the four options are listed; answer must equal the correct one) | "
                       "open (no options shown)", choices="eavss.evaluation.judge:SCIQ_MODES")
    format_failure: str = option("exclude", "an answer of the wrong form (SciQ: names none of the options): exclude "
                                 "(label format_failure, counted per source, not scored) | hallucinated (the old rule)",
                                 choices=("exclude", "hallucinated"))


@dataclass
class TeacherForcedSection:
    """Teacher-forced pair sources (TruthfulQA, HaluEval)."""

    pairs_per_question: int = option(1, "(truthful, hallucinated) reference pairs per question", min=1)
    max_answer_tokens: int = option(48, "longer reference answers are cut to this many tokens", min=1)
    halueval_file: str = option("one-turn", "HaluEval QA file: one-turn | multi-turn", choices=("one-turn", "multi-turn"))
    match: str = option("length", "which incorrect reference answer is paired with the truthful one: none (file order) "
                        "| length (the one closest in token length; TruthfulQA has several, HaluEval one)",
                        choices="eavss.hallucination.matching:MATCH_MODES")


@dataclass
class HStatsSection:
    """Answer-token statistics (the streaming engine of :mod:`eavss.stats`)."""

    site: str = option("resid_post", "capture site for HSAV/HSS and the probe features: resid_post | resid_delta | "
                       "mlp_act", flag="--site", choices="eavss.stats.sites:SITES")
    variance: str = option("element", "variance definition: element | token (pooled needs whole sequences per "
                           "forward pass; generated answers are captured token by token)", choices=("element", "token"))
    sparsity: SparsitySection = section(SparsitySection)
    batch_size: int = option(32, "teacher-forced rows per forward pass", min=1)
    first_answer_tokens: int | None = option(None, "count only the first N answer tokens of every answer (a length "
                                             "control; null = all)", min=1)
    massive: float | None = option(None, "leave out of HSAV/HSS the answer tokens whose RMS exceeds this multiple of the "
                                   "batch-median token RMS at a layer (massive activations, attention sinks; counted "
                                   "per layer); null = keep all. The probe features keep every token", min=1)


@dataclass
class EavssScoresSection:
    """HSAV / HSS / EAVSS definitions (:mod:`eavss.scores.hallucination`)."""

    hsav: str = option("log_ratio", "HSAV definition: log_ratio | rel_diff | cohens_d", flag="--hsav",
                       choices=f"{_SCORES}:HSAV_METHODS")
    hss: str = option("log_odds_ratio", "HSS definition: log_odds_ratio | diff | cohens_d", flag="--hss",
                      choices=f"{_SCORES}:HSS_METHODS")
    pooling: str = option("stratified", "across sources: stratified | stratified_abs | pooled", flag="--pooling",
                          choices=f"{_SCORES}:POOLINGS")
    normalisation: str = option("sum", "across layers: sum | max", choices=("sum", "max"))
    combine: str = option("mean", "EAVSS combination: mean | product | geometric | hsav_only | hss_only",
                          flag="--combine", choices=f"{_SCORES}:COMBINATIONS")
    with_avss: bool = option(False, "multiply EAVSS by the layer's normalised AVSS", flag="--with-avss",
                             action="store_true")
    rank_by: str = option("z", "layer ranking: z (permutation z of each layer's EAVSS with HSAV and HSS in noise "
                          "units: (observed - null mean) / null SD) | effect (raw EAVSS, the original ranking)",
                          flag="--rank-by",
                          choices=f"{_SCORES}:RANK_BY")
    top_k: int = option(5, "number of hallucination-prone layers listed", flag="--top-k", min=1)
    bootstrap: int = option(200, "question-level bootstrap resamples for CIs (0 = off)", min=0)
    permutations: int = option(200, "label permutations for p-values and the z ranking (0 = off; rank_by=z needs "
                               ">= 2)", min=0)
    min_per_class: int = option(5, "a source needs this many answers in each class to count", min=2)

    def check(self) -> None:
        if self.rank_by == "z" and self.permutations < 2:
            raise EavssError(f"scores.rank_by=z needs scores.permutations >= 2 (got {self.permutations}); "
                             "raise it (200 recommended) or set scores.rank_by=effect")


@dataclass
class ProbeSection:
    """Linear probe per layer on mean-pooled answer-token features (:mod:`eavss.hallucination.probe`)."""

    enabled: bool = option(True, "fit the probes (the agreement check)", flag="--no-probe", action="store_false")
    folds: int = option(5, "cross-validation folds, grouped by question", min=2)
    C: float = option(0.05, "inverse L2 strength of the logistic regression", min=1e-12)
    max_iter: int = option(500, "solver iterations", min=1)


@dataclass
class BaselinesSection:
    """Surface baselines beside the probe: how well answer form alone predicts the label, with the
    probe's folds (:mod:`eavss.hallucination.baselines`)."""

    enabled: bool = option(True, "fit the surface baselines (answer length, first tokens, bag of tokens)",
                           flag="--no-baselines", action="store_false")
    first_tokens: int = option(3, "the first-token baseline one-hot encodes the first N answer token ids", min=1)
    C: float = option(1.0, "inverse L2 strength of the baselines' logistic regressions", min=1e-12)
    margin: float = option(0.05, "warn when the best probe layer's AUROC does not beat the best baseline's by this much",
                           min=0)


@dataclass
class HallucinationConfig(RunOptions):
    """``eavss hallucination``. ``limits``: questions per source taken from its score split (null = the
    whole score split). The defaults give ~3,000 labelled answers and run in ~10 minutes on 2 CPU cores."""

    out: str = option("runs/hallucination", "output folder (refused if it exists and is not empty, unless "
                      "--overwrite)", flag="--out")
    model: ModelSection = section(ModelSection)
    sources: list[str] = option(help="QA sources (default: all): truthfulqa, halueval, nq_open, triviaqa, sciq, wikiqa",
                                flag="--sources",
                                choices=_SOURCES, factory=lambda: list(QA_SOURCES.names()))
    limits: dict[str, int | None] = option(
        help="questions per source from its score part (null = all); --limit N sets every source in sources",
        flag="--limit", broadcast="sources", keys=_SOURCES, min=1,
        factory=lambda: {"truthfulqa": 300, "halueval": None, "nq_open": 800, "triviaqa": 800, "sciq": None,
                         "wikiqa": None})
    split: SplitSection = section(SplitSection)
    generation: GenerationSection = section(GenerationSection)
    judge: JudgeSection = section(JudgeSection)
    teacher_forced: TeacherForcedSection = section(TeacherForcedSection)
    stats: HStatsSection = section(HStatsSection)
    scores: EavssScoresSection = section(EavssScoresSection)
    probe: ProbeSection = section(ProbeSection)
    baselines: BaselinesSection = section(BaselinesSection)

    def check(self) -> None:
        if not self.sources:
            raise EavssError(f"sources is empty; choose from {','.join(QA_SOURCES.names())}")
        if len(set(self.sources)) != len(self.sources):
            raise EavssError(f"sources listed twice: {self.sources}; name each source once")


# ---------------------------------------------------------------------------------------------
# samples


FORMAT_FAILURE = 2
"""Label of an answer of the wrong form (SciQ: names no option); not scored, counted per source."""
LABEL_NAMES = {0: "truthful", 1: "hallucinated", -1: "excluded", FORMAT_FAILURE: "format_failure"}


@dataclass
class Sample:
    """One labelled (or to-be-judged) answer.

    ``kind``: ``teacher_forced`` | ``generated``; ``label``: 0 truthful, 1 hallucinated, -1
    excluded/not yet judged, 2 format failure (:data:`FORMAT_FAILURE`); ``reference``: which
    reference answer a teacher-forced sample is, ``reference_index`` its position in the source's
    list, ``alternatives`` (hallucinated teacher-forced samples) every incorrect answer of the
    question, for length matching.
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
    reference_index: int | None = None
    alternatives: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """JSON-able row of ``samples.jsonl``."""
        return {
            "index": self.index, "source": self.source, "qid": self.qid, "split": "score", "kind": self.kind,
            "question": self.question, "prompt_suffix": self.prompt.suffix, "prefix": self.prompt.prefix,
            "answer": self.answer, "label": self.label if self.label in (0, 1) else None,
            "label_name": LABEL_NAMES[self.label], "reference": self.reference, "reference_index": self.reference_index,
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
    hallucinated ones (the incorrect answers in file order; HaluEval: the hallucinated answer;
    :func:`match_pair_lengths` may swap them for length-matched ones after tokenisation). A
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
                alts = [_strip_period(a) for a in it.incorrect]
                for j, (good, bad) in enumerate(pairs):
                    for label, ans, ref in ((0, good, "best_answer" if j == 0 and src == "truthfulqa" else "correct_answer"),
                                            (1, bad, "incorrect_answer" if src == "truthfulqa" else "hallucinated_answer")):
                        samples.append(Sample(len(samples), src, it.qid, "teacher_forced", it.question, pr, list(it.golds),
                                              answer=_strip_period(ans), label=label, reference=ref, reference_index=j,
                                              alternatives=alts if label == 1 else []))
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
    """Label every generated sample in place (see :mod:`eavss.evaluation.judge`): 0 right, 1 wrong,
    -1 empty, :data:`FORMAT_FAILURE` when the judge's detail is a format failure
    (:data:`eavss.evaluation.judge.FORMAT_FAILURES`; SciQ ``no_option``) and
    ``judge.format_failure=exclude``."""
    from eavss.evaluation.judge import FORMAT_FAILURES, judge_options, match_answer

    j = cfg.judge
    for s in samples:
        if s.kind != "generated":
            continue
        if s.source == "sciq" and j.sciq == "options":
            r = judge_options(s.answer or "", s.options, s.correct or "", j.number_words)
        else:
            r = match_answer(s.answer or "", s.golds, j.match, j.number_words,
                             punctuation="space" if s.source == "triviaqa" else "delete")
        s.judge = r
        if r["detail"] == "empty" or not s.answer_ids:
            s.label = -1
        elif r["detail"] in FORMAT_FAILURES and j.format_failure == "exclude":
            s.label = FORMAT_FAILURE
        else:
            s.label = 0 if r["correct"] else 1


def _source_summary(samples: list[Sample], matching: dict | None = None) -> dict:
    out = {}
    for src in dict.fromkeys(s.source for s in samples):
        ss = [s for s in samples if s.source == src]
        n_t = sum(s.label == 0 for s in ss)
        n_h = sum(s.label == 1 for s in ss)
        n_x = sum(s.label == -1 for s in ss)
        n_f = sum(s.label == FORMAT_FAILURE for s in ss)
        kind = ss[0].kind
        d = {"kind": kind, "questions": len({s.qid for s in ss}), "samples": len(ss), "truthful": n_t,
             "hallucinated": n_h, "excluded": n_x, "format_failures": n_f,
             "hallucination_rate": (n_h / (n_t + n_h)) if kind == "generated" and (n_t + n_h) else None,
             "format_failure_rate": (n_f / (n_t + n_h + n_f)) if kind == "generated" and (n_t + n_h + n_f) else None,
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
        if matching and src in matching:
            d["length_match"] = matching[src]
        out[src] = d
    return out


# ---------------------------------------------------------------------------------------------
# steps


def prepare(cfg: HallucinationConfig) -> tuple[dict, list[Sample]]:
    """Read the sources, split them, select the questions scored here and build their samples.

    Returns:
        ``(splits, samples)``.

    Raises:
        EavssError: a missing data file, no samples, too few answers per class.
    """
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
    return splits, samples


@dataclass
class Tokens:
    """Token ids of the prompts: ``prefix[name]``, ``suffix[sample index]`` (the prefix included
    when the prefix cache is off), newline and EOS ids, the pad id."""

    prefix: dict
    suffix: dict
    newline: list[int]
    eos: list[int]
    pad: int


def tokenise(samples: list[Sample], model, tok, prefix_cache: bool, max_answer_tokens: int) -> Tokens:
    """Tokenise prompts and teacher-forced answers (sets ``answer_ids`` of teacher-forced samples)."""
    from eavss.hallucination.capture import eos_token_ids, newline_token_ids

    prefix_ids = {name: tok(text, add_special_tokens=True)["input_ids"] for name, text in PREFIXES.items()}
    suffix_ids = {}
    for s in samples:
        suf = tok(s.prompt.suffix, add_special_tokens=False)["input_ids"]
        suffix_ids[s.index] = suf if prefix_cache else prefix_ids[s.prompt.prefix] + suf
        if s.kind == "teacher_forced":
            s.answer_ids = tok(ANSWER_TEMPLATE.format(answer=s.answer), add_special_tokens=False)["input_ids"][
                :max_answer_tokens]
    return Tokens(prefix_ids, suffix_ids, newline_token_ids(tok), eos_token_ids(model, tok),
                  tok.pad_token_id if tok.pad_token_id is not None else 0)


def match_pair_lengths(samples: list[Sample], tok, match: str, max_answer_tokens: int) -> dict:
    """Pair each truthful teacher-forced answer with an incorrect one of similar length (``match="length"``,
    :func:`eavss.hallucination.matching.match_by_length`); sets the hallucinated samples' answer,
    ``answer_ids`` and ``reference_index``. Run after :func:`tokenise`.

    Returns:
        Per teacher-forced source: ``{"match", "questions", "candidates_per_question" (mean number
        of incorrect answers), "questions_changed", "mean_tokens_before": {"truthful",
        "hallucinated"} (file order, i.e. ``match="none"``), "mean_tokens_after",
        "mean_abs_pair_difference_before", "mean_abs_pair_difference_after"`` (mean ``|len truthful -
        len hallucinated|`` over the pairs)``}`` (token counts after the ``max_answer_tokens`` cut).
    """
    from eavss.hallucination.matching import match_by_length

    def n_tok(text: str) -> list[int]:
        return tok(ANSWER_TEMPLATE.format(answer=text), add_special_tokens=False)["input_ids"][:max_answer_tokens]

    out: dict = {}
    by_q: dict = {}
    for s in samples:
        if s.kind == "teacher_forced":
            by_q.setdefault((s.source, s.qid), []).append(s)
    for src in dict.fromkeys(k[0] for k in by_q):
        qs = [v for k, v in by_q.items() if k[0] == src]
        before = {c: [len(s.answer_ids) for v in qs for s in v if s.label == c] for c in (0, 1)}
        gap_before = [abs(len(a.answer_ids) - len(b.answer_ids)) for v in qs
                      for a, b in zip([s for s in v if s.label == 0], [s for s in v if s.label == 1])]
        changed = 0
        n_cand = []
        for v in qs:
            good = [s for s in v if s.label == 0]
            bad = [s for s in v if s.label == 1]
            n_cand.append(len(bad[0].alternatives) if bad else 0)
            if match != "length" or not bad:
                continue
            cand_ids = [n_tok(a) for a in bad[0].alternatives]
            pick = match_by_length([len(s.answer_ids) for s in good], [len(c) for c in cand_ids])
            if pick != [s.reference_index for s in bad]:
                changed += 1
            for s, j in zip(bad, pick):
                s.answer, s.answer_ids, s.reference_index = s.alternatives[j], cand_ids[j], j
        after = {c: [len(s.answer_ids) for v in qs for s in v if s.label == c] for c in (0, 1)}
        gap_after = [abs(len(a.answer_ids) - len(b.answer_ids)) for v in qs
                     for a, b in zip([s for s in v if s.label == 0], [s for s in v if s.label == 1])]
        out[src] = {"match": match, "questions": len(qs), "candidates_per_question": float(np.mean(n_cand)),
                    "questions_changed": changed,
                    "mean_abs_pair_difference_before": float(np.mean(gap_before)) if gap_before else None,
                    "mean_abs_pair_difference_after": float(np.mean(gap_after)) if gap_after else None,
                    "mean_tokens_before": {LABEL_NAMES[c]: float(np.mean(before[c])) for c in (0, 1) if before[c]},
                    "mean_tokens_after": {LABEL_NAMES[c]: float(np.mean(after[c])) for c in (0, 1) if after[c]}}
    return out


def answer_capture(model, num_samples: int, cfg: HallucinationConfig):
    """The hooks that capture answer tokens in the analysis: the statistics collector (one group
    per sample; no pooled variance, no block influence, ``stats.site``/``sparsity``/``massive``
    from ``cfg``) and, with probes on, the pooled probe features.

    Args:
        model: the causal LM. num_samples: ``N``, samples are groups ``0..N-1``. cfg: the config.

    Returns:
        :class:`eavss.hallucination.capture.Capture`, detached (switched on per forward pass).
    """
    from eavss.hallucination.capture import Capture, PooledFeatures
    from eavss.stats import ActivationStatsCollector

    collector = ActivationStatsCollector(model, site=cfg.stats.site, rule=cfg.stats.sparsity.rule(),
                                         group_names=[str(i) for i in range(num_samples)], pooled=False,
                                         block_influence=False, massive=cfg.stats.massive)
    features = PooledFeatures(model, num_samples, cfg.stats.site) if cfg.probe.enabled else None
    return Capture(collector, features)


def generate_answers(model, suffixes: list[list[int]], prefix, ids: Tokens, cfg: HallucinationConfig, capture=None,
                     sample_indices: list[int] | None = None, stats: dict | None = None, last_token: str = "deferred"):
    """Greedy generation of one prefix group's answers, as the analysis runs it
    (:func:`eavss.hallucination.capture.greedy_generate` with ``cfg.generation`` and
    ``stats.first_answer_tokens``).

    Args:
        suffixes: per prompt, its token ids after the prefix (``ids.suffix``). prefix: the
            prefix's :class:`~eavss.hallucination.capture.PrefixCache` (None: suffixes are whole
            prompts). ids: newline/EOS/pad ids. capture: :func:`answer_capture`'s hooks (None: no
            capture). sample_indices: the sample (group) of each prompt, with ``capture``.
        stats: receives the pass's counts and seconds (see ``greedy_generate``).
        last_token: how the last token of an answer cut at the cap is counted (``greedy_generate``:
            ``deferred``, the analysis's, or ``step``, for benchmarks).

    Returns:
        One :class:`~eavss.hallucination.capture.Generated` per prompt, in input order.
    """
    from eavss.hallucination.capture import greedy_generate

    return greedy_generate(model, suffixes, prefix, max_new_tokens=cfg.generation.max_new_tokens,
                           newline_ids=ids.newline, eos_ids=ids.eos, pad_id=ids.pad,
                           batch_size=cfg.generation.batch_size, capture=capture, sample_indices=sample_indices,
                           progress=cfg.progress, stats=stats, max_counted=cfg.stats.first_answer_tokens,
                           last_token=last_token)


def capture_answers(model, tok, samples: list[Sample], ids: Tokens, cfg: HallucinationConfig,
                    timings: dict) -> tuple[object, object, dict]:
    """Teacher-forced passes, then greedy generation, counting only answer tokens; sets each
    generated sample's answer.

    Returns:
        ``(statistics (one group per sample), probe features or None, pass info)``.
    """
    from eavss.hallucination.capture import PrefixCache, answer_text, teacher_forced_pass

    N = len(samples)
    used_prefixes = sorted({s.prompt.prefix for s in samples})
    caches = {p: PrefixCache(model, ids.prefix[p]) for p in used_prefixes} if cfg.generation.prefix_cache else {}
    capture = answer_capture(model, N, cfg)
    collector, features = capture.collector, capture.features
    passes: dict[str, dict] = {}
    try:
        with timed(timings, "teacher_forced"):
            tf = [s for s in samples if s.kind == "teacher_forced"]
            for p in used_prefixes:
                rows = [(ids.suffix[s.index], s.answer_ids, s.index) for s in tf if s.prompt.prefix == p]
                if rows:
                    passes[f"teacher_forced:{p}"] = teacher_forced_pass(
                        model, rows, caches.get(p), cfg.stats.batch_size, capture, ids.pad, progress=cfg.progress,
                        max_counted=cfg.stats.first_answer_tokens)
        with timed(timings, "generation"):
            gen = [s for s in samples if s.kind == "generated"]
            for p in used_prefixes:
                group = [s for s in gen if s.prompt.prefix == p]
                if not group:
                    continue
                info: dict = {}
                outs = generate_answers(model, [ids.suffix[s.index] for s in group], caches.get(p), ids, cfg,
                                        capture=capture, sample_indices=[s.index for s in group], stats=info)
                passes[f"generation:{p}"] = info
                for s, g in zip(group, outs):
                    s.answer_ids = g.answer_tokens
                    s.stop = g.stop
                    s.answer = answer_text(tok, g)
    finally:
        capture.off()
    return collector.result(), features, passes


def score_layers(samples: list[Sample], stats, cfg: HallucinationConfig, timings: dict | None = None) -> dict:
    """HSAV/HSS/EAVSS, permutation null (p-values and z), the ranking (``scores.rank_by``),
    bootstrap CIs and the variant table.

    ``timings`` (optional) receives the seconds of the parts: ``scores.eavss``,
    ``scores.permutations``, ``scores.bootstrap``, ``scores.variants``.

    Returns:
        ``{"ss": SampleStatistics, "opts": EavssOptions, "result", "perm", "ranked"
        (:func:`eavss.scores.hallucination.rank_layers`), "boot", "variants"}``.
    """
    from threadpoolctl import threadpool_limits

    from eavss.scores.hallucination import (EavssOptions, SampleStatistics, bootstrap_eavss, compute_eavss,
                                            permutation_test, rank_layers, variant_table)

    n_tok = stats.n_tokens()[:, 0]
    for s in samples:  # an answer whose tokens were all cut (should not happen) cannot be scored
        s.n_counted = int(n_tok[s.index])
        if s.label in (0, 1) and n_tok[s.index] == 0:
            s.label = -1
    labels = np.array([s.label if s.label in (0, 1) else -1 for s in samples])  # format failures are not scored
    ss = SampleStatistics(stats, labels, np.array([s.source for s in samples], dtype=object),
                          np.array([f"{s.source}:{s.qid}" for s in samples], dtype=object))
    sc = cfg.scores
    opts = EavssOptions(hsav=sc.hsav, hss=sc.hss, pooling=sc.pooling, normalisation=sc.normalisation, combine=sc.combine,
                        with_avss=sc.with_avss, variance=cfg.stats.variance, min_per_class=sc.min_per_class, top_k=sc.top_k)
    parts = timings if timings is not None else {}
    with threadpool_limits(1):  # small numpy products: one BLAS thread is fastest (and much faster on a busy CPU)
        with timed(parts, "scores.eavss"):
            result = compute_eavss(ss, opts)
        with timed(parts, "scores.permutations"):
            perm = permutation_test(ss, opts, sc.permutations, cfg.seed)
        ranked = rank_layers(result["eavss"], sc.rank_by, perm.get("z_eavss"), sc.top_k)
        by_z = sc.rank_by == "z"
        with timed(parts, "scores.bootstrap"):
            boot = bootstrap_eavss(ss, opts, sc.bootstrap, cfg.seed,
                                   calibration=perm.get("calibration") if by_z else None)
        with timed(parts, "scores.variants"):
            variants = variant_table(ss, opts, rank_by=sc.rank_by, permutations=sc.permutations, seed=cfg.seed)
    return {"ss": ss, "opts": opts, "result": result, "perm": perm, "ranked": ranked, "boot": boot, "variants": variants}


MIN_WORKERS = 4
"""The probes (one per layer and fold) run in worker processes only from this many threads on.
Measured (``benchmarks/RESULTS.md``, issue 10 second pass): on this 2-core CPU two workers were
slower than one process (default limits: 7.8 -> 9.1 s; starting the workers, importing scikit-learn
there and mapping the features cost more than the second core gives); on the H200's 16-core host 15
workers took the probes of the 8B-shape analysis from 7.4 to 4.0 s. The score variants stay in this
process: in workers they went from 1.3 to 2.7 s there (each variant is small)."""


def _workers() -> int:
    """Worker processes for the probes: the run's thread count (``--threads``, or the idle cores it
    chose; :func:`eavss.recipes.common.start`) when it is at least :data:`MIN_WORKERS`, else 1 (in
    this process)."""
    import torch

    n = torch.get_num_threads()
    return n if n >= MIN_WORKERS else 1


def agreement_with_probe(score: np.ndarray, auroc: np.ndarray, k: int) -> dict:
    """Rank agreement of a per-layer score with the probe AUROC, with the warning a reader must see
    when they disagree (Spearman < 0.3 or undefined)."""
    from eavss.scores.agreement import rank_agreement

    a = rank_agreement(score, auroc, k)
    rho, p, L = a["spearman"], a["p_value"], len(auroc)
    kk = min(k, L)
    a["warning"] = None
    if not np.isfinite(rho) or rho < 0.3:
        a["warning"] = (f"EAVSS does NOT track probe separability: Spearman rho = {rho:.2f} (p = {p:.2g}) over {L} "
                        f"layers; top-{kk} overlap {a['top_k_overlap']} (chance {kk * kk / L:.1f}). Treat the EAVSS "
                        "ranking as unvalidated.")
    return a


def probe_check(features, scored: dict, cfg: HallucinationConfig) -> tuple[dict | None, dict | None, dict]:
    """Per-layer linear probes, the agreement of the ranking statistic with them, and the agreement of
    every variant (and of the other ranking statistic).

    Returns:
        ``(probe, agreement, variant_agreement)``; the first two are None when probes are off.
    """
    from eavss.hallucination.probe import probe_layers
    from eavss.scores.agreement import rank_agreement

    if not cfg.probe.enabled:
        return None, None, {}
    ss, result, ranked, k = scored["ss"], scored["result"], scored["ranked"], cfg.scores.top_k
    feats, counts = features.result()
    use = ss.used() & (counts.numpy() > 0)
    probe = probe_layers(feats.numpy()[use], ss.labels[use], ss.clusters[use], ss.strata[use], folds=cfg.probe.folds,
                         C=cfg.probe.C, max_iter=cfg.probe.max_iter, seed=cfg.seed, progress=cfg.progress,
                         site=cfg.stats.site, n_jobs=_workers())
    agree = agreement_with_probe(ranked["score"], probe["auroc"], k)
    agree["ranked_by"] = ranked["rank_by"]
    agree["pooled_auroc"] = {kk: v for kk, v in rank_agreement(ranked["score"], probe["auroc_pooled"], k).items()
                             if kk in ("spearman", "p_value", "top_k_overlap", "verdict")}
    variant_agreement = {}
    candidates = [(name, v["score"]) for name, v in scored["variants"].items() if "score" in v]
    z = scored["perm"].get("z_eavss")
    candidates += [("rank_by=effect (raw EAVSS)", result["eavss"])]
    if z is not None:
        candidates += [("rank_by=z (permutation z of EAVSS)", z)]
    candidates += [("HSAV alone", result["hsav"]), ("HSS alone", result["hss"]), ("AVSS (importance)", result["avss_norm"])]
    for name, values in candidates:
        a = rank_agreement(values, probe["auroc"], k)
        variant_agreement[name] = {"spearman": a["spearman"], "p_value": a["p_value"],
                                   "top_k_overlap": a["top_k_overlap"], "top_k": a["top_k_score"]}
    return probe, agree, variant_agreement


def baseline_check(samples: list[Sample], scored: dict, probe: dict | None, cfg: HallucinationConfig) -> dict | None:
    """Surface baselines (answer length, first tokens, bag of tokens) with the probe's folds, and
    whether the best probe layer beats them (:mod:`eavss.hallucination.baselines`).

    Returns:
        :func:`eavss.hallucination.baselines.surface_baselines`'s dict plus ``"comparison"``
        (:func:`~eavss.hallucination.baselines.compare_with_probe`, None without probes); None when
        ``baselines.enabled`` is false.
    """
    from eavss.hallucination.baselines import compare_with_probe, surface_baselines

    if not cfg.baselines.enabled:
        return None
    ss = scored["ss"]
    use = ss.used()  # the probe's samples: labelled, with counted tokens (features exist exactly for these)
    n_max = cfg.stats.first_answer_tokens
    answers = [list(s.answer_ids[:n_max] if n_max else s.answer_ids) for s, u in zip(samples, use) if u]
    out = surface_baselines(answers, ss.labels[use], ss.clusters[use], ss.strata[use], folds=cfg.probe.folds,
                            seed=cfg.seed, first_tokens=cfg.baselines.first_tokens, C=cfg.baselines.C)
    out["comparison"] = None if probe is None else compare_with_probe(probe["auroc"], probe["auroc_by_source"], out,
                                                                      cfg.baselines.margin)
    return out


def per_layer_rows(scored: dict, probe: dict | None, layer_paths: list[str]) -> list[dict]:
    """The report's per-layer table: class statistics, effects, EAVSS, its permutation z and p
    (``eavss_z``, ``p_eavss``, family-wise ``p_eavss_fwer``), the final ``rank`` (by
    ``scores.rank_by``) and ``rank_effect`` (by raw EAVSS), bootstrap intervals, probe AUROC."""
    result, boot, perm, ranked = scored["result"], scored["boot"], scored["perm"], scored["ranked"]
    top = set(ranked["top_k"])
    rows = []
    for i in range(len(result["eavss"])):
        row = {"layer": i, "module": layer_paths[i] if i < len(layer_paths) else None}
        for key in ("variance_truthful", "variance_hallucinated", "sparsity_truthful", "sparsity_hallucinated",
                    "n_tokens_truthful", "n_tokens_hallucinated", "hsav_signed", "hsav", "hsav_norm", "hss_signed",
                    "hss", "hss_norm", "avss_norm", "eavss"):
            row[key] = result[key][i]
        for key, name in (("z_eavss", "eavss_z"), ("p_eavss", "p_eavss"), ("p_eavss_fwer", "p_eavss_fwer"),
                          ("null_hsav_sd", "hsav_null_sd"), ("null_hss_sd", "hss_null_sd")):
            if perm.get(key) is not None:
                row[name] = perm[key][i]
        row["rank"] = int(ranked["rank"][i])
        row["rank_effect"] = int(result["rank"][i])
        row["top_k"] = i in top
        for key in ("eavss_lo", "eavss_hi", "z_lo", "z_hi", "rank_lo", "rank_hi", "p_top_k"):
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
        rows.append(row)
    return rows


def build_report(cfg: HallucinationConfig, loaded, samples: list[Sample], splits: dict, stats, ids: Tokens,
                 passes: dict, scored: dict, probe, agree, variant_agreement, timings: dict, threads: dict,
                 baselines: dict | None = None, matching: dict | None = None) -> dict:
    """The ``hallucination`` report (see :mod:`eavss.report.hallucination` for its sections)."""
    from eavss.evaluation.judge import judge_rule
    from eavss.models.layers import layer_module_paths
    from eavss.report import hallucination as rep
    from eavss.report.schema import jsonable, new_report

    ss, result, opts = scored["ss"], scored["result"], scored["opts"]
    boot, perm, variants, ranked = scored["boot"], scored["perm"], scored["variants"], scored["ranked"]
    sc = cfg.scores
    L = stats.num_layers
    class_stats = ss.class_statistics()
    report = new_report("hallucination", to_dict(cfg), cfg.seed, loaded.tokenizer)
    report.update({
        "model": model_section(loaded),
        "prompts": {**describe_prompts(), "stop_rule": "greedy; stop at the first generated token whose text contains "
                    "a newline, or at EOS " + str(ids.eos) + f", or after max_new_tokens={cfg.generation.max_new_tokens}; "
                    "'.' and ',' do not stop (they would cut 'Washington, D.C.'); the answer text is the generated "
                    "text before the newline, stripped; the stop token is not an answer token",
                    "generation": {"batch_size": cfg.generation.batch_size, "padding": "left",
                                   "prefix_cache": cfg.generation.prefix_cache, "newline_token_count": len(ids.newline)}},
        "judge": judge_rule(cfg.judge.match, cfg.judge.number_words, cfg.judge.sciq, cfg.judge.format_failure),
        "sources": _source_summary(samples, matching or {}),
        "splits": {"file": "splits.json", "seed": splits["seed"], "fractions": splits["fractions"], "rule": splits["rule"],
                   "counts": {s: {**d["counts"], "used_here": d["n_used_here"]} for s, d in splits["sources"].items()}},
        "samples": {"file": "samples.jsonl", "counted_tokens_by_class": {
                        "truthful": int(class_stats.n_tokens()[0, 0]),
                        "hallucinated": int(class_stats.n_tokens()[1, 0])}, "total": len(samples),
                    "labelled": int(ss.used().sum()), "truthful": int(((ss.labels == 0) & ss.used()).sum()),
                    "hallucinated": int(((ss.labels == 1) & ss.used()).sum())},
        "statistics": {"site": stats.site, "variance_definition": cfg.stats.variance, "sparsity_rule": stats.sparsity_rule,
                       "answer_tokens_counted": "all" if cfg.stats.first_answer_tokens is None
                       else f"first {cfg.stats.first_answer_tokens}",
                       "passes": passes, "class_sums": class_stats.to_dict()},
        "eavss": {"definitions": rep.definitions(opts), "options": to_dict(sc),
                  "rank_by": ranked["rank_by"], "ranking": ranked["ranking"], "top_k": ranked["top_k"],
                  "ranking_effect": result["ranking"], "top_k_effect": result["top_k"], "k": min(sc.top_k, L),
                  "per_layer": per_layer_rows(scored, probe, layer_module_paths(loaded.model)),
                  "per_source": result["per_source"], "degenerate": result["degenerate"],
                  "bootstrap": {k: v for k, v in boot.items() if k in ("resamples", "failed", "ranked_by")},
                  "permutation": {k: v for k, v in perm.items() if k in ("permutations", "p_max_hsav", "p_max_hss",
                                                                         "p_max_eavss")},
                  "variants": variants},
        "probe": None if probe is None else {
            k: probe[k] for k in ("protocol", "n", "n_hallucinated", "folds", "C", "sources_used", "auroc",
                                  "auroc_pooled", "auroc_by_source", "seconds")},
        "agreement": agree,
        "agreement_variants": variant_agreement,
        "baselines": baselines,
        "timings": timings,
        "threads": threads,
    })
    report["warnings"] = rep.warnings(report)
    return jsonable(report)


def write_outputs(out: Path, report: dict, splits: dict, samples: list[Sample]) -> None:
    """Every output file into the (temporary) output folder ``out``."""
    from eavss.io import write_json_atomic, write_text_atomic
    from eavss.report import hallucination as rep
    from eavss.report.schema import jsonable

    write_json_atomic(out / "splits.json", splits)
    write_text_atomic(out / "samples.jsonl", "".join(json.dumps(jsonable(s.record()), ensure_ascii=False) + "\n"
                                                     for s in samples))
    rep.plot_eavss(report, out / "eavss.png")
    rep.plot_separability(report, out / "separability.png")
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", rep.render_markdown(report))


def run(cfg: HallucinationConfig, loaded=None, timings: dict | None = None) -> dict:
    """``eavss hallucination``: the whole analysis, written to ``cfg.out`` atomically.

    Args:
        cfg: the configuration.
        loaded: an already loaded model (:class:`eavss.models.loading.LoadedModel`, e.g. a
            random-weights model of a real shape for a speed benchmark); None: load ``cfg.model``.
            When given, the ``load`` phase is its ``info["load_seconds"]``.
        timings: optional dict that receives the seconds of each phase as it ends (the report's
            ``timings``; pass a dict subclass to watch the phases go by).

    Returns:
        The report dict (also written as ``report.json``).

    Raises:
        EavssError: bad configuration, missing data or model, too few labelled answers, an
        existing output folder without ``overwrite``.
    """
    from eavss.io import atomic_dir

    validate(cfg)
    threads = start(cfg, cfg.model.name if loaded is None else None)
    timings = {} if timings is None else timings
    t_all = time.perf_counter()
    with timed(timings, "data"):  # before the model: fail fast on missing files
        splits, samples = prepare(cfg)
    if loaded is None:
        with timed(timings, "load"):
            loaded = load(cfg.model, cfg.progress)
    else:
        timings["load"] = float(loaded.info.get("load_seconds") or 0.0)
    model, tok = loaded.model, loaded.tokenizer
    with timed(timings, "tokenise"):
        ids = tokenise(samples, model, tok, cfg.generation.prefix_cache, cfg.teacher_forced.max_answer_tokens)
        matching = match_pair_lengths(samples, tok, cfg.teacher_forced.match, cfg.teacher_forced.max_answer_tokens)
    stats, features, passes = capture_answers(model, tok, samples, ids, cfg, timings)
    with timed(timings, "judge"):
        judge_samples(samples, cfg)
    with timed(timings, "scores"):
        scored = score_layers(samples, stats, cfg, timings)
    with timed(timings, "probe"):
        probe, agree, variant_agreement = probe_check(features, scored, cfg)
    if probe is None:
        del timings["probe"]
    with timed(timings, "baselines"):
        baselines = baseline_check(samples, scored, probe, cfg)
    timings["total_before_write"] = time.perf_counter() - t_all
    report = build_report(cfg, loaded, samples, splits, stats, ids, passes, scored, probe, agree, variant_agreement,
                          timings, threads, baselines, matching)
    t0 = time.perf_counter()
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        report["timings"]["write"] = time.perf_counter() - t0
        report["timings"]["total"] = time.perf_counter() - t_all
        write_outputs(tmp, report, splits, samples)
    timings["write"] = time.perf_counter() - t0  # the caller's copy: the files written (the report's own
    timings["total"] = time.perf_counter() - t_all  # values are taken before it is written)
    return report


def summary(report: dict, cfg: HallucinationConfig) -> list[str]:
    """Terminal summary, then where the outputs are."""
    from eavss.report.hallucination import summary as lines

    return lines(report) + [f"outputs: {cfg.out}/report.json, report.md, eavss.png, separability.png, splits.json, "
                            f"samples.jsonl ({report['timings']['total']:.0f} s)"]
