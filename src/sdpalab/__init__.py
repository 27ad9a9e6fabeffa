"""sdpalab: find the attention configuration that fits your workload and budget.

import sdpalab as sl
wl = sl.Workload(phase="prefill", batch=2, heads_q=8, heads_kv=2, seq_q=1024, seq_kv=1024,
                 head_dim=64, dtype="float32", device="cpu")
var = sl.Variant(backend="flex", mod="sliding_window", mod_args={"window": 256})
attn = sl.build(var, wl)        # attn(q, k, v) -> out, tensors [B, H, S, D]
res = sl.measure(var, wl)       # Result: latency, peak memory, error vs float64, ...
"""

from __future__ import annotations

import importlib
import os

from sdpalab.spec import Variant, Workload

__version__ = "0.1.0"

# The CPU profiler (used for peak memory) prints two lines per session at kineto's default log
# level; level 6 keeps them out of users' terminals. An explicit setting wins.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

_LAZY = {
    "build": "sdpalab.builder",
    "Result": "sdpalab.measure.result",
    "MeasureSettings": "sdpalab.measure.result",
    "PerformanceAnalysis": "sdpalab.analysis",
    "Unsupported": "sdpalab.attention.errors",
    "attention_ref": "sdpalab.attention.reference",
    "bench_model": "sdpalab.integrations.bench_model",
    "sweep": "sdpalab.explore.grid",
    "Results": "sdpalab.explore.grid",
    "load_spec": "sdpalab.config",
    "load": "sdpalab.report.load",
    "search": "sdpalab.explore.search",
    "pareto": "sdpalab.explore.pareto",
    "recommend": "sdpalab.explore.recommend",
    "sensitivity": "sdpalab.explore.sensitivity",
    "goldilocks_across_shapes": "sdpalab.explore.shapes",
}

__all__ = ["Variant", "Workload", "measure", *_LAZY]


def __getattr__(name: str):
    if name == "measure":  # the package is callable: sl.measure(variant, workload)
        return importlib.import_module("sdpalab.measure")
    # Heavy pieces load on first use, so `import sdpalab` stays fast for the CLI.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sdpalab' has no attribute {name!r}")
