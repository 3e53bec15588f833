"""Score-free layer-selection baselines of the depth-pruning literature.

* :func:`random_layers` -- ``k`` layers drawn uniformly without replacement (seeded), the usual
  sanity baseline (e.g. ShortGPT, arXiv 2403.03853; Shortened LLaMA, arXiv 2402.02834).
* :func:`last_layers` -- the ``k`` layers just before the final one, ``L-1-k .. L-2``: the
  "prune the deeper layers" baseline (Gromov et al. 2024, arXiv 2403.17887, who keep the final
  layer; cf. the reverse-order baseline of ShortGPT, which removes from the end).

Both return sorted 0-based indices, ready for :func:`eavss.models.surgery.remove_layers`.
"""

from __future__ import annotations

import numpy as np

from eavss.errors import EavssError


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise EavssError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def random_layers(num_layers: int, k: int, seed: int, protect_first: int = 0, protect_last: int = 0) -> list[int]:
    """``k`` distinct layers drawn uniformly at random from the unprotected ones (seeded).

    Draws with ``numpy.random.default_rng(seed).choice(candidates, k, replace=False)``, where
    ``candidates`` are the layers ``protect_first .. num_layers - protect_last - 1``; the same
    arguments always give the same layers (on every platform and numpy version that keeps the
    Generator stream stable).

    Args:
        num_layers: ``L`` decoder layers in the model (>= 2).
        k: layers to select, ``1 <= k <= min(L - 1, number of candidates)``.
        seed: RNG seed (any non-negative int).
        protect_first / protect_last: never select the first / last that many layers.

    Returns:
        Sorted 0-based layer indices (``k`` of them).

    Raises:
        EavssError: non-integer or out-of-range ``num_layers``, ``k``, ``seed`` or protections, or
            fewer candidates than ``k``.
    """
    L = _check_int("num_layers", num_layers, 2)
    k = _check_int("k", k, 1)
    seed = _check_int("seed", seed, 0)
    pf = _check_int("protect_first", protect_first, 0)
    pl = _check_int("protect_last", protect_last, 0)
    if k >= L:
        raise EavssError(f"k={k} would remove all {L} layers; pass k <= {L - 1}")
    cands = np.arange(pf, L - pl)
    if k > len(cands):
        raise EavssError(f"protecting the first {pf} and last {pl} of {L} layers leaves {max(len(cands), 0)} "
                         f"candidates, fewer than k={k}; lower k or the protections")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(cands, size=k, replace=False))


def last_layers(num_layers: int, k: int) -> list[int]:
    """The ``k`` layers just before the final layer: ``[L-1-k, ..., L-2]`` (the final layer is kept).

    Source: the "simpler pruning strategy" of Gromov et al. 2024 (arXiv 2403.17887): drop the
    deepest layers but keep the final one, which the paper finds essential.

    Args:
        num_layers: ``L`` decoder layers (>= 2).
        k: layers to select, ``1 <= k <= L - 1``.

    Returns:
        Sorted 0-based layer indices.

    Raises:
        EavssError: non-integer ``num_layers``/``k``, or ``k`` outside ``1..L-1``.
    """
    L = _check_int("num_layers", num_layers, 2)
    k = _check_int("k", k, 1)
    if k > L - 1:
        raise EavssError(f"k={k} layers before the final one do not exist in a {L}-layer model; pass k <= {L - 1}")
    return list(range(L - 1 - k, L - 1))
