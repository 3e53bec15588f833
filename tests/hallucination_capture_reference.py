"""Frozen copy of the parts of ``eavss.hallucination.capture`` that changed when the per-step host
syncs were removed (commit def991d): ``PooledFeatures``, ``Capture``, ``teacher_forced_pass`` and
``greedy_generate`` as they were. The helpers that did not change (``PrefixCache``, ``_call``,
``_batches``, ``Generated``) are the module's own.

The tests compare the current generation with capture against it bit for bit. Do not edit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from eavss.errors import EavssError
from eavss.hallucination.capture import Generated, PrefixCache, _batches, _call  # unchanged: not copied
from eavss.stats.collector import input_device


# ---------------------------------------------------------------------------------------------
# pooled features


class PooledFeatures:
    """Forward hooks that mean-pool each decoder layer's capture-site tensor over a sample's
    counted tokens (the probe features).

    Usage: ``feats = PooledFeatures(model, N, site)``; ``feats.attach()``; per forward:
    ``feats.set_batch(mask (B, T), rows (B,))``; after all passes ``feats.result()``.

    Args:
        model: transformers causal LM; hooks go on the site of every decoder layer
            (:class:`eavss.stats.sites.SiteHooks`, shared with the statistics collector).
        num_samples: ``N``, the number of samples (rows index ``0..N-1``).
        site: capture site (``resid_post`` default, ``resid_delta``, ``mlp_act``).

    Memory: ``L * N * D`` float32 (30 x 2000 x 576 -> 138 MB at resid_post).
    """

    def __init__(self, model: torch.nn.Module, num_samples: int, site: str = "resid_post"):
        from eavss.stats.sites import SiteHooks

        self._hooks = SiteHooks(model, site, self._on_activation)
        self.site = site
        self.num_layers = len(self._hooks.modules)
        self.num_samples = int(num_samples)
        self._sums: torch.Tensor | None = None
        self.counts = torch.zeros(self.num_samples, dtype=torch.float64)
        self._mask: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None

    def _on_activation(self, index: int, act: torch.Tensor, args: tuple, kwargs: dict) -> None:
        if self._mask is None:
            return
        mask = self._mask.to(act.device)
        if act.shape[:2] != mask.shape:
            raise EavssError(f"layer {index}: activation shape {tuple(act.shape)} does not match mask {tuple(mask.shape)}")
        if self._sums is None:
            self._sums = torch.zeros(self.num_layers, self.num_samples, act.shape[-1], dtype=torch.float32,
                                     device=act.device)
        pooled = (act.float() * mask.unsqueeze(-1)).sum(1)  # (B, D)
        self._sums[index].index_add_(0, self._rows.to(self._sums.device), pooled.to(self._sums.device))

    def attach(self) -> None:
        """Register the hooks (idempotent)."""
        self._hooks.attach()

    def detach(self) -> None:
        """Remove the hooks."""
        self._hooks.detach()

    def set_batch(self, mask: torch.Tensor, rows: torch.Tensor) -> None:
        """Counted tokens ``mask`` ``(B, T)`` and sample index ``rows`` ``(B,)`` of the next forward."""
        self._mask = mask.float()
        self._rows = rows.long()
        self.counts.index_add_(0, rows.long().cpu(), mask.sum(1).double().cpu())

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (N, L, D) float32, counts (N,))``; rows with no counted token are NaN."""
        if self._sums is None:
            raise EavssError("no answer tokens were captured; every answer was empty")
        feats = self._sums.transpose(0, 1).cpu() / self.counts.clamp_min(1).float()[:, None, None]
        feats[self.counts == 0] = float("nan")
        return feats, self.counts.clone()


@dataclass
class Capture:
    """The statistics collector and the pooled-feature hooks, switched on and off together.

    ``collector``: an attached :class:`eavss.stats.ActivationStatsCollector` whose groups are
    sample indices; ``features``: :class:`PooledFeatures` or None.
    """

    collector: object
    features: PooledFeatures | None = None
    _on: bool = field(default=False, init=False)

    def on(self, mask: torch.Tensor, rows: torch.Tensor) -> None:
        """Count ``mask`` ``(B, T)`` tokens of samples ``rows`` ``(B,)`` in the next forward."""
        if not self._on:
            self.collector.attach()
            if self.features is not None:
                self.features.attach()
            self._on = True
        self.collector.set_batch(mask, rows)
        if self.features is not None:
            self.features.set_batch(mask, rows)

    def off(self) -> None:
        """Count nothing in the next forward passes (hooks removed)."""
        self.collector.detach()
        if self.features is not None:
            self.features.detach()
        self._on = False


# ---------------------------------------------------------------------------------------------
# teacher-forced answers


@torch.inference_mode()
def teacher_forced_pass(model: torch.nn.Module, rows: Sequence[tuple[list[int], list[int], int]], prefix: PrefixCache | None,
                        batch_size: int, capture: Capture, pad_id: int, progress: bool = False,
                        max_counted: int | None = None) -> dict:
    """Run ``prefix + suffix + answer`` for each row and capture the answer tokens.

    Args:
        model: causal LM (its decoder stack is run; no LM head).
        rows: ``(suffix_ids, answer_ids, sample_index)``; answer_ids non-empty.
        prefix: shared prefix cache (None: the suffix is the whole prompt).
        batch_size: rows per forward (right padding; rows sorted by length).
        capture: where the statistics and features go.
        pad_id: id used for padding (masked out).
        max_counted: count only the first ``max_counted`` answer tokens (None: all).

    Returns:
        ``{"sequences", "forward_tokens", "answer_tokens" (counted), "seconds"}``.

    Raises:
        EavssError: an empty answer; NonFiniteActivationError from the collector.
    """
    from tqdm.auto import tqdm

    from eavss.stats.collector import forward_for_stats

    runner = forward_for_stats(model)
    device = input_device(model)
    P = prefix.length if prefix is not None else 0
    order = sorted(range(len(rows)), key=lambda i: -(len(rows[i][0]) + len(rows[i][1])))
    n_fwd = n_ans = 0
    t0 = time.perf_counter()
    for idx in tqdm(list(_batches(order, batch_size)), desc="teacher-forced answers", unit="batch", disable=not progress):
        seqs = [rows[i][0] + rows[i][1] for i in idx]
        if any(not rows[i][1] for i in idx):
            raise EavssError("a teacher-forced answer has no tokens; check the source's answer texts")
        T = max(len(s) for s in seqs)
        B = len(idx)
        ids = torch.full((B, T), pad_id, dtype=torch.long)
        am = torch.zeros(B, T, dtype=torch.long)
        sm = torch.zeros(B, T, dtype=torch.bool)
        for b, i in enumerate(idx):
            s, a = rows[i][0], rows[i][1]
            ids[b, :len(s) + len(a)] = torch.tensor(s + a)
            am[b, :len(s) + len(a)] = 1
            sm[b, len(s):len(s) + (len(a) if max_counted is None else min(len(a), max_counted))] = True
        full_am = torch.cat([torch.ones(B, P, dtype=torch.long), am], 1).to(device)
        pos = (P + torch.arange(T)).expand(B, T).to(device)
        cache = prefix.expand(B) if prefix is not None else None
        capture.on(sm.to(device), torch.tensor([rows[i][2] for i in idx], device=device))
        _call(runner, ids.to(device), full_am, pos, cache)
        capture.collector.check_finite()
        n_fwd += int(am.sum())
        n_ans += int(sm.sum())
    capture.off()
    return {"sequences": len(rows), "forward_tokens": n_fwd, "answer_tokens": n_ans,
            "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------
# greedy generation


@torch.inference_mode()
def greedy_generate(model: torch.nn.Module, suffixes: Sequence[list[int]], prefix: PrefixCache | None, *,
                    max_new_tokens: int, newline_ids: Sequence[int], eos_ids: Sequence[int], pad_id: int,
                    batch_size: int, capture: Capture | None = None, sample_indices: Sequence[int] | None = None,
                    progress: bool = False, stats: dict | None = None, max_counted: int | None = None) -> list[Generated]:
    """Batched greedy decoding with left padding, stopping each row at a newline token or EOS.

    Args:
        model: causal LM.
        suffixes: per row, the prompt's token ids after the shared prefix (non-empty).
        prefix: the shared prefix's cache (None: ``suffixes`` are whole prompts).
        max_new_tokens: cap on generated tokens per row.
        newline_ids / eos_ids: stop tokens (:func:`newline_token_ids`, :func:`eos_token_ids`).
        pad_id: id of the left padding (masked out).
        batch_size: rows per batch; rows are sorted by prompt length first. A row that stops
            leaves the batch (its cache rows are dropped), so later steps cost only the rows
            still decoding.
        capture: if given, answer-token statistics/features are captured, row ``i`` as sample
            ``sample_indices[i]``.
        stats: optional dict that receives ``forward_tokens``, ``generated_tokens``, ``seconds``,
            ``prefix_cache`` (whether the prefix cache was used, and why not).
        max_counted: capture only the first ``max_counted`` answer tokens (None: all).

    Sliding-window models (:func:`eavss.models.layers.sliding_window`): when a row's prefix +
    prompt + answer can exceed the window, the left padding between a cached prefix and the prompt
    would take window slots and make a row's answer depend on its batch mates; the prefix is then
    fed with each prompt instead (uncached, exact: the mask accounts for the padding; tested).

    Returns:
        One :class:`Generated` per row, in input order.

    Raises:
        EavssError: an empty prompt, or ``capture`` without ``sample_indices``.
    """
    from tqdm.auto import tqdm

    if capture is not None and (sample_indices is None or len(sample_indices) != len(suffixes)):
        raise EavssError("greedy_generate: capture needs one sample index per prompt")
    if any(len(s) == 0 for s in suffixes):
        raise EavssError("greedy_generate: a prompt has no tokens")
    from eavss.models.layers import sliding_window

    window = sliding_window(model)
    cache_note = "on" if prefix is not None else "off (no prefix)"
    if prefix is not None and window is not None and \
            prefix.length + max(len(s) for s in suffixes) + max_new_tokens > window:
        suffixes = [list(prefix.ids) + list(s) for s in suffixes]
        prefix = None
        cache_note = f"off: sliding window of {window} tokens shorter than prefix + prompt + answer"
    device = input_device(model)
    stop_nl = torch.tensor(sorted(set(newline_ids)), dtype=torch.long, device=device)
    stop_eos = torch.tensor(sorted(set(eos_ids)) or [-1], dtype=torch.long, device=device)
    P = prefix.length if prefix is not None else 0
    results: list[Generated | None] = [None] * len(suffixes)
    order = sorted(range(len(suffixes)), key=lambda i: -len(suffixes[i]))
    n_fwd = n_gen = 0
    t0 = time.perf_counter()
    for idx in tqdm(list(_batches(order, batch_size)), desc="generation", unit="batch", disable=not progress):
        B = len(idx)
        T = max(len(suffixes[i]) for i in idx)
        ids = torch.full((B, T), pad_id, dtype=torch.long)
        am = torch.zeros(B, T, dtype=torch.long)
        for b, i in enumerate(idx):
            s = suffixes[i]
            ids[b, T - len(s):] = torch.tensor(s)
            am[b, T - len(s):] = 1
        full_am = torch.cat([torch.ones(B, P, dtype=torch.long), am], 1).to(device)
        pos = (P + (am.cumsum(1) - 1).clamp_min(0)).to(device)
        cache = prefix.expand(B) if prefix is not None else None
        if capture is not None:
            capture.off()
        out, cache = _call(model, ids.to(device), full_am, pos, cache, last_logits_only=True)
        n_fwd += int(am.sum())
        next_tok = out.logits[:, -1].argmax(-1)
        last_pos = pos[:, -1]
        rows_t = torch.tensor([sample_indices[i] for i in idx], device=device) if capture is not None else None
        gen: list[list[int]] = [[] for _ in range(B)]
        reason = ["length"] * B
        act = torch.arange(B, device=device)  # batch rows still decoding, aligned with the cache's batch axis
        for step in range(max_new_tokens):
            tok = next_tok
            is_nl = torch.isin(tok, stop_nl)
            is_eos = torch.isin(tok, stop_eos)
            for b, t, nl_hit, eos_hit in zip(act.tolist(), tok.tolist(), is_nl.tolist(), is_eos.tolist()):
                gen[b].append(t)
                if nl_hit:
                    reason[b] = "newline"
                elif eos_hit:
                    reason[b] = "eos"
            keep = ~(is_nl | is_eos)  # rows whose newest token is an answer token
            last_step = step == max_new_tokens - 1
            counted = max_counted is None or step < max_counted  # the token fed now is answer token number `step`
            if not bool(keep.any()) or (last_step and (capture is None or not counted)):
                break
            if not bool(keep.all()):  # drop finished rows: less compute per step
                ki = torch.nonzero(keep).squeeze(1)
                cache.batch_select_indices(ki)
                full_am, last_pos, act, tok = full_am[ki], last_pos[ki], act[ki], tok[ki]
            n = len(act)
            full_am = torch.cat([full_am, torch.ones(n, 1, dtype=full_am.dtype, device=device)], 1)
            last_pos = last_pos + 1
            if capture is not None:
                capture.on(torch.full((n, 1), counted, dtype=torch.bool, device=device), rows_t[act])
            out, cache = _call(model, tok[:, None], full_am, last_pos[:, None], cache, last_logits_only=True)
            if capture is not None:
                capture.collector.check_finite()
            n_fwd += n
            next_tok = out.logits[:, -1].argmax(-1)
            if last_step:
                break
        for b, i in enumerate(idx):
            toks = gen[b]
            ans = toks[:-1] if reason[b] in ("newline", "eos") else toks
            results[i] = Generated(tokens=toks, answer_tokens=ans, stop=reason[b])
            n_gen += len(toks)
    if capture is not None:
        capture.off()
    if stats is not None:
        stats.update(forward_tokens=n_fwd, generated_tokens=n_gen, seconds=time.perf_counter() - t0,
                     prefix_cache=cache_note)
    return results  # type: ignore[return-value]


