"""``sweep(spec)``: run every trial of a config's grid into a run directory.

The run directory (:mod:`sdpalab.run.rundir`) holds ``results.sqlite`` (one row per trial,
written as each finishes), ``results.csv`` (exported at the end), ``run.json`` (the resolved
config, provenance, the command line of every invocation) and ``logs/`` (each worker's stderr).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sdpalab.measure.result import Result
from sdpalab.run.executor import OnResult, run_trials
from sdpalab.run.rundir import SQLITE, ResultStore, default_out, finish_run, frame, start_run
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
    workers: int = 1,
    on_result: OnResult | None = None,
) -> Results:
    """Run every trial of ``spec`` (a SweepSpec, a YAML path or a preset name) into ``out``.

    Failed trials are results like any other (their ``status`` says why); this returns normally
    unless the run itself cannot proceed. ``resume`` runs only trials without a stored row;
    without it, ``out`` must not already hold results. ``on_result(result, done, total)`` is
    called as each trial finishes.
    """
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    if workers < 1:
        raise ValueError(f"--workers {workers} must be at least 1")
    out = Path(out) if out is not None else default_out(spec.name)
    if not resume and (out / SQLITE).exists():
        with ResultStore(out) as store:
            held = len(store)
        if held:
            raise ValueError(
                f"{out}: already holds a run ({held} trials); pass --resume to "
                "continue it, or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    trials = spec.trials()
    started = time.time()
    info = start_run(out, spec, len(trials), resume=resume, workers=workers)
    results = run_trials(trials, out, workers=workers, resume=resume, on_result=on_result)
    run = Results(results, out, spec)
    info["counts"] = run.counts()
    run.elapsed_s = finish_run(out, info, started, counts=run.counts())
    return run
