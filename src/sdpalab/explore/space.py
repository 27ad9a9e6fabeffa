"""The search space of a config: its choice axes, its shapes, and the trial at each point.

Every choice axis of a variant (``backend``, ``mod`` with its arguments, ``kv_cache``,
``kv_quant``, ``kv_args.*``, ``weight_quant``, ``projections``) and the compute ``dtype`` is a
parameter: categorical, or an integer level index for a numeric axis (so TPE and GP see the
order of sizes). The shape of the work is not a choice, nor the attention it means (a workload
that names no mask means each variant's own): each is a context of its own, searched by a study
of its own over the axes that vary among its points.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sdpalab.explore.objectives import context_from
from sdpalab.spec import SIZE_FIELDS, Trial

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
    """The trial's context, as its Result's will be (shape and the attention it means)."""
    return context_from(trial.workload_spec, trial.variant_spec)


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
    _levels: dict[tuple[str, int], tuple] = field(default_factory=dict, repr=False)

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

    def levels(self, axis: str, ctx: int | None = None) -> tuple:
        """``axis``'s levels: all of them, or (``ctx``) those shape ``ctx``'s points hold."""
        if ctx is None:
            return self.axes[axis]
        cached = self._levels.get((axis, ctx))
        if cached is None:
            at = list(self.axes).index(axis)
            held = {_key(point[at]) for (c, point) in self.table if c == ctx}
            cached = tuple(v for v in self.axes[axis] if _key(v) in held)
            self._levels[(axis, ctx)] = cached
        return cached

    def free(self, ctx: int | None = None) -> list[str]:
        """The axes a study of shape ``ctx`` chooses on: those with two levels or more there
        (every axis when ``ctx`` is None). An axis that one shape holds at one level (a mask
        that is part of the shape, a cache only decode runs) is no choice there."""
        return [a for a in self.axes if len(self.levels(a, ctx)) > 1]

    def distributions(self, ctx: int | None = None) -> dict[str, Any]:
        """Optuna distributions of the :meth:`free` axes of shape ``ctx`` (None: all)."""
        optuna = import_optuna()
        dist = {}
        for axis in self.free(ctx):
            levels = self.levels(axis, ctx)
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

    def point_of(self, params: dict[str, Any], ctx: int | None = None) -> tuple:
        """The point a study's ``params`` name (axes fixed in shape ``ctx`` at their level)."""
        out, free = [], set(self.free(ctx))
        for axis in self.axes:
            levels = self.levels(axis, ctx)
            if axis not in free:
                out.append(levels[0])
                continue
            value = params[self.param_name(axis)]
            if axis in self.numeric:
                out.append(levels[int(value)])
            else:
                out.append(next(v for v in levels if v == value or str(v) == str(value)))
        return tuple(out)

    def params_of(self, point: tuple, ctx: int | None = None) -> dict[str, Any]:
        """The params of a study of shape ``ctx`` that name ``point``."""
        dist, free = self.distributions(ctx), set(self.free(ctx))
        out = {}
        for axis, value in zip(self.axes, point, strict=True):
            if axis not in free:
                continue
            name = self.param_name(axis)
            if axis in self.numeric:
                out[name] = self.levels(axis, ctx).index(value)
            else:
                choices = dist[name].choices
                out[name] = next(c for c in choices if c == value or str(c) == str(value))
        return out

    def valid_points(self, ctx: int) -> list[tuple]:
        return [point for (c, point) in self.table if c == ctx]


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _size(ctx: dict[str, Any]) -> tuple:
    return (math.prod(int(ctx.get(k) or 1) for k in SIZE_FIELDS), json.dumps(ctx, default=str))
