"""Constructed runs for the report tests: Results built directly, no measurement.

Latencies and memory follow the shapes real kernels have (the math backend O(S^2) in memory,
flash-like ones O(S)), so the plots look like real ones and slopes can be checked.
"""

from __future__ import annotations

from pathlib import Path

import sdpalab as sl
from sdpalab.measure.result import Result
from sdpalab.run.rundir import CSV, write_csv, write_run_info
from sdpalab.spec import trial_id

EVIL = "<script>alert(1)</script>"
PROVENANCE = {
    "python": "3.11",
    "torch": "2.13.0",
    "device": "cpu",
    "device_name": "Test CPU <fake>",
    "git_sha": "abc123",
    "argv": ["sdpalab", "sweep"],
}


def make_result(
    *,
    backend: str = "math",
    mod: str = "none",
    mod_args: dict | None = None,
    phase: str = "prefill",
    seq: int = 1024,
    batch: int = 1,
    kv_cache: str = "none",
    kv_quant: str = "none",
    kv_args: dict | None = None,
    latency_ms: float | None = 1.0,
    iqr_ms: float = 0.01,
    peak_mem_bytes: int | None = 1 << 20,
    rel_fro_err: float = 1e-6,
    status: str = "ok",
    reason: str = "",
    repeats: int = 20,
    **fields,
) -> Result:
    """One Result with a real Variant and Workload behind it (so labels and ids are real)."""
    var = sl.Variant(
        backend=backend,
        mod=mod,
        mod_args=mod_args or {},
        kv_cache=kv_cache,
        kv_quant=kv_quant,
        kv_args=kv_args or {},
    )
    wl = sl.Workload(phase=phase, batch=batch, heads_q=8, heads_kv=2, seq_kv=seq, head_dim=64)
    ok = status == "ok"
    return Result(
        variant=var.to_dict(),
        workload=wl.to_dict(),
        status=status,
        reason=reason,
        trial_id=trial_id(var, wl, {"repeats": repeats}),
        label=var.label(),
        latency_ms=latency_ms if ok else None,
        latency_iqr_ms=iqr_ms if ok else None,
        latency_n=repeats if ok else None,
        noisy=(iqr_ms / latency_ms > 0.1) if ok else None,
        peak_mem_bytes=peak_mem_bytes if ok else None,
        rel_fro_err=rel_fro_err if ok else None,
        kernel=backend if ok else None,
        provenance=PROVENANCE,
        settings={"repeats": repeats},
        **fields,
    )


def sweep_results() -> list[Result]:
    """A prefill sweep over S (4 variants, one noisy, one failure), a decode sweep over the
    context with three KV quantizations, and two failures with awkward reasons."""
    out = []
    for s in (256, 512, 1024, 2048):
        k = s / 1024
        out.append(
            make_result(
                backend="math",
                seq=s,
                latency_ms=2.0 * k**2,
                peak_mem_bytes=int(32 * 2**20 * k**2),
                rel_fro_err=2e-7,
            )
        )
        out.append(
            make_result(
                backend="efficient",
                seq=s,
                latency_ms=0.8 * k**2 + 0.05,
                peak_mem_bytes=int(2**20 * k),
                rel_fro_err=3e-7,
            )
        )
        out.append(
            make_result(
                backend="flex",
                mod="sliding_window",
                mod_args={"window": 128},
                seq=s,
                latency_ms=0.5 * k + 0.1,
                iqr_ms=0.2 * (0.5 * k + 0.1),
                peak_mem_bytes=int(1.5 * 2**20 * k),
                rel_fro_err=5e-7,
            )
        )
        out.append(
            make_result(
                backend="eager",
                mod="document",
                mod_args={"lengths": [96, 160, 64]},
                seq=s,
                latency_ms=3.0 * k**2,
                peak_mem_bytes=int(48 * 2**20 * k**2),
                rel_fro_err=1e-6,
            )
        )
    for ctx in (1024, 4096, 16384):
        for quant, per_token, err in (
            ("none", 2048, 1e-7),
            ("int8", 1056, 4e-3),
            ("int4", 544, 6e-2),
        ):
            kv_bytes = per_token * ctx
            gbps = 20.0 * (1 - 1024 / (ctx + 2048)) * {"none": 1.0, "int8": 0.8, "int4": 0.6}[quant]
            out.append(
                make_result(
                    backend="auto",
                    phase="decode",
                    seq=ctx,
                    kv_cache="static",
                    kv_quant=quant,
                    latency_ms=kv_bytes / (gbps * 1e6),
                    peak_mem_bytes=4096,
                    rel_fro_err=err,
                    kv_cache_bytes=kv_bytes,
                    gbps=gbps,
                    frac_peak_bw=gbps / 25.0,
                )
            )
    out.append(
        make_result(
            backend="flash", seq=2048, status="unsupported", reason="flash needs CUDA & a <GPU>"
        )
    )
    out.append(
        make_result(
            backend="math",
            seq=4096,
            status="oom",
            reason="OutOfMemoryError: tried to allocate 2.00 GiB",
        )
    )
    return out


def write_run(path: Path, results: list[Result], name: str = "test-run") -> Path:
    """A run directory as a sweep would leave it, minus the SQLite file: results.csv and
    run.json (name, config, provenance, command line)."""
    path.mkdir(parents=True, exist_ok=True)
    write_csv(path / CSV, [r.to_row() for r in results])
    info = {
        "name": name,
        "config": {"name": name, "measure": {"repeats": 20}},
        "provenance": PROVENANCE,
        "argv": ["sdpalab", "sweep", f"{name}.yaml"],
        "ceilings": {
            "device_name": "Test CPU",
            "matmul_tflops": 1.5,
            "copy_gbps": 25.0,
            "dtype": "float32",
            "measured_at": "2025-01-01T00:00:00+00:00",
        },
    }
    write_run_info(path, info)
    return path
