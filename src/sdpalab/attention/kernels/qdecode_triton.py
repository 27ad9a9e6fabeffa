"""Triton device code of the fused quantized-KV decode kernel (the host side, the layouts and
the design notes are in ``qdecode.py``).

Formats (``FMT``): 0 none (full precision only), 1 int8, 2 fp8 e4m3, 3 int4, 4 kivi4, 5 kivi2.
Key scale modes (``K_MODE``): 0 one scale per token, 1 scale and zero per token and channel group,
2 scale and zero per channel and token group (KIVI keys). Value modes (``V_MODE``): 0 or 1.
"""

import triton
import triton.language as tl

from sdpalab.attention.kernels.attend import interpreting

try:  # programmatic dependent launches: triton 3.3 and later
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    HAS_PDL = True
except ImportError:
    HAS_PDL = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


_F16_SIGN = tl.constexpr(-0x7FFF8000)  # 0x80008000 as a signed int32
# Triton's CPU interpreter keeps bfloat16 as raw uint16 and multiplies the bit patterns in
# tl.dot (triton 3.6 and 3.9); there, bf16 products run in float32, which is exact for them.
_INTERPRETED = tl.constexpr(interpreting())


@triton.jit
def _pair(w, SHIFT: tl.constexpr, FMT: tl.constexpr):
    """int32 words → int32 holding two float16 bit patterns: the code at bit ``SHIFT`` (low
    half) and the code at bit ``SHIFT + 16`` (high half)."""
    x = w >> SHIFT
    if FMT == 1:  # int8 c: 0x6400 | (c + 128) is 1024 + 128 + c
        y = (x & 0x00FF00FF) ^ 0x64806480
    elif FMT == 2:  # e4m3: sign to bit 15, exponent and mantissa to bits 7..13 = value * 2^-8
        y = ((x << 7) & 0x3F803F80) | ((x << 8) & _F16_SIGN)
    elif FMT == 5:  # 2-bit codes: 1024 + c
        y = (x & 0x00030003) | 0x64006400
    else:  # 4-bit codes: 1024 + c
        y = (x & 0x000F000F) | 0x64006400
    return y


@triton.jit
def _halves(y):
    lo = y.to(tl.int16).to(tl.float16, bitcast=True)
    hi = (y >> 16).to(tl.int16).to(tl.float16, bitcast=True)
    return lo, hi


@triton.jit
def _decode(w, FMT: tl.constexpr, ROWS: tl.constexpr, WP: tl.constexpr):
    """Words ``[ROWS, WP]`` → codes ``[ROWS, WP * E]`` in float16, channel ``j * E + e`` for code
    ``e`` of word ``j``: integers for the int formats, ``value * 2^-8`` for fp8.

    Pair ``i`` (shift ``i * bits``) holds codes ``i`` and ``i + E/2``. ``tl.join`` appends a
    minor axis, so joining the halves first and the lowest bit of ``i`` last leaves the axes
    ``[.., half, i]`` = code index ``half * E/2 + i`` in row-major order.
    """
    if FMT == 1 or FMT == 2:
        a0, b0 = _halves(_pair(w, 0, FMT))
        a1, b1 = _halves(_pair(w, 8, FMT))
        x = tl.join(tl.join(a0, b0), tl.join(a1, b1))
        x = tl.reshape(x, (ROWS, WP * 4))
    elif FMT == 5:
        a0, b0 = _halves(_pair(w, 0, FMT))
        a1, b1 = _halves(_pair(w, 2, FMT))
        a2, b2 = _halves(_pair(w, 4, FMT))
        a3, b3 = _halves(_pair(w, 6, FMT))
        a4, b4 = _halves(_pair(w, 8, FMT))
        a5, b5 = _halves(_pair(w, 10, FMT))
        a6, b6 = _halves(_pair(w, 12, FMT))
        a7, b7 = _halves(_pair(w, 14, FMT))
        j0, j1, j2, j3 = tl.join(a0, b0), tl.join(a1, b1), tl.join(a2, b2), tl.join(a3, b3)
        j4, j5, j6, j7 = tl.join(a4, b4), tl.join(a5, b5), tl.join(a6, b6), tl.join(a7, b7)
        k0, k1, k2, k3 = tl.join(j0, j4), tl.join(j1, j5), tl.join(j2, j6), tl.join(j3, j7)
        x = tl.join(tl.join(k0, k2), tl.join(k1, k3))
        x = tl.reshape(x, (ROWS, WP * 16))
    else:
        a0, b0 = _halves(_pair(w, 0, FMT))
        a1, b1 = _halves(_pair(w, 4, FMT))
        a2, b2 = _halves(_pair(w, 8, FMT))
        a3, b3 = _halves(_pair(w, 12, FMT))
        j0, j1, j2, j3 = tl.join(a0, b0), tl.join(a1, b1), tl.join(a2, b2), tl.join(a3, b3)
        x = tl.join(tl.join(j0, j2), tl.join(j1, j3))
        x = tl.reshape(x, (ROWS, WP * 8))
    if FMT == 1:
        x = x - 1152.0
    elif FMT != 2:
        x = x - 1024.0
    return x


@triton.jit
def _dot(a, b, F32: tl.constexpr):
    if F32:
        return tl.dot(a, b, input_precision="ieee")
    elif _INTERPRETED and a.dtype == tl.bfloat16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _prefetch(ptrs):
    """Ask for the lines at ``ptrs`` to be brought into L1 (no result, nothing waits on it).
    Compiled kernels only: the interpreter cannot run PTX."""
    tl.inline_asm_elementwise("prefetch.global.L1 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs],
                              dtype=tl.int32, is_pure=False, pack=1)  # fmt: skip


@triton.jit
def _bulk_l2(ptr, nbytes):
    """Ask L2 for about ``nbytes`` from ``ptr``: one bulk prefetch (sm_90 and later) of the
    16-byte-aligned range inside them, issued by lane 0; nothing waits on it."""
    p = ptr + tl.zeros([1], tl.int32)
    n = (nbytes + tl.zeros([1], tl.int32)).to(tl.int32)
    tl.inline_asm_elementwise(
        "{ .reg .pred p, q; .reg .b32 l, n; .reg .b64 a, e; "
        "add.u64 a, $1, 15; and.b64 a, a, -16; cvt.u64.u32 e, $2; add.u64 e, e, $1; "
        "and.b64 e, e, -16; sub.u64 e, e, a; cvt.u32.u64 n, e; "
        "mov.u32 l, %laneid; setp.eq.u32 p, l, 0; setp.gt.s32 q, n, 0; and.pred p, p, q; "
        "@p cp.async.bulk.prefetch.L2.global [a], n; mov.u32 $0, 0; }",
        "=r,l,r", [p, n], dtype=tl.int32, is_pure=False, pack=1,
    )  # fmt: skip


@triton.jit
def _row_norm(x):
    """Largest magnitude of each row, 1 where the row is zero."""
    a = tl.max(tl.abs(x), 1)
    return tl.where(a == 0.0, 1.0, a)


@triton.jit
def _key_range(qi, pid_m, pid_s, q_len, kv_len, chunk, ROWS: tl.constexpr, G: tl.constexpr,
               CAUSAL: tl.constexpr):  # fmt: skip
    """Keys of split ``pid_s`` for query tile ``pid_m`` (``ROWS`` rows ``i * G + g``; ``qi``
    the query token of each row): ``lim`` (per row, the last key it sees), ``[lo, hi)`` (the
    keys the tile reads: its last visible key bounds the loops) and ``seen_by_all`` (keys
    ``< seen_by_all`` every row of the tile sees)."""
    if CAUSAL:
        lim = kv_len - q_len + qi
        i_last = tl.minimum((pid_m * ROWS + ROWS - 1) // G, q_len - 1)
        hi = tl.minimum(kv_len - q_len + i_last + 1, kv_len)
        seen_by_all = kv_len - q_len + (pid_m * ROWS) // G + 1
    else:
        lim = kv_len - 1 + 0 * qi
        hi = kv_len
        seen_by_all = kv_len
    lo = pid_s * chunk
    return lim, lo, tl.minimum(hi, lo + chunk), seen_by_all


@triton.jit
def _plane_bases(KW, KS, KZ, VW, VS, VZ, b, hk, s_kwb, s_kwh, s_ksb, s_ksh, s_vwb, s_vwh, s_vsb,
                 s_vsh):  # fmt: skip
    """Where (batch ``b``, KV head ``hk``) starts in each stored plane: key and value words,
    scales, zeros (zeros share their scales' strides)."""
    return (
        KW + b * s_kwb + hk * s_kwh, KS + b * s_ksb + hk * s_ksh, KZ + b * s_ksb + hk * s_ksh,
        VW + b * s_vwb + hk * s_vwh, VS + b * s_vsb + hk * s_vsh, VZ + b * s_vsb + hk * s_vsh,
    )  # fmt: skip


@triton.jit
def _softmax_update(qk, valid, m_i, l_i, acc, qk_scale):
    """One online-softmax step in base 2; returns p (float32) and the rescaled state."""
    s = tl.where(valid, qk * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    corr = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * corr + tl.sum(p, 1)
    acc = acc * corr[:, None]
    return p, m_new, l_i, acc


@triton.jit
def _qdecode_kernel(
    Q, Out, Part, Lse,
    KW, KS, KZ, VW, VS, VZ, KR, VR,
    q_len, n_quant, kv_len, chunk, num_splits, qk_scale,
    s_qb, s_qh, s_qs,
    s_ob, s_oh, s_os,
    s_kwb, s_kwh, s_kwn,
    s_ksb, s_ksh, s_ksn, s_ksc,
    s_vwb, s_vwh, s_vwn,
    s_vsb, s_vsh, s_vsn, s_vsc,
    s_krb, s_krh, s_krn,
    s_vrb, s_vrh, s_vrn,
    H_KV,
    G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    FMT: tl.constexpr, NW: tl.constexpr, WP: tl.constexpr,
    K_MODE: tl.constexpr, K_GROUP: tl.constexpr, K_NG: tl.constexpr, K_TG: tl.constexpr,
    V_MODE: tl.constexpr, V_GROUP: tl.constexpr, V_NG: tl.constexpr, SCALE_MUL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, SPLIT: tl.constexpr, HAS_QUANT: tl.constexpr, HAS_RES: tl.constexpr,
    Q_NORM: tl.constexpr, F32: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    # 64-bit base offsets: a [32, 8, 128k, 128] bf16 cache has batch strides past 2^31 / 32
    b = (pid_bh // H_KV).to(tl.int64)
    hk = (pid_bh % H_KV).to(tl.int64)

    # rows of this tile: r = i * G + g  (query token i, query head hk * G + g)
    r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qi = r // G
    hq = hk * G + r % G
    row_ok = qi < q_len
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q_ptrs = Q + b * s_qb + hq[:, None] * s_qh + qi[:, None] * s_qs + d[None, :]
    q_raw = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    q = q_raw.to(tl.float32)

    lim, lo, hi, _ = _key_range(qi, pid_m, pid_s, q_len, kv_len, chunk, BLOCK_M, G, CAUSAL)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    offs_n = tl.arange(0, BLOCK_N)

    if HAS_QUANT:
        if F32:
            qd = q
            alpha = tl.full([BLOCK_M], 1.0, tl.float32)
        elif Q_NORM:
            alpha = _row_norm(q)
            qd = (q / alpha[:, None]).to(tl.float16)
        else:
            qd = q_raw.to(tl.float16)
            alpha = tl.full([BLOCK_M], 1.0, tl.float32)
        j = tl.arange(0, WP)
        kw_base, ks_base, kz_base, vw_base, vs_base, vz_base = _plane_bases(
            KW, KS, KZ, VW, VS, VZ, b, hk, s_kwb, s_kwh, s_ksb, s_ksh, s_vwb, s_vwh, s_vsb, s_vsh
        )
        quant_hi = tl.minimum(hi, n_quant)
        for n0 in range(lo, quant_hi, BLOCK_N):
            n = n0 + offs_n
            n_ok = n < quant_hi
            if NW == WP:  # noqa: SIM108 (a constexpr branch; keep it explicit for Triton)
                w_mask = n_ok[:, None]
            else:
                w_mask = n_ok[:, None] & (j < NW)[None, :]
            kw = tl.load(kw_base + n[:, None] * s_kwn + j[None, :], mask=w_mask, other=0)
            vw = tl.load(vw_base + n[:, None] * s_vwn + j[None, :], mask=w_mask, other=0)
            kc = _decode(kw, FMT, BLOCK_N, WP)
            if F32:
                kc = kc.to(tl.float32)
            kct = tl.trans(kc)

            # ---- scores q·k
            if K_MODE == 0:
                sk = tl.load(ks_base + n * s_ksn, mask=n_ok, other=0.0).to(tl.float32)
                qk = _dot(qd, kct, F32) * (alpha[:, None] * (sk * SCALE_MUL)[None, :])
            elif K_MODE == 1:
                qk = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
                for gi in tl.static_range(K_NG):
                    in_g = (d // K_GROUP) == gi
                    sk = tl.load(ks_base + n * s_ksn + gi * s_ksc, mask=n_ok, other=0.0)
                    zk = tl.load(kz_base + n * s_ksn + gi * s_ksc, mask=n_ok, other=0.0)
                    part = _dot(tl.where(in_g[None, :], qd, 0.0), kct, F32)
                    q_sum = tl.sum(tl.where(in_g[None, :], q, 0.0), 1)
                    qk += part * (alpha[:, None] * sk.to(tl.float32)[None, :])
                    qk += q_sum[:, None] * zk.to(tl.float32)[None, :]
            else:
                qk = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
                for t in tl.static_range(K_TG):
                    tg = n0 // K_GROUP + t
                    g_ok = d_ok & ((tg * K_GROUP + 0 * d) < quant_hi)
                    sk = tl.load(ks_base + tg * s_ksn + d * s_ksc, mask=g_ok, other=0.0)
                    zk = tl.load(kz_base + tg * s_ksn + d * s_ksc, mask=g_ok, other=0.0)
                    qs = q * sk.to(tl.float32)[None, :]
                    if F32:
                        part = _dot(qs, kct, F32)
                    else:
                        a_t = _row_norm(qs)
                        qn = qs / a_t[:, None]
                        qn_hi = qn.to(tl.float16)
                        part = _dot(qn_hi, kct, F32)
                        if not Q_NORM:
                            # float16 queries promise float16 accuracy: the rounding of q * scale
                            # to float16 goes into a second product
                            qn_lo = (qn - qn_hi.to(tl.float32)).to(tl.float16)
                            part += _dot(qn_lo, kct, F32)
                        part = part * a_t[:, None]
                    part += tl.sum(q * zk.to(tl.float32)[None, :], 1)[:, None]
                    if K_TG == 1:  # noqa: SIM108
                        qk = part
                    else:
                        qk = tl.where(((n // K_GROUP) == tg)[None, :], part, qk)

            valid = n_ok[None, :] & (n[None, :] <= lim[:, None])
            p, m_i, l_i, acc = _softmax_update(qk, valid, m_i, l_i, acc, qk_scale)

            # ---- p·v
            vc = _decode(vw, FMT, BLOCK_N, WP)
            if F32:
                vc = vc.to(tl.float32)
            if V_MODE == 0:
                sv = tl.load(vs_base + n * s_vsn, mask=n_ok, other=0.0).to(tl.float32)
                if F32:
                    acc += _dot(p * (sv * SCALE_MUL)[None, :], vc, F32)
                else:
                    beta = tl.maximum(tl.max(sv, 0), 1e-30)
                    pv = (p * (sv / beta)[None, :]).to(tl.float16)
                    acc += _dot(pv, vc, F32) * (beta * SCALE_MUL)
            else:
                for gi in tl.static_range(V_NG):
                    in_g = (d // V_GROUP) == gi
                    sv = tl.load(vs_base + n * s_vsn + gi * s_vsc, mask=n_ok, other=0.0)
                    zv = tl.load(vz_base + n * s_vsn + gi * s_vsc, mask=n_ok, other=0.0)
                    sv = sv.to(tl.float32)
                    if F32:
                        part = _dot(p * sv[None, :], vc, F32)
                    else:
                        beta = tl.maximum(tl.max(sv, 0), 1e-30)
                        part = _dot((p * (sv / beta)[None, :]).to(tl.float16), vc, F32) * beta
                    z_sum = tl.sum(p * zv.to(tl.float32)[None, :], 1)
                    acc += tl.where(in_g[None, :], part + z_sum[:, None], 0.0)

    if HAS_RES:
        kr_base = KR + b * s_krb + hk * s_krh
        vr_base = VR + b * s_vrb + hk * s_vrh
        r_lo = tl.maximum(lo, n_quant)
        for n0 in range(r_lo, hi, BLOCK_N):
            n = n0 + offs_n
            n_ok = n < hi
            t_mask = n_ok[:, None] & d_ok[None, :]
            nr = n - n_quant
            kr = tl.load(kr_base + nr[:, None] * s_krn + d[None, :], mask=t_mask, other=0.0)
            vr = tl.load(vr_base + nr[:, None] * s_vrn + d[None, :], mask=t_mask, other=0.0)
            qk = _dot(q_raw, tl.trans(kr.to(q_raw.dtype)), F32)
            valid = n_ok[None, :] & (n[None, :] <= lim[:, None])
            p, m_i, l_i, acc = _softmax_update(qk, valid, m_i, l_i, acc, qk_scale)
            acc += _dot(p.to(q_raw.dtype), vr.to(q_raw.dtype), F32)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    o_mask = row_ok[:, None] & d_ok[None, :]
    if SPLIT:
        row = (b * (H_KV * G) + hq) * q_len + qi
        slot = row * num_splits + pid_s
        tl.store(Part + slot[:, None] * HEAD_DIM + d[None, :], o, mask=o_mask)
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(l_safe))
        tl.store(Lse + slot, lse, mask=row_ok)
    else:
        o_ptrs = Out + b * s_ob + hq[:, None] * s_oh + qi[:, None] * s_os + d[None, :]
        tl.store(o_ptrs, o.to(Out.dtype.element_ty), mask=o_mask)


@triton.jit
def _merge_kernel(
    Part, Lse, Out, q_len, H_Q, num_splits, s_ob, s_oh, s_os,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Merge the splits of one query row, ``BLOCK_D`` channels (program 1 picks which): weights
    ``2^(lse_s - max lse)``. ``PDL``: launched as a programmatic dependent of the split kernel
    (``launch_pdl``), it may start before that kernel ends, and waits here for its stores."""
    if PDL:
        gdc_wait()
    row = tl.program_id(0).to(tl.int64)
    qi = row % q_len
    hq = (row // q_len) % H_Q
    b = row // (q_len * H_Q)
    s = tl.arange(0, BLOCK_S)
    s_ok = s < num_splits
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    lse = tl.load(Lse + row * num_splits + s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)
    part_ptrs = Part + (row * num_splits + s)[:, None] * HEAD_DIM + d[None, :]
    part = tl.load(part_ptrs, mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    den = tl.sum(w, 0)
    num = tl.sum(w[:, None] * part, 0)
    o = num / tl.where(den == 0.0, 1.0, den)
    tl.store(Out + b * s_ob + hq * s_oh + qi * s_os + d, o.to(Out.dtype.element_ty), mask=d_ok)
