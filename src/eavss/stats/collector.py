"""Streaming collection of per-layer activation statistics with forward hooks.

One forward pass over the calibration batches; a forward hook on each decoder layer (or on the
chosen capture site inside it) reduces the activation tensor to per-sequence float64 sums
(:func:`eavss.stats.reduce.reduce_activations`) and adds them into a device-resident
``(L, G, NUM_FIELDS)`` accumulator. No activation is stored, nothing is copied to the host per
layer, and no device sync happens inside the forward pass.
"""

from __future__ import annotations

import sys
import time
import weakref
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from eavss.errors import EavssError, NonFiniteActivationError
from eavss.stats.accumulators import NUM_FIELDS, F, LayerStatistics
from eavss.stats.reduce import (SparsityRule, block_influence_sums, massive_factor, reduce_activations_ext,
                                reduce_backend)
from eavss.stats.sites import SiteHooks, delta_input, input_tensor, token_view


FUSE_SILU = "mlp"
"""How ``mlp_act`` is captured on SiLU MLPs (Llama, Qwen2, Mistral, Qwen3, SmolLM2; not Gemma's
GELU). ``$EAVSS_FUSE_SILU`` overrides it. The same model outputs, to the bit, in every mode, and the
same statistics (to the bit on the CPU; on the GPU up to float32 summation order, the kernels
adding in another order); a mode that cannot run for a call falls back to the hook for that call.

- ``mlp`` (default): where the fused GPU reduction runs, the forward of a gated MLP that computes
  exactly ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` (:func:`eavss.models.layers.find_gated_mlp`)
  is replaced while the collector is attached: ``gate_proj`` and ``up_proj`` as before, then two
  kernels (:func:`eavss.stats._triton.fused_reduce` with ``up``) read gate and up once, write
  ``act_fn(gate) * up`` (the ``down_proj`` input, to the bit: checked once per device and dtype,
  else the hook runs) and the SiLU of the counted tokens (into the gate's own buffer when nothing
  else holds it), then read that SiLU once more for the centred sums, near-zero counts and pooled
  sums. It replaces torch's SiLU and product kernels, so the statistics ride on traffic the plain
  forward pays anyway. Where the reduction is eager (CPU), where autograd flows, or where something
  else hooks ``act_fn`` (probe features), the MLP's own arithmetic runs with the hook's reduction.
  Other MLPs (Phi3's ``gate_up_proj``, mixtures of experts) keep the hook.
- ``mlp_always``: the same on every device (eager on the CPU; for tests).
- ``hook``: the forward hook reads the activation module's output again.
- ``auto``: where the fused reduction runs, the activation module's forward is replaced by one
  kernel that reads ``gate_proj(x)`` once, writes its SiLU and reduces it (the row in registers).
  ``always``: that replacement on every device (for tests).

Measured on one H200 (bf16, 8 x 2048 tokens, ``benchmarks/RESULTS.md`` "Issue 10, sixth pass"),
kernel time per layer and batch against torch's SiLU + product + the hook's reduction: 993 vs
737 + 466 us at 18,944 wide (Qwen2.5-7B), 756 vs 558 + 243 at 14,336 (Llama-3-8B); ``mlp_act``
end to end 1.014x the plain forward on both shapes (means of three device calls; with the hook
1.024-1.027x and 1.019-1.020x in the same calls), peak memory +0.05 %. ``auto`` is slower than the hook (fourth pass: 1,426 us at 18,944, the exact ``expf``
and IEEE division in a register-resident row make it compute-bound; 1.049x)."""

_SILU_FORWARDS = ("torch.nn.modules.activation.SiLU.forward", "transformers.activations.SiLUActivation.forward")


def _plain_silu(mod: torch.nn.Module) -> bool:
    """Whether ``mod`` computes exactly ``torch.nn.functional.silu(x)``: torch's ``SiLU`` (not in
    place) or transformers' ``SiLUActivation``, with its class's own forward and no instance override."""
    fwd = type(mod).forward
    name = f"{getattr(fwd, '__module__', '')}.{getattr(fwd, '__qualname__', '')}"
    return name in _SILU_FORWARDS and not getattr(mod, "inplace", False) and "forward" not in mod.__dict__


FUSE_MODES = ("hook", "auto", "always", "mlp", "mlp_always")
"""The values :data:`FUSE_SILU` (``$EAVSS_FUSE_SILU``) takes."""


def _observed(mod: torch.nn.Module) -> bool:
    """Whether anything hooks ``mod``'s forward (its own hooks, global ones, or an instance forward:
    another collector's replacement, accelerate's wrapper): a replacement that skips calling it
    would hide its output from them, and its output may be held elsewhere."""
    from torch.nn.modules import module as _m

    return bool(mod._forward_hooks or mod._forward_pre_hooks or _m._global_forward_hooks
                or _m._global_forward_pre_hooks or "forward" in mod.__dict__)


def fuse_silu_mode() -> str:
    """``$EAVSS_FUSE_SILU`` or :data:`FUSE_SILU`.

    Raises:
        EavssError: a value other than ``auto``, ``hook`` or ``always``.
    """
    import os

    mode = os.environ.get("EAVSS_FUSE_SILU", FUSE_SILU)
    if mode not in FUSE_MODES:
        raise EavssError(f"EAVSS_FUSE_SILU must be one of {', '.join(FUSE_MODES)}, got {mode!r}; "
                         f"unset it for the default")
    return mode


class ActivationStatsCollector:
    """Context manager that hooks every decoder layer and accumulates statistics.

    Usage::

        with ActivationStatsCollector(model, site="resid_post") as col:
            for batch in batches:
                col.set_batch(batch["attention_mask"])        # (B, T) mask of counted tokens
                model(**batch)
                col.check_finite()
        stats = col.result()                                  # LayerStatistics, (G=1, L, ...)

    Args:
        model: a transformers causal LM (or base model) whose decoder layers are found with
            :func:`eavss.models.layers.find_decoder_layers`.
        site: capture-site name (:mod:`eavss.stats.sites`).
        rule: near-zero threshold for sparsity.
        group_names: names of the ``G`` groups; :meth:`set_batch` assigns each sequence to one.
        pooled: also accumulate the official-code pooled variance.
        block_influence: also accumulate ShortGPT block influence (at ``resid_post`` and
            ``resid_delta`` from the site reduction, which reads the layer's output and input
            anyway; at ``mlp_act`` from a second hook on the decoder layer's output, so one pass
            gives both).
        accum_dtype: float64 (default) or float32 accumulator.
        layers: optional explicit ``(path, ModuleList)``; found automatically otherwise.
        massive: massive-token factor ``k`` (None or 0: off, the default): at each layer, tokens
            whose RMS exceeds ``k`` times the median token RMS of the batch are left out of every
            statistic of that layer and counted in ``n_massive``
            (:func:`eavss.stats.reduce.reduce_activations`). On, the eager reduction runs on
            every device (the fused GPU kernel does not implement it).

    Raises:
        EavssError: no decoder layers found, unknown site, invalid ``massive``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        site: str = "resid_post",
        rule: SparsityRule | None = None,
        group_names: Sequence[str] = ("all",),
        pooled: bool = True,
        block_influence: bool = True,
        accum_dtype: torch.dtype = torch.float64,
        layers: tuple[str, torch.nn.ModuleList] | None = None,
        massive: float | None = None,
    ):
        from eavss.models.layers import find_decoder_layers

        self.model = model
        self.site = site
        self.rule = rule or SparsityRule()
        self.group_names = list(group_names)
        if len(set(self.group_names)) != len(self.group_names) or not self.group_names:
            raise EavssError(f"group names must be unique and non-empty, got {self.group_names}")
        self.pooled = pooled
        self.block_influence = block_influence
        self.accum_dtype = accum_dtype
        self.massive = massive_factor(massive)
        self.layers_path, self.layers = layers if layers is not None else find_decoder_layers(model)
        # resid_delta: the hook passes the layer output; the reduction forms output - input itself
        self._hooks = SiteHooks(model, site, self._on_activation, self.layers, materialize_delta=False)
        self.modules = self._hooks.modules
        # block influence at a site inside the layer (mlp_act): a second hook on the decoder layers'
        # outputs. resid_post and resid_delta get it from the site reduction (same tensors).
        self._bi_hooks = SiteHooks(model, "resid_post", self._on_layer_output, self.layers) \
            if block_influence and site != "resid_post" and not self._hooks.delta else None
        self.width = np.zeros(len(self.layers), dtype=np.int64)
        self._acc: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._groups: torch.Tensor | None = None
        self.num_batches = 0
        self._mask_on: dict = {}  # the current mask, per device (layers spread over devices)
        self._prev = None  # (weakref to the previous layer's output, its _version, its |a_t|^2)
        self._nf_pending = None  # (event, pinned host copy) of the last non-blocking finite check
        self._home = input_device(model)
        self._layer_base: dict = {}  # per device: arange(L) * G, the accumulator row of each layer's group 0
        # mlp_act on SiLU modules: their forward replaced while attached (FUSE_SILU)
        self._silu_mode = fuse_silu_mode()
        self._silu_layers = [i for i, m in enumerate(self.modules) if _plain_silu(m)] \
            if site == "mlp_act" and self._silu_mode != "hook" and self.massive is None else []
        self._gated: dict = {}  # layer index -> its gated MLP, whose forward is replaced (mlp modes)
        if self._silu_layers and self._silu_mode.startswith("mlp"):
            from eavss.models.layers import find_gated_mlp

            found = {i: find_gated_mlp(self.layers[i], self.modules[i]) for i in self._silu_layers}
            self._gated = {i: mlp for i, mlp in found.items() if mlp is not None}
            self._silu_layers = sorted(self._gated)
        self._silu_checked: dict = {}  # (device, dtype) -> the fused SiLU equals torch's to the bit
        self._replaced: list = []  # (module, our forward) while attached
        self.fused_silu_calls = 0  # site reductions that came with the SiLU (counted, for benchmarks and tests)

    def _mask_for(self, device: torch.device) -> torch.Tensor:
        """The current batch's token mask on ``device`` (copied once per batch and device)."""
        mask = self._mask_on.get(device)
        if mask is None:
            mask = self._mask_on[device] = self._mask.to(device, non_blocking=True)
        return mask

    def _accumulator(self, device: torch.device) -> torch.Tensor:
        """The ``(L, G, NUM_FIELDS)`` accumulator, made (zeros, on ``device``) at its first use."""
        if self._acc is None:
            self._acc = torch.zeros(len(self.layers), len(self.group_names), NUM_FIELDS, device=device,
                                    dtype=self.accum_dtype)
        return self._acc

    # -- hooks -----------------------------------------------------------------------------
    def _on_activation(self, index: int, act: torch.Tensor, args: tuple, kwargs: dict) -> None:
        """Reduce one layer's site activation ``(B, T, D)`` into the accumulator."""
        if self._mask is None:
            return
        mask = self._mask_for(act.device)
        act = token_view(act, mask.shape, index, "; pass the batch's attention_mask to set_batch")
        delta = self._hooks.delta
        if delta:  # act is the layer output; the site is act - x
            x_in = delta_input(self.site, index, act, args, kwargs)
        else:
            x_in = input_tensor(args, kwargs) if self.block_influence and self._bi_hooks is None else None
        x_sq = None
        if x_in is not None and not delta and self._prev is not None:
            ref, version, sq = self._prev
            if ref() is x_in and _version(x_in) == version:  # this layer's input is the last output
                x_sq = sq
        _, act_sq = reduce_activations_ext(act, mask, self.rule, layer_input=x_in, pooled=self.pooled,
                                           input_sq=x_sq, acc=self._accumulator(act.device)[index], groups=self._groups,
                                           massive=self.massive, delta=delta,
                                           block_influence=self.block_influence if delta else None)
        keep = act_sq is not None and x_in is not None
        self._prev = (weakref.ref(act), _version(act), act_sq) if keep else None
        self.width[index] = act.shape[-1]

    def _silu_forward(self, index: int, module: torch.nn.Module):
        """The replacement forward of SiLU module ``index``: SiLU and statistics from one read of its
        input when :meth:`_fuse_silu` allows, else the module's own forward and the hook's reduction."""
        own = type(module).forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not self._replaced:  # detached, but kept by something that wrapped it: the module's own forward
                return own(module, x)
            if self._mask is not None and isinstance(x, torch.Tensor) and self._fuse_silu(x):
                mask = self._mask_for(x.device)
                xv = token_view(x, mask.shape, index, "; pass the batch's attention_mask to set_batch")
                y = torch.empty(xv.shape, dtype=x.dtype, device=x.device)
                reduce_activations_ext(xv, mask, self.rule, pooled=self.pooled, acc=self._accumulator(x.device)[index],
                                       groups=self._groups, silu_out=y)
                self.width[index] = x.shape[-1]
                self.fused_silu_calls += 1
                return y.view(x.shape)
            y = own(module, x)
            self._on_activation(index, y, (x,), {})
            return y

        return forward

    def _mlp_forward(self, index: int, mlp: torch.nn.Module):
        """The replacement forward of gated MLP ``index`` (:data:`FUSE_SILU` ``mlp``): ``gate_proj``
        and ``up_proj``, then ``act_fn(gate) * up`` and the ``mlp_act`` statistics from one read of
        each (:meth:`_fuse_silu` allowing, and no other hook on ``act_fn`` -- probe features must see
        its output), else the MLP's own arithmetic with the hook's reduction; then ``down_proj``.
        Temporaries are dropped where the original expression drops them (the gate after
        ``act_fn``, gate and up before ``down_proj``), so peak memory stays the plain forward's.
        The kernels store the SiLU into the gate's buffer only when nothing else can hold it: no
        hook or forward override on ``gate_proj`` and no other Python reference."""
        own = type(mlp).forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not self._replaced:  # detached, but kept by something that wrapped it: the MLP's own forward
                return own(mlp, x)
            # autograd through any part of the MLP (a frozen gate_proj with a trainable up_proj counts)
            grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in mlp.parameters()))
            gate = mlp.gate_proj(x)
            private = sys.getrefcount(gate) <= 2 and not _observed(mlp.gate_proj)  # the kernel may reuse it
            if self._mask is not None and isinstance(gate, torch.Tensor) and not grad and not _observed(mlp.act_fn) \
                    and self._fuse_silu(gate):
                up = mlp.up_proj(x)
                mask = self._mask_for(gate.device)
                hint = "; pass the batch's attention_mask to set_batch"
                gv = token_view(gate, mask.shape, index, hint)
                h = torch.empty(gv.shape, dtype=gate.dtype, device=gate.device)
                reduce_activations_ext(gv, mask, self.rule, pooled=self.pooled, acc=self._accumulator(gate.device)[index],
                                       groups=self._groups, silu_out=h, up=token_view(up, mask.shape, index, hint),
                                       overwrite_act=private)
                shape = gate.shape
                del gate, gv, up
                self.width[index] = shape[-1]
                self.fused_silu_calls += 1
                return mlp.down_proj(h.view(shape))
            act = mlp.act_fn(gate)  # not hooked: the reduction runs here
            self._on_activation(index, act, (gate,), {})
            del gate
            h = act * mlp.up_proj(x)
            del act
            return mlp.down_proj(h)

        return forward

    def _fuse_silu(self, x: torch.Tensor) -> bool:
        """Whether this call of a SiLU module (or gated MLP, ``x`` its gate) can be replaced: no
        autograd through it, a float16 / bfloat16 / float32 input, and (``auto``, ``mlp``) the fused
        reduction on its device, whose SiLU (``mlp``: gated product) was found equal to torch's to the
        bit there (checked once per device and dtype, for the collector's life)."""
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32) or (torch.is_grad_enabled() and x.requires_grad):
            return False
        if self._silu_mode.endswith("always"):
            return True
        key = (x.device, x.dtype)
        ok = self._silu_checked.get(key)
        if ok is None:
            ok = self._silu_checked[key] = reduce_backend(x.device) == "fused" and \
                silu_matches_torch(x.device, x.dtype, gated=bool(self._gated))
        return ok

    @property
    def stackable(self) -> bool:
        """Whether :meth:`reduce_layers` can take several layers' activations at once: neither
        block influence (needs each layer's input) nor massive-token exclusion (a per-layer batch
        median) is on."""
        return not self.block_influence and self.massive is None

    def reduce_layers(self, acts: torch.Tensor, layers: Sequence[int], rows_first: bool = False) -> None:
        """Reduce the site activations of several decoder layers, stacked, for the current batch
        (:meth:`set_batch`): the same sums as the hooks would add layer by layer, in one reduction.

        This is how answer capture during generation runs (:class:`eavss.hallucination.capture.Capture`):
        a decoding step has a few tokens per row, so per-layer hooks would cost more in kernel
        launches than in arithmetic; staging every layer's activation and reducing them together
        launches the same kernels once per forward pass instead of once per layer.

        Args:
            acts: ``(K, B, T, D)`` activations of layers ``layers`` (any float dtype); ``(B, K, T, D)``
                with ``rows_first`` (the staging buffer's layout: several decoding steps' rows,
                each with every layer).
            layers: the ``K`` decoder-layer indices, distinct.

        Raises:
            EavssError: block influence or massive-token exclusion is on (:attr:`stackable`), or
                the shapes do not match the batch's mask.
        """
        if self._mask is None:
            return
        if not self.stackable:
            raise EavssError("reduce_layers needs block_influence=False and massive=None (each layer's input or "
                             "batch median is needed); use the hooks")
        if rows_first:
            B, K, T, D = acts.shape
        else:
            K, B, T, D = acts.shape
        if len(layers) != K:
            raise EavssError(f"reduce_layers: {K} stacked activations but {len(layers)} layer indices")
        mask = self._mask_for(acts.device)
        if (B, T) != tuple(mask.shape):
            raise EavssError(f"stacked activations {tuple(acts.shape)} do not match the token mask {tuple(mask.shape)}")
        acc = self._accumulator(acts.device)
        groups = self._groups.to(acc.device) if self._groups is not None else \
            torch.zeros(B, dtype=torch.long, device=acc.device)
        rows = stacked_rows(self._layer_base, layers, len(self.layers), len(self.group_names), groups,
                            rows_first=rows_first)  # acc[l, g[b]] of each flattened row
        flat_mask = mask[:, None].expand(B, K, T) if rows_first else mask.expand(K, B, T)
        reduce_activations_ext(acts.reshape(K * B, T, D), flat_mask.reshape(K * B, T), self.rule,
                               pooled=self.pooled, acc=acc.view(-1, NUM_FIELDS), groups=rows)
        self.width[list(layers)] = D

    def _on_layer_output(self, index: int, out: torch.Tensor, args: tuple, kwargs: dict) -> None:
        """Block influence of layer ``index`` when the site is not ``resid_post``."""
        if self._mask is None:
            return
        x = input_tensor(args, kwargs)
        if x is None or x.shape != out.shape:
            return
        block_influence_sums(out, x, self._mask_for(out.device), acc=self._accumulator(out.device)[index],
                             groups=self._groups)

    def __enter__(self) -> "ActivationStatsCollector":
        self.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def attach(self) -> None:
        """Register the forward hooks (idempotent); at ``mlp_act``, replace the forward of plain SiLU
        modules instead (:data:`FUSE_SILU`)."""
        if self._hooks.attached or self._replaced:
            return
        owner = {i: self._gated.get(i, self.modules[i]) for i in self._silu_layers}  # whose forward is replaced
        fused = [i for i in self._silu_layers if "forward" not in owner[i].__dict__]
        self._hooks.attach(skip=fused)
        for i in fused:
            fwd = self._mlp_forward(i, owner[i]) if i in self._gated else self._silu_forward(i, owner[i])
            owner[i].forward = fwd
            self._replaced.append((owner[i], fwd))
        if self._bi_hooks is not None:
            self._bi_hooks.attach()

    def detach(self) -> None:
        """Remove the forward hooks (and restore replaced forwards)."""
        self._hooks.detach()
        for mod, fwd in self._replaced:
            if mod.__dict__.get("forward") is fwd:
                del mod.forward
        self._replaced = []
        if self._bi_hooks is not None:
            self._bi_hooks.detach()
        self._prev = None
        self._mask_on = {}

    # -- batches ---------------------------------------------------------------------------
    def check_groups(self, groups: torch.Tensor | Sequence[int]) -> None:
        """Raise unless every id of host ``groups`` is in ``[0, G)`` (no-op for a device tensor,
        where the check would cost a sync).

        Raises:
            EavssError: a group id out of range.
        """
        g = torch.as_tensor(groups, dtype=torch.long)
        if g.device.type == "cpu" and len(g) and (int(g.min()) < 0 or int(g.max()) >= len(self.group_names)):
            raise EavssError(f"group ids must be in [0, {len(self.group_names)}), got {g.tolist()}")

    def set_batch(self, mask: torch.Tensor, groups: torch.Tensor | Sequence[int] | None = None,
                  check: bool = True, new_batch: bool = True) -> None:
        """Set the token mask (and group of each sequence) for the next forward pass.

        Args:
            mask: ``(B, T)`` bool/int; 1 for tokens that count. Usually the attention mask, or the
                attention mask restricted to answer tokens.
            groups: ``(B,)`` ints in ``[0, G)``; None means group 0 for every sequence.
            check: range-check host ``groups`` (:meth:`check_groups`); False when the caller did
                it once for many batches (per-step generation).
            new_batch: count a forward pass in :attr:`num_batches` (False: the tokens of passes
                already counted, reduced later together -- answer capture's staged decoding steps).

        Raises:
            EavssError: wrong shapes or group ids out of range.
        """
        if mask.dim() != 2:
            raise EavssError(f"token mask must be (batch, seq), got shape {tuple(mask.shape)}")
        self._mask = mask.bool()
        self._mask_on = {self._mask.device: self._mask}
        self._prev = None
        if groups is not None:
            g = torch.as_tensor(groups, dtype=torch.long)
            if g.shape != (mask.shape[0],):
                raise EavssError(f"groups must have one id per sequence ({mask.shape[0]}), got shape {tuple(g.shape)}")
            if check:
                self.check_groups(g)
            self._groups = _to_device(g, mask.device)
        else:
            self._groups = None
        if new_batch:
            self.num_batches += 1

    def check_finite(self, block: bool = True) -> None:
        """Raise if any masked activation seen so far was NaN/Inf.

        Args:
            block: True: check everything up to now (one device sync on accelerators). False: on
                an accelerator, raise for what an earlier non-blocking call snapshotted (finished
                on the device by the time the next batch is queued, so this does not stall), then
                snapshot the current counts without waiting; on CPU the same as True.

        Raises:
            NonFiniteActivationError: names the first offending layer and its module path.
        """
        if self._acc is None:
            return
        if not block and self._acc.device.type == "cuda":
            if self._nf_pending is not None:
                event, host = self._nf_pending
                event.synchronize()
                if bool((host > 0).any()):
                    self.check_finite(block=True)
            bad = self._acc[:, :, F["nonfinite"]].sum(1)
            host = torch.empty(bad.shape, dtype=bad.dtype, pin_memory=True)
            host.copy_(bad, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._nf_pending = (event, host)
            return
        bad = self._acc[:, :, F["nonfinite"]].sum(1)
        if bool((bad > 0).any()):
            i = int(torch.nonzero(bad > 0)[0, 0])
            raise NonFiniteActivationError(
                f"non-finite activations (NaN/Inf) in decoder layer {i} ({self.layers_path}.{i}, site {self.site}) "
                f"on {int(bad[i])} tokens; check the model weights or use a wider dtype (model.dtype=float32)")

    def reset(self) -> None:
        """Zero the accumulator."""
        self._acc = None
        self.num_batches = 0
        self._nf_pending = None

    def all_reduce(self) -> None:
        """Sum the accumulators of all ranks (``torch.distributed``, any backend); no-op in a single process.

        Every rank must call it, also a rank that saw no batch (it contributes zeros). Widths are
        merged with MAX (a rank without batches has not seen any layer).
        """
        from eavss import distributed as edist

        if not edist.is_distributed():
            return
        edist.all_reduce_(self._accumulator(self._home), "sum")
        width = torch.as_tensor(self.width, dtype=torch.int64, device=self._acc.device)
        edist.all_reduce_(width, "max")
        self.width = width.cpu().numpy().astype(np.int64)
        self._nf_pending = None

    @property
    def accumulator(self) -> torch.Tensor | None:
        """The raw ``(L, G, NUM_FIELDS)`` accumulator (e.g. for ``all_reduce``), or None before any batch."""
        return self._acc

    def result(self) -> LayerStatistics:
        """Finished statistics on the host.

        Raises:
            EavssError: no token was seen (empty calibration set or all-zero masks).
        """
        if self._acc is None or float(self._acc[:, :, [F["n_tokens"], F["n_massive"]]].sum()) == 0:
            raise EavssError("no tokens were collected: the calibration set is empty or every token was masked out; "
                             "check the calibration dataset and its length limits")
        sums = self._acc.detach().to("cpu", torch.float64).numpy().transpose(1, 0, 2).copy()
        return LayerStatistics(sums, self.width.copy(), self.site, list(self.group_names), self.rule.describe(),
                               self.block_influence, self.massive)


def silu_matches_torch(device: torch.device, dtype: torch.dtype, gated: bool = False) -> bool:
    """Whether the fused reduction's SiLU (:func:`reduce_activations_ext` with ``silu_out``) equals
    ``torch.nn.functional.silu`` to the bit on ``device`` for ``dtype``: 65,536 values (a grid over
    [-30, 30] and normal draws of scale 4). ``gated``: instead whether its gated product (``up``
    given) equals ``silu(gate) * up``, ``up`` normal draws. One small launch and one host sync."""
    gen = torch.Generator().manual_seed(0)
    probe = torch.cat([torch.linspace(-30.0, 30.0, 8192), torch.randn(57344, generator=gen) * 4])
    probe = probe.to(device=device, dtype=dtype).view(1, 64, 1024)
    up = torch.randn(1, 64, 1024, generator=gen).to(device=device, dtype=dtype) if gated else None
    y = torch.empty_like(probe)
    with torch.no_grad():
        reduce_activations_ext(probe, torch.ones(1, 64, dtype=torch.bool, device=device), SparsityRule(),
                               pooled=False, silu_out=y, up=up)
        want = torch.nn.functional.silu(probe)
        return bool(torch.equal(y, want * up if gated else want))


def stacked_rows(cache: dict, layers: Sequence[int], num_layers: int, stride: int, inner: torch.Tensor,
                 rows_first: bool = False) -> torch.Tensor:
    """Rows ``layers[k] * stride + inner[b]`` (flattened ``(K * B,)``) of an ``(L * stride, ...)``
    view, where stacked ``(K, B, ...)`` activations of decoder layers ``layers`` add: the flat index
    of ``[layer, inner[b]]`` in an ``(L, stride, ...)`` buffer. For every layer in order (a decoding
    step) the per-layer offsets are made once per device and kept in ``cache``, so a step copies
    nothing from the host.

    Args:
        cache: ``{device: (L,) offsets}``, owned by the caller. layers: ``K`` distinct indices.
        num_layers: ``L``. stride: rows per layer (groups, samples). inner: ``(B,)`` int64 row within
            a layer, on the buffer's device.
        rows_first: the activations are stacked ``(B, K, ...)`` instead: flattened ``(B * K,)`` in
            that order.
    """
    dev = inner.device
    if list(layers) == list(range(num_layers)):
        base = cache.get(dev)
        if base is None:
            base = cache[dev] = torch.arange(num_layers, device=dev) * stride
    else:
        base = torch.as_tensor(list(layers), dtype=torch.long).to(dev) * stride
    if rows_first:
        return (inner[:, None] + base[None, :]).reshape(-1)
    return (base[:, None] + inner[None, :]).reshape(-1)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where the model wants its input ids: the execution device of accelerate's hook on the input
    embedding (``device_map``/offloaded models), else the first parameter not on the meta device."""
    try:
        emb = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        emb = None
    hook = getattr(emb, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _version(t: torch.Tensor) -> int | None:
    """In-place modification counter (None for inference-mode tensors, which keep none)."""
    return None if t.is_inference() else t._version


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; host-to-GPU copies go through pinned memory without blocking the host."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def forward_for_stats(model: torch.nn.Module) -> torch.nn.Module:
    """The module to call for statistics: the base model (decoder stack) without the LM head.

    Skipping the ``(tokens x vocab)`` logits saves up to ~20% of a small model's forward time and
    a large buffer; the decoder layers see exactly the same inputs.
    """
    base = getattr(model, "base_model", None)
    return base if isinstance(base, torch.nn.Module) and base is not model else model


@torch.inference_mode()
def collect_statistics(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    site: str = "resid_post",
    rule: SparsityRule | None = None,
    group_names: Sequence[str] = ("all",),
    pooled: bool = True,
    block_influence: bool = True,
    accum_dtype: torch.dtype = torch.float64,
    check_finite_every: int = 1,
    progress: bool = True,
    total: int | None = None,
    distributed: bool = False,
    massive: float | None = None,
) -> tuple[LayerStatistics, dict]:
    """Run the model over ``batches`` and return per-layer statistics.

    Each batch is a mapping with ``input_ids`` ``(B, T)`` and ``attention_mask`` ``(B, T)``, and
    optionally ``stat_mask`` ``(B, T)`` (tokens that count; default = attention mask) and
    ``groups`` ``(B,)``.

    On an accelerator nothing in the loop waits for the device: inputs are copied from pinned
    memory, and the NaN/Inf check every ``check_finite_every`` batches looks at the counts of the
    previous check (a non-finite activation is reported at most one check late; the final check
    is complete). ``check_finite_every=0`` checks only at the end.

    Args:
        distributed: this process is one rank of a ``torch.distributed`` job and ``batches`` is its
            shard (:func:`eavss.distributed.shard`): the sums of all ranks are all-reduced before
            the result, so every rank returns the statistics of the whole calibration set, and
            ``info`` counts all ranks (``seconds``: the slowest rank's loop).
        massive: massive-token factor (see :class:`ActivationStatsCollector`; None: off). Batches
            are the unit of its median, so the result depends on how sequences are batched.

    Returns:
        ``(stats, info)`` where ``info`` has ``num_batches``, ``num_sequences``, ``num_tokens``
        (masked tokens, massive ones included), ``seconds`` and ``tokens_per_second`` (all tokens
        forwarded).

    Raises:
        EavssError: empty input; NonFiniteActivationError: NaN/Inf activations.
    """
    from tqdm.auto import tqdm

    import inspect

    device = input_device(model)
    runner = forward_for_stats(model)
    try:  # positions count real tokens only, so left padding gives absolute-position models (GPT-2) the right ones
        with_positions = "position_ids" in inspect.signature(runner.forward).parameters
    except (TypeError, ValueError):
        with_positions = False
    col = ActivationStatsCollector(model, site=site, rule=rule, group_names=group_names, pooled=pooled,
                                   block_influence=block_influence, accum_dtype=accum_dtype, massive=massive)
    n_seq = n_fwd_tok = 0
    t0 = time.perf_counter()
    with col:
        for i, batch in enumerate(tqdm(batches, total=total, desc="activation statistics", unit="batch",
                                       disable=not progress)):
            am_host = batch["attention_mask"]
            n_fwd_tok += int(am_host.sum()) if am_host.device.type == "cpu" else 0
            ids = _to_device(batch["input_ids"], device)
            am = _to_device(am_host, device)
            sm = batch.get("stat_mask")
            sm = am.bool() if sm is None else (_to_device(sm, device).bool() & am.bool())
            col.set_batch(sm, batch.get("groups"))
            if with_positions:
                runner(input_ids=ids, attention_mask=am, position_ids=(am.long().cumsum(1) - 1).clamp_min(0),
                       use_cache=False)
            else:
                runner(input_ids=ids, attention_mask=am, use_cache=False)
            if am_host.device.type != "cpu":
                n_fwd_tok += int(am.sum())  # batches already on the device: one sync per batch
            n_seq += ids.shape[0]
            if check_finite_every and (i + 1) % check_finite_every == 0 and not distributed:
                col.check_finite(block=False)
    n_batches = col.num_batches
    if distributed:  # a rank may see no batch or a NaN: reduce first, so that all ranks raise together
        col.all_reduce()
    col.check_finite()
    stats = col.result()
    secs = time.perf_counter() - t0
    counts = {"num_batches": n_batches, "num_sequences": n_seq, "num_forward_tokens": n_fwd_tok}
    if distributed:
        from eavss import distributed as edist

        counts = {k: int(v) for k, v in edist.all_reduce_numbers(counts, "sum", col.accumulator.device).items()}
        secs = edist.all_reduce_numbers({"s": secs}, "max", col.accumulator.device)["s"]
    info = {
        **counts,
        "num_tokens": int((stats.n_tokens() + stats.n_massive())[:, 0].sum()),
        "seconds": secs,
        "tokens_per_second": counts["num_forward_tokens"] / secs if secs > 0 else float("nan"),
    }
    if distributed:
        from eavss import distributed as edist

        info["world_size"] = edist.world_size()
    return stats, info
