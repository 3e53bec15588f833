"""Ground-truth layer importance by ablation: the calibration loss with decoder layers skipped.

* :func:`calibration_loss` -- mean next-token negative log-likelihood of a model on calibration
  batches (nats/token), summed in float64 over real (non-padding) targets only.
* :func:`layer_skip_loss` -- the loss with each decoder layer skipped alone, and its increase
  over the full model. This is the project's *ground truth* of single-layer importance (what
  removing the layer costs in language modelling on the calibration text); ranking layers by it
  is the perplexity criterion of Shortened LLaMA (Kim et al. 2024, arXiv 2402.02834, the
  "PPL" criterion: remove each block alone and measure the calibration perplexity).
* :func:`sleb_select` -- SLEB (Song et al. 2024, arXiv 2402.09025, Algorithm 1): greedily remove,
  one at a time, the block whose removal raises the calibration loss least given the blocks
  already removed.

Layers are skipped with :func:`eavss.models.surgery.skip_layers` (the model itself, no copy), so
every function leaves the model exactly as it found it.

Which tokens count: in a sequence with attention mask ``m`` (1 = real token), the prediction at
position ``t`` of token ``t+1`` counts iff ``m[t] = m[t+1] = 1``; so right padding (the project's
batch format, :func:`eavss.data.calibration.make_batches`) gives exactly the tokens of the
unpadded sequence, and a sequence of ``n`` tokens contributes ``n - 1`` targets.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from eavss.errors import EavssError
from eavss.models.layers import find_decoder_layers
from eavss.models.surgery import skip_layers


def _as_batch_list(batches: Iterable[Mapping[str, torch.Tensor]]) -> list[Mapping[str, torch.Tensor]]:
    """The batches as a list (they are read more than once), checked for the two required keys."""
    if isinstance(batches, Mapping):
        raise EavssError("batches must be a list of dicts with input_ids and attention_mask, got one dict; wrap it in a list")
    out = list(batches)
    if not out:
        raise EavssError("no calibration batches were given; pass a non-empty list of "
                         "{'input_ids': (B, T), 'attention_mask': (B, T)} dicts")
    for i, b in enumerate(out):
        if not isinstance(b, Mapping) or "input_ids" not in b or "attention_mask" not in b:
            raise EavssError(f"batch {i} is not a dict with input_ids and attention_mask; "
                             "build batches with eavss.data.calibration.make_batches")
        ids, am = b["input_ids"], b["attention_mask"]
        if ids.dim() != 2 or am.shape != ids.shape:
            raise EavssError(f"batch {i}: input_ids {tuple(ids.shape)} and attention_mask {tuple(am.shape)} must both "
                             "be (batch, seq) of the same shape")
    return out


def _device(model: torch.nn.Module) -> torch.device:
    from eavss.stats.collector import input_device

    return input_device(model)


class _eval_mode:
    """Put the model in eval mode for the duration (restored afterwards)."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        if self.was_training:
            self.model.train()


def _nll_sums(model, batches, device, bar=None) -> tuple[float, int]:
    """(sum of next-token NLL in nats, float64; number of targets) over ``batches``."""
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for b in batches:
        ids = b["input_ids"].to(device)
        am = b["attention_mask"].to(device)
        valid = am[:, 1:].bool() & am[:, :-1].bool()  # (B, T-1): target t+1 real and predicted from a real token
        n = int(valid.sum())
        if n:
            logits = model(input_ids=ids, attention_mask=am, use_cache=False).logits  # (B, T, V)
            pred = logits[:, :-1][valid].float()  # (n, V)
            target = ids[:, 1:][valid]  # (n,)
            nll = torch.nn.functional.cross_entropy(pred, target, reduction="none")
            total += nll.to(torch.float64).sum().cpu()
            count += n
            del logits
        if bar is not None:
            bar.update(1)
    return float(total), count


def _loss_dict(nll_sum: float, n: int) -> dict:
    loss = nll_sum / n
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf, "nll_sum": nll_sum, "num_tokens": n}


def _no_tokens() -> EavssError:
    return EavssError("the calibration batches contain no scorable token (every sequence has fewer than 2 real "
                      "tokens); pass longer sequences")


@torch.inference_mode()
def calibration_loss(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                     progress: bool = False) -> dict:
    """Mean next-token negative log-likelihood of ``model`` on calibration batches.

    ``loss = sum_{b,t} -log p(x_{b,t+1} | x_{b,<=t}) / N`` over the targets whose position and
    predecessor are both real tokens (``attention_mask[b, t] = attention_mask[b, t+1] = 1``); the
    log-probabilities come from a float32 log-softmax of the logits and are summed in float64.
    Padding never counts: a right-padded sequence scores exactly its unpadded tokens.

    Args:
        model: a causal LM (``model(input_ids, attention_mask).logits`` of shape (B, T, V)); run in
            eval mode under ``torch.inference_mode`` (training mode restored afterwards).
        batches: list of dicts with ``input_ids`` (B, T) long and ``attention_mask`` (B, T) 0/1, as
            made by :func:`eavss.data.calibration.make_batches` (right padding).
        progress: show a tqdm bar over the batches.

    Returns:
        ``{"loss": nats/token, "perplexity": exp(loss), "nll_sum": nats (float64 sum),
        "num_tokens": N targets}``.

    Raises:
        EavssError: no batches, a malformed batch, or no sequence with at least 2 real tokens.
    """
    from tqdm.auto import tqdm

    blist = _as_batch_list(batches)
    with _eval_mode(model), tqdm(total=len(blist), desc="calibration loss", unit="batch", disable=not progress) as bar:
        s, n = _nll_sums(model, blist, _device(model), bar)
    if n == 0:
        raise _no_tokens()
    return _loss_dict(s, n)


@torch.inference_mode()
def layer_skip_loss(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                    layers: Sequence[int] | None = None, progress: bool = False) -> dict:
    """Calibration loss with each decoder layer skipped alone: the ground truth of layer importance.

    For every layer ``l`` in ``layers``: ``loss_skipped[l]`` = :func:`calibration_loss` of the model
    with layer ``l`` removed (skipped in place with :func:`eavss.models.surgery.skip_layers`; the
    remaining layers renumbered as a pruned model would be), and ``delta[l] = loss_skipped[l] -
    base_loss`` in nats/token: how much worse the model predicts the calibration text without
    that layer (higher = more important; can be negative). Ranking layers by ``loss_skipped`` (or
    the perplexity ``exp(loss_skipped)``) is the PPL criterion of Shortened LLaMA (Kim et al. 2024,
    arXiv 2402.02834); it is also SLEB's first step (:func:`sleb_select`).

    Cost: ``1 + len(layers)`` passes over the batches (logits included).

    Args:
        model: a causal LM whose decoder layers :func:`~eavss.models.layers.find_decoder_layers`
            finds; left unchanged.
        batches: list of ``{"input_ids": (B, T), "attention_mask": (B, T)}`` (right padding).
        layers: 0-based layer indices to ablate (default: all ``L``).
        progress: one tqdm bar over all passes (unit: batch).

    Returns:
        dict with ``base_loss`` (nats/token), ``base_perplexity``, ``num_tokens`` (targets per
        pass), ``layers`` (sorted indices ablated), and ``(L,)`` float64 arrays
        ``loss_skipped``, ``perplexity_skipped``, ``delta`` (NaN for layers not in ``layers``),
        and ``importance_rank`` (``(L,)`` int, 1 = largest ``delta``; ties to the lower index; 0
        for layers not ablated).

    Raises:
        EavssError: bad batches (see :func:`calibration_loss`), or a layer index not an int, out of
            range or repeated, or a model with a single layer (skipping it leaves nothing).
    """
    from tqdm.auto import tqdm

    blist = _as_batch_list(batches)
    _, mods = find_decoder_layers(model)
    L = len(mods)
    if L < 2:
        raise EavssError("the model has a single decoder layer; skipping it would leave none, pass a model with >= 2 layers")
    todo = list(range(L)) if layers is None else _check_layers(layers, L)
    device = _device(model)
    loss = np.full(L, np.nan)
    with _eval_mode(model), tqdm(total=len(blist) * (1 + len(todo)), desc="layer-skip loss", unit="batch",
                                 disable=not progress) as bar:
        s, n = _nll_sums(model, blist, device, bar)
        if n == 0:
            raise _no_tokens()
        base = s / n
        for layer in todo:
            with skip_layers(model, [layer]):
                s_l, n_l = _nll_sums(model, blist, device, bar)
            loss[layer] = s_l / n_l
    delta = loss - base
    rank = np.zeros(L, dtype=np.int64)
    for r, i in enumerate(sorted(todo, key=lambda i: (_nan_last(-delta[i]), i)), 1):
        rank[i] = r
    with np.errstate(over="ignore"):
        ppl = np.exp(loss)
    return {
        "base_loss": base,
        "base_perplexity": math.exp(base) if base < 700 else math.inf,
        "num_tokens": n,
        "layers": todo,
        "loss_skipped": loss,
        "perplexity_skipped": ppl,
        "delta": delta,
        "importance_rank": rank,
    }


def _nan_last(x: float) -> float:
    """Sort key: NaN (a non-finite loss) after every number."""
    return math.inf if math.isnan(x) else x


def _check_layers(layers: Sequence[int], L: int) -> list[int]:
    """Sorted unique layer indices in 0..L-1 (any number of them, unlike removal), or EavssError."""
    if isinstance(layers, (str, bytes)):
        raise EavssError(f"layers must be a list of integers, got {layers!r}; pass e.g. [3, 7]")
    out = []
    for raw in layers:
        if isinstance(raw, bool) or not isinstance(raw, (int, np.integer)):
            raise EavssError(f"layer index {raw!r} is not an integer; pass 0-based integer layer indices")
        i = int(raw)
        if not 0 <= i < L:
            raise EavssError(f"layer index {i} is out of range for a model with {L} layers; pass indices in 0..{L - 1}")
        if i in out:
            raise EavssError(f"layer index {i} is given more than once; pass each layer once")
        out.append(i)
    if not out:
        raise EavssError("layers is empty; pass at least one layer index, or None for all layers")
    return sorted(out)


@torch.inference_mode()
def sleb_select(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], k: int,
                progress: bool = False) -> dict:
    """SLEB: greedily pick ``k`` decoder layers to remove by calibration loss.

    Song et al. 2024, *SLEB: Streamlining LLMs through Redundancy Verification and Elimination of
    Transformer Blocks*, arXiv 2402.09025, Algorithm 1: starting from the full model, at each step
    try removing every remaining layer (together with the ones already removed), and remove for
    good the one whose removal gives the lowest calibration loss (equivalently, perplexity: the
    paper's metric is the calibration-set log-likelihood); repeat until ``k`` are removed. Ties go
    to the lower index. The first step is ``argmin`` of :func:`layer_skip_loss`'s ``loss_skipped``.

    Cost: ``1 + sum_{s=0}^{k-1} (L - s)`` passes over the batches. Layers are skipped in place with
    :func:`eavss.models.surgery.skip_layers`; the model is unchanged afterwards.

    Args:
        model: a causal LM with ``L`` decoder layers.
        batches: list of ``{"input_ids": (B, T), "attention_mask": (B, T)}`` (right padding).
        k: number of layers to remove, ``1 <= k <= L - 1``.
        progress: one tqdm bar over all passes (unit: batch).

    Returns:
        dict with ``removed`` (the ``k`` chosen layers, 0-based indices of the model as passed, in
        the order SLEB removed them), ``removed_sorted``, ``base_loss`` (nats/token, full model),
        ``loss`` and ``perplexity`` (lists of length ``k``: after each step), ``candidate_loss``
        (``(k, L)`` float64 array: loss of every candidate tried at each step, NaN for layers
        already removed), ``num_tokens``.

    Raises:
        EavssError: ``k`` not an int in ``1..L-1``, or bad batches (see :func:`calibration_loss`).
    """
    from tqdm.auto import tqdm

    blist = _as_batch_list(batches)
    _, mods = find_decoder_layers(model)
    L = len(mods)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= L - 1:
        raise EavssError(f"SLEB k={k!r} must be an integer in 1..{L - 1} for a model with {L} layers; "
                         "pass the number of layers to remove")
    k = int(k)
    device = _device(model)
    removed: list[int] = []
    losses: list[float] = []
    cand = np.full((k, L), np.nan)
    passes = 1 + sum(L - s for s in range(k))
    with _eval_mode(model), tqdm(total=len(blist) * passes, desc="SLEB", unit="batch", disable=not progress) as bar:
        s, n = _nll_sums(model, blist, device, bar)
        if n == 0:
            raise _no_tokens()
        base = s / n
        for step in range(k):
            for c in range(L):
                if c in removed:
                    continue
                with skip_layers(model, removed + [c]):
                    s_c, n_c = _nll_sums(model, blist, device, bar)
                cand[step, c] = s_c / n_c
            best = min((c for c in range(L) if c not in removed), key=lambda c: (_nan_last(cand[step, c]), c))
            removed.append(best)
            losses.append(float(cand[step, best]))
    return {
        "removed": removed,
        "removed_sorted": sorted(removed),
        "base_loss": base,
        "loss": losses,
        "perplexity": [math.exp(x) if x < 700 else math.inf for x in losses],
        "candidate_loss": cand,
        "num_tokens": n,
    }
