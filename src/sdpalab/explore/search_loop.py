"""The search's ask → resolve → run → tell loop, and the engine pool it keeps alive.

A proposal is resolved before anything runs: a point outside the grid is told as infeasible;
a point the store holds is told from the store; a failure certain from a smaller shape (the
same configuration ran out of memory or time, or broke a memory or latency limit, on a shape
no larger in any size) is told without running; only the rest is measured, in batches of
``workers`` (so ``workers`` trials are in flight at once), by the executor's long-lived pool.

A study shared by several search processes (``--storage``, each with its own run directory):
every process reads the Results the others told the study (user attr ``result``) before it
asks, and claims each point it is about to measure (user attr ``trial_id`` on its running
trial); a point another process's running trial also claims is not measured here (its trial is
told as failed and the point may be asked again later), so no point is measured twice.
"""

from __future__ import annotations

import json
import math
import socket
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sdpalab.explore.objectives import (
    ERROR_FLOOR,
    FAILED_VIOLATION,
    constraint_values,
    error_field,
    memory_field,
    objective_value,
)
from sdpalab.explore.space import choice_point, trial_constraints
from sdpalab.measure.result import Result
from sdpalab.run.executor import Executor, current_executor
from sdpalab.run.rundir import ResultStore
from sdpalab.spec import CONTEXT_FIELDS, SIZE_FIELDS, Trial

REPEAT_LIMIT = 3
"""Proposals of already-known points in a row before a study is handed the unmeasured point
nearest the last proposal (fewest axes changed): samplers that have converged repeat themselves,
and each repeat costs an ask without buying a measurement."""
_INFERABLE = ("oom", "timeout")


class SearchLoop:
    """The ask → resolve → run → tell loop over the studies of one search."""

    def __init__(
        self,
        space,
        constraints,
        objectives,
        out,
        runner,
        workers,
        on_result,
        budget,
        seed,
        memory="auto",
        executor: Executor | None = None,
        shared: bool = False,
    ):
        self.space, self.constraints, self.objectives = space, constraints, objectives
        self.memory = memory  # the measure "memory" and max_memory mean
        self.out, self.budget, self.on_result = out, budget, on_result
        self.store = ResultStore(out)
        self.known: dict[str, Result] = {r.trial_id: r for r in self.store.results()}
        self.shared = shared
        """Other processes may grow the studies: read their results, claim before measuring."""
        self.claimed: set[str] = set()
        """Trial ids another process's running trial claims (as of the last sync)."""
        self.owner = owner_of(out)
        if runner is None:
            device = next(iter(space.table.values())).workload_spec.get("device") or "cpu"
            runner = EngineRunner(out, workers, self._stored, executor, str(device)).run
        self.runner = runner
        self.batch = workers
        self.measured = self.reused = self.inferred = self.invalid = self.elsewhere = 0
        self.exhausted = False
        self.rng = np.random.default_rng(seed)
        self.worst: dict[str, list[float]] = {}
        """Study name → the worst value of each objective its successes were told."""
        self._left: dict[int, list[tuple]] = {}

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

    def run(self, studies, dists) -> None:
        """Ask, resolve, run and tell until the budget is spent or every point is known;
        ``dists``: each study's distributions (:meth:`Space.distributions` of its shape)."""
        repeats = [0] * len(studies)
        for study in studies:  # the worst values so far set the failure penalty
            for trial in study.trials:
                if trial.values and trial.user_attrs.get("status") == "ok":
                    self._worse(study, trial.values)
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
                if self.shared:
                    self._sync(studies[i])
                asked, to_run = [], []
                for _ in range(room):
                    trial = studies[i].ask(dists[i])
                    point = self.space.point_of(trial.params, i)
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
                        trial.set_user_attr("trial_id", engine_trial.trial_id)  # the claim
                        trial.set_user_attr("owner", self.owner)
                if self.shared and to_run:
                    asked, to_run = self._unclaimed(studies[i], asked, to_run)
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
        return not self._unknown(ctx)

    def _unknown(self, ctx: int) -> list[tuple]:
        """Points of shape ``ctx`` that nothing resolves yet. A resolved point stays resolved
        (the store only grows), so each call re-checks only what was left the time before."""
        left = self._left.get(ctx)
        if left is None:
            left = self.space.valid_points(ctx)
        state = {p: self._resolve(ctx, self.space.table[(ctx, p)]) for p in left}
        # a point claimed elsewhere may come back (its process died): not dropped for good
        self._left[ctx] = [p for p in left if state[p] is None or state[p] == "elsewhere"]
        return [p for p in left if state[p] is None]

    def _resolve(self, ctx: int, trial: Trial | None):
        """A stored Result, an inferred failure (a dict), or None: it must be measured."""
        if trial is None:
            return "invalid"
        if trial.trial_id in self.known:
            return self.known[trial.trial_id]
        if trial.trial_id in self.claimed:
            return "elsewhere"
        return self._inferred(ctx, trial)

    def _sync(self, study) -> None:
        """Take in the Results other processes told the shared study (not counted, not
        stored: this run directory holds what this process measured)."""
        state = _trial_state()
        self.claimed = set()
        for frozen in study.get_trials(deepcopy=False, states=(state.COMPLETE, state.RUNNING)):
            found = frozen.user_attrs.get("result")
            tid = frozen.user_attrs.get("trial_id")
            if not tid or tid in self.known:
                continue
            if frozen.state == state.RUNNING:
                self.claimed.add(tid)
            elif isinstance(found, dict):
                self.known[tid] = Result.from_dict(found)

    def _unclaimed(self, study, asked: list[tuple], to_run: list[Trial]):
        """Drop from ``to_run`` each point that another process's trial also claims (running)
        or has measured since the last sync: at most one process measures a point, as the
        later of two claims always sees the earlier one (both may step back; the point is
        then asked again later)."""
        state = _trial_state()
        ours = {trial.number for trial, _, _ in asked}
        others = study.get_trials(deepcopy=False, states=(state.RUNNING, state.COMPLETE))
        taken = {
            t.user_attrs.get("trial_id")
            for t in others
            if t.number not in ours and t.user_attrs.get("trial_id")
        }
        if not taken.intersection(t.trial_id for t in to_run):
            return asked, to_run
        kept = [
            (
                trial,
                engine_trial,
                "elsewhere"
                if known is None and engine_trial is not None and engine_trial.trial_id in taken
                else known,
            )
            for trial, engine_trial, known in asked
        ]
        return kept, [t for t in to_run if t.trial_id not in taken]

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
            cons = constraint_values(res, self.constraints, self.memory)
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
        if known == "elsewhere":  # another process measures it: no values to tell yet
            self.elsewhere += 1
            trial.set_user_attr("source", "elsewhere")
            study.tell(trial, state=_trial_state().FAIL)
            return 0
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
            and all(_finite(objective_value(result, o, self.memory)) for o in self.objectives)
        )
        named = {"status": 0.0 if status_ok else FAILED_VIOLATION}
        if result is not None:
            trial.set_user_attr("trial_id", result.trial_id)
            # the whole Result, so that other processes and `pareto --storage` can read it
            trial.set_user_attr("result", json.loads(json.dumps(result.to_dict(), default=str)))
            trial.set_user_attr("label", result.label)
            trial.set_user_attr("status", result.status)
            if result.reason:
                trial.set_user_attr("reason", result.reason[:300])
            named |= constraint_values(result, self.constraints, self.memory)
            for o in self.objectives:  # "memory" and "error" under the field each is
                name = {"memory": memory_field(result, self.memory), "error": error_field(result)}
                name = name.get(o, o)
                trial.set_user_attr(name, objective_value(result, o, self.memory))
        else:
            named |= {k: FAILED_VIOLATION for k in self.constraints.limits()}
        trial.set_user_attr("constraints", list(named.values()))
        if trial_constraints():
            for name, value in named.items():
                trial.set_constraint(name, value)
        if status_ok:
            values = [
                math.log10(max(objective_value(result, o, self.memory), ERROR_FLOOR))
                for o in self.objectives
            ]
            self._worse(study, values)
        else:  # a failure is told, not dropped: ten times worse than the study's worst
            worst = self.worst.get(study.study_name, [-math.inf] * len(self.objectives))
            values = [(w + 1.0) if math.isfinite(w) else 10.0 for w in worst]
        study.tell(trial, values)
        return 0

    def _worse(self, study, values) -> None:
        # per study: each shape and mask has its own scale (a sliding window's latencies say
        # nothing about what is bad for full attention)
        worst = self.worst.get(study.study_name, [-math.inf] * len(self.objectives))
        self.worst[study.study_name] = [max(w, v) for w, v in zip(worst, values, strict=True)]

    def _enqueue_unknown(self, study, ctx: int, near: tuple) -> None:
        """The sampler keeps proposing known points: hand it the unmeasured point that differs
        from its last proposal on the fewest axes (ties broken at random, seeded)."""
        unknown = self._unknown(ctx)
        if not unknown:
            return
        distance = [sum(a != b for a, b in zip(p, near, strict=True)) for p in unknown]
        closest = [p for p, d in zip(unknown, distance, strict=True) if d == min(distance)]
        pick = closest[int(self.rng.integers(len(closest)))]
        study.enqueue_trial(self.space.params_of(pick, ctx))


def owner_of(out: Path) -> str:
    """Who claims a study's running trials: this host and run directory."""
    return f"{socket.gethostname()}:{Path(out).resolve()}"


def _trial_state():
    from optuna.trial import TrialState

    return TrialState


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _smaller_or_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if any(a.get(k) != b.get(k) for k in CONTEXT_FIELDS if k not in SIZE_FIELDS):
        return False
    return all((a.get(k) or 0) <= (b.get(k) or 0) for k in SIZE_FIELDS)


class EngineRunner:
    """The executor's pool (local workers or Ray actors), kept alive across the search's
    batches."""

    def __init__(
        self,
        out: Path,
        workers: int,
        stored: Callable[[Result, bool], None],
        executor: Executor | None = None,
        device: str = "cpu",
    ) -> None:
        self.out, self.stored = out, stored
        self.store = ResultStore(out)
        executor = executor or current_executor()
        self.pool = executor.pool(out / "logs", workers, self._finish, device=device)
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
