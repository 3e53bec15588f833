"""Fused Triton kernel behind :func:`eavss.stats.reduce.reduce_activations` on CUDA tensors.

Imported lazily (only when a CUDA activation arrives); importing this module fails where Triton
is missing, and the eager implementation is used instead. Massive-token exclusion is not
implemented here (``n_massive`` is written as 0); with it on, the eager implementation runs.

One kernel launch per layer and batch. Program ``(b, p)`` owns tokens ``[p*TPP, (p+1)*TPP)`` of
sequence ``b`` and walks them ``BLOCK_T`` rows at a time. For each row it computes, in float32:
``sum a``, ``sum a^2``, the centred ``sum (a - mu)^2`` (two passes over the row, the second from
registers or L2, so the variance is exact per token), the near-zero count, and with the layer
input ``x``: ``x.o``, ``|x|^2`` and ``|o|^2`` for block influence (``o`` the hooked tensor). Rows are
selected with ``where(ok, ., 0)`` (``ok`` = in the token mask and finite), never multiplied, so
NaN/Inf in padding never reaches a sum. The program writes its sums over its tokens to
``OUT[b, p, :]`` (float32, <= TPP terms each) and its pooled column sums to ``POOL[b, p, :]``; the
caller merges programs in float64.

Modes (compile-time): ``DELTA`` -- the site is ``o - x`` (``resid_delta``), formed in registers and
rounded to the input dtype as torch's subtraction rounds it, with block influence from the same
read of ``o`` and ``x``; ``BI`` -- block influence on; ``STATS`` off -- block influence only (the
second hook at ``mlp_act``; every other field 0). Rows up to :data:`SINGLE_MAX_D` wide are held
whole in registers, as one or two power-of-two pieces (:data:`SPLIT_ROWS`); wider rows are read in
chunks, twice. A row's sums are reduced together (:data:`JOINT_REDUCE`).

The tiled path (:func:`tiled_config`, rows of at least :data:`TILED_MIN_D`, plain statistics only):
two kernels, :func:`_tiled_rows_kernel` (per-token ``sum a``, ``sum a^2`` and the per-token fields)
then :func:`_tiled_cols_kernel` (centred sums, near-zero counts and pooled column sums per column
chunk), each a streaming read at elementwise occupancy; the two write to disjoint rows of the same
``OUT`` so the merge below is unchanged. The gated MLP path (``fused_reduce`` with ``up``) is the
same pair: the row kernel reads gate and up, writes ``silu(gate) * up`` and the SiLU, the column
kernel reads the SiLU.

Device-memory traffic: one read of ``act`` (and of ``layer_input``) plus ``B*P*(D + K)`` float32
writes, i.e. ~1-2 % of the activation bytes for the default launch shape.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from eavss.errors import EavssError
from eavss.stats.accumulators import F, NUM_FIELDS

_FLT_MAX = 3.4028234663852886e38
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # the CPU interpreter: no libdevice (tl.exp for SiLU)
_K = NUM_FIELDS + 1  # FIELDS plus the count of ok tokens (for the pooled mean)
_I_OK = NUM_FIELDS
_BLOCK_K = 1 << (_K - 1).bit_length()  # the power of two >= _K: lanes for the K fields in the kernels


@triton.jit
def _add2(a0, b0, a1, b1):
    return a0 + a1, b0 + b1


@triton.jit
def _add4(a0, b0, c0, d0, a1, b1, c1, d1):
    return a0 + a1, b0 + b1, c0 + c1, d0 + d1


@triton.jit
def _add5(a0, b0, c0, d0, e0, a1, b1, c1, d1, e1):
    return a0 + a1, b0 + b1, c0 + c1, d0 + d1, e0 + e1


@triton.jit
def _token_block(offs_t, T, m_base, s_mt):
    """For a block of token positions ``offs_t``: ``(offs_t64, tmask, m)`` -- the positions as int64,
    whether each is inside the sequence (``< T``), and whether it is inside and set in the token
    mask read from ``m_base`` (stride ``s_mt``)."""
    tmask = offs_t < T
    offs_t64 = offs_t.to(tl.int64)
    m = (tl.load(m_base + offs_t64 * s_mt, mask=tmask, other=0) != 0) & tmask
    return offs_t64, tmask, m


@triton.jit
def _silu(g_raw, PRECISE: tl.constexpr):
    """SiLU of a loaded tile, rounded to its dtype: torch's CUDA ``silu`` (``x / (1 + exp(-x))`` in
    float32, IEEE division, ``expf``) when ``PRECISE``; ``tl.exp`` under the CPU interpreter, which
    has no libdevice."""
    g = g_raw.to(tl.float32)
    if PRECISE:
        e = libdevice.exp(-g)
    else:
        e = tl.exp(-g)
    return tl.math.div_rn(g, 1.0 + e).to(g_raw.dtype)


@triton.jit
def _load_rows(a_ptrs, x_ptrs, y_ptrs, lm, DELTA: tl.constexpr, LOAD_X: tl.constexpr, ACT: tl.constexpr,
               STORE: tl.constexpr, PRECISE: tl.constexpr):
    """``(a, o, x)`` float32 for the ``(BLOCK_T, BLOCK)`` tile: ``o`` the hooked tensor, ``x`` the
    layer input (``o`` when not loaded), ``a`` the site values: ``o``, or ``o - x`` rounded to the
    hooked tensor's dtype (what ``out - x`` in torch gives) when ``DELTA``. ``ACT``: the loaded
    tensor is the activation function's input and ``o`` its SiLU (:func:`_silu`), written to
    ``y_ptrs`` when ``STORE``."""
    o_raw = tl.load(a_ptrs, mask=lm, other=0.0)
    if ACT:
        o_raw = _silu(o_raw, PRECISE)
        if STORE:
            tl.store(y_ptrs, o_raw, mask=lm)
    o = o_raw.to(tl.float32)
    if LOAD_X:
        x = tl.load(x_ptrs, mask=lm, other=0.0).to(tl.float32)
    else:
        x = o
    if DELTA:
        a = (o - x).to(o_raw.dtype).to(tl.float32)
    else:
        a = o
    return a, o, x


@triton.jit
def _row_sums(a, o, x, DELTA: tl.constexpr, BI: tl.constexpr, JOINT: tl.constexpr):
    """Per row of the tile: ``sum a``, ``sum a^2``, and for block influence ``x.o``, ``|x|^2``,
    ``|o|^2`` (zeros without it). ``JOINT`` reduces them together (one exchange between warps)."""
    if BI:
        if DELTA:
            if JOINT:
                s, ss, dot, xx, oo = tl.reduce((a, a * a, x * o, x * x, o * o), 1, _add5)
            else:
                s = tl.sum(a, axis=1)
                ss = tl.sum(a * a, axis=1)
                dot = tl.sum(x * o, axis=1)
                xx = tl.sum(x * x, axis=1)
                oo = tl.sum(o * o, axis=1)
        else:
            if JOINT:
                s, ss, dot, xx = tl.reduce((a, a * a, x * o, x * x), 1, _add4)
            else:
                s = tl.sum(a, axis=1)
                ss = tl.sum(a * a, axis=1)
                dot = tl.sum(x * o, axis=1)
                xx = tl.sum(x * x, axis=1)
            oo = ss
    else:
        if JOINT:
            s, ss = tl.reduce((a, a * a), 1, _add2)
        else:
            s = tl.sum(a, axis=1)
            ss = tl.sum(a * a, axis=1)
        dot = tl.zeros_like(s)
        xx = dot
        oo = dot
    return s, ss, dot, xx, oo


@triton.jit
def _threshold(ss, D, thr_param, REL: tl.constexpr):
    """Per row: the near-zero threshold, ``thr_param * RMS`` (relative rule) or ``thr_param``."""
    if REL:
        thr = thr_param * tl.sqrt(ss / D)
    else:
        thr = tl.zeros_like(ss) + thr_param
    return thr


@triton.jit
def _centred_sums(a, lm, mu, thr, JOINT: tl.constexpr):
    """Per row: ``sum (a - mu)^2`` and the near-zero count ``#{|a| < thr}`` over the tile's columns."""
    dv = tl.where(lm, a - mu[:, None], 0.0)
    nzv = tl.where(lm & (tl.abs(a) < thr[:, None]), 1.0, 0.0)
    if JOINT:
        m2, nz = tl.reduce((dv * dv, nzv), 1, _add2)
    else:
        m2 = tl.sum(dv * dv, axis=1)
        nz = tl.sum(nzv, axis=1)
    return m2, nz


@triton.jit
def _token_stats_kernel(
    A, X, M, OUT, POOL, Y,
    T, D, TPP,
    s_ab, s_at, s_xb, s_xt, s_mb, s_mt, s_yb, s_yt,
    thr_param,
    REL: tl.constexpr, DELTA: tl.constexpr, BI: tl.constexpr, STATS: tl.constexpr, POOLED: tl.constexpr,
    SINGLE: tl.constexpr, JOINT: tl.constexpr, ACT: tl.constexpr, PRECISE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr, K: tl.constexpr, FLT_MAX: tl.constexpr,
    I_N: tl.constexpr, I_M2: tl.constexpr, I_MU: tl.constexpr, I_MU2: tl.constexpr, I_NZ: tl.constexpr,
    I_BI: tl.constexpr, I_NF: tl.constexpr, I_OK: tl.constexpr, I_MS: tl.constexpr,
):
    LOAD_X: tl.constexpr = DELTA or BI
    b = tl.program_id(0)
    p = tl.program_id(1)
    P = tl.num_programs(1)
    t_lo = p * TPP
    b64 = b.to(tl.int64)
    a_base = A + b64 * s_ab
    x_base = X + b64 * s_xb
    m_base = M + b64 * s_mb
    y_base = Y + b64 * s_yb
    prog = (b * P + p).to(tl.int64)
    pool_base = POOL + prog * D
    rt = tl.arange(0, BLOCK_T)
    rd = tl.arange(0, BLOCK_D)
    rd2 = BLOCK_D + tl.arange(0, BLOCK_D2)  # the second piece of a row held in two (BLOCK_D2 > 1)

    acc_n = tl.zeros([BLOCK_T], tl.float32)
    acc_m2 = tl.zeros([BLOCK_T], tl.float32)
    acc_mu = tl.zeros([BLOCK_T], tl.float32)
    acc_mu2 = tl.zeros([BLOCK_T], tl.float32)
    acc_nz = tl.zeros([BLOCK_T], tl.float32)
    acc_bi = tl.zeros([BLOCK_T], tl.float32)
    acc_nf = tl.zeros([BLOCK_T], tl.float32)
    acc_ok = tl.zeros([BLOCK_T], tl.float32)
    pool_acc = tl.zeros([BLOCK_D], tl.float32)
    pool_acc2 = tl.zeros([BLOCK_D2], tl.float32)
    dmask0 = rd < D
    dmask2 = rd2 < D

    for t0 in range(t_lo, t_lo + TPP, BLOCK_T):  # TPP is a multiple of BLOCK_T
        offs_t64, tmask, m = _token_block(t0 + rt, T, m_base, s_mt)
        row_a = a_base + offs_t64[:, None] * s_at
        row_x = x_base + offs_t64[:, None] * s_xt
        row_y = y_base + offs_t64[:, None] * s_yt
        if SINGLE:
            lm = tmask[:, None] & dmask0[None, :]
            a, o, x = _load_rows(row_a + rd[None, :], row_x + rd[None, :], row_y + rd[None, :], lm, DELTA, LOAD_X,
                                 ACT, True, PRECISE)
            s, ss, dot, xx, oo = _row_sums(a, o, x, DELTA, BI, JOINT)
            if BLOCK_D2 > 1:
                lm2 = tmask[:, None] & dmask2[None, :]
                a2, o2, x2 = _load_rows(row_a + rd2[None, :], row_x + rd2[None, :], row_y + rd2[None, :], lm2, DELTA,
                                        LOAD_X, ACT, True, PRECISE)
                s2, ss2, dot2, xx2, oo2 = _row_sums(a2, o2, x2, DELTA, BI, JOINT)
                s, ss, dot, xx, oo = _add5(s, ss, dot, xx, oo, s2, ss2, dot2, xx2, oo2)
            mu = s / D
            finite = ss <= FLT_MAX  # False for NaN and Inf
            ok = m & finite
            if STATS:
                thr = _threshold(ss, D, thr_param, REL)
                m2, nz = _centred_sums(a, lm, mu, thr, JOINT)
                if POOLED:
                    pool_acc += tl.sum(tl.where(ok[:, None], a, 0.0), axis=0)
                if BLOCK_D2 > 1:
                    m2b, nzb = _centred_sums(a2, lm2, mu, thr, JOINT)
                    m2 += m2b
                    nz += nzb
                    if POOLED:
                        pool_acc2 += tl.sum(tl.where(ok[:, None], a2, 0.0), axis=0)
        else:
            s = tl.zeros([BLOCK_T], tl.float32)
            ss = tl.zeros([BLOCK_T], tl.float32)
            dot = tl.zeros([BLOCK_T], tl.float32)
            xx = tl.zeros([BLOCK_T], tl.float32)
            oo = tl.zeros([BLOCK_T], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                cd = d0 + rd
                lm = tmask[:, None] & (cd < D)[None, :]
                a, o, x = _load_rows(row_a + cd[None, :], row_x + cd[None, :], row_y + cd[None, :], lm, DELTA, LOAD_X,
                                     ACT, True, PRECISE)
                cs, css, cdot, cxx, coo = _row_sums(a, o, x, DELTA, BI, JOINT)
                s, ss, dot, xx, oo = _add5(s, ss, dot, xx, oo, cs, css, cdot, cxx, coo)
            mu = s / D
            finite = ss <= FLT_MAX
            ok = m & finite
            if STATS:
                thr = _threshold(ss, D, thr_param, REL)
                m2 = tl.zeros([BLOCK_T], tl.float32)
                nz = tl.zeros([BLOCK_T], tl.float32)
                for d0 in range(0, D, BLOCK_D):  # second pass: the rows were just read, mostly L2 hits
                    cd = d0 + rd
                    dm = cd < D
                    lm = tmask[:, None] & dm[None, :]
                    a, o, x = _load_rows(row_a + cd[None, :], row_x + cd[None, :], row_y + cd[None, :], lm, DELTA, DELTA,
                                     ACT, False, PRECISE)  # SiLU recomputed: the same values
                    cm2, cnz = _centred_sums(a, lm, mu, thr, JOINT)
                    m2 += cm2
                    nz += cnz
                    if POOLED:
                        col = tl.sum(tl.where(ok[:, None], a, 0.0), axis=0)
                        tl.atomic_add(pool_base + cd, col, mask=dm)  # one program per row of POOL
        if BI:
            cos = dot / tl.maximum(tl.sqrt(xx * oo), 1e-30)
            acc_bi += tl.where(ok, 1.0 - cos, 0.0)
        if STATS:
            acc_n += tl.where(m, 1.0, 0.0)
            acc_ok += tl.where(ok, 1.0, 0.0)
            acc_nf += tl.where(m & ~finite, 1.0, 0.0)
            acc_m2 += tl.where(ok, m2, 0.0)
            acc_mu += tl.where(ok, mu, 0.0)
            acc_mu2 += tl.where(ok, mu * mu, 0.0)
            acc_nz += tl.where(ok, nz, 0.0)

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
        if STATS:
            if POOLED:
                tl.store(pool_base + rd, pool_acc, mask=dmask0)
                if BLOCK_D2 > 1:
                    tl.store(pool_base + rd2, pool_acc2, mask=dmask2)


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


@triton.jit
def _tiled_rows_kernel(
    A, M, OUT, RS, U, H, Y,
    T, D, TPP, PTOT,
    s_ab, s_at, s_mb, s_mt, s_ub, s_ut, s_hb, s_ht, s_yb, s_yt,
    GATED: tl.constexpr, STORE_ACT: tl.constexpr, PRECISE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, K: tl.constexpr, BLOCK_K: tl.constexpr, FLT_MAX: tl.constexpr,
    I_N: tl.constexpr, I_MU: tl.constexpr, I_MU2: tl.constexpr, I_NF: tl.constexpr, I_OK: tl.constexpr,
):
    """Tiled path, first read: per token ``sum a`` and ``sum a^2`` into ``RS[b*T + t, 0:2]`` and this
    program's per-token fields (``n_tokens``, ``sum_mean``, ``sum_mean_sq``, ``nonfinite``, ok count)
    into ``OUT[b, p, :]`` (the others 0; ``OUT`` has ``PTOT`` rows per sequence). Program ``(b, p)``
    owns tokens ``[p*TPP, (p+1)*TPP)``, walks them ``BLOCK_T`` at a time and each row ``BLOCK_D``
    columns at a time with elementwise float32 accumulators, reduced once per token block: a
    streaming read at elementwise occupancy. Tokens outside the mask are not read (their ``RS`` is 0).

    ``GATED`` (a SiLU-gated MLP, :func:`fused_reduce` with ``up``): ``A`` is ``gate_proj(x)`` and ``U``
    ``up_proj(x)``; the site values are ``a = silu(A)`` rounded to the dtype (:func:`_silu`), and
    ``H = a * U`` (float32 product rounded to the dtype, as torch's multiplication rounds) is
    written for every token of the sequence, counted or not, so ``H`` is what the MLP's
    ``act_fn(gate_proj(x)) * up_proj(x)`` gives, to the bit. ``STORE_ACT``: ``a`` of the counted
    tokens is also written to ``Y``, for the column kernel to read instead of recomputing the SiLU."""
    b = tl.program_id(0)
    p = tl.program_id(1)
    b64 = b.to(tl.int64)
    a_base = A + b64 * s_ab
    m_base = M + b64 * s_mb
    u_base = U + b64 * s_ub
    h_base = H + b64 * s_hb
    y_base = Y + b64 * s_yb
    rt = tl.arange(0, BLOCK_T)
    rd = tl.arange(0, BLOCK_D)
    acc_n = tl.zeros([BLOCK_T], tl.float32)
    acc_mu = tl.zeros([BLOCK_T], tl.float32)
    acc_mu2 = tl.zeros([BLOCK_T], tl.float32)
    acc_nf = tl.zeros([BLOCK_T], tl.float32)
    acc_ok = tl.zeros([BLOCK_T], tl.float32)
    for t0 in range(p * TPP, p * TPP + TPP, BLOCK_T):
        offs_t64, tmask, m = _token_block(t0 + rt, T, m_base, s_mt)
        row_a = a_base + offs_t64[:, None] * s_at
        row_u = u_base + offs_t64[:, None] * s_ut
        row_h = h_base + offs_t64[:, None] * s_ht
        row_y = y_base + offs_t64[:, None] * s_yt
        cs = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
        css = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            cd = d0 + rd
            if GATED:  # every token of the sequence: H is the MLP's input to down_proj
                lt = tmask[:, None] & (cd < D)[None, :]
                y = _silu(tl.load(row_a + cd[None, :], mask=lt, other=0.0), PRECISE)
                u = tl.load(row_u + cd[None, :], mask=lt, other=0.0)
                tl.store(row_h + cd[None, :], (y.to(tl.float32) * u.to(tl.float32)).to(y.dtype), mask=lt)
                if STORE_ACT:
                    tl.store(row_y + cd[None, :], y, mask=m[:, None] & (cd < D)[None, :])
                a = tl.where(m[:, None], y.to(tl.float32), 0.0)
            else:
                a = tl.load(row_a + cd[None, :], mask=m[:, None] & (cd < D)[None, :], other=0.0).to(tl.float32)
            cs += a
            css += a * a
        s, ss = tl.reduce((cs, css), 1, _add2)
        rs = RS + (b64 * T + offs_t64) * 2
        tl.store(rs, s, mask=tmask)
        tl.store(rs + 1, ss, mask=tmask)
        mu = s / D
        finite = ss <= FLT_MAX  # False for NaN and Inf
        ok = m & finite
        acc_n += tl.where(m, 1.0, 0.0)
        acc_ok += tl.where(ok, 1.0, 0.0)
        acc_nf += tl.where(m & ~finite, 1.0, 0.0)
        acc_mu += tl.where(ok, mu, 0.0)
        acc_mu2 += tl.where(ok, mu * mu, 0.0)
    rk = tl.arange(0, BLOCK_K)
    res = tl.where(rk == I_N, tl.sum(acc_n, axis=0), 0.0)
    res = tl.where(rk == I_MU, tl.sum(acc_mu, axis=0), res)
    res = tl.where(rk == I_MU2, tl.sum(acc_mu2, axis=0), res)
    res = tl.where(rk == I_NF, tl.sum(acc_nf, axis=0), res)
    res = tl.where(rk == I_OK, tl.sum(acc_ok, axis=0), res)
    tl.store(OUT + (b * PTOT + p).to(tl.int64) * K + rk, res, mask=rk < K)


@triton.jit
def _tiled_cols_kernel(
    A, M, OUT, RS, POOL,
    T, D, TPP, PA, PTOT,
    s_ab, s_at, s_mb, s_mt,
    thr_param,
    REL: tl.constexpr, POOLED: tl.constexpr, ACT: tl.constexpr, PRECISE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, K: tl.constexpr, BLOCK_K: tl.constexpr, FLT_MAX: tl.constexpr,
    I_M2: tl.constexpr, I_NZ: tl.constexpr,
):
    """Tiled path, second read: program ``(b, p, c)`` owns tokens ``[p*TPP, (p+1)*TPP)`` and columns
    ``[c*BLOCK_D, (c+1)*BLOCK_D)``; with each token's ``mu``, threshold and ok flag from ``RS`` it
    accumulates ``(a - mu)^2`` and ``|a| < thr`` elementwise over its tokens (float32, one reduction at
    the end) into ``OUT[b, PA + p*NC + c, :]`` (``within_m2``, ``near_zero``; the others 0) and the
    ok tokens' column sums into ``POOL[b, p, cols]``. ``ACT``: ``A`` is a SiLU's input and the site
    values are its SiLU (:func:`_silu`, recomputed: the same values the first read wrote)."""
    b = tl.program_id(0)
    p = tl.program_id(1)
    c = tl.program_id(2)
    NC = tl.num_programs(2)
    b64 = b.to(tl.int64)
    a_base = A + b64 * s_ab
    m_base = M + b64 * s_mb
    rt = tl.arange(0, BLOCK_T)
    cd = c * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = cd < D
    acc_m2 = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    acc_nz = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    acc_pool = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    for t0 in range(p * TPP, p * TPP + TPP, BLOCK_T):
        offs_t64, tmask, m = _token_block(t0 + rt, T, m_base, s_mt)
        lm = m[:, None] & dmask[None, :]
        a_raw = tl.load(a_base + offs_t64[:, None] * s_at + cd[None, :], mask=lm, other=0.0)
        if ACT:
            a_raw = _silu(a_raw, PRECISE)
        a = a_raw.to(tl.float32)
        rs = RS + (b64 * T + offs_t64) * 2  # loaded alongside the tile, not before it
        s = tl.load(rs, mask=tmask, other=0.0)
        ss = tl.load(rs + 1, mask=tmask, other=0.0)
        ok = m & (ss <= FLT_MAX)
        mu = s / D
        thr = _threshold(ss, D, thr_param, REL)
        sel = ok[:, None] & dmask[None, :]
        dv = a - mu[:, None]
        acc_m2 += tl.where(sel, dv * dv, 0.0)
        acc_nz += tl.where(sel & (tl.abs(a) < thr[:, None]), 1.0, 0.0)
        if POOLED:
            acc_pool += tl.where(sel, a, 0.0)
    m2 = tl.sum(tl.sum(acc_m2, axis=1), axis=0)
    nz = tl.sum(tl.sum(acc_nz, axis=1), axis=0)
    rk = tl.arange(0, BLOCK_K)
    res = tl.where(rk == I_M2, m2, 0.0)
    res = tl.where(rk == I_NZ, nz, res)
    PB = tl.num_programs(1)
    tl.store(OUT + (b * PTOT + PA + p * NC + c).to(tl.int64) * K + rk, res, mask=rk < K)
    if POOLED:
        tl.store(POOL + (b64 * PB + p) * D + cd, tl.sum(acc_pool, axis=0), mask=dmask)


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

SPLIT_ROWS = True
"""Hold a whole row of one token as two power-of-two pieces (``BLOCK_D + BLOCK_D2`` lanes) when
that is narrower than the next power of two: 18,944 -> 16,384 + 4,096 lanes instead of 32,768,
11,008 -> 8,192 + 4,096 instead of 16,384, 4,864 -> 4,096 + 1,024 instead of 8,192 (only for rows
wider than 2,048, where one token fills a program step)."""

JOINT_REDUCE = None
"""Reduce a row's sums together (one exchange between the program's warps for ``sum a``, ``sum a^2``
and the block-influence dot products, one for the centred sum and the near-zero count) instead of
one exchange per sum. None (default): only for rows split in two pieces (and where
:data:`WIDE_TUNED` says so). Measured on one H200
(``profile_fused.py``, bf16, 8 x 2048 tokens): joint reductions cost 12-40 % at D = 3584-4096
(e.g. block influence alone 58 -> 81 us) and 6 % at 14,336 unsplit, and save 10 % at 18,944
split (504 -> 459 us)."""

WIDE_TUNED = {(16384, 4096): (1, 8, 2, True), (16384, 1): (2, 16, 4, True)}
"""``(BLOCK_D, BLOCK_D2) -> (BLOCK_T, num_warps, programs_per_sm, joint)`` for wide whole rows, the best of
the H200 sweep (``profile_fused.py``, bf16, 8 x 2048 tokens): D = 18,944 (Qwen2.5-7B MLP; 16,384 +
4,096 lanes) 459 -> 440 us, D = 14,336 (Llama-3-8B MLP) 294 -> 220 us. The second entry serves
every width in (12,288, 16,384]; measured only at 14,336. Other widths keep the general rule (one
token per step, 16 warps, 4 programs per SM). ``BLOCK_T`` never exceeds the sequence length
(staged decoding steps have one token)."""


def launch_config(B: int, T: int, D: int, device: torch.device) -> dict:
    """Tile sizes, warps and grid for a ``(B, T, D)`` activation (overridable for tuning with
    ``EAVSS_TRITON_CONFIG="BLOCK_T,BLOCK_D,num_warps,programs_per_sm[,split[,joint[,num_stages]]]"``;
    ``BLOCK_D`` 0 keeps the default width, ``split``/``joint`` 0 or 1 for :data:`SPLIT_ROWS` /
    :data:`JOINT_REDUCE`, ``num_stages`` the software-pipelining depth of the token loop (0: Triton's
    default); the override replaces :data:`WIDE_TUNED` too).

    Returns:
        dict with ``BLOCK_T``, ``BLOCK_D``, ``BLOCK_D2`` (the second piece of a split row; 1 = none),
        ``SINGLE`` (whole row in registers), ``JOINT``, ``num_warps``, ``num_stages`` (None: Triton's
        default), ``P`` (programs per sequence) and ``TPP`` (tokens per program).

    Raises:
        EavssError: a malformed ``EAVSS_TRITON_CONFIG``.
    """
    block_d = triton.next_power_of_2(max(D, 16))
    single = block_d <= SINGLE_MAX_D
    programs_per_sm = 4
    if not single:
        block_d = 1024
    block_t = max(1, 4096 // block_d) if single else 4
    block_t = min(block_t, 16)
    num_warps = max(4, min(16, block_t * block_d // 1024))  # ~32 elements per thread per tensor
    split, joint, num_stages = SPLIT_ROWS, JOINT_REDUCE, None
    env = os.environ.get("EAVSS_TRITON_CONFIG")
    if env:
        try:
            vals = [int(v) for v in env.split(",")]
            if not 4 <= len(vals) <= 7:
                raise ValueError
        except ValueError:
            raise EavssError(f"EAVSS_TRITON_CONFIG must be 4 to 7 integers, BLOCK_T,BLOCK_D,num_warps,programs_per_sm"
                             f"[,split[,joint[,num_stages]]], got {env!r}; unset it for the defaults") from None
        bt, bd, nw, pps = vals[:4]
        block_t, num_warps, programs_per_sm = bt, nw, pps
        if len(vals) > 4:
            split = bool(vals[4])
        if len(vals) > 5:
            joint = bool(vals[5])
        if len(vals) > 6 and vals[6] > 0:
            num_stages = vals[6]
        if bd:
            block_d = bd
            single = block_d >= D
    block_d2 = 1
    if single and split and block_t == 1 and block_d >= 4096 and block_d >= D:
        lo = block_d // 2  # the largest power of two below D (when D is not one)
        if lo < D:
            d2 = triton.next_power_of_2(D - lo)
            if lo + d2 < block_d:
                block_d, block_d2 = lo, d2
    if not env and single and (block_d, block_d2) in WIDE_TUNED:
        block_t, num_warps, programs_per_sm, joint = WIDE_TUNED[(block_d, block_d2)]
    if joint is None:
        joint = block_d2 > 1
    block_t = max(1, min(block_t, triton.next_power_of_2(max(T, 1))))  # no tile rows past the sequence
    # programs per sequence: fill the device ~programs_per_sm times, at least BLOCK_T tokens each
    p = max(1, min(triton.cdiv(T, block_t), triton.cdiv(programs_per_sm * _num_sms(device), max(B, 1))))
    tpp = triton.cdiv(triton.cdiv(T, p), block_t) * block_t
    p = triton.cdiv(T, tpp) if T > 0 else 1
    return dict(BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_D2=block_d2, SINGLE=single, JOINT=joint,
                num_warps=num_warps, num_stages=num_stages, P=p, TPP=tpp)


TILED_MIN_D = SINGLE_MAX_D + 1
"""Narrowest row the plain statistics (no ``resid_delta``, no block influence from the same kernel, no
fused SiLU) take the tiled two-read path for: :func:`_tiled_rows_kernel` reads each counted row
once for ``sum a`` and ``sum a^2``, :func:`_tiled_cols_kernel` reads it again, column chunk by
column chunk, for the centred sum, the near-zero count and the pooled column sums. Both stream at
elementwise occupancy (no row held in registers, one reduction per token block or program), at
the price of a second read of the activation from device memory. It replaces the chunked path of
the one-read kernel, which it beats 1.86x where that path runs; below, the one-read kernel with the
row in registers is as fast or faster. Measured on one H200 (``profile_fused.py``, bf16, kernel
time per layer and batch, all tokens counted, pooled variance on; RESULTS.md "Issue 10, fifth
pass"): D = 53,248 (Llama-3.1-405B MLP) 4 x 2048 tokens 1,211 us chunked vs 651 tiled; D = 18,944
(Qwen2.5-7B) 8 x 2048: 468 one-read vs 481; D = 14,336 (Llama-3-8B): 241 vs 361."""

TILED_DEFAULT = (2, 2048, 4, 4, 1024, 4, 16)
"""``(BLOCK_T, BLOCK_D, num_warps)`` of the row-sum kernel, the same for the column kernel, and
programs per SM (each kernel's grid fills the device about that many times over). The best or
within 1.5 % of the best of the 11 configurations swept at 14,336, 18,944 and 53,248 wide
(``profile_fused.py``'s :data:`TILED_CONFIGS`)."""

GATED_DEFAULT = (8, 256, 8, 4, 1024, 4, 16)
"""The tiled configuration of the gated MLP path (:func:`fused_reduce` with ``up``): its row kernel
computes a SiLU and a product per element, so it holds fewer elements per thread than
:data:`TILED_DEFAULT` (8 instead of 32); its column kernel reads the stored SiLU
(:data:`GATED_REREAD`) like the plain path's. Measured on one H200 (``profile_fused.py``, bf16,
8 x 2048 tokens; RESULTS.md "Issue 10, sixth pass")."""

GATED_REREAD = "act"
"""What the gated path's column kernel reads: ``act`` -- the SiLU of the counted tokens, written by
the row kernel into the gate's own buffer where the caller allows (``overwrite_act``; the
collector does when nothing else holds the gate), else into a temporary of its size -- or ``gate``,
recomputing the SiLU from ``gate_proj(x)``. Measured on one
H200 at 18,944 wide (RESULTS.md "Issue 10, sixth pass"): recomputing makes the column kernel
compute-bound (520-990 us against ~250 for a plain read)."""

_WARPS = (1, 2, 4, 8, 16, 32)  # warps per program Triton accepts
_EXACT_COUNT = 1 << 22  # a column program counts at most this many elements (float32 counts stay exact)


def tiled_config(B: int, T: int, D: int, device: torch.device, force: bool = False,
                 default: tuple = TILED_DEFAULT) -> dict | None:
    """Launch configuration of the tiled path for a ``(B, T, D)`` activation, or None when the
    one-read kernel is used: ``D < TILED_MIN_D``, or ``$EAVSS_TRITON_CONFIG`` set (tuning the one-read
    kernel), unless ``$EAVSS_TILED_CONFIG`` says otherwise (``off``; ``on``: every width; or seven
    integers ``BLOCK_T_A,BLOCK_D_A,warps_A,BLOCK_T_B,BLOCK_D_B,warps_B,programs_per_sm``, which also
    force it on). ``force``: a configuration whatever the width, ``off`` or ``auto`` say (the gated
    MLP path, :func:`fused_reduce` with ``up``, has no other kernel); seven integers still apply.
    ``default``: the seven values used when ``$EAVSS_TILED_CONFIG`` gives none.

    Returns:
        dict with ``A`` and ``B`` (each ``BLOCK_T``, ``BLOCK_D``, ``num_warps``, ``P`` programs per
        sequence, ``TPP`` tokens per program) and ``NC`` (column chunks of the second kernel).

    Raises:
        EavssError: a malformed ``EAVSS_TILED_CONFIG``.
    """
    env = os.environ.get("EAVSS_TILED_CONFIG", "").strip()
    vals = default
    if env in ("", "auto", "off", "on"):
        wanted = env == "on" or (env != "off" and D >= TILED_MIN_D and not os.environ.get("EAVSS_TRITON_CONFIG"))
        if not (force or wanted):
            return None
    else:
        try:
            vals = tuple(int(v) for v in env.split(","))
            if len(vals) != 7 or min(vals) < 1 or vals[2] not in _WARPS or vals[5] not in _WARPS:
                raise ValueError
        except ValueError:
            raise EavssError(f"EAVSS_TILED_CONFIG must be off, on, auto or 7 positive integers BLOCK_T_A,BLOCK_D_A,"
                             f"warps_A,BLOCK_T_B,BLOCK_D_B,warps_B,programs_per_sm (warps one of {list(_WARPS)}), "
                             f"got {env!r}; unset it for the defaults") from None
    bta, bda, wa, btb, bdb, wb, pps = vals
    T1 = max(T, 1)
    bta = max(1, min(triton.next_power_of_2(bta), triton.next_power_of_2(T1)))
    btb = max(1, min(triton.next_power_of_2(btb), triton.next_power_of_2(T1)))
    bda = min(triton.next_power_of_2(bda), triton.next_power_of_2(max(D, 16)))
    bdb = min(triton.next_power_of_2(bdb), triton.next_power_of_2(max(D, 16)))
    sms = _num_sms(device)
    nc = triton.cdiv(max(D, 1), bdb)

    def grid(bt: int, want: int, at_least: int) -> tuple[int, int]:
        p = max(1, at_least, min(triton.cdiv(T1, bt), want))
        tpp = triton.cdiv(triton.cdiv(T1, p), bt) * bt
        return triton.cdiv(T1, tpp), tpp

    pa, tppa = grid(bta, triton.cdiv(pps * sms, max(B, 1)), 1)
    pb, tppb = grid(btb, triton.cdiv(pps * sms, max(B, 1) * nc), triton.cdiv(T1 * bdb, _EXACT_COUNT))
    return dict(A=dict(BLOCK_T=bta, BLOCK_D=bda, num_warps=wa, P=pa, TPP=tppa),
                B=dict(BLOCK_T=btb, BLOCK_D=bdb, num_warps=wb, P=pb, TPP=tppb), NC=nc)


def _tiled_launch(a: torch.Tensor, m: torch.Tensor, cfg: dict, rel: bool, thr_param: float,
                  do_pool: bool, up: torch.Tensor | None = None, h: torch.Tensor | None = None,
                  overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the two tiled kernels on ``a`` (``(B, T, D)``, last dim contiguous) with the ``(B, T)``
    uint8 mask ``m``; returns ``out`` (``(B, PA + PB*NC, K)`` float32 partial sums, see
    :func:`fused_reduce`) and ``pool`` (``(B, PB, D)`` float32 pooled column partials; ``out`` when
    not pooled). With ``up`` and ``h`` (the gated MLP, :func:`fused_reduce` with ``up``): ``a`` is the
    gate, the statistics are those of ``silu(a)``, and ``h`` receives ``silu(a) * up``; ``overwrite``:
    the counted tokens' SiLU is stored into ``a`` itself (each element written by the thread that
    just read it) instead of a scratch tensor."""
    B, T, D = a.shape
    dev = a.device
    ca, cb, nc = cfg["A"], cfg["B"], cfg["NC"]
    pa, pb = ca["P"], cb["P"]
    ptot = pa + pb * nc
    out = torch.empty(B, ptot, _K, dtype=torch.float32, device=dev)
    pool = torch.empty(B, pb, D, dtype=torch.float32, device=dev) if do_pool else out
    if B == 0 or T == 0:
        out.zero_()
        if do_pool:
            pool.zero_()
        return out, pool
    rs = torch.empty(B * T, 2, dtype=torch.float32, device=dev)
    gated = up is not None
    u = up if gated else a  # dummy pointers when not gated
    hh = h if gated else a
    store_act = gated and GATED_REREAD == "act"
    y = torch.empty_like(a) if store_act and not overwrite else a  # the counted tokens' SiLU, for the column kernel
    with _on(dev):
        _tiled_rows_kernel[(B, pa)](
            a, m, out, rs, u, hh, y, T, D, ca["TPP"], ptot, a.stride(0), a.stride(1), m.stride(0), m.stride(1),
            u.stride(0), u.stride(1), hh.stride(0), hh.stride(1), y.stride(0), y.stride(1),
            GATED=gated, STORE_ACT=store_act, PRECISE=not _INTERPRET,
            BLOCK_T=ca["BLOCK_T"], BLOCK_D=ca["BLOCK_D"], K=_K, BLOCK_K=_BLOCK_K, FLT_MAX=_FLT_MAX,
            I_N=F["n_tokens"], I_MU=F["sum_mean"], I_MU2=F["sum_mean_sq"], I_NF=F["nonfinite"], I_OK=_I_OK,
            num_warps=ca["num_warps"])
        _tiled_cols_kernel[(B, pb, nc)](
            y, m, out, rs, pool, T, D, cb["TPP"], pa, ptot, y.stride(0), y.stride(1), m.stride(0), m.stride(1),
            thr_param, REL=rel, POOLED=do_pool, ACT=gated and not store_act, PRECISE=not _INTERPRET,
            BLOCK_T=cb["BLOCK_T"], BLOCK_D=cb["BLOCK_D"], K=_K, BLOCK_K=_BLOCK_K, FLT_MAX=_FLT_MAX,
            I_M2=F["within_m2"], I_NZ=F["near_zero"], num_warps=cb["num_warps"])
    return out, pool


def fused_reduce(act: torch.Tensor, mask: torch.Tensor, rule, layer_input: torch.Tensor | None,
                 pooled: bool, acc: torch.Tensor | None = None,
                 groups: torch.Tensor | None = None, *, delta: bool = False,
                 block_influence: bool | None = None, stats: bool = True,
                 silu_out: torch.Tensor | None = None, up: torch.Tensor | None = None,
                 overwrite_act: bool = False) -> torch.Tensor | None:
    """``(B, NUM_FIELDS)`` float64 sums of ``act`` (see :func:`eavss.stats.reduce.reduce_activations`).

    With ``acc`` (a ``(G, NUM_FIELDS)`` float32/float64 CUDA tensor on ``act``'s device) the sums
    are instead added into ``acc[groups[b]]`` (``groups``: ``(B,)`` ints, None = all 0) by a second
    small kernel, and None is returned: two Triton launches and one torch sum per layer.

    ``delta=True``: the statistics are those of ``act - layer_input`` (rounded to ``act``'s dtype,
    as torch's subtraction rounds), formed in registers, and block influence compares
    ``layer_input`` with ``act`` itself (the layer output): one read of each, no temporary.
    ``block_influence`` (default: ``layer_input`` is given) computes ``bi_sum`` from
    ``layer_input``; ``stats=False`` computes only ``bi_sum`` (every other field 0).

    ``silu_out`` (off by default, see :data:`eavss.stats.collector.FUSE_SILU`; a ``(B, T, D)`` tensor of ``act``'s dtype and device, last dim contiguous): ``act``
    is the *input* of a SiLU activation; the kernel writes ``silu(act)`` into ``silu_out`` -- every
    token, masked or not, the values torch's CUDA ``silu`` gives (same formula, ``expf``, IEEE
    division, rounding to the dtype; checked to the bit by ``benchmarks/check_fused.py``) -- and the
    statistics are those of ``silu(act)``: the activation and its statistics from one read of the
    input (:data:`eavss.stats.collector.FUSE_SILU`). Not with ``delta`` or block influence.

    ``up`` (with ``silu_out``; ``act``'s shape, dtype and device, last dim contiguous): a SiLU-gated
    MLP, ``act`` its ``gate_proj(x)`` and ``up`` its ``up_proj(x)``. ``silu_out`` receives
    ``silu(act) * up`` instead -- the ``down_proj`` input, every token, to the bit what
    ``act_fn(gate) * up`` gives in torch (the SiLU rounded to the dtype, then the float32 product
    rounded) -- and the statistics are still those of ``silu(act)`` (the ``mlp_act`` site). Always
    the tiled path (:func:`tiled_config` with ``force``, :data:`GATED_DEFAULT`): the first kernel reads
    gate and up once and writes the product and the counted tokens' SiLU, the second reads that SiLU
    (:data:`GATED_REREAD`) for the centred sums, near-zero counts and pooled column sums: ``3 x`` the
    activation's bytes read and ``2 x`` written, where torch's SiLU then product plus a statistics
    hook read ``4 x`` and write ``2 x``. ``overwrite_act``: ``act`` is the caller's own temporary, and
    the SiLU is stored into it rather than into a scratch tensor of its size (peak memory then equals
    the plain forward's, which holds ``act_fn``'s output there).
    """
    if block_influence is None:
        block_influence = layer_input is not None
    if (delta or block_influence) and layer_input is None:
        raise ValueError("fused_reduce: delta and block influence need the layer input")
    if silu_out is not None and (delta or block_influence or silu_out.shape != act.shape or silu_out.dtype != act.dtype
                                 or silu_out.device != act.device or silu_out.stride(-1) != 1):
        raise ValueError("fused_reduce: silu_out must match act (shape, dtype, device, contiguous last dim), "
                         "without delta or block influence")
    if up is not None and (silu_out is None or not stats or up.shape != act.shape or up.dtype != act.dtype
                           or up.device != act.device):
        raise ValueError("fused_reduce: up needs silu_out and statistics, and must match act (shape, dtype, device)")
    B, T, D = act.shape
    dev = act.device
    a = act if act.stride(-1) == 1 else act.contiguous()
    y = silu_out if silu_out is not None else a  # dummy pointer when there is no SiLU to write
    x = layer_input
    if x is not None and x.stride(-1) != 1:
        x = x.contiguous()
    m = mask.view(torch.uint8) if mask.dtype == torch.bool else mask.to(torch.uint8)
    do_pool = bool(pooled and D > 1 and stats)
    rel = rule.mode != "absolute"
    thr_param = float(rule.tau if rel else rule.epsilon)
    tiled = None
    if up is not None:
        tiled = tiled_config(B, T, D, dev, force=True, default=GATED_DEFAULT)
    elif stats and not (delta or block_influence or silu_out is not None):
        tiled = tiled_config(B, T, D, dev)
    if tiled is not None:
        u = None if up is None else (up if up.stride(-1) == 1 else up.contiguous())
        out, pool = _tiled_launch(a, m, tiled, rel, thr_param, do_pool, up=u, h=silu_out if u is not None else None,
                                  overwrite=overwrite_act or a is not act)  # a copy made here is ours too
    else:
        cfg = launch_config(B, T, D, dev)
        out = torch.empty(B, cfg["P"], _K, dtype=torch.float32, device=dev)
        if do_pool:
            pool = (torch.empty if cfg["SINGLE"] else torch.zeros)(B, cfg["P"], D, dtype=torch.float32, device=dev)
        else:
            pool = out  # never touched
        if B > 0 and T > 0:
            with _on(dev):  # Triton launches on the current device: make it the tensors' device
                _token_stats_kernel[(B, cfg["P"])](
                    a, x if x is not None else a, m, out, pool, y,
                    T, D, cfg["TPP"],
                    a.stride(0), a.stride(1),
                    (x if x is not None else a).stride(0), (x if x is not None else a).stride(1),
                    m.stride(0), m.stride(1), y.stride(0), y.stride(1),
                    thr_param,
                    REL=rel, DELTA=delta, BI=block_influence, STATS=stats, POOLED=do_pool, SINGLE=cfg["SINGLE"],
                    JOINT=cfg["JOINT"], ACT=silu_out is not None, PRECISE=not _INTERPRET, BLOCK_T=cfg["BLOCK_T"],
                    BLOCK_D=cfg["BLOCK_D"], BLOCK_D2=cfg["BLOCK_D2"], K=_K, FLT_MAX=_FLT_MAX,
                    I_N=F["n_tokens"], I_M2=F["within_m2"], I_MU=F["sum_mean"], I_MU2=F["sum_mean_sq"],
                    I_NZ=F["near_zero"], I_BI=F["bi_sum"], I_NF=F["nonfinite"], I_OK=_I_OK, I_MS=F["n_massive"],
                    num_warps=cfg["num_warps"], **({"num_stages": cfg["num_stages"]} if cfg["num_stages"] else {}),
                )
        else:
            out.zero_()
    P = out.shape[1]
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
                BLOCK_P=min(triton.next_power_of_2(P), 32), BLOCK_K=_BLOCK_K, BLOCK_D=block_d,
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
