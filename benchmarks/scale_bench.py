"""Per-trial overhead and throughput through Ray, beside the local executor, on the CPU.

Trivial trials (tiny shape, one repeat, no accuracy or memory pass) run through
``run_trials`` on each executor with 1 and 2 workers. For each trial after the first,

    overhead = (time between its on_result and the previous one) * workers - (its measure time)

and trials/s = (results - 1) / (time from the first result to the last): both after the
workers (local processes or Ray actors) have started, which is reported apart. Ray runs on an
instance this script starts on this host (dashboard off) and stops at the end.

    python benchmarks/scale_bench.py [--trials 100] [--markdown PATH]

The last stdout line is one JSON document with the numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

TRIVIAL = {"warmup": 0, "repeats": 1, "check_accuracy": False, "memory": False}


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median_s": statistics.median(ordered),
        "p90_s": ordered[int(0.9 * (len(ordered) - 1))],
    }


def trivial_trials(count: int, offset: int = 0):
    from sdpalab.spec.config import spec_from_dict

    spec = spec_from_dict(
        {
            "name": "scale",
            "device": "cpu",
            "workload": {"heads_q": 1, "head_dim": 8, "seq_kv": list(range(8, 8 + count))},
            "variants": {"backend": "eager"},
            "measure": {**TRIVIAL, "timeout_s": 120 + offset},  # offset: fresh trial ids
        }
    )
    return spec.trials()


def one_run(executor, count: int, workers: int, offset: int) -> dict[str, object]:
    from sdpalab.run.executor import run_trials

    stamps: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run_trials(
            trivial_trials(count, offset),
            out,
            workers=workers,
            executor=executor,
            on_result=lambda r, done, total: stamps.append((time.perf_counter(), r.wall_s or 0)),
        )
    gaps = [(b[0] - a[0]) * workers - b[1] for a, b in itertools.pairwise(stamps)]
    return {
        "workers": workers,
        "overhead": stats(gaps),
        "measure_median_s": statistics.median(w for _, w in stamps),
        "trials_per_s": (len(stamps) - 1) / (stamps[-1][0] - stamps[0][0]),
        "startup_s": stamps[0][0] - started,
    }


def machine() -> dict[str, object]:
    import torch

    from sdpalab.measure.provenance import cpu_model

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def markdown(report: dict) -> str:
    m = report["machine"]
    rows = "\n".join(
        f"| {r['executor']} | {r['workers']} | {r['overhead']['n']} | "
        f"{r['overhead']['median_s'] * 1e3:.1f} | {r['overhead']['p90_s'] * 1e3:.1f} | "
        f"{r['measure_median_s'] * 1e3:.1f} | {r['trials_per_s']:.1f} | {r['startup_s']:.1f} |"
        for r in report["runs"]
    )
    return f"""# Trials through Ray beside the local executor (CPU)

Command: `{report["command"]}`
Date: {report["date_utc"]}
Machine: {m["cpu"]}, {m["cores"]} cores, Python {m["python"]}, torch {m["torch"]}, Ray
{report["ray"]}, {m["platform"]}; 1-minute load average {m["loadavg_1m"]} at the start and
{report["loadavg_end_1m"]} at the end (the machine was shared with other jobs).

| executor | workers | trials | overhead median ms | overhead p90 ms | measure median ms | trials/s | start-up s |
|---|---:|---:|---:|---:|---:|---:|---:|
{rows}

Trivial trials: `[1, 1, S, 8]` float32, eager, one repeat, no accuracy or memory pass.
Overhead is the time between consecutive results (times the workers in flight) minus the
trial's own in-worker measure time: for the local executor, JSON over a pipe; for Ray, an actor
call and its reply through Ray's object store; both then the SQLite commit and the callback.
Trials/s counts from the first result to the last (workers already started); start-up is the
time to the first result (local: worker processes importing torch; Ray: actors starting on a
Ray instance already up, whose own start is not counted).
Measure is the trial's own time in its worker (one worker has both torch threads, two have
one each). On 2 cores, 2 workers share the CPUs with the driver (and, on Ray, its raylet and
GCS), and the machine was shared with other jobs: trials/s moved by tens of percent between
runs of this command, the overhead columns far less; read those for the per-trial cost.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--markdown", type=Path, default=None, help="also write this report")
    args = parser.parse_args()
    import ray

    from sdpalab.run.executor import LocalExecutor
    from sdpalab.run.ray_executor import RayExecutor

    report: dict = {
        "command": shlex.join(["python", *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "ray": ray.__version__,
        "trials": args.trials,
        "runs": [],
    }
    local, on_ray = LocalExecutor(), RayExecutor()
    on_ray.open("cpu")
    try:
        offset = 0
        for workers in (1, 2):
            for name, executor in (("local", local), ("ray", on_ray)):
                offset += 1
                run = one_run(executor, args.trials, workers, offset)
                report["runs"].append({"executor": name, **run})
                print(
                    f"{name:5s} workers={workers} overhead median "
                    f"{run['overhead']['median_s'] * 1e3:.1f} ms p90 "
                    f"{run['overhead']['p90_s'] * 1e3:.1f} ms, {run['trials_per_s']:.1f} "
                    f"trials/s, start-up {run['startup_s']:.1f} s",
                    flush=True,
                )
    finally:
        on_ray.close()
    report["loadavg_end_1m"] = round(os.getloadavg()[0], 2)
    if args.markdown:
        args.markdown.write_text(markdown(report))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
