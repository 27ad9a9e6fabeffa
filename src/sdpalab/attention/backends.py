"""The backend registry: one record per backend, saying once what it can do.

Everything else (the spec's validation, caches, the trial, the worker, the doctor, the
transformers bridge) asks a record and never branches on a backend's name. A new backend, or
a test-only one, joins with :func:`register`. ``SDPALAB_PLUGINS`` names importable modules
(comma separated) whose ``register_backends()`` runs once the built-in backends are in, so that
every process of a run (the CLI, each worker) registers them alike.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from sdpalab.attention import eager, flex, mods, sdpa
from sdpalab.attention.errors import Unsupported

PLUGINS_ENV = "SDPALAB_PLUGINS"
Attend = Callable  # (q [B, H_q, q_len, D], k [B, H_kv, kv_len, D], v) -> [B, H_q, q_len, D]


@dataclass(frozen=True, kw_only=True, slots=True)
class Backend:
    """What one backend is and can do."""

    name: str
    make: Callable[[str, dict], Attend]
    """``make(mod_name, mod_args)`` → a stateless ``attend(q, k, v)``; geometry comes from the
    tensors and causal alignment is bottom-right whenever ``q_len < kv_len``."""
    devices: tuple[str, ...] = ("cpu", "cuda")
    """Device types it may run on (a shape or dtype it refuses is ``unsupported`` at run time)."""
    phases: tuple[str, ...] = ("prefill", "decode", "train")
    """Workload phases it serves; ``train`` means it has a backward (one that a device, dtype
    or mask lacks is ``unsupported`` at run time, with torch's reason)."""
    in_available: bool = True
    """Part of ``backend: available`` in a sweep config (on its devices)."""
    materializes_scores: bool = False
    """Builds the ``q_len x kv_len`` score matrix (or may: ``auto`` can pick math)."""
    profile_kernel: bool = False
    """Dispatches inside torch: the profiler tells which kernel actually ran."""
    graph_refusal: str | None = None
    """Why a call cannot be captured in a CUDA graph (``None``: it can)."""
    reads_pages: bool = False
    """Reads a paged KV pool through its page table itself (no gather first)."""
    reads_quantized: bool = False
    """Reads a quantized KV cache in its stored format (no dequantized copy)."""
    compiles: bool = False
    """Compiles per shape on first call (the doctor probes it once)."""
    clear: Callable[[], None] | None = None
    """Empties what it caches per trial geometry (masks, block masks); called between trials."""


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> None:
    """Add (or replace) a backend."""
    _REGISTRY[backend.name] = backend


def unregister(name: str) -> None:
    """Remove a backend (a test's, when it is done)."""
    _REGISTRY.pop(name, None)


def backend_names() -> tuple[str, ...]:
    """Every registered backend, in registration order."""
    return tuple(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The record of ``name``; :class:`Unsupported` if no such backend is registered."""
    if name not in _REGISTRY:
        raise Unsupported(
            f"backend {name!r} is not available in this installation; "
            f"choose one of: {', '.join(_REGISTRY)}"
        )
    return _REGISTRY[name]


def make_attend(backend: str, mod_name: str, mod_args: dict) -> Attend:
    """Stateless attention for one backend and mod (causal alignment bottom-right)."""
    return get_backend(backend).make(mod_name, mod_args)


def available(device_type: str) -> tuple[str, ...]:
    """What ``backend: available`` means on a device type (``cpu`` or ``cuda``)."""
    return tuple(b.name for b in _REGISTRY.values() if b.in_available and device_type in b.devices)


def clear_trial_caches() -> None:
    """Empty every backend's per-geometry caches, and the built mods they share."""
    mods.clear_cache()
    for backend in _REGISTRY.values():
        if backend.clear is not None:
            backend.clear()


def _sdpa(name: str, devices: tuple[str, ...], **kw) -> Backend:
    return Backend(
        name=name,
        make=lambda mod_name, mod_args: sdpa.make_sdpa(name, mod_name, mod_args),
        devices=devices,
        profile_kernel=True,
        clear=sdpa.clear_cache,
        **kw,
    )


def _make_qdecode(mod_name: str, mod_args: dict) -> Attend:
    # Imported on use: Triton loads only when the fused kernel is built.
    kernel = importlib.import_module("sdpalab.attention.kernels.qdecode")
    return kernel.make_qdecode(mod_name, mod_args)


for _backend in (
    _sdpa("math", ("cpu", "cuda"), materializes_scores=True),
    _sdpa("flash", ("cpu", "cuda")),
    _sdpa("efficient", ("cuda",)),
    _sdpa("cudnn", ("cuda",)),
    _sdpa("auto", ("cpu", "cuda"), in_available=False, materializes_scores=True),
    Backend(
        name="flex",
        make=flex.make_flex,
        graph_refusal="compiled flex recompiles under graph capture",
        reads_pages=True,
        compiles=True,
        clear=flex.clear_cache,
    ),
    Backend(name="eager", make=eager.make_eager, materializes_scores=True),
    Backend(
        name="triton_qdecode",
        make=_make_qdecode,
        devices=("cuda",),
        phases=("decode",),
        in_available=False,
        reads_quantized=True,
    ),
):
    register(_backend)

for _plugin in filter(None, os.environ.get(PLUGINS_ENV, "").split(",")):
    importlib.import_module(_plugin.strip()).register_backends()
