"""``eavss mitigate``: contrastive training of the hallucination-prone layers, measured on the suite.

Reads an ``eavss hallucination`` folder (``--from``: ``report.json`` with the EAVSS ranking, top-k
and probe AUROC per layer; ``splits.json`` with every question's score/train/eval part), trains only
the selected decoder layers of the *same* model (full or LoRA restricted to them) with InfoNCE on
those layers' answer representations (truthful answer = positive, hallucinated answers of the same
question = negatives) plus a weighted LM loss on the truthful answers, on the ``train`` part only,
and measures the model before and after on the hallucination suite's ``eval`` part (NQ-open,
TriviaQA, SciQ, TruthfulQA, WikiQA; collateral WikiText-2 perplexity and SST-2), every number with a
bootstrap interval and every before/after difference with a paired one.

Steps of :func:`run`:

1. :func:`read_analysis` -- the analysis report and splits, checked; :func:`plan_variants` -- the
   layers of every variant (refused before anything loads: k = 0, k larger than the depth, an index
   out of range); :func:`training_questions` -- train-part ids per source (an empty part refused);
2. load the model and :func:`check_model` (another model than the analysis' is refused);
3. :func:`own_wrong_answers` -- the model's greedy answers to NQ-open/TriviaQA train questions,
   judged; the wrong ones become negatives; :func:`build_examples` -- contrastive examples;
4. :func:`evaluate` the untrained model (the "before" of every comparison, and control (e));
5. per variant (:func:`train_variant`): select the trainable parameters, train (seeded,
   checkpointed every epoch, resumable), merge, evaluate, restore the untrained weights;
6. :func:`compare` -- absolute and relative change per dataset with paired bootstrap intervals;
7. :func:`build_report` and the outputs, written atomically: ``report.json`` (kind ``mitigate``),
   ``report.md``, ``model/`` (plain ``from_pretrained`` folder, LoRA merged), ``adapter/`` (LoRA),
   ``train_examples.jsonl``, ``own_answers.jsonl``, ``question_ids.json``.

Variants: ``main`` (the analysis' top-k EAVSS layers, ``mitigate.k``, or ``mitigate.layers``);
``--controls`` adds, with the same data, steps and hyper-parameters, ``random_s<seed>`` (k random
layers), ``lowest`` (the k lowest-EAVSS layers), ``probe`` (the k best probe-AUROC layers),
``lora_all`` (LoRA on every layer, contrasted at the main layers) and ``none`` (no training);
``--lodo`` trains, for each of the five datasets, on the other sources' train parts only and
evaluates on that dataset's eval part (``main``, random, ``probe``, ``none``).

Interrupted runs resume: checkpoints (every epoch, ``train.checkpoint_every_steps``) and finished
evaluations (per variant and task) live in the work folder (``work_dir``, default ``OUT.work``); running the same command
again continues from them (the settings must match; ``--restart`` starts over) and gives the same
weights as an uninterrupted run. The work folder is removed after a successful run (``keep_work``).

Definitions and defaults: ``docs/method.md``, "Targeted training".
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eavss.config import ModelSection, RunOptions, option, section, to_dict, validate
from eavss.errors import EavssError
from eavss.recipes.common import cached_json as _cached
from eavss.recipes.common import check_work_dir, load, model_section, start, timed

_SOURCES = "eavss.data.qa:QA_SOURCES"
_SUITE = ("nq_open", "triviaqa", "sciq_mc", "truthfulqa", "wikiqa", "ppl", "sst2")
_DATASETS = ("nq_open", "sciq", "triviaqa", "truthfulqa", "wikiqa")
_CONTROLS = ("random", "lowest", "probe", "lora_all", "none")
_LODO_VARIANTS = ("main", "random", "probe", "none")
_ALL_SOURCES = ("truthfulqa", "halueval", "nq_open", "triviaqa", "sciq", "wikiqa")

# ---------------------------------------------------------------------------------------------
# config


@dataclass
class MitigateModelSection(ModelSection):
    """The model to train: the analysis' model (checked by model id and sha256)."""

    name: str | None = option(None, "the model to train; must be the model the analysis (--from) was run on, compared "
                              "by sha256 (default: the analysis' model)", flag="--model")


@dataclass
class LayersSection:
    """Which layers train, and how (:mod:`eavss.training.params`)."""

    k: int = option(5, "train the analysis' top-k EAVSS layers (eavss.ranking[:k])", flag="--k", min=1)
    layers: list[int] | None = option(None, "explicit 0-based layer list to train instead of the top-k (e.g. "
                                      "mitigate.layers=[15,16,17]); its length is the k of the controls")
    method: str = option("lora", "lora (peft LoRA adapters on the selected layers only) | full (every parameter of "
                         "the selected layers)", flag="--method", choices=("lora", "full"))
    lora_r: int = option(8, "LoRA rank", min=1)
    lora_alpha: float = option(16.0, "LoRA alpha (scale alpha/r)", min=1e-12)
    lora_dropout: float = option(0.0, "LoRA dropout on the adapter input (0 keeps training deterministic given the "
                                 "seed)", min=0, max=0.99)
    target_modules: list[str] | None = option(None, "LoRA target modules inside a decoder layer; null = every linear "
                                              "map (attention + MLP)")


@dataclass
class DataSection:
    """Training examples: the ``train`` part of the analysis split only (:mod:`eavss.training.pairs`)."""

    sources: list[str] = option(help="training sources (train part only): truthfulqa (incorrect answers), halueval "
                                "(hallucinated answer), nq_open / triviaqa (the model's own wrong answers), sciq "
                                "(distractors), wikiqa (incorrect sentences)", flag="--sources", choices=_SOURCES,
                                factory=lambda: list(_ALL_SOURCES))
    limits: dict[str, int | None] = option(
        help="train-part questions per source, the first N in split-hash order (null = the whole train part); --limit N "
             "sets every source", flag="--limit", broadcast="data.sources", keys=_SOURCES, min=1,
        factory=lambda: {s: 16 for s in _ALL_SOURCES})
    own_answers: list[str] = option(help="sources whose negatives are the model's own wrong greedy answers to the "
                                    "train-part questions (generated and judged by exact match; empty = none)",
                                    choices=_SOURCES, factory=lambda: ["nq_open", "triviaqa"])
    prompt: str = option("few_shot", "training prompt: few_shot (the analysis prompt: 'qa' prefix + 'Q: {q}?\\nA:') | "
                         "plain ('Q: {q}\\nA:', cheaper)", choices=("few_shot", "plain"))
    max_negatives: int = option(4, "hallucinated answers per example (each costs one more sequence)", min=1)
    max_positives: int = option(1, "examples per question (one per truthful answer; the first is the curated best)",
                                min=1)
    max_length: int = option(256, "tokens per training sequence (an answer keeps at most half)", min=8)
    generation_batch_size: int = option(32, "own answers: generation batch size", min=1)
    max_new_tokens: int = option(16, "own answers: answer length cap in tokens (stop at a newline or EOS)", min=1)
    number_words: bool = option(True, "own answers: the judge maps number words to digits (two = 2)")


@dataclass
class ObjectiveSection:
    """InfoNCE on the trained layers' answer representations + weighted LM loss (:mod:`eavss.training.contrastive`)."""

    temperature: float = option(0.1, "InfoNCE temperature tau (cosine similarities / tau)", min=1e-6)
    lm_weight: float = option(1.0, "weight of the next-token loss on the truthful answers (0 = InfoNCE only)", min=0)
    site: str = option("resid_post", "representation: resid_post (layer output) | resid_delta (output - input)",
                       choices=("resid_post", "resid_delta"))
    answer_pooling: str = option("mean", "answer tokens -> one vector: mean | last", choices=("mean", "last"))
    anchor_pooling: str = option("last", "prompt -> anchor: last (the prompt's last token) | mean", choices=("last", "mean"))
    layer_reduction: str = option("mean", "selected layers -> one vector: mean | normalized_mean | concat",
                                  choices=("mean", "normalized_mean", "concat"))


@dataclass
class TrainSection:
    """The training loop (:func:`eavss.training.loop.train`): AdamW, seeded, resumable."""

    epochs: int | None = option(1, "passes over the examples (ignored when steps is set)", flag="--epochs", min=1)
    steps: int | None = option(None, "optimiser steps instead of epochs (wins over epochs)", flag="--steps", min=1)
    batch_size: int = option(4, "examples per micro-batch (each is 1 + negatives sequences)", min=1)
    grad_accum: int = option(1, "micro-batches per optimiser step", min=1)
    lr: float = option(1e-4, "peak learning rate (1e-4 suits LoRA; ~1e-5 for full)", flag="--lr", min=1e-12)
    weight_decay: float = option(0.0, "AdamW weight decay on matrices", min=0)
    max_grad_norm: float | None = option(1.0, "global gradient-norm clip (null = off)", min=1e-12)
    warmup_steps: int = option(0, "linear warm-up steps", min=0)
    schedule: str = option("linear", "after warm-up: linear | cosine | constant", choices=("linear", "cosine", "constant"))
    dtype: str | None = option(None, "training dtype: float32 | bfloat16 (bf16 weights and compute, float32 masters "
                               "and optimiser state); null = the model's dtype. A float32 model trained in bf16 is "
                               "cast to bf16 first, so before and after are measured in the same dtype",
                               choices=("float32", "bfloat16"))
    checkpoint_every_steps: int | None = option(None, "also checkpoint every N steps (epochs always checkpoint)", min=1)

    def check(self) -> None:
        if self.epochs is None and self.steps is None:
            raise EavssError("set train.epochs or train.steps (e.g. --epochs 2 or --steps 100)")


@dataclass
class MitigateEvalSection:
    """The hallucination suite on the ``eval`` part (:mod:`eavss.evaluation.hallucination_suite`)."""

    tasks: list[str] = option(help="nq_open, triviaqa, sciq_mc, truthfulqa, wikiqa (the five datasets) and the collateral "
                              "ppl (WikiText-2 token perplexity), sst2", choices=_SUITE, factory=lambda: list(_SUITE))
    limits: dict[str, int | None] = option(
        help="questions per task, the first N of the eval part in split-hash order (null = all; ppl: windows, sst2: "
             "sentences; a task left out keeps its default); --eval-limit N sets every task of eval.tasks", flag="--eval-limit", broadcast="eval.tasks", keys=_SUITE, min=1,
        factory=lambda: {"nq_open": 24, "triviaqa": 24, "sciq_mc": 24, "truthfulqa": 8, "wikiqa": 16, "ppl": 2,
                         "sst2": 48})
    batch_size: int = option(8, "evaluation batch size", min=1)
    max_length: int | None = option(None, "lm-eval context window; null = min(2048, the model's context)", min=16)
    max_gen_toks: int = option(16, "nq_open / triviaqa: answer length cap in tokens", min=1)
    truthfulqa_generation: bool = option(True, "truthfulqa: also generate and judge answers (BLEU/ROUGE vs references)")
    truthfulqa_max_gen_toks: int = option(32, "truthfulqa generation: answer length cap", min=1)
    truthfulqa_mc_file: str = option("current", "truthfulqa MC data: current (2021 revision, matches the CSV) | v0 "
                                     "(the release lm-eval downloads)", choices=("current", "v0"))
    sciq_support: bool = option(False, "sciq_mc: show the support paragraph (lm-eval's sciq; default closed book)")
    ppl_context_length: int = option(1024, "ppl: tokens per window", min=2)
    resamples: int = option(1000, "bootstrap resamples of every interval", min=10)
    level: float = option(0.95, "confidence level of every interval", min=0.5, max=0.999)


@dataclass
class ControlsSection:
    """Controls with the same budget (``--controls``)."""

    enabled: bool = option(False, "also train the controls (same data, steps, hyper-parameters) and compare",
                           flag="--controls", action="store_true")
    variants: list[str] = option(help="random (k random layers per seed), lowest (k lowest EAVSS), probe (k best probe "
                                 "AUROC), lora_all (LoRA on all layers), none (no training)", choices=_CONTROLS,
                                 factory=lambda: list(_CONTROLS))
    random_seeds: list[int] = option(help="seeds of the random-layer controls", factory=lambda: [0, 1, 2])
    lora_all_lr: float | None = option(None, "learning rate of lora_all (null = train.lr)", min=1e-12)
    save_models: bool = option(False, "also save every control's merged model (controls/NAME/)")


@dataclass
class LodoSection:
    """Leave-one-dataset-out (``--lodo``): train without a dataset, evaluate on it."""

    enabled: bool = option(False, "for each dataset, train on the other sources' train parts and evaluate on its eval "
                           "part", flag="--lodo", action="store_true")
    datasets: list[str] = option(help="held-out datasets (QA source names): nq_open, sciq, triviaqa, truthfulqa, wikiqa",
                                 choices=_DATASETS, factory=lambda: list(_DATASETS))
    variants: list[str] = option(help="main (the main layers), random, probe, none", choices=_LODO_VARIANTS,
                                 factory=lambda: list(_LODO_VARIANTS))
    random_seeds: list[int] = option(help="seeds of the random-layer variant", factory=lambda: [0])


@dataclass
class MitigateConfig(RunOptions):
    """``eavss mitigate``. Defaults are a CPU smoke run (16 train questions per source, one epoch, 8-48 eval
    items per task; ~10 minutes on 2 busy cores); the GPU run scales them up (src/eavss/configs/mitigate.yaml)."""

    out: str = option("runs/mitigate", "output folder (refused if it exists and is not empty, unless --overwrite)",
                      flag="--out")
    source: str | None = option(None, "output folder of `eavss hallucination` (report.json, splits.json)", flag="--from",
                                required=True)
    model: MitigateModelSection = section(MitigateModelSection)
    mitigate: LayersSection = section(LayersSection)
    data: DataSection = section(DataSection)
    objective: ObjectiveSection = section(ObjectiveSection)
    train: TrainSection = section(TrainSection)
    eval: MitigateEvalSection = section(MitigateEvalSection)
    controls: ControlsSection = section(ControlsSection)
    lodo: LodoSection = section(LodoSection)
    save_model: bool = option(True, "write model/ (merged) and adapter/ (LoRA) of the main variant",
                              flag="--no-save-model", action="store_false")
    work_dir: str | None = option(None, "where checkpoints and finished evaluations are kept until the run ends "
                                  "(default OUT.work, beside --out)")
    keep_work: bool = option(False, "keep the work folder after a successful run")
    resume: bool = option(True, "continue an interrupted run from the work folder; --restart clears it first",
                          flag="--restart", action="store_false")

    def check(self) -> None:
        if not self.data.sources:
            raise EavssError("data.sources is empty; name at least one training source")
        if len(set(self.data.sources)) != len(self.data.sources):
            raise EavssError(f"data.sources lists a source twice: {self.data.sources}")
        if not self.eval.tasks:
            raise EavssError("eval.tasks is empty; name at least one suite task")
        if self.controls.enabled and "random" in self.controls.variants and not self.controls.random_seeds:
            raise EavssError("controls.random_seeds is empty; give at least one seed or drop random from controls.variants")
        if any(s < 0 for s in self.controls.random_seeds + self.lodo.random_seeds):
            raise EavssError("random seeds must be >= 0")


# ---------------------------------------------------------------------------------------------
# step 1: the analysis, the variants, the training questions


def say(cfg: MitigateConfig, msg: str) -> None:
    """A progress line on stderr (only with progress on)."""
    if cfg.progress:
        print(f"[mitigate] {msg}", file=sys.stderr, flush=True)


def read_analysis(folder: str) -> dict:
    """The analysis report (kind ``hallucination``) and its splits, with the keys this command reads.

    Returns:
        ``{"dir", "report", "splits", "model_id", "file_sha256", "num_layers", "ranking", "top_k",
        "probe_auroc" (list or None), "fingerprint"}``.

    Raises:
        EavssError: not an ``eavss hallucination`` folder, or a report without the EAVSS ranking.
    """
    from eavss.hallucination.splits import load_splits
    from eavss.report.schema import read_report

    d = Path(folder)
    rep = read_report(d, kinds=("hallucination",))
    splits = load_splits(d)
    ev = rep.get("eavss") or {}
    ranking, per_layer = ev.get("ranking"), ev.get("per_layer")
    if not isinstance(ranking, list) or not ranking or not isinstance(per_layer, list) or len(per_layer) != len(ranking):
        raise EavssError(f"{d / 'report.json'} has no EAVSS ranking (eavss.ranking, eavss.per_layer); re-run "
                         "`eavss hallucination`")
    L = len(ranking)
    if sorted(ranking) != list(range(L)):
        raise EavssError(f"{d / 'report.json'}: eavss.ranking is not a permutation of the {L} layers")
    m = rep.get("model") or {}
    if not m.get("model_id"):
        raise EavssError(f"{d / 'report.json'} names no model (model.model_id); re-run `eavss hallucination`")
    auroc = [r.get("probe_auroc") for r in per_layer]
    digest = hashlib.sha256((d / "report.json").read_bytes() + (d / "splits.json").read_bytes()).hexdigest()
    return {"dir": str(d.resolve()), "report": rep, "splits": splits, "model_id": m["model_id"],
            "file_sha256": m.get("file_sha256"), "num_layers": L, "ranking": [int(i) for i in ranking],
            "top_k": [int(i) for i in ev.get("top_k") or []],
            "probe_auroc": None if any(a is None for a in auroc) else [float(a) for a in auroc],
            "fingerprint": digest}


@dataclass
class Variant:
    """One trained (or untrained) model of the comparison.

    Attributes:
        name: ``main``, ``random_s0``, ``lowest``, ``probe``, ``lora_all``, ``none``; LODO variants
            are ``lodo-<dataset>-<name>``.
        kind: main | random | lowest | probe | lora_all | none. layers: trained decoder layers.
        contrast_layers: layers whose representations enter InfoNCE. method: lora | full.
        lr: learning rate. sources: training sources. tasks: evaluation tasks.
        group: in_distribution | lodo. heldout: the held-out dataset (LODO). seed: random-layer seed.
        note: why these layers.
    """

    name: str
    kind: str
    layers: list[int]
    contrast_layers: list[int]
    method: str
    lr: float
    sources: list[str]
    tasks: list[str]
    group: str = "in_distribution"
    heldout: str | None = None
    seed: int | None = None
    note: str = ""

    @property
    def trains(self) -> bool:
        return self.kind != "none"


def _top_by(values: list[float], k: int) -> list[int]:
    """Indices of the k largest values (ties: lower index first), sorted."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return sorted(order[:k])


def plan_variants(cfg: MitigateConfig, analysis: dict) -> tuple[list[Variant], list[str]]:
    """The variants to train and evaluate, checked against the model's depth before anything loads.

    Returns:
        ``(variants, warnings)``; the first is always ``main``.

    Raises:
        EavssError: k larger than the depth, or an explicit layer out of range / repeated.
    """
    from eavss.training.params import validate_layers

    L = analysis["num_layers"]
    m = cfg.mitigate
    if m.layers is not None:
        main_layers = validate_layers(m.layers, L)
        note = "mitigate.layers (explicit)"
    else:
        if m.k > L:
            raise EavssError(f"mitigate.k={m.k} is larger than the model's {L} decoder layers; pass k <= {L}")
        main_layers = sorted(analysis["ranking"][: m.k])
        note = f"top-{m.k} EAVSS layers of the analysis (eavss.ranking[:{m.k}])"
    k = len(main_layers)
    tasks = list(cfg.eval.tasks)
    sources = list(cfg.data.sources)
    warns: list[str] = []
    base = dict(method=m.method, lr=cfg.train.lr, sources=sources, tasks=tasks)
    out = [Variant("main", "main", main_layers, main_layers, note=note, **base)]

    def random_variant(seed: int, name: str, **kw) -> Variant | None:
        from eavss.prune.baselines import random_layers

        if k >= L:
            warns.append(f"random-layer control {name} skipped: k={k} leaves no layer out of {L}")
            return None
        lay = random_layers(L, k, seed)
        return Variant(name, "random", lay, lay, seed=seed, note=f"{k} random layers (numpy default_rng({seed}))", **kw)

    def probe_variant(name: str, **kw) -> Variant | None:
        if analysis["probe_auroc"] is None:
            warns.append(f"probe control {name} skipped: the analysis has no probe AUROC per layer (run it without --no-probe)")
            return None
        lay = _top_by(analysis["probe_auroc"], k)
        return Variant(name, "probe", lay, lay, note=f"the {k} layers with the best probe AUROC", **kw)

    if cfg.controls.enabled:
        c = cfg.controls
        for kind in c.variants:
            if kind == "random":
                for s in c.random_seeds:
                    v = random_variant(s, f"random_s{s}", **base)
                    if v:
                        out.append(v)
            elif kind == "lowest":
                lay = sorted(analysis["ranking"][-k:])
                out.append(Variant("lowest", "lowest", lay, lay, note=f"the {k} lowest-EAVSS layers", **base))
            elif kind == "probe":
                v = probe_variant("probe", **base)
                if v:
                    out.append(v)
            elif kind == "lora_all":
                out.append(Variant("lora_all", "lora_all", list(range(L)), main_layers, "lora",
                                   cfg.controls.lora_all_lr or cfg.train.lr, sources, tasks,
                                   note="LoRA on every layer, InfoNCE at the main layers (the same objective)"))
            elif kind == "none":
                out.append(Variant("none", "none", [], [], m.method, cfg.train.lr, sources, tasks, note="no training"))
    if cfg.lodo.enabled:
        from eavss.evaluation.hallucination_suite import TASK_OF_SOURCE

        for d in cfg.lodo.datasets:
            rest = [s for s in sources if s != d]
            if not rest:
                warns.append(f"LODO without {d} skipped: no other training source")
                continue
            kw = dict(method=m.method, lr=cfg.train.lr, sources=rest, tasks=[TASK_OF_SOURCE[d]], group="lodo", heldout=d)
            for kind in cfg.lodo.variants:
                pre = f"lodo-{d}-"
                if kind == "main":
                    out.append(Variant(pre + "main", "main", main_layers, main_layers, note=note, **kw))
                elif kind == "random":
                    for s in cfg.lodo.random_seeds:
                        v = random_variant(s, f"{pre}random_s{s}", **kw)
                        if v:
                            out.append(v)
                elif kind == "probe":
                    v = probe_variant(pre + "probe", **kw)
                    if v:
                        out.append(v)
                elif kind == "none":
                    out.append(Variant(pre + "none", "none", [], [], note="no training", **kw))
    return out, warns


def training_questions(cfg: MitigateConfig, splits: dict, items: dict[str, list]) -> tuple[dict[str, list[str]], dict]:
    """Train-part question ids per source (the first ``data.limits[source]`` in split-hash order).

    Sources ``splits.json`` lists use its train part; a source it does not list (an analysis run
    without it) gets the same rule with the file's seed and fractions. Every id is checked to be in
    the train part and in neither the score nor the eval part.

    Returns:
        ``({source: [ids]}, {source: {"train_part", "used", "origin"}})``.

    Raises:
        EavssError: a source whose train part is empty, or an id outside the train part (a leak).
    """
    from eavss.hallucination.splits import (
        PARTS,
        assign_part,
        check_disjoint,
        split_source,
    )

    check_disjoint(splits)
    seed = int(splits.get("seed", 0))
    fr = tuple(float(splits["fractions"][p]) for p in PARTS)
    out, info = {}, {}
    for src in cfg.data.sources:
        d = splits["sources"].get(src)
        if d is not None:
            ids, origin = list(d["parts"]["train"]), "splits.json"
        else:
            ids, origin = split_source(src, [it.qid for it in items[src]], seed, fr)["train"], "split rule (not in splits.json)"
        if not ids:
            raise EavssError(f"the train part of source {src} is empty in {cfg.source}/splits.json (split.train = "
                             f"{fr[1]}); nothing to train on: drop {src} from data.sources or re-run the analysis with "
                             "a train share")
        lim = cfg.data.limits.get(src)
        used = ids[:lim] if lim else ids
        bad = [q for q in used if assign_part(seed, src, q, fr) != "train"]
        if d is not None:
            other = set(d["parts"]["score"]) | set(d["parts"]["eval"])
            bad += [q for q in used if q in other]
        if bad:
            raise EavssError(f"splits leak: training id {bad[0]} of {src} is not in the train part; the splits file was "
                             "edited or comes from another eavss version")
        out[src] = used
        info[src] = {"train_part": len(ids), "used": len(used), "origin": origin}
    return out, info


def load_items(cfg: MitigateConfig) -> dict[str, list]:
    """Every question of the training sources (and of the suite's datasets, for the leakage check)."""
    from eavss.data.qa import load_source

    return {src: load_source(src, cfg.data_dir) for src in dict.fromkeys(cfg.data.sources)}


# ---------------------------------------------------------------------------------------------
# step 2: the model


def check_model(analysis: dict, loaded, requested: str | None) -> None:
    """Refuse a model other than the analysis' (sha256, or the id when a sha256 is missing) or of another depth."""
    got_sha, want_sha = loaded.info.get("file_sha256"), analysis["file_sha256"]
    name = requested or analysis["model_id"]
    if want_sha and got_sha:
        if want_sha != got_sha:
            raise EavssError(f"the analysis in {analysis['dir']} was made on {analysis['model_id']} (sha256 "
                             f"{want_sha[:16]}…), but {name} has sha256 {got_sha[:16]}…; run `eavss hallucination` on "
                             "this model first, or leave --model out")
    elif str(name) != str(analysis["model_id"]):
        raise EavssError(f"the analysis in {analysis['dir']} was made on {analysis['model_id']}, not {name} (no sha256 "
                         "to compare); leave --model out or analyse this model first")
    if loaded.info["num_layers"] != analysis["num_layers"]:
        raise EavssError(f"{name} has {loaded.info['num_layers']} decoder layers but the analysis ranks "
                         f"{analysis['num_layers']}; run `eavss hallucination` on this model first")


# ---------------------------------------------------------------------------------------------
# step 3: examples


def own_wrong_answers(model, tok, items: dict[str, list], ids: dict[str, list[str]], cfg: MitigateConfig) -> tuple[list, list]:
    """The model's greedy answers to the train-part questions of ``data.own_answers`` sources, judged
    by exact match (:func:`eavss.evaluation.judge.match_answer`; the analysis' judge); the wrong,
    non-empty ones are returned as negatives.

    Same prompt, stop rule and generation code as the analysis (:func:`eavss.hallucination.capture.greedy_generate`:
    the few-shot ``qa`` prefix cached once, batched left-padded greedy decoding, stop at a newline or EOS).

    Returns:
        ``(own [(qid, answer)], records [{source, qid, question, answer, correct, detail, stop}])``.
    """
    from eavss.evaluation.judge import match_answer
    from eavss.hallucination.capture import (
        PrefixCache,
        answer_text,
        eos_token_ids,
        greedy_generate,
        newline_token_ids,
    )
    from eavss.hallucination.prompts import PREFIXES, qa_prompt

    srcs = [s for s in cfg.data.own_answers if s in ids]
    if not srcs:
        return [], []
    cache = PrefixCache(model, tok(PREFIXES["qa"], add_special_tokens=True)["input_ids"])
    nl, eos = newline_token_ids(tok), eos_token_ids(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    own, records = [], []
    for src in srcs:
        by_id = {it.qid: it for it in items[src]}
        its = [by_id[q] for q in ids[src]]
        suffixes = [tok(qa_prompt(it.question).suffix, add_special_tokens=False)["input_ids"] for it in its]
        outs = greedy_generate(model, suffixes, cache, max_new_tokens=cfg.data.max_new_tokens, newline_ids=nl, eos_ids=eos,
                               pad_id=pad, batch_size=cfg.data.generation_batch_size, progress=cfg.progress)
        for it, g in zip(its, outs):
            ans = answer_text(tok, g)
            r = match_answer(ans, it.golds, "exact", cfg.data.number_words)
            records.append({"source": src, "qid": it.qid, "question": it.question, "answer": ans,
                            "correct": bool(r["correct"]), "detail": r["detail"], "stop": g.stop})
            if ans and not r["correct"]:
                own.append((it.qid, ans))
    return own, records


def build_examples(cfg: MitigateConfig, items: dict[str, list], ids: dict[str, list[str]], own: list) -> tuple[dict, dict]:
    """Contrastive examples per source (:func:`eavss.training.pairs.build_contrastive_examples`).

    Returns:
        ``({source: [ContrastiveExample]}, {source: counts})``.
    """
    from eavss.training.pairs import build_contrastive_examples

    own_by_q = {}
    for q, a in own:
        own_by_q.setdefault(q, []).append((q, a))
    per_source, stats = {}, {}
    for src, qids in ids.items():
        by_id = {it.qid: it for it in items[src]}
        its = [by_id[q] for q in qids]
        mine = [p for q in qids for p in own_by_q.get(q, [])]
        ex, st = build_contrastive_examples(its, own_wrong_answers=mine, max_positives=cfg.data.max_positives,
                                            max_negatives=cfg.data.max_negatives, strip_trailing_period=True)
        per_source[src] = ex
        stats[src] = st
    return per_source, stats


def prompt_template(kind: str):
    """The training prompt: the analysis' few-shot prompt (``few_shot``) or plain ``Q: {q}\\nA:``."""
    if kind == "plain":
        from eavss.training.pairs import DEFAULT_PROMPT_TEMPLATE

        return DEFAULT_PROMPT_TEMPLATE
    from eavss.hallucination.prompts import qa_prompt

    return lambda q: qa_prompt(q).text


# ---------------------------------------------------------------------------------------------
# steps 4-5: evaluate, train


def evaluate(model, tok, cfg: MitigateConfig, tasks: list[str], max_length: int) -> dict:
    """The suite on the eval part of the analysis split (:func:`eavss.evaluation.hallucination_suite.evaluate_suite`)."""
    from eavss.evaluation.hallucination_suite import evaluate_suite

    e = cfg.eval
    opts = {"nq_open": {"max_gen_toks": e.max_gen_toks}, "triviaqa": {"max_gen_toks": e.max_gen_toks},
            "truthfulqa": {"generation": e.truthfulqa_generation, "max_gen_toks": e.truthfulqa_max_gen_toks,
                           "mc_file": e.truthfulqa_mc_file},
            "sciq_mc": {"support": e.sciq_support}, "ppl": {"context_length": e.ppl_context_length}}
    limits = {**MitigateEvalSection().limits, **e.limits}  # a task the config's mapping leaves out keeps its default
    return evaluate_suite(model, tok, tasks, limits=limits, splits=str(Path(cfg.source) / "splits.json"), part="eval",
                          data_dir=cfg.data_dir, batch_size=e.batch_size, seed=cfg.seed, max_length=max_length,
                          task_options={t: opts[t] for t in tasks if t in opts}, resamples=e.resamples, level=e.level,
                          progress=cfg.progress)


def evaluate_cached(model, tok, cfg: MitigateConfig, tasks: list[str], max_length: int, folder: Path) -> dict:
    """:func:`evaluate` task by task, each result kept in ``folder/TASK.json``: an interrupted
    evaluation resumes at its first unfinished task (each task must fit in one sitting)."""
    from eavss.io import write_json_atomic
    from eavss.report.schema import jsonable

    out = {}
    for t in tasks:
        f = folder / f"{t}.json"
        r = _cached(f)
        if r is None:
            r = jsonable(evaluate(model, tok, cfg, [t], max_length)[t])
            write_json_atomic(f, r)
        out[t] = r
    return out


def step_callback(variant: str, info: dict) -> None:
    """Called after every optimiser step of every variant (a hook: tests interrupt training here)."""


def train_variant(model, tok, v: Variant, tokenized: list, cfg: MitigateConfig, ckpt_dir: Path, train_dtype: str,
                  adapter_dir: Path | None) -> tuple[Any, dict]:
    """Select the variant's trainable parameters, train, save the LoRA adapter, merge.

    Returns:
        ``(merged model (the same object as ``model``), summary)``.
    """
    import torch

    from eavss.training.contrastive import contrastive_loss_fn
    from eavss.training.loop import make_batches_fn, train
    from eavss.training.pairs import collate_contrastive
    from eavss.training.params import merge_for_save, select_trainable

    m = cfg.mitigate
    torch.manual_seed(cfg.seed)  # LoRA's A matrices: the same initialisation in every run (and then resumed)
    wrapped, sel = select_trainable(model, v.layers, v.method, lora_r=m.lora_r, lora_alpha=m.lora_alpha,
                                    lora_dropout=m.lora_dropout, target_modules=m.target_modules)
    o = cfg.objective
    loss_fn = contrastive_loss_fn(v.contrast_layers, temperature=o.temperature, lm_weight=o.lm_weight, site=o.site,
                                  answer_pooling=o.answer_pooling, anchor_pooling=o.anchor_pooling,
                                  layer_reduction=o.layer_reduction)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches_fn = make_batches_fn(tokenized, cfg.train.batch_size, lambda xs: collate_contrastive(xs, pad))
    t = cfg.train
    result = train(wrapped, batches_fn, loss_fn, steps=t.steps, epochs=None if t.steps else t.epochs, lr=v.lr, weight_decay=t.weight_decay,
                   grad_accum=t.grad_accum, max_grad_norm=t.max_grad_norm, warmup_steps=t.warmup_steps,
                   schedule=t.schedule, seed=cfg.seed, dtype=train_dtype, checkpoint_dir=ckpt_dir,
                   checkpoint_every_epoch=True, checkpoint_every_steps=t.checkpoint_every_steps, resume=True,
                   progress=cfg.progress, callback=lambda info: step_callback(v.name, info))
    if adapter_dir is not None and v.method == "lora":
        wrapped.save_pretrained(str(adapter_dir))
    merged = merge_for_save(wrapped)
    summary = {k: sel[k] for k in ("method", "layers", "layers_path", "trainable_parameters", "total_parameters",
                                   "trainable_fraction") if k in sel}
    for k in ("target_modules", "lora_r", "lora_alpha", "lora_dropout", "peft_version"):
        if k in sel:
            summary[k] = sel[k]
    summary["adapted_modules"] = len(sel.get("adapted_modules", [])) if v.method == "lora" else None
    summary.update({k: result[k] for k in ("steps", "total_steps", "epochs_completed", "loss_history", "lr_history",
                                           "metrics_history", "tokens", "seconds", "tokens_per_second", "peak_memory_bytes",
                                           "peak_memory_kind", "resumed_from_step", "dtype", "master_dtype")})
    return merged, summary


# ---------------------------------------------------------------------------------------------
# the work folder (resume)


def work_folder(cfg: MitigateConfig) -> Path:
    """``work_dir``, or ``OUT.work`` beside the output folder (:func:`eavss.recipes.common.work_folder`)."""
    from eavss.recipes.common import work_folder as folder

    return folder(cfg.out, cfg.work_dir)


_NOT_IN_FINGERPRINT = {"out", "overwrite", "progress", "threads", "work_dir", "keep_work", "resume", "save_model",
                       "source"}  # the analysis enters by the digest of its files, not by how its path is spelled


def fingerprint_inputs(cfg: MitigateConfig, analysis: dict, model_sha: str | None) -> dict:
    """What a resumed run must share with the interrupted one: the config (less output and display
    settings and the controls/LODO switches, which add variants without changing the others), the
    analysis files and the model (:func:`eavss.recipes.common.fingerprint_settings`): the work folder's key."""
    from eavss.recipes.common import fingerprint_settings

    d = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_IN_FINGERPRINT}
    for sec in ("controls", "lodo"):
        d[sec] = {k: v for k, v in d[sec].items() if k not in ("enabled", "save_models")}
    return fingerprint_settings(d, analysis=analysis["fingerprint"], model=model_sha)


def open_work(cfg: MitigateConfig, settings: dict) -> Path:
    """Create (or reuse, when resuming a run with the same settings) the work folder
    (:func:`eavss.recipes.common.open_work`)."""
    from eavss.recipes.common import open_work as open_folder

    return open_folder(work_folder(cfg), settings, cfg.resume, "mitigate", cfg.out)


# ---------------------------------------------------------------------------------------------
# step 6: comparison


def _metrics_of(res: dict) -> list[str]:
    aggs = (res.get("per_item") or {}).get("aggregation") or {}
    first = [res["primary_metric"]] if res["primary_metric"] in aggs else []
    return first + [m for m in aggs if m != res["primary_metric"]]


def compare(base: dict, results: dict[str, dict], variants: list[Variant], cfg: MitigateConfig) -> dict:
    """Before/after rows: per variant, task and metric, the paired change with its interval; random
    variants also as one row of their mean (the same resampled items for every seed).

    Returns:
        ``{"in_distribution": [row], "lodo": [row]}``; a row has ``variant``, ``kind``, ``layers``,
        ``task``, ``metric``, ``primary``, ``before``, ``before_ci``, ``after``, ``after_ci`` and the
        :func:`eavss.evaluation.item_bootstrap.paired_change` keys (``abs_change``, ``abs_ci``,
        ``rel_change``, ``rel_ci``, ``verdict``, ``p_better``, ``n``).
    """
    from eavss.evaluation.item_bootstrap import paired_change, paired_change_mean

    e = cfg.eval
    rows: dict[str, list] = {"in_distribution": [], "lodo": []}
    for group in ("in_distribution", "lodo"):
        vs = [v for v in variants if v.group == group]
        heldouts = list(dict.fromkeys(v.heldout for v in vs))
        for held in heldouts:
            members = [v for v in vs if v.heldout == held]
            tasks = list(dict.fromkeys(t for v in members for t in v.tasks))
            for task in tasks:
                b = base[task]
                for metric in _metrics_of(b):
                    hib = b["higher_is_better"].get(metric, True)
                    ci_b = b["details"]["ci"].get(metric, {})
                    common = {"task": task, "metric": metric, "primary": metric == b["primary_metric"],
                              "heldout": held, "before_ci": [ci_b.get("lo"), ci_b.get("hi")]}
                    for v in members:
                        r = results[v.name][task]
                        ci_a = r["details"]["ci"].get(metric, {})
                        ch = paired_change(b, r, metric, higher_is_better=hib, resamples=e.resamples, seed=cfg.seed,
                                           level=e.level)
                        rows[group].append({"variant": v.name, "kind": v.kind, "layers": v.layers, **common, **ch,
                                            "after_ci": [ci_a.get("lo"), ci_a.get("hi")]})
                    rand = [v for v in members if v.kind == "random"]
                    if len(rand) > 1:
                        ch = paired_change_mean(b, [results[v.name][task] for v in rand], metric, higher_is_better=hib,
                                                resamples=e.resamples, seed=cfg.seed, level=e.level)
                        name = "random (mean)" if held is None else f"lodo-{held}-random (mean)"
                        rows[group].append({"variant": name, "kind": "random_mean", "layers": None, **common, **ch,
                                            "after_ci": [None, None], "seeds": [v.seed for v in rand]})
    return rows


def leakage_check(train_ids: dict[str, list[str]], base: dict, splits: dict) -> dict:
    """Per dataset: evaluated ids against the training ids and the analysis' score part (all must be disjoint).

    Raises:
        EavssError: an evaluated question was trained on or scored by the analysis.
    """
    from eavss.evaluation.hallucination_suite import SOURCE_OF_TASK

    out = {}
    for task, res in base.items():
        src = SOURCE_OF_TASK.get(task)
        if src is None:
            continue
        ev = set(map(str, res.get("item_ids") or []))
        tr = set(train_ids.get(src, []))
        sc = set(((splits["sources"].get(src) or {}).get("parts") or {}).get("score", []))
        both_t, both_s = ev & tr, ev & sc
        if both_t or both_s:
            q = min(both_t or both_s)
            raise EavssError(f"leak: {task} evaluated question {q}, which was {'trained on' if both_t else 'scored by the analysis'}")
        out[task] = {"source": src, "evaluated": len(ev), "trained": len(tr), "score_part": len(sc),
                     "overlap_train": 0, "overlap_score": 0}
    return out


# ---------------------------------------------------------------------------------------------
# the command


def _jsonl(rows: list[dict]) -> str:
    from eavss.report.schema import jsonable

    return "".join(json.dumps(jsonable(r), ensure_ascii=False) + "\n" for r in rows)


def _variant_record(v: Variant) -> dict:
    return {"name": v.name, "kind": v.kind, "group": v.group, "heldout": v.heldout, "layers": v.layers,
            "contrast_layers": v.contrast_layers, "method": v.method if v.trains else None, "lr": v.lr if v.trains else None,
            "sources": v.sources if v.trains else [], "tasks": v.tasks, "seed": v.seed, "note": v.note}


def run(cfg: MitigateConfig) -> dict:
    """``eavss mitigate``: train the selected layers and measure the change; outputs in ``cfg.out``.

    Raises:
        EavssError: bad configuration or input (k, layers, another model's analysis, an empty train
            part, an existing --out without --overwrite) -- before anything is written.
    """
    import torch

    from eavss.io import (
        atomic_dir,
        write_json_atomic,
        write_text_atomic,
    )
    from eavss.models.layers import context_length
    from eavss.report.schema import jsonable, new_report
    from eavss.training.pairs import tokenize_examples

    validate(cfg)
    if not cfg.source:
        raise EavssError("--from is required: the output folder of `eavss hallucination`")
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    with timed(timings, "analysis_and_data"):  # every check that needs no model, before the model
        analysis = read_analysis(cfg.source)
        variants, warnings = plan_variants(cfg, analysis)
        items = load_items(cfg)
        train_ids, id_info = training_questions(cfg, analysis["splits"], items)
    model_name = cfg.model.name or analysis["model_id"]
    threads = start(cfg, model_name, cfg.source, may_hold_out=(cfg.source,))
    check_work_dir(work_folder(cfg), cfg.out, model_name, may_hold_out=(cfg.source,), data_dir=cfg.data_dir,
                   cache_dir=cfg.model.cache_dir)
    with timed(timings, "load"):
        loaded = load(cfg.model, cfg.progress, name=model_name)
    check_model(analysis, loaded, cfg.model.name)
    model = loaded.model
    param_dtype = next(model.parameters()).dtype
    train_dtype = cfg.train.dtype or {torch.float32: "float32", torch.bfloat16: "bfloat16"}.get(param_dtype, "")
    if train_dtype not in ("float32", "bfloat16"):
        raise EavssError(f"the model is {param_dtype}; train in float32 or bfloat16 (model.dtype=float32 or bfloat16)")
    if train_dtype == "bfloat16" and param_dtype != torch.bfloat16:
        model.to(torch.bfloat16)  # before and after both in the training dtype
    ctx, _ = context_length(model)
    max_length = cfg.eval.max_length or min(2048, ctx or 2048)
    work = open_work(cfg, fingerprint_inputs(cfg, analysis, loaded.info.get("file_sha256")))
    try:
        return _run(cfg, analysis, variants, warnings, items, train_ids, id_info, loaded, train_dtype, max_length,
                    work, timings, threads, t_all, tokenize_examples, atomic_dir, write_json_atomic,
                    write_text_atomic, jsonable, new_report)
    except KeyboardInterrupt:
        from eavss.io import write_json_atomic as write

        write(work / "sittings.json", (_cached(work / "sittings.json") or []) + [time.perf_counter() - t_all])
        print(f"eavss mitigate: training state and finished evaluations are kept in {work}; run the same command "
              "again to resume", file=sys.stderr)
        raise


def _run(cfg, analysis, variants, warnings, items, train_ids, id_info, loaded, train_dtype, max_length, work, timings,
         threads, t_all, tokenize_examples, atomic_dir, write_json_atomic, write_text_atomic, jsonable, new_report) -> dict:
    model, tok = loaded.model, loaded.tokenizer
    # ---- own answers and examples (cached: generation is the slow part of the data)
    cache = work / "own_answers.json"
    with timed(timings, "own_answers"):
        got = _cached(cache)
        if got is None:
            say(cfg, f"own answers: greedy generation for {[s for s in cfg.data.own_answers if s in train_ids]}")
            own, own_records = own_wrong_answers(model, tok, items, train_ids, cfg)
            write_json_atomic(cache, {"own": own, "records": own_records})
        else:
            own, own_records = [tuple(p) for p in got["own"]], got["records"]
    examples, ex_stats = build_examples(cfg, items, train_ids, own)
    template = prompt_template(cfg.data.prompt)
    tokenized = {src: tokenize_examples(ex, tok, template, max_length=cfg.data.max_length) for src, ex in examples.items()}
    if not any(tokenized.values()):
        raise EavssError("no training example could be built (every question lacked a truthful or a hallucinated answer); "
                         "raise data.limits or add sources")
    # ---- before
    all_tasks = list(dict.fromkeys(t for v in variants for t in v.tasks))
    say(cfg, f"evaluating the untrained model on {', '.join(all_tasks)}")
    with timed(timings, "eval_before"):
        base = evaluate_cached(model, tok, cfg, all_tasks, max_length, work / "base_eval")
    leakage = leakage_check(train_ids, base, analysis["splits"])
    base_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    # ---- variants
    results: dict[str, dict] = {}
    training: dict[str, dict] = {}
    saved_model = None
    for i, v in enumerate(variants, 1):
        vdir = work / "variants" / v.name
        done = _cached(vdir / "result.json")
        if not v.trains:
            results[v.name] = {t: base[t] for t in v.tasks}
            continue
        if done is not None:
            results[v.name], training[v.name] = done["eval"], done["train"]
            timings.update(done.get("seconds", {}))  # the phases of the sitting that ran it
            continue
        exs = [x for s in v.sources for x in tokenized.get(s, [])]
        if not exs:
            warnings.append(f"variant {v.name}: no training example from {v.sources}; skipped")
            continue
        say(cfg, f"[{i}/{len(variants)}] {v.name}: training layers {v.layers} ({v.method}) on {len(exs)} examples")
        keep = v.name == "main" and cfg.save_model
        with timed(timings, f"train.{v.name}"):
            merged, summary = train_variant(model, tok, v, exs, cfg, vdir / "checkpoint", train_dtype,
                                            (vdir / "adapter") if keep else None)
        summary["examples"] = len(exs)
        say(cfg, f"[{i}/{len(variants)}] {v.name}: evaluating on {', '.join(v.tasks)}")
        with timed(timings, f"eval.{v.name}"):
            res = evaluate_cached(merged, tok, cfg, v.tasks, max_length, vdir / "eval")
        if keep or (cfg.controls.save_models and v.group == "in_distribution"):
            from eavss.models.surgery import save_model_files

            merged.config.eavss_mitigate = {"source_model": analysis["model_id"], "layers": v.layers, "method": v.method}
            save_model_files(merged, tok, vdir / "model")
            del merged.config.eavss_mitigate
        write_json_atomic(vdir / "result.json", {"train": jsonable(summary), "eval": res, "seconds": {
            k: timings[k] for k in (f"train.{v.name}", f"eval.{v.name}")}})
        results[v.name], training[v.name] = res, jsonable(summary)
        model.load_state_dict(base_state)  # the untrained weights for the next variant
        model.eval()
    if (work / "variants" / "main" / "model").is_dir():
        saved_model = work / "variants" / "main" / "model"
    variants = [v for v in variants if v.name in results]
    comparison = compare(base, results, variants, cfg)
    timings["total_before_write"] = time.perf_counter() - t_all
    # ---- report
    from eavss.report import mitigate as rep

    report = new_report("mitigate", to_dict(cfg), cfg.seed, tok)
    report.update({
        "model": model_section(loaded),
        "analysis": {"dir": analysis["dir"], "created": analysis["report"].get("created"),
                     "model_id": analysis["model_id"], "file_sha256": analysis["file_sha256"],
                     "num_layers": analysis["num_layers"], "ranking": analysis["ranking"], "top_k": analysis["top_k"],
                     "probe_auroc": analysis["probe_auroc"]},
        "variants": [_variant_record(v) for v in variants],
        "data": {"sources": {s: {**id_info[s], **ex_stats[s], "tokenized_examples": len(tokenized[s])}
                             for s in train_ids},
                 "own_answers": _own_summary(own_records), "prompt": cfg.data.prompt,
                 "examples_total": sum(len(x) for x in tokenized.values()), "leakage": leakage},
        "objective": rep.objective_definition(cfg),
        "training": training,
        "evaluation": {"splits": str(Path(analysis["dir"]) / "splits.json"), "part": "eval", "max_length": max_length,
                       "train_dtype": train_dtype, "base": base, "variants": {n: r for n, r in results.items()
                                                                               if n in training}},
        "comparison": comparison,
        "outputs": {"model": "model/" if saved_model else None,
                    "adapter": "adapter/" if saved_model and cfg.mitigate.method == "lora" else None},
        "work_dir": str(work),
        "timings": timings, "threads": threads,
    })
    report["warnings"] = warnings + rep.warnings(report)
    report = jsonable(report)
    t0 = time.perf_counter()
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        if saved_model is not None:
            shutil.copytree(saved_model, tmp / "model")
            if (saved_model.parent / "adapter").is_dir():
                shutil.copytree(saved_model.parent / "adapter", tmp / "adapter")
        if cfg.controls.save_models:
            for v in variants:
                src = work / "variants" / v.name / "model"
                if v.name != "main" and src.is_dir():
                    shutil.copytree(src, tmp / "controls" / v.name)
        write_text_atomic(tmp / "train_examples.jsonl", _jsonl([
            {"source": s, "qid": e.qid, "question": e.question, "positive": e.positive, "negatives": e.negatives,
             "negative_origins": e.negative_origins} for s, exs in examples.items() for e in exs]))
        write_text_atomic(tmp / "own_answers.jsonl", _jsonl(own_records))
        write_json_atomic(tmp / "question_ids.json", {
            "train": train_ids, "eval": {t: r.get("item_ids") for t, r in base.items()},
            "rule": "train: the first data.limits[source] ids of the train part of --from/splits.json; eval: the first "
                    "eval.limits[task] ids of the eval part; both in split-hash order"})
        report["timings"]["write"] = time.perf_counter() - t0
        report["timings"]["total"] = time.perf_counter() - t_all
        earlier = _cached(work / "sittings.json") or []
        if earlier:  # a resumed run: its earlier sittings' wall time too
            report["timings"]["earlier_sittings"] = earlier
            report["timings"]["total_all_sittings"] = report["timings"]["total"] + sum(earlier)
        write_json_atomic(tmp / "report.json", report)
        write_text_atomic(tmp / "report.md", rep.render_markdown(report))
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _own_summary(records: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for r in records:
        d = out.setdefault(r["source"], {"questions": 0, "correct": 0, "wrong": 0, "empty": 0})
        d["questions"] += 1
        if not r["answer"]:
            d["empty"] += 1
        elif r["correct"]:
            d["correct"] += 1
        else:
            d["wrong"] += 1
    return out


def summary(report: dict, cfg: MitigateConfig) -> list[str]:
    """Terminal summary, then where the outputs are."""
    from eavss.report.mitigate import summary as lines

    files = ["report.json", "report.md"] + [report["outputs"][k] for k in ("model", "adapter") if report["outputs"].get(k)]
    return lines(report) + [f"outputs: {', '.join(f'{cfg.out}/{f}' for f in files)} ({report['timings']['total']:.0f} s)"]
