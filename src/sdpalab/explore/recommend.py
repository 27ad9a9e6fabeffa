"""A recommendation from measured results: the configuration that best fits a priority.

Only feasible (every limit met) and accurate results are candidates: a result whose error (its
relative error; a model's KL where measured) exceeds its limit (``max_error``, ``max_kl``), or
its tolerance when no quality limit is set (its dtype's; on a model workload, what its lossless
variants show), is never recommended however fast. The best
is taken from the Pareto front, ties (latency within noise, error within tolerance) passing to
the next objective; the runner-up comes with what it trades, in numbers. :func:`summarize_front`
is what every view shows: per shape the front, the recommendation, and why each other result is
off the front (``sdpalab pareto``, the HTML report and ``--json`` all render it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdpalab.explore.objectives import (
    ERROR_FLOOR,
    MEMORY_MEASURES,
    OBJECTIVES,
    broken_limit,
    check_constraints,
    check_memory,
    check_objectives,
    config_label,
    context_label,
    context_of,
    error_field,
    error_tolerances,
    group_by_context,
    latency_noise,
    lossless,
    memory_measure,
    memory_of,
    objective_matrix,
    objective_value,
    over_error,
    tied,
    varying_fields,
)
from sdpalab.explore.pareto import front_of, latest
from sdpalab.measure.result import Result
from sdpalab.spec import Constraints, Variant, is_model_workload
from sdpalab.units import format_bytes

PRIORITIES = ("latency", "memory", "error", "balanced")
_PRIORITY_OBJECTIVE = {"latency": "latency_ms", "memory": "memory", "error": "error"}


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
    memory: str = "auto"
    """The memory measure (:data:`~sdpalab.explore.objectives.MEMORY_MEASURES`)."""
    explanation: str = ""
    """On a model workload that measured quality, the pick in the units users feel (see
    :func:`quality_explanation`); empty otherwise."""

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

    def transformers_snippet(self) -> str | None:
        """On a model workload, the lines that put the pick into a user's own transformers
        model (:func:`~sdpalab.models.usage.transformers_snippet`); None otherwise."""
        if not is_model_workload(self.best.workload):
            return None
        from sdpalab.models.usage import transformers_snippet

        return transformers_snippet(self.variant(), dtype=self.dtype)

    @property
    def purpose(self) -> str:
        """What the pick is for: ``" for training"`` on a ``train`` workload, else empty."""
        return " for training" if self.best.workload.get("phase") == "train" else ""

    def summary(self) -> str:
        """A few lines for humans."""
        lines = [f"recommended{self.purpose} ({self.priority}): {describe(self.best, self.memory)}"]
        if self.explanation:
            lines.append(f"  {self.explanation}")
        lines.append(f"  {self.variant_python()}")
        if self.runner_up is not None:
            lines.append(f"runner-up: {describe(self.runner_up, self.memory)}")
            lines.append(f"  {self.trade}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the pick and the runner-up (their rows), the trade, pasteable forms."""
        return {
            "priority": self.priority,
            "for_training": bool(self.purpose),
            "best": result_row(self.best, self.memory),
            "runner_up": None
            if self.runner_up is None
            else result_row(self.runner_up, self.memory),
            "trade": self.trade,
            "explanation": self.explanation,
            "variant_python": self.variant_python(),
            "variant_yaml": self.variant_yaml(),
            "transformers": self.transformers_snippet(),
            "excluded": dict(self.excluded),
        }


def describe(result: Result, memory: str = "auto") -> str:
    """``label [dtype]: 1.23 ms ± 0.05, 12.0 MiB total, err 3.1e-07`` (a model's quality:
    ``KL 0.0057, ppl +0.52 %``; training: ``fwd 0.4 + bwd 0.8 ms``, ``grad err 4e-07``)."""
    parts = [config_label(result) + ":"]
    if result.latency_ms is not None:
        parts.append(f"{result.latency_ms:.3g} ms ± {result.latency_iqr_ms or 0:.2g},")
    if result.latency_fwd_ms is not None and result.latency_bwd_ms is not None:
        parts.append(f"(fwd {result.latency_fwd_ms:.3g} + bwd {result.latency_bwd_ms:.3g} ms),")
    mem = memory_of(result, memory)
    if mem is not None:
        parts.append(f"{format_bytes(mem)} {memory_measure(result, memory)},")
    if error_field(result) == "kl_mean_nats":
        parts.append(f"KL {result.kl_mean_nats:.2g},")
        if result.ppl_delta_pct is not None:
            parts.append(f"ppl {result.ppl_delta_pct:+.2f} %")
    elif result.rel_fro_err is not None:
        parts.append(f"err {result.rel_fro_err:.2g}")
        if result.grad_rel_err is not None:
            parts.append(f"grad err {result.grad_rel_err:.2g}")
    return " ".join(parts).rstrip(",")


def quality_explanation(result: Result, pool: Sequence[Result]) -> str:
    """``math/static+kivi4: 4.0x smaller cache, +0.52 % perplexity [-0.58, +1.63], KL 0.0057,
    top-1 96 %``: a model result's cache against the unquantized one of its shape in ``pool``
    (a lossless variant, the same cache layout if measured), and its quality against the stock
    model; empty when ``result`` measured no quality."""
    if result.kl_mean_nats is None:
        return ""
    parts = []
    base = [r for r in pool if r.ok and lossless(r) and r.kv_cache_bytes]
    same = [r for r in base if r.variant.get("kv_cache") == result.variant.get("kv_cache")]
    if lossless(result):
        parts.append("unquantized cache")
    elif (same or base) and result.kv_cache_bytes:
        ratio = (same or base)[0].kv_cache_bytes / result.kv_cache_bytes
        parts.append(f"{ratio:.1f}x {'smaller' if ratio >= 1 else 'larger'} cache")
    if result.ppl_delta_pct is not None:
        ci = ""
        if result.ppl_delta_pct_lo is not None and result.ppl_delta_pct_hi is not None:
            ci = f" [{result.ppl_delta_pct_lo:+.2f}, {result.ppl_delta_pct_hi:+.2f}]"
        parts.append(f"{result.ppl_delta_pct:+.2f} % perplexity{ci}")
    parts.append(f"KL {result.kl_mean_nats:.2g}")
    if result.top1_agreement is not None:
        parts.append(f"top-1 {result.top1_agreement:.0%}")
    return f"{result.label}: " + ", ".join(parts)


def result_row(result: Result, memory: str = "auto") -> dict[str, Any]:
    """One result as a flat row: its configuration, objectives and every memory measure."""
    return {
        "configuration": config_label(result),
        "trial_id": result.trial_id,
        "variant": dict(result.variant),
        "dtype": result.workload.get("dtype"),
        "latency_ms": result.latency_ms,
        "latency_iqr_ms": result.latency_iqr_ms,
        "latency_fwd_ms": result.latency_fwd_ms,
        "latency_bwd_ms": result.latency_bwd_ms,
        "memory_measure": memory_measure(result, memory),
        "memory_bytes": memory_of(result, memory),
        "kv_cache_bytes": result.kv_cache_bytes,
        "peak_mem_bytes": result.peak_mem_bytes,
        "peak_mem_total_bytes": result.peak_mem_total_bytes,
        "error": objective_value(result, "error"),
        "error_measure": error_field(result),
        "rel_fro_err": result.rel_fro_err,
        "grad_rel_err": result.grad_rel_err,
        "kl_mean_nats": result.kl_mean_nats,
        "ppl_delta_pct": result.ppl_delta_pct,
        "top1_agreement": result.top1_agreement,
        "tolerance": result.tolerance,
        "grad_tolerance": result.grad_tolerance,
        "timing_method": result.timing_method,
    }


def recommend(
    results: Iterable[Result],
    *,
    priority: str = "latency",
    constraints: Constraints | None = None,
    objectives: Sequence[str] = OBJECTIVES,
    context: Mapping[str, Any] | None = None,
    memory: str = "auto",
) -> Recommendation:
    """Pick the configuration that best fits ``priority`` among feasible, accurate results.

    Candidates are ``ok`` results within every limit of ``constraints`` whose error (relative
    error; on a model workload that scored quality, KL) is at most its limit (``max_error``,
    ``max_kl``) or, when no quality limit is set, at most their tolerance
    (:func:`~sdpalab.explore.objectives.error_tolerances`: the dtype's; on a model workload,
    what its lossless variants show): a variant that is wrong is never recommended however
    fast. A result whose error was not measured is not a candidate. On a model workload the
    recommendation explains itself in cache bytes, perplexity and KL (``explanation``).

    ``priority``: ``latency`` (fastest; ties within noise go to less memory, then less error),
    ``memory``, ``error``, or ``balanced`` (closest to the ideal point of the front, each
    objective scaled to [0, 1] in log space). Ties (latency within noise, error within
    tolerance) go to the next objective. ``memory``: which memory measure the objective and
    ``max_memory`` use (``auto``, ``cache``, ``peak``, ``total``, ``persistent``). Results of
    several shapes need ``context`` (e.g. ``{"seq_kv": 8192}``); see
    ``goldilocks_across_shapes`` for one choice for all.

    Raises ``ValueError`` when nothing qualifies, saying why.
    """
    if priority not in PRIORITIES:
        raise ValueError(
            f"priority={priority!r} is not valid; choose one of: {', '.join(PRIORITIES)}"
        )
    objectives = check_objectives(objectives)
    constraints = check_constraints(constraints)
    memory = check_memory(memory)
    pool = latest(_select_context(list(results), context))
    ctx = context_of(pool[0]) if pool else dict(context or {})
    tolerances = dict(zip(map(id, pool), error_tolerances(pool), strict=True))
    candidates, excluded = [], {}
    for res in pool:
        why = _excluded_because(res, constraints, tolerances[id(res)], memory)
        if why:
            excluded[why] = excluded.get(why, 0) + 1
        else:
            candidates.append(res)
    if not candidates:
        detail = "; ".join(f"{n} {why}" for why, n in sorted(excluded.items())) or "no results"
        raise ValueError(f"no configuration qualifies for a recommendation ({detail})")
    tols = [tolerances[id(r)] for r in candidates]
    front = front_of(candidates, objectives, memory=memory, tolerances=tols).members
    front = front or candidates
    ranked = _rank(front, priority, objectives, tolerances, memory)
    on_front = {id(r) for r in ranked}
    ranked += [
        r
        for r in _rank(candidates, priority, objectives, tolerances, memory)
        if id(r) not in on_front
    ]
    best = ranked[0]
    runner = ranked[1] if len(ranked) > 1 else None
    trade = (
        trade_text(best, runner, objectives, memory, tolerances)
        if runner
        else "no other candidate qualifies"
    )
    return Recommendation(
        best=best,
        runner_up=runner,
        trade=trade,
        priority=priority,
        constraints=constraints,
        context=ctx,
        front=front,
        excluded=excluded,
        memory=memory,
        explanation=quality_explanation(best, pool),
    )


def _select_context(results: list[Result], context: Mapping[str, Any] | None) -> list[Result]:
    if context:
        # the workload's fields, and the context's own (``mod``: the attention it means)
        results = [
            r
            for r in results
            if all(
                str({**r.workload, **context_of(r)}.get(k)) == str(v) for k, v in context.items()
            )
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


def _excluded_because(
    res: Result, constraints: Constraints, tolerance: float | None, memory: str
) -> str | None:
    if not res.ok:
        return f"status {res.status}"
    why = over_error(res, constraints, tolerance)
    if why:
        return why
    broken = broken_limit(res, constraints, memory)
    if broken:
        return broken.split(" (")[0]  # counted by limit, not by value
    return None


def _rank(
    group: list[Result],
    priority: str,
    objectives: Sequence[str],
    tolerances: Mapping[int, float | None],
    memory: str,
) -> list[Result]:
    """Order ``group`` by fit to ``priority`` (best first)."""
    if priority == "balanced":
        names = [
            o for o in objectives if all(objective_value(r, o, memory) is not None for r in group)
        ]
        logs = np.log10(np.maximum(objective_matrix(group, names, memory), ERROR_FLOOR))
        span = logs.max(axis=0) - logs.min(axis=0)
        scaled = (logs - logs.min(axis=0)) / np.where(span > 0, span, 1.0)
        score = np.sqrt((scaled**2).sum(axis=1))
        return [group[i] for i in np.argsort(score, kind="stable")]
    primary = _PRIORITY_OBJECTIVE[priority]
    order = [primary, *(o for o in ("latency_ms", "memory", "error") if o != primary)]
    remaining, ranked = list(group), []
    while remaining:
        # lexicographic on the objectives in priority order, where a tie on one (latency
        # within noise, error within tolerance, memory within 1 %) passes to the next
        tied_set = remaining
        for name in order:
            lead = min(tied_set, key=lambda r: _val(r, name, memory))
            tied_set = [r for r in tied_set if _tied(r, lead, name, tolerances, memory)]
        pick = min(tied_set, key=lambda r: tuple(_val(r, o, memory) for o in order))
        ranked.append(pick)
        remaining.remove(pick)
    return ranked


def _val(res: Result, name: str, memory: str) -> float:
    value = objective_value(res, name, memory)
    return math.inf if value is None else value


def _tied(a: Result, b: Result, name: str, tolerances: Mapping[int, Any], memory: str) -> bool:
    if name == "memory":
        x, y = _val(a, name, memory), _val(b, name, memory)
        # bytes are exact, but 1 % of a budget is not a reason to pick a slower kernel
        return x == y or abs(x - y) <= 0.01 * max(abs(x), abs(y))
    return tied(a, b, name, tolerances.get(id(a)), tolerances.get(id(b)), memory)


def trade_text(
    best: Result,
    other: Result,
    objectives: Sequence[str] = OBJECTIVES,
    memory: str = "auto",
    tolerances: Mapping[int, float | None] | None = None,
) -> str:
    """``flash/causal [float32] instead: 12% slower (1.23 vs 1.10 ms), 40% less memory ...``."""
    tolerances = tolerances or dict(
        zip((id(best), id(other)), error_tolerances([best, other]), strict=True)
    )
    parts = []
    names = {
        "latency_ms": "latency",
        "memory": "memory",
        "peak_mem_total_bytes": "memory",
        "peak_mem_bytes": "peak memory",
        "kv_cache_bytes": "KV cache",
        "rel_fro_err": "error",
        "grad_rel_err": "gradient error",
        "kl_mean_nats": "KL",
        "error": "KL" if error_field(best) == error_field(other) == "kl_mean_nats" else "error",
    }
    for name in objectives:
        a, b = objective_value(best, name, memory), objective_value(other, name, memory)
        if a is None or b is None:
            continue
        what = names.get(name, name)
        fmt = _formatter(name)
        if name == "latency_ms" and abs(b - a) <= latency_noise(best, other):
            parts.append(f"same {what} within noise ({fmt(b)} vs {fmt(a)})")
        elif name in _ERRORS and tied(
            best, other, name, tolerances.get(id(best)), tolerances.get(id(other))
        ):
            parts.append(f"same {what} within tolerance ({fmt(b)} vs {fmt(a)})")
        elif name in _ERRORS:
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


_ERRORS = ("error", "rel_fro_err", "kl_mean_nats", "grad_rel_err")


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


# --------------------------------------------------------------------------- every shape


@dataclass
class ShapeFront:
    """One shape's front, its recommendation, and why every other result is not on the front."""

    context: dict[str, Any]
    front: list[Result]
    recommendation: Recommendation | None
    unavailable: str = ""
    """Why nothing could be recommended (when ``recommendation`` is None)."""
    excluded: list[tuple[Result, str]] = field(default_factory=list)
    """``(result, why it is not on the front)``: a failure, a broken limit, a missing value,
    or ``dominated by <configuration>``."""
    inaccurate: dict[str, str] = field(default_factory=dict)
    """Trial id → why a front member cannot be recommended: ``over tol.`` (its error is above
    its tolerance), ``error not measured``."""
    tolerances: dict[str, float | None] = field(default_factory=dict)
    """Trial id → the error tolerance that applies (a model's: its lossless variants')."""


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
    memory: str = "auto"
    excluded: dict[str, list[tuple[Result, str]]] = field(default_factory=dict)
    """Shape label → ``(result, why it is not on the front)`` (see :class:`ShapeFront`)."""
    inaccurate: dict[str, dict[str, str]] = field(default_factory=dict)
    """Shape label → trial id → why that front member cannot be recommended."""
    tolerances: dict[str, float | None] = field(default_factory=dict)
    """Trial id → the error tolerance that applies (a model's: its lossless variants')."""

    @property
    def front(self) -> list[Result]:
        return [r for rs in self.fronts.values() for r in rs]

    def memory_label(self) -> str:
        """``cache``, or ``auto (persistent for decode, total otherwise)``, as shown."""
        if self.memory == "auto":
            return f"auto ({MEMORY_MEASURES['auto']})"
        return self.memory

    def rows(self) -> list[dict[str, Any]]:
        """The front as table rows (:func:`result_row`) with the shape and the ``pick``: best,
        runner-up, or why a front member cannot be recommended. The best is listed even when a
        point it may not be traded for (an inaccurate one) keeps it off the front."""
        out = []
        for shape, front in self.fronts.items():
            rec = self.recommendations.get(shape)
            picked = {rec.best.trial_id: "best"} if rec else {}
            if rec and rec.runner_up is not None:
                picked[rec.runner_up.trial_id] = "runner-up"
            shown = list(front)
            if rec and rec.best.trial_id not in {r.trial_id for r in front}:
                shown.append(rec.best)
            notes = self.inaccurate.get(shape, {})
            for res in sorted(shown, key=lambda r: r.latency_ms or math.inf):
                row = {"shape": shape, **result_row(res, self.memory)}
                row["tolerance"] = self.tolerances.get(res.trial_id, res.tolerance)
                row["pick"] = picked.get(res.trial_id, notes.get(res.trial_id, ""))
                out.append(row)
        return out

    def excluded_rows(self) -> list[dict[str, Any]]:
        """Every result of every shape off its front (but the best), with the reason."""
        picks = {rec.best.trial_id for rec in self.recommendations.values()}
        return [
            {
                "shape": shape,
                "configuration": config_label(res),
                "trial_id": res.trial_id,
                "reason": why,
            }
            for shape, items in self.excluded.items()
            for res, why in items
            if res.trial_id not in picks
        ]

    def to_dict(self) -> dict[str, Any]:
        """The whole answer as one JSON-ready document: limits, priority, memory measure, and
        per shape its context, front, recommendation (or why none) and excluded results."""
        rows, excluded = self.rows(), self.excluded_rows()
        shapes = []
        for shape, ctx in self.shapes.items():
            rec = self.recommendations.get(shape)
            shapes.append(
                {
                    "shape": shape,
                    "context": ctx,
                    "front": [
                        {k: v for k, v in r.items() if k != "shape"}
                        for r in rows
                        if r["shape"] == shape
                    ],
                    "recommendation": None if rec is None else rec.to_dict(),
                    "unavailable": self.unavailable.get(shape),
                    "excluded": [
                        {k: v for k, v in r.items() if k != "shape"}
                        for r in excluded
                        if r["shape"] == shape
                    ],
                }
            )
        return {
            "priority": self.priority,
            "memory": self.memory,
            "objectives": list(self.objectives),
            "limits": self.constraints.to_dict(),
            "shapes": shapes,
        }


def summarize_front(
    results: Iterable[Result],
    *,
    priority: str = "latency",
    constraints: Constraints | None = None,
    objectives: Sequence[str] = OBJECTIVES,
    memory: str = "auto",
) -> FrontSummary:
    """Front and recommendation of every shape in ``results`` (what ``sdpalab pareto``, the
    HTML report and ``--json`` show).

    The front is :func:`~sdpalab.explore.pareto.pareto`'s (the non-dominated results within
    ``constraints``); the recommendation follows :func:`recommend` (accurate results only).
    Every other result is listed with why it is off the front.
    """
    if priority not in PRIORITIES:
        raise ValueError(
            f"priority={priority!r} is not valid; choose one of: {', '.join(PRIORITIES)}"
        )
    objectives = check_objectives(objectives)
    constraints = check_constraints(constraints)
    memory = check_memory(memory)
    groups = group_by_context(latest(results))
    contexts = [context_of(g[0]) for g in groups.values()]
    fields = varying_fields(contexts)
    summary = FrontSummary({}, {}, {}, {}, constraints, priority, objectives, memory)
    for group, ctx in zip(groups.values(), contexts, strict=True):
        shape = context_label(ctx, fields)
        found = shape_front(group, priority, constraints, objectives, memory)
        summary.shapes[shape] = ctx
        summary.fronts[shape] = found.front
        summary.excluded[shape] = found.excluded
        summary.inaccurate[shape] = found.inaccurate
        summary.tolerances.update(found.tolerances)
        if found.recommendation is not None:
            summary.recommendations[shape] = found.recommendation
        else:
            summary.unavailable[shape] = found.unavailable
    return summary


def shape_front(
    group: list[Result],
    priority: str,
    constraints: Constraints,
    objectives: Sequence[str],
    memory: str,
) -> ShapeFront:
    """One shape: its front (:func:`~sdpalab.explore.pareto.front_of` over the results within
    ``constraints``), its recommendation, and why each other result is off the front."""
    tolerances = dict(zip(map(id, group), error_tolerances(group), strict=True))
    excluded: list[tuple[Result, str]] = []
    feasible = []
    for res in group:
        if not res.ok:
            excluded.append((res, f"{res.status}: {res.reason}" if res.reason else res.status))
            continue
        broken = broken_limit(res, constraints, memory)
        if broken:
            excluded.append((res, broken))
        else:
            feasible.append(res)
    found = front_of(
        feasible, objectives, memory=memory, tolerances=[tolerances[id(r)] for r in feasible]
    )
    excluded += [(res, f"{name} not measured") for res, name in found.unmeasured]
    excluded += [(res, f"dominated by {config_label(by)}") for res, by in found.dominated]
    inaccurate = {}
    for res in found.members:
        why = _excluded_because(res, constraints, tolerances[id(res)], memory)
        if why:
            inaccurate[res.trial_id] = "over tol." if why == "over the error tolerance" else why
    ctx = context_of(group[0]) if group else {}
    out = ShapeFront(ctx, found.members, None, excluded=excluded, inaccurate=inaccurate)
    out.tolerances = {r.trial_id: tolerances[id(r)] for r in group}
    try:
        out.recommendation = recommend(
            group, priority=priority, objectives=objectives, constraints=constraints, memory=memory
        )
    except ValueError as err:
        out.unavailable = str(err)
    return out
