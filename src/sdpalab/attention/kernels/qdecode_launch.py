"""How ``qdecode_attention`` launches: which inputs it takes, which kernel reads them (the fast
one of ``qdecode_fast`` or the general one of ``qdecode_triton``), and the launch geometry.
"""

from __future__ import annotations

import functools

import torch

from sdpalab.attention.errors import Unsupported
from sdpalab.attention.kvquant import QTensor

CODES_PER_WORD = {"int8": 4, "fp8": 4, "int4": 8, "kivi4": 8, "kivi2": 16}
KEY_MODE = {"int8": 0, "fp8": 0, "int4": 1, "kivi4": 2, "kivi2": 2}
"""0: one scale per token; 1: scale and zero per token and channel group; 2: per channel and
token group (KIVI keys)."""
MAX_CHANNEL_GROUPS = 16
CODE_OFFSET = {"int8": 128.0, "int4": 0.0, "fp8": 0.0}
"""What the fast kernel's code tiles add to each code (``qdecode_fast``)..."""
CODE_UNIT_INV = {"int8": 2.0**24, "int4": 2.0**24, "fp8": 256.0}
"""... and what they must be multiplied by: integer codes are float16 subnormals, fp8 codes
are re-based by 2^-8."""
KERNELS = ("fast", "general")
PROGRAMS_PER_SM = 8
FAST_WARPS_PER_SM = 8
"""Warps of the fast kernel an H100 SM holds at once (up to 255 registers each): 8 programs
of 1 warp, 4 of 2."""
MIN_CHUNK_BLOCKS = 4
MAX_SPLITS = 256


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int) -> int:
    """The smallest power of two >= n (host side: ``triton.next_power_of_2`` and
    ``triton.cdiv`` are constexpr functions, ~5 us a call from Python)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.cache
def _major(index: int) -> int:
    """The compute capability's major version of CUDA device ``index``."""
    return torch.cuda.get_device_capability(index)[0]


def fast_unavailable(k: QTensor | None, v: QTensor | None, n_recent, dtype, head_dim: int):
    """None when the fast kernel (``qdecode_fast``) reads this cache, else why not."""
    if k is None or k.fmt not in CODE_OFFSET:
        return f"it reads {', '.join(CODE_OFFSET)} caches"
    if n_recent:
        return "it reads no full-precision recent tokens"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"it computes in float16 or bfloat16, not {dtype}"
    words = head_dim // CODES_PER_WORD[k.fmt]
    if head_dim & (head_dim - 1) or words < 16:
        return f"head_dim {head_dim} is not a power of two of at least 16 words of {k.fmt}"
    if k.fmt == "int4":
        if k.group_size != v.group_size:
            return f"key groups of {k.group_size} and value groups of {v.group_size} differ"
        if head_dim % k.group_size or k.group_size % CODES_PER_WORD["int4"]:
            return f"int4 groups of {k.group_size} do not tile head_dim {head_dim} in whole words"
    return None


def default_config(fmt: str, dtype: torch.dtype, fast: bool = False) -> dict:
    """Keys per block, warps and pipeline depth of one format.

    General kernel: chosen from the sm_90 compiler's register and shared-memory report (triton
    3.6), the largest blocks that compile without spilling. Fast kernel: the fastest for int8,
    int4 and fp8 of block_n 32..256 x warps 1..8 x stages 1..4 timed on an H100
    (``benchmarks/qdecode_explore.py``; ``benchmarks/results/qdecode-explore-h100.md``).
    ``benchmarks/qdecode_bench.py`` times the alternatives again and reports the fastest.
    """
    if fast:
        if fmt == "int4":
            return {"block_n": 64, "num_warps": 1, "num_stages": 3}
        return {"block_n": 128, "num_warps": 2, "num_stages": 2}
    if dtype == torch.float32:  # float32 tiles: small blocks, or the registers spill
        return {"block_n": 32, "num_warps": 8, "num_stages": 2}
    if fmt.startswith("kivi"):
        return {"block_n": 128, "num_warps": 8, "num_stages": 2}
    return {"block_n": 128, "num_warps": 4, "num_stages": 2}


def check_inputs(q, k, v, k_recent, v_recent):
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


def plan_launch(
    q_BHSD: torch.Tensor,
    k: QTensor | None = None,
    v: QTensor | None = None,
    k_recent: torch.Tensor | None = None,
    v_recent: torch.Tensor | None = None,
    *,
    heads_kv: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    splits: int | None = None,
    kernel: str | None = None,
    tile_rows: int | None = None,
) -> dict:
    """The launch ``qdecode_attention`` makes for these inputs and overrides: ``kernel``
    (``"fast"`` or ``"general"``), ``num_warps``, ``num_stages`` and the ``launch_geometry``."""
    if kernel not in (None, *KERNELS):
        raise ValueError(f"kernel={kernel!r}; valid: {', '.join(KERNELS)}")
    if heads_kv is None:
        heads_kv = check_inputs(q_BHSD, k, v, k_recent, v_recent)
    batch, heads_q, q_len, head_dim = q_BHSD.shape
    fmt = "none" if k is None else k.fmt
    n_quant = 0 if k is None else k.shape[2]
    n_recent = 0 if k_recent is None else k_recent.shape[2]
    why_not = fast_unavailable(k, v, n_recent, q_BHSD.dtype, head_dim)
    if kernel == "fast" and why_not:
        raise Unsupported(f"the fast triton_qdecode kernel does not apply: {why_not}")
    fast = kernel != "general" and why_not is None
    cfg = default_config(fmt, q_BHSD.dtype, fast=fast)
    num_warps = num_warps or cfg["num_warps"]
    geo = launch_geometry(
        batch=batch,
        heads_q=heads_q,
        heads_kv=heads_kv,
        q_len=q_len,
        kv_len=n_quant + n_recent,
        fmt=fmt,
        dtype=q_BHSD.dtype,
        device=q_BHSD.device,
        block_n=block_n or cfg["block_n"],
        splits=splits,
        copies=(head_dim // k.group_size) if fast and fmt == "int4" else 1,
        fast=fast,
        tile_rows=tile_rows,
        num_warps=num_warps,
    )
    return {
        "kernel": "fast" if fast else "general",
        "num_warps": num_warps,
        "num_stages": num_stages or cfg["num_stages"],
        **geo,
    }


def launch_geometry(
    *,
    batch: int,
    heads_q: int,
    heads_kv: int,
    q_len: int,
    kv_len: int,
    fmt: str,
    dtype: torch.dtype,
    device: torch.device,
    block_n: int | None = None,
    splits: int | None = None,
    copies: int = 1,
    fast: bool = False,
    tile_rows: int | None = None,
    num_warps: int = 2,
) -> dict:
    """The launch ``qdecode_attention`` picks: ``block_m`` rows per tile (``rows_per_tile`` of
    the G * q_len query rows, times ``copies`` for the fast kernel's channel groups; the general
    kernel pads them to at least 16 for ``tl.dot``, the fast kernel, whose rows are the small
    side of its products, does not), ``m_tiles``, ``block_n`` keys per step, and the split-KV
    ``splits`` x ``chunk`` keys (whole blocks). ``tile_rows`` (a power of two) overrides the
    tile's rows before the copies.

    Splits: general kernel, about ``PROGRAMS_PER_SM`` programs per SM, so that the last,
    partly filled wave of equal-sized programs is a small part of the run; fast kernel, one
    full wave of ``FAST_WARPS_PER_SM / num_warps`` programs per SM (timed on an H100, int4 at
    B=1, 128k keys, 1 warp, block 64: 128 splits 0.079 to 0.083 ms, 66 splits 0.102 ms; int8
    at B=8, 32k keys, 2 warps: 8 splits 0.193 ms, 16 splits 0.195 ms). Both keep at least
    ``MIN_CHUNK_BLOCKS`` blocks per split, so that the partial results stay a small fraction of
    the bytes read.
    """
    block_n = block_n or default_config(fmt, dtype)["block_n"]
    rows = heads_q // heads_kv * q_len
    most = 32 if dtype == torch.float32 else 64
    if tile_rows is None:
        least = 1 if fast else 16 // copies
        per_tile = min(max(least, _pow2(rows)), most // copies)
    elif tile_rows < 1 or tile_rows & (tile_rows - 1) or tile_rows * copies > most:
        raise ValueError(
            f"tile_rows={tile_rows!r}; valid: a power of two up to {most // copies} "
            f"({most} rows a tile, {copies} channel-group copies of each)"
        )
    else:
        per_tile = tile_rows
    block_m = per_tile * copies
    m_tiles = _cdiv(rows, per_tile)
    kv_len = max(kv_len, 1)
    blocks = _cdiv(kv_len, block_n)
    if splits is None:
        sms = _sm_count(device.index or 0) if device.type == "cuda" else 1
        base = batch * heads_kv * m_tiles
        if fast:
            fill = (FAST_WARPS_PER_SM // min(num_warps, FAST_WARPS_PER_SM) * sms) // base
        else:
            fill = _cdiv(PROGRAMS_PER_SM * sms, base)
        splits = min(
            fill,
            _cdiv(blocks, MIN_CHUNK_BLOCKS),
            MAX_SPLITS,
        )
    splits = max(1, min(splits, blocks))
    chunk = _cdiv(blocks, splits) * block_n
    return {"block_m": block_m, "m_tiles": m_tiles, "block_n": block_n, "copies": copies,
            "rows_per_tile": per_tile, "splits": _cdiv(kv_len, chunk), "chunk": chunk}  # fmt: skip
