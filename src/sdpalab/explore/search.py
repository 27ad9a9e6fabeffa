"""``search(spec, trials=N)``: multi-objective search of a config's space with Optuna.

The space is the config's grid, less the approximations (variants computing another mask than
the one the workload names) unless the constraints allow them. Every choice axis of a variant (``backend``, ``mod`` with its
arguments, ``kv_cache``, ``kv_quant``, ``kv_args.*``, ``weight_quant``, ``projections``) and the
compute ``dtype`` becomes a parameter: categorical, or an integer level index for a numeric axis
(so TPE and GP see the order of sizes). The shape of the work (batch, heads, lengths, head dim)
is not a choice, nor the attention it means (a workload that names no mask means each variant's
own): each such context gets its own study, the budget is shared round-robin, smallest shape
first, and Pareto fronts are per context.

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
DIR/optuna.log`` opens it; calling ``search`` again on the same DIR extends it. With
``storage=`` (an RDB URL, ``postgresql://USER@HOST/DB``) the study lives there instead, and
several search processes, each with its own DIR, grow one study (see
:mod:`~sdpalab.explore.search_loop`); every trial carries its whole Result (user attr
``result``), so :func:`study_results` reads the study back without any run directory. A
storage URL's password never reaches ``run.json``, a log or an error message. The space is
:mod:`sdpalab.explore.space`; the ask/resolve/run/tell loop :mod:`sdpalab.explore.search_loop`.
"""

from __future__ import annotations

import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdpalab.explore.grid import ResultList
from sdpalab.explore.objectives import (
    FAILED_VIOLATION,
    OBJECTIVES,
    check_constraints,
    check_memory,
    check_objectives,
    context_label,
    varying_fields,
)
from sdpalab.explore.pareto import pareto
from sdpalab.explore.recommend import Recommendation, recommend
from sdpalab.explore.search_loop import SearchLoop, owner_of
from sdpalab.explore.space import Space, import_optuna, trial_constraints
from sdpalab.measure.result import Result
from sdpalab.run.executor import SCALE_INSTALL, Executor
from sdpalab.run.rundir import (
    default_out,
    finish_run,
    interrupted,
    prepare_run_dir,
    read_run_info,
    redact_secrets,
    start_run,
)
from sdpalab.spec import Constraints, SweepSpec, Trial
from sdpalab.spec.config import load_spec
from sdpalab.spec.variant import approximation

SAMPLERS = ("nsga2", "tpe", "gp")
JOURNAL = "optuna.log"
STORAGE_HINT = (
    "give postgresql://USER@HOST[:PORT]/DB (the password in the URL, PGPASSWORD or ~/.pgpass) "
    "or sqlite:///PATH"
)


# --------------------------------------------------------------------------- the result


@dataclass
class SearchResult(ResultList):
    """What a search measured or reused, where it lives, and how it went."""

    results: list[Result]
    """Every stored Result of a point of the space: measured by this call, by an earlier
    search on the same directory, or by a sweep into it."""
    out: Path
    storage: Path | str
    """``DIR/optuna.log``, or the ``storage`` URL with its password masked: open with
    ``optuna-dashboard``."""
    study_names: list[str]
    objectives: tuple[str, ...]
    constraints: Constraints
    memory: str = "auto"
    """The memory measure of the ``memory`` objective and of ``max_memory``."""
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

    def front(self, *, noise_aware: bool = True) -> list[Result]:
        """The feasible non-dominated results per shape, under the search's constraints."""
        return pareto(
            self.results,
            self.objectives,
            memory=self.memory,
            noise_aware=noise_aware,
            constraints=self.constraints,
        )

    def recommend(
        self,
        priority: str = "latency",
        *,
        constraints: Constraints | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Recommendation:
        """:func:`~sdpalab.explore.recommend.recommend` under ``constraints`` (default: the
        search's)."""
        return recommend(
            self.results,
            priority=priority,
            constraints=self.constraints if constraints is None else constraints,
            objectives=self.objectives,
            context=context,
            memory=self.memory,
        )


# --------------------------------------------------------------------------- samplers


def _version(module) -> tuple[int, int]:
    major, minor = [*module.__version__.split("."), "0"][:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def make_sampler(name: str, *, seed: int, budget: int, parallel: bool = False):
    """The sampler ``name`` with the constraints function and sizes suited to ``budget``;
    ``parallel``: trials are asked before earlier ones are told (several workers, a shared
    study), so TPE lies constantly about the running ones rather than propose them again."""
    optuna = import_optuna()
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not valid; choose one of: {', '.join(SAMPLERS)}")
    startup = max(4, min(10, budget // 4))
    # Optuna 5 reads the constraints each trial sets (``Trial.set_constraint``, see
    # search_loop) and deprecates the samplers' ``constraints_func``; Optuna 4 needs the latter
    cons = {} if trial_constraints() else {"constraints_func": constraints_of}
    if name == "nsga2":
        # a population of 50 (Optuna's default) would spend a small budget on one random
        # generation; a few generations of a smaller one converge further
        population = max(4, min(50, budget // 4))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed, **cons)
    if name == "tpe":
        # Optuna 4.9 deprecated the switch for the independent-sampling warning
        quiet = {} if _version(optuna) >= (4, 9) else {"warn_independent_sampling": False}
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=startup,
            multivariate=True,
            constant_liar=parallel,
            **quiet,
            **cons,
        )
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, **cons)


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
    constraints: Constraints | None = None,
    resume: bool = False,
    force: bool = False,
    workers: int = 1,
    seed: int = 0,
    on_result: Callable[[Result, int, int], None] | None = None,
    on_start: Callable[[dict], None] | None = None,
    objectives: Sequence[str] = OBJECTIVES,
    runner: Callable[[list[Trial]], list[Result]] | None = None,
    memory: str = "auto",
    executor: Executor | None = None,
    storage: str | None = None,
    study: str | None = None,
) -> SearchResult:
    """Search ``spec``'s space with Optuna for ``trials`` new measurements; returns them all.

    ``spec`` is a SweepSpec, a YAML path or a preset name. ``constraints`` (default: the
    config's) limit the relative error, the memory and the latency of what counts as
    feasible. ``memory`` picks the memory measure that the ``memory`` objective and
    ``max_memory`` use (:data:`~sdpalab.explore.objectives.MEMORY_MEASURES`; ``auto``: the
    persistent cost for decode, the total peak otherwise). ``sampler``: ``nsga2`` (default),
    ``tpe`` or ``gp``. ``out`` (default ``runs/<name>-<time>``) holds ``results.sqlite``,
    ``results.csv``, ``run.json`` and the study's ``optuna.log``. ``resume`` extends the search
    (or sweep) of this config already in ``out`` and reuses every stored measurement;
    ``force`` replaces it; without either, ``out`` must not hold a run (as for ``sweep``:
    :func:`~sdpalab.run.rundir.prepare_run_dir`). ``workers`` trials run at once.
    ``on_start(load)`` is called before the first trial with the machine's load (as ``sweep``);
    ``on_result(result, measured, trials)`` after each new measurement. Ctrl-C raises
    :class:`~sdpalab.run.rundir.Interrupted` once ``results.csv`` and ``run.json`` agree with
    the store. ``runner`` replaces the engine (a function from a list of
    Trials to their Results), for replaying stored measurements in benchmarks. ``executor``
    runs the trials (default: :func:`~sdpalab.run.executor.current_executor`). ``storage``:
    an Optuna RDB URL that holds the study, shared with other search processes (default:
    ``out/optuna.log``); ``study``: its name (default: the config's; with several shapes,
    one study per shape, ``NAME[shape]``).
    """
    optuna = import_optuna()
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"--trials {trials!r} is not valid; give a positive integer")
    if workers < 1:
        raise ValueError(f"--workers {workers} is not valid; give 1 or more")
    if sampler not in SAMPLERS:
        raise ValueError(
            f"--sampler {sampler!r} is not valid; choose one of: {', '.join(SAMPLERS)}"
        )
    objectives = check_objectives(objectives)
    memory = check_memory(memory)
    constraints = check_constraints(spec.constraints if constraints is None else constraints)
    points = spec.trials()
    if not points:
        raise ValueError(f"{spec.name}: the config's grid has no trials")
    if not constraints.allow_approximate:  # variants computing another mask than the one meant
        points = [t for t in points if approximation(t.workload_spec, t.variant_spec) is None]
    if not points:
        raise ValueError(
            f"{spec.name}: every variant computes another mask than the workload names; allow "
            "approximations with constraints: {allow_approximate: true} or --allow-approximate"
        )
    space = Space.from_trials(points)
    rdb = open_storage(storage) if storage is not None else None  # before anything is written
    out = out if out is not None else default_out(f"{spec.name}-search")
    out = prepare_run_dir(out, spec, resume=resume, force=force)
    journal = out / JOURNAL

    started = time.time()
    info = start_run(
        out,
        spec,
        len(space.table),
        search={
            "trials": trials,
            "sampler": sampler,
            "seed": seed,
            "workers": workers,
            "limits": constraints.to_dict(),
            "objectives": list(objectives),
            "memory": memory,
            "storage": redact_secrets(storage) if storage is not None else JOURNAL,
            "study": study or spec.name,
            **(executor.describe() if executor is not None else {}),
        },
    )
    if on_start is not None:
        on_start(info["invocations"][-1]["load"])

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    backend = rdb if rdb is not None else JournalStorage(JournalFileBackend(str(journal)))
    fields = varying_fields(space.contexts)
    prefix = study or spec.name
    names = [
        prefix if len(space.contexts) == 1 else f"{prefix}[{context_label(c, fields)}]"
        for c in space.contexts
    ]
    dists = [space.distributions(i) for i in range(len(names))]  # each shape its own axes
    shared = rdb is not None
    owner = owner_of(out)
    studies = []
    existing = optuna.study.get_all_study_names(backend) if shared or journal.exists() else []
    for i, name in enumerate(names):
        prior = 0
        if name in existing:
            old = optuna.load_study(study_name=name, storage=backend)
            _check_same_space(old, dists[i], storage or out)
            prior = len(old.trials)
        one = optuna.create_study(
            study_name=name,
            storage=backend,
            load_if_exists=True,
            directions=["minimize"] * len(objectives),
            sampler=make_sampler(
                sampler,
                # a process of a shared study samples its own way (its own run directory)
                seed=seed + 7919 * i + prior + (zlib.crc32(owner.encode()) % 9973 if shared else 0),
                budget=max(1, trials // len(names)),
                parallel=workers > 1 or shared,
            ),
        )
        with warnings.catch_warnings():  # metric names are "experimental" in Optuna
            warnings.simplefilter("ignore")
            one.set_metric_names([f"log10 {o}" for o in objectives])
        one.set_user_attr("context", space.contexts[i])
        one.set_user_attr("limits", constraints.to_dict())
        one.set_user_attr("memory", memory)
        one.set_user_attr("objectives", list(objectives))
        _fail_stale(one, owner if shared else None)
        studies.append(one)

    state = SearchLoop(
        space,
        constraints,
        objectives,
        out,
        runner,
        workers,
        on_result,
        trials,
        seed,
        memory,
        executor=executor,
        shared=shared,
    )
    try:
        state.run(studies, dists)
    except KeyboardInterrupt:
        state.close()  # the workers stop before the store is read back
        raise interrupted(out, info, started, len(space.table)) from None
    finally:
        state.close()
    summary = {
        "measured": state.measured,
        "reused": state.reused,
        "inferred": state.inferred,
        "invalid": state.invalid,
        "exhausted": state.exhausted,
    }
    elapsed = finish_run(out, info, started, **summary)
    results = [state.known[t.trial_id] for t in space.table.values() if t.trial_id in state.known]
    return SearchResult(
        results=results,
        out=out,
        storage=redact_secrets(storage) if storage is not None else journal,
        study_names=names,
        objectives=objectives,
        constraints=constraints,
        memory=memory,
        elapsed_s=elapsed,
        spec=spec,
        **summary,
    )


def search_settings(run_dir: str | Path) -> dict[str, Any]:
    """The settings of the last search into ``run_dir`` (sampler, limits, objectives, memory
    measure), as ``run.json`` records them; ``{}`` when no search ran there."""
    info = read_run_info(run_dir)
    for entry in [*reversed(info.get("invocations") or []), info]:
        found = entry.get("search") if isinstance(entry, dict) else None
        if isinstance(found, dict):
            return found
    return {}


def _check_same_space(study, dist: dict[str, Any], where: Path | str) -> None:
    for trial in study.trials:
        if trial.distributions and trial.distributions != dist:
            other = "--study" if isinstance(where, str) else "--out"
            raise ValueError(
                f"{redact_secrets(str(where))}: study {study.study_name!r} holds a search over a "
                f"different space (the config's axes changed); choose another {other}"
            )
        break


def _fail_stale(study, owner: str | None = None) -> None:
    """Trials left running by a killed search: mark them failed (their point can be re-asked).
    ``owner``: a shared study's, only those this host and run directory left (others' trials
    may be running right now)."""
    optuna = import_optuna()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if owner is None or trial.user_attrs.get("owner") == owner:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


# --------------------------------------------------------------------------- a shared study


def open_storage(url: str):
    """Optuna's RDB storage at ``url`` (tables created on first use), or a ValueError of one
    line, its password masked, when the URL is not one or the database will not open.
    ``postgresql://`` goes through psycopg (3); the password may come from the URL,
    ``PGPASSWORD`` or ``~/.pgpass`` (libpq reads the last two itself)."""
    import_optuna()
    shown = redact_secrets(url)
    scheme, sep, rest = url.partition("://")
    dialect, _, driver = scheme.partition("+")
    if not sep or not rest or dialect not in ("postgresql", "postgres", "sqlite"):
        raise ValueError(f"--storage {shown!r} is not valid; {STORAGE_HINT}")
    engine: dict[str, Any] = {}
    if dialect != "sqlite":
        if not driver:
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise ValueError(f"--storage {shown!r} needs psycopg: {SCALE_INSTALL}") from None
            driver = "psycopg"
        url = f"postgresql+{driver}://{rest}"
        engine = {"connect_args": {"connect_timeout": 10}}
    from optuna.storages import RDBStorage

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for attempt in range(3):
                try:
                    return RDBStorage(url, engine_kwargs=engine)
                except Exception as err:
                    # processes started together race to create the tables; the loser sees a
                    # duplicate (a unique violation) and finds them there on the next try
                    if attempt == 2 or "duplicate key" not in str(err):
                        raise
                    time.sleep(0.5 * (attempt + 1))
    except Exception as err:  # a bad host, a refused password, a missing database or driver
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = redact_secrets(lines[0] if lines else type(err).__name__)[:300]
        raise ValueError(f"--storage {shown!r}: cannot open the study storage ({reason})") from None


def study_results(storage: str, study: str) -> tuple[list[Result], dict[str, Any]]:
    """Every Result the study ``study`` (and its per-shape studies ``study[...]``) holds in
    ``storage``, one per trial id, and the search's settings it recorded (``limits``,
    ``memory``, ``objectives``). ValueError when no such study is there."""
    optuna = import_optuna()
    backend = open_storage(storage)
    names = [
        n
        for n in optuna.study.get_all_study_names(backend)
        if n == study or n.startswith(f"{study}[")
    ]
    if not names:
        raise ValueError(
            f"--study {study!r}: no such study in {redact_secrets(storage)!r}; "
            "`sdpalab search ... --storage URL --study NAME` makes one"
        )
    found: dict[str, Result] = {}
    settings: dict[str, Any] = {}
    complete = (optuna.trial.TrialState.COMPLETE,)
    for name in names:
        one = optuna.load_study(study_name=name, storage=backend)
        settings = {
            k: one.user_attrs[k] for k in ("limits", "memory", "objectives") if k in one.user_attrs
        } or settings
        for trial in one.get_trials(deepcopy=False, states=complete):
            data = trial.user_attrs.get("result")
            if isinstance(data, dict) and trial.user_attrs.get("trial_id") not in found:
                found[trial.user_attrs["trial_id"]] = Result.from_dict(data)
    return list(found.values()), settings
