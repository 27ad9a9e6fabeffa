"""A recommendation from measured results: the configuration that best fits a priority.

Only feasible (every limit met) and accurate results are candidates: a result whose relative
error exceeds ``max_error``, or its dtype's tolerance when no error limit is set, is never
recommended however fast. The best is taken from the Pareto front; the runner-up comes with
what it trades, in numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdpalab.explore.objectives import (
    ERROR_FLOOR,
    OBJECTIVES,
    check_constraints,
    check_objectives,
    config_label,
    constraint_values,
    context_label,
    context_of,
    group_by_context,
    latency_noise,
    memory_of,
    objective_matrix,
    objective_value,
    varying_fields,
)
from sdpalab.explore.pareto import group_front, pareto
from sdpalab.measure.result import Result
from sdpalab.spec import Constraints, Variant
from sdpalab.units import format_bytes

PRIORITIES = ("latency", "memory", "error", "balanced")
_PRIORITY_OBJECTIVE = {"latency": "latency_ms", "memory": "memory", "error": "rel_fro_err"}


@dataclass
class Recommendation:
    """The configuration that best fits a priority, the runner-up, and what it trades."""

    best: Result
    runner_up: Result | None
    trade: str
    """What choosing the runner-up instead would gain and lose, with numbers."""
    priority: str
    constraints: Constraints
    context: dict[str, Any]
    front: list[Result] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)
    """Why other results were not candidates: reason → count."""

    def variant(self) -> Variant:
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


def recommend(
    results: Iterable[Result],
    *,
    priority: str = "latency",
    constraints: Constraints | None = None,
    objectives: Sequence[str] = OBJECTIVES,
    context: Mapping[str, Any] | None = None,
) -> Recommendation:
    """Pick the configuration that best fits ``priority`` among feasible, accurate results.

    Candidates are ``ok`` results within every limit of ``constraints`` whose relative error is
    at most its ``max_error`` or, when no error limit is set, at most their dtype's tolerance
    (``Result.tolerance``): a variant that is wrong is never recommended however fast. A result
    whose error was not measured is not a candidate.

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
    objectives = check_objectives(objectives)
    constraints = check_constraints(constraints)
    pool = _select_context(list(results), context)
    ctx = context_of(pool[0]) if pool else dict(context or {})
    candidates, excluded = [], {}
    for res in {r.trial_id or id(r): r for r in pool}.values():
        why = _excluded_because(res, constraints)
        if why:
            excluded[why] = excluded.get(why, 0) + 1
        else:
            candidates.append(res)
    if not candidates:
        detail = "; ".join(f"{n} {why}" for why, n in sorted(excluded.items())) or "no results"
        raise ValueError(f"no configuration qualifies for a recommendation ({detail})")
    front = group_front(candidates, objectives) or candidates
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
        constraints=constraints,
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


def _excluded_because(res: Result, constraints: Constraints) -> str | None:
    if not res.ok:
        return f"status {res.status}"
    err = res.rel_fro_err
    if err is None or not math.isfinite(err):
        return "error not measured"
    bound = constraints.max_error
    if bound is None:
        bound = res.tolerance
    if bound is not None and err > bound:
        return "over max_error" if constraints.max_error is not None else "over the error tolerance"
    cons = constraint_values(res, constraints)
    if cons.get("max_memory", 0) > 0:
        return "over max_memory"
    if cons.get("max_latency_ms", 0) > 0:
        return "over max_latency_ms"
    return None


def _rank(group: list[Result], priority: str, objectives: Sequence[str]) -> list[Result]:
    """Order ``group`` by fit to ``priority`` (best first)."""
    if priority == "balanced":
        names = [o for o in objectives if all(objective_value(r, o) is not None for r in group)]
        logs = np.log10(np.maximum(objective_matrix(group, names), ERROR_FLOOR))
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


@dataclass
class FrontSummary:
    """Per shape: the Pareto front and the recommendation (or why there is none)."""

    shapes: dict[str, dict[str, Any]]
    """Shape label (the fields that vary between shapes, ``all`` for one) → its context."""
    fronts: dict[str, list[Result]]
    recommendations: dict[str, Recommendation]
    unavailable: dict[str, str]
    """Shape label → why nothing could be recommended there."""
    constraints: Constraints
    priority: str
    objectives: tuple[str, ...]

    @property
    def front(self) -> list[Result]:
        return [r for rs in self.fronts.values() for r in rs]

    def rows(self) -> list[dict[str, Any]]:
        """The front as table rows: shape, configuration, objectives, which one is picked."""
        out = []
        for shape, front in self.fronts.items():
            rec = self.recommendations.get(shape)
            picked = {rec.best.trial_id: "best"} if rec else {}
            if rec and rec.runner_up is not None:
                picked[rec.runner_up.trial_id] = "runner-up"
            for res in sorted(front, key=lambda r: r.latency_ms or math.inf):
                out.append(
                    {
                        "shape": shape,
                        "configuration": config_label(res),
                        "latency_ms": res.latency_ms,
                        "latency_iqr_ms": res.latency_iqr_ms,
                        "memory_bytes": memory_of(res),
                        "rel_fro_err": res.rel_fro_err,
                        "pick": picked.get(res.trial_id, ""),
                        "trial_id": res.trial_id,
                        "timing_method": res.timing_method,
                    }
                )
        return out


def summarize_front(
    results: Iterable[Result],
    *,
    priority: str = "latency",
    constraints: Constraints | None = None,
    objectives: Sequence[str] = OBJECTIVES,
) -> FrontSummary:
    """Front and recommendation of every shape in ``results`` (what ``sdpalab pareto`` shows).

    The front holds the non-dominated results within ``constraints``; the recommendation
    follows :func:`recommend` (accurate results only).
    """
    if priority not in PRIORITIES:
        raise ValueError(
            f"priority={priority!r} is not valid; choose one of: {', '.join(PRIORITIES)}"
        )
    objectives = check_objectives(objectives)
    constraints = check_constraints(constraints)
    groups = group_by_context(list(results))
    contexts = [context_of(g[0]) for g in groups.values()]
    fields = varying_fields(contexts)
    summary = FrontSummary({}, {}, {}, {}, constraints, priority, objectives)
    for group, ctx in zip(groups.values(), contexts, strict=True):
        shape = context_label(ctx, fields)
        summary.shapes[shape] = ctx
        summary.fronts[shape] = pareto(group, objectives, constraints=constraints)
        try:
            summary.recommendations[shape] = recommend(
                group, priority=priority, objectives=objectives, constraints=constraints
            )
        except ValueError as err:
            summary.unavailable[shape] = str(err)
    return summary
