"""q/k/v/o ``Linear`` projections around any attention, optionally quantized with torchao.

The case study quantized a module with no ``Linear`` in it (so nothing was quantized). Here the
projections exist: each of q, k, v is projected per position across its heads
(``[B, H, S, D] → [B, S, H·D] → Linear → [B, H, S, D]``), attention runs, and the output is
projected back by ``o``. The float64 oracle applies the same, unquantized weights, so the error
it reports includes what weight quantization costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from sdpalab.attention.errors import Unsupported

TORCHAO_CONFIGS = {
    "int8_weight_only": "Int8WeightOnlyConfig",
    "int8_dynamic": "Int8DynamicActivationInt8WeightConfig",
    "int4_weight_only": "Int4WeightOnlyConfig",
}


def _heads_to_hidden(x_BHSD: torch.Tensor) -> torch.Tensor:
    b, h, s, d = x_BHSD.shape
    return x_BHSD.transpose(1, 2).reshape(b, s, h * d)


def _hidden_to_heads(x_BSE: torch.Tensor, heads: int) -> torch.Tensor:
    b, s, e = x_BSE.shape
    return x_BSE.view(b, s, heads, e // heads).transpose(1, 2)


class ProjectedAttention(nn.Module):
    """``out = o(attn(q(x_q), k(x_k), v(x_v)))`` with inputs and output ``[B, H, S, D]``."""

    def __init__(self, attn: Callable, heads_q: int, heads_kv: int, head_dim: int, seed: int = 0):
        super().__init__()
        self.attn, self.heads_q, self.heads_kv = attn, heads_q, heads_kv
        gen = torch.Generator().manual_seed(seed)
        self.q, self.o = (self._linear(heads_q * head_dim, gen) for _ in range(2))
        self.k, self.v = (self._linear(heads_kv * head_dim, gen) for _ in range(2))

    @staticmethod
    def _linear(width: int, gen: torch.Generator) -> nn.Linear:
        layer = nn.Linear(width, width, bias=False)
        with torch.no_grad():  # variance-preserving, so attention sees O(1) inputs
            layer.weight.copy_(torch.randn(width, width, generator=gen) / math.sqrt(width))
        return layer

    def forward(self, q_BHSD, k_BHSD, v_BHSD):
        q = _hidden_to_heads(self.q(_heads_to_hidden(q_BHSD)), self.heads_q)
        k = _hidden_to_heads(self.k(_heads_to_hidden(k_BHSD)), self.heads_kv)
        v = _hidden_to_heads(self.v(_heads_to_hidden(v_BHSD)), self.heads_kv)
        out = self.attn(q.contiguous(), k.contiguous(), v.contiguous())
        return _hidden_to_heads(self.o(_heads_to_hidden(out)), self.heads_q)

    def reset(self) -> None:
        if hasattr(self.attn, "reset"):
            self.attn.reset()

    def float64_weights(self) -> dict[str, torch.Tensor]:
        """The unquantized weights in float64 (take them before quantizing)."""
        return {
            n: getattr(self, n).weight.detach().to("cpu", torch.float64).clone() for n in "qkvo"
        }


def quantize_projections(module: ProjectedAttention, weight_quant: str) -> ProjectedAttention:
    """Quantize the q/k/v/o Linears in place with torchao ``quantize_``."""
    if weight_quant == "none":
        return module
    try:
        import torchao.quantization as tq
    except ImportError:
        raise Unsupported(
            "weight quantization needs torchao: pip install 'sdpalab[quant]' (or pip install torchao)"
        ) from None
    config = getattr(tq, TORCHAO_CONFIGS[weight_quant])()
    try:
        tq.quantize_(module, config, filter_fn=lambda m, _: isinstance(m, nn.Linear))
    except (ImportError, RuntimeError, NotImplementedError, AssertionError) as err:
        raise Unsupported(f"torchao {weight_quant} cannot run here: {err}") from None
    return module


def projected_ref(
    weights: dict[str, torch.Tensor],
    ref_attn: Callable,
    q_BHSD: torch.Tensor,
    k_BHSD: torch.Tensor,
    v_BHSD: torch.Tensor,
    heads_q: int,
    heads_kv: int,
) -> torch.Tensor:
    """The float64 oracle of :class:`ProjectedAttention` given float64 weights and a reference
    attention ``ref_attn(q, k, v)``; inputs on any device, result in float64 on the CPU."""

    def lin(x_BHSD, w, heads):
        return _hidden_to_heads(_heads_to_hidden(x_BHSD.to("cpu", torch.float64)) @ w.T, heads)

    out = ref_attn(
        lin(q_BHSD, weights["q"], heads_q),
        lin(k_BHSD, weights["k"], heads_kv),
        lin(v_BHSD, weights["v"], heads_kv),
    )
    return lin(out, weights["o"], heads_q)
