"""The factors of a sensitivity analysis: which fields vary among results, and the table rows.

An *axis* is a variant or workload field that varies among the results: ``backend``, ``mod``
(with its arguments folded in when they are not crossed with it, e.g.
``sliding_window(window=64)``), ``kv_quant``, ``kv_args.group_size``, ``seq_kv``, ``batch``,
``dtype``... Fields that move in lockstep (prefill's ``seq_q`` with ``seq_kv``) are one axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdpalab.measure.result import Result
from sdpalab.spec.variant import mod_text

COLUMNS = ["axis", "objective", "method", "importance", "ci_low", "ci_high", "note"]


@dataclass(frozen=True)
class Axis:
    name: str
    levels: tuple
    """Sorted distinct values (numbers for an ordinal axis)."""
    ordinal: bool
    moves_with: tuple[str, ...] = ()
    """Other fields that vary in lockstep with this one (prefill's ``seq_q`` with ``seq_kv``):
    one factor, analysed once under this name."""

    @property
    def log(self) -> bool:
        return self.ordinal and min(self.levels) > 0 and max(self.levels) / min(self.levels) >= 4


def point_of(result: Result) -> dict[str, Any]:
    """A result's position on every axis (variant and workload fields, flattened)."""
    var, point = result.variant, {}
    for key, value in var.items():
        if key in ("mod_args", "kv_args"):
            for arg, arg_value in (value or {}).items():
                point[f"{key}.{arg}"] = arg_value
        else:
            point[key] = value
    for key, value in result.workload.items():
        if key == "mod" and value is not None:  # the mask the workload means, as one axis
            point["workload.mod"] = mod_text(value, result.workload.get("mod_args"))
        elif key not in ("mod", "mod_args"):
            point[key] = value
    return point


def axes_of(results: Sequence[Result]) -> tuple[list[Axis], list[dict[str, Any]]]:
    """The axes along which ``results`` vary, and each result's point on them.

    A ``mod_args.*`` field that some results lack (it belongs to some mods only) is folded
    into the ``mod`` axis (``sliding_window(window=64)``), since it is not an independent factor.
    Fields that move in lockstep (each determines the other) are one axis.
    """
    points = [point_of(r) for r in results]
    keys = sorted({k for p in points for k in p})
    partial = [k for k in keys if k.startswith("mod_args.") and any(k not in p for p in points)]
    if partial:
        for res, point in zip(results, points, strict=True):
            args = res.variant.get("mod_args") or {}
            if args:
                inner = ",".join(f"{k}={v}" for k, v in sorted(args.items()))
                point["mod"] = f"{point['mod']}({inner})"
            for key in list(point):
                if key.startswith("mod_args."):
                    del point[key]
        keys = sorted({k for p in points for k in p})
    axes = []
    for key in keys:
        values = [p.get(key) for p in points]
        distinct = {json_key(v) for v in values}
        if len(distinct) < 2:
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            levels = tuple(sorted(set(values)))
        else:
            levels = tuple(sorted({_label(v) for v in values}))
            for p in points:
                p[key] = _label(p.get(key))
        twin = next((a for a in axes if _lockstep(points, a.name, key)), None)
        if twin is not None:
            axes[axes.index(twin)] = Axis(
                twin.name, twin.levels, twin.ordinal, (*twin.moves_with, key)
            )
            continue
        axes.append(Axis(key, levels, numeric))
    return axes, [{a.name: p[a.name] for a in axes} for p in points]


def _lockstep(points: Sequence[dict[str, Any]], a: str, b: str) -> bool:
    forward: dict[str, str] = {}
    backward: dict[str, str] = {}
    for p in points:
        x, y = json_key(p.get(a)), json_key(p.get(b))
        if forward.setdefault(x, y) != y or backward.setdefault(y, x) != x:
            return False
    return True


def json_key(value: Any) -> str:
    return repr(value)


def _label(value: Any) -> str:
    return "default" if value is None else str(value)


def axis_note(axis: Axis, results: Sequence[Result], points: Sequence[dict]) -> str:
    """What a reader needs about one axis: its kind, its lockstep twins, a mask's sparsity."""
    parts = []
    if not axis.ordinal:
        parts.append(f"categorical, {len(axis.levels)} levels")
    if axis.moves_with:
        parts.append(f"{', '.join(axis.moves_with)} moves with it")
    if axis.name == "mod":
        masked: dict[str, list[float]] = {}
        for res, point in zip(results, points, strict=True):
            if res.allowed_fraction is not None:
                masked.setdefault(point["mod"], []).append(1.0 - res.allowed_fraction)
        if masked:
            shown = ", ".join(
                f"{lvl} {_percent(v)}"
                for lvl, v in sorted(masked.items(), key=lambda kv: np.mean(kv[1]))
            )
            parts.append(f"mask sparsity (share of scores skipped) by level: {shown}")
    return "; " + "; ".join(parts) if parts else ""


def _percent(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    if hi - lo < 0.005:
        return f"{lo:.0%}"
    return f"{lo:.0%}-{hi:.0%}"


def empty_row(objective: str, method: str, why: str) -> dict[str, Any]:
    return {
        "axis": "",
        "objective": objective,
        "method": method,
        "importance": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "note": why,
    }


def row(axis, objective, method, importance, low, high, note) -> dict[str, Any]:
    return {
        "axis": axis,
        "objective": objective,
        "method": method,
        "importance": float(importance),
        "ci_low": float(low),
        "ci_high": float(high),
        "note": note,
    }
