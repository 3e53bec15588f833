"""Angular distance between residual-stream states ``n`` layers apart (Gromov et al. 2024).

Gromov, Tirumala, Shapourian, Glorioso, Roberts, *The Unreasonable Ineffectiveness of the Deeper
Layers*, arXiv 2403.17887, Sec. 3 (the layer-pruning algorithm, Fig. 1): for a block of ``n`` consecutive decoder layers
starting at layer ``l``,

    d(x_l, x_{l+n}) = arccos( x_l . x_{l+n} / (|x_l| |x_{l+n}|) ) / pi        in [0, 1]

where ``x_l`` is the residual stream entering decoder layer ``l`` (``x_0`` = the embeddings as the
first layer sees them) and ``x_L`` is the output of the last decoder layer *before* the final
norm. The paper averages ``d`` over the calibration samples at the last token of each sequence,
and removes the block ``l*, ..., l*+n-1`` with ``l* = argmin_l d(x_l, x_{l+n})`` (the block that
changes the representation least).

States are captured with forward hooks on the decoder layers (pre-hooks for the inputs, a hook
on the last layer for ``x_L``), never from ``output_hidden_states``, whose last entry is after
the final norm. Only ``n + 1`` states of the current batch (already restricted to the selected
tokens) are alive at any time; per-token cosines are computed in float64 and summed in float64.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from eavss.errors import EavssError
from eavss.models.layers import find_decoder_layers

TOKEN_MODES = ("last", "all")
"""``last``: the last real token of each sequence (the paper); ``all``: every real token."""


def _select(x: torch.Tensor, mask: torch.Tensor, tokens: str) -> torch.Tensor:
    """Rows of ``x`` (B, T, D) at the selected tokens: (B', D) for ``last``, (N, D) for ``all``."""
    if tokens == "all":
        return x[mask]
    T = mask.shape[1]
    has = mask.any(dim=1)
    # last True position per row (works for right and left padding)
    last = T - 1 - torch.flip(mask, dims=[1]).long().argmax(dim=1)
    rows = torch.nonzero(has, as_tuple=True)[0]
    return x[rows, last[rows]]


class _AngularHooks:
    """Forward hooks that accumulate sum_t arccos(cos(x_l, x_{l+n}))/pi per start layer l."""

    def __init__(self, layers: torch.nn.ModuleList, n: int, tokens: str):
        self.layers, self.n, self.tokens = layers, n, tokens
        self.L = len(layers)
        self.sums: list[torch.Tensor | None] = [None] * (self.L - n + 1)
        self.mask: torch.Tensor | None = None
        self._mask_on: dict = {}
        self._sel: dict[int, torch.Tensor] = {}
        self._handles: list = []

    def _boundary(self, j: int, x: torch.Tensor) -> None:
        """Residual state ``x_j`` (B, T, D) arrived; pair it with ``x_{j-n}``."""
        if self.mask is None:
            return
        mask = self._mask_on.get(x.device)
        if mask is None:
            mask = self._mask_on[x.device] = self.mask.to(x.device)
        if x.shape[:2] != mask.shape:
            raise EavssError(f"decoder layer {min(j, self.L - 1)}: hidden state {tuple(x.shape)} does not match the "
                             f"attention mask {tuple(mask.shape)}; pass batches whose attention_mask matches input_ids")
        sel = _select(x.detach(), mask, self.tokens)
        l = j - self.n
        if l >= 0:
            a = self._sel.pop(l).to(sel.device, torch.float64)
            b = sel.to(torch.float64)
            dot = (a * b).sum(-1)
            den = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
            cos = (dot / den.clamp_min(1e-300)).clamp(-1.0, 1.0)
            ang = torch.arccos(cos).sum() / math.pi
            self.sums[l] = ang if self.sums[l] is None else self.sums[l] + ang.to(self.sums[l].device)
        if j + self.n <= self.L:
            self._sel[j] = sel

    def __enter__(self):
        def pre(j):
            def hook(module, args, kwargs):
                from eavss.stats.sites import input_tensor

                x = input_tensor(args, kwargs)
                if x is None:
                    raise EavssError(f"decoder layer {j} was called without a hidden-state tensor; "
                                     "this architecture is not supported by angular_distances")
                self._boundary(j, x)
            return hook

        def post(module, args, kwargs, output):
            from eavss.stats.sites import output_tensor

            self._boundary(self.L, output_tensor(output))

        for j, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(pre(j), with_kwargs=True))
        self._handles.append(self.layers[-1].register_forward_hook(post, with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        self._sel = {}

    def set_batch(self, mask: torch.Tensor) -> None:
        self.mask = mask.bool()
        self._mask_on = {self.mask.device: self.mask}
        self._sel = {}


@torch.inference_mode()
def angular_distances(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], n: int,
                      tokens: str = "last", progress: bool = False) -> np.ndarray:
    """Mean angular distance ``d(x_l, x_{l+n})`` for every start layer ``l`` (Gromov et al. 2024).

    ``d = arccos(cos(x_l, x_{l+n})) / pi`` (dimensionless, in [0, 1]; 0 = same direction), with
    ``x_l`` (D,) the residual stream entering decoder layer ``l`` and ``x_L`` the last layer's
    output before the final norm (source: arXiv 2403.17887, Sec. 3). Averaged over

    * ``tokens="last"`` (the paper): the last real token of each sequence (last position with
      ``attention_mask = 1``; right or left padding), every sequence weighted equally;
    * ``tokens="all"``: every real token, every token weighted equally (longer sequences weigh more).

    A zero-norm state gives cos = 0 (d = 0.5) for that token. Runs the base model (no LM head) once
    over ``batches`` with ``use_cache=False``, in eval mode (training mode restored afterwards).

    Args:
        model: a causal LM whose decoder layers :func:`~eavss.models.layers.find_decoder_layers` finds.
        batches: list of dicts with ``input_ids`` (B, T) and ``attention_mask`` (B, T) (see
            :func:`eavss.data.calibration.make_batches`).
        n: block size, ``1 <= n <= L``.
        tokens: ``"last"`` or ``"all"``.
        progress: tqdm bar over the batches.

    Returns:
        ``(L - n + 1,)`` float64 array; entry ``l`` is the distance across layers ``l .. l+n-1``
        (removing them is the candidate block; see :func:`best_block`). For ``n = 1`` entry ``l``
        is layer ``l``'s own distance, see :func:`angular_importance`.

    Raises:
        EavssError: bad ``n`` or ``tokens``, no batches, a malformed batch, or no real token.
    """
    from tqdm.auto import tqdm

    from eavss.stats.collector import forward_for_stats, input_device

    if tokens not in TOKEN_MODES:
        raise EavssError(f"unknown tokens={tokens!r} for the angular distance; choose 'last' (the paper) or 'all'")
    _, layers = find_decoder_layers(model)
    L = len(layers)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= int(n) <= L:
        raise EavssError(f"block size n={n!r} must be an integer in 1..{L} for a model with {L} layers")
    n = int(n)
    if isinstance(batches, Mapping):
        raise EavssError("batches must be a list of dicts with input_ids and attention_mask, got one dict; wrap it in a list")
    blist = list(batches)
    if not blist:
        raise EavssError("no calibration batches were given; pass a non-empty list of "
                         "{'input_ids': (B, T), 'attention_mask': (B, T)} dicts")
    device = input_device(model)
    runner = forward_for_stats(model)
    was_training = model.training
    model.eval()
    count = 0
    try:
        with _AngularHooks(layers, n, tokens) as hk:
            for i, b in enumerate(tqdm(blist, desc=f"angular distance (n={n})", unit="batch", disable=not progress)):
                if not isinstance(b, Mapping) or "input_ids" not in b or "attention_mask" not in b:
                    raise EavssError(f"batch {i} is not a dict with input_ids and attention_mask; "
                                     "build batches with eavss.data.calibration.make_batches")
                am = b["attention_mask"]
                if am.dim() != 2 or am.shape != b["input_ids"].shape:
                    raise EavssError(f"batch {i}: input_ids {tuple(b['input_ids'].shape)} and attention_mask "
                                     f"{tuple(am.shape)} must both be (batch, seq) of the same shape")
                m = am.bool()
                k = int(m.sum()) if tokens == "all" else int(m.any(dim=1).sum())
                if k == 0:
                    continue
                count += k
                hk.set_batch(m.to(device))
                runner(input_ids=b["input_ids"].to(device), attention_mask=am.to(device), use_cache=False)
            sums = hk.sums
    finally:
        if was_training:
            model.train()
    if count == 0:
        raise EavssError("the calibration batches contain no real token (every attention_mask is 0); pass real text")
    return np.array([float(s) for s in sums], dtype=np.float64) / count


def angular_importance(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                       tokens: str = "last", progress: bool = False) -> np.ndarray:
    """Per-layer importance from the angular distance with block size 1: ``d(x_l, x_{l+1})``.

    How far layer ``l`` turns the residual stream (arccos of the cosine between its input and its
    output, divided by pi; Gromov et al. 2024, arXiv 2403.17887, Sec. 3, with n = 1). Higher = more
    important; ranking single layers by it is the ``n = 1`` case of the paper's block rule. Compare
    ShortGPT's block influence ``1 - cos`` (arXiv 2403.03853), a different monotone function of the
    same per-token cosine, averaged over all tokens.

    Returns:
        ``(L,)`` float64 array in [0, 1]. Args and Raises: as :func:`angular_distances` with ``n = 1``.
    """
    return angular_distances(model, batches, 1, tokens=tokens, progress=progress)


def best_block(distances: Sequence[float], n: int) -> list[int]:
    """The ``n`` contiguous layers to remove: ``l*, ..., l*+n-1`` with ``l* = argmin_l distances[l]``.

    Gromov et al. 2024 (arXiv 2403.17887), Sec. 3 and Fig. 1: prune the block whose input and output
    states are closest in angle. Ties go to the lowest start layer.

    Args:
        distances: ``(L - n + 1,)`` output of :func:`angular_distances` for this ``n``.
        n: the block size used to compute ``distances``.

    Returns:
        Sorted 0-based layer indices, ``n`` of them.

    Raises:
        EavssError: ``n`` < 1, ``distances`` empty, not 1-D or not finite, or the block would be the
            whole model (``len(distances) == 1``, i.e. ``n = L``).
    """
    d = np.asarray(distances, dtype=np.float64)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 1:
        raise EavssError(f"block size n={n!r} must be a positive integer")
    if d.ndim != 1 or d.size == 0:
        raise EavssError(f"distances must be a non-empty 1-D array (angular_distances output), got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise EavssError("angular distances contain NaN/Inf; check the model for non-finite activations")
    if d.size == 1:
        raise EavssError(f"n={n} covers every layer of the model (a single distance); pass a smaller block size")
    start = int(np.argmin(d))
    return list(range(start, start + int(n)))
