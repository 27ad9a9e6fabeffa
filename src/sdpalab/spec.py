"""Workload and Variant: the two frozen, validated specs every other module reads.

A Workload is the shape of the work (phase, sizes, dtype, device); a Variant picks one value
on each axis (kernel, mod, KV cache, KV quantization, weight quantization). Both validate on
construction and raise ``ValueError`` naming the field, the bad value and the valid choices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch

PHASES = ("prefill", "decode")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SDPA_BACKENDS = ("math", "flash", "efficient", "cudnn", "auto")
BACKENDS = (*SDPA_BACKENDS, "flex", "eager", "triton_qdecode")
"""Kernels. ``triton_qdecode`` is the fused quantized-KV decode kernel (CUDA only)."""


def known_backends() -> tuple[str, ...]:
    """``BACKENDS``, plus the test-only fault backends when ``SDPALAB_TEST_FAULTS=1``."""
    if os.environ.get("SDPALAB_TEST_FAULTS") == "1":
        from sdpalab.testing.faults import FAULT_BACKENDS

        return (*BACKENDS, *FAULT_BACKENDS)
    return BACKENDS


KV_CACHES = ("none", "dynamic", "static", "sliding", "paged")
KV_QUANTS = ("none", "int8", "int4", "fp8", "kivi2", "kivi4")
WEIGHT_QUANTS = ("none", "int8_weight_only", "int8_dynamic", "int4_weight_only")

KV_ARGS = {
    "max_len": "static/paged: capacity in tokens (default: the workload's seq_kv)",
    "window": "sliding: ring-buffer length W (also the sliding-window width)",
    "page_size": "paged: tokens per page (default 128)",
    "group_size": "int4: values per group along D (default 64); kivi: tokens per key group (32)",
    "residual": "kivi: most recent tokens kept in full precision (default 32)",
}


def _choice(field_name: str, value: Any, valid) -> None:
    if value not in valid:
        raise ValueError(f"{field_name}={value!r} is not valid; choose one of: {', '.join(valid)}")


def _positive_int(field_name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field_name}={value!r} must be a positive integer")


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; checks the device exists."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device={device!r} is not valid; choose auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} is not available here (no CUDA); choose cpu or auto"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} does not exist; this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise ValueError(f"device={device!r} is not supported; choose auto, cpu, cuda or cuda:N")
    return device


def supported_dtypes(device: str) -> tuple[str, ...]:
    """Compute dtypes this device can run attention in."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported():
        return ("float32", "float16")
    return tuple(DTYPES)


@dataclass(frozen=True, kw_only=True)
class Workload:
    """The shape of the work. Tensors are ``[B, H, S, D]``.

    For ``decode``, ``seq_kv`` is the context already cached and ``seq_q`` the tokens of one
    step (default 1); causal masks align bottom-right (query i sits at position
    ``seq_kv - seq_q + i``).
    """

    phase: str = "prefill"
    """``prefill`` (attend a whole sequence) or ``decode`` (steps against a filled cache)."""
    batch: int = 1
    heads_q: int = 8
    """Query heads; a multiple of ``heads_kv`` (grouped-query attention when larger)."""
    heads_kv: int | None = None
    """Key/value heads; default ``heads_q``."""
    seq_q: int | None = None
    """Query length; default ``seq_kv`` for prefill, 1 for decode."""
    seq_kv: int = 1024
    """Key/value length (for decode: the context including this step's tokens)."""
    head_dim: int = 64
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        _choice("phase", self.phase, PHASES)
        for name in ("batch", "heads_q", "seq_kv", "head_dim"):
            _positive_int(name, getattr(self, name))
        if self.heads_kv is None:
            object.__setattr__(self, "heads_kv", self.heads_q)
        if self.seq_q is None:
            object.__setattr__(self, "seq_q", self.seq_kv if self.phase == "prefill" else 1)
        for name in ("heads_kv", "seq_q"):
            _positive_int(name, getattr(self, name))
        if self.heads_q % self.heads_kv:
            raise ValueError(
                f"heads_q={self.heads_q} must be a multiple of heads_kv={self.heads_kv}"
            )
        if self.seq_q > self.seq_kv:
            raise ValueError(f"seq_q={self.seq_q} must be at most seq_kv={self.seq_kv}")
        _choice("dtype", self.dtype, tuple(DTYPES))
        object.__setattr__(self, "device", resolve_device(self.device))
        if self.dtype not in supported_dtypes(self.device):
            raise ValueError(
                f"dtype={self.dtype!r} is not supported on {self.device}; "
                f"choose one of: {', '.join(supported_dtypes(self.device))}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.heads_q // self.heads_kv

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One point on every axis. Build it with :func:`sdpalab.build`."""

    backend: str = "auto"
    """Kernel: one of ``BACKENDS``."""
    mod: str = "none"
    """Mask or score modification: a name from ``sdpalab.attention.mods.MODS``."""
    mod_args: dict[str, Any] = field(default_factory=dict)
    """Parameters of the mod, e.g. ``{"window": 256}``."""
    kv_cache: str = "none"
    """KV cache layout; ``none`` attends the given k, v directly (no state)."""
    kv_quant: str = "none"
    """Storage format of the cached keys and values (needs a ``kv_cache``)."""
    kv_args: dict[str, Any] = field(default_factory=dict)
    """Cache and quantization parameters; see ``KV_ARGS``."""
    weight_quant: str = "none"
    """torchao quantization of the q/k/v/o projections (implies ``projections``)."""
    projections: bool = False
    """Wrap the attention in q/k/v/o ``Linear`` projections (the case study's quantization setup)."""

    def __post_init__(self) -> None:
        from sdpalab.attention.mods import validate_mod  # mods import spec; avoid a cycle

        _choice("backend", self.backend, known_backends())
        _choice("kv_cache", self.kv_cache, KV_CACHES)
        _choice("kv_quant", self.kv_quant, KV_QUANTS)
        _choice("weight_quant", self.weight_quant, WEIGHT_QUANTS)
        if not isinstance(self.mod_args, dict):
            raise ValueError(f"mod_args={self.mod_args!r} must be a mapping of parameter to value")
        if not isinstance(self.kv_args, dict):
            raise ValueError(f"kv_args={self.kv_args!r} must be a mapping of parameter to value")
        validate_mod(self.mod, self.mod_args)
        for key, value in self.kv_args.items():
            _choice("kv_args key", key, tuple(KV_ARGS))
            _positive_int(f"kv_args.{key}", value)
        if self.kv_quant != "none" and self.kv_cache == "none":
            raise ValueError(
                f"kv_quant={self.kv_quant!r} needs a kv_cache; choose one of: "
                f"{', '.join(c for c in KV_CACHES if c != 'none')}"
            )
        if self.kv_cache == "sliding" and "window" not in self.kv_args:
            raise ValueError("kv_cache='sliding' needs kv_args.window (the ring-buffer length)")
        if self.weight_quant != "none":
            object.__setattr__(self, "projections", True)

    def __hash__(self) -> int:
        return hash(self.key())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Stable identity: the same variant always gives the same key."""
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    def label(self) -> str:
        """Short human name, e.g. ``flex/sliding_window(window=256)/static+int8``."""
        parts = [self.backend]
        if self.mod != "none":
            args = ",".join(f"{k}={v}" for k, v in sorted(self.mod_args.items()))
            parts.append(f"{self.mod}({args})" if args else self.mod)
        if self.kv_cache != "none":
            cache = self.kv_cache + ("" if self.kv_quant == "none" else f"+{self.kv_quant}")
            parts.append(cache)
        if self.projections:
            parts.append(f"proj:{self.weight_quant}")
        return "/".join(parts)

    def python(self) -> str:
        """The variant as Python a user can paste (non-default fields only)."""
        default = Variant()
        args = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        ]
        return f"sl.Variant({', '.join(args)})"


def trial_id(variant: Variant, workload: Workload, extra: dict[str, Any] | None = None) -> str:
    """Stable hash of a trial's full configuration (variant, workload, measurement settings)."""
    blob = json.dumps(
        {"variant": variant.to_dict(), "workload": workload.to_dict(), "extra": extra or {}},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
