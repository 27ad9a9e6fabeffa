"""The search space of a config: its choice axes, its shapes, and the trial at each point.

Every choice axis of a variant (``backend``, ``mod`` with its arguments, ``kv_cache``,
``kv_quant``, ``kv_args.*``, ``weight_quant``, ``projections``) and the compute ``dtype`` is a
parameter: categorical, or an integer level index for a numeric axis (so TPE and GP see the
order of sizes). The shape of the work is not a choice: each shape is a context of its own.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sdpalab.spec import CONTEXT_FIELDS, SIZE_FIELDS, Trial

INSTALL = "pip install 'sdpalab[search]'"


def import_optuna():
    """Optuna, quiet; a missing one names the install command."""
    try:
        import optuna
    except ImportError:
        raise ImportError(f"search needs optuna: {INSTALL}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@functools.cache
def trial_constraints() -> bool:
    """Whether this Optuna takes constraints from the trials (``Trial.set_constraint``, 5 and
    later; it deprecates the samplers' ``constraints_func``)."""
    return hasattr(import_optuna().trial.Trial, "set_constraint")


def choice_point(trial: Trial) -> dict[str, Any]:
    """A trial's position on the choice axes (variant fields, flattened, and ``dtype``)."""
    var, point = trial.variant_spec, {}
    for key, value in var.items():
        if key == "mod":
            args = var.get("mod_args") or {}
            inner = ",".join(f"{k}={v}" for k, v in sorted(args.items()))
            point["mod"] = f"{value}({inner})" if inner else value
        elif key == "kv_args":
            for arg, arg_value in (value or {}).items():
                point[f"kv_args.{arg}"] = arg_value
        elif key != "mod_args":
            point[key] = value
    point["dtype"] = trial.workload_spec.get("dtype")
    return point


def context_of_trial(trial: Trial) -> dict[str, Any]:
    spec = trial.workload_spec
    return {k: spec.get(k) for k in CONTEXT_FIELDS if k in spec}


@dataclass
class Space:
    """The choice axes of a config and the trial at each (shape, point)."""

    axes: dict[str, tuple]
    """Axis → its levels (sorted; numbers for a numeric axis)."""
    numeric: set[str]
    contexts: list[dict[str, Any]]
    """Shapes, smallest first."""
    table: dict[tuple[int, tuple], Trial]
    """(shape index, point as a tuple of levels in axis order) → Trial."""

    @classmethod
    def from_trials(cls, trials: Sequence[Trial]) -> Space:
        points = [choice_point(t) for t in trials]
        keys = sorted({k for p in points for k in p})
        for p in points:
            for k in keys:
                p.setdefault(k, None)
        axes, numeric = {}, set()
        for key in keys:
            values = {json.dumps(p[key], sort_keys=True, default=str): p[key] for p in points}
            if len(values) < 2:
                continue
            levels = list(values.values())
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in levels):
                numeric.add(key)
                axes[key] = tuple(sorted(levels))
            else:
                axes[key] = tuple(sorted(levels, key=lambda v: str(v)))
        contexts: list[dict[str, Any]] = []
        for trial in trials:
            ctx = context_of_trial(trial)
            if ctx not in contexts:
                contexts.append(ctx)
        contexts.sort(key=_size)
        table = {}
        for trial, point in zip(trials, points, strict=True):
            key = (contexts.index(context_of_trial(trial)), tuple(point[a] for a in axes))
            table.setdefault(key, trial)
        return cls(axes, numeric, contexts, table)

    def param_name(self, axis: str) -> str:
        return f"{axis} (level)" if axis in self.numeric else axis

    def distributions(self) -> dict[str, Any]:
        optuna = import_optuna()
        dist = {}
        for axis, levels in self.axes.items():
            if axis in self.numeric:
                dist[self.param_name(axis)] = optuna.distributions.IntDistribution(
                    0, len(levels) - 1
                )
            else:
                choices = [
                    v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
                    for v in levels
                ]
                dist[axis] = optuna.distributions.CategoricalDistribution(choices)
        return dist

    def point_of(self, params: dict[str, Any]) -> tuple:
        out = []
        for axis, levels in self.axes.items():
            value = params[self.param_name(axis)]
            if axis in self.numeric:
                out.append(levels[int(value)])
            else:
                out.append(next(v for v in levels if v == value or str(v) == str(value)))
        return tuple(out)

    def params_of(self, point: tuple) -> dict[str, Any]:
        dist = self.distributions()
        out = {}
        for (axis, levels), value in zip(self.axes.items(), point, strict=True):
            name = self.param_name(axis)
            if axis in self.numeric:
                out[name] = levels.index(value)
            else:
                choices = dist[name].choices
                out[name] = next(c for c in choices if c == value or str(c) == str(value))
        return out

    def valid_points(self, ctx: int) -> list[tuple]:
        return [point for (c, point) in self.table if c == ctx]


def _size(ctx: dict[str, Any]) -> tuple:
    return (math.prod(int(ctx.get(k) or 1) for k in SIZE_FIELDS), json.dumps(ctx, default=str))
