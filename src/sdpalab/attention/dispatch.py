"""Backend choice, in one place: backend name → stateless attention ``attend(q, k, v)``.

Everything else (caches, projections, the engine) asks this module for an ``attend`` and never
branches on the backend itself. Kernels that need optional pieces register here.
"""

from __future__ import annotations

from collections.abc import Callable

from sdpalab.attention.eager import make_eager
from sdpalab.attention.errors import Unsupported
from sdpalab.attention.flex import make_flex
from sdpalab.attention.sdpa import SDPA_KERNELS, make_sdpa

Attend = Callable  # (q [B, H_q, q_len, D], k [B, H_kv, kv_len, D], v) -> [B, H_q, q_len, D]

_FACTORIES: dict[str, Callable[[str, dict], Attend]] = {
    "eager": make_eager,
    "flex": make_flex,
    **{name: (lambda mod, args, _n=name: make_sdpa(_n, mod, args)) for name in SDPA_KERNELS},
}


def register_backend(name: str, factory: Callable[[str, dict], Attend]) -> None:
    """Add a backend: ``factory(mod_name, mod_args)`` returns an ``attend``."""
    _FACTORIES[name] = factory


def make_attend(backend: str, mod_name: str, mod_args: dict) -> Attend:
    """Stateless attention for one backend and mod; geometry is taken from the tensors.

    Causal alignment is bottom-right whenever ``q_len < kv_len``.
    """
    if backend not in _FACTORIES:
        # Hand-written kernels register themselves on import (without importing Triton).
        import sdpalab.attention.kernels  # noqa: F401
    if backend not in _FACTORIES:
        raise Unsupported(f"backend {backend!r} is not available in this installation")
    return _FACTORIES[backend](mod_name, mod_args)
