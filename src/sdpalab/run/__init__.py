"""The run engine: isolated worker processes (``worker``), the scheduler that feeds them and
classifies what comes back (``executor``), and the SQLite results store (``store``)."""

from __future__ import annotations

import importlib

_LAZY = {"run_trials": "sdpalab.run.executor", "ResultStore": "sdpalab.run.store"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    # the worker imports sdpalab.run.worker: keep this package free of the parent-side pieces
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sdpalab.run' has no attribute {name!r}")
