"""``sdpalab reproduce case-study``: run the three experiments and the corrections, write them.

The run directory gets ``case-study.md`` (both tables, the command, the date, the device),
``results.csv`` (one row per trial, :meth:`Result.to_row` plus the case study's sizes),
``results.sqlite`` (the engine's store), ``corrections.json`` (the measured
values behind the corrections table), ``run.json`` (provenance, the machine's load) and
``report.html``. A directory that holds a run is replaced only with ``force``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from sdpalab.casestudy import corrections as fix
from sdpalab.casestudy.aspublished import cpu_time_total_ms, their_profile
from sdpalab.casestudy.experiments import Row, one_call, settings_for, trials
from sdpalab.casestudy.published import SOURCE
from sdpalab.casestudy.tables import Table, comparison_table, corrections_table, markdown
from sdpalab.measure.provenance import BUSY_GPU_PCT, OtherCpu, machine_load, provenance
from sdpalab.run.executor import stamp_load
from sdpalab.run.rundir import (
    CSV,
    LOAD_WINDOW_S,
    ResultStore,
    prepare_run_dir,
    write_csv,
    write_run_info,
)
from sdpalab.run.trial import measure
from sdpalab.spec import resolve_device


@dataclass
class CaseStudyRun:
    """What one reproduction measured and where it wrote it."""

    out: Path
    device: str
    quick: bool
    command: str
    date: str
    rows: list[Row]
    corrections: list[fix.Correction]
    tables: list[Table] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)
    load: dict = field(default_factory=dict)
    """The machine's load before the first measurement."""


def _profiler_cpu_total_ms(row: Row) -> float | None:
    """The case study's "Memory Profile" figure for the same call sl.measure timed (warm)."""
    if not row.result.ok:
        return None
    call = one_call(row.trial.variant, row.trial.workload)
    with torch.inference_mode():
        call()
        probe = torch.empty(0, device=row.trial.workload.device)
        return cpu_time_total_ms(their_profile(call, probe))


def run_case_study(
    out: str | Path,
    *,
    quick: bool = False,
    device: str = "auto",
    force: bool = False,
    on_result: Callable[[Row], None] | None = None,
    on_start: Callable[[dict], None] | None = None,
) -> CaseStudyRun:
    """Reproduce the case study on ``device`` and write the run directory ``out``.

    ``quick`` runs the first sizes of each experiment only (for CI). ``out`` must not hold a
    run unless ``force`` (then it is replaced). ``on_start(load)`` is called before the first
    measurement with the machine's load (:func:`~sdpalab.measure.provenance.machine_load`),
    ``on_result`` with each measured row (a progress hook).
    """
    requested, device = device, resolve_device(device)
    out = prepare_run_dir(out, force=force, resumable=False)
    load = machine_load(device, window_s=LOAD_WINDOW_S)
    if on_start is not None:
        on_start(load)
    run = CaseStudyRun(
        out=out,
        device=device,
        quick=quick,
        rows=[],
        corrections=[],
        command=_command(out, quick, requested),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        load=load,
    )
    own = torch.get_num_threads()  # the trials run in this process
    others = OtherCpu()  # cores other processes use while each trial runs (ours counted out)
    others.cores([])
    gpu_busy = (load.get("gpu_util_pct") or 0.0) > BUSY_GPU_PCT
    for trial in trials(device, quick):
        row = Row(trial, measure(trial.variant, trial.workload, settings_for(trial, quick)))
        sample = machine_load(device, own_threads=own, other_cores=others.cores([]), gpu=False)
        stamp_load(row.result, sample, gpu_busy=gpu_busy)
        row.profiler_cpu_total_ms = _profiler_cpu_total_ms(row)
        run.rows.append(row)
        if on_result:
            on_result(row)
    run.corrections = _corrections(run.rows, device, quick)
    run.tables = [comparison_table(run.rows), corrections_table(run.corrections)]
    run.paths = _write(run)
    return run


def _command(out: Path, quick: bool, device: str) -> str:
    """The CLI command that makes this run (the Python call takes the same arguments)."""
    args = ["sdpalab", "reproduce", "case-study", "--out", str(out)]
    args += ["--quick"] if quick else []
    args += [] if device == "auto" else ["--device", device]
    return shlex.join(args)


def _corrections(rows: list[Row], device: str, quick: bool) -> list[fix.Correction]:
    kv = [
        r for r in rows if r.trial.experiment == "kv_cache" and r.trial.workload.phase == "prefill"
    ][-1].trial
    hidden = kv.workload.head_dim
    probe = torch.empty(0, device=device)
    return [
        fix.time_reported_as_memory(
            one_call(kv.variant, kv.workload), probe, f"KV cache prefill ({kv.their_shape()})"
        ),
        fix.cuda_check(device),
        *fix.cached_decode(device),
        fix.stateful_benchmark(device),
        fix.phantom_quantization(device, hidden),
        fix.missing_scale(device),
        fix.uncompiled_flex(device, quick),
    ]


def _write(run: CaseStudyRun) -> dict[str, Path]:
    out = run.out
    paths = {}
    rows = [
        {
            "experiment": r.trial.experiment,
            "their_params": r.trial.their_shape(),
            "role": r.trial.role,
            "profiler_cpu_total_ms": r.profiler_cpu_total_ms,
            "published_memory_profile": r.trial.published.memory_profile
            if r.trial.published
            else None,
            "published_benchmark": r.trial.published.benchmark if r.trial.published else None,
            **r.result.to_row(),
        }
        for r in run.rows
    ]
    paths["csv"] = write_csv(out / CSV, rows)
    info = {
        "name": "case-study" + ("-quick" if run.quick else ""),
        "command": run.command,
        "date": run.date,
        "device": run.device,
        "provenance": provenance(run.device),
        "load": run.load,
        "busy_trials": sum(bool(r.result.provenance.get("busy")) for r in run.rows),
    }
    paths["run"] = write_run_info(out, info)
    paths["corrections"] = out / "corrections.json"
    paths["corrections"].write_text(
        json.dumps(
            [
                {"issue": c.issue, "evidence": c.evidence, "values": c.values}
                for c in run.corrections
            ],
            indent=2,
            default=str,
        )
    )
    with ResultStore(out) as store:
        for r in run.rows:
            store.write(r.result)
        paths["sqlite"] = store.path
    paths["markdown"] = out / "case-study.md"
    paths["markdown"].write_text(markdown(run.tables, _header(run, info["provenance"])))
    paths["html"] = _html(run)
    return paths


def _header(run: CaseStudyRun, prov: dict) -> list[str]:
    name = prov.get("device_name") or prov.get("cpu") or run.device
    return [
        "# The SDPA optimization case study, reproduced with sdpalab",
        "",
        f"- command: `{run.command}`" + (" (quick sizes)" if run.quick else ""),
        f"- date: {run.date}",
        f"- device: {run.device} ({name}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        f'- source: "SDPA Optimization Case Study - A Worklog" ({SOURCE}; figures '
        "transcribed from its Results section)",
        "- shapes: the case study's `(seq_len, hidden, hidden)` tensors are "
        "`[B=seq_len, H=1, S=hidden, D=hidden]` (SDPA reads every leading dimension as a "
        "batch); its FlexAttention `(batch, seq_len, hidden, hidden)` tensors are "
        "`[B=batch, H=seq_len, S=hidden, D=hidden]`. float32, as it used.",
    ]


def _html(run: CaseStudyRun) -> Path:
    from sdpalab.report.html import write_report
    from sdpalab.report.markup import escape, html_table

    sections = [
        (
            t.title,
            html_table(t.columns, t.rows)
            + "".join(f'<p class="note">{escape(n)}</p>' for n in t.notes),
        )
        for t in run.tables
    ]
    return write_report(
        run.out, results=[r.result for r in run.rows], extra_sections=sections, export_files=False
    )
