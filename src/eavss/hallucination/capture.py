"""Forward passes that capture answer-token activations: teacher-forced answers and greedy generation.

Both passes feed the model ``prefix + suffix (+ answer)`` with the shared few-shot prefix held in a
KV cache (:class:`PrefixCache`, computed once per prefix), and count only *answer* tokens:

* the streaming statistics engine (:class:`eavss.stats.ActivationStatsCollector`) with one group
  per sample, so that the per-sample sums can later be added up by class, by source, or by a
  bootstrap resample without another forward pass;
* :class:`PooledFeatures`, the mean over a sample's answer tokens of each decoder layer's output
  (``(N, L, D)`` float32), for the linear probes.

Greedy generation (:func:`greedy_generate`) is batched with left padding: the question tokens of
each row are right-aligned after the prefix, padding positions are masked out of attention, and
position ids count only real tokens, so every row sees exactly the token positions it would see
alone; a row's output equals one-at-a-time greedy decoding up to float round-off (tested). The
statistics of a generated answer are taken *while it is generated*: when the answer token ``g_k``
is fed back to produce ``g_{k+1}``, its activations are those of a teacher-forced pass over the
generated tokens. The stop token is never counted. The last token of an answer cut by
``max_new_tokens`` is never fed back; two ways of counting it (``last_token``), the same tokens
counted, activations equal up to round-off (tested):

* ``"step"``: one extra decoding step (decoder stack only) at the end of the batch -- one more model
  call per batch whose longest answer hits the cap: 34 of 854 calls (4 %) in the default analysis on
  SmolLM2, 1 in 17 when every row runs to the cap. Decoding steps are host-bound, so the step costs
  a whole call however few rows it has.
* ``"deferred"`` (default): the batch's cut answers wait, across batches, until their prompts and
  answers add up to :data:`LAST_TOKEN_PASS_TOKENS` tokens (or generation ends); then teacher-forced
  passes over ``prompt + answer`` count only their last token: one call for many batches, but every
  token of those answers recomputed. So a batch defers only when its cut answers hold at most
  :data:`LAST_TOKEN_DEFER_TOKENS` tokens, and takes the step otherwise (with random weights every
  answer runs to the cap: a batch of 8 prompts of the analysis's shape, ~36 tokens with the answer,
  usually takes the step). With massive-token exclusion on (``massive`` of the collector), whose
  reference is the median over one forward pass's counted tokens, every batch takes the step, so
  the tokens a batch excludes do not depend on other batches.

Host syncs: a decoding step reads the new tokens back once (the stopping rule, which also drops
finished rows from the batch); the capture adds none per step -- token counts stay on the device
and the NaN/Inf check reads one flag per batch without waiting, plus one complete check per call.
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from eavss.errors import EavssError
from eavss.stats.collector import input_device, stacked_rows
from eavss.stats.sites import token_view


# ---------------------------------------------------------------------------------------------
# model calls


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _call(module: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
          cache, last_logits_only: bool = False):
    """``module(...)`` with the cache keyword transformers 5 expects (``cache``; ``past_key_values`` before)."""
    kw = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=True)
    fwd = module.forward
    if _accepts(fwd, "position_ids"):
        kw["position_ids"] = position_ids
    if cache is not None:
        kw["cache" if _accepts(fwd, "cache") else "past_key_values"] = cache
    if last_logits_only and _accepts(fwd, "logits_to_keep"):
        kw["logits_to_keep"] = 1
    out = module(**kw)
    new_cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None) or cache
    return out, new_cache


class PrefixCache:
    """KV cache of a fixed token prefix, computed once and copied per batch.

    Args:
        model: the causal LM (the decoder stack is what is run).
        prefix_ids: token ids of the prefix (non-empty).

    Attributes:
        ids: the prefix ids; ``length``: their number ``P``.
    """

    def __init__(self, model: torch.nn.Module, prefix_ids: Sequence[int]):
        from eavss.stats.collector import forward_for_stats

        if not prefix_ids:
            raise EavssError("the prompt prefix is empty; set generation.prefix_cache=false for prompts without a prefix")
        self.ids = list(prefix_ids)
        self.length = len(self.ids)
        device = input_device(model)
        ids = torch.tensor([self.ids], device=device)
        with torch.inference_mode():
            _, cache = _call(forward_for_stats(model), ids, torch.ones_like(ids), torch.arange(self.length, device=device)[None], None)
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            raise EavssError(f"{type(model).__name__} returned no reusable KV cache; set generation.prefix_cache=false")
        self._cache = cache

    def expand(self, batch: int):
        """A fresh copy of the cache repeated ``batch`` times along the batch axis."""
        c = copy.deepcopy(self._cache)
        if batch > 1:
            c.batch_repeat_interleave(batch)
        return c


# ---------------------------------------------------------------------------------------------
# pooled features


class PooledFeatures:
    """Forward hooks that mean-pool each decoder layer's capture-site tensor over a sample's
    counted tokens (the probe features).

    Usage: ``feats = PooledFeatures(model, N, site)``; ``feats.attach()``; per forward:
    ``feats.set_batch(mask (B, T), rows (B,))``; after all passes ``feats.result()``.

    Nothing here reads a device tensor back to the host before :meth:`result`: the token counts
    are accumulated on the device (float64, exact), and each layer's hook launches two kernels
    (the masked float32 product, which also upcasts bfloat16/float16, and one ``index_add_``).

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
        self._counts: torch.Tensor | None = None  # (N,) float64 on the device of the first batch
        self._mask: torch.Tensor | None = None  # (B, T, 1) float32
        self._rows: torch.Tensor | None = None
        self._layer_base: dict = {}  # per device: arange(L) * N, the row of each layer's sample 0

    @property
    def counts(self) -> torch.Tensor:
        """``(N,)`` float64 counted tokens per sample, on the host (reads the device counts back)."""
        if self._counts is None:
            return torch.zeros(self.num_samples, dtype=torch.float64)
        return self._counts.to("cpu")

    def _on_activation(self, index: int, act: torch.Tensor, args: tuple, kwargs: dict) -> None:
        if self._mask is None:
            return
        mask = self._mask if self._mask.device == act.device else self._mask.to(act.device, non_blocking=True)
        act = token_view(act, mask.shape[:2], index)
        if self._sums is None:
            self._sums = torch.zeros(self.num_layers, self.num_samples, act.shape[-1], dtype=torch.float32,
                                     device=act.device)
        # half/bfloat16 * float32 promotes to float32 inside the one kernel: the same values as act.float() * mask
        a = act if act.dtype in (torch.float32, torch.bfloat16, torch.float16) else act.float()
        prod = a * mask  # (B, T, D) float32
        pooled = prod[:, 0] if prod.shape[1] == 1 else prod.sum(1)  # (B, D); one token: no reduction kernel
        rows = self._rows if self._rows.device == self._sums.device else self._rows.to(self._sums.device)
        self._sums[index].index_add_(0, rows, pooled.to(self._sums.device))

    def add_layers(self, acts: torch.Tensor, layers: Sequence[int], rows_first: bool = False) -> None:
        """Pool the stacked site activations of several layers for the current batch
        (:meth:`set_batch`): the same sums as the hooks would add layer by layer, in three kernels.

        Args:
            acts: ``(K, B, T, D)`` activations of decoder layers ``layers`` (``K`` distinct indices);
                ``(B, K, T, D)`` with ``rows_first``.

        Raises:
            EavssError: the shapes do not match the batch's mask or the layer count.
        """
        if self._mask is None:
            return
        if rows_first:
            B, K, T, D = acts.shape
        else:
            K, B, T, D = acts.shape
        if len(layers) != K or (B, T) != tuple(self._mask.shape[:2]):
            raise EavssError(f"stacked activations {tuple(acts.shape)} do not match the token mask "
                             f"{tuple(self._mask.shape[:2])} and {len(layers)} layers")
        if self._sums is None:
            self._sums = torch.zeros(self.num_layers, self.num_samples, D, dtype=torch.float32, device=acts.device)
        dev = self._sums.device
        mask = self._mask.to(acts.device, non_blocking=True)
        if rows_first:
            mask = mask[:, None]  # (B, 1, T, 1)
        a = acts if acts.dtype in (torch.float32, torch.bfloat16, torch.float16) else acts.float()
        prod = a * mask  # (K, B, T, D) or (B, K, T, D) float32, as in the hook
        pooled = prod[:, :, 0] if T == 1 else prod.sum(2)  # (K, B, D) or (B, K, D)
        rows = stacked_rows(self._layer_base, layers, self.num_layers, self.num_samples, self._rows.to(dev),
                            rows_first=rows_first)
        self._sums.view(-1, D).index_add_(0, rows, pooled.reshape(K * B, D).to(dev))

    def attach(self) -> None:
        """Register the hooks (idempotent)."""
        self._hooks.attach()

    def detach(self) -> None:
        """Remove the hooks."""
        self._hooks.detach()

    def set_batch(self, mask: torch.Tensor, rows: torch.Tensor, count: bool = True) -> None:
        """Counted tokens ``mask`` ``(B, T)`` and sample index ``rows`` ``(B,)`` of the next forward
        (no host sync: the counts are added on the device). ``count=False``: the same tokens were
        already counted (:class:`Capture` reduces one pass's layers in several calls)."""
        self._mask = mask.to(torch.float32).unsqueeze(-1)
        self._rows = rows.long()
        if count:
            self.add_counts(self._rows, mask.sum(1, dtype=torch.float64))

    def add_counts(self, rows: torch.Tensor, n: torch.Tensor) -> None:
        """Add ``n`` ``(B,)`` counted tokens to samples ``rows`` ``(B,)`` (on the device, no sync)."""
        if self._counts is None:
            self._counts = torch.zeros(self.num_samples, dtype=torch.float64, device=n.device)
        dev = self._counts.device
        self._counts.index_add_(0, rows.long().to(dev), n.to(dev, torch.float64))

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (N, L, D) float32, counts (N,))``; rows with no counted token are NaN."""
        if self._sums is None:
            raise EavssError("no answer tokens were captured; every answer was empty")
        counts = self.counts
        feats = self._sums.transpose(0, 1).cpu() / counts.clamp_min(1).float()[:, None, None]
        feats[counts == 0] = float("nan")
        return feats, counts.clone()


STAGE_MAX_TOKENS = 4
"""Forward passes of at most this many tokens per row (decoding steps) are staged by :class:`Capture`."""

STAGE_MAX_BYTES = 64 * 2**20
"""Size of :class:`Capture`'s staging buffer: decoding steps are reduced together when it is full
(or at the end of a batch); one step that alone is larger gets a buffer of its own size."""


@dataclass
class _Pass:
    """A staged forward pass not yet reduced: its rows ``[start, start + n)`` of the buffer (start
    None when nothing was staged), the decoder layers staged, its token mask and sample rows."""

    start: int | None
    n: int
    layers: tuple
    mask: torch.Tensor
    rows: torch.Tensor


@dataclass
class Capture:
    """The statistics collector and the pooled-feature hooks, switched on and off together.

    ``collector``: an :class:`eavss.stats.ActivationStatsCollector` whose groups are sample
    indices; ``features``: :class:`PooledFeatures` or None.

    Staging (``stage=True``, the default): in a forward pass of at most :data:`STAGE_MAX_TOKENS`
    tokens per row -- a decoding step -- one hook per decoder layer only copies the site activation
    ``(B, T, D)`` into a ``(R, L, T, D)`` buffer (``R`` rows of :data:`STAGE_MAX_BYTES`), and
    nothing else runs per step: the steps' masks and sample rows are kept, and the collector and the
    features reduce every staged step and layer at once when the buffer is full, at the end of a
    batch (:meth:`flush`, called by :func:`greedy_generate`) or when a longer pass or :meth:`off`
    comes. The same sums as per-layer, per-step reduction (tested to the bit on the CPU, where each
    accumulator row receives the same additions in the same order; on CUDA one sample's steps are
    added by atomic operations in any order, so equal up to float64 rounding for the statistics and
    float32 rounding for the probe features, and not bit-reproducible from run to run), with one
    copy kernel per layer and step instead of the reductions' launches and their Python work, which
    dominate a decoding step (the GPU waits on the host there). Longer passes (teacher-forced
    answers) reduce per layer: there the arithmetic dominates and a buffer would cost memory. A layer whose activation
    does not fit the buffer (another width, dtype or device than the pass's first layer) is reduced
    on its own, immediately. Staging needs a collector without block influence and massive-token
    exclusion (:attr:`~eavss.stats.ActivationStatsCollector.stackable`); otherwise every pass runs
    per layer.
    """

    collector: object
    features: PooledFeatures | None = None
    stage: bool = True
    _on: str | None = field(default=None, init=False)  # None, "layers" (per-layer hooks) or "staged"
    _stage_hooks: object = field(default=None, init=False)
    _buf: torch.Tensor | None = field(default=None, init=False)  # (R, L, T, D) staging buffer
    _used: int = field(default=0, init=False)  # rows of the buffer holding passes not yet reduced
    _start: int = field(default=0, init=False)  # first buffer row of the pass being staged
    _step: tuple | None = field(default=None, init=False)  # (mask, rows) of the pass being staged
    _view: torch.Tensor | None = field(default=None, init=False)  # its rows of the buffer, (n, L, T, D)
    _shape: tuple = field(default=(), init=False)  # the (n, T, D) shape of its first staged layer's activation
    _staged: list = field(default_factory=list, init=False)  # layers staged in the current pass
    _pending: list = field(default_factory=list, init=False)  # finished passes not yet reduced (_Pass)

    def on(self, mask: torch.Tensor, rows: torch.Tensor, check: bool = True) -> None:
        """Count ``mask`` ``(B, T)`` tokens of samples ``rows`` ``(B,)`` in the next forward.

        ``check=False`` skips the collector's range check of host ``rows`` (the caller checked them
        once; see :meth:`eavss.stats.ActivationStatsCollector.check_groups`). Nothing here syncs
        with an accelerator.
        """
        self._commit()
        mode = "staged" if self.stage and mask.shape[1] <= STAGE_MAX_TOKENS and self.collector.stackable else "layers"
        if self._on != mode:
            self._detach()
            if mode == "staged":
                if self._stage_hooks is None:
                    from eavss.stats.sites import SiteHooks

                    c = self.collector
                    self._stage_hooks = SiteHooks(c.model, c.site, self._stage_one, c.layers)
                self._stage_hooks.attach()
            else:
                self.flush()
                self.collector.attach()
                if self.features is not None:
                    self.features.attach()
            self._on = mode
        if mode == "staged":  # nothing runs now: the pass's mask and rows wait for the flush
            rows = torch.as_tensor(rows, dtype=torch.long)
            if mask.dim() != 2 or rows.shape != mask.shape[:1]:
                raise EavssError(f"capture: token mask (batch, seq) and one sample row per sequence expected, got "
                                 f"shapes {tuple(mask.shape)} and {tuple(rows.shape)}")
            if check:
                self.collector.check_groups(rows)
            self._step = (mask.bool(), rows.to(mask.device, non_blocking=True))
            self.collector.num_batches += 1  # one forward pass, as set_batch counts them
            return
        self.collector.set_batch(mask, rows, check=check)
        if self.features is not None:
            self.features.set_batch(mask, rows)

    def _stage_one(self, index: int, act: torch.Tensor, args: tuple, kwargs: dict) -> None:
        if self._step is None:
            return
        view = self._view
        if view is None or act.shape != self._shape or act.dtype != view.dtype or act.device != view.device:
            # not a layer like the pass's first (the per-step fast path skips all of this)
            act = token_view(act, self._step[0].shape, index)
            if view is None:  # the pass's first staged layer: rows of the buffer for it
                view = self._view = self._rows_for(act)
                self._shape = act.shape
            elif act.shape != self._shape or act.dtype != view.dtype or act.device != view.device:
                # another width, dtype or device than the pass's first layer: reduce this layer now
                mask, rows = self._step
                self.collector.set_batch(mask, rows, check=False, new_batch=False)
                self.collector.reduce_layers(act[None], [index])
                if self.features is not None:
                    self.features.set_batch(mask, rows, count=False)  # counted once per pass, at the flush
                    self.features.add_layers(act[None], [index])
                return
        torch.select(view, 1, index).copy_(act)
        self._staged.append(index)

    def _rows_for(self, act: torch.Tensor) -> torch.Tensor:
        """``(n, L, T, D)`` rows of the staging buffer for a pass whose first staged activation is
        ``act`` ``(n, T, D)``: the next free rows, after reducing what is pending when they do not
        fit (or when the buffer holds another shape, dtype or device)."""
        n, L = act.shape[0], len(self.collector.layers)
        buf = self._buf
        fits = buf is not None and buf.shape[2:] == act.shape[1:] and buf.dtype == act.dtype and buf.device == act.device
        if not fits or self._used + n > buf.shape[0]:
            self._reduce_pending()
            if not fits or n > buf.shape[0]:
                per_row = L * act[0].numel() * act.element_size()
                buf = self._buf = act.new_empty((max(n, STAGE_MAX_BYTES // max(per_row, 1)), L, *act.shape[1:]))
        self._start = self._used
        self._used += n
        return buf[self._start:self._start + n]

    def _commit(self) -> None:
        """The pass being staged is over: keep its rows, layers, mask and sample rows for the flush."""
        if self._step is None:
            return
        mask, rows = self._step
        start = self._start if self._view is not None else None
        self._pending.append(_Pass(start, mask.shape[0], tuple(self._staged), mask, rows))
        self._step, self._view, self._staged = None, None, []

    def flush(self) -> None:
        """Reduce every staged pass not yet reduced (no-op when none is)."""
        self._commit()
        self._reduce_pending()

    def _reduce_pending(self) -> None:
        pend, self._pending = self._pending, []
        self._used = 0
        if not pend:
            return
        # inference mode: the staged buffer and the accumulators were made in the generation's
        # inference mode; a flush from outside it (``off()`` in a caller's ``finally`` after Ctrl-C in
        # the middle of a step) must still be allowed to add into them
        with torch.inference_mode():
            if self.features is not None:  # the passes' token counts, once (passes may differ in length)
                self.features.add_counts(_cat([p.rows for p in pend]),
                                         _cat([p.mask.sum(1, dtype=torch.float64) for p in pend]))
            i = 0
            while i < len(pend):  # runs of passes with the same layers, adjacent in the buffer
                j = i
                while j + 1 < len(pend) and pend[j + 1].layers == pend[i].layers and pend[j].start is not None \
                        and pend[j + 1].start == pend[j].start + pend[j].n:
                    j += 1
                run, i = pend[i:j + 1], j + 1
                layers = list(run[0].layers)
                if not layers or run[0].start is None:
                    continue
                acts = self._buf[run[0].start:run[-1].start + run[-1].n]  # (rows, L, T, D)
                if layers != list(range(acts.shape[1])):
                    acts = acts[:, torch.as_tensor(layers, device=acts.device)]
                mask, rows = _cat([p.mask for p in run]), _cat([p.rows for p in run])
                self.collector.set_batch(mask, rows, check=False, new_batch=False)
                self.collector.reduce_layers(acts, layers, rows_first=True)
                if self.features is not None:
                    self.features.set_batch(mask, rows, count=False)
                    self.features.add_layers(acts, layers, rows_first=True)

    def _detach(self) -> None:
        self.collector.detach()
        if self.features is not None:
            self.features.detach()
        if self._stage_hooks is not None:
            self._stage_hooks.detach()

    def off(self) -> None:
        """Count nothing in the next forward passes (hooks removed; staged passes reduced first,
        the staging buffer released)."""
        self.flush()
        self._buf = None
        self._detach()
        self._on = None


def _cat(ts: list) -> torch.Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts, 0)


# ---------------------------------------------------------------------------------------------
# teacher-forced answers


def _batches(order: list[int], size: int) -> Iterable[list[int]]:
    for i in range(0, len(order), size):
        yield order[i:i + size]


def _counted_forward(runner, seqs: Sequence[list[int]], spans: Sequence[tuple[int, int]], samples: Sequence[int],
                     prefix: PrefixCache | None, capture: Capture, pad_id: int, device, check: bool = True) -> tuple[int, int]:
    """One right-padded forward of ``prefix + seqs[b]`` (``B`` rows) through ``runner`` that counts,
    in ``capture``, the tokens ``seqs[b][start:start + n]`` (``spans[b] = (start, n)``) as sample
    ``samples[b]``. Positions are ``P + 0 .. len - 1`` (``P`` the prefix length), padding is masked
    out of attention and never counted. Returns ``(forward tokens, counted tokens)``."""
    B, T = len(seqs), max(len(x) for x in seqs)
    P = prefix.length if prefix is not None else 0
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    am = torch.zeros(B, T, dtype=torch.long)
    sm = torch.zeros(B, T, dtype=torch.bool)
    for b, (x, (start, n)) in enumerate(zip(seqs, spans)):
        ids[b, :len(x)] = torch.tensor(x)
        am[b, :len(x)] = 1
        sm[b, start:start + n] = True
    full_am = torch.cat([torch.ones(B, P, dtype=torch.long), am], 1).to(device)
    pos = (P + torch.arange(T)).expand(B, T).to(device)
    cache = prefix.expand(B) if prefix is not None else None
    capture.on(sm.to(device), torch.tensor(list(samples), device=device), check=check)
    _call(runner, ids.to(device), full_am, pos, cache)
    return int(am.sum()), int(sm.sum())


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
    order = sorted(range(len(rows)), key=lambda i: -(len(rows[i][0]) + len(rows[i][1])))
    n_fwd = n_ans = 0
    t0 = time.perf_counter()
    for idx in tqdm(list(_batches(order, batch_size)), desc="teacher-forced answers", unit="batch", disable=not progress):
        if any(not rows[i][1] for i in idx):
            raise EavssError("a teacher-forced answer has no tokens; check the source's answer texts")
        spans = [(len(rows[i][0]), len(rows[i][1]) if max_counted is None else min(len(rows[i][1]), max_counted))
                 for i in idx]
        f, c = _counted_forward(runner, [rows[i][0] + rows[i][1] for i in idx], spans, [rows[i][2] for i in idx],
                                prefix, capture, pad_id, device)
        capture.collector.check_finite(block=False)  # no wait on an accelerator (the previous batch's flag)
        n_fwd += f
        n_ans += c
    capture.off()
    capture.collector.check_finite()  # complete
    return {"sequences": len(rows), "forward_tokens": n_fwd, "answer_tokens": n_ans,
            "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------
# greedy generation


def newline_token_ids(tokenizer) -> list[int]:
    """Ids of every token whose decoded text contains ``\\n`` (the newline stop rule)."""
    n = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)])
    return [i for i, t in enumerate(texts) if "\n" in t]


def eos_token_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    """EOS ids of the tokenizer and the model's generation config (e.g. ``<|im_end|>``, ``<|endoftext|>``)."""
    ids = set()
    for src in (getattr(tokenizer, "eos_token_id", None), getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                getattr(model.config, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return sorted(ids)


LAST_TOKEN_DEFER_TOKENS = 256
"""The most tokens (prompts + answers) of one batch's answers cut at the cap that are deferred to the
teacher-forced last-token passes (:func:`greedy_generate`, ``last_token="deferred"``); a batch with
more takes the extra decoding step instead. Recomputing a token in a teacher-forced pass costs
compute, the extra step costs one model call (host-bound in decoding): on one H200 with the
Llama-3-8B shape the deferred passes took ~50 us per token and a decoding step ~25 ms, so 256
tokens cost at most half a step there, and far less on smaller models (``benchmarks/RESULTS.md``).
In the default analysis on SmolLM2 a batch has 0-3 cut answers (~40-80 tokens each) and defers;
with random weights every answer is cut, and a batch of 8 or more prompts usually takes the step."""

LAST_TOKEN_PASS_TOKENS = 16384
"""Padded tokens (rows x longest ``prompt + answer``) of one teacher-forced pass that counts the last
token of answers cut at the cap (:func:`greedy_generate`, ``last_token="deferred"``): such answers
wait until their prompts and answers add up to this many tokens (or generation ends), then go
through in passes of at most this many padded tokens (prefix included) and at most the
generation's batch size of rows (at least one row each): a pass holds no more rows than a batch of
generation, each its prompt plus its answer."""


def _last_token_passes(runner, pending: list, prefix: PrefixCache | None, capture: Capture, pad_id: int, device,
                       max_rows: int) -> int:
    """Count the last answer token of each ``(prompt ids, answer ids, sample)`` in ``pending`` (emptied)
    in right-padded teacher-forced passes of at most ``max_rows`` rows and
    :data:`LAST_TOKEN_PASS_TOKENS` padded tokens, prefix included; returns the tokens forwarded
    (prompts and answers, without padding)."""
    P = prefix.length if prefix is not None else 0
    rows = sorted(pending, key=lambda r: -(len(r[0]) + len(r[1])))
    pending.clear()
    n_fwd, i = 0, 0
    while i < len(rows):
        width = P + len(rows[i][0]) + len(rows[i][1])  # the longest of this pass (rows are sorted)
        j = min(len(rows), i + max(1, min(max_rows, LAST_TOKEN_PASS_TOKENS // width)))
        part = rows[i:j]
        n_fwd += _counted_forward(runner, [p + a for p, a, _ in part], [(len(p) + len(a) - 1, 1) for p, a, _ in part],
                                  [k for _, _, k in part], prefix, capture, pad_id, device, check=False)[0]
        i = j
    return n_fwd


@dataclass
class Generated:
    """One generated answer.

    Attributes:
        tokens: every generated id, the stop token included (if any).
        answer_tokens: ids before the stop token: the tokens whose activations are counted.
        stop: ``newline`` | ``eos`` | ``length`` (cut at ``max_new_tokens``).
    """

    tokens: list[int]
    answer_tokens: list[int]
    stop: str


@torch.inference_mode()
def greedy_generate(model: torch.nn.Module, suffixes: Sequence[list[int]], prefix: PrefixCache | None, *,
                    max_new_tokens: int, newline_ids: Sequence[int], eos_ids: Sequence[int], pad_id: int,
                    batch_size: int, capture: Capture | None = None, sample_indices: Sequence[int] | None = None,
                    progress: bool = False, stats: dict | None = None, max_counted: int | None = None,
                    last_token: str = "deferred") -> list[Generated]:
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
        stats: optional dict that receives ``forward_tokens`` (tokens through the model after the
            prefix, the deferred last-token passes' prompts and answers included),
            ``generated_tokens``, ``seconds``, ``prefix_cache`` (whether the prefix cache was used,
            and why not).
        max_counted: capture only the first ``max_counted`` answer tokens (None: all).
        last_token: how the last token of an answer cut at ``max_new_tokens`` is counted (see
            the module docstring): ``deferred`` (default; teacher-forced passes shared by many
            batches, for a batch whose cut answers hold at most :data:`LAST_TOKEN_DEFER_TOKENS`
            tokens and a collector without massive-token exclusion, else the step) or ``step``
            (one extra decoding step per batch).

    Sliding-window models (:func:`eavss.models.layers.sliding_window`): when a row's prefix +
    prompt + answer can exceed the window, the left padding between a cached prefix and the prompt
    would take window slots and make a row's answer depend on its batch mates; the prefix is then
    fed with each prompt instead (uncached, exact: the mask accounts for the padding; tested).

    Returns:
        One :class:`Generated` per row, in input order.

    Raises:
        EavssError: an empty prompt, ``capture`` without ``sample_indices``, or an unknown ``last_token``.
    """
    from tqdm.auto import tqdm

    if last_token not in ("deferred", "step"):
        raise EavssError(f"greedy_generate: last_token must be 'deferred' or 'step', got {last_token!r}")
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
    from eavss.stats.collector import _to_device, forward_for_stats

    device = input_device(model)
    runner = forward_for_stats(model)  # the decoder stack: the capture-only last step needs no logits
    nl_set, eos_set = set(newline_ids), set(eos_ids)
    P = prefix.length if prefix is not None else 0
    results: list[Generated | None] = [None] * len(suffixes)
    order = sorted(range(len(suffixes)), key=lambda i: -len(suffixes[i]))
    cut: list[tuple[list[int], list[int], int]] = []  # answers cut at the cap, last token not yet counted
    defer = last_token == "deferred" and capture is not None and capture.collector.massive is None
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
        full_am = _to_device(torch.cat([torch.ones(B, P, dtype=torch.long), am], 1), device)
        pos = _to_device(P + (am.cumsum(1) - 1).clamp_min(0), device)
        cache = prefix.expand(B) if prefix is not None else None
        if capture is not None:
            capture.off()
        out, cache = _call(model, _to_device(ids, device), full_am, pos, cache, last_logits_only=True)
        n_fwd += int(am.sum())
        next_tok = out.logits[:, -1].argmax(-1)
        last_pos = pos[:, -1]
        rows_act = ones = None
        if capture is not None:
            rows_host = torch.tensor([sample_indices[i] for i in idx], dtype=torch.long)
            capture.collector.check_groups(rows_host)  # once per batch, on the host
            rows_act = _to_device(rows_host, device)  # sample of each row still decoding
            ones = torch.ones(B, 1, dtype=torch.bool, device=device)
        gen: list[list[int]] = [[] for _ in range(B)]
        reason = ["length"] * B
        act = list(range(B))  # batch rows still decoding, aligned with the cache's batch axis
        for step in range(max_new_tokens):
            # The one host sync of a step: the stopping rule needs the new tokens on the host to end
            # the batch and to drop finished rows from the cache (capture adds none).
            toks = next_tok.tolist()
            keep = []  # positions (in `act`) of rows whose newest token is an answer token
            for j, (b, t) in enumerate(zip(act, toks)):
                gen[b].append(t)
                if t in nl_set:
                    reason[b] = "newline"
                elif t in eos_set:
                    reason[b] = "eos"
                else:
                    keep.append(j)
            last_step = step == max_new_tokens - 1
            counted = max_counted is None or step < max_counted  # the token fed now is answer token number `step`
            if not keep or (last_step and (capture is None or not counted)):
                break
            if last_step and defer:  # rows cut at the cap: counted later, many at once ...
                rows_cut = [(list(suffixes[idx[act[j]]]), list(gen[act[j]]), sample_indices[idx[act[j]]]) for j in keep]
                if sum(len(p) + len(a) for p, a, _ in rows_cut) <= LAST_TOKEN_DEFER_TOKENS:
                    cut.extend(rows_cut)
                    break
                # ... unless recomputing them costs more than the extra step: then the step, below
            tok = next_tok
            if len(keep) < len(act):  # drop finished rows: less compute per step
                ki = _to_device(torch.tensor(keep, dtype=torch.long), device)
                cache.batch_select_indices(ki)
                full_am, last_pos, tok = full_am[ki], last_pos[ki], tok[ki]
                if rows_act is not None:
                    rows_act = rows_act[ki]
                act = [act[j] for j in keep]
            n = len(act)
            full_am = torch.cat([full_am, torch.ones(n, 1, dtype=full_am.dtype, device=device)], 1)
            last_pos = last_pos + 1
            if capture is not None:
                if counted:
                    capture.on(ones[:n], rows_act, check=False)
                else:  # past max_counted: nothing to count (an all-False mask would add zeros)
                    capture.off()
            n_fwd += n
            if last_step:  # a row cut at the cap: this forward only counts its last token
                _call(runner, tok[:, None], full_am, last_pos[:, None], cache)
                break
            out, cache = _call(model, tok[:, None], full_am, last_pos[:, None], cache, last_logits_only=True)
            next_tok = out.logits[:, -1].argmax(-1)
        for b, i in enumerate(idx):
            toks = gen[b]
            ans = toks[:-1] if reason[b] in ("newline", "eos") else toks
            results[i] = Generated(tokens=toks, answer_tokens=ans, stop=reason[b])
            n_gen += len(toks)
        if capture is not None:  # NaN/Inf: no wait here on an accelerator (reads the previous batch's flag)
            capture.flush()  # the batch's staged decoding steps, reduced together
            if sum(len(p) + len(a) for p, a, _ in cut) >= LAST_TOKEN_PASS_TOKENS:
                n_fwd += _last_token_passes(runner, cut, prefix, capture, pad_id, device, batch_size)
            capture.collector.check_finite(block=False)
    if capture is not None:
        if cut:
            n_fwd += _last_token_passes(runner, cut, prefix, capture, pad_id, device, batch_size)
        capture.off()
        capture.collector.check_finite()  # complete: one sync per call
    if stats is not None:
        stats.update(forward_tokens=n_fwd, generated_tokens=n_gen, seconds=time.perf_counter() - t0,
                     prefix_cache=cache_note)
    return results  # type: ignore[return-value]


def answer_text(tokenizer, gen: Generated) -> str:
    """The answer as text: the generated text up to the first newline, stripped (special tokens dropped)."""
    text = tokenizer.decode(gen.tokens, skip_special_tokens=True)
    return text.split("\n", 1)[0].strip()
