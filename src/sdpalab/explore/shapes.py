"""Goldilocks across shapes: one configuration that stays near every shape's front.

For each shape (context) the front is computed over its feasible, accurate results. A
configuration's *gap* on a shape is the multiplicative epsilon indicator against that front:
the smallest ``eps`` such that some front point is no better than the configuration by more
than a factor ``1 + eps`` on every objective. Latency is noise-aware: the combined IQR is
subtracted from a latency difference before it counts. A configuration is goldilocks when its
gap is at most ``within`` on every shape it was measured on, and it was measured on all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pandas as pd

from sdpalab.explore.objectives import (
    check_constraints,
    check_memory,
    config_key,
    config_label,
    context_label,
    context_of,
    error_tolerances,
    group_by_context,
    latency_noise,
    meets,
    objective_value,
    over_error,
    varying_fields,
)
from sdpalab.explore.pareto import pareto
from sdpalab.measure.result import Result
from sdpalab.spec import Constraints, Variant

GOLDILOCKS_OBJECTIVES = ("latency_ms", "memory")
"""Error enters as a limit (``max_error``, else each dtype's tolerance), not as a ratio: a
2x ratio between two errors far below the tolerance is not a reason to reject a choice."""


def gap(
    result: Result, front: Sequence[Result], objectives: Sequence[str], memory: str = "auto"
) -> float:
    """Multiplicative epsilon of ``result`` against ``front`` (0 when on or within noise of it)."""
    best = math.inf
    for ref in front:
        worst = 0.0
        for name in objectives:
            mine, theirs = objective_value(result, name, memory), objective_value(ref, name, memory)
            if mine is None or theirs is None:
                continue
            if name == "latency_ms":
                mine = max(theirs, mine - latency_noise(result, ref))
            ratio = (0.0 if mine <= 0 else math.inf) if theirs <= 0 else mine / theirs - 1.0
            worst = max(worst, ratio)
        best = min(best, worst)
    return best


def goldilocks_across_shapes(
    results: Iterable[Result],
    within: float = 0.10,
    objectives: Sequence[str] = GOLDILOCKS_OBJECTIVES,
    *,
    constraints: Constraints | None = None,
    include_all: bool = False,
    memory: str = "auto",
) -> pd.DataFrame:
    """Configurations (variant + dtype) within ``within`` (0.10 = 10 %) of every shape's front.

    Returns one row per configuration measured ``ok`` and feasible on every shape, sorted by
    its worst gap: ``label``, ``variant`` (``sl.Variant(...)``), ``dtype``, ``worst_gap``,
    ``goldilocks`` (bool), and one ``gap[<shape>]`` column per shape. A configuration that
    failed, broke a limit of ``constraints`` or exceeded the error tolerance (a quality limit,
    else its tolerance: :func:`~sdpalab.explore.objectives.over_error`) on any shape is left
    out. Only the goldilocks rows unless
    ``include_all``. ``memory``: the memory measure
    (:data:`~sdpalab.explore.objectives.MEMORY_MEASURES`).
    """
    if not within >= 0:
        raise ValueError(f"within={within!r} must be a non-negative fraction (0.10 = 10 %)")
    constraints = check_constraints(constraints)
    memory = check_memory(memory)
    results = list(results)
    groups = group_by_context(results)
    contexts = [context_of(g[0]) for g in groups.values()]
    fields = varying_fields(contexts)
    names = [context_label(c, fields) for c in contexts]

    def accurate(res: Result, tolerance: float | None) -> bool:
        return over_error(res, constraints, tolerance) is None

    per_config: dict[str, dict[str, Result]] = {}
    fronts = {}
    for (key, group), name in zip(groups.items(), names, strict=True):
        tols = error_tolerances(group)
        good = [
            r
            for r, tol in zip(group, tols, strict=True)
            if meets(r, constraints, memory) and accurate(r, tol)
        ]
        fronts[key] = pareto(good, objectives, memory=memory)
        for res in good:
            per_config.setdefault(config_key(res), {})[name] = res

    rows = []
    for cfg in per_config.values():
        if len(cfg) < len(groups):
            continue
        gaps = {
            name: gap(cfg[name], fronts[key], objectives, memory)
            for key, name in zip(groups, names, strict=True)
        }
        any_res = next(iter(cfg.values()))
        row = {
            "label": config_label(any_res),
            "variant": Variant(**any_res.variant).python(),
            "dtype": any_res.workload.get("dtype"),
            "worst_gap": max(gaps.values()),
        }
        row["goldilocks"] = row["worst_gap"] <= within
        row.update({f"gap[{name}]": value for name, value in gaps.items()})
        rows.append(row)
    columns = [
        "label",
        "variant",
        "dtype",
        "worst_gap",
        "goldilocks",
        *[f"gap[{n}]" for n in names],
    ]
    table = pd.DataFrame(rows, columns=columns)
    if not table.empty:
        table = table.sort_values("worst_gap", kind="stable").reset_index(drop=True)
    if not include_all:
        table = table[table["goldilocks"].astype(bool)].reset_index(drop=True)
    return table
