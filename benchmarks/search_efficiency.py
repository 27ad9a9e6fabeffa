"""Search efficiency: how much of the grid's Pareto front a search finds with 25 % of its trials.

The space is a decode grid of 270 points on the CPU (tiny shapes: every CPU kernel, KV cache
layout, KV quantization, sliding window and dtype). Measuring it once is real work; searching
it 5 seeds x 3 samplers for real would be 15 more times that, so the searches *replay* the
stored grid: the search asks for a point, and the stored measurement of that point is its
answer (``runner=``). What is compared is therefore the search strategy alone, on real numbers.

Metric: hypervolume of the search's front (latency, total peak memory, relative error; all in
log10, minimized) as a fraction of the full grid's hypervolume, one reference point for both
(the worst ok value of each objective in the grid plus 10 % of its range). A uniformly random
25 % of the grid is the baseline.

    python benchmarks/search_efficiency.py measure --workers 8   # once: the real grid, stored
    python benchmarks/search_efficiency.py                       # the searches; writes results/

The last line printed is one JSON document.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "search-grid-cpu.jsonl.gz"
RESULTS = HERE / "results" / "search-efficiency-cpu.md"
CONFIG = {
    "name": "search-grid-cpu",
    "device": "cpu",
    "workload": {
        "phase": "decode",
        "batch": 1,
        "heads_q": 8,
        "heads_kv": 2,
        "seq_kv": 1024,
        "head_dim": 64,
        "dtype": ["float32", "bfloat16"],
    },
    "variants": {
        "backend": ["math", "eager", "flash"],
        "kv_cache": ["dynamic", "static", "paged"],
        "kv_quant": ["none", "int8", "int4", "kivi2", "kivi4"],
        "mod": ["none", {"sliding_window": [{"window": 256}, {"window": 64}]}],
    },
    "measure": {"warmup": 3, "repeats": 15, "timeout_s": 120},
}
OBJECTIVES = ("latency_ms", "peak_mem_total_bytes", "rel_fro_err")
SAMPLERS = ("nsga2", "tpe", "gp")
SEEDS = range(5)
FRACTION = 0.25


def save(path: Path, results) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        for i, res in enumerate(results):
            data = res.to_dict()
            if i:  # provenance is the same for every trial of the run: keep it once
                data["provenance"] = {}
            f.write(json.dumps(data, default=str) + "\n")


def load(path: Path):
    from sdpalab.measure.result import Result

    with gzip.open(path, "rt") as f:
        return [Result.from_dict(json.loads(line)) for line in f if line.strip()]


def measure(workers: int) -> None:
    from sdpalab.explore.grid import sweep
    from sdpalab.spec.config import spec_from_dict

    spec = spec_from_dict(CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        run = sweep(spec, Path(tmp) / "grid", workers=workers)
        print(f"{len(run)} trials in {time.time() - started:.0f} s: {run.counts()}", flush=True)
        save(DATA, run.results)
    print(f"written {DATA}")


def log_points(results) -> np.ndarray:
    return np.log10([[max(getattr(r, o), 1e-12) for o in OBJECTIVES] for r in results])


def _point(variant: dict, workload: dict) -> str:
    return json.dumps([variant, workload], sort_keys=True, default=str)


def replay() -> dict:
    from sdpalab.explore.pareto import hypervolume, pareto
    from sdpalab.explore.search import search
    from sdpalab.spec.config import spec_from_dict

    grid = load(DATA)
    spec = spec_from_dict(CONFIG)
    trials = spec.trials()
    # matched on what was measured (variant and workload), not on the stored trial ids: those
    # hash the measurement settings too, whose fields have changed since the grid was measured
    by_point = {_point(r.variant, r.workload): r for r in grid}
    by_id = {}
    for t in trials:
        stored = by_point.get(_point(t.variant_spec, t.workload_spec))
        if stored is not None:
            by_id[t.trial_id] = dataclasses.replace(stored, trial_id=t.trial_id)
    missing = [t.trial_id for t in trials if t.trial_id not in by_id]
    if missing:
        raise SystemExit(f"{len(missing)} trials of the config are not in {DATA}: measure again")
    grid = list(by_id.values())
    ok = [r for r in grid if r.ok and all(getattr(r, o) is not None for o in OBJECTIVES)]
    pts = log_points(ok)
    ref = pts.max(axis=0) + 0.1 * (pts.max(axis=0) - pts.min(axis=0))
    grid_front = pareto(grid, OBJECTIVES, noise_aware=False)
    full = hypervolume(log_points(grid_front), ref)
    budget = math.ceil(FRACTION * len(trials))

    def fraction(results) -> float:
        front = pareto(results, OBJECTIVES, noise_aware=False)
        return hypervolume(log_points(front), ref) / full if front else 0.0

    rows = {}
    for sampler in SAMPLERS:
        fractions, seconds = [], []
        for seed in SEEDS:
            with tempfile.TemporaryDirectory() as tmp:
                started = time.time()
                found = search(
                    spec,
                    tmp,
                    trials=budget,
                    sampler=sampler,
                    seed=seed,
                    runner=lambda ts: [by_id[t.trial_id] for t in ts],
                )
                seconds.append(time.time() - started)
                assert found.measured == budget
                fractions.append(fraction(found.results))
            print(f"{sampler} seed {seed}: {fractions[-1]:.3f} ({seconds[-1]:.0f} s)", flush=True)
        rows[sampler] = {
            "mean": float(np.mean(fractions)),
            "min": float(np.min(fractions)),
            "per_seed": [round(f, 4) for f in fractions],
            "seconds_per_search": float(np.mean(seconds)),
        }
    rng = np.random.default_rng(0)
    randoms = [
        fraction(
            [by_id[trials[i].trial_id] for i in rng.choice(len(trials), budget, replace=False)]
        )
        for _ in SEEDS
    ]
    rows["random 25 %"] = {
        "mean": float(np.mean(randoms)),
        "min": float(np.min(randoms)),
        "per_seed": [round(f, 4) for f in randoms],
        "seconds_per_search": 0.0,
    }
    statuses: dict[str, int] = {}
    for r in grid:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    import optuna

    return {
        "optuna": optuna.__version__,
        "grid_points": len(trials),
        "budget": budget,
        "ok": len(ok),
        "statuses": statuses,
        "grid_front": len(grid_front),
        "reference_log10": ref.tolist(),
        "rows": rows,
        "target": 0.95,
        "provenance": grid[0].provenance,
    }


def write_markdown(summary: dict) -> None:
    prov = summary["provenance"]
    lines = [
        "# Search efficiency on the CPU (replayed grid)",
        "",
        "- command: `python benchmarks/search_efficiency.py` (after `... measure --workers 8`)",
        f"- date: {time.strftime('%Y-%m-%d')}; searches replayed on a {os.cpu_count()}-core machine "
        f"({platform.machine()}), Python {platform.python_version()}, optuna "
        f"{summary['optuna']}",
        f"- grid measured {prov.get('time_utc', '?')[:10]} by `python "
        "benchmarks/search_efficiency.py measure --workers 8` (the engine's `sweep`: isolated "
        f"worker processes, {prov.get('torch_threads', '?')} torch threads each) on an "
        f"{prov.get('cpu_model', '?')} (16 cores; the CPU of the project's GPU machine, idle "
        f"otherwise), Python {prov.get('python', '?')}, torch {prov.get('torch', '?')}; "
        f"stored in `benchmarks/data/{DATA.name}`, one Result a line",
        f"- space: {summary['grid_points']} grid points (decode, batch 1, 8/2 heads, 1024 "
        "tokens cached, head dim 64): backend {math, eager, flash} x kv_cache {dynamic, static, "
        "paged} x kv_quant {none, int8, int4, kivi2, kivi4} x mod {none, sliding_window(256), "
        "sliding_window(64)} x dtype {float32, bfloat16}; KIVI on a paged cache is unsupported "
        "(36 points): failures are part of the space",
        f"- grid statuses: {', '.join(f'{n} {k}' for k, n in summary['statuses'].items())}; "
        f"grid front: {summary['grid_front']} points",
        f"- budget: {summary['budget']} trials (25 % of the grid), 5 seeds per sampler; every "
        "point replayed for the search counts against it, unsupported ones too; a proposal of a point "
        "it already has is answered from the store and does not count (as in a real search)",
        "- the searches **replay the stored measurements**: each trial the search asks for is "
        "answered with the grid's real measurement of that point (`search(..., runner=...)`), "
        "so what differs between rows is the search strategy only",
        "- metric: hypervolume of the found front / hypervolume of the grid's front; objectives "
        "log10(latency_ms), log10(peak_mem_total_bytes), log10(rel_fro_err), minimized; "
        "reference point: worst ok value + 10 % of the range per objective, the same for all",
        "",
        "| sampler | mean HV fraction | worst seed | per seed | s per search |",
        "|---|---|---|---|---|",
    ]
    for name, row in summary["rows"].items():
        lines.append(
            f"| {name} | {row['mean']:.3f} | {row['min']:.3f} | "
            f"{', '.join(f'{f:.3f}' for f in row['per_seed'])} | "
            f"{row['seconds_per_search']:.1f} |"
        )
    best = summary["rows"]["nsga2"]["mean"]
    lines += [
        "",
        f"Target: mean >= {summary['target']} for the default sampler (nsga2): "
        f"**{'met' if best >= summary['target'] else 'not met'}** ({best:.3f}).",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print(f"written {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", nargs="?", default="replay", choices=("measure", "replay"))
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    if args.step == "measure":
        measure(args.workers)
        return
    summary = replay()
    write_markdown(summary)
    summary.pop("provenance")
    print(json.dumps(summary), file=sys.stdout)


if __name__ == "__main__":
    main()
