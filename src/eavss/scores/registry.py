"""Registry of per-layer importance scores.

A score is a function ``fn(stats: LayerStatistics, cfg: ScoreConfig) -> dict[str, np.ndarray]``
returning at least ``"score"``: an ``(L,)`` array where higher means more important. New scores
plug in with ``@register_score("name")`` without touching the pipeline; ``eavss score`` computes
every registered score for the report and prunes by the one named in ``prune.score``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from eavss.errors import EavssError
from eavss.scores.avss import avss_scores
from eavss.stats.accumulators import LayerStatistics


@dataclass(frozen=True)
class ScoreConfig:
    """Choices left open by the paper (see docs/method.md).

    Attributes:
        variance: ``element`` (default) | ``token`` | ``pooled`` (official-code reproduction).
        normalisation: ``sum`` (default) | ``max`` | ``none`` -- across layers.
        sparsity_guard: ``half_count`` (default) | ``none``.
    """

    variance: str = "element"
    normalisation: str = "sum"
    sparsity_guard: str = "half_count"


ScoreFn = Callable[[LayerStatistics, ScoreConfig], dict]
SCORES: dict[str, ScoreFn] = {}
SCORE_DOCS: dict[str, str] = {}


def register_score(name: str, doc: str = ""):
    """Decorator: register a per-layer score under ``name``."""

    def deco(fn: ScoreFn) -> ScoreFn:
        if name in SCORES:
            raise ValueError(f"score {name!r} is already registered")
        SCORES[name] = fn
        SCORE_DOCS[name] = doc
        return fn

    return deco


def get_score(name: str) -> ScoreFn:
    """Look up a registered score. Raises EavssError naming the known ones."""
    try:
        return SCORES[name]
    except KeyError:
        raise EavssError(f"unknown score {name!r}; choose one of {sorted(SCORES)}") from None


def _single(stats: LayerStatistics) -> LayerStatistics:
    return stats if stats.num_groups == 1 else stats.pooled()


@register_score("avss", "var_norm / sparsity_norm (Song et al. 2024, AVSS); higher = more important")
def _avss(stats: LayerStatistics, cfg: ScoreConfig) -> dict:
    s = _single(stats)
    out = avss_scores(s.variance(cfg.variance)[0], s.sparsity()[0], s.n_elements()[0],
                      normalisation=cfg.normalisation, guard=cfg.sparsity_guard)
    out["score"] = out["avss"]
    return out


@register_score("variance", "activation variance alone; higher = more important")
def _variance(stats: LayerStatistics, cfg: ScoreConfig) -> dict:
    v = _single(stats).variance(cfg.variance)[0]
    return {"score": v}


@register_score("density", "1 - sparsity (fraction of elements not near zero); higher = more important")
def _density(stats: LayerStatistics, cfg: ScoreConfig) -> dict:
    return {"score": 1.0 - _single(stats).sparsity()[0]}


@register_score("block_influence", "ShortGPT block influence 1 - cos(input, output); higher = more important")
def _bi(stats: LayerStatistics, cfg: ScoreConfig) -> dict:
    bi = _single(stats).block_influence()[0]
    if not np.all(np.isfinite(bi)):
        raise EavssError("block influence is only collected at site resid_post with stats.block_influence=true")
    return {"score": bi}


def compute_scores(stats: LayerStatistics, cfg: ScoreConfig, names: list[str] | None = None,
                   skip_unavailable: bool = True) -> dict[str, dict]:
    """Compute several registered scores; unavailable ones (e.g. block influence at another site)
    are skipped when ``skip_unavailable``."""
    out = {}
    for name in names or list(SCORES):
        try:
            out[name] = get_score(name)(stats, cfg)
        except EavssError:
            if not skip_unavailable or name == "avss":
                raise
    return out
