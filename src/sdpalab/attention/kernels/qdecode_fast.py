"""Triton device code of the fast path of the fused quantized-KV decode kernel: ``int8``, ``fp8``
and ``int4`` caches with float16 or bfloat16 queries (``qdecode.py`` picks it; the general
kernel in ``qdecode_triton.py`` takes the rest).

Codes by position. A 32-bit word of the cache holds ``E`` codes (4 bytes, or 8 nibbles) of
channels ``E*j .. E*j + E-1``. A dot product does not care in which order it visits channels, so
the codes of a word are never put back into channel order. ``_codes`` turns a tile of words into
two float16 tiles, the codes at bits ``s`` and ``s + 16`` of every word, with one shift and one
AND (int8: and an XOR) per pair. Key tiles put those two side by side (``_joined``): in
registers they already are the two halves of one 32-bit word, which is how a tensor core takes
a pair of key channels; the queries are gathered once per program in the same channel order
(``_joined_channel``). A value operand pairs its registers along the keys instead, so int8 and
fp8 value tiles stay one tile per byte; int4 value tiles are joined as well (timed faster). The
output keeps one accumulator per value tile, stored with the matching stride.

Codes as float16 subnormals. The bits of an integer code ``u < 1024`` read as a float16 are the
subnormal ``u * 2^-24``, exactly, with no offset to take off (int8 codes are stored biased by
128, so that bias comes off the small score and output tiles). Tensor cores multiply float16
subnormals exactly into their float32 accumulators. fp8 e4m3 codes are re-based into float16 as
``value * 2^-8``.

Channel groups by stacked rows (int4: a scale and a zero per token and group of channels). The
``R`` query rows of a tile are repeated ``NG`` times, once per channel group, with the queries
of the other groups' channels zeroed: one product per position gives every group's partial
score, each stacked row is scaled by its own group's scale, and the groups are summed into the
score that all of a row's copies share. On the value side each copy carries the probabilities
times its group's scales, and at the end channel ``c`` is read from the copy of its group. The
copies fill rows that ``tl.dot`` would pad anyway (decode has 1 to 8 rows per KV head).

Value scales are taken relative to a running maximum ``beta`` (like the softmax's running
maximum), so the float16 probabilities times scales never overflow. Each block's product is
added to the float32 accumulators outside the tensor cores, which truncate as they accumulate
(the int8 bias makes their sums ~100x the result).

The next block's scales (and int4 zeros) are prefetched into L1 while a block computes.
Triton's pipeliner stages only the loads that feed a ``tl.dot`` through shared memory; the scale
loads, used right after the products, otherwise wait a DRAM round trip every block (on the
H100, 17 % of int4's stall samples; the prefetch made int4 6 % faster). The interpreter cannot
run the PTX, so interpreted runs skip it.

Launch defaults and what was tried: ``benchmarks/results/qdecode-explore-h100.md``.
"""

import triton
import triton.language as tl

from sdpalab.attention.kernels.qdecode_triton import _key_range, _plane_bases, _prefetch, _row_norm


@triton.jit
def _codes(w, SHIFT: tl.constexpr, FMT: tl.constexpr):
    """Words → the float16 codes at bit ``SHIFT`` and at bit ``SHIFT + 16``."""
    x = w >> SHIFT
    if FMT == 1:  # int8 c → subnormal (c + 128) * 2^-24
        y = (x & 0x00FF00FF) ^ 0x00800080
    elif FMT == 2:  # e4m3 → value * 2^-8: sign to bit 15, exponent and mantissa to bits 7..13
        y = ((x << 7) & 0x3F803F80) | ((x << 8) & -0x7FFF8000)
    else:  # 4-bit c → subnormal c * 2^-24
        y = x & 0x000F000F
    lo = y.to(tl.int16).to(tl.float16, bitcast=True)
    hi = (y >> 16).to(tl.int16).to(tl.float16, bitcast=True)
    return lo, hi


@triton.jit
def _joined(w, SHIFT: tl.constexpr, FMT: tl.constexpr):
    """The codes at bits ``SHIFT`` and ``SHIFT + 16`` of words ``[N, WP]`` side by side
    ``[N, 2 * WP]``, as the two halves of one 32-bit register (no data moves)."""
    lo, hi = _codes(w, SHIFT, FMT)
    return tl.reshape(tl.join(lo, hi), (w.shape[0], 2 * w.shape[1]))


@triton.jit
def _key_tiles(w, FMT: tl.constexpr, E: tl.constexpr):
    """Key words ``[N, WP]`` → ``E / 2`` float16 code tiles ``[N, 2 * WP]`` (``_joined_channel``
    maps their columns to channels; the last two repeat when E = 4)."""
    if E == 4:
        c0 = _joined(w, 0, FMT)
        c1 = _joined(w, 8, FMT)
        c2, c3 = c0, c1
    else:
        c0 = _joined(w, 0, FMT)
        c1 = _joined(w, 4, FMT)
        c2 = _joined(w, 8, FMT)
        c3 = _joined(w, 12, FMT)
    return c0, c1, c2, c3


@triton.jit
def _value_tiles(w, FMT: tl.constexpr, E: tl.constexpr):
    """Value words ``[N, WP]`` → four float16 code tiles (``_value_channel``). A value operand
    pairs its registers along the keys, so the byte codes of int8 and fp8 stay one tile per
    byte ``[N, WP]``; int4 nibbles are joined ``[N, 2 * WP]`` as for keys (measured faster)."""
    if E == 4:
        c0, c2 = _codes(w, 0, FMT)
        c1, c3 = _codes(w, 8, FMT)
    else:  # one return: the compiler refuses returns of different shapes
        c0, c1, c2, c3 = _key_tiles(w, FMT, E)
    return c0, c1, c2, c3


@triton.jit
def _joined_channel(col, T: tl.constexpr, E: tl.constexpr):
    """The channel of column ``col`` of joined tile ``T`` (codes ``T`` and ``T + E/2``)."""
    return (col // 2) * E + T + (col % 2) * (E // 2)


@triton.jit
def _value_channel(col, T: tl.constexpr, E: tl.constexpr):
    if E == 4:
        return col * 4 + T
    else:
        return _joined_channel(col, T, E)


@triton.jit
def _load_q(base, col, row_ok, g_row, T: tl.constexpr, E: tl.constexpr, GROUP: tl.constexpr,
            alpha):  # fmt: skip
    """Queries of key tile ``T``'s channels, of each row's group only, over alpha, float16."""
    ch = _joined_channel(col, T, E)
    keep = row_ok[:, None] & ((ch // GROUP)[None, :] == g_row[:, None])
    x = tl.load(base + ch[None, :], mask=keep, other=0.0).to(tl.float32)
    return (x / alpha[:, None]).to(tl.float16)


@triton.jit
def _store(base, col, row_ok, g_row, x, T: tl.constexpr, E: tl.constexpr, GROUP: tl.constexpr):
    """Output of value tile ``T``, each row's group only."""
    ch = _value_channel(col, T, E)
    keep = row_ok[:, None] & ((ch // GROUP)[None, :] == g_row[:, None])
    tl.store(base + ch[None, :], x, mask=keep)


@triton.jit
def _times_group(x, base, n, n_ok, s_n, s_g, g_row, NG: tl.constexpr):
    """``x [rows, BLOCK_N]`` times per-token values of each row's group (``base + n * s_n + g *
    s_g``; row r has group ``g_row[r]``), and the largest of those values."""
    if n_ok is None:
        v = tl.load(base + n * s_n).to(tl.float32)
    else:
        v = tl.load(base + n * s_n, mask=n_ok, other=0.0).to(tl.float32)
    out = x * v[None, :]
    top = tl.max(v, 0)
    for g in tl.static_range(1, NG):
        if n_ok is None:
            vg = tl.load(base + n * s_n + g * s_g).to(tl.float32)
        else:
            vg = tl.load(base + n * s_n + g * s_g, mask=n_ok, other=0.0).to(tl.float32)
        out = tl.where((g_row == g)[:, None], x * vg[None, :], out)
        top = tl.maximum(top, tl.max(vg, 0))
    return out, top


@triton.jit
def _group_total(x, NG: tl.constexpr, R: tl.constexpr):
    """``[NG * R, N]`` stacked rows → every copy of a row holds the sum over its NG copies."""
    if NG == 1:
        return x
    n: tl.constexpr = x.shape[1]
    tot = tl.sum(tl.reshape(x, (NG, R, n)), 0)
    return tl.reshape(tl.broadcast_to(tot[None, :, :], (NG, R, n)), (NG * R, n))


@triton.jit
def _block(
    state, n, hi, lim, kw_base, ks_base, kz_base, vw_base, vs_base, vz_base,
    s_kwn, s_ksn, s_ksc, s_vwn, s_vsn, s_vsc, j, g_row,
    q0, q1, q2, q3, q_off, row_scale, q_zero,
    FMT: tl.constexpr, E: tl.constexpr, NG: tl.constexpr, OFF: tl.constexpr, R: tl.constexpr,
    MASKED: tl.constexpr, PREFETCH: tl.constexpr,
):  # fmt: skip
    """One block of keys ``n``: the online-softmax state after it. ``MASKED``: some keys are
    past ``hi`` or, for some rows, past the causal limit ``lim``."""
    m_i, l_i, beta, ps, zs, a0, a1, a2, a3 = state
    BLOCK_M: tl.constexpr = g_row.shape[0]
    BLOCK_N: tl.constexpr = n.shape[0]
    if PREFETCH:  # the next block's scales (and zeros) into L1 while this block computes
        nx = tl.minimum(n + BLOCK_N, hi - 1)
        _prefetch(ks_base + nx * s_ksn)
        _prefetch(vs_base + nx * s_vsn)
        if E == 8:
            _prefetch(kz_base + nx * s_ksn)
            _prefetch(vz_base + nx * s_vsn)
    if MASKED:
        n_ok = n < hi
        kw = tl.load(kw_base + n[:, None] * s_kwn + j[None, :], mask=n_ok[:, None], other=0)
        vw = tl.load(vw_base + n[:, None] * s_vwn + j[None, :], mask=n_ok[:, None], other=0)
    else:
        n_ok = None
        kw = tl.load(kw_base + n[:, None] * s_kwn + j[None, :])
        vw = tl.load(vw_base + n[:, None] * s_vwn + j[None, :])

    # ---- scores (base 2): per copy, alpha * scale * (q16·codes - q_off) [+ zero * sum q]
    k0, k1, k2, k3 = _key_tiles(kw, FMT, E)
    raw = tl.zeros([BLOCK_M, BLOCK_N], tl.float32) - q_off[:, None]
    raw = tl.dot(q0, tl.trans(k0), raw)
    raw = tl.dot(q1, tl.trans(k1), raw)
    if E == 8:
        raw = tl.dot(q2, tl.trans(k2), raw)
        raw = tl.dot(q3, tl.trans(k3), raw)
    qk, _ = _times_group(raw, ks_base, n, n_ok, s_ksn, s_ksc, g_row, NG)
    if E == 8:  # int4 has zeros: zero * sum(q); the ones are raw * 0 + 1, to stay in the
        # product's layout
        qz, _ = _times_group(raw * 0.0 + 1.0, kz_base, n, n_ok, s_ksn, s_ksc, g_row, NG)
        qk += qz * q_zero[:, None]
    qk = qk * row_scale[:, None]
    qk = _group_total(qk, NG, R)

    # ---- online softmax (base 2), the same in every copy of a row
    if MASKED:
        qk = tl.where(n_ok[None, :] & (n[None, :] <= lim[:, None]), qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    corr = tl.exp2(m_i - m_safe)
    p = tl.exp2(qk - m_safe[:, None])
    l_i = l_i * corr + tl.sum(p, 1)

    # ---- values: acc += (p * scale / beta) · codes, everything rescaled by corr and beta
    psv, top = _times_group(p, vs_base, n, n_ok, s_vsn, s_vsc, g_row, NG)
    beta_new = tl.maximum(beta, top)
    f = corr * (beta / beta_new)
    inv = 1.0 / beta_new
    pv_neg = (psv * (-inv)[:, None]).to(tl.float16)
    if OFF != 0:
        ps = ps * f - tl.sum(pv_neg.to(tl.float32), 1)
    if E == 8:
        pz, _ = _times_group(p, vz_base, n, n_ok, s_vsn, s_vsc, g_row, NG)
        zs = zs * f + tl.sum(pz, 1) * inv
    v0, v1, v2, v3 = _value_tiles(vw, FMT, E)
    # A fresh product per block, added in float32: tensor cores truncate as they accumulate,
    # and the int8 code bias makes the accumulators ~100x the result. (Subtracting the product
    # of -pv keeps Triton from folding the sum back into the product's accumulator.)
    a0 = a0 * f[:, None] - tl.dot(pv_neg, v0)
    a1 = a1 * f[:, None] - tl.dot(pv_neg, v1)
    a2 = a2 * f[:, None] - tl.dot(pv_neg, v2)
    a3 = a3 * f[:, None] - tl.dot(pv_neg, v3)
    return m_new, l_i, beta_new, ps, zs, a0, a1, a2, a3


@triton.jit
def _fast_kernel(
    Q, Out, Part, Lse, KW, KS, KZ, VW, VS, VZ,
    q_len, kv_len, chunk, num_splits, qk_scale,
    s_qb, s_qh, s_qs, s_ob, s_oh, s_os,
    s_kwb, s_kwh, s_kwn, s_ksb, s_ksh, s_ksn, s_ksc,
    s_vwb, s_vwh, s_vwn, s_vsb, s_vsh, s_vsn, s_vsc,
    H_KV,
    G: tl.constexpr, HEAD_DIM: tl.constexpr, FMT: tl.constexpr, E: tl.constexpr,
    WP: tl.constexpr, NG: tl.constexpr, OFF: tl.constexpr, UNIT_INV: tl.constexpr,
    R: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, SPLIT: tl.constexpr,
    PREFETCH: tl.constexpr,
):  # fmt: skip
    """One (batch, KV head) x ``R`` query rows x KV split. int8, fp8 (E = 4): one scale per
    token, ``NG`` = 1. int4 (E = 8): a scale and a zero per token and group of ``HEAD_DIM / NG``
    channels (``NG`` = 1 when a group is the whole head). Code tiles hold
    ``(code + OFF) / UNIT_INV``."""
    BLOCK_M: tl.constexpr = NG * R
    TW: tl.constexpr = WP * E // 4  # columns of a value tile
    GROUP: tl.constexpr = HEAD_DIM // NG  # channels per group
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = (pid_bh // H_KV).to(tl.int64)
    hk = (pid_bh % H_KV).to(tl.int64)

    # stacked row t: copy g_row = t // R of row m = pid_m * R + t % R (query token m // G,
    # query head hk * G + m % G)
    t = tl.arange(0, BLOCK_M)
    g_row = t // R
    m = pid_m * R + t % R
    qi = m // G
    hq = hk * G + m % G
    row_ok = qi < q_len
    d = tl.arange(0, HEAD_DIM)
    j = tl.arange(0, WP)
    col = tl.arange(0, TW)  # of a value tile
    kcol = tl.arange(0, 2 * WP)  # of a key tile
    q_base = Q + b * s_qb + hq[:, None] * s_qh + qi[:, None] * s_qs
    in_d = row_ok[:, None] & ((d // GROUP)[None, :] == g_row[:, None])
    q = tl.load(q_base + d[None, :], mask=in_d, other=0.0).to(tl.float32)
    # a power of two: q / alpha is exact
    alpha = tl.exp2(tl.ceil(tl.log2(_row_norm(q))))
    q0 = _load_q(q_base, kcol, row_ok, g_row, 0, E, GROUP, alpha)
    q1 = _load_q(q_base, kcol, row_ok, g_row, 1, E, GROUP, alpha)
    if E == 8:
        q2 = _load_q(q_base, kcol, row_ok, g_row, 2, E, GROUP, alpha)
        q3 = _load_q(q_base, kcol, row_ok, g_row, 3, E, GROUP, alpha)
    else:
        q2, q3 = q0, q1
    q16 = (q / alpha[:, None]).to(tl.float16).to(tl.float32)
    q_off = (OFF / UNIT_INV) * tl.sum(q16, 1)  # what the code bias adds to the raw products
    row_scale = alpha * (UNIT_INV * qk_scale)  # scores come out in the base-2 softmax domain
    q_zero = tl.sum(q, 1) / (alpha * UNIT_INV)  # times a zero: the zero's share of raw

    lim, lo, hi, seen_by_all = _key_range(qi, pid_m, pid_s, q_len, kv_len, chunk, R, G, CAUSAL)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    beta = tl.full([BLOCK_M], 1e-30, tl.float32)  # running largest value scale (same per row)
    ps = tl.zeros([BLOCK_M], tl.float32)  # sum of the float16 p * scale / beta (code bias)
    zs = tl.zeros([BLOCK_M], tl.float32)  # sum of p * zero / beta
    a0 = tl.zeros([BLOCK_M, TW], tl.float32)
    a1 = tl.zeros([BLOCK_M, TW], tl.float32)
    a2 = tl.zeros([BLOCK_M, TW], tl.float32)
    a3 = tl.zeros([BLOCK_M, TW], tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    kw_base, ks_base, kz_base, vw_base, vs_base, vz_base = _plane_bases(
        KW, KS, KZ, VW, VS, VZ, b, hk, s_kwb, s_kwh, s_ksb, s_ksh, s_vwb, s_vwh, s_vsb, s_vsh
    )

    # blocks every row sees in full need no masks; the last partial or causal blocks do
    full = lo + tl.maximum(tl.minimum(hi, seen_by_all) - lo, 0) // BLOCK_N * BLOCK_N
    state = (m_i, l_i, beta, ps, zs, a0, a1, a2, a3)
    for n0 in range(lo, full, BLOCK_N):
        state = _block(state, n0 + offs_n, hi, lim, kw_base, ks_base, kz_base, vw_base, vs_base,
                       vz_base, s_kwn, s_ksn, s_ksc, s_vwn, s_vsn, s_vsc, j, g_row,
                       q0, q1, q2, q3, q_off, row_scale, q_zero,
                       FMT, E, NG, OFF, R, False, PREFETCH)  # fmt: skip
    for n0 in range(full, hi, BLOCK_N):
        state = _block(state, n0 + offs_n, hi, lim, kw_base, ks_base, kz_base, vw_base, vs_base,
                       vz_base, s_kwn, s_ksn, s_ksc, s_vwn, s_vsn, s_vsc, j, g_row,
                       q0, q1, q2, q3, q_off, row_scale, q_zero,
                       FMT, E, NG, OFF, R, True, PREFETCH)  # fmt: skip
    m_i, l_i, beta, ps, zs, a0, a1, a2, a3 = state

    # numerator = beta * (UNIT_INV * acc - OFF * ps + zs); the output of channel E*j + p is the
    # copy of its group
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    w = (beta * UNIT_INV / l_safe)[:, None]
    c = (beta * (zs - OFF * ps) / l_safe)[:, None]
    if SPLIT:
        row = (b * (H_KV * G) + hq) * q_len + qi
        slot = row * num_splits + pid_s
        o_base = Part + slot[:, None] * HEAD_DIM
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(l_safe))
        tl.store(Lse + slot, lse, mask=row_ok & (g_row == 0))
        ty = Part.dtype.element_ty
    else:
        o_base = Out + b * s_ob + hq[:, None] * s_oh + qi[:, None] * s_os
        ty = Out.dtype.element_ty
    _store(o_base, col, row_ok, g_row, (a0 * w + c).to(ty), 0, E, GROUP)
    _store(o_base, col, row_ok, g_row, (a1 * w + c).to(ty), 1, E, GROUP)
    _store(o_base, col, row_ok, g_row, (a2 * w + c).to(ty), 2, E, GROUP)
    _store(o_base, col, row_ok, g_row, (a3 * w + c).to(ty), 3, E, GROUP)
