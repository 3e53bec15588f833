"""Configuration of ``eavss hallucination`` (defaults < ``--config`` YAML < ``key=value`` overrides < flags).

Every choice the issue leaves open is a named field here; ``docs/hallucination.md`` explains each
default. The sections reuse :class:`eavss.config.ModelConfig` and
:class:`eavss.config.SparsityConfig`, and the file is read with :func:`eavss.config.load_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eavss.config import ModelConfig, SparsityConfig, load_config
from eavss.errors import EavssError

ALL_SOURCES = ["truthfulqa", "halueval", "nq_open", "triviaqa", "sciq"]
"""The five sources, in report order: two teacher-forced pair sources, three generated ones."""


@dataclass
class SplitConfig:
    """Fractions of each source's questions in the score / train / eval parts (must sum to 1).

    A question's part depends only on (``seed``, source, question id), see :mod:`eavss.hallucination.splits`.
    """

    score: float = 0.5
    train: float = 0.25
    eval: float = 0.25


@dataclass
class GenerationConfig:
    """Greedy generation of the model's own answers.

    ``batch_size``: rows per batch (left padding). ``max_new_tokens``: hard cap on answer length.
    ``stop``: ``newline`` (stop at the first token whose text contains ``\\n``, or EOS; default)
    -- "." and "," are deliberately *not* stop characters (they truncate "Washington, D.C.").
    ``prefix_cache``: compute the shared few-shot prefix once and reuse its KV cache (identical
    tokens, ~3x fewer tokens through the model); false = full prompts every batch.
    """

    batch_size: int = 32
    max_new_tokens: int = 16
    stop: str = "newline"
    prefix_cache: bool = True


@dataclass
class JudgeConfig:
    """How a generated answer is judged against the gold answers.

    ``match``: ``exact`` (normalised prediction equals a normalised alias; the field's rule,
    default) | ``contains`` (a normalised alias occurs as a whole-word span of the prediction and
    no negation word precedes it). ``number_words``: map number words to digits ("two" -> "2")
    before comparing (an extension of the SQuAD normaliser, default on).
    ``sciq``: ``options`` (the four options are listed in the prompt; the answer must equal the
    correct option; default) | ``open`` (no options shown; exact match to the correct option).
    """

    match: str = "exact"
    number_words: bool = True
    sciq: str = "options"


@dataclass
class TeacherForcedConfig:
    """Teacher-forced pair sources (TruthfulQA, HaluEval).

    ``pairs_per_question``: (truthful, hallucinated) pairs per question (1 = TruthfulQA's best
    answer vs. its first incorrect answer; HaluEval's right vs. hallucinated answer).
    ``max_answer_tokens``: longer reference answers are cut to this many tokens.
    ``halueval_file``: ``one-turn`` (default) | ``multi-turn`` (the two HaluEval QA generation files).
    """

    pairs_per_question: int = 1
    max_answer_tokens: int = 48
    halueval_file: str = "one-turn"


@dataclass
class HStatsConfig:
    """Statistics collection (the streaming engine of :mod:`eavss.stats`).

    ``site``: ``resid_post`` (default) | ``mlp_act``. ``variance``: ``element`` (default) |
    ``token`` (the engine's ``pooled`` definition needs whole sequences in one forward pass, but
    generated answers are captured token by token, so it is not offered). ``batch_size``:
    teacher-forced rows per forward pass. ``first_answer_tokens``: count only the first N answer
    tokens of every answer (statistics and probe features; null = all). A length control:
    hallucinated answers are often longer (HaluEval's are sentences), and activation statistics
    drift with position.
    """

    site: str = "resid_post"
    variance: str = "element"
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    batch_size: int = 32
    first_answer_tokens: int | None = None


@dataclass
class EavssScoreConfig:
    """HSAV / HSS / EAVSS definitions (see docs/hallucination.md; every option is a named registry entry).

    ``hsav``: ``log_ratio`` (default) | ``rel_diff`` | ``cohens_d``.
    ``hss``: ``log_odds_ratio`` (default) | ``diff`` | ``cohens_d``.
    ``pooling``: ``stratified`` (per-source signed effects, precision-weighted mean, then |.|;
    default) | ``stratified_abs`` (weighted mean of per-source |effects|) | ``pooled`` (all sources
    in one pool).
    ``normalisation``: across layers, ``sum`` (default) | ``max``.
    ``combine``: ``mean`` (default) | ``product`` | ``geometric`` | ``hsav_only`` | ``hss_only``.
    ``with_avss``: multiply EAVSS by the layer's normalised AVSS (computed on all labelled answer
    tokens of this run) and renormalise.
    ``top_k``: hallucination-prone layers listed in the report (default 5).
    ``bootstrap`` / ``permutations``: resamples for confidence intervals and label-permutation
    p-values (0 = off). ``min_per_class``: a source needs this many answers in each class to count.
    """

    hsav: str = "log_ratio"
    hss: str = "log_odds_ratio"
    pooling: str = "stratified"
    normalisation: str = "sum"
    combine: str = "mean"
    with_avss: bool = False
    top_k: int = 5
    bootstrap: int = 200
    permutations: int = 200
    min_per_class: int = 5


@dataclass
class ProbeConfig:
    """Linear probe per layer on mean-pooled answer-token hidden states (``resid_post``).

    Logistic regression (L2, strength ``C``) on standardised features, ``folds``-fold
    cross-validation grouped by question (a question's answers never straddle folds) and stratified
    by label x source, all inside the score split. AUROC of the out-of-fold scores.
    """

    enabled: bool = True
    folds: int = 5
    C: float = 0.05
    max_iter: int = 500


@dataclass
class HallucinationConfig:
    """Everything ``eavss hallucination`` needs.

    ``limits``: questions per source taken from its score split (null = the whole score split;
    with the default 50% score part: HaluEval ~250, SciQ ~500). The defaults give ~3,000 labelled
    answers and run in ~10 minutes on 2 CPU cores (docs/hallucination.md). ``sources``: any of
    :data:`ALL_SOURCES`. ``threads``: torch CPU threads; null = the idle cores
    (``cpu_count - round(load average)``, at least 1).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    sources: list[str] = field(default_factory=lambda: list(ALL_SOURCES))
    limits: dict[str, int | None] = field(default_factory=lambda: {
        "truthfulqa": 300, "halueval": None, "nq_open": 800, "triviaqa": 800, "sciq": None})
    split: SplitConfig = field(default_factory=SplitConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    teacher_forced: TeacherForcedConfig = field(default_factory=TeacherForcedConfig)
    stats: HStatsConfig = field(default_factory=HStatsConfig)
    scores: EavssScoreConfig = field(default_factory=EavssScoreConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    data_dir: str | None = None
    out: str = "runs/hallucination"
    overwrite: bool = False
    seed: int = 0
    progress: bool = True
    threads: int | None = None


def load_hallucination_config(path: str | None = None, overrides: list[str] | None = None) -> HallucinationConfig:
    """Defaults < YAML file < dotted overrides, then :func:`validate`.

    Raises:
        EavssError: see :func:`eavss.config.load_config` and :func:`validate`.
    """
    cfg = load_config(path, overrides, base=HallucinationConfig())
    validate(cfg)
    return cfg


def validate(cfg: HallucinationConfig) -> HallucinationConfig:
    """Check values that types alone do not (one-line :class:`EavssError` naming the fix)."""
    from eavss.hallucination.judge import MATCH_MODES, SCIQ_MODES
    from eavss.hallucination.scores import COMBINATIONS, HSAV_METHODS, HSS_METHODS, POOLINGS

    bad = [s for s in cfg.sources if s not in ALL_SOURCES]
    if bad or not cfg.sources:
        raise EavssError(f"unknown or empty sources {bad or cfg.sources}; choose from {','.join(ALL_SOURCES)}")
    if len(set(cfg.sources)) != len(cfg.sources):
        raise EavssError(f"sources listed twice: {cfg.sources}; name each source once")
    for k, v in cfg.limits.items():
        if v is not None and v < 1:
            raise EavssError(f"limits.{k} must be >= 1 or null, got {v}")
    fr = (cfg.split.score, cfg.split.train, cfg.split.eval)
    if min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-9 or cfg.split.score <= 0:
        raise EavssError(f"split fractions score/train/eval must be >= 0, score > 0, and sum to 1; got {fr}")
    checks = [
        (cfg.generation.batch_size >= 1, "generation.batch_size must be >= 1"),
        (cfg.generation.max_new_tokens >= 1, "generation.max_new_tokens must be >= 1"),
        (cfg.generation.stop == "newline", "generation.stop must be 'newline' (the only stop rule implemented)"),
        (cfg.stats.batch_size >= 1, "stats.batch_size must be >= 1"),
        (cfg.stats.first_answer_tokens is None or cfg.stats.first_answer_tokens >= 1,
         "stats.first_answer_tokens must be >= 1 or null"),
        (cfg.teacher_forced.pairs_per_question >= 1, "teacher_forced.pairs_per_question must be >= 1"),
        (cfg.teacher_forced.max_answer_tokens >= 1, "teacher_forced.max_answer_tokens must be >= 1"),
        (cfg.teacher_forced.halueval_file in ("one-turn", "multi-turn"), "teacher_forced.halueval_file must be one-turn or multi-turn"),
        (cfg.judge.match in MATCH_MODES, f"judge.match must be one of {list(MATCH_MODES)}"),
        (cfg.judge.sciq in SCIQ_MODES, f"judge.sciq must be one of {list(SCIQ_MODES)}"),
        (cfg.scores.hsav in HSAV_METHODS, f"scores.hsav must be one of {sorted(HSAV_METHODS)}"),
        (cfg.scores.hss in HSS_METHODS, f"scores.hss must be one of {sorted(HSS_METHODS)}"),
        (cfg.scores.pooling in POOLINGS, f"scores.pooling must be one of {list(POOLINGS)}"),
        (cfg.scores.combine in COMBINATIONS, f"scores.combine must be one of {sorted(COMBINATIONS)}"),
        (cfg.scores.normalisation in ("sum", "max"), "scores.normalisation must be sum or max"),
        (cfg.scores.top_k >= 1, "scores.top_k must be >= 1"),
        (cfg.scores.bootstrap >= 0 and cfg.scores.permutations >= 0, "scores.bootstrap and scores.permutations must be >= 0"),
        (cfg.scores.min_per_class >= 2, "scores.min_per_class must be >= 2"),
        (cfg.probe.folds >= 2, "probe.folds must be >= 2"),
        (cfg.probe.C > 0, "probe.C must be > 0"),
        (cfg.stats.variance in ("element", "token"), "stats.variance must be element or token (pooled needs whole "
                                                     "sequences per forward pass; generated answers are captured token by token)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise EavssError(msg)
    return cfg
