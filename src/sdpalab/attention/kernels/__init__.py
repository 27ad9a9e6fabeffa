"""Hand-written kernels, registered as backends. Importing this package registers them; it does
not import Triton (that happens when a backend is built).

``triton_qdecode`` — fused decode attention that reads a quantized KV cache in its stored
format (``qdecode.py``). CUDA only; with ``TRITON_INTERPRET=1`` it also runs (slowly) on the CPU,
which is how CI tests it.
"""

from __future__ import annotations

from sdpalab.attention.dispatch import register_backend
from sdpalab.attention.kernels.attend import make_qdecode

register_backend("triton_qdecode", make_qdecode)

__all__ = ["make_qdecode"]
