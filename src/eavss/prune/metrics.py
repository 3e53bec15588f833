"""Depth-pruning metrics side by side: which ``k`` decoder layers each metric of the field removes.

Every entry of :data:`METRICS` is a function ``select(ctx, k) -> dict`` over a
:class:`MetricContext` (the model, the calibration batches, the results of the shared passes, the
seed) and returns

* ``removed``: the ``k`` chosen layers, sorted 0-based indices of the model as given;
* ``score``: ``(L,)`` float64 per-layer importance (higher = more important; the ``k`` lowest
  are the ones removed) or ``None`` for a metric that selects without ranking single layers
  (SLEB, the angular block, the baselines);
* ``seconds``: what choosing the layers cost *stand-alone*: the metric's own work plus every
  shared pass it read (a statistics pass, the layer-skip losses), even when another metric
  computed that pass first -- so the number is the cost of using this metric alone;
* ``shared``: the shared passes it read; ``details``: metric-specific extras (SLEB's removal order,
  the angular distances, the random seed).

Entries and their sources (metadata: ``needs`` = "statistics" when the metric reads one
:func:`eavss.stats.collect_statistics` pass, "model passes" when it runs the model itself,
"nothing" for the baselines;
``direction``; ``seeded``; ``help`` with the paper):

=================  =================================================================================
``avss``           AVSS on the residual stream (``resid_post``), the official code's reading (Song et al.
                   2024, arXiv 2411.02117)
``avss_delta``     AVSS on the block update (``resid_delta``: output minus input)
``avss_mlp``       AVSS on the MLP activation (``mlp_act``)
``block_influence`` ShortGPT block influence ``1 - cos(x_in, x_out)`` (Men et al. 2024, arXiv 2403.03853),
                   from the ``resid_post`` statistics pass
``angular``        the contiguous block of ``k`` layers whose input and output are closest in angle,
                   last token of each sequence (Gromov et al. 2024, arXiv 2403.17887)
``angular_all``    the same over every real token
``layer_ppl``      calibration-loss increase when the layer alone is skipped (Shortened LLaMA PPL
                   criterion, Kim et al. 2024, arXiv 2402.02834) -- the project's ground truth
``sleb``           greedy removal by calibration loss (Song et al. 2024, arXiv 2402.09025); ``k``
                   rounds over the remaining layers: ``1 + sum_{s<k} (L - s)`` passes
``random``         ``k`` layers uniformly at random (seeded by ``ctx.seed``)
``last``           the ``k`` layers before the final one, ``L-1-k .. L-2``
=================  =================================================================================

Shared passes are computed once per context and reused: one statistics pass per capture site
(``avss`` and ``block_influence`` read the same ``resid_post`` pass) and one layer-skip pass
(``layer_ppl``; the recipe's ground truth reads the same one). Skipping layers never copies the
model (:func:`eavss.models.surgery.skip_layers`); every metric leaves the model unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from eavss.errors import EavssError
from eavss.registry import Registry

SelectFn = Callable[["MetricContext", int], dict]
METRICS: Registry[SelectFn] = Registry("pruning metric", key="compare.metrics")
"""Depth-pruning metrics: ``select(ctx, k) -> {"removed", "score", "seconds", "shared", "details"}``
(metadata: ``help``, ``needs``, ``direction``, ``seeded``, and ``site`` for statistics metrics)."""

NEEDS = ("statistics", "model passes", "nothing")
"""What a metric reads: one shared statistics pass, its own passes through the model, or nothing
but the number of layers (the baselines)."""


@dataclass
class MetricContext:
    """What every metric reads. Plain fields; the shared passes are filled on first use.

    Attributes:
        model: the causal LM (left unchanged by every metric).
        batches: calibration batches ``{"input_ids": (B, T), "attention_mask": (B, T)}`` of the
            statistics passes and the angular distances.
        loss_batches: the (usually smaller) batches of the loss-based metrics (``layer_ppl``,
            ``sleb``) and the layer-skip ground truth; None = ``batches``.
        seed: seed of the seeded metrics (``random``).
        score_options: :class:`eavss.scores.registry.ScoreOptions` of the AVSS readings (None =
            the defaults: element variance, sum normalisation, half-count guard).
        sparsity_rule: :class:`eavss.stats.SparsityRule` of the statistics passes (None = relative
            ``|a| < 0.01 RMS``).
        accum_dtype: accumulator dtype of the statistics passes.
        massive: massive-token factor of the statistics passes (None = keep every token; see
            :func:`eavss.stats.collect_statistics`).
        progress: progress bars.
        stats: site -> :class:`eavss.stats.LayerStatistics` of one pass over ``batches`` (filled by
            :func:`statistics`, or given).
        skip_loss: :func:`eavss.scores.ablation.layer_skip_loss` of ``loss_batches`` (filled by
            :func:`layer_skip`, or given).
        shared_seconds: seconds each shared pass took when it was computed (``"statistics:SITE"``,
            ``"layer_skip"``); given passes count 0 unless set here.
    """

    model: torch.nn.Module
    batches: list[Mapping[str, torch.Tensor]]
    loss_batches: list[Mapping[str, torch.Tensor]] | None = None
    seed: int = 0
    score_options: Any = None
    sparsity_rule: Any = None
    accum_dtype: torch.dtype = torch.float64
    massive: float | None = None
    progress: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    skip_loss: dict | None = None
    shared_seconds: dict[str, float] = field(default_factory=dict)
    _used: set = field(default_factory=set, repr=False)
    _computed: float = field(default=0.0, repr=False)

    @property
    def num_layers(self) -> int:
        """``L``, the number of decoder layers of ``model``."""
        from eavss.models.layers import find_decoder_layers

        return len(find_decoder_layers(self.model)[1])


# ---------------------------------------------------------------------------------------------
# shared passes


def statistics(ctx: MetricContext, site: str):
    """The statistics pass of ``site`` over ``ctx.batches`` (computed once per context; block
    influence is collected at ``resid_post``)."""
    from eavss.stats import collect_statistics

    key = f"statistics:{site}"
    ctx._used.add(key)
    if site not in ctx.stats:
        t0 = time.perf_counter()
        stats, _ = collect_statistics(ctx.model, ctx.batches, site=site, rule=ctx.sparsity_rule, pooled=True,
                                      block_influence=site == "resid_post", accum_dtype=ctx.accum_dtype,
                                      massive=ctx.massive, progress=ctx.progress, total=len(ctx.batches))
        dt = time.perf_counter() - t0
        ctx.stats[site] = stats
        ctx.shared_seconds[key] = dt
        ctx._computed += dt
    return ctx.stats[site]


def layer_skip(ctx: MetricContext) -> dict:
    """:func:`eavss.scores.ablation.layer_skip_loss` of ``ctx.loss_batches`` (computed once per context)."""
    from eavss.scores.ablation import layer_skip_loss

    ctx._used.add("layer_skip")
    if ctx.skip_loss is None:
        t0 = time.perf_counter()
        ctx.skip_loss = layer_skip_loss(ctx.model, _loss_batches(ctx), progress=ctx.progress)
        dt = time.perf_counter() - t0
        ctx.shared_seconds["layer_skip"] = dt
        ctx._computed += dt
    return ctx.skip_loss


def _loss_batches(ctx: MetricContext) -> list:
    return ctx.loss_batches if ctx.loss_batches is not None else ctx.batches


# ---------------------------------------------------------------------------------------------
# registering and running


def check_k(k: Any, num_layers: int) -> int:
    """``k`` as an int in ``1..L-1``.

    Raises:
        EavssError: ``k`` is not an integer, or outside ``1..L-1`` (0 removes nothing; ``L``
            would remove every layer).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise EavssError(f"k={k!r} layers to remove must be an integer in 1..{num_layers - 1}")
    if not 1 <= int(k) <= num_layers - 1:
        raise EavssError(f"k={k} layers to remove must be in 1..{num_layers - 1} for a model with {num_layers} "
                         "layers; raise or lower prune.fraction (k = floor(fraction * L))")
    return int(k)


def register_metric(name: str, help: str, needs: str, seeded: bool = False,
                    direction: str = "higher = more important", **meta: Any):
    """Decorator: register ``fn(ctx, k) -> {"removed", "score", "details"?}`` as metric ``name``.

    The registered function checks ``k`` (:func:`check_k`), times the call (adding the recorded
    seconds of every shared pass the metric read, see the module docstring) and checks the result:
    ``removed`` sorted, ``k`` distinct layers; ``score`` ``(L,)`` float64 or None.

    Raises:
        ValueError: ``name`` already registered, or ``needs`` not in :data:`NEEDS`.
    """
    if needs not in NEEDS:
        raise ValueError(f"metric {name}: needs must be one of {NEEDS}, got {needs!r}")

    def deco(fn: Callable[[MetricContext, int], dict]) -> SelectFn:
        def select(ctx: MetricContext, k: int) -> dict:
            L = ctx.num_layers
            k = check_k(k, L)
            ctx._used, ctx._computed = set(), 0.0
            t0 = time.perf_counter()
            out = fn(ctx, k)
            wall = time.perf_counter() - t0
            shared = sorted(ctx._used)
            seconds = wall - ctx._computed + sum(ctx.shared_seconds.get(s, 0.0) for s in shared)
            removed = sorted(int(i) for i in out["removed"])
            if len(set(removed)) != k or not all(0 <= i < L for i in removed):  # pragma: no cover - a metric bug
                raise RuntimeError(f"metric {name} chose {removed}, not {k} distinct layers of {L}")
            score = out.get("score")
            if score is not None:
                score = np.asarray(score, dtype=np.float64)
            return {"removed": removed, "score": score, "seconds": seconds, "shared": shared,
                    "details": out.get("details", {})}

        select.__name__ = select.__qualname__ = f"select_{name}"
        select.__doc__ = fn.__doc__
        METRICS.register(name, select, help=help, needs=needs, seeded=seeded, direction=direction, **meta)
        return select

    return deco


def lowest(score: Sequence[float], k: int, name: str) -> list[int]:
    """The ``k`` layers with the lowest score (ties: lower index), sorted -- the same layers as
    :func:`eavss.prune.selection.select_by_count` and :func:`eavss.scores.agreement.removal_cost`.

    Raises:
        EavssError: a non-finite score.
    """
    from eavss.scores.agreement import bottom_k

    s = np.asarray(score, dtype=np.float64)
    bad = [int(i) for i in np.flatnonzero(~np.isfinite(s))]
    if bad:
        raise EavssError(f"metric {name} gave non-finite scores on layers {bad[:8]}; check the model for NaN/Inf "
                         "activations or leave this metric out")
    return sorted(bottom_k(s, k))


def _options(ctx: MetricContext):
    from eavss.scores.registry import ScoreOptions

    return ctx.score_options if ctx.score_options is not None else ScoreOptions()


def _registered_score(ctx: MetricContext, site: str, score: str) -> np.ndarray:
    from eavss.scores.registry import compute_scores

    out, _ = compute_scores(statistics(ctx, site), _options(ctx), [score])
    return np.asarray(out[score]["score"], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# the metrics


def _avss_at(site: str, name: str):
    def fn(ctx: MetricContext, k: int) -> dict:
        s = _registered_score(ctx, site, "avss")
        return {"removed": lowest(s, k, name), "score": s, "details": {"site": site}}
    return fn


register_metric("avss", "AVSS = normalised variance / normalised sparsity on the residual stream (resid_post), the "
                "official code's reading (Song et al. 2024, arXiv 2411.02117)", needs="statistics", site="resid_post")(
    _avss_at("resid_post", "avss"))
register_metric("avss_delta", "AVSS on the block update resid_delta = layer output - input (arXiv 2411.02117 "
                "formula, another capture site)", needs="statistics", site="resid_delta")(
    _avss_at("resid_delta", "avss_delta"))
register_metric("avss_mlp", "AVSS on the MLP activation output mlp_act (arXiv 2411.02117 formula, another capture "
                "site)", needs="statistics", site="mlp_act")(_avss_at("mlp_act", "avss_mlp"))


@register_metric("block_influence", "ShortGPT block influence: token-weighted mean of 1 - cos(layer input, layer "
                 "output), from the resid_post statistics pass (Men et al. 2024, arXiv 2403.03853)",
                 needs="statistics", site="resid_post")
def _block_influence(ctx: MetricContext, k: int) -> dict:
    s = _registered_score(ctx, "resid_post", "block_influence")
    return {"removed": lowest(s, k, "block_influence"), "score": s}


def _angular(tokens: str):
    def fn(ctx: MetricContext, k: int) -> dict:
        from eavss.scores.angular import angular_distances, best_block

        d = angular_distances(ctx.model, ctx.batches, k, tokens=tokens, progress=ctx.progress)
        removed = best_block(d, k)
        return {"removed": removed, "score": None,
                "details": {"tokens": tokens, "block_start": removed[0], "block_distances": d}}
    return fn


register_metric("angular", "the contiguous block of k layers whose input and output residual states are closest in "
                "angle, arccos(cos)/pi at the last token of each sequence (Gromov et al. 2024, arXiv 2403.17887); "
                "one pass", needs="model passes", direction="selection rule (a block, no per-layer score)")(
    _angular("last"))
register_metric("angular_all", "as angular, averaged over every real token instead of the last one (arXiv "
                "2403.17887 rule, all tokens); one pass", needs="model passes",
                direction="selection rule (a block, no per-layer score)")(_angular("all"))


@register_metric("layer_ppl", "calibration-loss increase when the layer alone is skipped; the k cheapest go "
                 "(Shortened LLaMA PPL criterion, Kim et al. 2024, arXiv 2402.02834) -- the ground truth; "
                 "1 + L passes over the loss batches", needs="model passes")
def _layer_ppl(ctx: MetricContext, k: int) -> dict:
    skip = layer_skip(ctx)
    delta = np.asarray(skip["delta"], dtype=np.float64)
    return {"removed": lowest(delta, k, "layer_ppl"), "score": delta,
            "details": {"base_loss": skip["base_loss"], "num_tokens": skip["num_tokens"]}}


@register_metric("sleb", "SLEB: remove, k times, the layer whose removal (with those already removed) raises the "
                 "calibration loss least (Song et al. 2024, arXiv 2402.09025); costs 1 + sum_{s<k}(L - s) ~ k*L "
                 "passes over the loss batches", needs="model passes",
                 direction="selection rule (greedy, no per-layer score)")
def _sleb(ctx: MetricContext, k: int) -> dict:
    from eavss.scores.ablation import sleb_select

    r = sleb_select(ctx.model, _loss_batches(ctx), k, progress=ctx.progress)
    return {"removed": r["removed_sorted"], "score": None,
            "details": {"order": r["removed"], "loss_after_step": r["loss"], "base_loss": r["base_loss"],
                        "num_tokens": r["num_tokens"]}}


@register_metric("random", "k layers drawn uniformly without replacement, numpy default_rng(seed) (the usual "
                 "sanity baseline, e.g. ShortGPT arXiv 2403.03853); the compare recipe runs several seeds",
                 needs="nothing", seeded=True, direction="baseline (no score)")
def _random(ctx: MetricContext, k: int) -> dict:
    from eavss.prune.baselines import random_layers

    return {"removed": random_layers(ctx.num_layers, k, int(ctx.seed)), "score": None,
            "details": {"seed": int(ctx.seed)}}


@register_metric("last", "the k layers just before the final one, L-1-k .. L-2 (prune the deepest layers, keep the "
                 "last: Gromov et al. 2024, arXiv 2403.17887)", needs="nothing", direction="baseline (no score)")
def _last(ctx: MetricContext, k: int) -> dict:
    from eavss.prune.baselines import last_layers

    return {"removed": last_layers(ctx.num_layers, k), "score": None}


def metric_sites(names: Sequence[str]) -> list[str]:
    """The capture sites whose statistics passes the metrics ``names`` read, in first-use order."""
    out: list[str] = []
    for n in names:
        site = METRICS.entry(n).meta.get("site")
        if site and site not in out:
            out.append(site)
    return out
