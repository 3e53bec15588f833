"""Sufficient statistics of layer activations, as additive float64 sums.

Everything a layer score needs is kept as a plain sum over (masked) tokens or sequences, so that
accumulating a batch, merging two shards and ``all_reduce(SUM)`` across ranks are all the same
operation: addition. Nothing is averaged early, so batches of different size and padding weigh
exactly what their real tokens weigh.

Notation, for one capture site of width ``D`` (hidden size for the residual stream) and one token
``t`` whose activation vector is ``a_t in R^D``:

* ``mu_t  = mean_d a_t[d]`` and ``s2_t = mean_d (a_t[d] - mu_t)^2`` (population variance across
  the ``D`` elements of the token), computed per token with float32 accumulation (GPU: a fused
  two-pass Triton kernel; CPU: float32 row sums ``sum a`` and ``sum a^2`` combined in float64 as
  ``sum a^2 - (sum a)^2 / D``) -- see :mod:`eavss.stats.reduce`;
* ``z_t   = #{d : |a_t[d]| < thr_t}``, the near-zero count (see :mod:`eavss.stats.sparsity`).

Per (group, layer) we sum, over masked tokens only (``FIELDS``):

====================  ==========================================================  =========
field                 definition                                                  unit
====================  ==========================================================  =========
``n_tokens``          number of masked tokens                                     tokens
``within_m2``         ``sum_t D * s2_t``  (within-token sum of squared deviations) act^2
``sum_mean``          ``sum_t mu_t``                                              act
``sum_mean_sq``       ``sum_t mu_t^2``                                            act^2
``near_zero``         ``sum_t z_t``                                               elements
``bi_sum``            ``sum_t (1 - cos(x_t, a_t))``, ``x_t`` the layer's input     1
``n_seqs``            sequences with at least one masked token                    sequences
``pooled_var_sum``    ``sum_b var_d(mean_t a_{b,t})`` (unbiased over ``D``)         act^2
``nonfinite``         masked tokens whose activations hold NaN/Inf                tokens
``n_massive``         masked tokens excluded as massive (0 unless ``massive`` on) tokens
====================  ==========================================================  =========

With massive-token exclusion on (``massive = k``, see :func:`eavss.stats.reduce.reduce_activations`
and ``docs/method.md``), "masked tokens" in every row above means masked tokens that are *not*
massive at that layer: ``n_tokens + n_massive`` is then the number of masked tokens.

The variance of all masked elements of a layer follows exactly (law of total variance):
``N = D * n_tokens``, ``mu = sum_mean / n_tokens``,
``M2 = within_m2 + D * (sum_mean_sq - n_tokens * mu^2)``, ``var = M2 / N``.
The only subtraction is between float64 sums of float32 token means, which loses precision only
when ``mu^2 / var`` exceeds ~1e8 -- far beyond what residual streams show.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

FIELDS: tuple[str, ...] = (
    "n_tokens",
    "within_m2",
    "sum_mean",
    "sum_mean_sq",
    "near_zero",
    "bi_sum",
    "n_seqs",
    "pooled_var_sum",
    "nonfinite",
    "n_massive",
)
F = {name: i for i, name in enumerate(FIELDS)}
NUM_FIELDS = len(FIELDS)
_ZERO_IF_MISSING = ("n_massive",)  # fields added later whose value was 0 in statistics written before them


def new_accumulator(num_groups: int, num_layers: int, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Zeroed accumulator of shape ``(num_groups, num_layers, NUM_FIELDS)``.

    ``dtype`` is float64 by default; float32 is allowed for devices without fast float64, where
    per-batch partial sums are formed in float32 and added to the accumulator (chunked merge).
    """
    if num_groups < 1 or num_layers < 1:
        raise ValueError("num_groups and num_layers must be >= 1")
    return torch.zeros(num_groups, num_layers, NUM_FIELDS, dtype=dtype, device=device)


@dataclass
class LayerStatistics:
    """Finished per-layer activation statistics (host, float64).

    Attributes:
        sums: ``(G, L, NUM_FIELDS)`` float64 array of the additive sums listed in ``FIELDS``.
        width: ``(L,)`` int array, the number of elements per token at the capture site
            (``D``: hidden size for ``resid_post``, intermediate size for ``mlp_act``).
        site: capture-site name (see :mod:`eavss.stats.sites`).
        group_names: ``G`` names (``["all"]`` for plain calibration; e.g.
            ``["truthful", "hallucinated"]`` for EAVSS).
        sparsity_rule: description of the near-zero threshold used (for the report).
        has_block_influence: whether ``bi_sum`` was collected (``resid_post`` with block
            influence on); :meth:`block_influence` is NaN otherwise.
        massive: the massive-token factor ``k`` the statistics were collected with (None: off);
            see :meth:`n_massive`.
    """

    sums: np.ndarray
    width: np.ndarray
    site: str
    group_names: list[str]
    sparsity_rule: dict = field(default_factory=dict)
    has_block_influence: bool = True
    massive: float | None = None

    # --- views ---------------------------------------------------------------------------
    def _f(self, name: str) -> np.ndarray:
        return self.sums[..., F[name]]

    @property
    def num_layers(self) -> int:
        return int(self.sums.shape[1])

    @property
    def num_groups(self) -> int:
        return int(self.sums.shape[0])

    def group(self, name: str) -> "LayerStatistics":
        """Statistics of one group only (shape ``(1, L, NUM_FIELDS)``)."""
        i = self.group_names.index(name)
        return LayerStatistics(self.sums[i:i + 1].copy(), self.width, self.site, [name], dict(self.sparsity_rule),
                               self.has_block_influence, self.massive)

    def pooled(self) -> "LayerStatistics":
        """All groups summed into one (``group_names == ["all"]``)."""
        return LayerStatistics(self.sums.sum(axis=0, keepdims=True), self.width, self.site, ["all"],
                               dict(self.sparsity_rule), self.has_block_influence, self.massive)

    # --- derived per-layer quantities, shape (G, L) ---------------------------------------
    def n_tokens(self) -> np.ndarray:
        """Masked tokens per group and layer, ``(G, L)`` (massive tokens excluded, see :meth:`n_massive`)."""
        return self._f("n_tokens")

    def n_massive(self) -> np.ndarray:
        """Masked tokens left out of every statistic as massive, per group and layer, ``(G, L)``
        (all 0 when the statistics were collected with ``massive`` off)."""
        return self._f("n_massive")

    def massive_fraction(self) -> np.ndarray:
        """``n_massive / (n_tokens + n_massive)``: the fraction of masked tokens left out, ``(G, L)``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._f("n_massive") / (self._f("n_tokens") + self._f("n_massive"))

    def n_elements(self) -> np.ndarray:
        """Masked elements ``D * n_tokens`` per group and layer, ``(G, L)``."""
        return self._f("n_tokens") * self.width[None, :]

    def element_mean(self) -> np.ndarray:
        """Mean over all masked elements (tokens x width), ``(G, L)``; NaN where no tokens."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._f("sum_mean") / self._f("n_tokens")

    def element_variance(self) -> np.ndarray:
        """Population variance over all masked elements (tokens x width), ``(G, L)``.

        ``M2 = within_m2 + D * (sum_mean_sq - n * mu^2)``; ``var = M2 / (D * n)``. NaN where
        a group has no tokens. Clipped at 0 against round-off.
        """
        n = self._f("n_tokens")
        d = self.width[None, :].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mu = self._f("sum_mean") / n
            between = self._f("sum_mean_sq") - n * mu * mu
            m2 = self._f("within_m2") + d * np.maximum(between, 0.0)
            return m2 / (d * n)

    def token_variance(self) -> np.ndarray:
        """Mean over masked tokens of the per-token variance across the width, ``(G, L)``."""
        n = self._f("n_tokens")
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._f("within_m2") / (self.width[None, :] * n)

    def pooled_variance(self) -> np.ndarray:
        """Official-code variance: per sequence, mean-pool the masked tokens to a ``(D,)``
        vector, take its unbiased variance across ``D``; average over sequences. ``(G, L)``.

        Source: official AVSS code (``calculate_activation_variance``), with padding excluded
        from the pool and each sequence weighted equally (the official code averages padded
        positions in and weights batches, not sequences, equally).
        """
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._f("pooled_var_sum") / self._f("n_seqs")

    def sparsity(self) -> np.ndarray:
        """Fraction of masked elements that are near zero, ``(G, L)``, in [0, 1]."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._f("near_zero") / self.n_elements()

    def block_influence(self) -> np.ndarray:
        """ShortGPT block influence ``BI = mean_t (1 - cos(x_t, a_t))``, ``(G, L)``.

        ``x_t`` is the layer's input hidden state and ``a_t`` its output, for the
        ``resid_post`` site only (NaN elsewhere). Source: Men et al. 2024 (ShortGPT), eq. 1.
        """
        if not self.has_block_influence:
            return np.full(self.sums.shape[:2], np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._f("bi_sum") / self._f("n_tokens")

    def variance(self, definition: str) -> np.ndarray:
        """Variance by name: ``element`` | ``token`` | ``pooled`` (see :data:`VARIANCE_DEFINITIONS`)."""
        try:
            fn = VARIANCE_DEFINITIONS[definition]
        except KeyError:
            from eavss.errors import EavssError

            raise EavssError(f"unknown variance definition {definition!r}; choose one of {sorted(VARIANCE_DEFINITIONS)}") from None
        return fn(self)

    # --- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able dict (exact sums and widths; reload with :meth:`from_dict`)."""
        return {
            "site": self.site,
            "group_names": list(self.group_names),
            "fields": list(FIELDS),
            "width": [int(w) for w in self.width],
            "sums": self.sums.tolist(),
            "sparsity_rule": dict(self.sparsity_rule),
            "has_block_influence": self.has_block_influence,
            "massive": self.massive,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LayerStatistics":
        """Inverse of :meth:`to_dict`. Fields are matched by name; statistics written before
        ``n_massive`` existed load with ``n_massive = 0`` (they were collected without exclusion)."""
        from eavss.errors import EavssError

        names = list(d["fields"])
        missing = [f for f in FIELDS if f not in names]
        if len(set(names)) != len(names) or set(names) - set(FIELDS) or set(missing) - set(_ZERO_IF_MISSING):
            raise EavssError("statistics were written by an incompatible eavss version (fields differ); re-run `eavss score`")
        raw = np.asarray(d["sums"], dtype=np.float64)
        if raw.ndim != 3 or raw.shape[-1] != len(names):
            raise EavssError(f"statistics sums have shape {raw.shape}, expected (groups, layers, {len(names)})")
        sums = np.zeros(raw.shape[:2] + (NUM_FIELDS,), dtype=np.float64)
        for j, name in enumerate(names):
            sums[..., F[name]] = raw[..., j]
        massive = d.get("massive")
        return cls(sums, np.asarray(d["width"], dtype=np.int64), d["site"], list(d["group_names"]),
                   dict(d.get("sparsity_rule", {})), bool(d.get("has_block_influence", True)),
                   None if massive is None else float(massive))


from eavss.registry import Registry  # noqa: E402  (the registry is filled from the class above)

VARIANCE_DEFINITIONS: Registry = Registry("variance definition", key="stats.variance")
VARIANCE_DEFINITIONS.register("element", LayerStatistics.element_variance,
                              help="variance over every masked element (tokens x width)")
VARIANCE_DEFINITIONS.register("token", LayerStatistics.token_variance,
                              help="mean per-token variance across the width")
VARIANCE_DEFINITIONS.register("pooled", LayerStatistics.pooled_variance,
                              help="official AVSS code: mean-pool each sequence, then variance")
"""Named variance definitions. ``element`` (default): variance over every masked element of the
layer's activations (tokens x width). ``token``: mean per-token variance across the width.
``pooled``: the official AVSS code's mean-pool-then-variance, padding-aware."""
