"""The Pareto front of measured results, and the hypervolume of a set of points.

Objectives are minimized, per context (shape): see :mod:`sdpalab.explore.objectives`. Latency
is noise-aware: two points whose median latencies differ by less than
``sqrt(iqr_a**2 + iqr_b**2)`` tie on latency (neither dominates the other on it). The
recommendation built on the front is :mod:`sdpalab.explore.recommend`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from sdpalab.explore.objectives import (
    OBJECTIVES,
    check_constraints,
    check_objectives,
    group_by_context,
    meets,
    objective_matrix,
)
from sdpalab.measure.result import Result
from sdpalab.spec import Constraints

# --------------------------------------------------------------------------- dominance


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
    constraints: Constraints | None = None,
) -> list[Result]:
    """The non-dominated feasible results, per context (shape), in input order.

    Feasible: ``status == "ok"``, every objective measured, and within ``constraints``.
    Objectives are minimized; ``"memory"`` means ``peak_mem_total_bytes`` (else
    ``peak_mem_bytes``). With ``noise_aware``, latencies within the combined IQR tie. An
    objective that no candidate measured (memory with ``measure.memory: false``) is left out
    rather than emptying the front.
    """
    objectives = check_objectives(objectives)
    constraints = check_constraints(constraints)
    latest = {}
    for res in results:  # a trial measured twice counts once: the latest
        latest[res.trial_id or id(res)] = res
    candidates = [r for r in latest.values() if meets(r, constraints)]
    front_ids = set()
    for group in group_by_context(candidates).values():
        for res in group_front(group, objectives, noise_aware=noise_aware):
            front_ids.add(id(res))
    return [r for r in candidates if id(r) in front_ids]


def group_front(
    group: list[Result], objectives: Sequence[str], *, noise_aware: bool = True
) -> list[Result]:
    """The non-dominated results of one shape's ``group``, feasibility not checked."""
    vals = objective_matrix(group, objectives)
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
