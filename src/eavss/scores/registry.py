"""Registry of per-layer importance scores computed from the statistics pass.

A score is a function ``fn(stats: LayerStatistics, options: ScoreOptions) -> dict[str, np.ndarray]``
returning at least ``"score"``: an ``(L,)`` array where higher means more important. Its registry
entry carries ``help``, ``direction`` and ``requires`` -- a predicate ``requires(stats) -> str |
None`` that names what the statistics lack for this score (e.g. block influence is collected only
at ``resid_post``). :func:`compute_scores` skips a score only when its requirement is unmet (and
says why); a score that raises is an error, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from eavss.errors import EavssError
from eavss.registry import Registry
from eavss.scores.avss import avss_scores
from eavss.stats.accumulators import LayerStatistics


@dataclass(frozen=True)
class ScoreOptions:
    """Definition choices left open by the paper (see docs/method.md).

    Attributes:
        variance: ``element`` (default) | ``token`` | ``pooled`` (official-code reproduction).
        normalisation: ``sum`` (default) | ``max`` | ``none`` -- across layers.
        sparsity_guard: ``half_count`` (default) | ``none``.
    """

    variance: str = "element"
    normalisation: str = "sum"
    sparsity_guard: str = "half_count"


ScoreFn = Callable[[LayerStatistics, ScoreOptions], dict]
SCORES: Registry[ScoreFn] = Registry("score", key="prune.score")
"""Per-layer scores from the statistics pass (metadata: ``help``, ``direction``, ``requires``)."""


def register_score(name: str, help: str, direction: str = "higher = more important",
                   requires: Callable[[LayerStatistics], str | None] | None = None):
    """Decorator: register ``fn(stats, options) -> {"score": (L,), ...}`` as score ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """
    return SCORES.register(name, help=help, direction=direction, requires=requires)


def _single(stats: LayerStatistics) -> LayerStatistics:
    return stats if stats.num_groups == 1 else stats.pooled()


@register_score("avss", "var_norm / sparsity_norm (Song et al. 2024, AVSS, arXiv 2411.02117)")
def _avss(stats: LayerStatistics, options: ScoreOptions) -> dict:
    s = _single(stats)
    out = avss_scores(s.variance(options.variance)[0], s.sparsity()[0], s.n_elements()[0],
                      normalisation=options.normalisation, guard=options.sparsity_guard)
    out["score"] = out["avss"]
    return out


@register_score("variance", "activation variance alone")
def _variance(stats: LayerStatistics, options: ScoreOptions) -> dict:
    return {"score": _single(stats).variance(options.variance)[0]}


@register_score("density", "1 - sparsity (fraction of elements not near zero)")
def _density(stats: LayerStatistics, options: ScoreOptions) -> dict:
    return {"score": 1.0 - _single(stats).sparsity()[0]}


def _needs_block_influence(stats: LayerStatistics) -> str | None:
    if stats.has_block_influence and np.all(np.isfinite(_single(stats).block_influence()[0])):
        return None
    return "block influence was not collected; collect the statistics with stats.block_influence=true"


@register_score("block_influence", "ShortGPT block influence 1 - cos(input, output), token-weighted "
                                   "(Men et al. 2024, arXiv 2403.03853)", requires=_needs_block_influence)
def _bi(stats: LayerStatistics, options: ScoreOptions) -> dict:
    return {"score": _single(stats).block_influence()[0]}


def compute_scores(stats: LayerStatistics, options: ScoreOptions, names: list[str] | None = None) -> tuple[dict, dict]:
    """Compute registered scores (all of them when ``names`` is None).

    Returns:
        ``(scores, skipped)``: ``scores[name]`` is the score function's dict (``"score"``: ``(L,)``);
        ``skipped[name]`` is the sentence saying which requirement the statistics do not meet.

    Raises:
        EavssError: an unknown name, a score named in ``names`` whose requirement is unmet, or any
            error a score function raises (never swallowed).
    """
    out, skipped = {}, {}
    for name in names or SCORES.names():
        entry = SCORES.entry(name)
        reason = entry.meta["requires"](stats) if entry.meta.get("requires") else None
        if reason:
            if names:
                raise EavssError(f"score {name!r} is not available: {reason}")
            skipped[name] = reason
            continue
        out[name] = entry.obj(stats, options)
    return out, skipped
