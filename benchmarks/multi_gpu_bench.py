"""A sweep and a search spread over the GPUs of one host, measured (the README's "Scaling out").

    python3 benchmarks/multi_gpu_bench.py --out benchmarks/results/multi-gpu.md

1. The sweep (default: the ``decode-long`` preset, every shape and format) three times: on one
   GPU (``--workers 1``), on N (``--workers N``, one worker pinned to each GPU) and through Ray
   (``--executor ray --workers N``, an instance this script starts on this host). Per run: wall
   time, its ratio to one GPU's against the target ``1.3 / N``, trials per GPU-hour, statuses
   equal to the one-GPU run's (or which differ), and each trial's latency beside its one-GPU
   latency: the median ratio on each GPU and how many differ beyond their noise (interquartile
   ranges about the medians that do not overlap).
2. The search (default: ``benchmarks/configs/decode-search-h100.yaml``, ``--trials 24``) with one
   trial in flight and with N: the hypervolume of the front of (latency, total peak memory,
   error), log10, one reference point for both, after each trial, against trials and wall time.

N: every visible GPU (``--gpus``). The markdown is rewritten after each run, so a run cut short
keeps what it measured. ``--device cpu --gpus 2 --sweep quick --search quick --trials 6`` runs
the same steps on the CPU (two worker processes standing in for two GPUs): the script's check.
The last stdout line is one JSON document with the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OBJECTIVES = ("latency_ms", "peak_mem_total_bytes", "rel_fro_err")
TARGET = 1.3  # the sweep's wall time on N GPUs at most TARGET / N of one GPU's


@dataclass
class Run:
    name: str
    workers: int
    wall_s: float
    results: list
    done_at: list[float] = field(default_factory=list)  # seconds from the start, per result


def _timed(name, workers, device, call) -> Run:
    """``call(on_result)`` under the named executor; the results and when each came."""
    from sdpalab.cli_common import make_executor
    from sdpalab.run.executor import use_executor

    engine = make_executor("ray" if name == "ray" else "local", None)
    done_at = []
    with use_executor(engine, device):
        started = time.perf_counter()
        found = call(lambda result, done, total: done_at.append(time.perf_counter() - started))
        wall = time.perf_counter() - started
    print(f"{name} x{workers}: {len(found.results)} results in {wall:.1f} s", file=sys.stderr)
    return Run(name, workers, wall, list(found.results), done_at)


def sweep_run(spec, name: str, workers: int, tmp: Path) -> Run:
    from sdpalab.explore.grid import sweep

    out = tmp / f"sweep-{name}-{workers}"
    return _timed(name, workers, spec.device,
                  lambda on: sweep(spec, out, workers=workers, force=True, on_result=on))  # fmt: skip


def search_run(spec, workers: int, trials: int, tmp: Path) -> Run:
    from sdpalab.explore.search import search

    out = tmp / f"search-{workers}"
    return _timed("local", workers, spec.device,
                  lambda on: search(spec, out, trials=trials, workers=workers, force=True,
                                    on_result=on))  # fmt: skip


# ---------------------------------------------------------------------------- comparisons


def latency_check(base: Run, run: Run) -> dict:
    """Statuses against ``base`` and, per GPU, the median latency ratio and the trials whose
    latencies differ beyond their noise."""
    from sdpalab.run.executor import GPU_INDEX

    mine = {r.trial_id: r for r in base.results}
    status_diff = [r.trial_id for r in run.results if mine.get(r.trial_id, r).status != r.status]
    per_gpu: dict[str, list] = {}
    for r in run.results:
        b = mine.get(r.trial_id)
        if b is None or not (r.ok and b.ok and r.latency_ms and b.latency_ms):
            continue
        band = ((r.latency_iqr_ms or 0.0) + (b.latency_iqr_ms or 0.0)) / 2
        beyond = abs(r.latency_ms - b.latency_ms) > band
        gpu = str(r.provenance.get(GPU_INDEX, "-"))
        per_gpu.setdefault(gpu, []).append((r.latency_ms / b.latency_ms, beyond))
    gpus = {
        gpu: {
            "trials": len(pairs),
            "median_ratio": statistics.median(p[0] for p in pairs),
            "beyond_noise": sum(p[1] for p in pairs),
        }
        for gpu, pairs in sorted(per_gpu.items())
    }
    return {"status_differs": status_diff, "gpus": gpus}


def _points(results) -> np.ndarray:
    ok = [r for r in results if r.ok and all(getattr(r, o) is not None for o in OBJECTIVES)]
    return np.log10([[max(getattr(r, o), 1e-12) for o in OBJECTIVES] for r in ok])


def hypervolume_curves(runs: list[Run]) -> tuple[dict, np.ndarray]:
    """Per run, ``[(trials, seconds, hypervolume)]`` after each result, all against one
    reference point (the worst ok value of each objective over the runs, plus 10 % of the
    range); and that point."""
    from sdpalab.explore.pareto import hypervolume, pareto

    everything = _points([r for run in runs for r in run.results])
    ref = everything.max(axis=0) + 0.1 * (everything.max(axis=0) - everything.min(axis=0) + 1e-9)
    curves = {}
    for run in runs:
        curve = []
        for k in range(1, len(run.results) + 1):
            front = pareto(run.results[:k], OBJECTIVES, noise_aware=False)
            pts = _points(front)
            hv = hypervolume(pts, ref) if len(pts) else 0.0
            when = run.done_at[k - 1] if k - 1 < len(run.done_at) else run.wall_s
            curve.append((k, when, hv))
        curves[f"{run.workers} in flight"] = curve
    return curves, ref


# ---------------------------------------------------------------------------- report


def _f(x, spec="") -> str:
    return "-" if x is None else format(x, spec)


def markdown(meta: dict, sweeps: list[Run], checks: dict, curves: dict) -> str:
    lines = [
        "# A sweep and a search over the GPUs of one host",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- device: {meta['device']}, {meta['gpus']} used; torch {meta['torch']}, "
        f"host {meta['host']}",
        f"- sweep: `{meta['sweep']}`; search: `{meta['search']}`, {meta['trials']} trials",
        "",
    ]
    if sweeps:
        one = sweeps[0]
        n = meta["gpus"]
        lines += [
            "## Sweep",
            "",
            "| run | workers | trials | ok | wall s | vs one GPU | target | trials per GPU-hour |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for run in sweeps:
            ok = sum(r.ok for r in run.results)
            ratio = run.wall_s / one.wall_s if one.wall_s else None
            target = "-" if run is one else f"<= {TARGET / n:.3f}"
            per_gpu_hour = len(run.results) / (run.wall_s / 3600 * run.workers)
            lines.append(
                f"| {run.name} | {run.workers} | {len(run.results)} | {ok} | {run.wall_s:.1f} | "
                f"{_f(ratio, '.3f')} | {target} | {per_gpu_hour:.0f} |"
            )
        lines += ["", "Against the one-GPU run, trial by trial:", ""]
        lines += [
            "| run | GPU | trials | median latency ratio | beyond noise | statuses that differ |"
        ]
        lines += ["|---|---|---|---|---|---|"]
        for name, check in checks.items():
            differ = len(check["status_differs"])
            for gpu, g in check["gpus"].items():
                lines.append(
                    f"| {name} | {gpu} | {g['trials']} | {g['median_ratio']:.3f} | "
                    f"{g['beyond_noise']} | {differ} |"
                )
        lines.append("")
    if curves:
        lines += ["## Search: hypervolume against trials and wall time", ""]
        lines += [
            "| in flight | trials | wall s | hypervolume | of the final best |",
            "|---|---|---|---|---|",
        ]
        best = max(c[-1][2] for c in curves.values() if c) or 1.0
        for name, curve in curves.items():
            marks = sorted({max(1, round(len(curve) * f)) for f in (0.25, 0.5, 0.75, 1.0)})
            for k in marks:
                trials, when, hv = curve[k - 1]
                lines.append(f"| {name} | {trials} | {when:.1f} | {hv:.4g} | {hv / best:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    from sdpalab.spec.config import load_spec

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="markdown file to (re)write")
    parser.add_argument(
        "--device",
        default="cuda",
        choices=("cuda", "cpu"),
        help="cpu: the script's own check (the configs' devices decide)",
    )
    parser.add_argument("--gpus", type=int, help="GPUs to use (default: every visible one)")
    parser.add_argument("--sweep", default="decode-long", help="preset name or config path")
    parser.add_argument("--search", default=str(HERE / "configs" / "decode-search-h100.yaml"))
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray sweep")
    args = parser.parse_args(argv)
    visible = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda" and visible < 2:
        print(f"multi_gpu_bench.py needs 2 or more GPUs; {visible} visible", file=sys.stderr)
        return 2
    n = args.gpus or visible or 2
    if n < 2 or (args.device == "cuda" and n > visible):
        print(f"--gpus {n}: give 2 to {max(visible, 2)}", file=sys.stderr)
        return 2
    sweep_spec, search_spec = load_spec(args.sweep), load_spec(args.search)
    meta = {
        "command": shlex.join(["python3", *sys.argv]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or "cpu",
        "gpus": n,
        "torch": torch.__version__,
        "host": platform.node(),
        "sweep": args.sweep,
        "search": args.search,
        "trials": args.trials,
    }
    sweeps, checks, curves = [], {}, {}

    def write() -> str:
        text = markdown(meta, sweeps, checks, curves)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
        return text

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plan = [("local", 1), ("local", n)] + ([] if args.no_ray else [("ray", n)])
        for name, workers in plan:
            sweeps.append(sweep_run(sweep_spec, name, workers, tmp))
            if len(sweeps) > 1:
                checks[f"{name} x{workers}"] = latency_check(sweeps[0], sweeps[-1])
            write()
        searches = [search_run(search_spec, w, args.trials, tmp) for w in (1, n)]
        curves, _ = hypervolume_curves(searches)
    text = write()
    print(text)
    summary = {
        "meta": meta,
        "sweeps": [
            {"name": r.name, "workers": r.workers, "wall_s": r.wall_s, "trials": len(r.results)}
            for r in sweeps
        ],
        "checks": checks,
        "search": {name: [list(p) for p in curve] for name, curve in curves.items()},
        "target_met": all(
            r.wall_s <= TARGET / n * sweeps[0].wall_s for r in sweeps[1:] if r.name == "local"
        ),
    }
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
