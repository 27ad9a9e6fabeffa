"""The case study's three experiments, laid out as ``[B, H, S, D]`` and run with sdpalab.

How its tensors map onto ``[B, H, S, D]``:

- KV cache and quantization built ``(seq_len, hidden, hidden)`` tensors and handed them to SDPA,
  which reads a 3-D tensor as ``(N, L, E)``: every leading dimension is a batch. So its
  "sequence length" was a batch of independent problems, and ``hidden`` was both the sequence
  length and the head dimension. We keep exactly the problem SDPA saw:
  ``B = seq_len, H = 1, S = hidden, D = hidden``. With one head the projection width
  ``H·D`` is ``hidden``, the ``Linear(hidden, hidden)`` of the case study's notebook.
- FlexAttention built ``(batch, seq_len, hidden, hidden)``, which flex reads as
  ``[B, H, S, D]``: ``B = batch, H = seq_len, S = hidden, D = hidden``. Its "sequence length"
  was the number of heads.

Tensors are float32 (the case study's dtype) on whatever device is present.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from sdpalab.casestudy.published import Published, published_for
from sdpalab.measure.result import Result
from sdpalab.spec import MeasureSettings, Variant, Workload

KV_SIZES = ((4, 16), (8, 32), (10, 64), (12, 128))
"""(seq_len, hidden) pairs of the KV cache and quantization experiments."""
FLEX_SIZES = ((8, 8, 64), (16, 16, 128), (32, 32, 256))
"""(batch, seq_len, hidden) of the FlexAttention experiment."""
QUICK_KV_SIZES = KV_SIZES[:2]
QUICK_FLEX_SIZES = FLEX_SIZES[:1]
WEIGHT_QUANTS = ("none", "int8_dynamic", "int8_weight_only")


@dataclass(frozen=True)
class Trial:
    """One configuration of one experiment, with the published result it sits beside."""

    experiment: str
    their_params: tuple[tuple[str, int], ...]
    variant: Variant
    workload: Workload
    role: str
    """What this row is: ``prefill``, ``decode step``, a weight quantization, ``flex no_op``…"""
    published: Published | None = None

    def their_shape(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.their_params)

    def our_shape(self) -> str:
        wl = self.workload
        q = f"[{wl.batch}, {wl.heads_q}, {wl.seq_q}, {wl.head_dim}]"
        return q if wl.seq_q == wl.seq_kv else f"{q} vs kv {wl.seq_kv}"


def trials(device: str, quick: bool = False) -> Iterator[Trial]:
    """Every trial of the three experiments, in the case study's order."""
    kv_sizes = QUICK_KV_SIZES if quick else KV_SIZES
    for seq_len, hidden in kv_sizes:
        params = (("seq_len", seq_len), ("hidden", hidden))
        cached = Variant(backend="auto", kv_cache="dynamic")
        # Their one profiled call filled an empty cache with `hidden` tokens: a prefill.
        prefill = Workload(
            phase="prefill", batch=seq_len, heads_q=1, seq_kv=hidden, head_dim=hidden, device=device
        )
        yield Trial(
            "kv_cache",
            params,
            cached,
            prefill,
            "prefill into the cache",
            published_for("kv_cache", seq_len=seq_len, hidden=hidden),
        )
        # What a cache is for: one new token against the `hidden` tokens cached before it.
        decode = Workload(
            phase="decode",
            batch=seq_len,
            heads_q=1,
            seq_kv=hidden + 1,
            seq_q=1,
            head_dim=hidden,
            device=device,
        )
        yield Trial("kv_cache", params, cached, decode, "decode step")
    for seq_len, hidden in kv_sizes:
        params = (("seq_len", seq_len), ("hidden", hidden))
        wl = Workload(
            phase="prefill", batch=seq_len, heads_q=1, seq_kv=hidden, head_dim=hidden, device=device
        )
        for quant in WEIGHT_QUANTS:
            arm = {"none": "non-quantized", "int8_dynamic": "quantized"}.get(quant, "")
            yield Trial(
                "quantization",
                params,
                Variant(backend="auto", projections=True, weight_quant=quant),
                wl,
                f"projections {quant}",
                published_for("quantization", arm, seq_len=seq_len, hidden=hidden) if arm else None,
            )
    for batch, seq_len, hidden in QUICK_FLEX_SIZES if quick else FLEX_SIZES:
        params = (("batch", batch), ("seq_len", seq_len), ("hidden", hidden))
        wl = Workload(
            phase="prefill",
            batch=batch,
            heads_q=seq_len,
            seq_kv=hidden,
            head_dim=hidden,
            device=device,
        )
        yield Trial(
            "flex",
            params,
            Variant(backend="flex", mod="none"),
            wl,
            "flex no_op",
            published_for("flex", batch=batch, seq_len=seq_len, hidden=hidden),
        )
        # The baseline the case study compared against in words only.
        yield Trial("flex", params, Variant(backend="auto"), wl, "SDPA baseline")


def settings_for(trial: Trial, quick: bool) -> MeasureSettings:
    """Fewer repeats where one call is long (the largest CPU FlexAttention sizes)."""
    wl = trial.workload
    work = wl.batch * wl.heads_q * wl.seq_q * wl.seq_kv * wl.head_dim
    slow = torch.device(wl.device).type == "cpu" and work > 1 << 27
    if quick:
        return MeasureSettings(warmup=1, repeats=5)
    return MeasureSettings(warmup=1, repeats=5) if slow else MeasureSettings(warmup=3, repeats=20)


def one_call(variant: Variant, workload: Workload, seed: int = 0) -> Callable[[], torch.Tensor]:
    """A zero-argument function that makes the call a trial measures, once per invocation.

    For a cached variant each invocation first rolls the cache back to the context (empty for
    prefill), so every call does the same work. Used to profile the same call that
    ``sl.measure`` timed.
    """
    from sdpalab.build import build

    attn = build(variant, workload)
    gen = torch.Generator().manual_seed(seed)
    wl = workload

    def rand(heads: int, length: int) -> torch.Tensor:
        x = torch.randn(wl.batch, heads, length, wl.head_dim, generator=gen)
        return x.to(wl.device, wl.torch_dtype)

    q, k, v = rand(wl.heads_q, wl.seq_q), rand(wl.heads_kv, wl.seq_kv), rand(wl.heads_kv, wl.seq_kv)
    if variant.kv_cache == "none":
        return lambda: attn(q, k, v)
    cache = getattr(attn, "attn", attn)
    context = wl.seq_kv - wl.seq_q
    attn.reset()
    if context:
        attn(rand(wl.heads_q, context), k[:, :, :context], v[:, :, :context])

    def call() -> torch.Tensor:
        cache.rollback(context)
        return attn(q, k[:, :, context:], v[:, :, context:])

    return call


@dataclass
class Row:
    """A measured trial: the Result, plus the case study's own "memory" figure taken our way."""

    trial: Trial
    result: Result
    profiler_cpu_total_ms: float | None = None
    """What the case study's profile() prints as "Memory Profile" for this same call."""
