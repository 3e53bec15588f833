"""Per-batch reduction of one layer's activations into additive sums (the hot path).

:func:`reduce_activations` turns a ``(B, T, D)`` activation tensor and a ``(B, T)`` token mask into
``(B, NUM_FIELDS)`` per-sequence sums (see :mod:`eavss.stats.accumulators`). It never copies the
activations to the host and never syncs with an accelerator, so it can run inside a forward hook
at close to the cost of the forward pass. Two implementations compute the same function:

* **fused** (CUDA tensors, when Triton is importable): one Triton kernel reads each activation row
  (and the layer input, for block influence) from device memory once, keeps it in registers (or
  re-reads it from L2 for very wide rows), and produces per-token sums, the centred sum of squares
  (exact two-pass variance per token), the near-zero count, ``1 - cos(x_t, a_t)`` and the
  per-sequence pooled vector, all accumulated in float32 whatever the activation dtype (no upcast
  copy of bfloat16 activations). Per-program partial sums are merged in float64.
* **eager** (CPU, or CUDA without Triton): a handful of whole-tensor passes, no ``var_mean``
  (slow on CPU), bool-free counting, a BLAS matrix-vector product for the pooled sum, and
  ``|x_t|^2`` of the layer input reused from the previous layer's output (see
  :func:`reduce_activations_ext`). Non-float32 activations are upcast once (CPU bfloat16 is a
  correctness path, not a fast one). The per-token variance is ``(sum a^2 - (sum a)^2 / D) / D``
  from float32 row sums, evaluated in float64; its relative error is ~1e-7 * (1 + mu_t^2 / s2_t),
  negligible unless a token's mean dwarfs its spread.

Padding carries exactly zero weight: per-token quantities are selected with
``torch.where(mask, value, 0)`` (or the kernel's equivalent), never multiplied by the mask, so
whatever a padding position holds (even NaN or Inf) never reaches a sum. Set the environment
variable ``EAVSS_REDUCE=eager`` to force the eager implementation everywhere.

**Massive-token exclusion** (``massive=k``, off by default; Sun et al. 2024, *Massive Activations
in Large Language Models*, arXiv 2402.17762): token ``t`` of a batch is *massive* at this capture
site when ``rms_t = sqrt(mean_d a_t[d]^2)`` exceeds ``k`` times the median of ``rms`` over the
batch's counted tokens (mask True and finite, every sequence and group of the batch together;
the lower median, i.e. the ``ceil(n/2)``-th smallest of ``n`` values). Massive tokens are left out
of every sum (they count neither in ``n_tokens`` nor in any other field) and counted in
``n_massive``. Only the eager implementation has it: with ``massive`` on, ``auto`` uses the eager
one on every device (sync-free there too; see :func:`massive_tokens`), and ``fused`` is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from eavss.errors import EavssError
from eavss.stats.accumulators import F, NUM_FIELDS

SPARSITY_MODES = ("relative", "absolute")


@dataclass(frozen=True)
class SparsityRule:
    """Which activations count as near zero.

    ``mode="absolute"``: ``|a| < epsilon`` (the official AVSS code uses ``epsilon = 1e-5``; on a
    residual stream whose RMS is ~1-100 this is ~never true, so sparsity is ~0 and AVSS divides by
    ~0). ``mode="relative"`` (default): ``|a_t[d]| < tau * RMS(a_t)``, with ``RMS(a_t)`` the
    root-mean-square of that token's activation vector -- scale-free, so comparable across layers
    whose residual-stream norms grow with depth.
    """

    mode: str = "relative"
    epsilon: float = 1e-5
    tau: float = 0.01

    def __post_init__(self):
        if self.mode not in SPARSITY_MODES:
            raise EavssError(f"unknown sparsity threshold mode {self.mode!r}; choose one of {list(SPARSITY_MODES)}")
        if self.mode == "absolute" and not (self.epsilon > 0):
            raise EavssError(f"sparsity epsilon must be > 0, got {self.epsilon}")
        if self.mode == "relative" and not (self.tau > 0):
            raise EavssError(f"sparsity tau must be > 0, got {self.tau}")

    def describe(self) -> dict:
        """JSON-able description for reports."""
        if self.mode == "absolute":
            return {"mode": "absolute", "epsilon": self.epsilon, "rule": f"|a| < {self.epsilon:g}"}
        return {"mode": "relative", "tau": self.tau, "rule": f"|a_t[d]| < {self.tau:g} * RMS(a_t)"}


def massive_factor(massive: float | None) -> float | None:
    """Validated massive-token factor ``k``: None when off (None or 0), else a float ``> 1``.

    ``k > 1`` keeps the median token (and everything below it) in, so a batch with counted tokens
    always keeps at least one; ``k <= 1`` would leave out about half of every batch or more.

    Raises:
        EavssError: ``massive`` is negative, in ``(0, 1]``, or not finite.
    """
    if massive is None or massive == 0:
        return None
    k = float(massive)
    if not (k > 1.0) or k == float("inf"):
        raise EavssError(f"massive (the massive-token factor k, a multiple of the median token RMS) must be a finite "
                         f"number > 1, or 0/None for off; got {massive!r}")
    return k


def massive_tokens(act_sq: torch.Tensor, ok: torch.Tensor, width: int, k: float) -> torch.Tensor:
    """``(B, T)`` bool: the tokens of ``ok`` whose RMS exceeds ``k`` times the batch's median RMS.

    Args:
        act_sq: ``(B, T)`` ``|a_t|^2`` (any float dtype; compared in float64).
        ok: ``(B, T)`` bool, the counted finite tokens; the median is over these only, so padding
            (and NaN/Inf rows) never moves it.
        width: ``D``, the number of elements per token.
        k: the factor (> 1).

    The median is the lower median of the ``n`` counted tokens (the ``ceil(n/2)``-th smallest), taken
    from a sort with the other positions set to +inf and indexed with a device tensor: no host sync.
    The per-batch median is a streaming proxy for the median over the whole calibration set, so the
    result depends on which sequences share a batch.
    """
    if ok.numel() == 0:
        return ok.clone()
    f64 = torch.float64
    rms = torch.sqrt(act_sq.to(f64) / width)
    inf = torch.full((), float("inf"), dtype=f64, device=rms.device)
    srt = torch.where(ok, rms, inf).flatten().sort().values
    n = ok.sum()
    med = srt.gather(0, ((n - 1).clamp_min(0) // 2).reshape(1))  # +inf when n == 0: nothing is massive
    return ok & (rms > k * med)


IMPLEMENTATIONS = ("auto", "fused", "eager")


def reduce_backend(device: torch.device | str, implementation: str | None = None) -> str:
    """Which implementation :func:`reduce_activations` uses for tensors on ``device``.

    ``implementation`` (default: ``$EAVSS_REDUCE`` or ``auto``): ``auto`` picks ``fused`` for CUDA
    tensors when Triton imports, else ``eager``.
    """
    impl = implementation or os.environ.get("EAVSS_REDUCE", "auto")
    if impl not in IMPLEMENTATIONS:
        raise EavssError(f"unknown reduction implementation {impl!r}; choose one of {list(IMPLEMENTATIONS)}")
    dev = torch.device(device)
    if impl == "eager":
        return "eager"
    fused_ok = _triton_available() and (dev.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
    if impl == "fused" and not fused_ok:
        raise EavssError("the fused reduction needs Triton and a CUDA device; use EAVSS_REDUCE=eager")
    return "fused" if fused_ok else "eager"


_TRITON_OK: bool | None = None


def _triton_available() -> bool:
    global _TRITON_OK
    if _TRITON_OK is None:
        try:
            from eavss.stats import _triton  # noqa: F401

            _TRITON_OK = True
        except Exception:  # noqa: BLE001 - no triton, or a triton that does not import
            _TRITON_OK = False
    return _TRITON_OK


@torch.no_grad()
def reduce_activations(
    act: torch.Tensor,
    mask: torch.Tensor,
    rule: SparsityRule,
    layer_input: torch.Tensor | None = None,
    pooled: bool = True,
    massive: float | None = None,
) -> torch.Tensor:
    """Per-sequence additive sums of one layer's activations.

    Args:
        act: ``(B, T, D)`` activations at the capture site, any float dtype (reduced with float32
            accumulation).
        mask: ``(B, T)`` bool, True for tokens that count (real, non-padding; optionally only
            answer tokens).
        rule: near-zero threshold.
        layer_input: optional ``(B, T, D)`` input hidden state of the layer, for block influence.
        pooled: also compute the official-code pooled variance.
        massive: massive-token factor ``k`` (None or 0: off, the default). Tokens whose RMS exceeds
            ``k`` times the batch's median token RMS are left out of every field and counted in
            ``n_massive`` (module doc; :func:`massive_tokens`). Eager implementation only.

    Returns:
        ``(B, NUM_FIELDS)`` float64 tensor on ``act.device``; field order as
        :data:`eavss.stats.accumulators.FIELDS`. Units: token counts, sums of squared
        activations, element counts (see module doc of :mod:`eavss.stats.accumulators`).

    Raises:
        ValueError: shapes of ``act`` and ``mask`` (or ``layer_input``) disagree.
        EavssError: an invalid ``massive`` (see :func:`massive_factor`).
    """
    return reduce_activations_ext(act, mask, rule, layer_input=layer_input, pooled=pooled, massive=massive)[0]


@torch.no_grad()
def reduce_activations_ext(
    act: torch.Tensor,
    mask: torch.Tensor,
    rule: SparsityRule,
    layer_input: torch.Tensor | None = None,
    pooled: bool = True,
    input_sq: torch.Tensor | None = None,
    implementation: str | None = None,
    acc: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
    massive: float | None = None,
    delta: bool = False,
    block_influence: bool | None = None,
    silu_out: torch.Tensor | None = None,
    up: torch.Tensor | None = None,
    overwrite_act: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:func:`reduce_activations` plus a reusable by-product and in-place accumulation, for the
    collector's hooks.

    Args:
        input_sq: optional ``(B, T)`` float32 ``|x_t|^2`` of ``layer_input``, typically the
            ``act_sq`` this function returned for the previous layer, whose output is this layer's
            input (saves one pass over ``layer_input`` in the eager implementation).
        implementation: ``auto`` | ``fused`` | ``eager`` (see :func:`reduce_backend`).
        acc: optional contiguous ``(G, NUM_FIELDS)`` accumulator (float32/float64): add the sums of
            sequence ``b`` into ``acc[groups[b]]`` instead of returning them (on CUDA, by a second
            small kernel: no further launches).
        groups: ``(B,)`` int64 group of each sequence (None: group 0), used with ``acc``.
        massive: massive-token factor (see :func:`reduce_activations`); when on, ``auto`` picks the
            eager implementation on every device and ``fused`` raises.
        delta: ``act`` is a decoder layer's output and ``layer_input`` its input; the statistics are
            those of ``act - layer_input`` (the ``resid_delta`` site, rounded to ``act``'s dtype as
            torch's subtraction rounds) and block influence compares ``layer_input`` with ``act``.
            The fused implementation forms the difference in registers (one read of each tensor,
            no ``(B, T, D)`` temporary) when both have one dtype; the eager one (and mixed dtypes)
            subtracts as torch does, then adds :func:`block_influence_sums`.
        block_influence: compute ``bi_sum`` from ``layer_input`` (default: whether it is given).
        silu_out: ``act`` is the *input* of a SiLU activation: ``silu(act)`` is written into
            ``silu_out`` (``(B, T, D)``, ``act``'s dtype and device) and the sums are those of
            ``silu(act)``. The fused implementation computes both from one read of ``act`` (the
            values torch's CUDA ``silu`` gives; see :func:`eavss.stats._triton.fused_reduce`); the
            eager one runs ``torch.nn.functional.silu`` into ``silu_out``, then reduces it. Not with
            ``delta``, ``layer_input`` or ``massive``.
        up: with ``silu_out``, a SiLU-gated MLP: ``act`` is its ``gate_proj(x)`` and ``up`` its
            ``up_proj(x)`` (``act``'s shape, dtype and device); ``silu_out`` receives
            ``silu(act) * up`` (the ``down_proj`` input, to the bit what torch's ``act_fn(gate) * up``
            gives) and the sums are still those of ``silu(act)``. The fused implementation reads
            gate and up once, writes the product and reads the gate again (the tiled path of
            :func:`eavss.stats._triton.fused_reduce`); the eager one runs torch's SiLU into
            ``silu_out``, reduces it, then multiplies it by ``up`` in place.
        overwrite_act: with ``up``, ``act`` is the caller's temporary and the fused implementation
            may overwrite its counted tokens with their SiLU (no scratch tensor of its size).

    Returns:
        ``(sums, act_sq)``: the ``(B, NUM_FIELDS)`` float64 sums (None when ``acc`` was given),
        and the ``(B, T)`` float32 ``|a_t|^2`` of every position (eager implementation; None from
        the fused one, which reads the layer input anyway and has no use for it).
    """
    if act.dim() != 3 or mask.shape != act.shape[:2]:
        raise ValueError(f"act must be (B, T, D) and mask (B, T); got {tuple(act.shape)} and {tuple(mask.shape)}")
    bi = (layer_input is not None) if block_influence is None else bool(block_influence)
    if (delta or bi) and layer_input is None:
        raise ValueError("delta and block influence need layer_input, the decoder layer's input")
    if layer_input is not None:
        if layer_input.shape != act.shape:
            raise ValueError(f"layer_input {tuple(layer_input.shape)} and act {tuple(act.shape)} differ in shape")
        if layer_input.device != act.device:  # layers spread over devices (device_map="auto")
            layer_input = layer_input.to(act.device, non_blocking=True)
            input_sq = None
    if silu_out is not None:
        if delta or layer_input is not None or massive_factor(massive) is not None:
            raise ValueError("silu_out: not with delta, layer_input or massive")
        if silu_out.shape != act.shape or silu_out.dtype != act.dtype or silu_out.device != act.device:
            raise ValueError(f"silu_out must match act's shape, dtype and device, got {tuple(silu_out.shape)} "
                             f"{silu_out.dtype} {silu_out.device} for {tuple(act.shape)} {act.dtype} {act.device}")
    if up is not None and (silu_out is None or up.shape != act.shape or up.dtype != act.dtype
                           or up.device != act.device):
        raise ValueError(f"up needs silu_out and must match act's shape, dtype and device, got {tuple(up.shape)} "
                         f"{up.dtype} {up.device} for {tuple(act.shape)} {act.dtype} {act.device}")
    m = mask if (mask.dtype == torch.bool and mask.device == act.device) else mask.to(act.device, torch.bool)
    if acc is not None:
        if acc.dim() != 2 or acc.shape[1] != NUM_FIELDS or not acc.is_contiguous():
            raise ValueError(f"acc must be a contiguous (groups, {NUM_FIELDS}) tensor, got {tuple(acc.shape)}")
        if groups is not None and groups.device != act.device:
            groups = groups.to(act.device, non_blocking=True)
    k = massive_factor(massive)
    if k is not None and (implementation or os.environ.get("EAVSS_REDUCE", "auto")) == "fused":
        raise EavssError("the fused reduction does not implement massive-token exclusion; use the eager one "
                         "(EAVSS_REDUCE=eager or auto) or massive=None")
    # the kernel rounds out - x to act's dtype: with another input dtype torch would promote instead
    mixed_delta = delta and layer_input.dtype != act.dtype
    if k is None and not mixed_delta and reduce_backend(act.device, implementation) == "fused":
        from eavss.stats._triton import fused_reduce

        if acc is not None and acc.device == act.device:
            fused_reduce(act, m, rule, layer_input, pooled, acc=acc, groups=groups, delta=delta, block_influence=bi,
                         silu_out=silu_out, up=up, overwrite_act=overwrite_act)
            return None, None
        red = fused_reduce(act, m, rule, layer_input, pooled, delta=delta, block_influence=bi, silu_out=silu_out,
                           up=up, overwrite_act=overwrite_act)
        act_sq = None
    elif silu_out is not None:
        silu_out.copy_(torch.nn.functional.silu(act))
        with _one_thread(act.device):
            red, act_sq = _eager_reduce(silu_out, m, rule, None, pooled, None, None)
        if up is not None:
            silu_out.mul_(up)  # the product torch's act_fn(gate) * up gives, to the bit
            act_sq = None
    elif delta:
        with _one_thread(act.device):
            red, _ = _eager_reduce(act - layer_input, m, rule, None, pooled, None, k)
        if bi:
            red[:, F["bi_sum"]] = block_influence_sums(act, layer_input, m, implementation="eager")
        act_sq = None
    else:
        with _one_thread(act.device):
            red, act_sq = _eager_reduce(act, m, rule, layer_input if bi else None, pooled, input_sq, k)
    if acc is None:
        return red, act_sq
    red = red.to(acc.device, non_blocking=True)
    if groups is None:
        acc[0] += red.sum(0).to(acc.dtype)
    else:
        acc.index_add_(0, groups.to(acc.device), red.to(acc.dtype))
    return None, act_sq


class _one_thread:
    """Run the CPU reduction on one thread (restored afterwards).

    Its ~8 whole-tensor passes are small, memory-bound operations: on 2+ threads each is an
    OpenMP parallel region whose barrier waits for every thread, and on a CPU shared with other
    jobs a descheduled thread makes each such barrier cost up to a scheduler time slice. Measured
    on this 2-core machine under load: the reduction took ~8 % of the forward pass on 2 threads
    and is well under 1 % on one. ``EAVSS_REDUCE_THREADS=0`` keeps torch's thread count.
    """

    def __init__(self, device: torch.device):
        self.old = None
        if device.type == "cpu" and os.environ.get("EAVSS_REDUCE_THREADS", "1") != "0":
            n = torch.get_num_threads()
            if n > 1:
                self.old = n

    def __enter__(self):
        if self.old:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.old:
            torch.set_num_threads(self.old)


def _row_sq(t: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` sum of squares along the last dim (one pass, no temporary)."""
    return torch.linalg.vector_norm(t, dim=-1).square_()


def _eager_reduce(act, m, rule, layer_input, pooled, input_sq, massive=None):
    B, T, D = act.shape
    # float32 (or float64) activations are read in place; other dtypes are upcast once.
    a = act if act.dtype in (torch.float32, torch.float64) else act.float()
    if a.stride(-1) != 1:
        a = a.contiguous()
    dev = a.device
    f64 = torch.float64
    zero = torch.zeros((), dtype=f64, device=dev)

    s = a.sum(-1)  # (B, T) row sums
    aa = _row_sq(a)  # (B, T) |a_t|^2
    finite = torch.isfinite(aa)  # NaN/Inf anywhere in the row -> NaN/Inf here
    ok = m & finite
    big = None
    if massive is not None:  # leave massive tokens out of everything below, count them apart
        big = massive_tokens(aa, ok, D, massive)
        ok = ok & ~big
    s64 = s.to(f64)
    mu = s64 / D
    m2 = (aa.to(f64) - s64 * mu).clamp_min(0.0)  # D * s2_t

    # near-zero count: |a| < thr, counted in float in one scratch tensor (no bool tensor, no int64 cast)
    t = torch.abs(a)
    if rule.mode == "absolute":
        torch.lt(t, rule.epsilon, out=t)
    else:
        thr = (rule.tau * torch.sqrt(aa / D)).to(t.dtype)
        torch.lt(t, thr.unsqueeze(-1), out=t)
    nz = t.sum(-1)

    cols = {
        "within_m2": m2,
        "sum_mean": mu,
        "sum_mean_sq": mu * mu,
        "near_zero": nz.to(f64),
    }
    if layer_input is not None:
        x = layer_input if layer_input.dtype == a.dtype else layer_input.to(a.dtype)
        if x.stride(-1) != 1:
            x = x.contiguous()
        xx = input_sq if (input_sq is not None and input_sq.shape == (B, T)) else _row_sq(x)
        dot = torch.mul(x, a, out=t).sum(-1).to(f64)  # reuses the scratch tensor
        cos = dot / torch.sqrt(xx.to(f64) * aa.to(f64)).clamp_min(1e-30)
        cols["bi_sum"] = 1.0 - cos
    names = list(cols)
    per_tok = torch.stack([cols[k] for k in names], dim=-1)  # (B, T, k) float64
    sums = torch.where(ok.unsqueeze(-1), per_tok, zero).sum(dim=1)  # (B, k)

    n_tok = (m if big is None else m & ~big).sum(dim=1).to(f64)
    fields = [zero.expand(B)] * NUM_FIELDS
    fields[F["n_tokens"]] = n_tok
    for j, k in enumerate(names):
        fields[F[k]] = sums[:, j]
    fields[F["nonfinite"]] = (m & ~finite).sum(dim=1).to(f64)
    fields[F["n_seqs"]] = (n_tok > 0).to(f64)
    if big is not None:
        fields[F["n_massive"]] = big.sum(dim=1).to(f64)
    if pooled and D > 1:
        fields[F["pooled_var_sum"]] = _pooled_var(a, ok, finite, n_tok)
    return torch.stack(fields, dim=1), aa


def _pooled_var(a: torch.Tensor, ok: torch.Tensor, finite: torch.Tensor, n_tok: torch.Tensor) -> torch.Tensor:
    """Per sequence: unbiased variance across ``D`` of the mean of its ``ok`` tokens, ``(B,)`` float64."""
    cnt = ok.sum(dim=1, keepdim=True).clamp_min(1).to(a.dtype)
    # A matrix-vector product reads the activations once, but 0 * NaN = NaN: use it only when no
    # excluded position holds a non-finite value. Checking costs a sync on accelerators (free on CPU).
    if a.device.type == "cpu" and bool(finite.all()):
        w = ok.to(a.dtype).unsqueeze(1)  # (B, 1, T)
        pooled_vec = torch.bmm(w, a).squeeze(1)  # (B, D)
    else:
        pooled_vec = torch.where(ok.unsqueeze(-1), a, 0.0).sum(dim=1)
    pooled_vec = pooled_vec / cnt
    pv = pooled_vec.to(torch.float64).var(dim=-1, correction=1)
    return torch.where(n_tok > 0, pv, torch.zeros((), dtype=torch.float64, device=a.device))


@torch.no_grad()
def block_influence_sums(out: torch.Tensor, layer_input: torch.Tensor, mask: torch.Tensor,
                         implementation: str | None = None, acc: torch.Tensor | None = None,
                         groups: torch.Tensor | None = None) -> torch.Tensor | None:
    """Per-sequence block influence sums ``sum_t (1 - cos(x_t, a_t))`` over counted tokens.

    ShortGPT's block influence (Men et al. 2024, arXiv 2403.03853, Eq. 2), token-weighted: ``x_t``
    is the decoder layer's input hidden state and ``a_t`` its output. Used when the statistics are
    captured at another site than ``resid_post`` (the site reduction computes it otherwise).

    Two implementations, chosen like :func:`reduce_activations`'s (:func:`reduce_backend`):

    * **fused** (CUDA with Triton): the fused kernel in its block-influence-only mode, which reads
      ``out`` and ``layer_input`` once each in their own dtype and reduces ``x.a``, ``|x|^2`` and
      ``|a|^2`` per token (the same ``bi_sum`` as the ``resid_post`` reduction, without the other
      statistics). A token counts when it is in the mask and its output row is finite (the
      ``resid_post`` rule).
    * **eager** (CPU, or ``EAVSS_REDUCE=eager``): float32 copies of both tensors, an elementwise
      product and three row reductions: ~36 bytes of device traffic per element of a bf16 ``out``
      (two upcast copies, the product, three reads) against 4 for the fused one; a token counts
      when it is in the mask and its cosine is finite.

    The two agree on finite inputs (``benchmarks/check_fused.py`` compares the fused ``bi_sum``
    with the eager reduction's on the GPU).

    Args:
        out: ``(B, T, D)`` layer output. layer_input: ``(B, T, D)`` layer input. mask: ``(B, T)``
            bool, tokens that count.
        implementation: ``auto`` | ``fused`` | ``eager`` (default ``$EAVSS_REDUCE`` or ``auto``).
        acc: optional contiguous ``(G, NUM_FIELDS)`` accumulator: the sums are added into
            ``acc[groups[b], bi_sum]`` instead of returned (fused: by the kernel's second launch).
        groups: ``(B,)`` int64 group of each sequence (None: group 0), with ``acc``.

    Returns:
        ``(B,)`` float64 sums (unit: 1), or None with ``acc``.
    """
    if reduce_backend(out.device, implementation) == "fused":
        from eavss.stats._triton import fused_reduce

        m = mask if (mask.dtype == torch.bool and mask.device == out.device) else mask.to(out.device, torch.bool)
        x = layer_input if layer_input.device == out.device else layer_input.to(out.device, non_blocking=True)
        if acc is not None and acc.device == out.device:
            g = groups if groups is None or groups.device == out.device else groups.to(out.device)
            fused_reduce(out, m, SparsityRule(), x, False, acc=acc, groups=g, stats=False)
            return None
        bi = fused_reduce(out, m, SparsityRule(), x, False, stats=False)[:, F["bi_sum"]]
        return bi if acc is None else _add_field(acc, groups, bi, F["bi_sum"])
    a = out.float() if out.dtype not in (torch.float32, torch.float64) else out
    x = layer_input.to(a.dtype)
    if x.device != a.device:
        x = x.to(a.device)
    f64 = torch.float64
    dot = (x * a).sum(-1).to(f64)
    nn_ = (_row_sq(x).to(f64) * _row_sq(a).to(f64)).sqrt().clamp_min(1e-30)
    cos = dot / nn_
    ok = mask.to(a.device).bool() & torch.isfinite(cos)
    bi = torch.where(ok, 1.0 - cos, torch.zeros((), dtype=f64, device=a.device)).sum(dim=1)
    return bi if acc is None else _add_field(acc, groups, bi, F["bi_sum"])


def _add_field(acc: torch.Tensor, groups: torch.Tensor | None, values: torch.Tensor, field: int) -> None:
    """``acc[groups[b], field] += values[b]`` (group 0 for every ``b`` when ``groups`` is None)."""
    v = values.to(acc.device, acc.dtype)
    if groups is None:
        acc[0, field] += v.sum()
    else:
        acc[:, field].index_add_(0, groups.to(acc.device), v)
    return None
