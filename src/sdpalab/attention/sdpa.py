"""PyTorch SDPA backends, pinned with ``sdpa_kernel``; GQA through ``enable_gqa``.

Masks are passed the way each backend can best take them: ``is_causal`` for square causal,
``causal_lower_right`` for causal with ``q_len < kv_len`` (bottom-right, which SDPA's own
``is_causal`` is not), a materialized boolean mask otherwise, and an additive float bias for
additive score mods (rebuilt every call while its table learns, so the gradient reaches it). A
backend that refuses raises :class:`Unsupported` with torch's reasons.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from sdpalab.attention.errors import Unsupported
from sdpalab.attention.mods import Mod, dense_bias, dense_mask, make_mod

SDPA_KERNELS = {
    "math": [SDPBackend.MATH],
    "flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "auto": None,
}


@functools.lru_cache(maxsize=64)
def _materialized(mod: Mod, heads: int, q_len: int, kv_len: int, device: str, dtype):
    """Mask or bias tensor for one geometry, cached: built once, reused by every call."""
    if mod.mask_mod is not None:
        return dense_mask(mod, heads, q_len, kv_len, device).contiguous()
    if not mod.additive:
        raise Unsupported(
            f"mod {mod.name!r} changes scores non-additively; SDPA takes only a mask or an "
            "additive bias (use backend flex or eager)"
        )
    return dense_bias(mod, heads, q_len, kv_len, device, dtype).contiguous()


def clear_cache() -> None:
    """Drop the materialized masks and biases (they belong to one trial's geometry)."""
    _materialized.cache_clear()


def sdpa_arguments(mod_name: str, mod_args: dict, q: torch.Tensor, k: torch.Tensor) -> dict:
    """``attn_mask`` / ``is_causal`` for SDPA that express the mod at this geometry."""
    q_len, kv_len, heads = q.shape[-2], k.shape[-2], q.shape[1]
    if mod_name == "none":
        return {}
    if mod_name == "causal":
        if q_len == 1:  # one query at the last position sees every key: no mask at all
            return {}
        if q_len == kv_len:
            return {"is_causal": True}
        return {"attn_mask": causal_lower_right(q_len, kv_len)}
    mod = make_mod(
        mod_name, mod_args, q_len=q_len, kv_len=kv_len, heads=heads, device=str(q.device)
    )
    if mod.trainable():  # a learned bias: built from its params each call, so grads reach them
        return {"attn_mask": dense_bias(mod, heads, q_len, kv_len, q.device, q.dtype)}
    return {"attn_mask": _materialized(mod, heads, q_len, kv_len, str(q.device), q.dtype)}


def _reasons(messages) -> str:
    """torch's refusal warnings, minus source locations and notes about other backends."""
    kept = []
    for message in messages:
        text = re.sub(r"\s*\(Triggered internally at [^)]*\)\.?", "", message).strip()
        if text and not text.endswith("because:") and "runtime disabled" not in text:
            kept.append(text)
    return "; ".join(dict.fromkeys(kept))


def make_sdpa(backend: str, mod_name: str, mod_args: dict) -> Callable:
    """Attention through ``F.scaled_dot_product_attention`` restricted to one backend."""
    kernels = SDPA_KERNELS[backend]

    def attend(q_BHSD, k_BHSD, v_BHSD):
        kwargs = sdpa_arguments(mod_name, mod_args, q_BHSD, k_BHSD)
        gqa = q_BHSD.shape[1] != k_BHSD.shape[1]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if kernels is None:
                    return F.scaled_dot_product_attention(
                        q_BHSD, k_BHSD, v_BHSD, enable_gqa=gqa, **kwargs
                    )
                with sdpa_kernel(kernels):
                    return F.scaled_dot_product_attention(
                        q_BHSD, k_BHSD, v_BHSD, enable_gqa=gqa, **kwargs
                    )
            except RuntimeError as err:
                if "No viable backend" not in str(err) and "No available kernel" not in str(err):
                    raise
                reasons = _reasons(str(w.message) for w in caught)
                raise Unsupported(
                    f"SDPA backend {backend!r} cannot run this on {q_BHSD.device.type} "
                    f"({q_BHSD.dtype}, mod {mod_name})"
                    + (f": {reasons}" if reasons else ": torch has no such kernel for this device")
                ) from None

    return attend
