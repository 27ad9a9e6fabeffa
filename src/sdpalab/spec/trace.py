"""The trace file: a model's post-RoPE queries, keys and values and its own attention output at
chosen layers, on one text, in one safetensors file (written by :mod:`sdpalab.models.capture`,
measured on as a :class:`~sdpalab.spec.workload.TraceWorkload`).

Tensors, in the capture's dtype: ``layer{i}.q`` ``[B, H_q, S, D]``, ``layer{i}.k`` and
``layer{i}.v`` ``[B, H_kv, S, D]``, ``layer{i}.out`` ``[B, H_q, S, D]`` (what the model's own
attention made of them). Queries and keys sit at the same ``S`` positions, so the layer's mask
(causal, or its sliding window) applies as in the model. The metadata (model, layers, positions,
masks, text, versions) is one JSON string under the safetensors metadata key ``sdpalab.trace``.

The header is read with the standard library alone: a config naming a trace is checked on a
machine that may lack safetensors. The tensors load through safetensors.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FORMAT = "sdpalab.trace/1"
METADATA_KEY = "sdpalab.trace"
PARTS = ("q", "k", "v", "out")
INSTALL = "pip install 'sdpalab[transformers]'"
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def tensor_name(layer: int, part: str) -> str:
    """The name of one tensor in a trace: ``layer5.q``."""
    return f"layer{layer}.{part}"


@dataclass(frozen=True)
class TraceInfo:
    """A trace file's header: its metadata and each tensor's shape, and the file's digest
    (what a trial id keys on: a trace captured again at the same path is another workload)."""

    path: str
    meta: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the whole file, its first 16 hex digits: read on first use, once per file
        version (``read_trace`` keeps one TraceInfo per path, mtime and size)."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        return digest.hexdigest()[:16]

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.meta["layers"])

    def shape(self, layer: int) -> dict[str, int]:
        """``batch``, ``heads_q``, ``heads_kv``, ``seq`` (tokens) and ``head_dim`` of a layer."""
        batch, heads_q, seq, head_dim = self.shapes[tensor_name(layer, "q")]
        heads_kv = self.shapes[tensor_name(layer, "k")][1]
        return dict(batch=batch, heads_q=heads_q, heads_kv=heads_kv, seq=seq, head_dim=head_dim)

    def mask(self, layer: int) -> tuple[str, dict[str, Any]]:
        """The layer's own mask as an sdpalab mod: ``("causal", {})`` or
        ``("sliding_window", {"window": W})``."""
        entry = self.meta["masks"][str(layer)]
        return entry["mod"], dict(entry["args"])


def read_trace(path: str | Path) -> TraceInfo:
    """The header of the trace at ``path``. Raises ``ValueError`` (one line) for a path that does
    not exist or a file that is not a trace."""
    path = Path(path).expanduser()
    try:
        stat = path.stat()
    except OSError:
        raise ValueError(
            f"trace {str(path)!r} does not exist; write one with: sdpalab capture MODEL --out FILE"
        ) from None
    return _read_header(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _read_header(path: str, mtime_ns: int, size: int) -> TraceInfo:
    # keyed on mtime and size too: a trace written again at the same path is read again
    not_trace = f"{path!r} is not an sdpalab trace (a safetensors file from sdpalab capture)"
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > min(_MAX_HEADER, size - 8):
                raise ValueError(not_trace)
            header = json.loads(f.read(length))
        meta = json.loads(header.get("__metadata__", {})[METADATA_KEY])
    except (OSError, struct.error, ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(not_trace) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("layers"), list):
        raise ValueError(not_trace)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{not_trace}; its format is {meta.get('format')!r}, not {FORMAT!r}")
    shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    missing = [
        tensor_name(i, p) for i in meta["layers"] for p in PARTS if tensor_name(i, p) not in shapes
    ]
    if missing:
        raise ValueError(f"{not_trace}: it lacks {', '.join(missing)}")
    return TraceInfo(path, meta, shapes)


def load_layer(path: str | Path, layer: int) -> dict[str, torch.Tensor]:
    """One layer's tensors, ``{"q", "k", "v", "out"}`` on the CPU in the capture's dtype."""
    info = read_trace(path)
    if layer not in info.layers:
        raise ValueError(
            f"layer {layer} is not in trace {info.path!r}; valid: "
            + ", ".join(map(str, info.layers))
        )
    try:
        from safetensors import safe_open
    except ImportError:
        raise ImportError(f"reading a trace needs safetensors: {INSTALL}") from None
    with safe_open(info.path, framework="pt") as f:
        return {part: f.get_tensor(tensor_name(layer, part)) for part in PARTS}


def write_trace(
    path: str | Path, tensors: dict[int, dict[str, torch.Tensor]], meta: dict[str, Any]
) -> None:
    """Write ``tensors`` (layer → ``{"q", "k", "v", "out"}``) and ``meta`` as one trace file.

    The file appears whole or not at all (written beside, then renamed), so an interrupted
    capture never leaves a trace that reads but holds part of a layer.
    """
    try:
        from safetensors.torch import save
    except ImportError:
        raise ImportError(f"writing a trace needs safetensors: {INSTALL}") from None
    meta = {**meta, "format": FORMAT, "layers": sorted(tensors)}
    flat = {
        tensor_name(layer, part): t.detach().to("cpu").contiguous()
        for layer, parts in tensors.items()
        for part, t in parts.items()
    }
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    blob = save(flat, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    try:
        partial.write_bytes(blob)  # not save_file(): it makes files only their owner can read
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
