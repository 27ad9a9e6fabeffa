"""``sl.search(spec, trials=N)``: multi-objective search of a config's space with Optuna.

The space is the config's grid. Every choice axis of a variant (``backend``, ``mod`` with its
arguments, ``kv_cache``, ``kv_quant``, ``kv_args.*``, ``weight_quant``, ``projections``) and the
compute ``dtype`` becomes a parameter: categorical, or an integer level index for a numeric axis
(so TPE and GP see the order of sizes). The shape of the work (batch, heads, lengths, head dim)
is not a choice: each shape gets its own study, the budget is shared round-robin, smallest shape
first, and Pareto fronts are per shape.

Each Optuna trial asks for a point, maps it to the engine's Trial (same trial id as a sweep of
that config), runs it in the engine's isolated workers into the same ``results.sqlite``, and
tells Optuna ``log10`` of (latency, memory, error) by default. Feasibility goes through the
samplers' ``constraints_func``: the values (``<= 0`` met) are kept in each trial's user attrs
``constraints``, one for the trial's status (a failure violates it) and one per set limit. A
failed trial is told penalty values (ten times the worst value seen) and a violated status
constraint: it informs the sampler instead of being dropped.

What is never measured twice: a point whose trial id the store already holds is told from the
store (not counted against ``trials``). A variant that ran out of memory or time on a shape
will do so on every larger shape (all sizes at least as large): such a point is told as an
inferred failure without running, and so is one whose memory or latency limit a smaller shape
already broke.

The study lives in ``DIR/optuna.log`` (Optuna's JournalStorage), so ``optuna-dashboard
DIR/optuna.log`` opens it; calling ``search`` again on the same DIR extends it.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sdpalab.config import SweepSpec, Trial, load_spec
from sdpalab.explore.pareto import (
    CONTEXT_FIELDS,
    ERROR_FLOOR,
    FAILED_VIOLATION,
    OBJECTIVES,
    Recommendation,
    constraint_values,
    context_label,
    limits,
    objective_value,
    pareto,
    recommend,
    varying_fields,
)
from sdpalab.measure.result import Result
from sdpalab.run.store import ResultStore

if TYPE_CHECKING:
    import pandas as pd

SAMPLERS = ("nsga2", "tpe", "gp")
JOURNAL = "optuna.log"
INSTALL = "pip install 'sdpalab[search]'"
SIZE_FIELDS = ("batch", "heads_q", "heads_kv", "seq_q", "seq_kv", "head_dim")
"""Workload sizes along which attention's memory and time only grow."""
REPEAT_LIMIT = 3
"""Proposals of already-known points in a row before a study is handed the unmeasured point
nearest the last proposal (fewest axes changed): samplers that have converged repeat themselves,
and each repeat costs an ask without buying a measurement."""
_INFERABLE = ("oom", "timeout")


def import_optuna():
    """Optuna, quiet; a missing one names the install command."""
    try:
        import optuna
    except ImportError:
        raise ImportError(f"search needs optuna: {INSTALL}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# --------------------------------------------------------------------------- the space


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
    return {k: trial.workload_spec.get(k) for k in CONTEXT_FIELDS}


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


# --------------------------------------------------------------------------- the result


@dataclass
class SearchResult:
    """What a search measured or reused, where it lives, and how it went."""

    results: list[Result]
    """Every stored Result of a point of the space: measured by this call, by an earlier
    search on the same directory, or by a sweep into it."""
    out: Path
    storage: Path
    """``DIR/optuna.log``: open with ``optuna-dashboard``."""
    study_names: list[str]
    objectives: tuple[str, ...]
    limits: dict[str, float | None]
    measured: int = 0
    """Trials this call ran in the engine (the budget counts these)."""
    reused: int = 0
    """Proposals answered from the store without running."""
    inferred: int = 0
    """Proposals answered as certain failures (a smaller shape failed) without running."""
    invalid: int = 0
    """Proposals of points outside the config's grid (told as infeasible)."""
    exhausted: bool = False
    """Every point of every shape is known: the search stopped early."""
    elapsed_s: float = 0.0
    spec: SweepSpec | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self):
        return iter(self.results)

    @property
    def df(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([r.to_row() for r in self.results])

    def front(self, *, noise_aware: bool = True) -> list[Result]:
        """The feasible non-dominated results per shape, under the search's limits."""
        return pareto(
            self.results, self.objectives, noise_aware=noise_aware, constraints=self.limits
        )

    def recommend(self, priority: str = "latency", **kwargs: Any) -> Recommendation:
        """:func:`~sdpalab.explore.pareto.recommend` under the search's limits."""
        merged = {**self.limits, **{k: v for k, v in kwargs.items() if k in self.limits}}
        rest = {k: v for k, v in kwargs.items() if k not in self.limits}
        return recommend(
            self.results, priority=priority, objectives=self.objectives, **merged, **rest
        )


# --------------------------------------------------------------------------- samplers


def make_sampler(name: str, *, seed: int, budget: int):
    """The sampler ``name`` with the constraints function and sizes suited to ``budget``."""
    optuna = import_optuna()
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not valid; choose one of: {', '.join(SAMPLERS)}")
    startup = max(4, min(10, budget // 4))
    if name == "nsga2":
        # a population of 50 (Optuna's default) would spend a small budget on one random
        # generation; a few generations of a smaller one converge further
        population = max(4, min(50, budget // 4))
        return optuna.samplers.NSGAIISampler(
            population_size=population, seed=seed, constraints_func=constraints_of
        )
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed,
            constraints_func=constraints_of,
            n_startup_trials=startup,
            multivariate=True,
            warn_independent_sampling=False,
        )
    return optuna.samplers.GPSampler(
        seed=seed, constraints_func=constraints_of, n_startup_trials=startup
    )


def constraints_of(trial) -> list[float]:
    """Read back what the search stored: ``<= 0`` is met (status first, then each limit)."""
    return list(trial.user_attrs.get("constraints", [FAILED_VIOLATION]))


# --------------------------------------------------------------------------- the search


def search(
    spec: SweepSpec | str | Path,
    out: str | Path | None = None,
    *,
    trials: int,
    sampler: str = "nsga2",
    max_memory: Any = None,
    max_error: float | None = None,
    max_latency_ms: float | None = None,
    resume: bool = False,
    workers: int = 1,
    seed: int = 0,
    on_result: Callable[[Result, int, int], None] | None = None,
    objectives: Sequence[str] = OBJECTIVES,
    runner: Callable[[list[Trial]], list[Result]] | None = None,
) -> SearchResult:
    """Search ``spec``'s space with Optuna for ``trials`` new measurements; returns them all.

    ``spec`` is a SweepSpec, a YAML path or a preset name. Limits come from the config's
    ``constraints`` and are overridden by ``max_memory`` (bytes or ``"2GiB"``, against
    ``peak_mem_total_bytes``), ``max_error`` (relative Frobenius error) and ``max_latency_ms``.
    ``sampler``: ``nsga2`` (default), ``tpe`` or ``gp``. ``out`` (default
    ``runs/<name>-<time>``) holds ``results.sqlite``, ``results.csv``, ``run.json`` and the
    study's ``optuna.log``; a second call on the same ``out`` extends the study and reuses every
    stored measurement (``resume=True`` insists that there is one to extend). ``workers`` trials
    run at once. ``on_result(result, measured, trials)`` is called after each new measurement.
    ``runner`` replaces the engine (a function from a list of Trials to their Results), for
    replaying stored measurements in benchmarks.
    """
    optuna = import_optuna()
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"--trials {trials!r} is not valid; give a positive integer")
    if workers < 1:
        raise ValueError(f"--workers {workers} is not valid; give 1 or more")
    from sdpalab.explore.grid import CSV, RUN_JSON, _dump, _write_run_json, default_out
    from sdpalab.explore.pareto import _check_objectives

    objectives = _check_objectives(objectives)
    limit = limits(
        spec.constraints, max_error=max_error, max_memory=max_memory, max_latency_ms=max_latency_ms
    )
    out = Path(out) if out is not None else default_out(f"{spec.name}-search")
    journal = out / JOURNAL
    if resume and not journal.exists():
        raise ValueError(f"{out}: holds no {JOURNAL}; nothing to resume (drop --resume to start)")
    out.mkdir(parents=True, exist_ok=True)
    space = Space.from_trials(spec.trials())
    if not space.table:
        raise ValueError(f"{spec.name}: the config's grid has no trials")

    started = time.time()
    invocation = {
        "argv": list(sys.argv),
        "command": shlex.join(sys.argv),
        "started_utc": _utc(started),
        "search": {
            "trials": trials,
            "sampler": sampler,
            "seed": seed,
            "workers": workers,
            "limits": limit,
            "objectives": list(objectives),
        },
    }
    info = _write_run_json(out, spec, invocation, len(space.table))

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal)))
    fields = varying_fields(space.contexts)
    names = [
        spec.name if len(space.contexts) == 1 else f"{spec.name}[{context_label(c, fields)}]"
        for c in space.contexts
    ]
    dist = space.distributions()
    studies = []
    for i, name in enumerate(names):
        existing = optuna.study.get_all_study_names(storage) if journal.exists() else []
        prior = 0
        if name in existing:
            old = optuna.load_study(study_name=name, storage=storage)
            _check_same_space(old, dist, out)
            prior = len(old.trials)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            load_if_exists=True,
            directions=["minimize"] * len(objectives),
            sampler=make_sampler(
                sampler, seed=seed + 7919 * i + prior, budget=max(1, trials // len(names))
            ),
        )
        with warnings.catch_warnings():  # metric names are "experimental" in Optuna
            warnings.simplefilter("ignore")
            study.set_metric_names([f"log10 {o}" for o in objectives])
        study.set_user_attr("context", space.contexts[i])
        _fail_stale(study)
        studies.append(study)

    state = _SearchState(space, limit, objectives, out, runner, workers, on_result, trials, seed)
    try:
        state.run(studies, dist)
    finally:
        state.close()
    with ResultStore(out) as store:
        store.export_csv(out / CSV)
    elapsed = time.time() - started
    summary = {
        "measured": state.measured,
        "reused": state.reused,
        "inferred": state.inferred,
        "invalid": state.invalid,
        "exhausted": state.exhausted,
    }
    invocation.update(finished_utc=_utc(), elapsed_s=round(elapsed, 3), **summary)
    info["invocations"][-1] = invocation
    _dump(out / RUN_JSON, info)
    results = [state.known[t.trial_id] for t in space.table.values() if t.trial_id in state.known]
    return SearchResult(
        results=results,
        out=out,
        storage=journal,
        study_names=names,
        objectives=objectives,
        limits=limit,
        elapsed_s=elapsed,
        spec=spec,
        **summary,
    )


def _utc(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _check_same_space(study, dist: dict[str, Any], out: Path) -> None:
    for trial in study.trials:
        if trial.distributions and trial.distributions != dist:
            raise ValueError(
                f"{out}: holds a search over a different space (the config's axes "
                "changed); choose another --out"
            )
        break


def _fail_stale(study) -> None:
    """Trials left running by a killed search: mark them failed (their point can be re-asked)."""
    optuna = import_optuna()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


class _SearchState:
    """The ask → resolve → run → tell loop over the studies of one search."""

    def __init__(self, space, limit, objectives, out, runner, workers, on_result, budget, seed):
        self.space, self.limit, self.objectives = space, limit, objectives
        self.out, self.budget, self.on_result = out, budget, on_result
        self.store = ResultStore(out)
        self.known: dict[str, Result] = {r.trial_id: r for r in self.store.results()}
        self.runner = runner or _EngineRunner(out, workers, self._stored).run
        self.batch = workers
        self.measured = self.reused = self.inferred = self.invalid = 0
        self.exhausted = False
        self.rng = np.random.default_rng(seed)
        self.worst = [-math.inf] * len(objectives)

    def _stored(self, result: Result, counted: bool = True) -> None:
        self.known[result.trial_id] = result
        self.measured += counted
        if self.on_result is not None:
            self.on_result(result, self.measured, self.budget)

    def close(self) -> None:
        closer = getattr(self.runner, "__self__", None)
        if closer is not None and hasattr(closer, "close"):
            closer.close()
        self.store.close()

    def run(self, studies, dist) -> None:
        repeats = [0] * len(studies)
        for study in studies:  # the worst values so far set the failure penalty
            for trial in study.trials:
                if trial.values and trial.user_attrs.get("status") == "ok":
                    self.worst = [max(w, v) for w, v in zip(self.worst, trial.values, strict=True)]
        asks_left = 50 * self.budget + 10 * len(self.space.table)  # a guard, never expected
        while self.measured < self.budget and asks_left > 0:
            active = [i for i in range(len(studies)) if not self._complete(i)]
            if not active:
                self.exhausted = True
                return
            progressed = False
            for i in active:
                if self.measured >= self.budget:
                    return
                room = min(self.batch, self.budget - self.measured)
                asked, to_run = [], []
                for _ in range(room):
                    trial = studies[i].ask(dist)
                    point = self.space.point_of(trial.params)
                    engine_trial = self.space.table.get((i, point))
                    known = self._resolve(i, engine_trial)
                    if (
                        known is None
                        and engine_trial is not None
                        and any(t.trial_id == engine_trial.trial_id for t in to_run)
                    ):
                        known = "pending"
                    asked.append((trial, engine_trial, known))
                    asks_left -= 1
                    if known is None and engine_trial is not None:
                        to_run.append(engine_trial)
                ran = {r.trial_id: r for r in self.runner(to_run)} if to_run else {}
                for r in ran.values():
                    if r.trial_id not in self.known:  # a custom runner does not store
                        self._stored(r)
                        self.store.write(r)
                new_here = 0
                for trial, engine_trial, known in asked:
                    new_here += self._tell(studies[i], trial, engine_trial, known, ran)
                repeats[i] = 0 if new_here else repeats[i] + len(asked)
                progressed |= bool(new_here)
                if repeats[i] >= REPEAT_LIMIT:
                    self._enqueue_unknown(studies[i], i, near=point)
                    repeats[i] = 0
            if not progressed and all(self._complete(i) for i in active):
                self.exhausted = True
                return

    def _complete(self, ctx: int) -> bool:
        return all(
            self._resolve(ctx, self.space.table[(ctx, p)]) is not None
            for p in self.space.valid_points(ctx)
        )

    def _resolve(self, ctx: int, trial: Trial | None):
        """A stored Result, an inferred failure (a dict), or None: it must be measured."""
        if trial is None:
            return "invalid"
        if trial.trial_id in self.known:
            return self.known[trial.trial_id]
        return self._inferred(ctx, trial)

    def _inferred(self, ctx: int, trial: Trial) -> dict[str, Any] | None:
        """A failure certain from a smaller shape: same variant and dtype, every size <=."""
        here = self.space.contexts[ctx]
        point = choice_point(trial)
        for other_ctx, other in enumerate(self.space.contexts):
            if other_ctx == ctx or not _smaller_or_equal(other, here):
                continue
            key = (other_ctx, tuple(point.get(a) for a in self.space.axes))
            twin = self.space.table.get(key)
            if twin is None or twin.trial_id not in self.known:
                continue
            res = self.known[twin.trial_id]
            if res.status in _INFERABLE:
                return {
                    "status": res.status,
                    "from": res.trial_id,
                    "reason": f"{res.status} on a smaller shape ({res.trial_id})",
                }
            cons = constraint_values(res, self.limit)
            for name in ("max_memory", "max_latency_ms"):
                if res.ok and cons.get(name, 0) > 0:
                    return {
                        "status": "infeasible",
                        "from": res.trial_id,
                        "limit": name,
                        "reason": f"over {name} on a smaller shape ({res.trial_id})",
                    }
        return None

    def _tell(self, study, trial, engine_trial, known, ran) -> int:
        """Tell the study about one asked trial; returns 1 when it was measured just now."""
        if known == "pending":
            known = ran.get(engine_trial.trial_id) or self.known.get(engine_trial.trial_id)
        if known == "invalid":
            self.invalid += 1
            trial.set_user_attr("status", "invalid")
            trial.set_user_attr("reason", "not a point of the config's grid")
            return self._finish(study, trial, None, source="invalid")
        if isinstance(known, dict):
            self.inferred += 1
            for key, value in known.items():
                trial.set_user_attr(key if key != "from" else "inferred_from", value)
            return self._finish(study, trial, None, source="inferred")
        if known is None:
            result = ran[engine_trial.trial_id]
            self._finish(study, trial, result, source="measured")
            return 1
        self.reused += 1
        return self._finish(study, trial, known, source="store")

    def _finish(self, study, trial, result: Result | None, source: str) -> int:
        trial.set_user_attr("source", source)
        status_ok = (
            result is not None
            and result.ok
            and all(_finite(objective_value(result, o)) for o in self.objectives)
        )
        constraints = [0.0 if status_ok else FAILED_VIOLATION]
        if result is not None:
            trial.set_user_attr("trial_id", result.trial_id)
            trial.set_user_attr("label", result.label)
            trial.set_user_attr("status", result.status)
            if result.reason:
                trial.set_user_attr("reason", result.reason[:300])
            cons = constraint_values(result, self.limit)
            constraints += [
                cons[k] for k in ("max_error", "max_memory", "max_latency_ms") if k in cons
            ]
            for o in self.objectives:
                trial.set_user_attr(o, objective_value(result, o))
        else:
            constraints += [FAILED_VIOLATION for k, v in self.limit.items() if v is not None]
        trial.set_user_attr("constraints", constraints)
        if status_ok:
            values = [
                math.log10(max(objective_value(result, o), ERROR_FLOOR)) for o in self.objectives
            ]
            self.worst = [max(w, v) for w, v in zip(self.worst, values, strict=True)]
        else:  # a failure is told, not dropped: ten times worse than the worst seen
            values = [(w + 1.0) if math.isfinite(w) else 10.0 for w in self.worst]
        study.tell(trial, values)
        return 0

    def _enqueue_unknown(self, study, ctx: int, near: tuple) -> None:
        """The sampler keeps proposing known points: hand it the unmeasured point that differs
        from its last proposal on the fewest axes (ties broken at random, seeded)."""
        unknown = [
            p
            for p in self.space.valid_points(ctx)
            if self._resolve(ctx, self.space.table[(ctx, p)]) is None
        ]
        if not unknown:
            return
        distance = [sum(a != b for a, b in zip(p, near, strict=True)) for p in unknown]
        closest = [p for p, d in zip(unknown, distance, strict=True) if d == min(distance)]
        pick = closest[int(self.rng.integers(len(closest)))]
        study.enqueue_trial(self.space.params_of(pick))


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _smaller_or_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if any(a.get(k) != b.get(k) for k in CONTEXT_FIELDS if k not in SIZE_FIELDS):
        return False
    return all((a.get(k) or 0) <= (b.get(k) or 0) for k in SIZE_FIELDS)


class _EngineRunner:
    """The engine's worker pool, kept alive across the search's batches."""

    def __init__(self, out: Path, workers: int, stored: Callable[[Result, bool], None]) -> None:
        from sdpalab.run.executor import _Pool

        self.out, self.stored = out, stored
        self.store = ResultStore(out)
        self.pool = _Pool(out / "logs", workers, self._finish)
        self.batch: dict[str, Result] = {}

    def _finish(self, result: Result, counted: bool = True) -> None:
        self.store.write(result)
        self.batch[result.trial_id] = result
        self.stored(result, counted)

    def run(self, trials: list[Trial]) -> list[Result]:
        self.batch = {}
        pending = deque()
        for trial in trials:
            if trial.unsupported is not None:
                # the config already knows it cannot run: free, not counted against the budget
                self._finish(trial.result("unsupported", trial.unsupported), counted=False)
            else:
                pending.append(trial)
        if pending:
            self.pool.run(pending, keep=True)
        return [self.batch[t.trial_id] for t in trials]

    def close(self) -> None:
        self.pool.close()
        self.store.close()
