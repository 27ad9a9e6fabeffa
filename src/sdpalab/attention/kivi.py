"""KIVI storage (Liu et al. 2024) for the dynamic and static caches.

Keys are quantized per channel over groups of ``group_size`` tokens, values per token (layouts in
``kvquant``), and the newest tokens stay in full precision in a ring. Positions are quantized
once ``residual`` + a whole group have accumulated behind them: of S cached positions the first
``quantized_length(S) = group_size * floor((S - residual) / group_size)`` are quantized and the
newest ``[residual, residual + group_size)`` are not. Which positions are quantized depends only
on S, never on how the tokens were chunked. The ring holds ``residual + group_size - 1 +
rollback_tokens`` positions, so a step that quantizes a group can still be rolled back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sdpalab.attention.backends import Attend
from sdpalab.attention.kvcache import CachedAttention
from sdpalab.attention.kvstore import Codec, LinearStore, RingStore, fused_writer

if TYPE_CHECKING:
    from sdpalab.spec import Workload

KIVI_RESIDUAL = 32
"""Default count of the newest tokens kept in full precision."""


class KiviCache(CachedAttention):
    """KIVI: quantized keys (per channel, token groups) and values (per token), plus a ring of
    the newest tokens in full precision (see the module doc for which positions are which)."""

    def __init__(
        self,
        workload: Workload,
        *,
        fmt: str,
        attend: Attend,
        group_size: int | None = None,
        residual: int = KIVI_RESIDUAL,
        max_len: int | None = None,
        rollback_tokens: int = 0,
        window: int | None = None,
        smooth_keys: bool = False,
    ) -> None:
        super().__init__(workload, smooth_keys=smooth_keys)
        dims = (self.head_dim, self.dtype, str(self.device))
        self.k_codec = Codec(fmt, "key", *dims, group_size)
        self.v_codec = Codec(fmt, "value", *dims, group_size)
        self.group = self.k_codec.granule
        self.residual, self.max_len, self.attend, self.window = residual, max_len, attend, window
        where = (self.batch, self.heads_kv, self.device)
        groups = None if max_len is None else self.quantized_length(max_len) // self.group
        self.k_store = LinearStore(self.k_codec.entry_shapes, *where, groups)
        self.v_store = LinearStore(
            self.v_codec.entry_shapes, *where, None if groups is None else groups * self.group
        )
        full = {"x": ((self.head_dim,), self.dtype)}
        ring = residual + self.group - 1 + rollback_tokens
        self.k_recent, self.v_recent = RingStore(full, *where, ring), RingStore(full, *where, ring)
        self.writer = fused_writer(
            self.k_codec, self.k_store, self.v_codec, self.v_store, self.device
        )
        """Encodes whole groups leaving the ring into static stores in one launch (CUDA)."""

    def quantized_length(self, length: int) -> int:
        """How many of the first ``length`` positions are stored quantized."""
        return max(0, length - self.residual) // self.group * self.group

    def _step(self, q, k, v):
        start, n = self.length, k.shape[2]
        a, b = self.quantized_length(start), self.quantized_length(start + n)
        k_pending = torch.cat([self.k_recent.read(a, start)["x"], k], 2)  # positions [a, start+n)
        v_pending = torch.cat([self.v_recent.read(a, start)["x"], v], 2)
        fused = getattr(self.attend, "reads_quantized", False) and self.window is None
        if fused and self.writer is not None:
            if b > a:  # whole groups leave the ring: keys per channel, values per token
                self.writer(k_pending[:, :, : b - a], v_pending[:, :, : b - a], a)
                self.k_store.advance((b - a) // self.group)
                self.v_store.advance(b - a)
            return self._step_fused(q, k, v, a, b, k_pending, v_pending, None, None)
        new_k = self.k_codec.encode(k_pending[:, :, : b - a]) if b > a else None
        new_v = self.v_codec.encode(v_pending[:, :, : b - a]) if b > a else None
        if fused:
            return self._step_fused(q, k, v, a, b, k_pending, v_pending, new_k, new_v)
        k_parts, v_parts = [], []
        if a:
            k_parts.append(self.k_codec.decode(self.k_store.read(0, a // self.group)))
            v_parts.append(self.v_codec.decode(self.v_store.read(0, a)))
        if new_k is not None:
            k_parts.append(self.k_codec.decode(new_k))
            v_parts.append(self.v_codec.decode(new_v))
        k_parts.append(k_pending[:, :, b - a :])
        v_parts.append(v_pending[:, :, b - a :])
        lo = 0 if self.window is None else max(0, start - (self.window - 1))
        out = self.attend(q, torch.cat(k_parts, 2)[:, :, lo:], torch.cat(v_parts, 2)[:, :, lo:])
        if new_k is not None:
            self.k_store.append(new_k)
            self.v_store.append(new_v)
        self.k_recent.append({"x": k})
        self.v_recent.append({"x": v})
        return out

    def _step_fused(self, q, k, v, a, b, k_pending, v_pending, new_k, new_v):
        """Hand a fused kernel the quantized groups and the full-precision tail as stored."""
        from sdpalab.attention.kernels.qdecode import qtensor_from_planes

        if new_k is not None:  # store first; CachedAttention.__call__ rolls back on failure
            self.k_store.append(new_k)
            self.v_store.append(new_v)
        k_q = v_q = None
        if b:
            k_q = qtensor_from_planes(self.k_codec, self.k_store.read(0, b // self.group))
            v_q = qtensor_from_planes(self.v_codec, self.v_store.read(0, b))
        out = self.attend.attend_quantized(
            q, k_q, v_q, k_pending[:, :, b - a :], v_pending[:, :, b - a :]
        )
        self.k_recent.append({"x": k})
        self.v_recent.append({"x": v})
        return out

    def _room(self):
        return None if self.max_len is None else self.max_len - self.length

    def _rollback_refusal(self, length):
        need = self.quantized_length(length)
        if need < self.k_recent.oldest():
            return (
                f"KIVI keeps full-precision positions [{self.k_recent.oldest()}, {self.length}); rolling "
                f"back to {length} needs position {need} unquantized (build the cache with a "
                "larger rollback_tokens)"
            )
        return None

    def _truncate(self, length):
        q = self.quantized_length(length)
        self.k_store.truncate(q // self.group)
        self.v_store.truncate(q)
        self.k_recent.truncate(length)
        self.v_recent.truncate(length)

    def tensors(self):
        return (
            super().tensors()
            + self.k_store.tensors()
            + self.v_store.tensors()
            + self.k_recent.tensors()
            + self.v_recent.tensors()
        )
