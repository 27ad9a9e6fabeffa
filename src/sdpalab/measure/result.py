"""The Result record: one trial's measurements, flat and unit-suffixed, serializable.

Every measured quantity carries its unit in its name. A field is ``None`` when it was not
measured (a failed trial, a non-cached variant's cache bytes): never a made-up number.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("ok", "unsupported", "oom", "timeout", "crash", "numerical_fail", "error")
FINAL_STATUSES = STATUSES
"""Every status is final: a trial with any of them is not re-run by ``--resume``."""


@dataclass
class Result:
    """One trial → one Result: what each field measures is in the README, "What a measurement
    is"."""

    variant: dict[str, Any]
    workload: dict[str, Any]
    status: str = "ok"
    reason: str = ""
    trial_id: str = ""
    label: str = ""
    # latency
    latency_ms: float | None = None
    latency_iqr_ms: float | None = None
    latency_n: int | None = None
    noisy: bool | None = None
    timing_method: str | None = None  # cpu_clock, cuda_events or cuda_graph (and why not)
    # phase train: latency_ms is the forward and the backward together, these each alone
    latency_fwd_ms: float | None = None
    latency_bwd_ms: float | None = None
    # memory
    peak_mem_bytes: int | None = None
    peak_mem_total_bytes: int | None = None
    memory_method: str | None = None
    input_bytes: int | None = None
    kv_cache_bytes: int | None = None
    kv_cache_bytes_model: int | None = None
    step_bytes: int | None = None
    saved_mem_bytes: int | None = None  # train: what the forward keeps for the backward
    # accuracy against the float64 oracle
    max_abs_err: float | None = None
    rel_fro_err: float | None = None
    cosine: float | None = None
    tolerance: float | None = None
    # phase train: gradients against the oracle's float64 autograd ones (relative Frobenius),
    # dparam a learned bias's (relative_bias's table); grad_rel_err the largest of them
    dq_rel_err: float | None = None
    dk_rel_err: float | None = None
    dv_rel_err: float | None = None
    dparam_rel_err: float | None = None
    grad_rel_err: float | None = None
    grad_tolerance: float | None = None
    # quality of a model workload against the stock model, per scored token of real text
    # (sdpalab.models.quality): KL(stock || variant) of next-token distributions, perplexity
    # change with its paired 95 % interval, and how often the most probable token is the same
    kl_mean_nats: float | None = None
    kl_max_nats: float | None = None
    ppl_delta_pct: float | None = None
    ppl_delta_pct_lo: float | None = None
    ppl_delta_pct_hi: float | None = None
    top1_agreement: float | None = None
    # throughput
    flops: int | None = None
    bytes_moved: int | None = None
    allowed_fraction: float | None = None
    tflops: float | None = None
    tflops_fwd: float | None = None  # train: the forward's FLOPs over its time
    tflops_bwd: float | None = None  # train: the backward's (2.5x the forward's) over its time
    gbps: float | None = None
    frac_peak_flops: float | None = None
    frac_peak_bw: float | None = None
    # what ran
    kernel: str | None = None
    compile_s: float | None = None
    build_s: float | None = None
    wall_s: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_row(self) -> dict[str, Any]:
        """Flat row for tables and CSV: variant and workload fields prefixed, metrics as is."""
        row: dict[str, Any] = {
            "trial_id": self.trial_id,
            "label": self.label,
            "status": self.status,
        }
        # dicts (a mod's arguments) as JSON text: one type a column, for CSV and Parquet
        for key, value in self.workload.items():
            row[f"wl_{key}"] = (
                json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
            )
        for key, value in self.variant.items():
            row[f"v_{key}"] = (
                json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
            )
        for f in dataclasses.fields(self):
            if f.name not in (
                "variant",
                "workload",
                "provenance",
                "settings",
                "trial_id",
                "label",
                "status",
            ):
                row[f.name] = getattr(self, f.name)
        return row

    def summary(self) -> str:
        """One line for humans."""
        if not self.ok:
            return f"{self.label}: {self.status} ({self.reason})"
        mem = "?" if self.peak_mem_bytes is None else f"{self.peak_mem_bytes / 2**20:.1f} MiB"
        err = "?" if self.rel_fro_err is None else f"{self.rel_fro_err:.1e}"
        split = ""
        if self.latency_fwd_ms is not None and self.latency_bwd_ms is not None:
            split = f" = fwd {self.latency_fwd_ms:.3f} + bwd {self.latency_bwd_ms:.3f}"
        if self.grad_rel_err is not None:
            err += f", grad err {self.grad_rel_err:.1e}"
        return (
            f"{self.label}: {self.latency_ms:.3f} ms{split} (IQR {self.latency_iqr_ms:.3f}, "
            f"n={self.latency_n}{', noisy' if self.noisy else ''}), peak +{mem}, rel err {err}, "
            f"kernel {self.kernel}"
        )
