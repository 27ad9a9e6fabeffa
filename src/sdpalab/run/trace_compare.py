"""Real against Gaussian: each variant measured on a trace layer's own q, k, v and on Gaussian
tensors of the same shapes under the same mask, side by side (``sdpalab capture --compare``).

Both sides are measured by :func:`sdpalab.run.trial.measure` with the same settings, so the two
errors differ only in the tensors: the gap is what a verdict drawn from random data misses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sdpalab.measure.result import Result
from sdpalab.run.trial import measure, on_trace
from sdpalab.spec import KV_QUANTS, MeasureSettings, TraceWorkload, Variant
from sdpalab.spec.trace import read_trace

COMPARE_VARIANTS = tuple(Variant(backend="math", kv_cache="static", kv_quant=f) for f in KV_QUANTS)
"""Every KV format on one exact kernel: the error is the format's alone."""
COMPARE_SETTINGS = MeasureSettings(warmup=0, repeats=1, memory=False)
"""Errors are what is compared: one timed call, no memory measurement."""


@dataclass(frozen=True)
class Comparison:
    """One variant on one layer: measured on the captured tensors and on Gaussian ones."""

    layer: int
    label: str
    real: Result
    gaussian: Result


def compare_to_gaussian(
    trace: str | Path,
    *,
    layers: Sequence[int] | None = None,
    variants: Sequence[Variant] = COMPARE_VARIANTS,
    phase: str = "prefill",
    dtype: str = "float32",
    device: str = "cpu",
    settings: MeasureSettings = COMPARE_SETTINGS,
) -> list[Comparison]:
    """Measure each of ``variants`` on each of ``layers`` (default: every layer of the trace),
    on the real tensors and on Gaussian tensors of the same shapes, phase, dtype and mask.

    Raises ``ValueError`` for a trace that does not exist or a layer it lacks; a variant that
    cannot run is a status on its Results, as in a sweep.
    """
    rows = []
    for layer in read_trace(trace).layers if layers is None else layers:
        real_wl = TraceWorkload(
            trace=str(trace), layer=layer, phase=phase, dtype=dtype, device=device
        )
        for variant in variants:
            # the same mask on both sides: mod none means the layer's own on the Gaussian too
            gaussian = measure(on_trace(variant, real_wl), real_wl.as_workload(), settings)
            real = measure(variant, real_wl, settings)
            rows.append(Comparison(layer, variant.label(), real, gaussian))
    return rows
