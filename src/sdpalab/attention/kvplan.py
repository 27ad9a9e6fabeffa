"""The analytic memory model of the KV cache: bytes held and bytes one decode step moves, for every
(cache layout, quantization) pair, before anything runs. Plain integer math.

It mirrors what ``kvcache`` allocates (layouts in ``kvquant``'s and ``kvcache``'s docs), so the
measured ``cache_bytes()`` matches it (tests hold them within 2 %); its defaults are theirs:

- per token and KV head, for keys and values each: ``none`` D × dtype bytes; ``int8`` and ``fp8``
  D + 2 (a float16 scale); ``int4`` ceil(D/2) + 4·ceil(D/g); KIVI values ceil(D·b/8) + 4·ceil(D/g);
  KIVI keys ceil(D·b/8), plus 4·D per group of g tokens (scale and zero per channel);
- ``dynamic`` holds the tokens; ``static`` its capacity ``max_len``; ``sliding`` a ring of
  ``window - 1 + max(1, rollback_tokens)`` positions; ``paged`` the whole pool
  ``batch · ceil(max_len / page_size)`` pages plus its int32 page table and page map;
- KIVI quantizes ``g · floor((n - residual) / g)`` of n positions (n: tokens, or ``max_len`` when
  static) and keeps a full-precision ring of ``residual + g - 1 + rollback_tokens`` positions;
- ``smooth_keys`` adds the key channel means: D × dtype bytes per KV head and batch row;
- a per-layer ``kv_quant`` (``kvlayers``) is the sum of its layers, each in its own format
  (:func:`layer_cache_bytes` gives them one by one, so a search can compare maps by bytes).
"""

from __future__ import annotations

import math
from typing import Any

from sdpalab.attention.kivi import KIVI_RESIDUAL
from sdpalab.attention.kvlayers import KV_QUANTS, canonical_kv_quant, kv_formats, layer_formats
from sdpalab.attention.kvquant import DEFAULT_GROUP
from sdpalab.attention.paged import PAGE_SIZE

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_SCALE_BYTES = 2  # float16 scales and zeros
_INDEX_BYTES = 4  # int32 page table entries


def _kivi_bits(kv_quant: str) -> int:
    return int(kv_quant[-1])


def token_bytes(
    kv_quant: str,
    head_dim: int,
    dtype_bytes: int,
    group_size: int | None = None,
    role: str = "value",
) -> int:
    """Bytes one token of one KV head takes in one role (KIVI keys: without their per-group
    scales, see :func:`kivi_key_group_bytes`)."""
    group = DEFAULT_GROUP.get(kv_quant) if group_size is None else group_size
    if kv_quant == "none":
        return head_dim * dtype_bytes
    if kv_quant in ("int8", "fp8"):
        return head_dim + _SCALE_BYTES
    if kv_quant == "int4":
        return math.ceil(head_dim / 2) + 2 * _SCALE_BYTES * math.ceil(head_dim / group)
    if kv_quant in ("kivi2", "kivi4"):
        data = math.ceil(head_dim * _kivi_bits(kv_quant) / 8)
        return data if role == "key" else data + 2 * _SCALE_BYTES * math.ceil(head_dim / group)
    raise ValueError(f"kv_quant={kv_quant!r} is not valid; choose one of: {', '.join(KV_QUANTS)}")


def kivi_key_group_bytes(head_dim: int) -> int:
    """Scale and zero of one group of KIVI keys (per channel) for one KV head."""
    return 2 * _SCALE_BYTES * head_dim


def kivi_quantized(tokens: int, group_size: int, residual: int) -> int:
    """How many of ``tokens`` positions a KIVI cache stores quantized."""
    return max(0, tokens - residual) // group_size * group_size


def _kivi_bytes(kv_quant, head_dim, dtype_bytes, group, quantized, full) -> int:
    """Per KV head: ``quantized`` positions in KIVI form, ``full`` in full precision (k and v)."""
    per_token = token_bytes(kv_quant, head_dim, dtype_bytes, group, "key") + token_bytes(
        kv_quant, head_dim, dtype_bytes, group, "value"
    )
    return (
        quantized * per_token
        + quantized // group * kivi_key_group_bytes(head_dim)
        + full * 2 * head_dim * dtype_bytes
    )


def _one_layer_bytes(
    fmt: str,
    *,
    kv_cache: str,
    batch: int,
    heads_kv: int,
    head_dim: int,
    tokens: int,
    dtype_bytes: int,
    max_len: int | None = None,
    window: int | None = None,
    page_size: int = PAGE_SIZE,
    group_size: int | None = None,
    residual: int = KIVI_RESIDUAL,
    rollback_tokens: int = 0,
    smooth_keys: int = 0,
) -> int:
    """Bytes of one layer's cache stored in ``fmt`` (a plain format)."""
    capacity = tokens if max_len is None else max_len
    rows = batch * heads_kv
    means = rows * head_dim * dtype_bytes if smooth_keys else 0
    if fmt.startswith("kivi"):
        if kv_cache not in ("dynamic", "static"):
            raise ValueError(f"{fmt} is modelled for dynamic and static caches, not {kv_cache}")
        group = DEFAULT_GROUP[fmt] if group_size is None else group_size
        held = tokens if kv_cache == "dynamic" else capacity
        quantized = kivi_quantized(held, group, residual)
        ring = residual + group - 1 + rollback_tokens
        return means + rows * _kivi_bytes(fmt, head_dim, dtype_bytes, group, quantized, ring)
    per_token = 2 * token_bytes(fmt, head_dim, dtype_bytes, group_size)
    if kv_cache == "dynamic":
        return means + rows * tokens * per_token
    if kv_cache == "static":
        return means + rows * capacity * per_token
    if kv_cache == "sliding":
        if not window:
            raise ValueError("a sliding cache needs window (a positive integer)")
        return means + rows * (window - 1 + max(1, rollback_tokens)) * per_token
    if kv_cache == "paged":
        pages = batch * math.ceil(capacity / page_size)
        pool = pages * page_size * heads_kv * per_token
        return means + pool + 2 * pages * _INDEX_BYTES  # page table + page map
    raise ValueError(
        f"kv_cache={kv_cache!r} is not valid; choose dynamic, static, sliding or paged"
    )


def layer_cache_bytes(*, kv_quant: str, layers: int = 1, **geometry: Any) -> list[int]:
    """Bytes each of ``layers`` layers' caches allocates, layer 0 first; ``kv_quant`` a plain
    format or a per-layer map (``kvlayers``); ``geometry``: the keywords of
    :func:`cache_bytes_model` (``kv_cache``, ``batch``, ``heads_kv``, ``head_dim``, ``tokens``,
    ``dtype_bytes`` and the Variant's ``kv_args``)."""
    per_format = {fmt: _one_layer_bytes(fmt, **geometry) for fmt in kv_formats(kv_quant)}
    return [per_format[fmt] for fmt in layer_formats(kv_quant, layers)]


def cache_bytes_model(*, kv_quant: str, layers: int = 1, **geometry: Any) -> int:
    """Bytes a cache holding ``tokens`` tokens per row allocates (all layers).

    ``geometry``: ``kv_cache``, ``batch``, ``heads_kv``, ``head_dim``, ``tokens``,
    ``dtype_bytes``, and optionally ``max_len`` (static/paged capacity, default ``tokens``),
    ``window``, ``page_size``, ``group_size``, ``residual``, ``smooth_keys`` (the Variant's
    ``kv_args``) and ``rollback_tokens`` as in ``make_cached_attention`` (the workload's
    ``seq_q`` for decode). ``kv_quant`` may be a per-layer map over ``layers`` layers.
    """
    return sum(layer_cache_bytes(kv_quant=kv_quant, layers=layers, **geometry))


def _one_layer_step(
    fmt: str,
    *,
    kv_cache: str,
    batch: int,
    heads_q: int,
    heads_kv: int,
    head_dim: int,
    tokens: int,
    dtype_bytes: int,
    seq_q: int = 1,
    window: int | None = None,
    group_size: int | None = None,
    residual: int = KIVI_RESIDUAL,
    smooth_keys: int = 0,
    **_unused: Any,  # cache-only kv_args (max_len, page_size, ...) move nothing per step
) -> int:
    """Bytes one decode step moves through one layer stored in ``fmt`` (a plain format)."""
    visible = tokens if kv_cache != "sliding" else min(tokens, window + seq_q - 1)
    rows = batch * heads_kv
    if fmt.startswith("kivi"):
        group = DEFAULT_GROUP[fmt] if group_size is None else group_size
        quantized = kivi_quantized(tokens, group, residual)
        cache = rows * _kivi_bytes(
            fmt, head_dim, dtype_bytes, group, quantized, visible - quantized
        )
        new_kv = rows * seq_q * 2 * head_dim * dtype_bytes  # new tokens enter the residual
    else:
        per_token = 2 * token_bytes(fmt, head_dim, dtype_bytes, group_size)
        cache = rows * visible * per_token
        new_kv = rows * seq_q * per_token
    means = rows * head_dim * dtype_bytes if smooth_keys else 0  # read to shift the new keys
    q_and_out = 2 * batch * heads_q * seq_q * head_dim * dtype_bytes
    return cache + new_kv + means + q_and_out


def step_bytes_model(*, kv_quant: str, layers: int = 1, **geometry: Any) -> int:
    """Least bytes one decode step of ``seq_q`` tokens must move, ending at ``tokens`` cached:
    read every key and value its queries can see once, in storage format (a sliding cache:
    the last ``window + seq_q - 1``), read q, write the output, write the new k and v. A
    dequantize-then-attend path moves more; this is what a fused kernel would move.
    ``kv_quant`` may be a per-layer map over ``layers`` layers."""
    per_format = {fmt: _one_layer_step(fmt, **geometry) for fmt in kv_formats(kv_quant)}
    return sum(per_format[fmt] for fmt in layer_formats(kv_quant, layers))


def plan_table(
    *,
    heads_kv: int,
    head_dim: int,
    layers: int,
    context: int,
    batch: int = 1,
    dtype: str = "bfloat16",
    kv_quants=KV_QUANTS,
    kv_cache: str = "static",
    **kv_args,
) -> list[dict]:
    """Cache size of each KV quantization at one context length, for planning.

    One row per ``kv_quant``, a plain format or a per-layer map over ``layers`` written the one
    way (one that uses KIVI is skipped on sliding and paged caches): ``bytes_per_token`` (all
    layers, one sequence), ``total_bytes`` (``batch`` sequences of ``context`` tokens) and
    ``ratio_to_bf16`` (against the unquantized bfloat16 cache of the same layout).
    """
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r} is not valid; choose one of: {', '.join(DTYPE_BYTES)}")
    try:
        kv_quants = [canonical_kv_quant(quant) for quant in kv_quants]
    except ValueError as err:
        raise ValueError(f"kv_quant={err}") from None
    geometry = dict(
        kv_cache=kv_cache,
        batch=batch,
        heads_kv=heads_kv,
        head_dim=head_dim,
        tokens=context,
        layers=layers,
        **kv_args,
    )
    bf16 = cache_bytes_model(kv_quant="none", dtype_bytes=2, **geometry)
    rows = []
    for quant in kv_quants:
        kivi = any(fmt.startswith("kivi") for fmt in kv_formats(quant))
        if kivi and kv_cache not in ("dynamic", "static"):
            continue
        total = cache_bytes_model(kv_quant=quant, dtype_bytes=DTYPE_BYTES[dtype], **geometry)
        rows.append(
            {
                "kv_cache": kv_cache,
                "kv_quant": quant,
                "bytes_per_token": total / (batch * context),
                "total_bytes": total,
                "ratio_to_bf16": total / bf16,
            }
        )
    return rows
