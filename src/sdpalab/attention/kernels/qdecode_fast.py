"""Triton device code of the fast path of the fused quantized-KV decode kernel: ``int8``, ``fp8``
and ``int4`` caches with float16 or bfloat16 queries (``qdecode.py`` picks it; the general
kernel in ``qdecode_triton.py`` takes the rest).

Keys first. Every product is transposed so that the keys, not the query rows, are the large
side of the tensor-core tile: scores are ``codes [BLOCK_N, D] @ q^T [D, rows]`` and each output
tile is ``codes^T [D/E, BLOCK_N] @ p [BLOCK_N, rows]``. Decode has 1 to 8 query rows per KV
head; as the 8-wide side of a tensor-core product they fill it, where as its 16-high side they
were padded to 16 rows (twice the products, and the queries copied into place every time).

Codes: ``qdecode_codes`` decodes the words into float16 operands in registers; no code goes
through shared memory. The stacked rows and per-token planes below live in ``qdecode_rows``.

Channel groups by stacked rows (int4: a scale and a zero per token and group of channels). The
``R`` query rows of a tile are repeated ``NG`` times, once per channel group, with the queries
of the other groups' channels zeroed: one product per position gives every group's partial
score, each stacked row is scaled by its own group's scale, and the groups are summed into the
score that all of a row's copies share. On the value side each copy carries the probabilities
times its group's scales, and at the end channel ``c`` is read from the copy of its group. The
copies fill columns that the products would pad anyway. A row's copies are neighbouring
columns (stacked row ``r * NG + g``), which a tensor-core tile gives to one thread: summing
them takes no shuffles between threads. The online softmax then runs once per row, on the
summed scores, and only its probabilities go back to the copies; so a row's copies share one
power-of-two query scale ``alpha`` (the largest ``|q|`` of the whole row), and the softmax
scale's sign goes into the queries.

Value scales are taken relative to a running maximum ``beta`` (like the softmax's running
maximum, one for all rows), so the float16 probabilities times scales never overflow. Each
block's product is added to the float32 accumulators outside the tensor cores, which truncate
as they accumulate (the int8 bias makes their sums ~100x the result).

Scales one block ahead. Triton's pipeliner stages through shared memory only the loads that
feed a ``tl.dot``; the per-token scales (and int4 zeros) feed none, and loaded in the block
that uses them they waited on DRAM every block (on the H100, a fifth of int4's stall
samples). With up to two channel groups, the kernel loads the next block's scales while a
block computes and carries them in registers, as float16, converted only where used (int4 6 %
faster). With more groups it prefetches the next block's scales into L1 instead. The
interpreter cannot run the prefetch's PTX, so interpreted runs skip it. A plane of per-token
values is read as stored, ``[S, NG]`` with a token's groups side by side (the launcher makes it
so), one vectorized load a block.

Addresses: a block's base in each plane is a scalar and the offsets within a block are
computed once, outside the loop (recomputing ``(n0 + offs) * stride`` per element cost two to
four 64-bit instructions a load). int8 and fp8 (blocks of 128 keys, twice int4's words a
thread) share one set of offsets between the key and value planes: two pushed them past 255
registers into spills, and one is ~1 % faster on the H100. int4 keeps two: one (176 instead of
219 registers) made it ~2 % slower there, for reasons not found.

Together these took int4's main loop from 1309 to 1060 sm_90 instructions (triton 3.6, block
64, 1 warp, 4 rows x 2 groups); measured times are in ``qdecode-explore-h100.md`` §7.

First blocks into L2 (``BULK_L2``, int4 on sm_90 and later): every program of the one wave
starts at once and spends ~2 us on its queries before its first copy; one bulk prefetch a
plane, issued first, has L2 fetch its first two blocks meanwhile (int4 ~1 % faster on the H100;
int8's larger blocks were slower).

Launch defaults and what was tried: ``benchmarks/results/qdecode-explore-h100.md``.
"""

import triton
import triton.language as tl

from sdpalab.attention.kernels.qdecode_codes import _key_tiles, _value_tiles
from sdpalab.attention.kernels.qdecode_rows import (
    _copies,
    _load_q,
    _pick,
    _plane_max,
    _row_copies,
    _row_total,
    _scales_of,
    _store,
    _times_group,
)
from sdpalab.attention.kernels.qdecode_triton import (
    _bulk_l2,
    _key_range,
    _plane_bases,
    _prefetch,
    gdc_launch_dependents,
)


@triton.jit
def _block(
    state, n0, offs_n, hi, lim, kw_base, ks_base, kz_base, vw_base, vs_base,
    vz_base, s_kwn, s_vwn, kw_off, vw_off, j, g_row,
    q0, q1, q2, q3, q_off, row_scale, q_zero,
    FMT: tl.constexpr, E: tl.constexpr, NG: tl.constexpr, OFF: tl.constexpr, R: tl.constexpr,
    MASKED: tl.constexpr, PREFETCH: tl.constexpr, AHEAD: tl.constexpr,
):  # fmt: skip
    """One block of keys ``n0 + offs_n``: the online-softmax state after it. ``MASKED``: some
    keys are past ``hi`` or, for some rows, past the causal limit ``lim``. Tiles are transposed,
    keys first: scores ``[BLOCK_N, rows]``, output ``[WP, rows]`` per value tile."""
    m_i, l_i, beta, ps, zs, a0, a1, a2, a3, a4, a5, a6, a7, sc = state
    n = n0 + offs_n
    BLOCK_M: tl.constexpr = g_row.shape[0]
    BLOCK_N: tl.constexpr = n.shape[0]
    if AHEAD:  # this block's scales (and zeros) came with the last block; load the next ones
        ks, kz, vs, vz = sc
        sc = _scales_of(n0 + BLOCK_N, offs_n, hi, ks_base, kz_base, vs_base, vz_base, E, NG)
    elif PREFETCH:  # the next block's scales (and zeros) into L1 while this block computes
        nx = tl.minimum(n + BLOCK_N, hi - 1)
        _prefetch(ks_base + nx * NG)
        _prefetch(vs_base + nx * NG)
        if E == 8:
            _prefetch(kz_base + nx * NG)
            _prefetch(vz_base + nx * NG)
    # this block's bases are scalars; the offsets within a block are loop invariant
    kw_blk = kw_base + n0 * s_kwn
    vw_blk = vw_base + n0 * s_vwn
    if MASKED:
        n_ok = n < hi
        kw = tl.load(kw_blk + kw_off, mask=n_ok[:, None], other=0)
        vw = tl.load(vw_blk + vw_off, mask=n_ok[:, None], other=0)
    else:
        n_ok = None
        kw = tl.load(kw_blk + kw_off)
        vw = tl.load(vw_blk + vw_off)

    # ---- scores: per copy, scale * (codes·q16 - q_off) [+ zero * sum q], summed over a row's
    # copies; times row_scale (> 0) they are the base-2 softmax's scores
    k0, k1, k2, k3 = _key_tiles(kw, FMT, E)
    raw = tl.zeros([BLOCK_N, BLOCK_M], tl.float32) - q_off[None, :]
    raw = tl.dot(k0, q0, raw)
    raw = tl.dot(k1, q1, raw)
    if E == 8:
        raw = tl.dot(k2, q2, raw)
        raw = tl.dot(k3, q3, raw)
    if AHEAD:
        qk = raw * _pick(ks, R)
        if E == 8:
            qk += _pick(kz, R) * q_zero[None, :]
    else:
        qk = _times_group(raw, ks_base, n, n_ok, g_row, NG)
        if E == 8:  # int4 has zeros: zero * sum(q); the ones are raw * 0 + 1, to stay in the
            # product's layout
            qz = _times_group(raw * 0.0 + 1.0, kz_base, n, n_ok, g_row, NG)
            qk += qz * q_zero[None, :]
    qk = _row_total(qk, NG, R)

    # ---- online softmax (base 2), once per row; its probabilities then go to every copy
    if MASKED:
        qk = tl.where(n_ok[:, None] & (n[:, None] <= lim[None, :]), qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 0) * row_scale)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    corr = tl.exp2(m_i - m_safe)
    p = tl.exp2(qk * row_scale[None, :] - m_safe[None, :])
    l_i = l_i * corr + tl.sum(p, 0)

    # ---- values: acc += codes · (p * scale / beta), everything rescaled by corr and beta (the
    # running largest value scale, one for all rows)
    if AHEAD:
        beta_new = tl.maximum(beta, tl.max(tl.max(vs, 1), 0).to(tl.float32))
    else:
        beta_new = tl.maximum(beta, _plane_max(vs_base, n, n_ok, NG))
    p = _copies(p * (-1.0 / beta_new), NG)  # -p / beta, per copy
    if AHEAD:
        pv_neg = (p * _pick(vs, R)).to(tl.float16)
    else:
        pv_neg = _times_group(p, vs_base, n, n_ok, g_row, NG).to(tl.float16)
    f_row = _row_copies(corr * (beta / beta_new), NG)
    f = f_row[None, :]
    if OFF != 0:
        ps = ps * f_row - tl.sum(pv_neg.to(tl.float32), 0)
    if E == 8:
        pz = p * _pick(vz, R) if AHEAD else _times_group(p, vz_base, n, n_ok, g_row, NG)
        zs = zs * f_row - tl.sum(pz, 0)
    v0, v1, v2, v3, v4, v5, v6, v7 = _value_tiles(vw, FMT, E)
    # A fresh product per block, added in float32: tensor cores truncate as they accumulate,
    # and the int8 code bias makes the accumulators ~100x the result. (Subtracting the product
    # of -pv keeps Triton from folding the sum back into the product's accumulator.)
    a0 = a0 * f - tl.dot(tl.trans(v0), pv_neg)
    a1 = a1 * f - tl.dot(tl.trans(v1), pv_neg)
    a2 = a2 * f - tl.dot(tl.trans(v2), pv_neg)
    a3 = a3 * f - tl.dot(tl.trans(v3), pv_neg)
    if E == 8:
        a4 = a4 * f - tl.dot(tl.trans(v4), pv_neg)
        a5 = a5 * f - tl.dot(tl.trans(v5), pv_neg)
        a6 = a6 * f - tl.dot(tl.trans(v6), pv_neg)
        a7 = a7 * f - tl.dot(tl.trans(v7), pv_neg)
    return m_new, l_i, beta_new, ps, zs, a0, a1, a2, a3, a4, a5, a6, a7, sc


@triton.jit
def _fast_kernel(
    Q, Out, Part, Lse, KW, KS, KZ, VW, VS, VZ,
    q_len, kv_len, chunk, num_splits, qk_scale,
    s_qb, s_qh, s_qs, s_ob, s_oh, s_os,
    s_kwb, s_kwh, s_kwn, s_ksb, s_ksh,
    s_vwb, s_vwh, s_vwn, s_vsb, s_vsh,
    H_KV,
    G: tl.constexpr, HEAD_DIM: tl.constexpr, FMT: tl.constexpr, E: tl.constexpr,
    WP: tl.constexpr, NG: tl.constexpr, OFF: tl.constexpr, UNIT_INV: tl.constexpr,
    R: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, SPLIT: tl.constexpr,
    PREFETCH: tl.constexpr, PDL: tl.constexpr, BULK_L2: tl.constexpr,
):  # fmt: skip
    """One (batch, KV head) x ``R`` query rows x KV split. int8, fp8 (E = 4): one scale per
    token, ``NG`` = 1. int4 (E = 8): a scale and a zero per token and group of ``HEAD_DIM / NG``
    channels (``NG`` = 1 when a group is the whole head). Code tiles hold
    ``(code + OFF) / UNIT_INV``. ``PDL``: the merge kernel, a programmatic dependent launch,
    may be scheduled once every program is past its loop. ``BULK_L2``: prefetch the first two
    blocks into L2 at the start (sm_90 and later)."""
    BLOCK_M: tl.constexpr = NG * R
    GROUP: tl.constexpr = HEAD_DIM // NG  # channels per group
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = (pid_bh // H_KV).to(tl.int64)
    hk = (pid_bh % H_KV).to(tl.int64)
    r = pid_m * R + tl.arange(0, R)  # the rows themselves
    lim, lo, hi, seen_by_all = _key_range(r // G, pid_m, pid_s, q_len, kv_len, chunk, R, G,
                                          CAUSAL)  # fmt: skip
    kw_base, ks_base, kz_base, vw_base, vs_base, vz_base = _plane_bases(
        KW, KS, KZ, VW, VS, VZ, b, hk, s_kwb, s_kwh, s_ksb, s_ksh, s_vwb, s_vwh, s_vsb, s_vsh
    )
    if BULK_L2 and hi > lo:  # the first two blocks head for L2 while the queries load
        ntok = tl.minimum(hi - lo, 2 * BLOCK_N)
        _bulk_l2(kw_base + lo * s_kwn, ntok * s_kwn * 4)
        _bulk_l2(vw_base + lo * s_vwn, ntok * s_vwn * 4)
        _bulk_l2(ks_base + lo * NG, ntok * NG * 2)
        _bulk_l2(vs_base + lo * NG, ntok * NG * 2)
        if E == 8:
            _bulk_l2(kz_base + lo * NG, ntok * NG * 2)
            _bulk_l2(vz_base + lo * NG, ntok * NG * 2)

    # stacked row t: copy g_row = t % NG of row m = pid_m * R + t // NG (query token m // G,
    # query head hk * G + m % G); a row's copies are neighbours, held by one thread
    t = tl.arange(0, BLOCK_M)
    g_row = t % NG
    m = pid_m * R + t // NG
    qi = m // G
    hq = hk * G + m % G
    row_ok = qi < q_len
    d = tl.arange(0, HEAD_DIM)
    j = tl.arange(0, WP)  # word of a token; column of a value tile
    kcol = tl.arange(0, 2 * WP)  # of a key tile
    q_row = Q + b * s_qb + hq * s_qh + qi * s_qs
    in_d = row_ok[:, None] & ((d // GROUP)[None, :] == g_row[:, None])
    q = tl.load(q_row[:, None] + d[None, :], mask=in_d, other=0.0).to(tl.float32)
    q_base = q_row[None, :]
    # per row (all its copies): a power of two >= its largest |q|, so q / alpha is exact and at
    # most 1; the scale's sign goes into the queries, so that row_scale > 0
    top_q = tl.max(tl.reshape(tl.max(tl.abs(q), 1), (R, NG)), 1)
    alpha_r = tl.exp2(tl.ceil(tl.log2(tl.where(top_q == 0.0, 1.0, top_q))))
    alpha = _row_copies(alpha_r, NG) * tl.where(qk_scale < 0, -1.0, 1.0)
    # int4 key tiles 1 and 3 hold 16 c: tiles 0 and 2 are met by 16 q (exact, and |q| <= 16)
    UP: tl.constexpr = 16.0 if E == 8 else 1.0
    q0 = _load_q(q_base, kcol, row_ok, g_row, 0, E, GROUP, alpha / UP)
    q1 = _load_q(q_base, kcol, row_ok, g_row, 1, E, GROUP, alpha)
    if E == 8:
        q2 = _load_q(q_base, kcol, row_ok, g_row, 2, E, GROUP, alpha / UP)
        q3 = _load_q(q_base, kcol, row_ok, g_row, 3, E, GROUP, alpha)
    else:
        q2, q3 = q0, q1
    q16 = (q / alpha[:, None]).to(tl.float16).to(tl.float32)
    q_off = (OFF / UNIT_INV) * tl.sum(q16, 1)  # what the code bias adds to the raw products
    q_zero = tl.sum(q, 1) * UP / (alpha * UNIT_INV)  # times a zero: the zero's share of raw
    # per row: what turns its summed copies into base-2 softmax scores
    row_scale = alpha_r * (UNIT_INV * tl.abs(qk_scale) / UP)

    m_i = tl.full([R], float("-inf"), tl.float32)
    l_i = tl.zeros([R], tl.float32)
    beta = tl.full([], 1e-30, tl.float32)  # running largest value scale
    ps = tl.zeros([BLOCK_M], tl.float32)  # sum of the float16 p * scale / beta (code bias)
    zs = tl.zeros([BLOCK_M], tl.float32)  # sum of p * zero / beta
    a0 = tl.zeros([WP, BLOCK_M], tl.float32)
    a1 = tl.zeros([WP, BLOCK_M], tl.float32)
    a2 = tl.zeros([WP, BLOCK_M], tl.float32)
    a3 = tl.zeros([WP, BLOCK_M], tl.float32)
    if E == 8:
        a4 = tl.zeros([WP, BLOCK_M], tl.float32)
        a5 = tl.zeros([WP, BLOCK_M], tl.float32)
        a6 = tl.zeros([WP, BLOCK_M], tl.float32)
        a7 = tl.zeros([WP, BLOCK_M], tl.float32)
    else:  # carried unchanged
        a4 = tl.zeros([1, 1], tl.float32)
        a5, a6, a7 = a4, a4, a4
    offs_n = tl.arange(0, BLOCK_N)
    kw_off = offs_n[:, None] * s_kwn + j[None, :]
    # int8, fp8: one set of offsets for both planes (the launcher makes their strides equal);
    # two spill the registers of a 128-key block. int4 is faster with two (module doc)
    vw_off = kw_off if E == 4 else offs_n[:, None] * s_vwn + j[None, :]
    # blocks every row sees in full need no masks; the last partial or causal blocks do
    full = lo + tl.maximum(tl.minimum(hi, seen_by_all) - lo, 0) // BLOCK_N * BLOCK_N
    AHEAD: tl.constexpr = NG <= 2  # scales loaded one block ahead, in registers
    sc = _scales_of(lo, offs_n, hi, ks_base, kz_base, vs_base, vz_base, E, NG) if AHEAD else 0.0
    state = (m_i, l_i, beta, ps, zs, a0, a1, a2, a3, a4, a5, a6, a7, sc)
    for n0 in range(lo, full, BLOCK_N):
        state = _block(state, n0, offs_n, hi, lim, kw_base, ks_base, kz_base,
                       vw_base, vs_base, vz_base, s_kwn, s_vwn, kw_off, vw_off, j, g_row,
                       q0, q1, q2, q3, q_off, row_scale, q_zero,
                       FMT, E, NG, OFF, R, False, PREFETCH, AHEAD)  # fmt: skip
    for n0 in range(full, hi, BLOCK_N):
        state = _block(state, n0, offs_n, hi, lim, kw_base, ks_base, kz_base,
                       vw_base, vs_base, vz_base, s_kwn, s_vwn, kw_off, vw_off, j, g_row,
                       q0, q1, q2, q3, q_off, row_scale, q_zero,
                       FMT, E, NG, OFF, R, True, PREFETCH, AHEAD)  # fmt: skip
    m_i, l_i, beta, ps, zs, a0, a1, a2, a3, a4, a5, a6, a7, _ = state
    if PDL:  # the merge kernel may start now (it waits for this grid's stores to land)
        gdc_launch_dependents()

    # numerator = beta * (UNIT_INV * acc - OFF * ps + zs); the output of channel E*j + p is the
    # copy of its group
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    l_row = _row_copies(l_safe, NG)
    w = (beta * UNIT_INV / l_row)[None, :]
    c = (beta * (zs - OFF * ps) / l_row)[None, :]
    if SPLIT:
        row = (b * (H_KV * G) + hq) * q_len + qi
        o_base = Part + (row * num_splits + pid_s)[None, :] * HEAD_DIM
        r_row = (b * (H_KV * G) + hk * G + r % G) * q_len + r // G
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(l_safe))
        tl.store(Lse + r_row * num_splits + pid_s, lse, mask=r // G < q_len)
        ty = Part.dtype.element_ty
    else:
        o_base = Out + b * s_ob + hq[None, :] * s_oh + qi[None, :] * s_os
        ty = Out.dtype.element_ty
    _store(o_base, j, row_ok, g_row, (a0 * w + c).to(ty), 0, E, GROUP)
    _store(o_base, j, row_ok, g_row, (a1 * (w / UP) + c).to(ty), 1, E, GROUP)
    _store(o_base, j, row_ok, g_row, (a2 * w + c).to(ty), 2, E, GROUP)
    _store(o_base, j, row_ok, g_row, (a3 * (w / UP) + c).to(ty), 3, E, GROUP)
    if E == 8:
        _store(o_base, j, row_ok, g_row, (a4 * w + c).to(ty), 4, E, GROUP)
        _store(o_base, j, row_ok, g_row, (a5 * (w / UP) + c).to(ty), 5, E, GROUP)
        _store(o_base, j, row_ok, g_row, (a6 * w + c).to(ty), 6, E, GROUP)
        _store(o_base, j, row_ok, g_row, (a7 * (w / UP) + c).to(ty), 7, E, GROUP)
