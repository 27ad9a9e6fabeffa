"""A :class:`Variant` picks one value on each axis: kernel, mod, KV cache, KV quantization,
weight quantization. Frozen and validated on construction: a bad value raises ``ValueError``
naming the field, the value and the valid choices."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdpalab.attention.backends import backend_names
from sdpalab.attention.kvlayers import KV_QUANTS as KV_QUANTS  # the spec's axis values
from sdpalab.attention.kvlayers import canonical_kv_quant
from sdpalab.attention.mods import validate_mod
from sdpalab.spec.workload import Workload, check_choice, check_positive_int, workload_kind

KV_CACHES = ("none", "dynamic", "static", "sliding", "paged")
WEIGHT_QUANTS = ("none", "int8_weight_only", "int8_dynamic", "int4_weight_only")

KV_ARGS = {
    "max_len": "static/paged: capacity in tokens (default: the workload's seq_kv)",
    "window": "sliding: ring-buffer length W (also the sliding-window width)",
    "page_size": "paged: tokens per page (default 128)",
    "group_size": "int4: values per group along D (default 64); kivi: tokens per key group (32)",
    "residual": "kivi: most recent tokens kept in full precision (default 32)",
    "smooth_keys": "1: store keys minus each channel's mean over the prefill (softmax unchanged)",
}
KV_FLAGS = ("smooth_keys",)
"""``kv_args`` that are switches: 1 turns one on, leaving it out turns it off (one spelling of
off, so one variant has one key)."""


def check_kv_arg(key: str, value: Any, prefix: str = "kv_args.") -> None:
    """Raise ``ValueError`` naming ``prefix + key`` when ``value`` is not valid for that key
    (a positive integer; a flag: 1)."""
    if key in KV_FLAGS:
        if isinstance(value, bool) or not isinstance(value, int) or value != 1:
            raise ValueError(
                f"{prefix}{key}={value!r} is not valid; choose 1 (leave it out to turn it off)"
            )
    else:
        check_positive_int(f"{prefix}{key}", value)


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One point on every axis. Build it with :func:`sdpalab.build`."""

    backend: str = "auto"
    """Kernel: a name from :mod:`sdpalab.attention.backends`."""
    mod: str = "none"
    """Mask or score modification: a name from ``sdpalab.attention.mods.MODS``."""
    mod_args: dict[str, Any] = field(default_factory=dict)
    """Parameters of the mod, e.g. ``{"window": 256}``."""
    kv_cache: str = "none"
    """KV cache layout; ``none`` attends the given k, v directly (no state)."""
    kv_quant: str = "none"
    """Storage format of the cached keys and values (needs a ``kv_cache``): one of
    ``KV_QUANTS`` for every layer or, on model workloads, a per-layer map such as
    ``"int8@0-1,kivi2"`` (layers 0-1 int8, the rest kivi2; :mod:`sdpalab.attention.kvlayers`),
    kept in its canonical spelling."""
    kv_args: dict[str, Any] = field(default_factory=dict)
    """Cache and quantization parameters; see ``KV_ARGS``."""
    weight_quant: str = "none"
    """torchao quantization of the q/k/v/o projections (implies ``projections``)."""
    projections: bool = False
    """Wrap the attention in q/k/v/o ``Linear`` projections (the case study's quantization setup)."""

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, backend_names())
        check_choice("kv_cache", self.kv_cache, KV_CACHES)
        try:
            object.__setattr__(self, "kv_quant", canonical_kv_quant(self.kv_quant))
        except ValueError as err:
            raise ValueError(f"kv_quant={err}") from None
        check_choice("weight_quant", self.weight_quant, WEIGHT_QUANTS)
        if not isinstance(self.mod_args, dict):
            raise ValueError(f"mod_args={self.mod_args!r} must be a mapping of parameter to value")
        if not isinstance(self.kv_args, dict):
            raise ValueError(f"kv_args={self.kv_args!r} must be a mapping of parameter to value")
        validate_mod(self.mod, self.mod_args)
        for key, value in self.kv_args.items():
            check_choice("kv_args key", key, tuple(KV_ARGS))
            check_kv_arg(key, value)
        if self.kv_quant != "none" and self.kv_cache == "none":
            raise ValueError(
                f"kv_quant={self.kv_quant!r} needs a kv_cache; choose one of: "
                f"{', '.join(c for c in KV_CACHES if c != 'none')}"
            )
        if "smooth_keys" in self.kv_args and self.kv_cache == "none":
            raise ValueError(
                "kv_args.smooth_keys needs a kv_cache (it shifts the keys a cache stores); "
                f"choose one of: {', '.join(c for c in KV_CACHES if c != 'none')}"
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
            parts.append(mod_text(self.mod, self.mod_args))
        if self.kv_cache != "none":
            cache = self.kv_cache + ("" if self.kv_quant == "none" else f"+{self.kv_quant}")
            # smoothing changes what is stored, so a table must tell the two rows apart
            parts.append(cache + ("+smooth_keys" if "smooth_keys" in self.kv_args else ""))
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


# --------------------------------------------------------------------------- what it computes


def mod_text(name: str, args: Mapping[str, Any] | None = None) -> str:
    """A mask as labels and contexts write it: ``causal``, ``sliding_window(window=128)``."""
    inner = ",".join(f"{k}={v}" for k, v in sorted((args or {}).items()))
    return f"{name}({inner})" if inner else name


def computed_mod(variant: Variant | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The mask a variant (or its dict) computes over the whole sequence: its mod, except that a
    cache always attends causally (mod ``none`` means ``causal``) and a ``sliding`` cache of
    ring W attends ``sliding_window`` of the mod's window, else W."""
    fields = variant if isinstance(variant, Mapping) else vars(variant)
    mod, args = fields.get("mod", "none"), dict(fields.get("mod_args") or {})
    cache = fields.get("kv_cache", "none")
    if cache == "sliding":
        window = args.get("window") if mod == "sliding_window" else None
        return "sliding_window", {"window": window or (fields.get("kv_args") or {}).get("window")}
    if cache != "none" and mod == "none":
        return "causal", {}
    return mod, args


def meant_mod(
    workload: Mapping[str, Any], variant: Variant | Mapping[str, Any]
) -> tuple[str, dict[str, Any]] | None:
    """The attention a trial means: the mask its workload names, else (a workload that names
    none) the one the variant computes. ``None`` on a model or trace workload, whose masks are
    the model's own."""
    if workload_kind(workload) is not Workload:
        return None
    if workload.get("mod") is not None:
        return workload["mod"], dict(workload.get("mod_args") or {})
    return computed_mod(variant)


def approximation(
    workload: Mapping[str, Any], variant: Variant | Mapping[str, Any]
) -> tuple[str, str] | None:
    """``(the mask the workload names, the one the variant computes)`` as text when they differ:
    the variant is an approximation, its error measured against the workload's mask. ``None``
    when it computes what is meant, or the workload names no mask."""
    if workload_kind(workload) is not Workload or workload.get("mod") is None:
        return None
    meant, computed = meant_mod(workload, variant), computed_mod(variant)
    if _same_mask(meant, computed):
        return None
    return mod_text(*meant), mod_text(*computed)


def _same_mask(a: tuple[str, dict], b: tuple[str, dict]) -> bool:
    # arguments left at their defaults are the same mask as arguments given as the defaults
    return a[0] == b[0] and validate_mod(*a) == validate_mod(*b)


def phase_refusal(variant: Variant, workload: Any) -> str | None:
    """Why ``variant`` can never run in ``workload``'s phase (a config error, not a trial), or
    None. ``train`` differentiates one attention call: a KV cache serves generation, and the
    q/k/v/o projections (and their weight quantization) are not what it trains."""
    if getattr(workload, "phase", None) != "train":
        return None
    if variant.kv_cache != "none":
        return (
            f"kv_cache={variant.kv_cache!r} cannot train: phase train runs one attention call "
            "forward and backward; choose kv_cache none"
        )
    if variant.projections:
        return (
            "projections cannot train here: phase train differentiates the attention call "
            "alone; choose projections false and weight_quant none"
        )
    return None
