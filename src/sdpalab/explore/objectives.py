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
from pathlib import Path
from typing import Any

from sdpalab.measure.result import Result

OBJECTIVES = ("latency_ms", "peak_mem_total_bytes", "rel_fro_err")
"""Default objectives, all minimized."""
CONTEXT_FIELDS = (
    "model",
    "phase",
    "batch",
    "heads_q",
    "heads_kv",
    "seq_q",
    "seq_kv",
    "head_dim",
    "prompt_len",
    "new_tokens",
    "device",
)
"""Workload fields that describe the work itself; ``dtype`` is left out: it is a choice. A
model workload has ``model``, ``prompt_len`` and ``new_tokens`` and none of the attention
shape's fields (and the other way round); a context holds only the fields its workload has."""
LIMIT_NAMES = ("max_error", "max_memory", "max_latency_ms")
ERROR_FLOOR = 1e-12
"""Errors are compared in log space; an exact 0 counts as this."""
_MEMORY = ("peak_mem_total_bytes", "peak_mem_bytes")

# --------------------------------------------------------------------------- limits


def limits(constraints: Any = None, **overrides: Any) -> dict[str, float | None]:
    """Constraint limits as ``{max_error, max_memory, max_latency_ms}`` (``None`` = no limit).

    ``constraints`` is a mapping, an object with those attributes (a config's constraints) or
    ``None``; non-``None`` ``overrides`` win. Memory may be given as bytes or a string such as
    ``"2GiB"``.
    """
    out: dict[str, float | None] = {}
    for name in LIMIT_NAMES:
        if isinstance(constraints, Mapping):
            value = constraints.get(name)
        else:
            value = getattr(constraints, name, None)
        if overrides.get(name) is not None:
            value = overrides[name]
        if value is not None and name == "max_memory":
            value = parse_bytes(value)
        if value is not None:
            value = float(value)
            if not value > 0:
                raise ValueError(f"{name}={value!r} must be positive")
        out[name] = value
    unknown = set(overrides) - set(LIMIT_NAMES)
    if unknown:
        raise ValueError(
            f"unknown constraint {sorted(unknown)[0]!r}; choose one of: {', '.join(LIMIT_NAMES)}"
        )
    return out


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(value: Any) -> int:
    """``2GiB`` → 2147483648; ``"1.5GB"``, ``512MiB`` and plain numbers work too."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    text = str(value).strip().lower().replace(" ", "")
    number = text.rstrip("kmgtib")
    unit = text[len(number) :]
    try:
        if unit not in _UNITS:
            raise ValueError
        return int(float(number) * _UNITS[unit])
    except ValueError:
        raise ValueError(
            f"memory {value!r} is not valid; write bytes or a size such as 512MiB, 2GiB, 8GB"
        ) from None


def memory_of(result: Result) -> float | None:
    """The memory a budget limits: the total peak, else the peak above inputs."""
    for name in _MEMORY:
        value = getattr(result, name, None)
        if value is not None:
            return float(value)
    return None


def constraint_values(result: Result, limit: Mapping[str, float | None]) -> dict[str, float]:
    """Optuna-style constraint values (``<= 0`` means met), one per set limit.

    ``log10(value / limit)``: scale-free, so a 2x overshoot weighs the same for every limit.
    A failed trial, or a missing value, violates every limit by ``FAILED_VIOLATION``.
    """
    out = {}
    for name, attr in (
        ("max_error", "rel_fro_err"),
        ("max_memory", None),
        ("max_latency_ms", "latency_ms"),
    ):
        bound = limit.get(name)
        if bound is None:
            continue
        value = memory_of(result) if attr is None else getattr(result, attr)
        if not result.ok or value is None or not math.isfinite(value):
            out[name] = FAILED_VIOLATION
        else:
            out[name] = math.log10(max(value, ERROR_FLOOR) / bound)
    return out


FAILED_VIOLATION = 10.0
"""Constraint value of a failed trial: ten decades over every limit."""


def meets(result: Result, limit: Mapping[str, float | None]) -> bool:
    """True for an ``ok`` result within every set limit."""
    return result.ok and all(v <= 0 for v in constraint_values(result, limit).values())


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


def run_limits(run_dir: str | Path) -> dict[str, Any]:
    """The ``constraints`` a run was configured with (from its ``run.json``; ``{}`` if none)."""
    try:
        info = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    config = info.get("config") if isinstance(info, dict) else None
    found = config.get("constraints") if isinstance(config, dict) else None
    return dict(found) if isinstance(found, dict) else {}
