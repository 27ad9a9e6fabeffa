"""The Pareto front of measured results, and a recommendation from it.

Objectives are minimized. The front is computed per *context* (the shape of the work: phase,
batch, heads, sequence lengths, head dim, device): a configuration competes only with others
measured on the same shape. ``dtype`` is a choice, not a context, so float32 and bfloat16
variants of one shape compete with each other.

The default memory objective is ``peak_mem_total_bytes`` (inputs + KV cache + the call's own
peak), not ``peak_mem_bytes`` (the call's peak above inputs and cache): for a decode step the
cache is the memory that a quantized KV cache saves, and the total is what a budget such as
``--max-memory 2GiB`` limits. For prefill the two differ by the same input bytes for every
variant of a shape, so they rank variants identically.

Latency is noise-aware: two points whose median latencies differ by less than
``sqrt(iqr_a**2 + iqr_b**2)`` tie on latency (neither dominates the other on it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdpalab.measure.result import Result

OBJECTIVES = ("latency_ms", "peak_mem_total_bytes", "rel_fro_err")
"""Default objectives, all minimized."""
CONTEXT_FIELDS = ("phase", "batch", "heads_q", "heads_kv", "seq_q", "seq_kv", "head_dim", "device")
"""Workload fields that describe the work itself; ``dtype`` is left out: it is a choice."""
PRIORITIES = ("latency", "memory", "error", "balanced")
LIMIT_NAMES = ("max_error", "max_memory", "max_latency_ms")
ERROR_FLOOR = 1e-12
"""Errors are compared in log space; an exact 0 counts as this."""
_PRIORITY_OBJECTIVE = {"latency": "latency_ms", "memory": "memory", "error": "rel_fro_err"}
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


# --------------------------------------------------------------------------- dominance


def objective_value(result: Result, name: str) -> float | None:
    value = memory_of(result) if name == "memory" else getattr(result, name, None)
    return None if value is None else float(value)


def latency_noise(a: Result, b: Result) -> float:
    """Latency difference below which ``a`` and ``b`` tie: their IQRs combined in quadrature."""
    return math.hypot(a.latency_iqr_ms or 0.0, b.latency_iqr_ms or 0.0)


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
    objectives = _check_objectives(objectives)
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


def _check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
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


# --------------------------------------------------------------------------- recommendation


@dataclass
class Recommendation:
    """The configuration that best fits a priority, the runner-up, and what it trades."""

    best: Result
    runner_up: Result | None
    trade: str
    """What choosing the runner-up instead would gain and lose, with numbers."""
    priority: str
    limits: dict[str, float | None]
    context: dict[str, Any]
    front: list[Result] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)
    """Why other results were not candidates: reason → count."""

    def variant(self):
        from sdpalab.spec import Variant

        return Variant(**self.best.variant)

    @property
    def dtype(self) -> str | None:
        return self.best.workload.get("dtype")

    def variant_python(self) -> str:
        """``sl.Variant(...)`` to paste, with the dtype it was measured in as a comment."""
        return f"{self.variant().python()}  # dtype={self.dtype!r}"

    def variant_yaml(self) -> str:
        """The variant (and its dtype) as a config fragment to paste."""
        import yaml

        from sdpalab.spec import Variant

        default = Variant().to_dict()
        fields = {k: v for k, v in self.best.variant.items() if v != default.get(k)}
        if self.best.variant.get("weight_quant", "none") != "none":
            fields.pop("projections", None)  # implied by weight_quant
        doc = {"workload": {"dtype": self.dtype}, "variants": fields or {"backend": "auto"}}
        return yaml.safe_dump(doc, sort_keys=False).rstrip()

    def summary(self) -> str:
        """A few lines for humans."""
        lines = [
            f"recommended ({self.priority}): {describe(self.best)}",
            f"  {self.variant_python()}",
        ]
        if self.runner_up is not None:
            lines.append(f"runner-up: {describe(self.runner_up)}")
            lines.append(f"  {self.trade}")
        return "\n".join(lines)


def describe(result: Result) -> str:
    """``label [dtype]: 1.23 ms ± 0.05, 12.0 MiB, err 3.1e-07``."""
    parts = [config_label(result) + ":"]
    if result.latency_ms is not None:
        parts.append(f"{result.latency_ms:.3g} ms ± {result.latency_iqr_ms or 0:.2g},")
    mem = memory_of(result)
    if mem is not None:
        parts.append(f"{format_bytes(mem)},")
    if result.rel_fro_err is not None:
        parts.append(f"err {result.rel_fro_err:.2g}")
    return " ".join(parts).rstrip(",")


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def recommend(
    results: Iterable[Result],
    *,
    priority: str = "latency",
    max_error: float | None = None,
    max_memory: Any = None,
    max_latency_ms: float | None = None,
    constraints: Any = None,
    objectives: Sequence[str] = OBJECTIVES,
    context: Mapping[str, Any] | None = None,
) -> Recommendation:
    """Pick the configuration that best fits ``priority`` among feasible, accurate results.

    Candidates are ``ok`` results within every limit (``constraints`` overridden by the
    keyword limits) whose relative error is at most ``max_error`` or, when no error limit is
    set, at most their dtype's tolerance (``Result.tolerance``): a variant that is wrong is
    never recommended however fast. A result whose error was not measured is not a candidate.

    ``priority``: ``latency`` (fastest; ties within noise go to less memory, then less error),
    ``memory``, ``error``, or ``balanced`` (closest to the ideal point of the front, each
    objective scaled to [0, 1] in log space). Results of several shapes need ``context``
    (e.g. ``{"seq_kv": 8192}``); see ``goldilocks_across_shapes`` for one choice for all.

    Raises ``ValueError`` when nothing qualifies, saying why.
    """
    if priority not in PRIORITIES:
        raise ValueError(
            f"priority={priority!r} is not valid; choose one of: {', '.join(PRIORITIES)}"
        )
    objectives = _check_objectives(objectives)
    limit = limits(
        constraints, max_error=max_error, max_memory=max_memory, max_latency_ms=max_latency_ms
    )
    pool = _select_context(list(results), context)
    ctx = context_of(pool[0]) if pool else dict(context or {})
    candidates, excluded = [], {}
    for res in {r.trial_id or id(r): r for r in pool}.values():
        why = _excluded_because(res, limit)
        if why:
            excluded[why] = excluded.get(why, 0) + 1
        else:
            candidates.append(res)
    if not candidates:
        detail = "; ".join(f"{n} {why}" for why, n in sorted(excluded.items())) or "no results"
        raise ValueError(f"no configuration qualifies for a recommendation ({detail})")
    front = _front(candidates, objectives, noise_aware=True) or candidates
    ranked = _rank(front, priority, objectives)
    on_front = {id(r) for r in ranked}
    ranked += [r for r in _rank(candidates, priority, objectives) if id(r) not in on_front]
    best = ranked[0]
    runner = ranked[1] if len(ranked) > 1 else None
    trade = trade_text(best, runner, objectives) if runner else "no other candidate qualifies"
    return Recommendation(
        best=best,
        runner_up=runner,
        trade=trade,
        priority=priority,
        limits=limit,
        context=ctx,
        front=front,
        excluded=excluded,
    )


def _select_context(results: list[Result], context: Mapping[str, Any] | None) -> list[Result]:
    if context:
        results = [
            r for r in results if all(str(r.workload.get(k)) == str(v) for k, v in context.items())
        ]
        if not results:
            raise ValueError(f"no result matches context {dict(context)}")
    groups = group_by_context(results)
    if len(groups) > 1:
        contexts = [context_of(g[0]) for g in groups.values()]
        fields = varying_fields(contexts)
        names = "; ".join(context_label(c, fields) for c in contexts)
        raise ValueError(
            f"the results hold {len(groups)} shapes ({names}); pick one with context= "
            f"(for example {{{fields[0]!r}: {contexts[0][fields[0]]!r}}}) or use "
            "goldilocks_across_shapes for one configuration for all"
        )
    return results


def _excluded_because(res: Result, limit: Mapping[str, float | None]) -> str | None:
    if not res.ok:
        return f"status {res.status}"
    err = res.rel_fro_err
    if err is None or not math.isfinite(err):
        return "error not measured"
    bound = limit.get("max_error")
    if bound is None:
        bound = res.tolerance
    if bound is not None and err > bound:
        return "over the error tolerance" if limit.get("max_error") is None else "over max_error"
    cons = constraint_values(res, limit)
    if cons.get("max_memory", 0) > 0:
        return "over max_memory"
    if cons.get("max_latency_ms", 0) > 0:
        return "over max_latency_ms"
    return None


def _rank(group: list[Result], priority: str, objectives: Sequence[str]) -> list[Result]:
    """Order ``group`` by fit to ``priority`` (best first)."""
    if priority == "balanced":
        names = [o for o in objectives if all(objective_value(r, o) is not None for r in group)]
        logs = np.log10(np.maximum(_matrix(group, names), ERROR_FLOOR))
        span = logs.max(axis=0) - logs.min(axis=0)
        scaled = (logs - logs.min(axis=0)) / np.where(span > 0, span, 1.0)
        score = np.sqrt((scaled**2).sum(axis=1))
        return [group[i] for i in np.argsort(score, kind="stable")]
    primary = _PRIORITY_OBJECTIVE[priority]
    others = [o for o in ("latency_ms", "memory", "rel_fro_err") if o != primary]
    remaining, ranked = list(group), []
    while remaining:
        # the best on the primary objective, and everything tied with it (latency: within
        # noise; memory and error: within 1 %), broken by the other objectives in turn
        lead = min(remaining, key=lambda r: _val(r, primary))
        tied = [r for r in remaining if _tied(r, lead, primary)]
        pick = min(tied, key=lambda r: tuple(_val(r, o) for o in [*others, primary]))
        ranked.append(pick)
        remaining.remove(pick)
    return ranked


def _val(res: Result, name: str) -> float:
    value = objective_value(res, name)
    return math.inf if value is None else value


def _tied(a: Result, b: Result, name: str) -> bool:
    x, y = _val(a, name), _val(b, name)
    if name == "latency_ms":
        return abs(x - y) <= latency_noise(a, b)
    return abs(x - y) <= 0.01 * max(abs(x), abs(y))


def trade_text(best: Result, other: Result, objectives: Sequence[str] = OBJECTIVES) -> str:
    """``flash/causal [float32] instead: 12% slower (1.23 vs 1.10 ms), 40% less memory ...``."""
    parts = []
    names = {
        "latency_ms": "latency",
        "memory": "memory",
        "peak_mem_total_bytes": "memory",
        "peak_mem_bytes": "peak memory",
        "rel_fro_err": "error",
    }
    for name in objectives:
        a, b = objective_value(best, name), objective_value(other, name)
        if a is None or b is None:
            continue
        what = names.get(name, name)
        fmt = _formatter(name)
        if name == "latency_ms" and abs(b - a) <= latency_noise(best, other):
            parts.append(f"same {what} within noise ({fmt(b)} vs {fmt(a)})")
        elif name == "rel_fro_err":
            ratio = (b / a) if a > 0 else math.inf
            word = "higher" if b > a else "lower"
            parts.append(f"{what} {fmt(b)} vs {fmt(a)} ({_times(ratio)} {word})")
        elif a > 0:
            change = (b - a) / a
            if abs(change) < 0.005:
                parts.append(f"same {what} ({fmt(b)})")
            else:
                word = {"latency": ("slower", "faster")}.get(what, ("more", "less"))
                word = word[0] if change > 0 else word[1]
                noun = "" if what == "latency" else f" {what}"
                parts.append(f"{abs(change):.0%} {word}{noun} ({fmt(b)} vs {fmt(a)})")
    return f"{config_label(other)} instead: " + ", ".join(parts)


def _times(ratio: float) -> str:
    if not math.isfinite(ratio):
        return "∞x"
    ratio = ratio if ratio >= 1 else 1 / ratio
    return f"{ratio:.2g}x"


def _formatter(name: str):
    if name == "latency_ms":
        return lambda v: f"{v:.3g} ms"
    if name == "memory" or name.endswith("_bytes"):
        return format_bytes
    return lambda v: f"{v:.2g}"
