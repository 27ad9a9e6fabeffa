"""Pure instruments, one small module per quantity: timing, memory, accuracy, roofline,
profiler, provenance, and the :class:`Result` record they fill. They import only torch and the
standard library, so a worker runs them on a bare GPU image. Trials that use them live in
:mod:`sdpalab.run`."""

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
