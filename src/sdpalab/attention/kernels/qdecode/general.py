"""The general kernel of fused decode attention over a quantized KV cache: every format, recent
full-precision tokens, float16, bfloat16 and float32 queries (``host.py`` picks the kernel).

- GQA inside the kernel: the ``G = H_q / H_kv`` query heads of a KV head times ``q_len`` tokens
  (row ``r = i * G + g``) form one ``[BLOCK_M, D]`` tile, so K and V are read once for all.
- Codes are loaded as int32 words, turned into float16 ``1024 + c`` by ``codes.code_pairs`` and
  put in channel order (``_decode``): at most 8 bits each, exact in float16, straight into
  ``tl.dot``.
- Scales and zeros are folded into the small ``[BLOCK_M, BLOCK_N]`` score and probability tiles,
  not the ``[BLOCK_N, D]`` K/V tiles: per-token scales multiply a score column; per-group scales
  (int4, KIVI values) give one masked product per channel group; KIVI's per-channel key scales
  multiply q, once per token group. Probabilities are divided by the block's largest value scale
  before they become float16, and bf16 queries by their row's largest magnitude (float16 holds
  every bf16 significand), so no float16 range is exceeded.
- float32 accumulation, online softmax in base 2, split-KV merged by ``splits.merge_kernel``;
  float32 inputs take the same path with float32 tiles and IEEE float32 products.

Key scale modes (``K_MODE``): 0 one scale per token, 1 scale and zero per token and channel
group, 2 scale and zero per channel and token group (KIVI keys). Value modes (``V_MODE``): 0 or 1.
"""

import triton
import triton.language as tl

from sdpalab.attention.kernels.qdecode.codes import INTERPRETED, code_pairs, halves, plane_bases
from sdpalab.attention.kernels.qdecode.splits import key_range


@triton.jit
def _decode(w, FMT: tl.constexpr, ROWS: tl.constexpr, WP: tl.constexpr):
    """Words ``[ROWS, WP]`` → codes ``[ROWS, WP * E]`` in float16, channel ``j * E + e`` for code
    ``e`` of word ``j``: integers for the int formats, ``value * 2^-8`` for fp8.

    Pair ``i`` (shift ``i * bits``) holds codes ``i`` and ``i + E/2``. ``tl.join`` appends a
    minor axis, so joining the halves first and the lowest bit of ``i`` last leaves the axes
    ``[.., half, i]`` = code index ``half * E/2 + i`` in row-major order.
    """
    if FMT == 1 or FMT == 2:
        a0, b0 = halves(code_pairs(w, 0, FMT, False))
        a1, b1 = halves(code_pairs(w, 8, FMT, False))
        x = tl.join(tl.join(a0, b0), tl.join(a1, b1))
        x = tl.reshape(x, (ROWS, WP * 4))
    elif FMT == 5:
        a0, b0 = halves(code_pairs(w, 0, FMT, False))
        a1, b1 = halves(code_pairs(w, 2, FMT, False))
        a2, b2 = halves(code_pairs(w, 4, FMT, False))
        a3, b3 = halves(code_pairs(w, 6, FMT, False))
        a4, b4 = halves(code_pairs(w, 8, FMT, False))
        a5, b5 = halves(code_pairs(w, 10, FMT, False))
        a6, b6 = halves(code_pairs(w, 12, FMT, False))
        a7, b7 = halves(code_pairs(w, 14, FMT, False))
        j0, j1, j2, j3 = tl.join(a0, b0), tl.join(a1, b1), tl.join(a2, b2), tl.join(a3, b3)
        j4, j5, j6, j7 = tl.join(a4, b4), tl.join(a5, b5), tl.join(a6, b6), tl.join(a7, b7)
        k0, k1, k2, k3 = tl.join(j0, j4), tl.join(j1, j5), tl.join(j2, j6), tl.join(j3, j7)
        x = tl.join(tl.join(k0, k2), tl.join(k1, k3))
        x = tl.reshape(x, (ROWS, WP * 16))
    else:
        a0, b0 = halves(code_pairs(w, 0, FMT, False))
        a1, b1 = halves(code_pairs(w, 4, FMT, False))
        a2, b2 = halves(code_pairs(w, 8, FMT, False))
        a3, b3 = halves(code_pairs(w, 12, FMT, False))
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
    """``a @ b`` accumulated in float32; IEEE float32 products for float32 tiles."""
    if F32:
        return tl.dot(a, b, input_precision="ieee")
    elif INTERPRETED and a.dtype == tl.bfloat16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _row_norm(x):
    """Largest magnitude of each row, 1 where the row is zero."""
    a = tl.max(tl.abs(x), 1)
    return tl.where(a == 0.0, 1.0, a)


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
def general_kernel(
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
    """One (batch, KV head) x ``BLOCK_M`` query rows x KV split (grid: ``B * H_kv``, query
    tiles, splits). ``Q``, ``Out``: ``[B, H_q, q_len, D]``; ``KW``/``VW``: int32 words
    ``[B, H_kv, n_quant, NW]``; ``KS``/``KZ``/``VS``/``VZ``: scales and zeros (layouts as in
    ``kvquant``); ``KR``/``VR``: recent tokens ``[B, H_kv, R, D]`` at positions ``n_quant``
    on; ``Part``/``Lse``: each split's partial output and base-2 log-sum-exp. ``qk_scale``:
    the softmax scale times log2(e)."""
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

    lim, lo, hi, _ = key_range(qi, pid_m, pid_s, q_len, kv_len, chunk, BLOCK_M, G, CAUSAL)

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
        kw_base, ks_base, kz_base, vw_base, vs_base, vz_base = plane_bases(
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
