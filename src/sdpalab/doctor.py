"""``sdpalab doctor``: what this machine can run, and its measured ceilings.

Each backend is tried on a tiny problem in each dtype the device supports; a refusal is
reported with torch's reason. The ceilings (matmul rate, copy bandwidth) are measured once and
cached with their date and the load they were measured under, re-measured when stale (a week
old, measured busy, another torch or host), and every later Result's fraction-of-peak figures
are taken against them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from sdpalab.attention.backends import backend_names, get_backend, make_attend
from sdpalab.attention.errors import Unsupported
from sdpalab.measure.provenance import provenance
from sdpalab.measure.roofline import (
    ceilings_text,
    device_name,
    load_ceilings,
    measure_ceilings,
    save_ceilings,
    stale_reason,
)
from sdpalab.spec import DTYPES, resolve_device, supported_dtypes


def probe_backend(backend: str, device: str, dtype: str) -> str:
    """``ok`` or ``unsupported: <reason>`` for one backend on a tiny GQA causal problem."""
    gen = torch.Generator().manual_seed(0)
    shapes = ((1, 4, 16, 64), (1, 2, 16, 64), (1, 2, 16, 64))
    q, k, v = (torch.randn(s, generator=gen).to(device, DTYPES[dtype]) for s in shapes)
    try:
        make_attend(backend, "causal", {})(q, k, v)
    except Unsupported as err:
        return f"unsupported: {err}"
    except Exception as err:  # report, don't die: doctor is for finding out what breaks
        return f"error: {type(err).__name__}: {err}".splitlines()[0]
    return "ok"


def doctor_report(device: str = "auto", *, remeasure: bool = False) -> dict[str, Any]:
    """Backends × dtypes this device runs, its ceilings (cached, or measured when missing,
    stale or ``remeasure``d), provenance. ``ceilings_note`` says when and under what load the
    ceilings were measured, and why they were measured again."""
    device = resolve_device(device)
    dtypes = supported_dtypes(device)
    backends = {
        f"{backend}/{dtype}": probe_backend(backend, device, dtype)
        for backend in backend_names()
        for dtype in dtypes
        if not get_backend(backend).compiles or dtype == dtypes[0]  # compiling: probe once
    }
    cached = load_ceilings(device)
    why = (
        "replaced on --remeasure"
        if remeasure
        else "never measured here"
        if cached is None
        else stale_reason(cached)
    )
    ceilings = cached
    if why is not None:
        ceilings = measure_ceilings(device)
        save_ceilings(ceilings)
    note = ceilings_text(ceilings)
    if why is not None and cached is not None:
        note += f"; measured again, the cached ones: {why}"
    return {
        "device": device,
        "device_name": device_name(device),
        "dtypes": list(dtypes),
        "backends": backends,
        "ceilings": dataclasses.asdict(ceilings),
        "ceilings_note": note,
        "provenance": provenance(device),
    }
