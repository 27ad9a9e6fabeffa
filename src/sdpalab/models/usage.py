"""The lines that put a Variant into a user's own transformers model: what a recommendation on a
model workload prints, so that the configuration it measured is the one the user runs."""

from __future__ import annotations

from sdpalab.attention.kvlayers import is_layer_map
from sdpalab.spec import Variant


def cache_kwarg() -> str:
    """The keyword ``generate`` takes a cache by in the installed transformers, as its decoders'
    forward names it (:func:`~sdpalab.models.loading.cache_argument`); ``cache`` where
    transformers is not installed here (a run read on another machine)."""
    try:
        from transformers import LlamaForCausalLM
    except ImportError:
        return "cache"
    from sdpalab.models.loading import cache_argument

    return cache_argument(LlamaForCausalLM)  # the signature of its forward, read off the class


def transformers_snippet(
    variant: Variant, *, dtype: str | None = None, new_tokens: int = 64
) -> str:
    """Python that registers ``variant``'s attention in a transformers decoder and generates
    ``new_tokens`` tokens greedily through its cache (an ``SdpalabCache`` when it has a
    ``kv_cache``). It runs as is where ``model`` (the decoder, in eval mode) and ``ids`` (its
    ``input_ids [B, S]``, unpadded) are defined; ``dtype``: the one it was measured in, noted."""
    cached = variant.kv_cache != "none"
    measured = f" (measured in {dtype})" if dtype else ""
    lines = [
        "import torch",
        "",
        "import sdpalab as sl",
        "from sdpalab.models.attention import apply_variant",
    ]
    if cached:
        lines.append("from sdpalab.models.cache import SdpalabCache")
    lines += [
        "",
        f"# model: your decoder{measured}; ids: its input_ids [B, S], unpadded",
        f"variant = {variant.python()}",
        "apply_variant(model, variant)  # sdpalab's attention function, registered and selected",
    ]
    given = ""
    if cached:
        # a per-layer map is checked against the model's layers before anything runs
        layers = ", layers=model.config.num_hidden_layers" if is_layer_map(variant.kv_quant) else ""
        lines.append(
            f"cache = SdpalabCache(variant, max_cache_len=ids.shape[1] + {new_tokens}{layers})"
        )
        given = f", {cache_kwarg()}=cache"
    lines += [
        f"out = model.generate(ids, attention_mask=torch.ones_like(ids){given},",
        f"                     max_new_tokens={new_tokens}, do_sample=False)",
    ]
    return "\n".join(lines)
