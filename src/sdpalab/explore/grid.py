"""``sweep(spec)``: run every trial of a config's grid into a run directory.

The run directory (:mod:`sdpalab.run.rundir`) holds ``results.sqlite`` (one row per trial,
written as each finishes), ``results.csv`` (exported at the end), ``run.json`` (the resolved
config, provenance, the command line of every invocation) and ``logs/`` (each worker's stderr).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sdpalab.measure.result import Result
from sdpalab.run.executor import OnResult, current_executor, run_trials
from sdpalab.run.rundir import (
    default_out,
    finish_run,
    frame,
    interrupted,
    prepare_run_dir,
    start_run,
)
from sdpalab.spec import SweepSpec
from sdpalab.spec.config import load_spec

if TYPE_CHECKING:
    import pandas as pd


class ResultList:
    """What a sweep's and a search's outcome share: iterate their ``results``, or take them as
    a DataFrame."""

    results: list[Result]

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self):
        return iter(self.results)

    @property
    def df(self) -> pd.DataFrame:
        """One row per trial, columns as :meth:`Result.to_row` (``latency_ms``, ``wl_seq_kv``)."""
        return frame(self.results)


@dataclass
class Results(ResultList):
    """A finished sweep: its Results in trial order and where they are stored."""

    results: list[Result]
    out: Path
    spec: SweepSpec | None = None
    elapsed_s: float | None = None
    name: str = field(default="")

    def __post_init__(self) -> None:
        self.name = self.name or (self.spec.name if self.spec else self.out.name)

    def counts(self) -> dict[str, int]:
        """Trials per status."""
        return dict(Counter(r.status for r in self.results))

    def failures(self) -> dict[str, int]:
        """Trials per status other than ``ok``, e.g. ``{"oom": 2, "timeout": 1}``."""
        return {s: n for s, n in self.counts().items() if s != "ok"}


def sweep(
    spec: SweepSpec | str | Path,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    workers: int = 1,
    on_result: OnResult | None = None,
    on_start: Callable[[dict], None] | None = None,
) -> Results:
    """Run every trial of ``spec`` (a SweepSpec, a YAML path or a preset name) into ``out``.

    Failed trials are results like any other (their ``status`` says why); this returns normally
    unless the run itself cannot proceed. ``out`` must not hold a run already, unless
    ``resume`` (run only the trials without a stored row; the run must be of this config, or
    of one this config extends) or ``force`` (replace it): see
    :func:`~sdpalab.run.rundir.prepare_run_dir`. ``on_start(load)`` is called once the
    directory is ready, before any trial, with the machine's load then (a
    :func:`~sdpalab.measure.provenance.machine_load` sample, also in ``run.json``);
    ``on_result(result, done, total)`` as each trial finishes. Ctrl-C raises
    :class:`~sdpalab.run.rundir.Interrupted` once ``results.csv`` and ``run.json`` agree with
    the store.
    """
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    if workers < 1:
        raise ValueError(f"--workers {workers} must be at least 1")
    out = prepare_run_dir(
        out if out is not None else default_out(spec.name), spec, resume=resume, force=force
    )
    trials = spec.trials()
    started = time.time()
    executor = current_executor().describe()  # which engine ran it, in run.json
    info = start_run(out, spec, len(trials), resume=resume, workers=workers, **executor)
    if on_start is not None:
        on_start(info["invocations"][-1]["load"])
    try:
        results = run_trials(
            trials,
            out,
            workers=workers,
            resume=resume,
            on_result=on_result,
            load_at_start=info["invocations"][-1]["load"],
        )
    except KeyboardInterrupt:
        raise interrupted(out, info, started, len(trials)) from None
    run = Results(results, out, spec)
    info["counts"] = run.counts()
    busy = sum(bool(r.provenance.get("busy")) for r in results)
    run.elapsed_s = finish_run(out, info, started, counts=run.counts(), busy_trials=busy)
    return run
