"""The vocabulary of the analyses: objectives, limits (constraints), contexts (shapes), and
when two results tie.

Objectives are minimized. A *context* is the shape of the work (phase, batch, heads, sequence
lengths, head dim, device) and the attention it means (``mod``: the mask its workload names,
else the variant's own, so different masks never compete): a configuration competes only with
others measured on the same context. ``dtype`` is a choice, not a context, so float32 and
bfloat16 variants of one shape compete with each other. A *configuration* is a variant plus its
dtype. A variant computing another mask than the one its workload names is an *approximation*:
it meets no constraints unless they allow approximations (``allow_approximate``).

``"memory"`` in an objective list (and the ``max_memory`` limit) means one of
:data:`MEMORY_MEASURES`, which the user picks: ``cache`` (``kv_cache_bytes``), ``peak`` (the
call's peak above inputs and cache, ``peak_mem_bytes``), ``total`` (inputs, cache and that
peak, ``peak_mem_total_bytes``) or ``persistent`` (cache plus the step's transient). ``auto``,
the default, is ``persistent`` for decode, where the cache is what stays and what a quantized
cache saves, and ``total`` otherwise: for prefill the inputs are the same bytes for every variant
of a shape, and a model's own peak already holds its cache. Where no peak was measured
(``measure: {memory: false}``, as a model's quality search may choose: on a CPU the peak takes
a second, profiled pass) ``auto`` is ``cache``.

``"error"`` means each result's own error measure (:func:`error_field`): on a model workload
that scored its next-token distributions, the mean KL from the stock model's (``kl_mean_nats``,
what users feel); in phase ``train`` the largest relative error of the gradients against the
float64 oracle's (``grad_rel_err``, what training feels); elsewhere the output's relative error
against the float64 oracle (``rel_fro_err``). The quality limits bound their own measures:
``max_error`` the relative error (in ``train``, the output's and the gradients' alike),
``max_kl`` the KL, ``max_ppl_increase`` the perplexity change in percent. ``memory`` of a
``train`` result is its total peak: inputs, what the forward keeps and the backward's peak.

Two results *tie* on an objective when they are equal within what the measurement can tell:
latencies whose interquartile ranges (each its IQR wide, about the median) overlap, errors
within the tolerance of their dtype
(the rounding a kernel in that precision may show, ``Result.tolerance``), other values only
when equal. A model workload has no float64 oracle, so no dtype tolerance: its tolerance is the
largest error (KL where measured) that a lossless variant (no KV or weight quantization) of the
same shape and dtype shows against the stock model, i.e. the rounding noise a change of kernel
makes through its layers (:func:`error_tolerances`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sdpalab.measure.result import Result
from sdpalab.spec import CONTEXT_FIELDS, Constraints, is_model_workload
from sdpalab.spec.variant import approximation, meant_mod, mod_text

OBJECTIVES = ("latency_ms", "memory", "error")
"""Default objectives, all minimized; ``memory`` is the measure the user picks, ``error`` the
one each result has (:func:`error_field`)."""
ERROR_FLOOR = 1e-12
"""Errors are compared in log space; an exact 0 counts as this."""
MEMORY_MEASURES = {
    "auto": "persistent for decode, total otherwise, cache where no peak was measured",
    "cache": "KV cache bytes (values, scales, zeros, residual windows)",
    "peak": "peak above inputs and cache",
    "total": "total peak (inputs, cache and the call's peak)",
    "persistent": "KV cache plus the step's transient peak",
}
"""What ``"memory"`` can mean; see the module doc."""
_MEMORY_FIELD = {
    "cache": "kv_cache_bytes",
    "peak": "peak_mem_bytes",
    "total": "peak_mem_total_bytes",
    "persistent": "persistent_mem_bytes",
}
"""The name each measure takes in tables and JSON (``persistent`` is computed)."""
QUALITY_LIMITS = {
    "max_error": "rel_fro_err",
    "max_kl": "kl_mean_nats",
    "max_ppl_increase": "ppl_delta_pct",
}
"""The limits on quality, and the Result field each bounds."""
_LIMITED = {**QUALITY_LIMITS, "max_memory": "memory", "max_latency_ms": "latency_ms"}
"""Each limit of :class:`Constraints` and the objective it bounds."""

# --------------------------------------------------------------------------- limits


def check_constraints(constraints: Constraints | None) -> Constraints:
    """``constraints`` (``None``: no limit), every limit it sets checked to be positive."""
    constraints = Constraints() if constraints is None else constraints
    for name, value in constraints.limits().items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and value > 0):
            raise ValueError(f"{name}={value!r} must be a positive number")
    if not isinstance(constraints.allow_approximate, bool):
        raise ValueError(f"allow_approximate={constraints.allow_approximate!r} must be a bool")
    return constraints


def check_memory(memory: str) -> str:
    """``memory`` if it names a measure of :data:`MEMORY_MEASURES`, else a ValueError."""
    if memory not in MEMORY_MEASURES:
        raise ValueError(
            f"memory={memory!r} is not valid; choose one of: {', '.join(MEMORY_MEASURES)}"
        )
    return memory


def memory_measure(result: Result, memory: str = "auto") -> str:
    """The measure ``memory`` means for ``result``: ``auto`` resolved by its phase, and by what
    was measured (``cache`` where no peak was, as with ``measure: {memory: false}``)."""
    if memory != "auto":
        return memory
    if result.peak_mem_bytes is None and result.kv_cache_bytes is not None:
        return "cache"
    return "persistent" if result.workload.get("phase") == "decode" else "total"


def memory_field(result: Result, memory: str = "auto") -> str:
    """The column that holds ``result``'s memory under ``memory`` (``kv_cache_bytes``, ...)."""
    return _MEMORY_FIELD[memory_measure(result, memory)]


def memory_of(result: Result, memory: str = "auto") -> float | None:
    """``result``'s memory as the measure ``memory`` takes it (bytes), None if not measured.

    ``persistent`` is ``kv_cache_bytes + peak_mem_bytes`` (an attention trial's peak is above
    its inputs and cache); without a cache (or on a model workload, whose peak holds its cache)
    it is the total peak: there the inputs hold the keys and values, and they stay.
    """
    measure = memory_measure(result, memory)
    if measure == "persistent":
        cache, peak = result.kv_cache_bytes, result.peak_mem_bytes
        if cache is not None and peak is not None and not is_model_workload(result.workload):
            return float(cache + peak)
        measure = "total"
    value = getattr(result, _MEMORY_FIELD[measure])
    if value is None and measure == "total" and memory == "auto":
        value = result.peak_mem_bytes  # an old run without totals: the peak still ranks
    return None if value is None else float(value)


def limit_value(result: Result, name: str, memory: str = "auto") -> float | None:
    """The value limit ``name`` bounds: the objective it names, except that ``max_error`` on a
    ``train`` result bounds the largest of the output's and the gradients' errors."""
    value = objective_value(result, _LIMITED[name], memory)
    if name == "max_error" and result.grad_rel_err is not None and value is not None:
        value = max(value, float(result.grad_rel_err))
    return value


def constraint_values(
    result: Result, constraints: Constraints, memory: str = "auto"
) -> dict[str, float]:
    """Optuna-style constraint values (``<= 0`` means met), one per set limit.

    ``log10(value / limit)``: scale-free, so a 2x overshoot weighs the same for every limit.
    ``max_memory`` bounds the ``memory`` measure. A failed trial, or a missing value, violates
    every limit by ``FAILED_VIOLATION``.
    """
    out = {}
    for name, bound in constraints.limits().items():
        value = limit_value(result, name, memory)
        if not result.ok or value is None or not math.isfinite(value):
            out[name] = FAILED_VIOLATION
        else:
            out[name] = math.log10(max(value, ERROR_FLOOR) / bound)
    return out


FAILED_VIOLATION = 10.0
"""Constraint value of a failed trial: ten decades over every limit."""


def meets(result: Result, constraints: Constraints, memory: str = "auto") -> bool:
    """True for an ``ok`` result within every set limit, and no approximation unless
    ``constraints`` allow them (:func:`approximates`)."""
    return (
        result.ok
        and (constraints.allow_approximate or approximates(result) is None)
        and all(v <= 0 for v in constraint_values(result, constraints, memory).values())
    )


def approximates(result: Result) -> str | None:
    """``"approximation of none (computes sliding_window(window=128))"`` when ``result``'s
    variant computes another mask than the one its workload names; None otherwise."""
    found = approximation(result.workload, result.variant)
    return None if found is None else f"approximation of {found[0]} (computes {found[1]})"


def broken_limit(result: Result, constraints: Constraints, memory: str = "auto") -> str | None:
    """Why an ``ok`` result is outside ``constraints``: ``max_memory (300 MiB > 256 MiB)``,
    the first limit it breaks, or that it approximates the workload's mask (unless allowed);
    None when it meets them all."""
    from sdpalab.units import format_bytes

    approx = None if constraints.allow_approximate else approximates(result)
    if approx:
        return approx[:-1] + "; allow_approximate admits it)"
    for name, bound in constraints.limits().items():
        value = limit_value(result, name, memory)
        if value is None or not math.isfinite(value):
            return f"{name}: {_LIMITED[name]} not measured"
        if value > bound:
            if name == "max_memory":
                what = f"{memory_measure(result, memory)} {format_bytes(value)}"
                return f"over max_memory ({what} > {format_bytes(bound)})"
            return f"over {name} ({value:.3g} > {bound:.3g})"
    return None


# --------------------------------------------------------------------------- contexts


def context_of(result: Result) -> dict[str, Any]:
    """The work a result was measured on (:func:`context_from`)."""
    return context_from(result.workload, result.variant)


def context_from(workload: Mapping[str, Any], variant: Mapping[str, Any]) -> dict[str, Any]:
    """The work a trial or result is on: its workload's fields but ``dtype``, with the
    attention it means as ``mod`` (text, its arguments folded in). A workload that names no
    mask means each variant's own, so masks never share a context: each gets its own front."""
    context = {k: workload.get(k) for k in CONTEXT_FIELDS if k in workload and k != "mod_args"}
    meant = meant_mod(workload, variant)
    if meant is not None:
        context["mod"] = mod_text(*meant)
    return context


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


def error_field(result: Result) -> str:
    """The field holding ``result``'s error (the ``error`` objective): ``kl_mean_nats`` when it
    scored a model's next-token distributions, ``grad_rel_err`` when it checked gradients
    (phase ``train``), else ``rel_fro_err``."""
    if result.kl_mean_nats is not None:
        return "kl_mean_nats"
    return "grad_rel_err" if result.grad_rel_err is not None else "rel_fro_err"


def own_tolerance(result: Result) -> float | None:
    """The tolerance of ``result``'s :func:`error_field` that it recorded (its dtype's, for
    the output or for the gradients); None where it recorded none."""
    value = result.grad_tolerance if error_field(result) == "grad_rel_err" else result.tolerance
    return float(value) if _finite(value) else None


def objective_value(result: Result, name: str, memory: str = "auto") -> float | None:
    """``result``'s value of objective ``name`` (``"memory"``: the ``memory`` measure;
    ``"error"``: its :func:`error_field`)."""
    if name == "memory":
        value = memory_of(result, memory)
    else:
        value = getattr(result, error_field(result) if name == "error" else name, None)
    return None if value is None else float(value)


def objective_matrix(
    results: Sequence[Result], objectives: Sequence[str], memory: str = "auto"
) -> np.ndarray:
    """``[len(results), len(objectives)]`` objective values, NaN where one is not measured."""
    return np.array(
        [[objective_value(r, o, memory) for o in objectives] for r in results], dtype=float
    ).reshape(len(results), len(objectives))


def latency_noise(a: Result, b: Result) -> float:
    """Latency difference below which ``a`` and ``b`` tie: half their IQRs' sum, where the
    interquartile ranges about their medians stop overlapping."""
    return float(tie_band("latency_ms", _iqr(a), _iqr(b), math.nan, math.nan))


def check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    if isinstance(objectives, str):
        objectives = (objectives,)
    units = ("_ms", "_bytes", "_err", "_nats", "_pct")
    valid = {f for f in Result.__dataclass_fields__ if f.endswith(units)}
    for name in objectives:
        if name not in ("memory", "error") and name not in valid:
            raise ValueError(
                f"objective {name!r} is not valid; choose from: memory, error, "
                + ", ".join(sorted(valid))
            )
    if not objectives:
        raise ValueError("objectives must name at least one Result field")
    return tuple(objectives)


# --------------------------------------------------------------------------- ties


def lossless(result: Result) -> bool:
    """Whether ``result``'s variant stores keys, values and weights as they are (no
    quantization), so its error is rounding only."""
    return all(
        result.variant.get(k, "none") in ("none", None) for k in ("kv_quant", "weight_quant")
    )


def error_tolerances(results: Sequence[Result]) -> list[float | None]:
    """Each result's error tolerance, on its :func:`error_field`: its own (its dtype's, against
    the float64 oracle); on a model workload (no oracle, ``tolerance`` NaN) the largest error
    (KL where measured) of a lossless ``ok`` variant of the same shape and dtype among
    ``results``, or without one the dtype's attention tolerance. None when nothing says."""
    model = [is_model_workload(r.workload) and own_tolerance(r) is None for r in results]
    gates: dict[str, float] = {}
    for res, gated in zip(results, model, strict=True):
        err = objective_value(res, "error")
        if gated and res.ok and lossless(res) and _finite(err):
            key = _gate_key(res)
            gates[key] = max(gates.get(key, 0.0), err)
    out: list[float | None] = []
    for res, gated in zip(results, model, strict=True):
        if not gated:
            out.append(own_tolerance(res))
        else:
            out.append(gates.get(_gate_key(res), _dtype_tolerance(res.workload.get("dtype"))))
    return out


def _gate_key(result: Result) -> str:
    return f"{context_key(result)}|{result.workload.get('dtype')}|{error_field(result)}"


def over_error(result: Result, constraints: Constraints, tolerance: float | None) -> str | None:
    """Why ``result``'s error keeps it from a recommendation, or None when it may be
    recommended: ``error not measured``, ``over max_kl`` (the limit on its :func:`error_field`,
    when set), or ``over the error tolerance`` (``tolerance``; without a limit on any quality
    it measured: a user who set one has said how much error they accept)."""
    err = objective_value(result, "error")
    if err is None or not math.isfinite(err):
        return "error not measured"
    field = error_field(result)
    for name, measured in QUALITY_LIMITS.items():
        bound = getattr(constraints, name)
        if bound is not None and measured == field:
            return f"over {name}" if err > bound else None
    if any(
        getattr(constraints, name) is not None and getattr(result, measured) is not None
        for name, measured in QUALITY_LIMITS.items()
    ):
        return None  # bounded by another quality limit (broken_limit checks it)
    if tolerance is not None and err > tolerance:
        return "over the error tolerance"
    return None


def _dtype_tolerance(dtype: str | None) -> float | None:
    from sdpalab.measure.accuracy import tolerance
    from sdpalab.spec import DTYPES

    return tolerance(DTYPES[dtype]) if dtype in DTYPES else None


def tie_band(name: str, iqr_a, iqr_b, tol_a, tol_b):
    """The difference on objective ``name`` below which two results tie (module doc): their
    latency IQRs' half sum (the ranges about the medians overlap: a wide one cannot reach a
    tight one that lies clear of it); the stricter of their error tolerances (NaN: none
    known, then only equal errors tie); 0 for anything else. Numbers or broadcast arrays."""
    if name == "latency_ms":
        return (np.asarray(iqr_a, dtype=float) + iqr_b) / 2
    zero = np.zeros(np.broadcast(iqr_a, iqr_b, tol_a, tol_b).shape)
    if name in _ERRORS:
        band = np.fmin(tol_a, tol_b)
        return np.where(np.isnan(band), zero, band)
    return zero


_ERRORS = ("error", "rel_fro_err", "kl_mean_nats", "grad_rel_err")
"""Objectives whose ties are within a tolerance (where it is the result's error measure)."""


def _iqr(result: Result) -> float:
    return result.latency_iqr_ms or 0.0


def _tol_on(name: str, result: Result, tolerance: float | None) -> float:
    """``tolerance`` (of ``result``'s error measure) where objective ``name`` is that measure,
    else NaN: a KL tolerance says nothing about a relative error."""
    if name == "error" or name == error_field(result):
        return _tol(tolerance)
    return math.nan


def _tol(tolerance: float | None) -> float:
    return float(tolerance) if _finite(tolerance) else math.nan


def tie_matrix(
    results: Sequence[Result],
    values: np.ndarray,
    objectives: Sequence[str],
    tolerances: Sequence[float | None],
) -> np.ndarray:
    """``[n, n, k]``: True where results ``i`` and ``j`` tie on objective ``k`` (:func:`tie_band`).

    ``values`` is their ``[n, k]`` objective matrix; ``tolerances`` their error tolerances.
    """
    iqr = np.array([_iqr(r) for r in results], dtype=float)
    diff = np.abs(values[:, None, :] - values[None, :, :])
    bands = []
    for name in objectives:
        tol = np.array([_tol_on(name, r, t) for r, t in zip(results, tolerances, strict=True)])
        bands.append(tie_band(name, iqr[:, None], iqr[None, :], tol[:, None], tol[None, :]))
    return diff <= np.stack(bands, axis=-1).reshape(diff.shape)


def tied(a: Result, b: Result, name: str, tol_a=None, tol_b=None, memory: str = "auto") -> bool:
    """Whether ``a`` and ``b`` tie on objective ``name`` (:func:`tie_band`); ``tol_a``,
    ``tol_b``: their error tolerances."""
    x, y = objective_value(a, name, memory), objective_value(b, name, memory)
    if x is None or y is None:
        return x is None and y is None
    band = tie_band(name, _iqr(a), _iqr(b), _tol_on(name, a, tol_a), _tol_on(name, b, tol_b))
    return bool(abs(x - y) <= band)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
