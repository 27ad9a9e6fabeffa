"""Exploring the space: grid sweeps (``grid``), the Pareto front (``pareto``), shape studies."""

from __future__ import annotations

import importlib

_LAZY = {"sweep": "sdpalab.explore.grid", "Results": "sdpalab.explore.grid"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sdpalab.explore' has no attribute {name!r}")
