"""sdpalab Variants as Hugging Face transformers attention implementations.

    import sdpalab as sl
    from sdpalab.models.attention import register_variant

    name = register_variant(sl.Variant(backend="flash"))
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=name)
    # or: model.set_attn_implementation(name)

transformers (v5) looks an ``attn_implementation`` name up twice: in ``AttentionInterface`` for
the function each attention module calls with ``[B, H, S, D]`` query/key/value (after its own
cache update), and in ``AttentionMaskInterface`` for the function that turns the model's mask
pattern and the 2D padding mask into what that attention function receives. A name missing from
the second table gets ``attention_mask=None`` whatever the pattern was, so padding, sliding-window
layers and the like would be silently lost. :func:`register_variant` registers both: the mask
function answers ``None`` exactly when the mask is the model's plain pattern (causal aligned
bottom-right, or bidirectional) without padding, which the variant's own mod then applies; any
other pattern arrives materialized and the attention function refuses it with a clear error.

Which mod runs inside a model follows the model: a causal decoder needs a mask no looser than
causal (``none`` means ``causal``; ``sliding_window`` and causal ``document`` narrow it), a
bidirectional encoder takes no causal mask (``none``, score mods, non-causal ``document``).
GQA is passed through as is (no repeated K/V heads).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sdpalab.attention.backends import make_attend
from sdpalab.attention.mods import validate_mod
from sdpalab.build import oracle_mod
from sdpalab.spec import Variant

INSTALL = "pip install 'sdpalab[transformers]'"
_DECODER_MODS = "causal, sliding_window, or document with causal=true"
_ENCODER_MODS = "none, alibi, softcap, relative_bias, or document with causal=false"
UNSUPPORTED_KWARGS = ("softcap", "position_bias", "s_aux", "sinks")
"""Attention-function arguments some models pass that an sdpalab attend cannot apply: with any
of them, a layer's attention is more than softmax(q k^T) v."""


def require_transformers():
    """Import transformers, or fail with the install command."""
    try:
        import transformers
    except ModuleNotFoundError as err:
        if err.name != "transformers":  # installed, but something it needs is not
            raise
        raise ImportError(f"transformers is not installed: {INSTALL}") from None
    return transformers


def model_mod(variant: Variant, *, causal: bool) -> tuple[str, dict[str, Any]]:
    """The mod ``variant`` applies in a model's attention: causal (decoder) or not (encoder).

    Raises ``ValueError`` when the variant would break the model's masking: a mod that lets a
    decoder's query see later keys (or drops its causal mask), a causal mask in an encoder, or
    a KV cache on an encoder.
    """
    mod, args = oracle_mod(variant)
    is_causal_doc = mod == "document" and validate_mod(mod, args)["causal"]
    if causal:
        if mod == "none":
            return "causal", {}
        if mod in ("causal", "sliding_window") or is_causal_doc:
            return mod, args
        why = "changes scores but drops the causal mask"
        if mod in ("prefix_lm", "document"):
            why = "lets queries see later keys"
        raise ValueError(
            f"mod {mod!r} cannot run in a causal decoder ({why}); choose {_DECODER_MODS}"
        )
    if variant.kv_cache != "none":
        raise ValueError(
            f"kv_cache={variant.kv_cache!r} needs a decoder; this model's attention is "
            "bidirectional (an encoder): use kv_cache none"
        )
    if mod in ("causal", "sliding_window", "prefix_lm") or is_causal_doc:
        raise ValueError(
            f"mod {mod!r} masks by causal order, but this model's attention is bidirectional "
            f"(an encoder); choose {_ENCODER_MODS}"
        )
    return mod, args


class VariantAttention:
    """The transformers attention function of one Variant.

    Called as ``fn(module, query, key, value, attention_mask, dropout=, scaling=, ...)`` with
    ``query [B, H_q, q_len, D]`` and ``key``/``value [B, H_kv, kv_len, D]`` (everything cached,
    this step included); returns ``(out [B, q_len, H_q, D], None)``. Queries sit at the end of
    the keys (bottom-right alignment).
    """

    def __init__(self, variant: Variant, name: str) -> None:
        if variant.projections:
            raise ValueError(
                f"variant {variant.label()!r} quantizes sdpalab's own q/k/v/o projections; a "
                "model keeps its own: use weight_quant none"
            )
        self.variant, self.name = variant, name
        self._attends: dict[bool, Any] = {}

    def attend_for(self, causal: bool):
        """The stateless attend for a causal or a bidirectional module (built once each)."""
        if causal not in self._attends:
            mod, args = model_mod(self.variant, causal=causal)
            self._attends[causal] = make_attend(self.variant.backend, mod, args)
        return self._attends[causal]

    def __call__(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        is_causal: bool | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        if attention_mask is not None:
            raise ValueError(
                f"attention {self.name!r} applies the variant's own mask and got an explicit one "
                "(padding, a static cache, or a model-specific pattern such as sliding-window "
                "layers): pass unpadded inputs with a dynamic or sdpalab cache, or use "
                "attn_implementation='sdpa'"
            )
        if dropout:
            raise ValueError(f"attention {self.name!r} has no dropout: call model.eval()")
        for arg in UNSUPPORTED_KWARGS:
            if kwargs.get(arg) is not None:
                raise ValueError(
                    f"this model passes {arg}=, which attention {self.name!r} cannot apply; "
                    "use attn_implementation='eager'"
                )
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        head_dim = query.shape[-1]
        # sdpalab attends with 1/sqrt(D); a model with another scale gets it folded into q.
        if scaling is not None and not math.isclose(scaling * math.sqrt(head_dim), 1.0):
            query = query * (scaling * math.sqrt(head_dim))
        layer = getattr(key, "sdpalab_layer", None)
        if layer is not None:  # an SdpalabCache layer that attends itself (models/cache.py)
            out = layer.attend(query)
        else:
            out = self.attend_for(bool(causal))(query, key, value)
        return out.transpose(1, 2).contiguous(), None


def variant_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """The ``AttentionMaskInterface`` entry of every sdpalab attention name.

    ``None`` when the mask is the model's plain pattern with no padding: causal with the queries
    at the end of the keys (what the variant's causal mods assume; the keys may start past 0 in a
    sliding cache), or bidirectional over all of them. Anything
    else (padding, offsets, windows, overlays) is materialized as transformers' boolean SDPA
    mask ``[B, 1, q_len, kv_len]``, which :class:`VariantAttention` refuses rather than drop.
    """
    from transformers.masking_utils import (
        bidirectional_mask_function,
        causal_mask_function,
        prepare_padding_mask,
        sdpa_mask,
    )

    mask_function = mask_function or causal_mask_function
    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
    if padding is not None:
        padding = padding[:, kv_offset : kv_offset + kv_length]
    unpadded = padding is None or bool(padding.all())
    unwindowed = local_size is None or kv_length < local_size
    causal_end = mask_function is causal_mask_function and (
        int(q_offset) + q_length == kv_offset + kv_length
    )
    full = mask_function is bidirectional_mask_function and kv_offset == 0
    if unpadded and unwindowed and (causal_end or full):
        return None
    kwargs.pop("allow_is_causal_skip", None)
    kwargs.pop("allow_is_bidirectional_skip", None)
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        mask_function=mask_function,
        attention_mask=attention_mask,
        local_size=local_size,
        allow_is_causal_skip=False,
        allow_is_bidirectional_skip=False,
        **kwargs,
    )


def default_name(variant: Variant) -> str:
    """A readable implementation name, e.g. ``sl:math:causal``.

    transformers reads meaning into names (``flash`` asks for flash-attn, ``owner/repo`` for a
    hub kernel, ``paged|`` for its paged path, ``sdpa``/``flex_attention`` trigger their own
    checks), so those never appear.
    """
    return "sl:" + variant.label().replace("/", ":").replace("flash", "fa")


def register_variant(variant: Variant, name: str | None = None) -> str:
    """Register ``variant`` as a transformers attention implementation; return its name.

    Select it with ``from_pretrained(..., attn_implementation=name)`` or
    ``model.set_attn_implementation(name)``. Registering the same name again replaces it.
    """
    require_transformers()
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    name = name or default_name(variant)
    reserved = ("flash", "sdpa", "flex_attention", "/", "|")
    if any(word in name for word in reserved) or name == "eager":
        raise ValueError(
            f"attention name {name!r} would be read by transformers as one of its own; "
            f"avoid {', '.join(reserved)} and the name 'eager'"
        )
    AttentionInterface.register(name, VariantAttention(variant, name))
    AttentionMaskInterface.register(name, variant_mask)
    return name


def attention_kinds(model: torch.nn.Module) -> set[bool]:
    """Which attention kinds a model has: ``True`` for causal modules, ``False`` for others."""
    return {
        module.is_causal
        for module in model.modules()
        if isinstance(getattr(module, "is_causal", None), bool) and hasattr(module, "config")
    }


def apply_variant(model: torch.nn.Module, variant: Variant, name: str | None = None) -> str:
    """Register ``variant`` and switch ``model`` to it; return the name.

    Checks first that every attention kind in the model can run the variant (``ValueError``
    naming the mods that fit), so a bad combination fails before any forward.
    """
    for causal in attention_kinds(model) or {True}:
        model_mod(variant, causal=causal)
    name = register_variant(variant, name)
    model.set_attn_implementation(name)
    return name
