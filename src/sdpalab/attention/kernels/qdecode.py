"""Fused decode attention over a quantized KV cache, in Triton: the cache is read once, in its
stored format, and dequantized in registers.

``qdecode_attention(q, k, v, k_recent, v_recent)`` attends ``q [B, H_q, q_len, D]`` to the
sequence made of the quantized tokens ``k``/``v`` (:class:`~sdpalab.attention.kvquant.QTensor`,
layouts as in ``kvquant``, positions ``[0, n_quant)``) followed by full-precision tokens
``k_recent``/``v_recent`` ``[B, H_kv, R, D]`` (positions ``[n_quant, n_quant + R)``: KIVI's
residual window, or the whole cache when nothing is quantized). Causal alignment is bottom-right:
query ``i`` sees keys ``< kv_len - q_len + i + 1``.

How one program works (grid: ``B * H_kv`` x query tiles x KV splits):

- GQA inside the kernel: the ``G = H_q / H_kv`` query heads of a KV head (times ``q_len`` query
  tokens, row ``r = i * G + g``) form one ``[BLOCK_M, D]`` tile, so K and V are read once for all
  of them.
- Packed codes are loaded as int32 words (16-byte vector loads) and turned into float16 with bit
  tricks instead of integer-to-float conversions, which run at a quarter of the ALU rate: a code
  ``c`` OR-ed under the exponent of 1024.0 is the float16 ``1024 + c``, one subtraction from
  exact. Every code is an integer of at most 8 bits (fp8 is re-biased into float16), so the tile
  of codes is exact in float16 and goes straight into ``tl.dot``.
- Scales and zeros are folded into the small ``[BLOCK_M, BLOCK_N]`` score and probability tiles
  instead of the ``[BLOCK_N, D]`` K/V tiles: per-token scales multiply a score column; per-group
  scales (int4, KIVI values) give one masked product per channel group; KIVI's per-channel key
  scales multiply q, once per token group. Probabilities are renormalized by the block's largest
  scale before they are cast to float16, so no float16 range is ever exceeded.
- bf16 queries are scaled per row by their largest magnitude before they become float16 (float16
  holds every bf16 significand; the row scale keeps the exponent in range).
- float32 accumulation; online softmax in base 2; split-KV with a second kernel that merges the
  partial results by their log-sum-exp.

float32 inputs take the same path with float32 tiles and IEEE float32 products.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from sdpalab.attention.errors import Unsupported
from sdpalab.attention.kvquant import QTensor

FMT_ID = {"none": 0, "int8": 1, "fp8": 2, "int4": 3, "kivi4": 4, "kivi2": 5}
CODES_PER_WORD = {"int8": 4, "fp8": 4, "int4": 8, "kivi4": 8, "kivi2": 16}
KEY_MODE = {"int8": 0, "fp8": 0, "int4": 1, "kivi4": 2, "kivi2": 2}
"""0: one scale per token; 1: scale and zero per token and channel group; 2: per channel and
token group (KIVI keys)."""
MAX_CHANNEL_GROUPS = 16

_LOG2E = 1.4426950408889634
_F16_SIGN = tl.constexpr(-0x7FFF8000)  # 0x80008000 as a signed int32


# ----------------------------------------------------------------------------- device code


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
    b = pid_bh // H_KV
    hk = pid_bh % H_KV

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

    # keys a row may see: [0, lim]; the tile's last visible key bounds the loops
    if CAUSAL:
        lim = kv_len - q_len + qi
        i_last = tl.minimum((pid_m * BLOCK_M + BLOCK_M - 1) // G, q_len - 1)
        hi = tl.minimum(kv_len - q_len + i_last + 1, kv_len)
    else:
        lim = kv_len - 1 + 0 * qi
        hi = kv_len
    lo = pid_s * chunk
    hi = tl.minimum(hi, lo + chunk)

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
        kw_base = KW + b * s_kwb + hk * s_kwh
        ks_base = KS + b * s_ksb + hk * s_ksh
        kz_base = KZ + b * s_ksb + hk * s_ksh
        vw_base = VW + b * s_vwb + hk * s_vwh
        vs_base = VS + b * s_vsb + hk * s_vsh
        vz_base = VZ + b * s_vsb + hk * s_vsh
        q_hi = tl.minimum(hi, n_quant)
        for n0 in range(lo, q_hi, BLOCK_N):
            n = n0 + offs_n
            n_ok = n < q_hi
            if NW == WP:
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
                    g_ok = d_ok & ((tg * K_GROUP + 0 * d) < q_hi)
                    sk = tl.load(ks_base + tg * s_ksn + d * s_ksc, mask=g_ok, other=0.0)
                    zk = tl.load(kz_base + tg * s_ksn + d * s_ksc, mask=g_ok, other=0.0)
                    qs = q * sk.to(tl.float32)[None, :]
                    if F32:
                        part = _dot(qs, kct, F32)
                    else:
                        a_t = _row_norm(qs)
                        part = _dot((qs / a_t[:, None]).to(tl.float16), kct, F32) * a_t[:, None]
                    part += tl.sum(q * zk.to(tl.float32)[None, :], 1)[:, None]
                    if K_TG == 1:
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
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Merge the splits of one query row: weights ``2^(lse_s - max lse)``."""
    row = tl.program_id(0)
    qi = row % q_len
    hq = (row // q_len) % H_Q
    b = row // (q_len * H_Q)
    s = tl.arange(0, BLOCK_S)
    s_ok = s < num_splits
    d = tl.arange(0, BLOCK_D)
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


# ----------------------------------------------------------------------------- host code


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def default_config(fmt: str, dtype: torch.dtype) -> dict:
    """Block size, warps and pipeline depth for one format (picked for an H100; the benchmark
    can sweep them)."""
    if fmt == "none":
        return {"block_n": 64 if dtype == torch.float32 else 128, "num_warps": 4, "num_stages": 2}
    return {"block_n": 64 if dtype == torch.float32 else 128, "num_warps": 4, "num_stages": 2}


def _words(data: torch.Tensor) -> torch.Tensor:
    """Packed codes ``[B, H, S, bytes]`` (int8, uint8 or float8) as int32 words."""
    if data.stride(-1) != 1 or data.storage_offset() % 4 or any(s % 4 for s in data.stride()[:-1]):
        data = data.contiguous()
    if data.dtype not in (torch.int8, torch.uint8):
        data = data.view(torch.uint8)
    return data.view(torch.int32)


def _scale_pair(scale: torch.Tensor, zero: torch.Tensor | None):
    """Scale and zero with equal strides (the kernel walks both with one set)."""
    if zero is not None and zero.stride() != scale.stride():
        scale, zero = scale.contiguous(), zero.contiguous()
    return scale, (scale if zero is None else zero)


def _check_inputs(q, k, v, k_recent, v_recent):
    if q.dim() != 4:
        raise ValueError(f"q must be [B, H_q, q_len, D]; got shape {tuple(q.shape)}")
    batch, heads_q, _, head_dim = q.shape
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise Unsupported(f"triton_qdecode computes in float16, bfloat16 or float32, not {q.dtype}")
    if (k is None) != (v is None) or (k_recent is None) != (v_recent is None):
        raise ValueError("pass both keys and values (quantized and/or recent)")
    if k is None and k_recent is None:
        raise ValueError("nothing to attend: no quantized and no recent keys")
    heads_kv = None
    if k is not None:
        if not isinstance(k, QTensor) or not isinstance(v, QTensor):
            raise TypeError("k and v must be QTensors (sdpalab.attention.kvquant)")
        if k.fmt != v.fmt or k.fmt not in CODES_PER_WORD:
            raise Unsupported(
                f"triton_qdecode reads {', '.join(CODES_PER_WORD)} with the same format for "
                f"keys and values; got keys {k.fmt}, values {v.fmt}"
            )
        if k.fmt.startswith("kivi") and (k.role != "key" or v.role != "value"):
            raise ValueError("KIVI keys must be quantized with role='key', values with 'value'")
        if k.shape[:3] != v.shape[:3] or k.head_dim != head_dim or v.head_dim != head_dim:
            raise ValueError(
                f"quantized keys {k.shape} and values {v.shape} must match q's batch and D={head_dim}"
            )
        heads_kv = k.shape[1]
        if k.shape[0] != batch:
            raise ValueError(f"quantized keys have batch {k.shape[0]}; q has {batch}")
        per_word = CODES_PER_WORD[k.fmt]
        if head_dim % per_word:
            raise Unsupported(
                f"triton_qdecode reads {k.fmt} as 32-bit words of {per_word} codes; head_dim "
                f"{head_dim} is not a multiple of {per_word}"
            )
    if k_recent is not None:
        if k_recent.shape != v_recent.shape or k_recent.dim() != 4:
            raise ValueError(
                f"recent keys {tuple(k_recent.shape)} and values {tuple(v_recent.shape)} must be "
                "equal [B, H_kv, R, D]"
            )
        if heads_kv is not None and k_recent.shape[1] != heads_kv:
            raise ValueError("recent and quantized tokens must have the same number of heads")
        heads_kv = k_recent.shape[1]
        if k_recent.shape[0] != batch or k_recent.shape[3] != head_dim:
            raise ValueError(f"recent keys {tuple(k_recent.shape)} do not match q {tuple(q.shape)}")
    if heads_q % heads_kv:
        raise ValueError(f"query heads {heads_q} must be a multiple of kv heads {heads_kv}")
    devices = {t.device for t in (q, k_recent, v_recent) if t is not None}
    devices |= {t.data.device for t in (k, v) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device; got {sorted(map(str, devices))}")
    return heads_kv


def qdecode_attention(
    q_BHSD: torch.Tensor,
    k: QTensor | None = None,
    v: QTensor | None = None,
    k_recent: torch.Tensor | None = None,
    v_recent: torch.Tensor | None = None,
    *,
    causal: bool = True,
    scale: float | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    splits: int | None = None,
) -> torch.Tensor:
    """Attention of ``q [B, H_q, q_len, D]`` over quantized then recent tokens (module doc).

    ``k``/``v``: QTensors ``[B, H_kv, n_quant, D]`` of one format (KIVI keys with
    ``role="key"``) or None; ``k_recent``/``v_recent``: ``[B, H_kv, R, D]`` in any float dtype,
    positions after the quantized ones, or None. ``causal``: bottom-right. ``scale``: softmax
    scale (default ``1/sqrt(D)``). ``block_n``/``num_warps``/``num_stages``/``splits`` override
    the launch configuration (``splits``: number of KV chunks; default from the SM count).
    Returns ``[B, H_q, q_len, D]`` in q's dtype. A row that sees no key gets zeros.
    """
    heads_kv = _check_inputs(q_BHSD, k, v, k_recent, v_recent)
    device = q_BHSD.device
    if device.type != "cuda" and not interpreting():
        raise Unsupported("triton_qdecode needs a CUDA GPU (or TRITON_INTERPRET=1 for testing)")
    batch, heads_q, q_len, head_dim = q_BHSD.shape
    group = heads_q // heads_kv
    fmt = "none" if k is None else k.fmt
    n_quant = 0 if k is None else k.shape[2]
    n_recent = 0 if k_recent is None else k_recent.shape[2]
    kv_len = n_quant + n_recent
    out = torch.empty_like(q_BHSD, memory_format=torch.contiguous_format)
    if q_len == 0 or batch == 0 or heads_q == 0:
        return out
    if kv_len == 0:
        return out.zero_()

    q = q_BHSD if q_BHSD.stride(-1) == 1 else q_BHSD.contiguous()
    dtype = q.dtype
    f32 = dtype == torch.float32
    cfg = default_config(fmt, dtype)
    geo = launch_geometry(
        batch=batch, heads_q=heads_q, heads_kv=heads_kv, q_len=q_len, kv_len=kv_len, fmt=fmt,
        dtype=dtype, device=device, block_n=block_n, splits=splits,
    )
    block_n, block_m, splits, chunk = geo["block_n"], geo["block_m"], geo["splits"], geo["chunk"]
    block_d = triton.next_power_of_2(head_dim)

    # quantized planes as kernel arguments
    k_mode = v_mode = 0
    k_group = v_group = k_ng = v_ng = k_tg = 1
    nw = wp = 1
    scale_mul = 1.0
    if k is not None:
        per_word = CODES_PER_WORD[fmt]
        nw = head_dim // per_word
        wp = triton.next_power_of_2(nw)
        scale_mul = 256.0 if fmt == "fp8" else 1.0
        k_mode, v_mode = KEY_MODE[fmt], (0 if fmt in ("int8", "fp8") else 1)
        if k_mode == 1:
            k_group = k.group_size
            k_ng = triton.cdiv(head_dim, k_group)
        if k_mode == 2:
            k_group = k.group_size
            if k_group & (k_group - 1):
                raise Unsupported(f"triton_qdecode needs a power-of-two KIVI group; got {k_group}")
            k_tg = max(1, block_n // k_group)
        if v_mode == 1:
            v_group = v.group_size
            v_ng = triton.cdiv(head_dim, v_group)
        if max(k_ng, v_ng) > MAX_CHANNEL_GROUPS:
            raise Unsupported(
                f"triton_qdecode handles at most {MAX_CHANNEL_GROUPS} channel groups per head; "
                f"group size {min(k_group, v_group)} gives {max(k_ng, v_ng)}"
            )
        kw, vw = _words(k.data), _words(v.data)
        ks, kz = _scale_pair(k.scale, k.zero)
        vs, vz = _scale_pair(v.scale, v.zero)
    else:
        kw = vw = ks = kz = vs = vz = q
    if k_recent is not None:
        kr = k_recent if k_recent.stride(-1) == 1 else k_recent.contiguous()
        vr = v_recent if v_recent.stride(-1) == 1 else v_recent.contiguous()
    else:
        kr = vr = q

    if splits > 1:
        part = torch.empty(batch * heads_q * q_len * splits * head_dim, device=device,
                           dtype=torch.float32)  # fmt: skip
        lse = torch.empty(batch * heads_q * q_len * splits, device=device, dtype=torch.float32)
    else:
        part = lse = out

    def strides(t, n):
        return list(t.stride()[:n]) if t is not q else [0] * n

    def scale_strides(t):
        # [B, H, entries, channels]; entries of per-token scales [B, H, S, 1] step by stride(2)
        return [0] * 4 if t is q else [t.stride(0), t.stride(1), t.stride(2), t.stride(3)]

    grid = (batch * heads_kv, geo["m_tiles"], splits)
    _qdecode_kernel[grid](
        q, out, part, lse,
        kw, ks, kz, vw, vs, vz, kr, vr,
        q_len, n_quant, kv_len, chunk, splits,
        (head_dim**-0.5 if scale is None else scale) * _LOG2E,
        *q.stride()[:3], *out.stride()[:3],
        *strides(kw, 3), *scale_strides(ks),
        *strides(vw, 3), *scale_strides(vs),
        *strides(kr, 3), *strides(vr, 3),
        heads_kv,
        G=group, HEAD_DIM=head_dim, BLOCK_D=block_d,
        FMT=FMT_ID[fmt], NW=nw, WP=wp,
        K_MODE=k_mode, K_GROUP=k_group, K_NG=k_ng, K_TG=k_tg,
        V_MODE=v_mode, V_GROUP=v_group, V_NG=v_ng, SCALE_MUL=scale_mul,
        BLOCK_M=block_m, BLOCK_N=block_n,
        CAUSAL=causal, SPLIT=splits > 1, HAS_QUANT=n_quant > 0, HAS_RES=n_recent > 0,
        Q_NORM=dtype == torch.bfloat16, F32=f32,
        num_warps=num_warps or cfg["num_warps"], num_stages=num_stages or cfg["num_stages"],
    )  # fmt: skip
    if splits > 1:
        _merge_kernel[(batch * heads_q * q_len,)](
            part, lse, out, q_len, heads_q, splits, *out.stride()[:3],
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=max(2, triton.next_power_of_2(splits)),
            num_warps=4,
        )  # fmt: skip
    return out


def launch_geometry(
    *, batch: int, heads_q: int, heads_kv: int, q_len: int, kv_len: int, fmt: str,
    dtype: torch.dtype, device: torch.device, block_n: int | None = None, splits: int | None = None,
) -> dict:
    """The launch ``qdecode_attention`` picks: ``block_m`` query rows per tile (G * q_len rows,
    padded to at least 16 for ``tl.dot``), ``m_tiles``, ``block_n`` keys per step, and the
    split-KV ``splits`` x ``chunk`` keys (whole blocks), chosen so that about four programs per
    SM are in flight and each split reads at least two blocks."""
    block_n = block_n or default_config(fmt, dtype)["block_n"]
    rows = heads_q // heads_kv * q_len
    block_m = min(max(16, triton.next_power_of_2(rows)), 32 if dtype == torch.float32 else 64)
    m_tiles = triton.cdiv(rows, block_m)
    kv_len = max(kv_len, 1)
    if splits is None:
        sms = _sm_count(device.index or 0) if device.type == "cuda" else 4
        base = batch * heads_kv * m_tiles
        splits = min(triton.cdiv(4 * sms, base), triton.cdiv(kv_len, 2 * block_n), 128)
    splits = max(1, min(splits, triton.cdiv(kv_len, block_n)))
    chunk = triton.cdiv(triton.cdiv(kv_len, splits), block_n) * block_n
    return {"block_m": block_m, "m_tiles": m_tiles, "block_n": block_n,
            "splits": triton.cdiv(kv_len, chunk), "chunk": chunk}  # fmt: skip


def bytes_read(q_BHSD, k=None, v=None, k_recent=None, v_recent=None) -> int:
    """Bytes the kernel must move at least: q and the output once, every stored plane of the
    quantized cache (data, scales, zeros) and the recent tokens once."""
    from sdpalab.attention.kvquant import nbytes

    total = 2 * q_BHSD.numel() * q_BHSD.element_size()
    for qt in (k, v):
        if qt is not None:
            total += nbytes(qt)
    for t in (k_recent, v_recent):
        if t is not None:
            total += t.numel() * t.element_size()
    return total


__all__ = ["bytes_read", "default_config", "interpreting", "launch_geometry", "qdecode_attention"]
