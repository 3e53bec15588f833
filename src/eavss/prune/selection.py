"""Which layers to remove, given per-layer importance scores (higher = more important).

Two rules, both pure functions of an ``(L,)`` score vector:

* **count** -- remove the ``k`` lowest-scoring layers, ``k = floor(fraction * L_candidates)``
  (floor so that a fraction never removes more than asked; ``fraction=0.25`` of 30 layers
  removes 7).
* **mass** -- the paper's rule (AVSS Sec. 3.3): normalise scores to sum to 1, sort ascending,
  and remove layers while the cumulative normalised score stays ``<= mass``. The official code
  takes the cumulative sum in *layer order* and sorts afterwards, which selects layers by their
  position, not their score; here the sort comes first.

Layers can be protected (never removed): the first ``protect_first`` and last ``protect_last``.
Ties in score are broken by lower layer index first (deterministic).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from eavss.errors import EavssError
from eavss.registry import choices

RULES = choices(("count", "remove floor(fraction * L) lowest-scoring layers"),
                ("mass", "remove lowest-scoring layers while their normalised scores sum to <= mass"),
                kind="prune rule", key="prune.rule")


def _candidates(num_layers: int, protect_first: int, protect_last: int) -> list[int]:
    if protect_first < 0 or protect_last < 0:
        raise EavssError("prune.protect_first and prune.protect_last must be >= 0")
    cands = [i for i in range(num_layers) if protect_first <= i < num_layers - protect_last]
    if not cands:
        raise EavssError(f"protecting the first {protect_first} and last {protect_last} of {num_layers} layers leaves "
                         "nothing to remove; lower prune.protect_first/protect_last")
    return cands


def ascending_order(scores: Sequence[float], candidates: Sequence[int]) -> list[int]:
    """Candidate layer indices sorted by ascending score, ties by index."""
    s = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(s[list(candidates)])):
        raise EavssError("layer scores contain NaN/Inf; cannot rank layers")
    return sorted(candidates, key=lambda i: (s[i], i))


def select_by_count(scores: Sequence[float], fraction: float, protect_first: int = 0,
                    protect_last: int = 0) -> list[int]:
    """Indices (0-based, ascending) of the ``k = floor(fraction * L)`` least important layers.

    ``L`` is the model's number of layers; the ``k`` are chosen among the candidate (unprotected)
    layers, so protecting layers changes *which* layers go, never *how many*. Raises EavssError
    when ``fraction`` is outside (0, 1), selects no layer, or asks for more layers than the
    protection leaves.
    """
    L = len(scores)
    if not (isinstance(fraction, (int, float)) and 0.0 < fraction < 1.0):
        raise EavssError(f"prune fraction must be in (0, 1), got {fraction}; e.g. --fraction 0.25")
    cands = _candidates(L, protect_first, protect_last)
    k = math.floor(fraction * L + 1e-9)
    if k < 1:
        raise EavssError(f"fraction {fraction} of {L} layers rounds down to 0 layers; raise --fraction")
    if k > len(cands) or k >= L:
        raise EavssError(f"fraction {fraction} removes {k} of {L} layers but protecting the first {protect_first} and "
                         f"last {protect_last} leaves {len(cands)} candidates; lower --fraction or the protection")
    return sorted(ascending_order(scores, cands)[:k])


def select_by_mass(scores: Sequence[float], mass: float, protect_first: int = 0, protect_last: int = 0) -> list[int]:
    """Indices of the least important layers whose normalised scores sum to at most ``mass``.

    Scores are normalised over *all* layers (``s / sum(s)``), so ``mass`` is the share of the
    model's total score removed. Raises EavssError when ``mass`` is outside (0, 1), when scores are
    negative, when no layer fits, or when every layer would go.
    """
    s = np.asarray(scores, dtype=np.float64)
    if not (isinstance(mass, (int, float)) and 0.0 < mass < 1.0):
        raise EavssError(f"prune mass must be in (0, 1), got {mass}; e.g. --mass 0.25")
    if np.any(s < 0) or s.sum() <= 0:
        raise EavssError("the mass rule needs non-negative scores with a positive sum; use prune.rule=count")
    cands = _candidates(len(s), protect_first, protect_last)
    norm = s / s.sum()
    chosen, cum = [], 0.0
    for i in ascending_order(norm, cands):
        if cum + norm[i] > mass + 1e-12:
            break
        cum += norm[i]
        chosen.append(i)
    if not chosen:
        low = ascending_order(norm, cands)[0]
        raise EavssError(f"mass {mass} selects no layer: the least important layer ({low}) alone holds "
                         f"{norm[low]:.3f} of the score; raise --mass or use --fraction")
    if len(chosen) >= len(s):
        raise EavssError(f"mass {mass} would remove every layer; lower --mass")
    return sorted(chosen)


def select_layers(scores: Sequence[float], rule: str = "count", fraction: float = 0.25, mass: float = 0.25,
                  protect_first: int = 0, protect_last: int = 0) -> list[int]:
    """Dispatch to :func:`select_by_count` or :func:`select_by_mass` by ``rule``."""
    if rule == "count":
        return select_by_count(scores, fraction, protect_first, protect_last)
    if rule == "mass":
        return select_by_mass(scores, mass, protect_first, protect_last)
    raise EavssError(f"unknown prune rule {rule!r}; choose one of {list(RULES)}")
