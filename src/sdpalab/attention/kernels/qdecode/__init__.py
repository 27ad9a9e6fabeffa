"""Fused decode attention over a quantized KV cache, in Triton: ``host.py`` (the call, its checks
and launch), ``general.py`` and ``fast.py`` (the kernels). Importing it does not import Triton."""

from sdpalab.attention.kernels.qdecode.host import (
    CODES_PER_WORD,
    QDecodeAttend,
    bytes_read,
    interpreting,
    launch_geometry,
    make_qdecode,
    plan_launch,
    qdecode_attention,
    qtensor_from_planes,
)

__all__ = [
    "CODES_PER_WORD",
    "QDecodeAttend",
    "bytes_read",
    "interpreting",
    "launch_geometry",
    "make_qdecode",
    "plan_launch",
    "qdecode_attention",
    "qtensor_from_planes",
]
