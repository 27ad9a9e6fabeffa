"""sdpalab: find the attention configuration that fits your workload and budget.

import sdpalab as sl
wl = sl.Workload(phase="prefill", batch=2, heads_q=8, heads_kv=2, seq_q=1024, seq_kv=1024,
                 head_dim=64, dtype="float32", device="cpu")
var = sl.Variant(backend="flex", mod="sliding_window", mod_args={"window": 256})
attn = sl.build(var, wl)        # attn(q, k, v) -> out, tensors [B, H, S, D]
res = sl.measure(var, wl)       # Result: latency, peak memory, error vs float64, ...

Specs: :class:`Workload`, :class:`ModelWorkload`, :class:`Variant`, :class:`MeasureSettings`,
:class:`Constraints`. One configuration: :func:`build`, :func:`measure` (a :class:`Result`;
a failure is a status, :class:`Unsupported` says why something cannot run); any callable:
:class:`PerformanceAnalysis`. A config's grid: :func:`load_spec`, :func:`sweep`, :func:`search`
into a run directory, read back with :func:`load`. Fronts, recommendations and sensitivity:
:mod:`sdpalab.explore`; reports: :mod:`sdpalab.report` and the ``sdpalab`` command.
"""

from __future__ import annotations

import os

# The CPU profiler (used for peak memory) prints two lines per session at kineto's default log
# level; level 6 keeps them out of users' terminals. An explicit setting wins.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

from sdpalab.analysis import PerformanceAnalysis
from sdpalab.attention.errors import Unsupported
from sdpalab.build import build
from sdpalab.explore.grid import sweep
from sdpalab.explore.search import search
from sdpalab.measure.result import Result
from sdpalab.run.rundir import load
from sdpalab.run.trial import measure
from sdpalab.spec import Constraints, MeasureSettings, ModelWorkload, Variant, Workload
from sdpalab.spec.config import load_spec

__version__ = "0.1.0"

__all__ = [
    "Constraints",
    "MeasureSettings",
    "ModelWorkload",
    "PerformanceAnalysis",
    "Result",
    "Unsupported",
    "Variant",
    "Workload",
    "build",
    "load",
    "load_spec",
    "measure",
    "search",
    "sweep",
]
