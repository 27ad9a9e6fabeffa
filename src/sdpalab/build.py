"""``sl.build(variant, workload)``: turn a Variant into a callable attention. The only place
specs become objects: the backend's attend, the cache of the variant's layout and format, the
projections.

Stateless variants return ``attn(q, k, v) -> out`` (tensors ``[B, H, S, D]``). A variant with a
``kv_cache`` returns a stateful attention: each call appends its k, v and attends its q to
everything cached so far (causal, bottom-right aligned); ``attn.reset()`` empties it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdpalab.attention.backends import Attend, get_backend, make_attend
from sdpalab.attention.errors import Unsupported
from sdpalab.attention.kivi import KIVI_RESIDUAL, KiviCache
from sdpalab.attention.kvcache import CachedAttention, TokenCache
from sdpalab.attention.kvlayers import is_layer_map
from sdpalab.attention.kvstore import Codec, LinearStore, RingStore
from sdpalab.attention.paged import PAGE_SIZE, PagedFlexCache, PagedStore, PageTable
from sdpalab.spec import Variant, Workload
from sdpalab.spec.variant import check_kv_arg, computed_mod


def oracle_mod(variant: Variant) -> tuple[str, dict[str, Any]]:
    """The mod that defines what ``build(variant)`` must compute over the whole sequence
    (:func:`~sdpalab.spec.variant.computed_mod`: a cache always attends causally, and a
    ``sliding`` cache of window W means ``sliding_window(W)``)."""
    return computed_mod(variant)


def build(variant: Variant, workload: Workload) -> Callable:
    """Build the attention that ``variant`` describes, for tensors shaped like ``workload``.

    Raises :class:`Unsupported` when the combination cannot run on this machine.
    """
    if variant.kv_quant != "none" and variant.kv_cache == "none":
        raise Unsupported("a quantized KV cache needs a kv_cache layout")
    if variant.kv_cache != "none":
        attn: Callable = make_cached_attention(variant, workload)
    else:
        attn = make_attend(variant.backend, *oracle_mod(variant))
    if variant.projections:
        from sdpalab.attention.projections import ProjectedAttention, quantize_projections

        module = ProjectedAttention(attn, workload.heads_q, workload.heads_kv, workload.head_dim)
        module.reference_weights = module.float64_weights()
        module = module.to(workload.device, workload.torch_dtype)
        attn = quantize_projections(module, variant.weight_quant)
    return attn


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return value


def cache_mod(variant: Variant) -> tuple[str, dict]:
    """The mod a cached variant attends with: ``("causal", {})`` or
    ``("sliding_window", {"window": w})``. Raises Unsupported for mods a cache cannot serve."""
    window = None
    if variant.mod == "sliding_window":
        window = variant.mod_args["window"]
    elif variant.mod not in ("none", "causal"):
        raise Unsupported(
            f"mod {variant.mod!r} cannot run with a KV cache: the cache is causal and each call "
            "sees only keys cached so far; use none, causal or sliding_window"
        )
    if variant.kv_cache == "sliding":
        ring = _check_positive("kv_args.window", variant.kv_args.get("window"))
        if window is not None and window > ring:
            raise ValueError(
                f"mod_args.window={window} exceeds the sliding cache's kv_args.window={ring}"
            )
        window = window or ring
    return ("causal", {}) if window is None else ("sliding_window", {"window": window})


def make_cached_attention(
    variant: Variant,
    workload: Workload,
    attend: Attend | None = None,
    *,
    rollback_tokens: int | None = None,
    page_seed: int | None = None,
) -> CachedAttention:
    """The stateful attention of a Variant with a ``kv_cache`` for a Workload's geometry.

    ``attend``: a stateless attention built for ``cache_mod(variant)`` — that is
    ``make_attend(variant.backend, *cache_mod(variant))``; None builds exactly that (paged with
    a backend that ``reads_pages``: none, it reads the page pool itself). ``rollback_tokens``:
    how far a step can be undone on the rings (default ``workload.seq_q`` for decode, else 0).
    ``page_seed``: assign pages from a shuffled free list (None: in order).
    ``kv_args.smooth_keys`` stores keys less their prefill channel means (``kvcache``'s doc).
    """
    layout, fmt, kv = variant.kv_cache, variant.kv_quant, variant.kv_args
    if layout == "none":
        raise ValueError("make_cached_attention needs a variant with a kv_cache")
    if is_layer_map(fmt):
        raise ValueError(
            f"kv_quant={fmt!r} is a per-layer map; one attention call is one layer: give one "
            "format, or run the map on a model (a ModelWorkload, or SdpalabCache)"
        )
    for key, value in kv.items():
        check_kv_arg(key, value)
    smooth_keys = bool(kv.get("smooth_keys"))
    mod_name, mod_args = cache_mod(variant)
    window = mod_args.get("window")
    if rollback_tokens is None:
        rollback_tokens = workload.seq_q if workload.phase == "decode" else 0
    max_len, group_size = kv.get("max_len", workload.seq_kv), kv.get("group_size")
    # A backend that reads pages attends the pool itself, unless the caller brings its own attend
    # (a model's attention function), which gets the pages gathered like every other backend.
    reads_pool = layout == "paged" and attend is None and get_backend(variant.backend).reads_pages
    if attend is None and not reads_pool:
        attend = make_attend(variant.backend, mod_name, mod_args)
    if fmt.startswith("kivi"):
        if layout not in ("dynamic", "static"):
            raise Unsupported(f"{fmt} storage is built for dynamic and static caches, not {layout}")
        return KiviCache(
            workload,
            fmt=fmt,
            attend=attend,
            group_size=group_size,
            window=window,
            residual=kv.get("residual", KIVI_RESIDUAL),
            rollback_tokens=rollback_tokens,
            max_len=max_len if layout == "static" else None,
            smooth_keys=smooth_keys,
        )
    k_codec, v_codec = (
        Codec(fmt, role, workload.head_dim, workload.torch_dtype, workload.device, group_size)
        for role in ("key", "value")
    )
    where = (workload.batch, workload.heads_kv, workload.device)
    if layout == "paged":
        table = PageTable(
            workload.batch, kv.get("page_size", PAGE_SIZE), max_len, workload.device, page_seed
        )
        stores = [PagedStore(c.entry_shapes, workload.heads_kv, table) for c in (k_codec, v_codec)]
    elif layout == "sliding":
        ring = kv["window"] - 1 + max(1, rollback_tokens)
        stores = [RingStore(c.entry_shapes, *where, ring) for c in (k_codec, v_codec)]
    else:
        capacity = max_len if layout == "static" else None
        stores = [LinearStore(c.entry_shapes, *where, capacity) for c in (k_codec, v_codec)]
    return (PagedFlexCache if reads_pool else TokenCache)(
        workload,
        k_codec=k_codec,
        v_codec=v_codec,
        k_store=stores[0],
        v_store=stores[1],
        attend=attend,
        window=window,
        smooth_keys=smooth_keys,
    )
