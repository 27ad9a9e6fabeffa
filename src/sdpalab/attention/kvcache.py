"""Stateful attention over a KV cache: each call appends its k, v and attends its q to everything
cached so far, causal and bottom-right aligned (query i of an n-token call sits at position
``length_before + i``). Prefill of any length, single tokens and chunks, in any order, give the
same outputs as causal attention over the whole sequence.

Layouts (all ``[B, H_kv, S, D]``; ``kv_args`` from the Variant):

- ``dynamic`` — grows by ``torch.cat``.
- ``static`` — preallocated to ``max_len`` tokens (default ``workload.seq_kv``, which for a
  decode workload already counts the step's own tokens), written with ``index_copy_``, attended
  through a view; nothing is reallocated while decoding, and it traces under ``torch.compile``.
- ``sliding`` — a ring of the last ``window`` = W positions; the semantics are sliding-window
  causal attention of width W over the whole sequence (the oracle's ``sliding_window`` mod).
  Each call attends ``[the W-1 positions before it] + its own tokens`` with the sliding-window
  mask, so a chunk's earliest queries see keys older than the last W of the chunk.
- ``paged`` — fixed-size pages in a shared pool with a page table per batch row (``paged.py``);
  a backend that reads pages (flex) attends the pool through a BlockMask built from the page
  table, other backends gather the pages in order first.

KV quantization (``kvquant``) works with every layout for ``int8``, ``int4`` and ``fp8``
(dequantize, then attend: the baseline path); ``kivi2``/``kivi4`` with ``dynamic`` and
``static`` (``kivi.py``: recent tokens in full precision, older ones quantized in groups). Every
call attends over the cache as it is after its own tokens were appended.

Key smoothing (``smooth_keys``, every layout and format): on the first call into an empty cache
the mean of each key channel over that call's tokens is taken per (batch row, KV head) and kept;
every key, then and later, is stored as ``k - mean``. A query's scores all shift by the same
``q · mean``, so softmax, the output and the float64 oracle of the original keys are unchanged,
while a channel with a large offset (real keys have a few) no longer stretches the per-token
quantization range of its neighbours (KIVI quantizes keys per channel already: there it changes
little). A fused kernel reads the stored keys as they are. The
shift assumes the scores reach softmax unchanged, as they do for every mod a cache serves (a
soft-capped model's would not be).

Mods: the cache is always causal. ``none`` and ``causal`` mean causal; ``sliding_window`` is a
causal window over absolute positions and is allowed everywhere (on the sliding layout its width
must not exceed the ring's). Other mods (``prefix_lm``, ``document``, biases) are ``unsupported``:
they either see future keys, which a cache does not hold yet, or are not causal by themselves.

Rollback (``rollback(length)``) forgets tokens after ``length``; the measurement uses it to time
one step repeatedly against the same filled cache. It is a pointer move for static, paged and the
rings; dynamic compacts with a copy. A ring cannot give back what it overwrote, so it keeps
``rollback_tokens`` positions more than it needs (default: ``workload.seq_q`` for decode
workloads, else 0): the sliding ring holds ``W - 1 + max(1, rollback_tokens)`` positions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sdpalab.attention.backends import Attend
from sdpalab.attention.kvstore import Codec, fused_writer

if TYPE_CHECKING:
    from sdpalab.spec import Workload


class CachedAttention:
    """Attention with a KV cache; call it with ``q [B, H_q, n, D]``, ``k, v [B, H_kv, n, D]``.

    ``length`` is the number of tokens cached; ``reset()`` empties the cache;
    ``rollback(length)`` forgets tokens after ``length``; ``cache_bytes()`` is the bytes of
    every tensor the cache holds (values, scales, zeros, residual window, page table, key means).
    """

    def __init__(self, workload: Workload, *, smooth_keys: bool = False) -> None:
        self.batch, self.heads_q, self.heads_kv = (
            workload.batch,
            workload.heads_q,
            workload.heads_kv,
        )
        self.head_dim, self.dtype = workload.head_dim, workload.torch_dtype
        self.device = torch.device(workload.device)
        self.length = 0
        self.key_mean: torch.Tensor | None = None
        """``[B, H_kv, 1, D]`` in the cache dtype when smoothing keys: each channel's mean over
        the first call into the empty cache (module doc)."""
        if smooth_keys:
            shape = (self.batch, self.heads_kv, 1, self.head_dim)
            self.key_mean = torch.zeros(shape, dtype=self.dtype, device=self.device)

    # -- what a layout provides ------------------------------------------------------------
    def _step(self, q, k, v) -> torch.Tensor:
        raise NotImplementedError

    def _room(self) -> int | None:
        """Tokens that still fit (None: unbounded)."""
        return None

    def _rollback_refusal(self, length: int) -> str | None:
        """Why the cache cannot roll back to ``length`` (None: it can)."""
        return None

    def _truncate(self, length: int) -> None:
        raise NotImplementedError

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the cache holds (a layout adds its stores to these)."""
        return [] if self.key_mean is None else [self.key_mean]

    # -- the contract ------------------------------------------------------------------------
    def __call__(self, q_BHSD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor):
        self._validate(q_BHSD, k_BHSD, v_BHSD)
        start = self.length
        try:
            out = self._step(q_BHSD, self._smooth(k_BHSD), v_BHSD)
        except BaseException:
            self._truncate(start)  # a failed kernel leaves the cache as it was
            raise
        self.length = start + k_BHSD.shape[2]
        return out

    def _smooth(self, k_BHSD: torch.Tensor) -> torch.Tensor:
        """The keys as stored: ``k - key_mean`` (computed in float32, rounded once), the mean
        taken from ``k`` itself when the cache is empty; ``k`` as is without smoothing."""
        if self.key_mean is None:
            return k_BHSD
        k32 = k_BHSD.float()
        if self.length == 0:  # a new sequence: its first call (the prefill) sets the mean
            self.key_mean.copy_(k32.mean(2, keepdim=True))
        return (k32 - self.key_mean.float()).to(self.dtype)

    def _validate(self, q, k, v) -> None:
        want = (self.batch, self.heads_kv, self.head_dim)
        for name, t in (("k", k), ("v", v)):
            if t.dim() != 4 or (t.shape[0], t.shape[1], t.shape[3]) != want:
                raise ValueError(
                    f"{name} has shape {tuple(t.shape)}; this cache holds [B={want[0]}, "
                    f"H_kv={want[1]}, S, D={want[2]}]"
                )
        n = k.shape[2]
        if v.shape[2] != n or n < 1:
            raise ValueError(
                f"k and v must carry the same number (>= 1) of tokens; got {n}, {v.shape[2]}"
            )
        if q.dim() != 4 or tuple(q.shape) != (self.batch, self.heads_q, n, self.head_dim):
            raise ValueError(
                f"q has shape {tuple(q.shape)}; expected [B={self.batch}, H_q={self.heads_q}, "
                f"n={n}, D={self.head_dim}] (one query per new token)"
            )
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.dtype != self.dtype or t.device.type != self.device.type:
                raise ValueError(
                    f"{name} is {t.dtype} on {t.device}; this cache is {self.dtype} on {self.device}"
                )
        room = self._room()
        if room is not None and n > room:
            raise ValueError(
                f"cache overflow: it holds {self.length} tokens and has room for {room} more; "
                f"this step adds {n} (raise kv_args.max_len)"
            )

    def reset(self) -> None:
        """Empty the cache (preallocated storage stays allocated)."""
        self._truncate(0)
        self.length = 0

    def rollback(self, length: int) -> None:
        """Forget the tokens after ``length``; the cache is then as it was at that length."""
        if (
            isinstance(length, bool)
            or not isinstance(length, int)
            or not 0 <= length <= self.length
        ):
            raise ValueError(f"rollback length {length!r} must be an integer in [0, {self.length}]")
        if length == self.length:
            return
        if reason := self._rollback_refusal(length):
            raise ValueError(reason)
        self._truncate(length)
        self.length = length

    def cache_bytes(self) -> int:
        """Bytes of the storage the cache holds, as allocated (shared storage counted once)."""
        seen = {}
        for t in self.tensors():
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return sum(seen.values())


class TokenCache(CachedAttention):
    """Tokens stored one entry each (unquantized, int8, int4, fp8) in any store layout.

    ``window`` (None: causal) is the sliding-window width the attend function applies; the
    earliest query of a call at position ``start`` needs keys from ``start - (window - 1)``.
    """

    def __init__(
        self,
        workload: Workload,
        *,
        k_codec: Codec,
        v_codec: Codec,
        k_store,
        v_store,
        attend: Attend | None,
        window: int | None = None,
        smooth_keys: bool = False,
    ) -> None:
        super().__init__(workload, smooth_keys=smooth_keys)
        self.k_codec, self.v_codec = k_codec, v_codec
        self.k_store, self.v_store = k_store, v_store
        self.attend, self.window = attend, window
        self.writer = fused_writer(k_codec, k_store, v_codec, v_store, self.device)
        """Encodes k and v into static stores in one launch (CUDA), or None."""

    def _lo(self, position: int) -> int:
        """The oldest key a query at ``position`` may see."""
        return 0 if self.window is None else max(0, position - (self.window - 1))

    def _write_first(self, n: int) -> bool:
        # A ring may overwrite keys the call's own earliest queries need; then attend first.
        return self._lo(self.length) >= self.k_store.oldest(n)

    def _step(self, q, k, v):
        start, n = self.length, k.shape[2]
        if self.writer is not None:  # a static store: written first, in one launch
            self.writer(k, v, start)
            self.k_store.advance(n)
            self.v_store.advance(n)
            return self._attend_stored(q, start, n)
        ek, ev = self.k_codec.encode(k), self.v_codec.encode(v)
        if self._write_first(n):
            self.k_store.append(ek)
            self.v_store.append(ev)
            return self._attend_stored(q, start, n)
        lo = self._lo(start)
        k_all = torch.cat(
            [self.k_codec.decode(self.k_store.read(lo, start)), self.k_codec.decode(ek)], 2
        )
        v_all = torch.cat(
            [self.v_codec.decode(self.v_store.read(lo, start)), self.v_codec.decode(ev)], 2
        )
        out = self.attend(q, k_all, v_all)
        self.k_store.append(ek)
        self.v_store.append(ev)
        return out

    def _attend_stored(self, q, start: int, n: int) -> torch.Tensor:
        lo = self._lo(start)
        k_planes, v_planes = self.k_store.read(lo, start + n), self.v_store.read(lo, start + n)
        if getattr(self.attend, "reads_quantized", False) and self.k_codec.fmt != "none":
            # a fused kernel reads the stored codes and scales itself: no dequantized copy
            from sdpalab.attention.kernels.qdecode import qtensor_from_planes

            return self.attend.attend_quantized(
                q,
                qtensor_from_planes(self.k_codec, k_planes),
                qtensor_from_planes(self.v_codec, v_planes),
            )
        return self.attend(q, self.k_codec.decode(k_planes), self.v_codec.decode(v_planes))

    def _room(self):
        return self.k_store.room()

    def _rollback_refusal(self, length):
        held = self.k_store.oldest()
        if self._lo(length) < held:
            return (
                f"the ring keeps positions [{held}, {self.length}); rolling back to {length} needs "
                f"position {self._lo(length)} (build the cache with a larger rollback_tokens)"
            )
        return None

    def _truncate(self, length):
        self.k_store.truncate(length)
        self.v_store.truncate(length)

    def tensors(self):
        return super().tensors() + self.k_store.tensors() + self.v_store.tensors()
