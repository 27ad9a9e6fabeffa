"""``sl.build(variant, workload)``: turn a Variant into a callable attention.

(The module is ``builder``, not ``build``: importing a submodule named ``build`` would rebind
``sdpalab.build`` from the function to the module.)

Stateless variants return ``attn(q, k, v) -> out`` (tensors ``[B, H, S, D]``). A variant with a
``kv_cache`` returns a stateful attention: each call appends its k, v and attends its q to
everything cached so far (causal, bottom-right aligned); ``attn.reset()`` empties it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdpalab.attention.backends import make_attend
from sdpalab.attention.errors import Unsupported
from sdpalab.spec import Variant, Workload


def oracle_mod(variant: Variant) -> tuple[str, dict[str, Any]]:
    """The mod that defines what ``build(variant)`` must compute over the whole sequence.

    A cache always attends causally: mod ``none`` means ``causal``, and a ``sliding`` cache of
    window W means ``sliding_window(W)``.
    """
    if variant.kv_cache == "sliding":
        return "sliding_window", {"window": variant.kv_args["window"]}
    if variant.kv_cache != "none" and variant.mod == "none":
        return "causal", {}
    return variant.mod, dict(variant.mod_args)


def build(variant: Variant, workload: Workload) -> Callable:
    """Build the attention that ``variant`` describes, for tensors shaped like ``workload``.

    Raises :class:`Unsupported` when the combination cannot run on this machine.
    """
    if variant.kv_quant != "none" and variant.kv_cache == "none":
        raise Unsupported("a quantized KV cache needs a kv_cache layout")
    attend = make_attend(variant.backend, *oracle_mod(variant))
    attn: Callable = attend
    if variant.kv_cache != "none":
        from sdpalab.attention.kvcache import make_cached_attention

        attn = make_cached_attention(variant, workload, attend)
    if variant.projections:
        from sdpalab.attention.projections import ProjectedAttention, quantize_projections

        module = ProjectedAttention(attn, workload.heads_q, workload.heads_kv, workload.head_dim)
        module.reference_weights = module.float64_weights()
        module = module.to(workload.device, workload.torch_dtype)
        attn = quantize_projections(module, variant.weight_quant)
    return attn
