"""The Pareto front of measured results, and the hypervolume of a set of points.

Objectives are minimized, per context (shape): see :mod:`sdpalab.explore.objectives`, which
also says when two results tie (latency within the combined IQR, error within the dtype's
tolerance). A point dominates another when it is at least as good on every objective (a tie
counts as equal) and better, beyond a tie, on one: so a tie on one objective is broken by the
next. Ties make dominance intransitive (1.0 ~ 1.4 ~ 1.8 ms, yet 1.0 beats 1.8), so a point
leaves the front only for a dominator that is on it: points are settled in dominance order
(a point after everything that dominates it), and a point joins the front when none of its
dominators did. Without ties this is the usual set of non-dominated points.

:func:`front_of` is the one function that computes a front: the CLI's ``pareto``, the HTML
report's tables and plots, and the JSON all call it (through :func:`pareto`). The
recommendation built on the front is :mod:`sdpalab.explore.recommend`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from sdpalab.explore.objectives import (
    OBJECTIVES,
    check_constraints,
    check_memory,
    check_objectives,
    error_tolerances,
    group_by_context,
    meets,
    objective_matrix,
    tie_matrix,
)
from sdpalab.measure.result import Result
from sdpalab.spec import Constraints

# --------------------------------------------------------------------------- dominance


def dominance(values: np.ndarray, ties: np.ndarray | None = None) -> np.ndarray:
    """``out[i, j]`` is True when row ``i`` dominates row ``j`` (minimization).

    ``values`` is ``[n, k]``; ``ties`` (``[n, n, k]`` bool) marks pairs equal on an objective
    within their noise or tolerance: neither is better there.
    """
    a, b = values[:, None, :], values[None, :, :]  # a: candidate dominator i, b: point j
    le, lt = a <= b, a < b
    if ties is not None:
        le, lt = le | ties, lt & ~ties
    return le.all(-1) & lt.any(-1)


def dominated_mask(values: np.ndarray, ties: np.ndarray | None = None) -> np.ndarray:
    """``out[j]`` is True when ``j`` is off the front: some point on it dominates ``j``."""
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    return ~settle(dominance(values, ties))


def settle(dom: np.ndarray) -> np.ndarray:
    """Which points are on the front, given ``dom[i, j]`` (``i`` dominates ``j``).

    Points are settled once all their dominators are; a point is on the front when none of its
    dominators is. Points caught in a cycle of ties (rare) stay unless a front point dominates
    them.
    """
    n = len(dom)
    on = np.zeros(n, dtype=bool)
    settled = np.zeros(n, dtype=bool)
    while not settled.all():
        ready = ~settled & ~(dom & ~settled[:, None]).any(axis=0)
        if not ready.any():
            ready = ~settled
        on[ready] = ~(dom & on[:, None]).any(axis=0)[ready]
        settled |= ready
    return on


@dataclass
class Front:
    """One shape's front, and why every other candidate is not on it."""

    members: list[Result]
    dominated: list[tuple[Result, Result]] = field(default_factory=list)
    """``(result, a front member that dominates it)``."""
    unmeasured: list[tuple[Result, str]] = field(default_factory=list)
    """``(result, the objective it lacks)``."""


def front_of(
    group: Sequence[Result],
    objectives: Sequence[str] = OBJECTIVES,
    *,
    memory: str = "auto",
    noise_aware: bool = True,
    tolerances: Sequence[float | None] | None = None,
) -> Front:
    """The front of one shape's ``group`` (feasibility not checked), in input order.

    An objective that no candidate measured (memory with ``measure.memory: false``) is left out
    rather than emptying the front; a result missing one the others have is not a candidate.
    ``noise_aware=False`` compares every value exactly (no ties). ``tolerances``: each result's
    error tolerance (default :func:`~sdpalab.explore.objectives.error_tolerances` of
    ``group``).
    """
    group = list(group)
    if tolerances is None:
        tolerances = error_tolerances(group)
    vals = objective_matrix(group, objectives, memory)
    measured = ~np.isnan(vals).all(axis=0) if len(group) else np.ones(len(objectives), bool)
    names = [o for o, m in zip(objectives, measured, strict=True) if m]
    vals = vals[:, measured]
    keep = np.isfinite(vals).all(axis=1)
    front = Front([])
    for res, k, row in zip(group, keep, vals, strict=True):
        if not k:
            missing = names[int(np.argmin(np.isfinite(row)))]
            front.unmeasured.append((res, missing))
    group = [r for r, k in zip(group, keep, strict=True) if k]
    tolerances = [t for t, k in zip(tolerances, keep, strict=True) if k]
    vals = vals[keep]
    ties = tie_matrix(group, vals, names, tolerances) if noise_aware else None
    dom = dominance(vals, ties)
    on = settle(dom)
    for j, res in enumerate(group):
        if on[j]:
            front.members.append(res)
        else:
            by = [i for i in range(len(group)) if on[i] and dom[i, j]]
            if by:  # the strongest dominator: the one ahead on most objectives
                best = max(by, key=lambda i: int((vals[i] < vals[j]).sum()))
                front.dominated.append((res, group[best]))
    return front


def pareto(
    results: Iterable[Result],
    objectives: Sequence[str] = OBJECTIVES,
    *,
    memory: str = "auto",
    noise_aware: bool = True,
    constraints: Constraints | None = None,
) -> list[Result]:
    """The non-dominated feasible results, per context (shape), in input order.

    Feasible: ``status == "ok"``, every objective measured, and within ``constraints``.
    Objectives are minimized; ``"memory"`` is the measure ``memory`` names (``auto``:
    persistent for decode, total peak otherwise; see :mod:`sdpalab.explore.objectives`), and
    ``max_memory`` limits the same measure. With ``noise_aware``, results equal within their
    noise (latency) or tolerance (error) tie, and the next objective decides.
    """
    objectives = check_objectives(objectives)
    constraints = check_constraints(constraints)
    memory = check_memory(memory)
    pool = latest(results)
    # tolerances from every result, feasible or not: a model's gate is what its lossless
    # variants show, whether or not they fit the limits
    tolerances = dict(zip(map(id, pool), error_tolerances(pool), strict=True))
    candidates = [r for r in pool if meets(r, constraints, memory)]
    front_ids = set()
    for group in group_by_context(candidates).values():
        tols = [tolerances[id(r)] for r in group]
        found = front_of(group, objectives, memory=memory, noise_aware=noise_aware, tolerances=tols)
        front_ids |= {id(r) for r in found.members}
    return [r for r in candidates if id(r) in front_ids]


def latest(results: Iterable[Result]) -> list[Result]:
    """``results`` with a trial measured twice counted once: its latest."""
    out = {}
    for res in results:
        out[res.trial_id or id(res)] = res
    return list(out.values())


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
