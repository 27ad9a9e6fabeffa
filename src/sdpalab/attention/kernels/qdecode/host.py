"""The host side of fused decode attention over a quantized KV cache: checks, launch plan, launch,
and the ``triton_qdecode`` backend.

``qdecode_attention(q, k, v, k_recent, v_recent)`` attends ``q [B, H_q, q_len, D]`` to quantized
tokens ``k``/``v`` (:class:`~sdpalab.attention.kvquant.QTensor`, layouts as in ``kvquant``,
positions ``[0, n_quant)``) followed by full-precision tokens ``k_recent``/``v_recent``
``[B, H_kv, R, D]`` (KIVI's residual window, or the whole cache when nothing is quantized),
causal bottom-right: query ``i`` sees keys ``< kv_len - q_len + i + 1``. The cache is read once,
in its stored format. ``plan_launch`` picks the fast kernel (``fast.py``) or the general one
(``general.py``). An attend object with ``reads_quantized = True`` offers ``attend_quantized``:
a cache that finds it passes its stored planes (:func:`qtensor_from_planes`), not a dequantized
copy. Importing this module does not import Triton (``_kernels``), so the backend registers
where Triton is missing.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from sdpalab.attention.errors import Unsupported
from sdpalab.attention.kvquant import QTensor

MODS = ("none", "causal")
KERNELS = ("fast", "general")
MERGES = ("kernel", "fused")
"""How the fast kernel's splits are merged: a second kernel (the default), or the last split
program of each query tile (``fused``; a candidate for a shorter fixed cost, to be measured:
``benchmarks/notes/qdecode-kernel.md``)."""
FMT_ID = {"none": 0, "int8": 1, "fp8": 2, "int4": 3, "kivi4": 4, "kivi2": 5}
CODES_PER_WORD = {"int8": 4, "fp8": 4, "int4": 8, "kivi4": 8, "kivi2": 16}
KEY_MODE = {"int8": 0, "fp8": 0, "int4": 1, "kivi4": 2, "kivi2": 2}
"""0: one scale per token; 1: scale and zero per token and channel group; 2: per channel and
token group (KIVI keys)."""
MAX_CHANNEL_GROUPS = 16
CODE_OFFSET = {"int8": 128.0, "int4": 0.0, "fp8": 0.0, "kivi4": 0.0, "kivi2": 0.0}
"""What the fast kernel's code tiles add to each code (its formats are this dict's keys)..."""
CODE_UNIT_INV = {"int8": 2.0**24, "int4": 2.0**24, "fp8": 256.0, "kivi4": 2.0**24, "kivi2": 2.0**24}
"""... and what they must be multiplied by: integer codes are float16 subnormals, fp8 codes
are re-based by 2^-8."""
PROGRAMS_PER_SM = 8
FAST_WARPS_PER_SM = 8
"""Warps of the fast kernel an H100 SM holds at once (up to 255 registers each): 8 programs
of 1 warp, 4 of 2."""
MIN_CHUNK_BLOCKS = 4
MAX_SPLITS = 256
_LOG2E = 1.4426950408889634


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``, which must
    be set before triton is first imported)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def availability() -> str | None:
    """None when the kernel can run here, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton_qdecode needs triton (pip install triton)"
    if not torch.cuda.is_available() and not interpreting():
        return "triton_qdecode needs a CUDA GPU (or TRITON_INTERPRET=1 for testing)"
    return None


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int) -> int:
    """The smallest power of two >= n (host side: ``triton.next_power_of_2`` and
    ``triton.cdiv`` are constexpr functions, ~5 us a call from Python)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@functools.cache
def sm_count(index: int) -> int:
    """Streaming multiprocessors of CUDA device ``index``."""
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.cache
def _major(index: int) -> int:
    """The compute capability's major version of CUDA device ``index``."""
    return torch.cuda.get_device_capability(index)[0]


# ---------------------------------------------------------------- checks


def check_inputs(q, k, v, k_recent, v_recent) -> int:
    """Raise on inputs the kernels cannot read (``ValueError``/``TypeError`` for wrong ones,
    ``Unsupported`` for ones outside the kernels' reach); return the number of KV heads."""
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
                f"quantized keys {k.shape} and values {v.shape} must match q's batch and "
                f"D={head_dim}"
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


def _fast_codes_per_word(fmt: str) -> int:
    """Codes per word as the fast kernel reads them: kivi2's words of 16 codes are split into
    two of 8 (``fast._as_nibbles``)."""
    return 8 if fmt.startswith("kivi") else CODES_PER_WORD[fmt]


def fast_unavailable(k: QTensor | None, v: QTensor | None, n_recent, dtype, head_dim: int):
    """None when the fast kernel reads this cache, else why not."""
    if k is None or k.fmt not in CODE_OFFSET:
        return f"it reads {', '.join(CODE_OFFSET)} caches"
    kivi = k.fmt.startswith("kivi")
    if n_recent and not kivi:
        return f"it reads full-precision recent tokens only after KIVI codes, not {k.fmt}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"it computes in float16 or bfloat16, not {dtype}"
    words = head_dim // _fast_codes_per_word(k.fmt)
    if head_dim & (head_dim - 1) or words < 16:
        return f"head_dim {head_dim} is not a power of two of at least 16 words of {k.fmt}"
    if kivi:
        group = k.group_size
        if v.group_size != group:
            return f"KIVI key groups of {group} tokens and value groups of {v.group_size} differ"
        if group & (group - 1) or group > head_dim or group % CODES_PER_WORD[k.fmt]:
            return (
                f"KIVI groups of {group} are not a power of two of whole {k.fmt} words up to "
                f"head_dim {head_dim}"
            )
    if k.fmt == "int4":
        if k.group_size != v.group_size:
            return f"key groups of {k.group_size} and value groups of {v.group_size} differ"
        if head_dim % k.group_size or k.group_size % CODES_PER_WORD["int4"]:
            return f"int4 groups of {k.group_size} do not tile head_dim {head_dim} in whole words"
    return None


# ---------------------------------------------------------------- launch plan


def default_config(fmt: str, dtype: torch.dtype, fast: bool = False) -> dict:
    """Keys per block, warps and pipeline depth of one format. General kernel: the largest
    blocks that compile for sm_90 without spilling; fast kernel: the fastest timed on an H100
    (``benchmarks/notes/qdecode-kernel.md``; ``benchmarks/qdecode_bench.py`` times the
    alternatives again)."""
    if fast:
        if fmt == "int4":
            return {"block_n": 64, "num_warps": 1, "num_stages": 3}
        if fmt.startswith("kivi"):  # one token group a block (untimed: notes)
            return {"block_n": 32, "num_warps": 1, "num_stages": 3}
        return {"block_n": 128, "num_warps": 2, "num_stages": 2}
    if dtype == torch.float32:  # float32 tiles: small blocks, or the registers spill
        return {"block_n": 32, "num_warps": 8, "num_stages": 2}
    if fmt.startswith("kivi"):
        return {"block_n": 128, "num_warps": 8, "num_stages": 2}
    return {"block_n": 128, "num_warps": 4, "num_stages": 2}


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
    merge: str | None = None,
) -> dict:
    """The launch ``qdecode_attention`` makes for these inputs and overrides: ``kernel``
    (``"fast"`` or ``"general"``), ``num_warps``, ``num_stages``, ``merge`` (``MERGES``; the
    general kernel always merges with a second kernel) and the ``launch_geometry``."""
    if kernel not in (None, *KERNELS):
        raise ValueError(f"kernel={kernel!r}; valid: {', '.join(KERNELS)}")
    if merge not in (None, *MERGES):
        raise ValueError(f"merge={merge!r}; valid: {', '.join(MERGES)}")
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
        batch=batch, heads_q=heads_q, heads_kv=heads_kv, q_len=q_len, kv_len=n_quant + n_recent,
        fmt=fmt, dtype=q_BHSD.dtype, device=q_BHSD.device, block_n=block_n or cfg["block_n"],
        splits=splits, copies=_value_groups(v, head_dim) if fast else 1, fast=fast,
        tile_rows=tile_rows, num_warps=num_warps,
    )  # fmt: skip
    if merge == "fused" and not fast:
        raise Unsupported("merge='fused' is an option of the fast triton_qdecode kernel")
    return {
        "kernel": "fast" if fast else "general",
        "num_warps": num_warps,
        "num_stages": num_stages or cfg["num_stages"],
        "merge": merge or "kernel",
        **geo,
    }


def _value_groups(v: QTensor, head_dim: int) -> int:
    """Channel groups of the values (int4, KIVI): the fast kernel's copies of each query row."""
    return _cdiv(head_dim, v.group_size) if v.fmt == "int4" or v.fmt.startswith("kivi") else 1


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
    full wave of ``FAST_WARPS_PER_SM / num_warps`` programs per SM. Both keep at least
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
        sms = sm_count(device.index or 0) if device.type == "cuda" else 1
        base = batch * heads_kv * m_tiles
        if fast:
            fill = (FAST_WARPS_PER_SM // min(num_warps, FAST_WARPS_PER_SM) * sms) // base
        else:
            fill = _cdiv(PROGRAMS_PER_SM * sms, base)
        splits = min(fill, _cdiv(blocks, MIN_CHUNK_BLOCKS), MAX_SPLITS)
    splits = max(1, min(splits, blocks))
    chunk = _cdiv(blocks, splits) * block_n
    return {"block_m": block_m, "m_tiles": m_tiles, "block_n": block_n, "copies": copies,
            "rows_per_tile": per_tile, "splits": _cdiv(kv_len, chunk), "chunk": chunk}  # fmt: skip


# ---------------------------------------------------------------- launch


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


@functools.cache
def _kernels():
    """The three kernels and whether this Triton has programmatic dependent launches, imported
    on the first launch (they import triton; module doc)."""
    from sdpalab.attention.kernels.qdecode.fast import fast_kernel
    from sdpalab.attention.kernels.qdecode.general import general_kernel
    from sdpalab.attention.kernels.qdecode.splits import HAS_PDL, merge_kernel

    return fast_kernel, general_kernel, merge_kernel, HAS_PDL


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
    merge: str | None = None,
) -> torch.Tensor:
    """Attention of ``q [B, H_q, q_len, D]`` over quantized then recent tokens (module doc).

    ``k``/``v``: QTensors ``[B, H_kv, n_quant, D]`` of one format (KIVI keys with
    ``role="key"``) or None; ``k_recent``/``v_recent``: ``[B, H_kv, R, D]`` in any float dtype,
    positions after the quantized ones, or None. ``causal``: bottom-right. ``scale``: softmax
    scale (default ``1/sqrt(D)``). ``block_n``/``num_warps``/``num_stages``/``splits`` override
    the launch configuration (``splits``: number of KV chunks; default from the SM count).
    ``kernel``: ``"fast"`` (int8, fp8 and int4 without recent tokens, kivi4 and kivi2 with
    them, float16 or bfloat16 queries, power-of-two head_dim of at least 16 words of 8 codes or
    of int8/fp8's 4) or ``"general"``; default: fast where it applies. ``tile_rows``: query
    rows per program (``launch_geometry``). ``merge``: how the fast kernel's splits are merged
    (``MERGES``). Returns ``[B, H_q, q_len, D]`` in q's dtype. A row that sees no key gets
    zeros.
    """
    fast_kernel, general_kernel, merge_kernel, has_pdl = _kernels()
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
        num_stages=num_stages, splits=splits, kernel=kernel, tile_rows=tile_rows, merge=merge,
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

    grid = (batch * heads_kv, plan["m_tiles"], splits)
    fused_merge = splits > 1 and plan["merge"] == "fused"
    n_lse = batch * heads_q * q_len * splits
    counter_off = 0
    if splits > 1:
        part = torch.empty(n_lse * head_dim, device=device, dtype=torch.float32)
        if fused_merge:  # the log-sum-exps after the tiles' counters, zero between calls
            # one counter a query tile: grid[0] * grid[1]
            lse, counter_off = merge_workspace(device, n_lse, grid[0] * grid[1])
        else:
            lse = torch.empty(n_lse, device=device, dtype=torch.float32)
    else:
        part = lse = out

    def strides(t, n):
        return list(t.stride()[:n]) if t is not q else [0] * n

    def scale_strides(t):
        # [B, H, entries, channels]; entries of per-token scales [B, H, S, 1] step by stride(2)
        return [0] * 4 if t is q else [t.stride(0), t.stride(1), t.stride(2), t.stride(3)]

    # the merge as a programmatic dependent launch (sm_90 and later): launched while the split
    # kernel's programs finish, it waits on the GPU instead of after a launch gap
    sm90 = not interpreting() and _major(device.index or 0) >= 9
    pdl = has_pdl and splits > 1 and sm90
    # int4's first two blocks prefetched into L2 as its programs start (sm_90 and later); int8
    # and fp8, whose blocks are twice as large, were slower with it
    bulk_l2 = fmt == "int4" and sm90
    if fast:
        # per-token planes token-major; KIVI key planes [B, H, S / group, D] channel-contiguous
        ks, kz, vs, vz = (_token_major(t) for t in (ks, kz, vs, vz))
        # int8 and fp8: the kernel reads both word planes with one set of offsets
        if CODES_PER_WORD[fmt] == 4 and kw.stride(2) != vw.stride(2):
            kw, vw = kw.contiguous(), vw.contiguous()
        e = _fast_codes_per_word(fmt)
        pdl = pdl and not fused_merge
        fast_kernel[grid](
            q, out, part, lse, kw, ks, kz, vw, vs, vz, kr, vr,
            q_len, n_quant, kv_len, chunk, splits,
            (head_dim**-0.5 if scale is None else scale) * _LOG2E,
            *q.stride()[:3], *out.stride()[:3],
            *strides(kw, 3), *strides(ks, 3), *strides(vw, 3), *strides(vs, 2),
            *strides(kr, 3), *strides(vr, 3),
            heads_kv, counter_off,
            G=group, HEAD_DIM=head_dim, FMT=FMT_ID[fmt], E=e, WP=head_dim // e,
            NG=plan["copies"], OFF=CODE_OFFSET[fmt], UNIT_INV=CODE_UNIT_INV[fmt],
            R=plan["rows_per_tile"], BLOCK_N=block_n, CAUSAL=causal, SPLIT=splits > 1,
            PREFETCH=not interpreting(), PDL=pdl, BULK_L2=bulk_l2, FUSED_MERGE=fused_merge,
            num_warps=warps, num_stages=stages,
        )  # fmt: skip
    else:
        general_kernel[grid](
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
    if splits > 1 and not fused_merge:
        # a tile of at most 4096 partial outputs per program (32 per thread): at 128 splits one
        # program per row would hold 16384, and a batch of 1 would give only 32 programs
        block_s = max(2, _pow2(splits))
        merge_d = min(block_d, max(16, 4096 // block_s))
        merge_kernel[(batch * heads_q * q_len, _cdiv(head_dim, merge_d))](
            part, lse, out, q_len, heads_q, splits, *out.stride()[:3],
            HEAD_DIM=head_dim, BLOCK_D=merge_d, BLOCK_S=block_s, PDL=pdl,
            num_warps=4, **({"launch_pdl": True} if pdl else {}),
        )  # fmt: skip
    return out


_WORKSPACES: dict[torch.device, tuple[int, torch.Tensor]] = {}


def merge_workspace(device: torch.device, n_lse: int, tiles: int) -> tuple[torch.Tensor, int]:
    """For ``merge="fused"``: ``n_lse`` float32 log-sum-exps from a buffer kept per device,
    whose first words are the tiles' int32 counters (zero when allocated, put back to zero by
    the kernel that used them), and the counters' offset from the log-sum-exps (negative). One
    buffer a device, so two such calls must not run at once on two streams."""
    held = _WORKSPACES.get(device)
    if held is None or held[0] < tiles or held[1].numel() < held[0] + n_lse:
        n_counters = max(tiles, 1024 if held is None else held[0])
        size = max(n_counters + n_lse, 1 << 16 if held is None else held[1].numel())
        held = (n_counters, torch.zeros(size, device=device, dtype=torch.float32))
        _WORKSPACES[device] = held
    n_counters, buf = held
    return buf[n_counters : n_counters + n_lse], -n_counters


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


# ---------------------------------------------------------------- the triton_qdecode backend


class QDecodeAttend:
    """``attend(q, k, v)`` over full-precision K/V, and ``attend_quantized`` over a quantized
    cache; causal means bottom-right (query i sees keys ``< kv_len - q_len + i + 1``)."""

    reads_quantized = True

    def __init__(self, causal: bool, **launch) -> None:
        self.causal = causal
        self.launch = launch
        """Optional launch overrides (block_n, num_warps, num_stages, splits)."""

    def __call__(self, q_BHSD, k_BHSD, v_BHSD):
        return qdecode_attention(
            q_BHSD, k_recent=k_BHSD, v_recent=v_BHSD, causal=self.causal, **self.launch
        )

    def attend_quantized(
        self,
        q_BHSD: torch.Tensor,
        k: QTensor | None,
        v: QTensor | None,
        k_recent: torch.Tensor | None = None,
        v_recent: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend to quantized tokens ``[0, n)`` (QTensor views, or None) then recent
        full-precision tokens ``[n, n + R)`` (``[B, H_kv, R, D]``, or None)."""
        return qdecode_attention(
            q_BHSD, k, v, k_recent, v_recent, causal=self.causal, **self.launch
        )


def make_qdecode(mod_name: str, mod_args: dict) -> QDecodeAttend:
    """Factory for ``backend="triton_qdecode"``: mods ``none`` and ``causal`` only."""
    if reason := availability():
        raise Unsupported(reason)
    if mod_name not in MODS:
        raise Unsupported(
            f"triton_qdecode computes only mods {', '.join(MODS)} (causal bottom-right); "
            f"got {mod_name!r}"
        )
    return QDecodeAttend(causal=mod_name == "causal")


def qtensor_from_planes(codec, planes: dict[str, torch.Tensor]) -> QTensor:
    """A cache codec's stored planes (``kvstore.Codec.encode`` layout, views are fine) as a
    QTensor, without copying: KIVI key groups are flattened back to tokens, fp8 bytes are
    viewed as float8 again."""
    data = planes["data"].flatten(2, 3) if codec.granule > 1 else planes["data"]
    if codec.fmt == "fp8":
        data = data.view(torch.float8_e4m3fn)
    zero = planes.get("zero")
    return QTensor(
        codec.fmt, data, planes["scale"], zero, codec.head_dim, codec.role, codec.group_size
    )
