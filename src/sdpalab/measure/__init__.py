"""Measurement, one small module per quantity: timing, memory, accuracy, roofline, profiler,
provenance. These modules import only torch (and the standard library)."""

import sys
import types

from sdpalab.measure.accuracy import Accuracy, compare, tolerance
from sdpalab.measure.memory import MemoryPeak, peak_memory
from sdpalab.measure.profiler import export_trace, kernels_ran, top_ops
from sdpalab.measure.provenance import provenance
from sdpalab.measure.roofline import (
    Ceilings,
    attention_bytes,
    attention_flops,
    load_ceilings,
    measure_ceilings,
    save_ceilings,
    throughput,
)
from sdpalab.measure.timing import Timing, summarize, time_fn

__all__ = [
    "Accuracy",
    "Ceilings",
    "MemoryPeak",
    "Timing",
    "attention_bytes",
    "attention_flops",
    "compare",
    "export_trace",
    "kernels_ran",
    "load_ceilings",
    "measure_ceilings",
    "peak_memory",
    "provenance",
    "save_ceilings",
    "summarize",
    "throughput",
    "time_fn",
    "tolerance",
    "top_ops",
]


class _CallableModule(types.ModuleType):
    """``sl.measure(variant, workload)`` is the public API, and ``sdpalab.measure`` is also this
    package: importing a submodule rebinds ``sdpalab.measure`` to the package, so the package
    itself is made callable and forwards to :func:`sdpalab.measure.trial.measure`."""

    def __call__(self, variant, workload, settings=None):
        from sdpalab.measure.trial import measure

        return measure(variant, workload, settings)


sys.modules[__name__].__class__ = _CallableModule
