"""Fused Triton kernel behind :func:`eavss.stats.reduce.reduce_activations` on CUDA tensors.

Imported lazily (only when a CUDA activation arrives); importing this module fails where Triton
is missing, and the eager implementation is used instead. Massive-token exclusion is not
implemented here (``n_massive`` is written as 0); with it on, the eager implementation runs.

One kernel launch per layer and batch. Program ``(b, p)`` owns tokens ``[p*TPP, (p+1)*TPP)`` of
sequence ``b`` and walks them ``BLOCK_T`` rows at a time. For each row it computes, in float32:
``sum a``, ``sum a^2``, the centred ``sum (a - mu)^2`` (two passes over the row, the second from
registers or L2, so the variance is exact per token), the near-zero count, and with the layer
input ``x``: ``x.a`` and ``|x|^2``. Rows are selected with ``where(ok, ., 0)`` (``ok`` = in the
token mask and finite), never multiplied, so NaN/Inf in padding never reaches a sum. The program
writes its sums over its tokens to ``OUT[b, p, :]`` (float32, <= TPP terms each) and its pooled
column sums to ``POOL[b, p, :]``; the caller merges programs in float64.

Device-memory traffic: one read of ``act`` (and of ``layer_input``) plus ``B*P*(D + K)`` float32
writes, i.e. ~1-2 % of the activation bytes for the default launch shape.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from eavss.stats.accumulators import F, NUM_FIELDS

_FLT_MAX = 3.4028234663852886e38
_K = NUM_FIELDS + 1  # FIELDS plus the count of ok tokens (for the pooled mean)
_I_OK = NUM_FIELDS


@triton.jit
def _token_stats_kernel(
    A, X, M, OUT, POOL,
    T, D, TPP,
    s_ab, s_at, s_xb, s_xt, s_mb, s_mt,
    thr_param,
    REL: tl.constexpr, HAS_X: tl.constexpr, POOLED: tl.constexpr, SINGLE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, K: tl.constexpr, FLT_MAX: tl.constexpr,
    I_N: tl.constexpr, I_M2: tl.constexpr, I_MU: tl.constexpr, I_MU2: tl.constexpr, I_NZ: tl.constexpr,
    I_BI: tl.constexpr, I_NF: tl.constexpr, I_OK: tl.constexpr, I_MS: tl.constexpr,
):
    b = tl.program_id(0)
    p = tl.program_id(1)
    P = tl.num_programs(1)
    t_lo = p * TPP
    b64 = b.to(tl.int64)
    a_base = A + b64 * s_ab
    x_base = X + b64 * s_xb
    m_base = M + b64 * s_mb
    prog = (b * P + p).to(tl.int64)
    pool_base = POOL + prog * D
    rt = tl.arange(0, BLOCK_T)
    rd = tl.arange(0, BLOCK_D)

    acc_n = tl.zeros([BLOCK_T], tl.float32)
    acc_m2 = tl.zeros([BLOCK_T], tl.float32)
    acc_mu = tl.zeros([BLOCK_T], tl.float32)
    acc_mu2 = tl.zeros([BLOCK_T], tl.float32)
    acc_nz = tl.zeros([BLOCK_T], tl.float32)
    acc_bi = tl.zeros([BLOCK_T], tl.float32)
    acc_nf = tl.zeros([BLOCK_T], tl.float32)
    acc_ok = tl.zeros([BLOCK_T], tl.float32)
    pool_acc = tl.zeros([BLOCK_D], tl.float32)
    dmask0 = rd < D

    for t0 in range(t_lo, t_lo + TPP, BLOCK_T):  # TPP is a multiple of BLOCK_T
        offs_t = t0 + rt
        tmask = offs_t < T
        offs_t64 = offs_t.to(tl.int64)
        m = (tl.load(m_base + offs_t64 * s_mt, mask=tmask, other=0) != 0) & tmask
        row_a = a_base + offs_t64[:, None] * s_at
        row_x = x_base + offs_t64[:, None] * s_xt
        dot = tl.zeros([BLOCK_T], tl.float32)
        xx = tl.zeros([BLOCK_T], tl.float32)
        if SINGLE:
            lm = tmask[:, None] & dmask0[None, :]
            a = tl.load(row_a + rd[None, :], mask=lm, other=0.0).to(tl.float32)
            s = tl.sum(a, axis=1)
            ss = tl.sum(a * a, axis=1)
            if HAS_X:
                x = tl.load(row_x + rd[None, :], mask=lm, other=0.0).to(tl.float32)
                dot = tl.sum(x * a, axis=1)
                xx = tl.sum(x * x, axis=1)
            mu = s / D
            finite = ss <= FLT_MAX  # False for NaN and Inf
            ok = m & finite
            if REL:
                thr = thr_param * tl.sqrt(ss / D)
            else:
                thr = tl.zeros([BLOCK_T], tl.float32) + thr_param
            dv = tl.where(lm, a - mu[:, None], 0.0)
            m2 = tl.sum(dv * dv, axis=1)
            nz = tl.sum(tl.where(lm & (tl.abs(a) < thr[:, None]), 1.0, 0.0), axis=1)
            if POOLED:
                pool_acc += tl.sum(tl.where(ok[:, None], a, 0.0), axis=0)
        else:
            s = tl.zeros([BLOCK_T], tl.float32)
            ss = tl.zeros([BLOCK_T], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                cd = d0 + rd
                lm = tmask[:, None] & (cd < D)[None, :]
                a = tl.load(row_a + cd[None, :], mask=lm, other=0.0).to(tl.float32)
                s += tl.sum(a, axis=1)
                ss += tl.sum(a * a, axis=1)
                if HAS_X:
                    x = tl.load(row_x + cd[None, :], mask=lm, other=0.0).to(tl.float32)
                    dot += tl.sum(x * a, axis=1)
                    xx += tl.sum(x * x, axis=1)
            mu = s / D
            finite = ss <= FLT_MAX
            ok = m & finite
            if REL:
                thr = thr_param * tl.sqrt(ss / D)
            else:
                thr = tl.zeros([BLOCK_T], tl.float32) + thr_param
            m2 = tl.zeros([BLOCK_T], tl.float32)
            nz = tl.zeros([BLOCK_T], tl.float32)
            for d0 in range(0, D, BLOCK_D):  # second pass: the rows were just read, mostly L2 hits
                cd = d0 + rd
                dm = cd < D
                lm = tmask[:, None] & dm[None, :]
                a = tl.load(row_a + cd[None, :], mask=lm, other=0.0).to(tl.float32)
                dv = tl.where(lm, a - mu[:, None], 0.0)
                m2 += tl.sum(dv * dv, axis=1)
                nz += tl.sum(tl.where(lm & (tl.abs(a) < thr[:, None]), 1.0, 0.0), axis=1)
                if POOLED:
                    col = tl.sum(tl.where(ok[:, None], a, 0.0), axis=0)
                    tl.atomic_add(pool_base + cd, col, mask=dm)  # one program per row of POOL
        acc_n += tl.where(m, 1.0, 0.0)
        acc_ok += tl.where(ok, 1.0, 0.0)
        acc_nf += tl.where(m & ~finite, 1.0, 0.0)
        acc_m2 += tl.where(ok, m2, 0.0)
        acc_mu += tl.where(ok, mu, 0.0)
        acc_mu2 += tl.where(ok, mu * mu, 0.0)
        acc_nz += tl.where(ok, nz, 0.0)
        if HAS_X:
            cos = dot / tl.maximum(tl.sqrt(xx * ss), 1e-30)
            acc_bi += tl.where(ok, 1.0 - cos, 0.0)

    out = OUT + prog * K
    tl.store(out + I_N, tl.sum(acc_n, axis=0))
    tl.store(out + I_M2, tl.sum(acc_m2, axis=0))
    tl.store(out + I_MU, tl.sum(acc_mu, axis=0))
    tl.store(out + I_MU2, tl.sum(acc_mu2, axis=0))
    tl.store(out + I_NZ, tl.sum(acc_nz, axis=0))
    tl.store(out + I_BI, tl.sum(acc_bi, axis=0))
    tl.store(out + I_NF, tl.sum(acc_nf, axis=0))
    tl.store(out + I_OK, tl.sum(acc_ok, axis=0))
    tl.store(out + I_MS, 0.0)  # n_massive: exclusion is eager-only; OUT is uninitialised memory
    if SINGLE:
        if POOLED:
            tl.store(pool_base + rd, pool_acc, mask=dmask0)


@triton.jit
def _finish_kernel(
    OUT, PSUM, ACC, G,
    P, D, s_g,
    HAS_G: tl.constexpr, POOLED: tl.constexpr, K: tl.constexpr, NF: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    I_N: tl.constexpr, I_SEQ: tl.constexpr, I_PV: tl.constexpr, I_OK: tl.constexpr,
):
    """Sequence ``b``: merge the programs' partial sums in float64, finish the pooled variance
    from ``PSUM[b]`` (the ``(D,)`` sum of its ok tokens), and add the ``NF`` fields into
    ``ACC[G[b], :]`` (this layer's ``(groups, NF)`` accumulator)."""
    b = tl.program_id(0)
    rp = tl.arange(0, BLOCK_P)
    rk = tl.arange(0, BLOCK_K)
    base = b.to(tl.int64) * P
    tot = tl.zeros([BLOCK_K], tl.float64)
    for p0 in range(0, P, BLOCK_P):
        pp = p0 + rp
        tile = tl.load(OUT + (base + pp)[:, None] * K + rk[None, :], mask=(pp < P)[:, None] & (rk < K)[None, :],
                       other=0.0)
        tot += tl.sum(tile.to(tl.float64), axis=0)
    n_tok = tl.sum(tl.where(rk == I_N, tot, 0.0), axis=0)
    res = tl.where(rk == I_SEQ, tl.where(n_tok > 0, 1.0, 0.0), tot)
    if POOLED:
        cnt = tl.maximum(tl.sum(tl.where(rk == I_OK, tot, 0.0), axis=0), 1.0)
        rd = tl.arange(0, BLOCK_D)
        s1 = tl.zeros([BLOCK_D], tl.float64)
        s2 = tl.zeros([BLOCK_D], tl.float64)
        for d0 in range(0, D, BLOCK_D):
            cd = d0 + rd
            col = tl.load(PSUM + b.to(tl.int64) * D + cd, mask=cd < D, other=0.0).to(tl.float64)
            mean = col / cnt  # the sequence's mean-pooled vector, this chunk of D
            s1 += mean
            s2 += mean * mean
        t1 = tl.sum(s1, axis=0)
        t2 = tl.sum(s2, axis=0)
        pv = (t2 - t1 * t1 / D) / (D - 1)
        res = tl.where(rk == I_PV, tl.where(n_tok > 0, pv, 0.0), res)
    else:
        res = tl.where(rk == I_PV, 0.0, res)
    if HAS_G:
        g = tl.load(G + b * s_g).to(tl.int64)
    else:
        g = 0
    tl.atomic_add(ACC + g * NF + rk, res.to(ACC.dtype.element_ty), mask=rk < NF)


def _on(device: torch.device):
    """Context making ``device`` the current CUDA device (a no-op when it already is, or on CPU)."""
    import contextlib

    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


_SM_COUNT: dict[int, int] = {}


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 8
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


SINGLE_MAX_D = 32768
"""Widest row the kernel holds whole in registers (one token per program step, 16 warps). Wider
rows are read in chunks of 1,024. Measured on one H200 (``benchmarks/profile_fused.py``, bf16,
8 x 2048 tokens): the whole row is 1.6x faster than chunks at D = 18,944 (533 vs 844 us) and 2.1x
at D = 14,336 (304 vs 629 us) -- the MLP activations of Qwen2.5-7B and Llama-3-8B."""


def launch_config(B: int, T: int, D: int, device: torch.device) -> dict:
    """Tile sizes, warps and grid for a ``(B, T, D)`` activation (overridable for tuning with
    ``EAVSS_TRITON_CONFIG="BLOCK_T,BLOCK_D,num_warps,programs_per_sm"``)."""
    block_d = triton.next_power_of_2(max(D, 16))
    single = block_d <= SINGLE_MAX_D
    programs_per_sm = 4
    if not single:
        block_d = 1024
    block_t = max(1, 4096 // block_d) if single else 4
    block_t = min(block_t, 16)
    num_warps = max(4, min(16, block_t * block_d // 1024))  # ~32 elements per thread per tensor
    env = os.environ.get("EAVSS_TRITON_CONFIG")
    if env:
        bt, bd, nw, pps = (int(v) for v in env.split(","))
        block_t, num_warps, programs_per_sm = bt, nw, pps
        if bd:
            block_d = bd
            single = block_d >= D
    # programs per sequence: fill the device ~programs_per_sm times, at least BLOCK_T tokens each
    p = max(1, min(triton.cdiv(T, block_t), triton.cdiv(programs_per_sm * _num_sms(device), max(B, 1))))
    tpp = triton.cdiv(triton.cdiv(T, p), block_t) * block_t
    p = triton.cdiv(T, tpp) if T > 0 else 1
    return dict(BLOCK_T=block_t, BLOCK_D=block_d, SINGLE=single, num_warps=num_warps, P=p, TPP=tpp)


def fused_reduce(act: torch.Tensor, mask: torch.Tensor, rule, layer_input: torch.Tensor | None,
                 pooled: bool, acc: torch.Tensor | None = None,
                 groups: torch.Tensor | None = None) -> torch.Tensor | None:
    """``(B, NUM_FIELDS)`` float64 sums of ``act`` (see :func:`eavss.stats.reduce.reduce_activations`).

    With ``acc`` (a ``(G, NUM_FIELDS)`` float32/float64 CUDA tensor on ``act``'s device) the sums
    are instead added into ``acc[groups[b]]`` (``groups``: ``(B,)`` ints, None = all 0) by a second
    small kernel, and None is returned: two Triton launches and one torch sum per layer.
    """
    B, T, D = act.shape
    dev = act.device
    a = act if act.stride(-1) == 1 else act.contiguous()
    x = layer_input
    if x is not None and x.stride(-1) != 1:
        x = x.contiguous()
    m = mask.view(torch.uint8) if mask.dtype == torch.bool else mask.to(torch.uint8)
    cfg = launch_config(B, T, D, dev)
    P = cfg["P"]
    out = torch.empty(B, P, _K, dtype=torch.float32, device=dev)
    do_pool = bool(pooled and D > 1)
    if do_pool:
        pool = (torch.empty if cfg["SINGLE"] else torch.zeros)(B, P, D, dtype=torch.float32, device=dev)
    else:
        pool = out  # never touched
    rel = rule.mode != "absolute"
    if B > 0 and T > 0:
        with _on(dev):  # Triton launches on the current device: make it the tensors' device
            _token_stats_kernel[(B, P)](
                a, x if x is not None else a, m, out, pool,
                T, D, cfg["TPP"],
                a.stride(0), a.stride(1),
                (x if x is not None else a).stride(0), (x if x is not None else a).stride(1),
                m.stride(0), m.stride(1),
                float(rule.tau if rel else rule.epsilon),
                REL=rel, HAS_X=x is not None, POOLED=do_pool, SINGLE=cfg["SINGLE"],
                BLOCK_T=cfg["BLOCK_T"], BLOCK_D=cfg["BLOCK_D"], K=_K, FLT_MAX=_FLT_MAX,
                I_N=F["n_tokens"], I_M2=F["within_m2"], I_MU=F["sum_mean"], I_MU2=F["sum_mean_sq"],
                I_NZ=F["near_zero"], I_BI=F["bi_sum"], I_NF=F["nonfinite"], I_OK=_I_OK, I_MS=F["n_massive"],
                num_warps=cfg["num_warps"],
            )
    else:
        out.zero_()
    if acc is not None:
        if B == 0:
            return None
        g = groups if groups is not None else out  # dummy pointer when there are no groups
        psum = pool.sum(dim=1) if do_pool else out  # (B, D) float32: the programs' pooled partial sums merged
        block_d = min(triton.next_power_of_2(max(D, 16)), 2048)
        with _on(dev):
            _finish_kernel[(B,)](
                out, psum, acc, g, P, D, g.stride(0) if groups is not None else 0,
                HAS_G=groups is not None, POOLED=do_pool, K=_K, NF=NUM_FIELDS,
                BLOCK_P=min(triton.next_power_of_2(P), 32), BLOCK_K=triton.next_power_of_2(_K), BLOCK_D=block_d,
                I_N=F["n_tokens"], I_SEQ=F["n_seqs"], I_PV=F["pooled_var_sum"], I_OK=_I_OK,
                num_warps=4,
            )
        return None
    tot = out.sum(dim=1, dtype=torch.float64)  # (B, K): merge programs in float64
    res = tot[:, :NUM_FIELDS].clone()
    n_tok = tot[:, F["n_tokens"]]
    res[:, F["n_seqs"]] = (n_tok > 0).to(torch.float64)
    if do_pool:
        cnt = tot[:, _I_OK:_I_OK + 1].clamp_min(1.0)
        vec = pool.sum(dim=1, dtype=torch.float64) / cnt  # (B, D)
        pv = vec.var(dim=-1, correction=1)
        res[:, F["pooled_var_sum"]] = torch.where(n_tok > 0, pv, torch.zeros((), dtype=torch.float64, device=dev))
    else:
        res[:, F["pooled_var_sum"]] = 0.0
    return res
