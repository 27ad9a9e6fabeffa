"""Test-only backends that fail on purpose, one way each, so the engine's fault handling can be
tested end to end. They register through the public registry call: in a test process with the
``fault_backends`` fixture (``conftest.py``), in the CLI and worker processes through
``SDPALAB_PLUGINS=faults`` (see :func:`plugin_env`). Never left registered: ``sdpalab doctor``
probes every registered backend.

==================  ===================================================  ==================
backend             what it does when called                             expected status
==================  ===================================================  ==================
``fault_oom``       allocates 2**50 elements (past any memory limit)     ``oom``
``fault_segv``      ``os.kill(os.getpid(), SIGSEGV)``                    ``crash``
``fault_hang``      sleeps for an hour                                   ``timeout``
``fault_nan``       returns NaN                                          ``numerical_fail``
``fault_raise``     raises ``RuntimeError``                              ``error``
``fault_wrong``     returns zeros at once: fast, lean and wrong          ``ok`` (error 1.0)
==================  ===================================================  ==================
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from sdpalab.attention.backends import Backend, register, unregister

FAULT_BACKENDS = (
    "fault_oom",
    "fault_segv",
    "fault_hang",
    "fault_nan",
    "fault_raise",
    "fault_wrong",
)
EXPECTED_STATUS = {
    "fault_oom": "oom",
    "fault_segv": "crash",
    "fault_hang": "timeout",
    "fault_nan": "numerical_fail",
    "fault_raise": "error",
    "fault_wrong": "ok",
}


def _oom(q, k, v):
    import torch

    return torch.empty(2**50, device=q.device, dtype=torch.float32)  # 4 PiB


def _segv(q, k, v):
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(60)  # the signal is delivered asynchronously


def _hang(q, k, v):
    time.sleep(3600)


def _nan(q, k, v):
    import torch

    return torch.full_like(q, float("nan"))


def _raise(q, k, v):
    raise RuntimeError("injected fault: fault_raise was called")


def _wrong(q, k, v):
    import torch

    return torch.zeros_like(q)  # faster and leaner than any real kernel; rel error 1.0


_ATTENDS = {
    "fault_oom": _oom,
    "fault_segv": _segv,
    "fault_hang": _hang,
    "fault_nan": _nan,
    "fault_raise": _raise,
    "fault_wrong": _wrong,
}


def plugin_env() -> dict[str, str]:
    """Environment that makes a subprocess (the CLI, a worker) register these backends too."""
    here = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    return {"SDPALAB_PLUGINS": "faults", "PYTHONPATH": path}


def register_backends() -> None:
    """Add the fault backends (what ``SDPALAB_PLUGINS`` calls in a subprocess)."""
    for name, attend in _ATTENDS.items():
        register(Backend(name=name, make=lambda mod, args, _a=attend: _a, in_available=False))


def unregister_backends() -> None:
    for name in _ATTENDS:
        unregister(name)
