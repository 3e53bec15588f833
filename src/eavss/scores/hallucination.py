"""HSAV, HSS and EAVSS: how a layer's activation variance and sparsity differ on hallucinated answers.

The papers name these scores but give no formulas; the definitions below are this project's
(``docs/hallucination.md`` explains each choice and the alternatives kept as named options).

Notation. For a layer ``l`` and a class ``c`` (``t`` truthful, ``h`` hallucinated), over the
answer tokens of that class's samples (one source ``s`` at a time): ``v_c`` = activation variance
(:meth:`eavss.stats.LayerStatistics.variance`, default ``element``: all answer-token elements
of the layer's output), ``p_c`` = sparsity (fraction of near-zero elements,
:class:`eavss.stats.SparsityRule`), ``N_c`` = elements counted, ``n_c`` = samples.

Per-source signed effects ``e_s(l)`` (registries :data:`HSAV_METHODS`, :data:`HSS_METHODS`):

==================  =====================================================================  ====
name                effect                                                                 kind
==================  =====================================================================  ====
``log_ratio``       ``log(v_h / v_t)``                                           (HSAV default)  ratio
``rel_diff``        ``(v_h - v_t) / ((v_h + v_t) / 2)``                                     ratio
``cohens_d``        Cohen's d of per-sample ``log v`` between classes                       sample
``log_odds_ratio``  ``logit(p_h) - logit(p_t)``, ``p`` clipped to ``[0.5/N, 1 - 0.5/N]`` (HSS default)
``diff``            ``p_h - p_t``                                                           ratio
``cohens_d``        Cohen's d of per-sample sparsity between classes (HSS)                  sample
==================  =====================================================================  ====

Pooling over sources (:data:`POOLINGS`), with precision weights ``w_s = n_h n_t / (n_h + n_t)``
(sources with fewer than ``min_per_class`` samples in a class get weight 0):
``stratified`` (default) ``|sum_s w_s e_s| / sum_s w_s``; ``stratified_abs``
``sum_s w_s |e_s| / sum_s w_s``; ``pooled`` ``|e|`` over all sources as one pool.

``HSAV(l)`` and ``HSS(l)`` are these non-negative values; ``HSAV_norm``/``HSS_norm`` divide by
their sum over layers (``normalisation="sum"``) or maximum (``"max"``). ``EAVSS`` combines them
(:data:`COMBINATIONS`; default ``mean``: ``(HSAV_norm + HSS_norm) / 2``), optionally times the
normalised AVSS of the layer (``with_avss``), and is renormalised.

Ranking (:data:`RANK_BY`, :func:`rank_layers`). ``z`` (default): the layer's permutation z,
``z(l) = (EAVSS(l) - mean_perm EAVSS(l)) / sd_perm EAVSS(l)`` over label permutations
(:func:`permutation_test`, :func:`calibrate`): how far the observed value stands above what the
same layer gives when the labels carry no information. A layer whose EAVSS is large only because
its statistics are noisy (a few answer tokens with massive activations decide its variance) has a
large null spread and a small z. ``effect``: the raw EAVSS (the original ranking). Rank 1 = most
hallucination-prone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from eavss.errors import EavssError
from eavss.registry import Registry, choices
from eavss.scores.avss import avss_scores, importance_rank
from eavss.stats.accumulators import LayerStatistics

CLASS_NAMES = ("truthful", "hallucinated")


# ---------------------------------------------------------------------------------------------
# per-sample statistics


@dataclass
class SampleStatistics:
    """Per-sample additive statistics with labels: the input of every score here.

    Attributes:
        stats: :class:`LayerStatistics` with one group per sample (``sums`` ``(N, L, F)``).
        labels: ``(N,)`` int: 0 truthful, 1 hallucinated, -1 excluded (not used).
        strata: ``(N,)`` source name of each sample.
        clusters: ``(N,)`` question id (samples of one question are resampled together).
    """

    stats: LayerStatistics
    labels: np.ndarray
    strata: np.ndarray
    clusters: np.ndarray

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.strata = np.asarray(self.strata, dtype=object)
        self.clusters = np.asarray(self.clusters, dtype=object)
        n = self.stats.num_groups
        if not (len(self.labels) == len(self.strata) == len(self.clusters) == n):
            raise EavssError(f"per-sample statistics have {n} samples but {len(self.labels)} labels, "
                             f"{len(self.strata)} strata and {len(self.clusters)} clusters")
        if np.any((self.labels < -1) | (self.labels > 1)):
            raise EavssError("labels must be 0 (truthful), 1 (hallucinated) or -1 (excluded)")

    @property
    def num_layers(self) -> int:
        return self.stats.num_layers

    def used(self) -> np.ndarray:
        """Bool ``(N,)``: labelled samples with at least one counted token."""
        return (self.labels >= 0) & (self.stats.n_tokens()[:, 0] > 0)

    def class_statistics(self, select: np.ndarray | None = None, weights: np.ndarray | None = None,
                         labels: np.ndarray | None = None) -> LayerStatistics:
        """Sums of the selected samples by class: :class:`LayerStatistics` with groups ``truthful``, ``hallucinated``.

        Args:
            select: bool ``(N,)`` (default: :meth:`used`). weights: ``(N,)`` multiplicity of each
            sample (bootstrap counts; default 1). labels: ``(N,)`` labels to use instead of ``self.labels``.
        """
        sel = self.used() if select is None else (select & self.used())
        w = np.ones(len(self.labels)) if weights is None else np.asarray(weights, dtype=np.float64)
        y = self.labels if labels is None else labels
        sums = self.stats.sums
        out = np.stack([np.tensordot(w * (sel & (y == c)), sums, axes=(0, 0)) for c in (0, 1)])
        s = self.stats
        return LayerStatistics(out, s.width, s.site, list(CLASS_NAMES), dict(s.sparsity_rule), s.has_block_influence,
                               s.massive)


# ---------------------------------------------------------------------------------------------
# effect registries


@dataclass
class StratumData:
    """What an effect function sees for one source (or the whole pool).

    ``cls``: :class:`LayerStatistics` with groups (truthful, hallucinated) (weighted sums).
    ``variance``: ``(2, L)`` class variance; ``sparsity``: ``(2, L)``; ``n_elements``: ``(2, L)``.
    ``x_var``/``x_sparsity``: ``(n, L)`` per-sample log variance / sparsity of the stratum's samples;
    ``y``: ``(n,)`` their labels; ``w``: ``(n,)`` their weights.
    """

    cls: LayerStatistics
    variance: np.ndarray
    sparsity: np.ndarray
    n_elements: np.ndarray
    x_var: np.ndarray
    x_sparsity: np.ndarray
    y: np.ndarray
    w: np.ndarray


EffectFn = Callable[[StratumData], np.ndarray]
HSAV_METHODS: Registry[EffectFn] = Registry("HSAV definition", key="scores.hsav")
"""HSAV definitions: ``fn(StratumData) -> (L,)`` signed per-source variance effect, with ``help``."""
HSS_METHODS: Registry[EffectFn] = Registry("HSS definition", key="scores.hss")
"""HSS definitions: ``fn(StratumData) -> (L,)`` signed per-source sparsity effect, with ``help``."""


def register_hsav(name: str, doc: str):
    """Decorator: register ``fn(StratumData) -> (L,) signed effect`` as an HSAV definition."""
    return HSAV_METHODS.register(name, help=doc)


def register_hss(name: str, doc: str):
    """Decorator: register ``fn(StratumData) -> (L,) signed effect`` as an HSS definition."""
    return HSS_METHODS.register(name, help=doc)


def _weighted_cohens_d(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Cohen's d ``(mean_h - mean_t) / pooled sd`` per column of ``x`` ``(n, L)``; 0 where sd is 0."""
    out = []
    stats = []
    for c in (0, 1):
        wc = w * (y == c)
        n = wc.sum()
        m = (wc[:, None] * x).sum(0) / n
        v = (wc[:, None] * (x - m) ** 2).sum(0) / max(n - 1, 1)
        stats.append((n, m, v))
    (n0, m0, v0), (n1, m1, v1) = stats
    sd = np.sqrt(((n0 - 1) * v0 + (n1 - 1) * v1) / max(n0 + n1 - 2, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(sd > 0, (m1 - m0) / sd, 0.0)
    out = np.nan_to_num(d)
    return out


@register_hsav("log_ratio", "log(v_h / v_t): scale-free (residual-stream variance grows ~100x with depth), "
                            "symmetric, 0 iff equal")
def _hsav_log_ratio(d: StratumData) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.log(d.variance[1]) - np.log(d.variance[0])
    return np.nan_to_num(e, nan=0.0, posinf=0.0, neginf=0.0)


@register_hsav("rel_diff", "(v_h - v_t) / mean(v_h, v_t): scale-free, bounded in [-2, 2]")
def _hsav_rel_diff(d: StratumData) -> np.ndarray:
    v0, v1 = d.variance
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num((v1 - v0) / ((v1 + v0) / 2))


@register_hsav("cohens_d", "Cohen's d of per-sample log variance: standardised by the between-answer spread, "
                           "so it discounts differences that are small next to sample-to-sample noise")
def _hsav_d(d: StratumData) -> np.ndarray:
    return _weighted_cohens_d(d.x_var, d.y, d.w)


@register_hss("log_odds_ratio", "logit(p_h) - logit(p_t), p clipped to [0.5/N, 1-0.5/N]: the scale-free "
                                "contrast of two proportions")
def _hss_lor(d: StratumData) -> np.ndarray:
    n = np.maximum(d.n_elements, 1.0)
    p = np.clip(np.nan_to_num(d.sparsity), 0.5 / n, 1 - 0.5 / n)
    lo = np.log(p) - np.log1p(-p)
    return lo[1] - lo[0]


@register_hss("diff", "p_h - p_t: the raw difference of near-zero fractions")
def _hss_diff(d: StratumData) -> np.ndarray:
    return np.nan_to_num(d.sparsity[1] - d.sparsity[0])


@register_hss("cohens_d", "Cohen's d of per-sample sparsity between classes")
def _hss_d(d: StratumData) -> np.ndarray:
    return _weighted_cohens_d(d.x_sparsity, d.y, d.w)


POOLINGS = choices(
    ("stratified", "per-source signed effects, precision-weighted mean, then |.|"),
    ("stratified_abs", "precision-weighted mean of per-source |effects|"),
    ("pooled", "all sources in one pool"), kind="pooling", key="scores.pooling")

COMBINATIONS: Registry[Callable[[np.ndarray, np.ndarray], np.ndarray]] = Registry("EAVSS combination",
                                                                                  key="scores.combine")
"""EAVSS from normalised HSAV and HSS. ``mean``: either signal counts (default); ``product``/``geometric``
(same ranking): only layers where both differ; ``hsav_only``/``hss_only``: ablations."""
COMBINATIONS.register("mean", lambda a, b: (a + b) / 2, help="(HSAV_norm + HSS_norm) / 2: either signal counts")
COMBINATIONS.register("product", lambda a, b: a * b, help="HSAV_norm * HSS_norm: only layers where both differ")
COMBINATIONS.register("geometric", lambda a, b: np.sqrt(a * b), help="sqrt(HSAV_norm * HSS_norm): same ranking as product")
COMBINATIONS.register("hsav_only", lambda a, b: a.copy(), help="HSAV_norm alone (ablation)")
COMBINATIONS.register("hss_only", lambda a, b: b.copy(), help="HSS_norm alone (ablation)")

RANK_BY = choices(
    ("z", "permutation z of the layer's EAVSS, (observed - null mean) / null SD: noise-calibrated"),
    ("effect", "the raw EAVSS value (original ranking; a noisy layer with a large chance effect ranks high)"),
    kind="ranking statistic", key="scores.rank_by")


@dataclass(frozen=True)
class EavssOptions:
    """Definition choices (the ``scores`` section of ``eavss hallucination``'s config, see
    :class:`eavss.recipes.hallucination.EavssScoresSection`)."""

    hsav: str = "log_ratio"
    hss: str = "log_odds_ratio"
    pooling: str = "stratified"
    normalisation: str = "sum"
    combine: str = "mean"
    with_avss: bool = False
    variance: str = "element"
    min_per_class: int = 5
    top_k: int = 5

    def check(self) -> "EavssOptions":
        """Raise :class:`EavssError` for unknown option names."""
        for val, reg in ((self.hsav, HSAV_METHODS), (self.hss, HSS_METHODS), (self.combine, COMBINATIONS),
                         (self.pooling, POOLINGS)):
            reg.entry(val)  # raises a one-line EavssError naming the valid choices
        if self.normalisation not in ("sum", "max"):
            raise EavssError(f"unknown scores.normalisation {self.normalisation!r}; choose sum or max")
        return self


def normalise_layers(x: np.ndarray, method: str = "sum") -> tuple[np.ndarray, bool]:
    """Across-layer normalisation of a non-negative ``(L,)`` vector: ``x / sum(x)`` or ``x / max(x)``.

    Returns:
        ``(normalised, degenerate)``; an all-zero input gives the uniform vector and ``degenerate=True``.
    """
    x = np.asarray(x, dtype=np.float64)
    denom = x.sum() if method == "sum" else x.max()
    if not np.isfinite(denom) or denom <= 0:
        return np.full_like(x, 1.0 / len(x) if method == "sum" else 1.0), True
    return x / denom, False


# ---------------------------------------------------------------------------------------------
# the scores


class _Prepared:
    """Per-sample derived arrays computed once (per-sample log variance and sparsity)."""

    def __init__(self, ss: SampleStatistics, variance: str):
        self.ss = ss
        self.variance = variance
        with np.errstate(divide="ignore", invalid="ignore"):
            self.x_var = np.log(ss.stats.variance(variance))
            self.x_sp = ss.stats.sparsity()
        self.used = ss.used()
        self.flat = np.ascontiguousarray(ss.stats.sums.reshape(ss.stats.sums.shape[0], -1))
        self.x_var = np.where(np.isfinite(self.x_var), self.x_var, 0.0)
        self.x_sp = np.nan_to_num(self.x_sp)
        self.sources = [s for s in dict.fromkeys(ss.strata[self.used].tolist())]


def _stratum(prep: _Prepared, sel: np.ndarray, w: np.ndarray, y: np.ndarray) -> StratumData:
    ss = prep.ss
    idx = np.flatnonzero(sel & prep.used)
    flat = prep.flat[idx]  # (n, L*F): only this stratum's rows (a full-N product per class is 10x slower)
    sums = np.stack([((w[idx] * (y[idx] == c)) @ flat).reshape(ss.stats.sums.shape[1:]) for c in (0, 1)])
    st = ss.stats
    cls = LayerStatistics(sums, st.width, st.site, list(CLASS_NAMES), dict(st.sparsity_rule), st.has_block_influence,
                          st.massive)
    return StratumData(cls=cls, variance=cls.variance(prep.variance), sparsity=cls.sparsity(),
                       n_elements=cls.n_elements(), x_var=prep.x_var[idx], x_sparsity=prep.x_sp[idx],
                       y=y[idx], w=w[idx])


def _effects(prep: _Prepared, opts: EavssOptions, w: np.ndarray, y: np.ndarray) -> dict:
    """Signed per-stratum effects, weights and pooled non-negative HSAV / HSS."""
    ss = prep.ss
    used = prep.used
    if opts.pooling == "pooled":
        groups = [("all", used)]
    else:
        groups = [(s, used & (ss.strata == s)) for s in prep.sources]
    e_v, e_s, weights, names, counts = [], [], [], [], []
    for name, sel in groups:
        n_t = float((w * (sel & (y == 0))).sum())
        n_h = float((w * (sel & (y == 1))).sum())
        counts.append((n_t, n_h))
        names.append(name)
        if min(n_t, n_h) < opts.min_per_class:
            e_v.append(np.zeros(ss.num_layers))
            e_s.append(np.zeros(ss.num_layers))
            weights.append(0.0)
            continue
        d = _stratum(prep, sel, w, y)
        e_v.append(HSAV_METHODS[opts.hsav](d))
        e_s.append(HSS_METHODS[opts.hss](d))
        weights.append(n_h * n_t / (n_h + n_t))
    E_v, E_s, W = np.array(e_v), np.array(e_s), np.array(weights)
    if W.sum() <= 0:
        raise EavssError("no source has at least scores.min_per_class answers in both classes "
                         f"(counts truthful/hallucinated per source: {dict(zip(names, counts))}); raise the limits "
                         "or lower scores.min_per_class")
    Wn = W / W.sum()
    if opts.pooling == "stratified_abs":
        hsav = (Wn[:, None] * np.abs(E_v)).sum(0)
        hss = (Wn[:, None] * np.abs(E_s)).sum(0)
        sv, sh = (Wn[:, None] * E_v).sum(0), (Wn[:, None] * E_s).sum(0)
    else:
        sv, sh = (Wn[:, None] * E_v).sum(0), (Wn[:, None] * E_s).sum(0)
        hsav, hss = np.abs(sv), np.abs(sh)
    return {"hsav": hsav, "hss": hss, "hsav_signed": sv, "hss_signed": sh, "effects_hsav": E_v, "effects_hss": E_s,
            "weights": W, "strata": names, "counts": counts}


def _combine(hsav: np.ndarray, hss: np.ndarray, opts: EavssOptions, avss_norm: np.ndarray | None) -> dict:
    hv, dv = normalise_layers(hsav, opts.normalisation)
    hs, ds = normalise_layers(hss, opts.normalisation)
    e = COMBINATIONS[opts.combine](hv, hs)
    if opts.with_avss:
        if avss_norm is None:
            raise EavssError("scores.with_avss=true needs the layer AVSS, which was not computed")
        e = e * avss_norm
    e, de = normalise_layers(e, opts.normalisation)
    return {"hsav_norm": hv, "hss_norm": hs, "eavss": e, "degenerate": {"hsav": dv, "hss": ds, "eavss": de}}


def _noise_units(x: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``x / sd`` per layer (the last axis); 0 where the part has no null spread (it carries no evidence)."""
    ok = sd > 0
    return np.where(ok, x / np.where(ok, sd, 1.0), 0.0)


def calibrated_statistic(hsav: np.ndarray, hss: np.ndarray, sd_hsav: np.ndarray, sd_hss: np.ndarray,
                         combine: str = "mean") -> np.ndarray:
    """EAVSS with its parts put on the same footing by their *noise* instead of their sum over layers.

    ``T(l) = combine(HSAV(l) / sd_perm HSAV(l), HSS(l) / sd_perm HSS(l))`` -- the statistic whose
    permutation z ranks the layers under ``rank_by=z`` (:func:`permutation_test`). EAVSS divides
    each part by its sum over layers, so a part that is pure noise at a layer (sparsity, whose
    near-zero counts are small) weighs as much as a part with a steady difference; in noise units a
    noisy part contributes noise of the same size as every other layer's, and a steady difference
    stands out. The multiplication by AVSS (``with_avss``) is a label-free constant per layer and
    changes no z, so it is left out.

    Args:
        hsav, hss: ``(..., L)`` non-negative pooled parts (observed: ``(L,)``; a null: ``(P, L)``).
        sd_hsav, sd_hss: ``(L,)`` their permutation-null SDs (a part with SD 0 counts as 0).
        combine: an EAVSS combination (:data:`COMBINATIONS`).

    Returns:
        ``(..., L)`` array.
    """
    return COMBINATIONS[combine](_noise_units(np.asarray(hsav, dtype=np.float64), sd_hsav),
                                 _noise_units(np.asarray(hss, dtype=np.float64), sd_hss))


def layer_avss(ss: SampleStatistics, variance: str = "element") -> dict:
    """AVSS (:func:`eavss.scores.avss.avss_scores`, defaults) on all labelled answer tokens of the run, both classes pooled."""
    pooled = ss.class_statistics().pooled()
    return avss_scores(pooled.variance(variance)[0], pooled.sparsity()[0], pooled.n_elements()[0])


def compute_eavss(ss: SampleStatistics, opts: EavssOptions = EavssOptions()) -> dict:
    """Point estimates of HSAV, HSS and EAVSS per layer, with the class statistics behind them.

    Args:
        ss: per-sample statistics with labels (:class:`SampleStatistics`).
        opts: definition choices.

    Returns:
        dict of ``(L,)`` arrays -- ``variance_truthful``, ``variance_hallucinated``,
        ``sparsity_truthful``, ``sparsity_hallucinated``, ``n_tokens_truthful``,
        ``n_tokens_hallucinated``, ``hsav``, ``hss`` (>= 0), ``hsav_signed``, ``hss_signed``
        (> 0: larger on hallucinated answers), ``hsav_norm``, ``hss_norm``, ``avss_norm``,
        ``eavss``, ``rank`` (1 = most hallucination-prone) -- plus ``top_k`` (layer indices),
        ``per_source`` (signed effects, weights and sample counts per source) and ``degenerate``.

    Raises:
        EavssError: unknown options, or no source with enough samples in both classes.
    """
    opts.check()
    prep = _Prepared(ss, opts.variance)
    n = len(ss.labels)
    eff = _effects(prep, opts, np.ones(n), ss.labels)
    av = layer_avss(ss, opts.variance)
    comb = _combine(eff["hsav"], eff["hss"], opts, av["avss_norm"])
    cls = ss.class_statistics()
    rank = importance_rank(comb["eavss"])
    k = min(opts.top_k, ss.num_layers)
    return {
        "variance_truthful": cls.variance(opts.variance)[0], "variance_hallucinated": cls.variance(opts.variance)[1],
        "sparsity_truthful": cls.sparsity()[0], "sparsity_hallucinated": cls.sparsity()[1],
        "n_tokens_truthful": cls.n_tokens()[0], "n_tokens_hallucinated": cls.n_tokens()[1],
        "hsav": eff["hsav"], "hss": eff["hss"], "hsav_signed": eff["hsav_signed"], "hss_signed": eff["hss_signed"],
        "hsav_norm": comb["hsav_norm"], "hss_norm": comb["hss_norm"], "avss_norm": av["avss_norm"],
        "eavss": comb["eavss"], "rank": rank, "top_k": [int(i) for i in np.argsort(rank)[:k]],
        "ranking": [int(i) for i in np.argsort(rank)],
        "per_source": {name: {"weight": float(w), "n_truthful": c[0], "n_hallucinated": c[1],
                              "hsav_effect": eff["effects_hsav"][j], "hss_effect": eff["effects_hss"][j]}
                       for j, (name, w, c) in enumerate(zip(eff["strata"], eff["weights"], eff["counts"]))},
        "degenerate": comb["degenerate"],
    }


def _cluster_index(ss: SampleStatistics, used: np.ndarray) -> dict:
    """Per source: list of arrays of sample indices, one array per question."""
    out = {}
    for s in dict.fromkeys(ss.strata[used].tolist()):
        idx = np.flatnonzero(used & (ss.strata == s))
        groups: dict = {}
        for i in idx:
            groups.setdefault(ss.clusters[i], []).append(i)
        out[s] = [np.array(v) for v in groups.values()]
    return out


def _zscore(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``(x - mean) / sd`` per layer; 0 where the null has no spread (``sd <= 1e-12 * max(1, |mean|)``)."""
    ok = sd > 1e-12 * np.maximum(1.0, np.abs(mean))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, (x - mean) / np.where(ok, sd, 1.0), 0.0)


def calibrate(observed: np.ndarray, null: np.ndarray) -> dict:
    """Noise calibration of a per-layer statistic (larger = more extreme) against its permutation null.

    Args:
        observed: ``(L,)`` the statistic on the real labels (e.g. EAVSS).
        null: ``(P, L)`` the same statistic under ``P >= 2`` label permutations.

    Returns:
        ``{"z": (L,)`` ``(observed - null_mean) / null_sd`` (SD with ``ddof=1``; 0 where the null
        has no spread), ``"p": (L,)`` one-sided ``(1 + #{null >= observed}) / (1 + P)``,
        ``"p_fwer": (L,)`` family-wise p of each layer by the standardised max statistic
        (``(1 + #{max_l z_null[:, l] >= z(l)}) / (1 + P)``, Westfall & Young 1993's single-step
        max-T), ``"p_max"`` (family-wise p of the largest z), ``"null_mean", "null_sd"}``.

    Raises:
        EavssError: fewer than 2 permutations or shapes that disagree.
    """
    obs = np.asarray(observed, dtype=np.float64)
    N = np.asarray(null, dtype=np.float64)
    if N.ndim != 2 or N.shape[1] != obs.shape[0] or N.shape[0] < 2:
        raise EavssError(f"calibration needs a (P >= 2, L) null for an (L,) statistic; got {N.shape} and {obs.shape}")
    P = N.shape[0]
    mean, sd = N.mean(0), N.std(0, ddof=1)
    z = _zscore(obs, mean, sd)
    z_null_max = _zscore(N, mean, sd).max(1)
    return {"z": z, "p": (1 + (N >= obs).sum(0)) / (1 + P),
            "p_fwer": (1 + (z_null_max[:, None] >= z[None, :]).sum(0)) / (1 + P),
            "p_max": float((1 + (z_null_max >= z.max()).sum()) / (1 + P)), "null_mean": mean, "null_sd": sd}


def rank_layers(eavss: np.ndarray, rank_by: str, z: np.ndarray | None, top_k: int) -> dict:
    """The final layer ranking.

    Args:
        eavss: ``(L,)`` EAVSS values. z: ``(L,)`` their permutation z (:func:`calibrate`), or None.
        rank_by: ``z`` | ``effect`` (:data:`RANK_BY`). top_k: size of the top set.

    Returns:
        ``{"rank_by", "score": (L,)`` the ranked statistic, ``"rank": (L,)`` 1 = most
        hallucination-prone (ties: lower layer first), ``"ranking"`` (layers, most prone first),
        ``"top_k"}``.

    Raises:
        EavssError: unknown ``rank_by``, or ``rank_by="z"`` without z (no permutations).
    """
    RANK_BY.entry(rank_by)
    if rank_by == "z" and z is None:
        raise EavssError("scores.rank_by=z needs the permutation test; set scores.permutations >= 2 "
                         "(200 recommended) or scores.rank_by=effect")
    score = np.asarray(z if rank_by == "z" else eavss, dtype=np.float64)
    rank = importance_rank(score)
    order = [int(i) for i in np.argsort(rank)]
    return {"rank_by": rank_by, "score": score, "rank": rank, "ranking": order, "top_k": order[:min(top_k, len(order))]}


def bootstrap_eavss(ss: SampleStatistics, opts: EavssOptions, resamples: int, seed: int = 0,
                    calibration: dict | None = None) -> dict:
    """Cluster bootstrap of EAVSS: resample questions with replacement within each source.

    Args:
        calibration: :func:`permutation_test`'s ``calibration`` (null SDs of HSAV and HSS, null mean
            and SD of the calibrated statistic). When given (``rank_by=z``), every resample is
            ranked by its z against this fixed null (the noise scale is estimated once, on the real
            labels) and ``z_lo``/``z_hi`` are added; otherwise resamples are ranked by EAVSS.

    Returns:
        ``{"resamples", "ranked_by" ("z" | "effect"), "eavss_lo", "eavss_hi"`` (2.5 / 97.5
        percentiles, ``(L,)``), ``"hsav_lo", "hsav_hi", "hss_lo", "hss_hi"``, ``"p_top_k"``
        (fraction of resamples in which each layer is in the top k), ``"rank_lo", "rank_hi"``,
        ``"failed"`` (resamples without enough samples)}; empty dict when ``resamples == 0``.
    """
    if resamples <= 0:
        return {}
    opts.check()
    prep = _Prepared(ss, opts.variance)
    clusters = _cluster_index(ss, prep.used)
    rng = np.random.default_rng(seed)
    av = layer_avss(ss, opts.variance)["avss_norm"] if opts.with_avss else None
    by_z = calibration is not None
    L = ss.num_layers
    k = min(opts.top_k, L)
    E, V, S, R, Z = [], [], [], [], []
    failed = 0
    # per source: the sample indices and, for each, the number of its question among the source's questions
    coded = [(np.concatenate(g), np.repeat(np.arange(len(g)), [len(x) for x in g]), len(g)) for g in clusters.values()]
    for _ in range(resamples):
        w = np.zeros(len(ss.labels))
        for idx, code, n_q in coded:
            draws = np.bincount(rng.integers(0, n_q, n_q), minlength=n_q)  # times each question is drawn
            w[idx] = draws[code]
        try:
            eff = _effects(prep, opts, w, ss.labels)
        except EavssError:
            failed += 1
            continue
        comb = _combine(eff["hsav"], eff["hss"], opts, av)
        E.append(comb["eavss"])
        V.append(eff["hsav"])
        S.append(eff["hss"])
        if by_z:
            c = calibration
            t = calibrated_statistic(eff["hsav"], eff["hss"], c["sd_hsav"], c["sd_hss"], opts.combine)
            Z.append(_zscore(t, c["mean"], c["sd"]))
        R.append(importance_rank(Z[-1] if by_z else comb["eavss"]))
    if not E:
        return {"resamples": resamples, "failed": failed, "ranked_by": "z" if by_z else "effect"}
    E, V, S, R = map(np.array, (E, V, S, R))
    out = {"resamples": resamples, "failed": failed, "ranked_by": "z" if by_z else "effect",
           "eavss_lo": np.percentile(E, 2.5, 0), "eavss_hi": np.percentile(E, 97.5, 0),
           "hsav_lo": np.percentile(V, 2.5, 0), "hsav_hi": np.percentile(V, 97.5, 0),
           "hss_lo": np.percentile(S, 2.5, 0), "hss_hi": np.percentile(S, 97.5, 0),
           "rank_lo": np.percentile(R, 2.5, 0), "rank_hi": np.percentile(R, 97.5, 0),
           "p_top_k": (R <= k).mean(0)}
    if by_z:
        out["z_lo"], out["z_hi"] = np.percentile(Z, 2.5, 0), np.percentile(Z, 97.5, 0)
    return out


def permuted_labels(ss: SampleStatistics, permutations: int, seed: int = 0) -> Iterator[np.ndarray]:
    """The label permutations of :func:`permutation_test`, one ``(N,)`` label array at a time.

    Labels of used samples are permuted within each source; in a source where some question has
    several answers (teacher-forced pairs) they are permuted within each question instead, which
    keeps one truthful and one hallucinated answer per question. Unused samples keep their label.
    Deterministic in ``seed`` (the generator is ``default_rng(seed + 1)``).
    """
    used = ss.used()
    clusters = _cluster_index(ss, used)
    rng = np.random.default_rng(seed + 1)
    for _ in range(permutations):
        y = ss.labels.copy()
        for groups in clusters.values():
            if max(len(g) for g in groups) == 1:
                idx = np.concatenate(groups)
                y[idx] = y[rng.permutation(idx)]
            else:
                for g in groups:
                    y[g] = y[rng.permutation(g)]
        yield y


def permutation_test(ss: SampleStatistics, opts: EavssOptions, permutations: int, seed: int = 0) -> dict:
    """Label-permutation null for HSAV, HSS and EAVSS (are the class differences larger than chance?).

    Labels are permuted as in :func:`permuted_labels`. Per layer
    ``p = (1 + #{null >= observed}) / (1 + permutations)`` for HSAV and HSS, a family-wise
    ``p_max`` for "some layer differs" from the maximum over layers, and the noise calibration of
    EAVSS that ``rank_by=z`` ranks by: the null SDs ``sd_V(l)``, ``sd_S(l)`` of HSAV and HSS, the
    calibrated statistic ``T(l) = combine(HSAV(l) / sd_V(l), HSS(l) / sd_S(l))``
    (:func:`calibrated_statistic`) on the real and on every permuted labelling, and its z, p and
    family-wise p per layer (:func:`calibrate`). A permutation in which a source loses its classes
    (cannot happen for the schemes above) is skipped.

    Returns:
        ``{"permutations", "p_hsav", "p_hss"`` (``(L,)``), ``"p_max_hsav", "p_max_hss",
        "null_hsav_mean", "null_hss_mean"`` (``(L,)`` mean of the null), ``"null_hsav_sd",
        "null_hss_sd", "z_eavss", "p_eavss", "p_eavss_fwer"`` (``(L,)``: z, p and family-wise p of
        ``T``), ``"p_max_eavss", "calibration"`` (``{"sd_hsav", "sd_hss", "mean", "sd"}``, for
        :func:`bootstrap_eavss`)}`` (the calibration keys need at least 2 valid permutations);
        empty dict when 0.
    """
    if permutations <= 0:
        return {}
    opts.check()
    prep = _Prepared(ss, opts.variance)
    w = np.ones(len(ss.labels))
    obs = _effects(prep, opts, w, ss.labels)
    ge_v = np.zeros(ss.num_layers)
    ge_s = np.zeros(ss.num_layers)
    max_v = max_s = 0
    nv, ns = [], []
    for y in permuted_labels(ss, permutations, seed):
        try:
            eff = _effects(prep, opts, w, y)
        except EavssError:
            continue
        ge_v += eff["hsav"] >= obs["hsav"]
        ge_s += eff["hss"] >= obs["hss"]
        max_v += eff["hsav"].max() >= obs["hsav"].max()
        max_s += eff["hss"].max() >= obs["hss"].max()
        nv.append(eff["hsav"])
        ns.append(eff["hss"])
    P = permutations
    out = {"permutations": P, "p_hsav": (1 + ge_v) / (1 + P), "p_hss": (1 + ge_s) / (1 + P),
           "p_max_hsav": (1 + max_v) / (1 + P), "p_max_hss": (1 + max_s) / (1 + P),
           "null_hsav_mean": np.mean(nv, 0) if nv else None, "null_hss_mean": np.mean(ns, 0) if ns else None}
    if len(nv) >= 2:
        NV, NS = np.array(nv), np.array(ns)
        sd_v, sd_s = NV.std(0, ddof=1), NS.std(0, ddof=1)
        c = calibrate(calibrated_statistic(obs["hsav"], obs["hss"], sd_v, sd_s, opts.combine),
                      calibrated_statistic(NV, NS, sd_v, sd_s, opts.combine))
        out.update(z_eavss=c["z"], p_eavss=c["p"], p_eavss_fwer=c["p_fwer"], p_max_eavss=c["p_max"],
                   null_hsav_sd=sd_v, null_hss_sd=sd_s,
                   calibration={"sd_hsav": sd_v, "sd_hss": sd_s, "mean": c["null_mean"], "sd": c["null_sd"]})
    return out


def variant_table(ss: SampleStatistics, base: EavssOptions, names: Sequence[tuple[str, dict]] | None = None,
                  rank_by: str = "effect", permutations: int = 0, seed: int = 0, n_jobs: int = 1) -> dict:
    """EAVSS under alternative definitions (for the report's comparison with the probe).

    Args:
        names: ``[(label, overrides)]``; default: every HSAV and HSS method, every pooling and
            every combination, each changed alone from ``base``.
        rank_by: ``effect`` | ``z``; with ``z`` every variant gets its own permutation test
            (``permutations`` label permutations, ``seed``) and is ranked by its z.
        n_jobs: worker processes, one variant each (1: in this process); the results do not
            depend on it (each variant's permutations are seeded with ``seed``). Pays only when the
            variants are large: at a tenth of the hallucination analysis's default limits on the
            H200's host, 15 workers took 2.7 s against 1.3 s in one process.

    Returns:
        ``{label: {"options": dict, "eavss": (L,), "score": (L,)`` the ranked statistic,
        ``"top_k": [...]} }`` (``"z"`` too with ``rank_by="z"``; failed variants hold ``"error"``).
    """
    import dataclasses

    if names is None:
        names = [("default", {})]
        names += [(f"hsav={m}", {"hsav": m}) for m in HSAV_METHODS if m != base.hsav]
        names += [(f"hss={m}", {"hss": m}) for m in HSS_METHODS if m != base.hss]
        names += [(f"pooling={m}", {"pooling": m}) for m in POOLINGS if m != base.pooling]
        names += [(f"combine={m}", {"combine": m}) for m in COMBINATIONS if m != base.combine]
        names += [(f"with_avss={not base.with_avss}", {"with_avss": not base.with_avss})]
    opts = [(label, ov, dataclasses.replace(base, **ov)) for label, ov in names]
    if n_jobs > 1 and len(opts) > 1:
        from joblib import Parallel, delayed

        rows = Parallel(n_jobs=min(n_jobs, len(opts)))(delayed(_variant)(ss, o, ov, rank_by, permutations, seed)
                                                        for _, ov, o in opts)
    else:
        rows = [_variant(ss, o, ov, rank_by, permutations, seed) for _, ov, o in opts]
    return {label: row for (label, _, _), row in zip(opts, rows)}


def _variant(ss: SampleStatistics, o: EavssOptions, ov: dict, rank_by: str, permutations: int, seed: int) -> dict:
    """One row of :func:`variant_table` (one BLAS thread: small products)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        try:
            r = compute_eavss(ss, o)
            z = permutation_test(ss, o, permutations, seed).get("z_eavss") if rank_by == "z" else None
            ranked = rank_layers(r["eavss"], rank_by, z, o.top_k)
            row = {"options": ov, "eavss": r["eavss"], "score": ranked["score"], "top_k": ranked["top_k"]}
            if z is not None:
                row["z"] = z
            return row
        except EavssError as e:
            return {"options": ov, "error": str(e)}
