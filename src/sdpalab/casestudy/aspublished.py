"""The case study's code, reduced to the logic that its results depend on: the "as published"
baseline that the corrections measure against. Nothing else in sdpalab uses it.

Layouts are the case study's own: its ``CachedSDPA`` documents ``[heads, seq_len, head_dim]``
and grows the cache along dim 1, so these functions take 3-D tensors ``[N, S, D]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function


class CachedSDPA(nn.Module):
    """The case study's KV cache, logic unchanged: concatenate along dim 1, store
    ``cur_len = k.shape[2]`` (the head dimension in this layout, not the length), and call SDPA
    with ``is_causal=True``, which PyTorch aligns top-left: a single new query then sees only
    the first cached key."""

    def __init__(self) -> None:
        super().__init__()
        self.reset_cache()

    def forward(self, q_NSD, k_NSD, v_NSD, is_causal: bool = True):
        if self.cache_k is not None:
            k_NSD = torch.cat([self.cache_k, k_NSD], dim=1)
            v_NSD = torch.cat([self.cache_v, v_NSD], dim=1)
        self.cache_k, self.cache_v = k_NSD, v_NSD
        self.cur_len = k_NSD.shape[2]
        return F.scaled_dot_product_attention(q_NSD, k_NSD, v_NSD, is_causal=is_causal)

    def reset_cache(self) -> None:
        self.cache_k = self.cache_v = None
        self.cur_len = 0


class SmolAttention(nn.Module):
    """The blog's module for the quantization experiment: SDPA and no ``Linear`` at all."""

    def forward(self, query, key, value):
        return F.scaled_dot_product_attention(query, key, value)


def their_activity(q: torch.Tensor) -> ProfilerActivity:
    """The case study's device test, verbatim: ``self.q.device == "cuda"``. A ``torch.device``
    never equals a string, so this is CPU on every device."""
    return ProfilerActivity.CUDA if q.device == "cuda" else ProfilerActivity.CPU


def their_profile(fn, q: torch.Tensor) -> profile:
    """One call of ``fn()`` under the profiler set up as ``PerformanceAnalysis.profile`` did."""
    with profile(activities=[their_activity(q)], record_shapes=True, profile_memory=True) as prof:
        with record_function("model_inference"):
            fn()
        if q.is_cuda:
            torch.cuda.synchronize(q.device)
    return prof


def cpu_time_total_ms(prof: profile) -> float:
    """The number the case study printed as "Memory Profile: CPU Total Time": the footer
    "Self CPU time total" of ``key_averages().table()``, in milliseconds."""
    return prof.key_averages().self_cpu_time_total / 1e3


def unscaled_attention(q_NSD, k_NSD, v_NSD, softmax_dim: int = -1) -> torch.Tensor:
    """The notebook's attention core: ``softmax(q kᵀ) v`` with no ``1/sqrt(d)`` scale.

    Its ``F.softmax(out)`` had no ``dim``; for a 3-D tensor PyTorch's implicit choice is dim 0
    (pass ``softmax_dim=0`` to reproduce that too).
    """
    return torch.softmax(q_NSD @ k_NSD.transpose(-2, -1), dim=softmax_dim) @ v_NSD
