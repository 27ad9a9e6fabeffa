"""Fused decode attention over a quantized KV cache, in Triton: the cache is read once, in its
stored format, and dequantized in registers.

``qdecode_attention(q, k, v, k_recent, v_recent)`` attends ``q [B, H_q, q_len, D]`` to the
sequence made of the quantized tokens ``k``/``v`` (:class:`~sdpalab.attention.kvquant.QTensor`,
layouts as in ``kvquant``, positions ``[0, n_quant)``) followed by full-precision tokens
``k_recent``/``v_recent`` ``[B, H_kv, R, D]`` (positions ``[n_quant, n_quant + R)``: KIVI's
residual window, or the whole cache when nothing is quantized). Causal alignment is bottom-right:
query ``i`` sees keys ``< kv_len - q_len + i + 1``.

Two kernels share this host side. The fast kernel (``qdecode_fast``) reads int8, fp8 and int4
caches without recent tokens into float16 or bfloat16 queries at power-of-two head dims; its
module doc explains how. The general kernel (``qdecode_triton``) reads every format, the recent
tokens and float32, and is described here. ``plan_launch`` says which one a call takes.

How one program of the general kernel works (grid: ``B * H_kv`` x query tiles x KV splits):

- GQA inside the kernel: the ``G = H_q / H_kv`` query heads of a KV head (times ``q_len`` query
  tokens, row ``r = i * G + g``) form one ``[BLOCK_M, D]`` tile, so K and V are read once for all
  of them.
- Packed codes are loaded as int32 words (16-byte vector loads) and turned into float16 with bit
  tricks instead of integer-to-float conversions (a slow, narrow unit on NVIDIA GPUs): a code
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

import torch

from sdpalab.attention.errors import Unsupported
from sdpalab.attention.kernels.attend import interpreting
from sdpalab.attention.kernels.qdecode_fast import _fast_kernel
from sdpalab.attention.kernels.qdecode_launch import (
    CODE_OFFSET,
    CODE_UNIT_INV,
    CODES_PER_WORD,
    KEY_MODE,
    MAX_CHANNEL_GROUPS,
    _cdiv,
    _major,
    _pow2,
    check_inputs,
    default_config,
    fast_unavailable,
    launch_geometry,
    plan_launch,
)
from sdpalab.attention.kernels.qdecode_triton import HAS_PDL, _merge_kernel, _qdecode_kernel
from sdpalab.attention.kvquant import QTensor

FMT_ID = {"none": 0, "int8": 1, "fp8": 2, "int4": 3, "kivi4": 4, "kivi2": 5}
_LOG2E = 1.4426950408889634


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


def _token_major(t: torch.Tensor) -> torch.Tensor:
    """Per-token values ``[B, H, S, NG]`` with each token's NG values next to each other and
    tokens NG apart, as the fast kernel reads them (a static cache's view already is)."""
    if t.stride(2) == t.shape[3] and (t.shape[3] == 1 or t.stride(3) == 1):
        return t
    return t.contiguous()


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
    kernel: str | None = None,
    tile_rows: int | None = None,
) -> torch.Tensor:
    """Attention of ``q [B, H_q, q_len, D]`` over quantized then recent tokens (module doc).

    ``k``/``v``: QTensors ``[B, H_kv, n_quant, D]`` of one format (KIVI keys with
    ``role="key"``) or None; ``k_recent``/``v_recent``: ``[B, H_kv, R, D]`` in any float dtype,
    positions after the quantized ones, or None. ``causal``: bottom-right. ``scale``: softmax
    scale (default ``1/sqrt(D)``). ``block_n``/``num_warps``/``num_stages``/``splits`` override
    the launch configuration (``splits``: number of KV chunks; default from the SM count).
    ``kernel``: ``"fast"`` (int8, fp8 and int4 without recent tokens, float16 or bfloat16
    queries, power-of-two head_dim of at least 16 words) or ``"general"``; default: fast where
    it applies. ``tile_rows``: query rows per program (``launch_geometry``). Returns
    ``[B, H_q, q_len, D]`` in q's dtype. A row that sees no key gets zeros.
    """
    heads_kv = check_inputs(q_BHSD, k, v, k_recent, v_recent)
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
    plan = plan_launch(
        q, k, v, k_recent, v_recent, heads_kv=heads_kv, block_n=block_n, num_warps=num_warps,
        num_stages=num_stages, splits=splits, kernel=kernel, tile_rows=tile_rows,
    )  # fmt: skip
    fast = plan["kernel"] == "fast"
    block_n, block_m, splits, chunk = (
        plan[key] for key in ("block_n", "block_m", "splits", "chunk")
    )
    warps, stages = plan["num_warps"], plan["num_stages"]
    block_d = _pow2(head_dim)

    # quantized planes as kernel arguments
    k_mode = v_mode = 0
    k_group = v_group = k_ng = v_ng = k_tg = 1
    nw = wp = 1
    scale_mul = 1.0
    if k is not None:
        per_word = CODES_PER_WORD[fmt]
        nw = head_dim // per_word
        wp = _pow2(nw)
        scale_mul = 256.0 if fmt == "fp8" else 1.0
        k_mode, v_mode = KEY_MODE[fmt], (0 if fmt in ("int8", "fp8") else 1)
        if k_mode == 1:
            k_group = k.group_size
            k_ng = _cdiv(head_dim, k_group)
        if k_mode == 2:
            k_group = k.group_size
            if k_group & (k_group - 1):
                raise Unsupported(f"triton_qdecode needs a power-of-two KIVI group; got {k_group}")
            k_tg = max(1, block_n // k_group)
        if v_mode == 1:
            v_group = v.group_size
            v_ng = _cdiv(head_dim, v_group)
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

    grid = (batch * heads_kv, plan["m_tiles"], splits)
    # the merge as a programmatic dependent launch (sm_90 and later): launched while the split
    # kernel's programs finish, it waits on the GPU instead of after a launch gap (on an H100,
    # int4 and int8 at B=1, 128k keys, ~1 us faster; benchmarks/results/qdecode-explore-h100.md)
    sm90 = not interpreting() and _major(device.index or 0) >= 9
    pdl = HAS_PDL and splits > 1 and sm90
    # int4's first two blocks prefetched into L2 as its programs start (sm_90 and later): on an
    # H100 int4 ~0.5-1 % faster; int8 and fp8, whose blocks are twice as large, slower
    bulk_l2 = fmt == "int4" and sm90
    if fast:
        ks, kz, vs, vz = (_token_major(t) for t in (ks, kz, vs, vz))
        # int8 and fp8: the kernel reads both word planes with one set of offsets (qdecode_fast)
        if CODES_PER_WORD[fmt] == 4 and kw.stride(2) != vw.stride(2):
            kw, vw = kw.contiguous(), vw.contiguous()
        _fast_kernel[grid](
            q, out, part, lse, kw, ks, kz, vw, vs, vz,
            q_len, kv_len, chunk, splits, (head_dim**-0.5 if scale is None else scale) * _LOG2E,
            *q.stride()[:3], *out.stride()[:3],
            *strides(kw, 3), *strides(ks, 2), *strides(vw, 3), *strides(vs, 2),
            heads_kv,
            G=group, HEAD_DIM=head_dim, FMT=FMT_ID[fmt], E=CODES_PER_WORD[fmt], WP=wp,
            NG=plan["copies"], OFF=CODE_OFFSET[fmt], UNIT_INV=CODE_UNIT_INV[fmt],
            R=plan["rows_per_tile"], BLOCK_N=block_n, CAUSAL=causal, SPLIT=splits > 1,
            PREFETCH=not interpreting(), PDL=pdl, BULK_L2=bulk_l2,
            num_warps=warps, num_stages=stages,
        )  # fmt: skip
    else:
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
            num_warps=warps, num_stages=stages,
        )  # fmt: skip
    if splits > 1:
        # a tile of at most 4096 partial outputs per program (32 per thread): at 128 splits one
        # program per row would hold 16384, and a batch of 1 would give only 32 programs
        block_s = max(2, _pow2(splits))
        merge_d = min(block_d, max(16, 4096 // block_s))
        _merge_kernel[(batch * heads_q * q_len, _cdiv(head_dim, merge_d))](
            part, lse, out, q_len, heads_q, splits, *out.stride()[:3],
            HEAD_DIM=head_dim, BLOCK_D=merge_d, BLOCK_S=block_s, PDL=pdl,
            num_warps=4, **({"launch_pdl": True} if pdl else {}),
        )  # fmt: skip
    return out


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


__all__ = [
    "bytes_read",
    "default_config",
    "fast_unavailable",
    "interpreting",
    "launch_geometry",
    "plan_launch",
    "qdecode_attention",
]
