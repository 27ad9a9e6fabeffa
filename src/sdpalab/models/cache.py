"""A transformers ``Cache`` backed by sdpalab's KV caches and KV quantization.

    cache = SdpalabCache(sl.Variant(backend="flash", kv_cache="dynamic", kv_quant="int8"))
    model.generate(ids, past_key_values=cache, max_new_tokens=32)
    cache.cache_bytes()   # what the storage holds: values, scales, zeros, residual windows

Each layer holds one sdpalab ``CachedAttention`` built by ``sdpalab.build.make_cached_attention``
(the same code ``sl.build`` uses), with an ``attend`` that only *captures* the keys and values the cache
would attend: so which tokens each step sees (all of them, a ring of the last W, KIVI's
quantized groups plus full-precision residual) is defined once, in ``attention/kvcache.py``.
``update`` returns those keys and values (dequantized for quantized storage: the baseline path)
and the model's attention function attends them; register the same Variant with
:func:`sdpalab.models.attention.apply_variant` to run its kernel and mask there.

A Variant whose backend reads quantized storage itself (``triton_qdecode``) turns that around:
the cache *attends*. ``update`` only holds the new keys and values and hands them back tagged
with their layer; sdpalab's attention function (registered with ``apply_variant``, which a model
must use with such a cache) then calls the layer with the queries, and the layer's
``CachedAttention`` appends and attends in one step: decode steps through the fused kernel,
straight from the stored codes and scales, with no dequantized copy; longer calls (the prefill)
through the best bf16 SDPA kernel on the keys as stored (:class:`DecodeAttend`). The outputs are
the capture path's, as the cache stores the same bytes either way.

A per-layer ``kv_quant`` (``"int8@0-1,kivi2"``, :mod:`sdpalab.attention.kvlayers`) gives layer
``i`` the Variant with that layer's format (:meth:`SdpalabCache.layer_variant`); pass
``layers=`` (the model's decoder layers) to have the map checked against the model up front.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch

from sdpalab.attention.backends import get_backend, make_attend
from sdpalab.attention.errors import Unsupported
from sdpalab.attention.kvlayers import format_of_layer, layer_formats
from sdpalab.attention.kvquant import QTensor, dequantize
from sdpalab.build import cache_mod, make_cached_attention
from sdpalab.models.attention import require_transformers
from sdpalab.spec import DTYPES, Variant, Workload

require_transformers()
from transformers.cache_utils import Cache, CacheLayerMixin  # noqa: E402

_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def cache_window(variant: Variant) -> int | None:
    """The sliding-window width the cache attends with (None: causal over everything).

    Raises ``ValueError`` for variants a cache cannot serve.
    """
    if variant.kv_cache == "none":
        raise ValueError(
            f"variant {variant.label()!r} has no kv_cache; choose dynamic, static, sliding or paged"
        )
    try:
        _, args = cache_mod(variant)
    except Unsupported as err:
        raise ValueError(str(err)) from None
    return args.get("window")


DENSE_BACKEND = "auto"
"""What a cache that attends itself runs for calls of several queries (the prefill): torch's
SDPA dispatcher, which picks flash, cuDNN or memory-efficient for the device and shape."""


class DecodeAttend:
    """The attend of a cache that attends itself: ``fused`` (a backend that reads quantized
    storage) for one query a sequence, ``dense`` over the dequantized keys otherwise.

    A prefill of thousands of queries is compute-bound: a decode kernel would be the wrong tool,
    and the one dequantized copy it costs is paid once, not every step.
    """

    reads_quantized = True

    def __init__(self, fused, dense) -> None:
        self.fused, self.dense = fused, dense

    def __call__(self, q, k, v):
        """Unquantized storage: every call through the dense kernel."""
        return self.dense(q, k, v)

    def attend_quantized(self, q, k, v, k_recent=None, v_recent=None):
        if q.shape[2] == 1:
            return self.fused.attend_quantized(q, k, v, k_recent, v_recent)
        keys = _joined(k, k_recent, q.dtype)
        values = _joined(v, v_recent, q.dtype)
        return self.dense(q, keys, values)


def _joined(stored: QTensor | None, recent: torch.Tensor | None, dtype) -> torch.Tensor:
    parts = [] if stored is None else [dequantize(stored, dtype)]
    return torch.cat(parts + ([] if recent is None else [recent]), 2)


def attends_itself(variant: Variant) -> bool:
    """Whether a cache of ``variant`` attends (its backend reads quantized storage), so only
    sdpalab's attention function can run with it."""
    return get_backend(variant.backend).reads_quantized


class SdpalabLayer(CacheLayerMixin):
    """One model layer's cache: an sdpalab ``CachedAttention`` that stores, never attends."""

    is_compileable = False

    def __init__(self, variant: Variant, max_cache_len: int | None = None) -> None:
        super().__init__()
        self.variant, self.max_cache_len = variant, max_cache_len
        self.window = cache_window(variant)
        self.is_sliding = variant.kv_cache == "sliding"
        # Rings (sliding, KIVI's residual) cannot roll back past what they overwrote.
        kivi = variant.kv_quant.startswith("kivi")
        self.is_croppable = variant.kv_cache != "sliding" and not kivi
        self.cached = None
        self._captured: tuple[torch.Tensor, torch.Tensor] | None = None
        self.attends = attends_itself(variant)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def _capture(self, q, k_BHSD, v_BHSD):
        self._captured = (k_BHSD, v_BHSD)
        return q

    def lazy_initialization(
        self, key_states: torch.Tensor, value_states: torch.Tensor, heads_q: int | None = None
    ) -> None:
        batch, heads_kv, _, head_dim = key_states.shape
        if key_states.dtype not in _DTYPE_NAMES:
            raise ValueError(f"SdpalabCache stores {', '.join(DTYPES)}; got {key_states.dtype}")
        max_len = self.variant.kv_args.get("max_len", self.max_cache_len)
        if self.variant.kv_cache in ("static", "paged") and max_len is None:
            raise ValueError(
                f"kv_cache={self.variant.kv_cache!r} preallocates: give SdpalabCache "
                "max_cache_len= (or kv_args.max_len), the most tokens it will hold"
            )
        workload = Workload(
            batch=batch,
            heads_q=heads_q or heads_kv,
            heads_kv=heads_kv,
            seq_kv=max_len or 1,
            head_dim=head_dim,
            dtype=_DTYPE_NAMES[key_states.dtype],
            device=str(key_states.device),
        )
        if self.attends:
            mod, args = cache_mod(self.variant)
            attend = DecodeAttend(
                make_attend(self.variant.backend, mod, args), make_attend(DENSE_BACKEND, mod, args)
            )
        else:  # the model's attention function attends: a paged pool is gathered for it
            attend = self._capture
        self.cached = make_cached_attention(self.variant, workload, attend, rollback_tokens=0)
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``[B, H_kv, n, D]`` keys and values; return those the new queries attend
        (a cache that attends itself: the new ones, tagged, for :meth:`attend`)."""
        if self.attends:
            return self._hold(key_states, value_states)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        # The cache wants one query per new token; the capture ignores it, so k stands in.
        self.cached(key_states, key_states, value_states)
        keys, values = self._captured
        self._captured = None
        return keys, values

    def _hold(self, key_states, value_states):
        if self._pending is not None:
            raise RuntimeError(
                f"SdpalabCache({self.variant.label()}) attends itself, and the last keys it was "
                "given were never attended: run the model with sdpalab's attention for this "
                "variant (sdpalab.models.attention.apply_variant(model, variant))"
            )
        self._pending = (key_states, value_states)
        key_states.sdpalab_layer = self  # sdpalab's attention function finds the layer here
        return key_states, value_states

    def attend(self, query: torch.Tensor) -> torch.Tensor:
        """Append the held keys and values and attend ``query [B, H_q, n, D]`` over the cache:
        ``[B, H_q, n, D]``."""
        key_states, value_states = self._pending
        self._pending = None
        if self.cached is None:
            self.lazy_initialization(key_states, value_states, heads_q=query.shape[1])
        return self.cached(query, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """``(kv_length, kv_offset)`` of what ``update`` will return for ``query_length`` tokens:
        with a window W, keys from W - 1 positions before the first new token (kvcache's rule)."""
        start = self.get_seq_length()
        lo = 0 if self.window is None else max(0, start - (self.window - 1))
        return start + query_length - lo, lo

    def get_seq_length(self) -> int:
        return 0 if self.cached is None else self.cached.length

    def get_max_length(self) -> int:
        if self.variant.kv_cache in ("static", "paged") and self.cached is not None:
            return self.variant.kv_args.get("max_len", self.max_cache_len)
        return -1

    def cache_bytes(self) -> int:
        return 0 if self.cached is None else self.cached.cache_bytes()

    def reset(self) -> None:
        self._pending = None
        if self.cached is not None:
            self.cached.reset()

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last ``-tokens_to_remove`` tokens (transformers passes a negative count)."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to remove")
        if tokens_to_remove and self.cached is not None:
            self.cached.rollback(self.cached.length + tokens_to_remove)

    def _no_batch_edits(self, what: str) -> None:
        if self.get_seq_length():
            raise NotImplementedError(
                f"SdpalabCache does not {what} (beam search, several sequences per prompt): "
                "generate with num_beams=1 and num_return_sequences=1"
            )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._no_batch_edits("reorder its batch")

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._no_batch_edits("repeat its batch")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._no_batch_edits("select from its batch")


class SdpalabCache(Cache):
    """A transformers ``Cache`` whose layers are sdpalab KV caches of ``variant``.

    ``variant`` must have a ``kv_cache`` (``dynamic``, ``static``, ``sliding``, ``paged``) and
    may quantize it (``kv_quant``, one format or a per-layer map); ``max_cache_len`` sizes the
    preallocating layouts (static, paged) unless ``kv_args.max_len`` does; ``layers``, the
    model's decoder layers, checks a per-layer map against the model now (a map naming a layer
    the model lacks raises ``ValueError``). Layers are created on first use, one per model layer.
    """

    def __init__(
        self, variant: Variant, *, max_cache_len: int | None = None, layers: int | None = None
    ) -> None:
        cache_window(variant)  # fail now, not inside the first forward
        if layers is not None:
            layer_formats(variant.kv_quant, layers)
        self.variant = variant
        # transformers appends a layer when `update` first sees its index: the next one is
        # len(self.layers), so each layer gets its own format from the map
        super().__init__(
            layer_class_to_replicate=lambda: SdpalabLayer(
                self.layer_variant(len(self.layers)), max_cache_len
            )
        )

    def layer_variant(self, layer: int) -> Variant:
        """The Variant of layer ``layer``'s cache (counting from 0): ``variant`` with that
        layer's ``kv_quant``."""
        fmt = format_of_layer(self.variant.kv_quant, layer)
        if fmt == self.variant.kv_quant:
            return self.variant
        return dataclasses.replace(self.variant, kv_quant=fmt)

    def rollback(self, length: int) -> None:
        """Forget every layer's tokens after the first ``length`` (a timed step replayed at one
        position; ``crop``'s count convention differs between transformers versions)."""
        for layer in self.layers:
            if layer.cached is not None:
                layer.cached.rollback(length)

    def layer_bytes(self) -> list[int]:
        """Bytes each layer's storage holds, layer 0 first."""
        return [layer.cache_bytes() for layer in self.layers]

    def cache_bytes(self) -> int:
        """Bytes every layer's storage holds (values, scales, zeros, residual windows)."""
        return sum(self.layer_bytes())


def variant_cache(
    variant: Variant, max_cache_len: int, layers: int | None = None
) -> tuple[Callable[[], Cache], str]:
    """A factory of fresh caches for ``variant`` inside a model, and the cache's name.

    transformers' ``DynamicCache`` for a variant without a ``kv_cache``, else an
    :class:`SdpalabCache` holding up to ``max_cache_len`` tokens (``layers``: the model's
    decoder layers, for a per-layer ``kv_quant``). Raises ``ValueError`` now for a variant no
    cache can serve, before any run.
    """
    from transformers import DynamicCache

    if variant.kv_cache == "none":
        return DynamicCache, "DynamicCache"
    SdpalabCache(variant, max_cache_len=max_cache_len, layers=layers)  # checks, builds nothing
    name = variant.kv_cache + ("" if variant.kv_quant == "none" else f"+{variant.kv_quant}")
    make = functools.partial(SdpalabCache, variant, max_cache_len=max_cache_len, layers=layers)
    return make, f"SdpalabCache({name})"
