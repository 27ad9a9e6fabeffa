"""The ``triton_qdecode`` backend: a stateless ``attend(q, k, v)`` that can also read a
quantized cache directly.

The contract with caches: an attend object with ``reads_quantized = True`` offers
``attend_quantized(q, k, v, k_recent=None, v_recent=None)``, where ``k``/``v`` are
:class:`~sdpalab.attention.kvquant.QTensor` views of the quantized tokens (positions
``[0, n)``, or None) and ``k_recent``/``v_recent`` the full-precision tokens after them
(``[B, H_kv, R, D]``, or None). A cache that finds the attribute passes its stored planes instead
of dequantizing them; :func:`qtensor_from_planes` turns a codec's planes into a QTensor.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from sdpalab.attention.errors import Unsupported
from sdpalab.attention.kvquant import QTensor

MODS = ("none", "causal")


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``, which must
    be set before triton is first imported)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def availability() -> str | None:
    """None when the kernel can run here, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton_qdecode needs triton (pip install triton)"
    if not torch.cuda.is_available() and not interpreting():
        return "triton_qdecode needs a CUDA GPU (or TRITON_INTERPRET=1 for testing)"
    return None


class QDecodeAttend:
    """``attend(q, k, v)`` over full-precision K/V, and ``attend_quantized`` over a quantized
    cache; causal means bottom-right (query i sees keys ``< kv_len - q_len + i + 1``)."""

    reads_quantized = True

    def __init__(self, causal: bool, **launch) -> None:
        self.causal = causal
        self.launch = launch
        """Optional launch overrides (block_n, num_warps, num_stages, splits)."""

    def __call__(self, q_BHSD, k_BHSD, v_BHSD):
        from sdpalab.attention.kernels.qdecode import qdecode_attention

        return qdecode_attention(
            q_BHSD, k_recent=k_BHSD, v_recent=v_BHSD, causal=self.causal, **self.launch
        )

    def attend_quantized(
        self,
        q_BHSD: torch.Tensor,
        k: QTensor | None,
        v: QTensor | None,
        k_recent: torch.Tensor | None = None,
        v_recent: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend to quantized tokens ``[0, n)`` then recent tokens ``[n, n + R)``."""
        from sdpalab.attention.kernels.qdecode import qdecode_attention

        return qdecode_attention(
            q_BHSD, k, v, k_recent, v_recent, causal=self.causal, **self.launch
        )


def make_qdecode(mod_name: str, mod_args: dict) -> QDecodeAttend:
    """Factory for ``backend="triton_qdecode"``: mods ``none`` and ``causal`` only."""
    if reason := availability():
        raise Unsupported(reason)
    if mod_name not in MODS:
        raise Unsupported(
            f"triton_qdecode computes only mods {', '.join(MODS)} (causal bottom-right); "
            f"got {mod_name!r}"
        )
    return QDecodeAttend(causal=mod_name == "causal")


def qtensor_from_planes(codec, planes: dict[str, torch.Tensor]) -> QTensor:
    """A cache codec's stored planes (``kvstore.Codec.encode`` layout, views are fine) as a
    QTensor, without copying: KIVI key groups are flattened back to tokens, fp8 bytes are
    viewed as float8 again."""
    data = planes["data"].flatten(2, 3) if codec.granule > 1 else planes["data"]
    if codec.fmt == "fp8":
        data = data.view(torch.float8_e4m3fn)
    return QTensor(
        codec.fmt,
        data,
        planes["scale"],
        planes.get("zero"),
        codec.head_dim,
        codec.role,
        codec.group_size,
    )
