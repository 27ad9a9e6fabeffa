"""The specs every other module reads: what the work is (:class:`Workload`,
:class:`ModelWorkload`, :class:`TraceWorkload` on a file of :mod:`~sdpalab.spec.trace`), which
configuration runs it (:class:`Variant`), how it is measured (:class:`MeasureSettings`), what
an answer must meet (:class:`Constraints`), and a sweep's grid of :class:`Trial` s
(:class:`SweepSpec`). YAML configs load through :mod:`sdpalab.spec.config`, whose models derive
from these dataclasses.
"""

from sdpalab.spec.settings import Constraints, MeasureSettings
from sdpalab.spec.sweep import Grid, SweepSpec, Trial, dump_spec, trial_id
from sdpalab.spec.variant import KV_ARGS, KV_CACHES, KV_QUANTS, WEIGHT_QUANTS, Variant
from sdpalab.spec.workload import (
    BUILTIN_MODELS,
    CONTEXT_FIELDS,
    DTYPES,
    PHASES,
    SIZE_FIELDS,
    ModelWorkload,
    TraceWorkload,
    Workload,
    is_model_workload,
    resolve_device,
    supported_dtypes,
    workload_from_dict,
    workload_kind,
)

__all__ = [
    "BUILTIN_MODELS",
    "CONTEXT_FIELDS",
    "DTYPES",
    "KV_ARGS",
    "KV_CACHES",
    "KV_QUANTS",
    "PHASES",
    "SIZE_FIELDS",
    "WEIGHT_QUANTS",
    "Constraints",
    "Grid",
    "MeasureSettings",
    "ModelWorkload",
    "SweepSpec",
    "TraceWorkload",
    "Trial",
    "Variant",
    "Workload",
    "dump_spec",
    "is_model_workload",
    "resolve_device",
    "supported_dtypes",
    "trial_id",
    "workload_from_dict",
    "workload_kind",
]
