"""The Pareto front of measured results, and the hypervolume of a set of points.

Objectives are minimized, per context (shape): see :mod:`sdpalab.explore.objectives`. Latency
is noise-aware: two points whose median latencies differ by less than
``sqrt(iqr_a**2 + iqr_b**2)`` tie on latency (neither dominates the other on it). The
recommendation built on the front is :mod:`sdpalab.explore.recommend` (also importable from
here).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from sdpalab.explore.objectives import (
    CONTEXT_FIELDS,
    ERROR_FLOOR,
    FAILED_VIOLATION,
    LIMIT_NAMES,
    OBJECTIVES,
    check_objectives,
    config_key,
    config_label,
    constraint_values,
    context_key,
    context_label,
    context_of,
    group_by_context,
    latency_noise,
    limits,
    meets,
    memory_of,
    objective_value,
    parse_bytes,
    varying_fields,
)
from sdpalab.measure.result import Result

__all__ = [
    "CONTEXT_FIELDS",
    "ERROR_FLOOR",
    "FAILED_VIOLATION",
    "LIMIT_NAMES",
    "OBJECTIVES",
    "config_key",
    "config_label",
    "constraint_values",
    "context_key",
    "context_label",
    "context_of",
    "dominated_mask",
    "group_by_context",
    "hypervolume",
    "latency_noise",
    "limits",
    "meets",
    "memory_of",
    "objective_value",
    "pareto",
    "parse_bytes",
    "varying_fields",
]


def __getattr__(name: str):
    # the recommendation has its own module; it stays importable from here
    if name in ("recommend", "Recommendation"):
        from sdpalab.explore import recommend as module

        return getattr(module, name)
    raise AttributeError(f"module 'sdpalab.explore.pareto' has no attribute {name!r}")


# --------------------------------------------------------------------------- dominance


def _matrix(results: Sequence[Result], objectives: Sequence[str]) -> np.ndarray:
    vals = np.array(
        [[objective_value(r, o) for o in objectives] for r in results], dtype=float
    ).reshape(len(results), len(objectives))
    return vals


def dominated_mask(
    values: np.ndarray, iqr: np.ndarray | None = None, latency_col: int | None = None
) -> np.ndarray:
    """``out[j]`` is True when some row dominates row ``j`` (minimization).

    ``values`` is ``[n, k]``. With ``iqr`` (``[n]``) and ``latency_col``, the latency column
    compares noise-aware: a difference within the combined IQR is a tie.
    """
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=bool)
    a, b = values[:, None, :], values[None, :, :]  # a: candidate dominator i, b: point j
    le, lt = a <= b, a < b
    if iqr is not None and latency_col is not None:
        diff = b[..., latency_col] - a[..., latency_col]  # [i, j]: j's latency minus i's
        noise = np.hypot(iqr[:, None], iqr[None, :])
        le[..., latency_col] = diff >= -noise
        lt[..., latency_col] = diff > noise
    dom = le.all(-1) & lt.any(-1)
    return dom.any(axis=0)


def pareto(
    results: Iterable[Result],
    objectives: Sequence[str] = OBJECTIVES,
    *,
    noise_aware: bool = True,
    constraints: Any = None,
) -> list[Result]:
    """The non-dominated feasible results, per context (shape), in input order.

    Feasible: ``status == "ok"``, every objective measured, and within ``constraints`` (a
    mapping or object with ``max_error``, ``max_memory``, ``max_latency_ms``). Objectives are
    minimized; ``"memory"`` means ``peak_mem_total_bytes`` (else ``peak_mem_bytes``). With
    ``noise_aware``, latencies within the combined IQR tie. An objective that no candidate
    measured (memory with ``measure.memory: false``) is left out rather than emptying the front.
    """
    objectives = check_objectives(objectives)
    limit = limits(constraints)
    latest = {}
    for res in results:  # a trial measured twice counts once: the latest
        latest[res.trial_id or id(res)] = res
    candidates = [r for r in latest.values() if meets(r, limit)]
    front_ids = set()
    for group in group_by_context(candidates).values():
        for res in _front(group, objectives, noise_aware):
            front_ids.add(id(res))
    return [r for r in candidates if id(r) in front_ids]


def _front(group: list[Result], objectives: Sequence[str], noise_aware: bool) -> list[Result]:
    vals = _matrix(group, objectives)
    measured = ~np.isnan(vals).all(axis=0)  # drop objectives no candidate has
    objectives = [o for o, m in zip(objectives, measured, strict=True) if m]
    vals = vals[:, measured]
    keep = ~np.isnan(vals).any(axis=1) & np.isfinite(vals).all(axis=1)
    group = [r for r, k in zip(group, keep, strict=True) if k]
    vals = vals[keep]
    iqr, col = None, None
    if noise_aware and "latency_ms" in objectives:
        col = objectives.index("latency_ms")
        iqr = np.array([r.latency_iqr_ms or 0.0 for r in group], dtype=float)
    dominated = dominated_mask(vals, iqr, col)
    return [r for r, d in zip(group, dominated, strict=True) if not d]


# --------------------------------------------------------------------------- hypervolume


def hypervolume(points: np.ndarray, ref: Sequence[float]) -> float:
    """Exact hypervolume (minimization) of ``points`` ``[n, k]`` against ``ref`` ``[k]``.

    Points not strictly better than ``ref`` in every coordinate add nothing. Slices along the
    last coordinate recursively (HSO): fine for the fronts of a sweep (hundreds of points).
    """
    pts = np.asarray(points, dtype=float).reshape(-1, len(ref))
    ref = np.asarray(ref, dtype=float)
    pts = pts[(pts < ref).all(axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = pts[~dominated_mask(pts)]
    return _hv(pts, ref)


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    if pts.shape[1] == 1:
        return float(ref[0] - pts[:, 0].min())
    order = np.argsort(pts[:, -1])
    pts = pts[order]
    volume = 0.0
    for i in range(len(pts)):
        upper = pts[i + 1, -1] if i + 1 < len(pts) else ref[-1]
        depth = upper - pts[i, -1]
        if depth > 0:
            volume += depth * _hv(_nondominated(pts[: i + 1, :-1]), ref[:-1])
    return volume


def _nondominated(pts: np.ndarray) -> np.ndarray:
    return pts[~dominated_mask(pts)] if len(pts) > 1 else pts
