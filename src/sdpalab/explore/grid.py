"""``sl.sweep(spec)``: run every trial of a config's grid into a run directory.

The run directory holds ``results.sqlite`` (the store, one row per trial, written as each
finishes), ``results.csv`` (exported at the end), ``run.json`` (the resolved config, provenance,
the command line of every invocation) and ``logs/`` (each worker's stderr).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdpalab.measure.result import Result
from sdpalab.run.executor import OnResult, run_trials
from sdpalab.run.store import FILENAME, ResultStore
from sdpalab.spec import SweepSpec, dump_spec
from sdpalab.spec.config import load_spec

if TYPE_CHECKING:
    import pandas as pd

RUN_JSON = "run.json"
CSV = "results.csv"


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
        """One row per trial, columns as :meth:`Result.to_row` (``latency_ms``, ``wl_seq_kv``...)."""
        import pandas as pd

        return pd.DataFrame([r.to_row() for r in self.results])


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

    @classmethod
    def load(cls, out: str | Path) -> Results:
        """Read a run directory back from its store."""
        out = Path(out)
        if not (out / FILENAME).exists():
            raise FileNotFoundError(f"{out} holds no {FILENAME}: not a run directory")
        with ResultStore(out) as store:
            return cls(store.results(), out)


def default_out(name: str) -> Path:
    """``runs/<name>-<UTC time>``."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


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
    if not resume and (out / FILENAME).exists():
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
    invocation = {
        "argv": list(sys.argv),
        "command": shlex.join(sys.argv),
        "started_utc": _utc(started),
        "resume": resume,
        "workers": workers,
    }
    info = _write_run_json(out, spec, invocation, len(trials))
    results = run_trials(trials, out, workers=workers, resume=resume, on_result=on_result)
    with ResultStore(out) as store:
        store.export_csv(out / CSV)
    elapsed = time.time() - started
    run = Results(results, out, spec, elapsed)
    invocation.update(finished_utc=_utc(), elapsed_s=round(elapsed, 3), counts=run.counts())
    info["invocations"][-1] = invocation
    info["counts"] = run.counts()
    _dump(out / RUN_JSON, info)
    return run


def _utc(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _write_run_json(
    out: Path, spec: SweepSpec, invocation: dict[str, Any], n_trials: int
) -> dict[str, Any]:
    """``run.json``: name, resolved config, provenance, and one entry per invocation."""
    from sdpalab.measure.provenance import provenance

    path = out / RUN_JSON
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = {}
    info = {
        "name": spec.name,
        **dump_spec(spec),
        "trials": n_trials,
        "provenance": provenance(spec.device, argv=invocation["argv"]),
        "argv": invocation["argv"],
        "command": invocation["command"],
        "invocations": [*previous.get("invocations", []), invocation],
    }
    _dump(path, info)
    return info


def _dump(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
