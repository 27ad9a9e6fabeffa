"""Quantize-and-append in one Triton launch: a decode step's new keys and values quantized in
their codecs' formats and written straight into a static cache's planes (``host.py``: checks and
launch; ``kernel.py``: the kernel). Importing it does not import Triton."""

from sdpalab.attention.kernels.qappend.host import (
    QuantizeAppend,
    availability,
    quantize_append,
    quantize_append_kv,
    refusal,
)

__all__ = ["QuantizeAppend", "availability", "quantize_append", "quantize_append_kv", "refusal"]
