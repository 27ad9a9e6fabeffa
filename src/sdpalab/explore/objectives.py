"""The vocabulary of the analyses: objectives, limits (constraints) and contexts (shapes).

Objectives are minimized. A *context* is the shape of the work (phase, batch, heads, sequence
lengths, head dim, device): a configuration competes only with others measured on the same
shape. ``dtype`` is a choice, not a context, so float32 and bfloat16 variants of one shape
compete with each other. A *configuration* is a variant plus its dtype.

The default memory objective is ``peak_mem_total_bytes`` (inputs + KV cache + the call's own
peak), not ``peak_mem_bytes`` (the call's peak above inputs and cache): for a decode step the
cache is the memory that a quantized KV cache saves, and the total is what a budget such as
``--max-memory 2GiB`` limits. For prefill the two differ by the same input bytes for every
variant of a shape, so they rank variants identically. ``"memory"`` names it in any objective
list.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sdpalab.measure.result import Result
from sdpalab.spec import CONTEXT_FIELDS, Constraints

OBJECTIVES = ("latency_ms", "peak_mem_total_bytes", "rel_fro_err")
"""Default objectives, all minimized."""
ERROR_FLOOR = 1e-12
"""Errors are compared in log space; an exact 0 counts as this."""
_MEMORY = ("peak_mem_total_bytes", "peak_mem_bytes")
_LIMITED = {"max_error": "rel_fro_err", "max_memory": "memory", "max_latency_ms": "latency_ms"}
"""Each limit of :class:`Constraints` and the objective it bounds."""

# --------------------------------------------------------------------------- limits


def check_constraints(constraints: Constraints | None) -> Constraints:
    """``constraints`` (``None``: no limit), every limit it sets checked to be positive."""
    constraints = Constraints() if constraints is None else constraints
    for name, value in constraints.to_dict().items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is not None and not (number and value > 0):
            raise ValueError(f"{name}={value!r} must be a positive number")
    return constraints


def memory_of(result: Result) -> float | None:
    """The memory a budget limits: the total peak, else the peak above inputs."""
    for name in _MEMORY:
        value = getattr(result, name, None)
        if value is not None:
            return float(value)
    return None


def constraint_values(result: Result, constraints: Constraints) -> dict[str, float]:
    """Optuna-style constraint values (``<= 0`` means met), one per set limit.

    ``log10(value / limit)``: scale-free, so a 2x overshoot weighs the same for every limit.
    A failed trial, or a missing value, violates every limit by ``FAILED_VIOLATION``.
    """
    out = {}
    for name, bound in constraints.to_dict().items():
        if bound is None:
            continue
        value = objective_value(result, _LIMITED[name])
        if not result.ok or value is None or not math.isfinite(value):
            out[name] = FAILED_VIOLATION
        else:
            out[name] = math.log10(max(value, ERROR_FLOOR) / bound)
    return out


FAILED_VIOLATION = 10.0
"""Constraint value of a failed trial: ten decades over every limit."""


def meets(result: Result, constraints: Constraints) -> bool:
    """True for an ``ok`` result within every set limit."""
    return result.ok and all(v <= 0 for v in constraint_values(result, constraints).values())


# --------------------------------------------------------------------------- contexts


def context_of(result: Result) -> dict[str, Any]:
    """The shape a result was measured on (its workload without ``dtype``)."""
    return {k: result.workload.get(k) for k in CONTEXT_FIELDS if k in result.workload}


def context_key(result: Result) -> str:
    return json.dumps(context_of(result), sort_keys=True, default=str)


def config_key(result: Result) -> str:
    """A configuration: the variant plus the compute dtype."""
    return json.dumps(
        {"variant": result.variant, "dtype": result.workload.get("dtype")},
        sort_keys=True,
        default=str,
    )


def config_label(result: Result) -> str:
    label = result.label or str(result.variant)
    return f"{label} [{result.workload.get('dtype')}]"


def group_by_context(results: Iterable[Result]) -> dict[str, list[Result]]:
    groups: dict[str, list[Result]] = {}
    for res in results:
        groups.setdefault(context_key(res), []).append(res)
    return groups


def context_label(context: Mapping[str, Any], varying: Iterable[str] | None = None) -> str:
    """``seq_kv=1024, batch=2`` (only the ``varying`` fields when given)."""
    keys = [k for k in CONTEXT_FIELDS if k in context and (varying is None or k in varying)]
    return ", ".join(f"{k}={context[k]}" for k in keys) or "all"


def varying_fields(contexts: Sequence[Mapping[str, Any]]) -> list[str]:
    return [k for k in CONTEXT_FIELDS if len({str(c.get(k)) for c in contexts}) > 1]


# --------------------------------------------------------------------------- objectives


def objective_value(result: Result, name: str) -> float | None:
    value = memory_of(result) if name == "memory" else getattr(result, name, None)
    return None if value is None else float(value)


def objective_matrix(results: Sequence[Result], objectives: Sequence[str]) -> np.ndarray:
    """``[len(results), len(objectives)]`` objective values, NaN where one is not measured."""
    return np.array(
        [[objective_value(r, o) for o in objectives] for r in results], dtype=float
    ).reshape(len(results), len(objectives))


def latency_noise(a: Result, b: Result) -> float:
    """Latency difference below which ``a`` and ``b`` tie: their IQRs combined in quadrature."""
    return math.hypot(a.latency_iqr_ms or 0.0, b.latency_iqr_ms or 0.0)


def check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    if isinstance(objectives, str):
        objectives = (objectives,)
    valid = {f for f in Result.__dataclass_fields__ if f.endswith(("_ms", "_bytes", "_err"))}
    for name in objectives:
        if name != "memory" and name not in valid:
            raise ValueError(
                f"objective {name!r} is not valid; choose from: memory, {', '.join(sorted(valid))}"
            )
    if not objectives:
        raise ValueError("objectives must name at least one Result field")
    return tuple(objectives)
