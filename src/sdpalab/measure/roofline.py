"""Roofline: analytic FLOPs and bytes of attention, and this machine's measured ceilings.

A measured latency turns into achieved TFLOP/s and GB/s; dividing by the ceilings that
``measure_ceilings`` finds on this machine (a large matmul, a large copy) says how close a
kernel comes to what the hardware does at its best. Ceilings are measured once and cached with
their date, the machine's load and the torch version; :func:`stale_reason` says when a cached
pair should be measured again (old, measured busy, another torch or host).
"""

from __future__ import annotations

import json
import os
import platform
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch

from sdpalab.cache import cache_dir
from sdpalab.measure.provenance import cpu_model, load_text, machine_load
from sdpalab.measure.timing import time_fn

BACKWARD_FLOPS_RATIO = 2.5
"""A backward's FLOPs as a multiple of its forward's: five matmuls (dV, dP, dQ, dK, and the
recomputed scores) against two, as FlashAttention counts them."""


def attention_flops(
    *,
    batch: int,
    heads_q: int,
    q_len: int,
    kv_len: int,
    head_dim: int,
    allowed_fraction: float = 1.0,
) -> int:
    """FLOPs of attention's two matmuls, counting only the (query, key) pairs a mask allows.

    ``Q K^T`` and ``P V`` are each ``batch * heads_q * q_len * kv_len * head_dim``
    multiply-adds, 2 FLOPs each: ``4 B H_q L_q L_kv D * allowed_fraction``. Softmax and
    scaling are left out (lower order in ``head_dim``), as is customary.
    """
    if not 0.0 <= allowed_fraction <= 1.0:
        raise ValueError(f"allowed_fraction={allowed_fraction} must be in [0, 1]")
    return round(4 * batch * heads_q * q_len * kv_len * head_dim * allowed_fraction)


def attention_bytes(
    *,
    batch: int,
    heads_q: int,
    heads_kv: int,
    q_len: int,
    kv_len: int,
    head_dim: int,
    elem_bytes: int,
    kv_bytes: int | None = None,
) -> int:
    """Ideal memory traffic of attention in bytes: read Q, K, V once and write the output once.

    Q and the output are ``[B, H_q, L_q, D]``; K and V are ``[B, H_kv, L_kv, D]`` each. With
    ``kv_bytes`` (a KV cache of that many bytes, scales included) the cache replaces K and V.
    """
    q_out = 2 * batch * heads_q * q_len * head_dim * elem_bytes
    kv = 2 * batch * heads_kv * kv_len * head_dim * elem_bytes if kv_bytes is None else kv_bytes
    return q_out + kv


@dataclass(frozen=True)
class Ceilings:
    """What this machine reaches at best on a large matmul and a large copy."""

    device_name: str
    matmul_tflops: float
    copy_gbps: float
    """Bytes read plus bytes written per second, / 1e9."""
    dtype: str
    measured_at: str
    """UTC time, ISO 8601."""
    load: dict | None = None
    """The machine's load just before (:func:`~sdpalab.measure.provenance.machine_load`)."""
    torch: str | None = None
    hostname: str | None = None


def device_name(device: str) -> str:
    """A name that identifies the hardware (and, on the CPU, the thread count) of ``device``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def measure_ceilings(device: str, dtype: str | None = None) -> Ceilings:
    """Measure the matmul rate and the copy bandwidth of ``device``.

    ``dtype`` defaults to ``bfloat16`` on a GPU and ``float32`` on the CPU. The matmul is
    square (8192 on a GPU, 2048 on the CPU); the copy moves buffers of 2**28 / 2**25 elements.
    Each rate is the median of a few timings; on a 2-core CPU the whole takes about 2 s.
    """
    dev = torch.device(device)
    on_gpu = dev.type == "cuda"
    dtype = dtype or ("bfloat16" if on_gpu else "float32")
    torch_dtype = getattr(torch, dtype)
    load = machine_load(device, window_s=0.3)  # before any of our work, not a minute's average
    n = 8192 if on_gpu else 2048
    a = torch.randn(n, n, device=dev).to(torch_dtype)
    b = torch.randn(n, n, device=dev).to(torch_dtype)
    mm = time_fn(lambda: torch.mm(a, b), device=device, warmup=2, repeats=5)
    # Buffers far larger than the last-level cache, so the copy runs at DRAM / HBM speed.
    elems = (1 << 28) if on_gpu else (1 << 25)
    src = torch.ones(elems, dtype=torch_dtype, device=dev)
    dst = torch.ones_like(src)
    cp = time_fn(lambda: dst.copy_(src), device=device, warmup=3, repeats=10)
    moved = 2 * src.numel() * src.element_size()
    return Ceilings(
        device_name=device_name(device),
        matmul_tflops=2 * n**3 / (mm.latency_ms * 1e-3) / 1e12,
        copy_gbps=moved / (cp.latency_ms * 1e-3) / 1e9,
        dtype=dtype,
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        load=load,
        torch=torch.__version__,
        hostname=platform.node() or socket.gethostname(),
    )


STALE_AFTER = timedelta(days=7)


def stale_reason(c: Ceilings, now: datetime | None = None) -> str | None:
    """Why cached ceilings ``c`` should be measured again, or ``None`` while they hold: older
    than :data:`STALE_AFTER`, measured on a busy machine or with no record of its load, or
    with another torch version or on another host."""
    now = now or datetime.now(timezone.utc)
    try:
        age = now - datetime.fromisoformat(c.measured_at)
    except (TypeError, ValueError):
        return "their date cannot be read"
    if c.load is None:
        return "no record of the machine's load when they were measured"
    if c.load.get("busy"):
        return f"measured on a busy machine ({load_text(c.load)})"
    if age > STALE_AFTER:
        return f"measured {age.days} days ago"
    if c.torch != torch.__version__:
        return f"measured with torch {c.torch}, this is {torch.__version__}"
    if c.hostname != (platform.node() or socket.gethostname()):
        return f"measured on host {c.hostname}"
    return None


def ceilings_text(c: Ceilings) -> str:
    """``measured 2025-01-01T12:00:00+00:00 under load 0.3 on 16 CPUs (torch 2.13.0)``."""
    load = load_text(c.load) if c.load else "an unknown load"
    busy = ", busy" if c.load and c.load.get("busy") else ""
    return f"measured {c.measured_at} under {load}{busy} (torch {c.torch or '?'})"


def cache_path() -> Path:
    """``ceilings.json`` in sdpalab's cache directory."""
    return cache_dir("ceilings.json")


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_ceilings(device: str) -> Ceilings | None:
    """The cached ceilings of ``device``'s hardware, or ``None`` if never measured here."""
    try:
        entry = _read_cache().get(device_name(device))
        return Ceilings(**entry) if isinstance(entry, dict) else None
    except (TypeError, RuntimeError, AssertionError):
        return None


def save_ceilings(c: Ceilings) -> None:
    """Store ``c`` in the cache, replacing any earlier entry for the same device name."""
    data = _read_cache()
    data[c.device_name] = asdict(c)
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{platform.node()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def throughput(
    flops: int, bytes_moved: int, latency_ms: float | None, ceilings: Ceilings | None
) -> dict:
    """Achieved rates: ``tflops`` (1e12 FLOP/s), ``gbps`` (1e9 B/s) and, with ceilings, the
    fractions of the machine's peak (``frac_peak_flops``, ``frac_peak_bw``); ``None`` where a
    number is missing or the latency is not positive."""
    rates: dict = {"tflops": None, "gbps": None, "frac_peak_flops": None, "frac_peak_bw": None}
    if not latency_ms or latency_ms <= 0:
        return rates
    seconds = latency_ms * 1e-3
    if flops is not None:
        rates["tflops"] = flops / seconds / 1e12
    if bytes_moved is not None:
        rates["gbps"] = bytes_moved / seconds / 1e9
    if ceilings is not None:
        if rates["tflops"] is not None and ceilings.matmul_tflops > 0:
            rates["frac_peak_flops"] = rates["tflops"] / ceilings.matmul_tflops
        if rates["gbps"] is not None and ceilings.copy_gbps > 0:
            rates["frac_peak_bw"] = rates["gbps"] / ceilings.copy_gbps
    return rates
