"""Where a KV cache keeps its tokens: codecs (storage format) and stores (memory layout).

A :class:`Codec` turns ``[B, H, n, D]`` keys or values into named *planes* — tensors
``[B, H, entries, ...]`` whose axis 2 counts entries of ``granule`` tokens (1, or the token
group of KIVI keys) — and back. A store keeps planes in one memory layout:

- :class:`LinearStore` — entries in position order; grows by ``torch.cat`` (``capacity=None``,
  the dynamic cache) or is preallocated and written with ``index_copy_`` (the static cache);
- :class:`RingStore` — a preallocated ring of ``capacity`` entries, entry ``p`` in slot
  ``p % capacity`` (the sliding cache and KIVI's full-precision residual window).

The paged store lives in ``paged.py``. Stores only move bytes; what to attend lives in
``kvcache.py``. Every store reports the tensors it holds, so the cache's byte count is what the
allocator sees.
"""

from __future__ import annotations

import torch

from sdpalab.attention.errors import Unsupported
from sdpalab.attention.kvquant import QTensor, dequantize, fp8_supported, group_size_for, quantize

Planes = dict[str, torch.Tensor]
"""name → ``[B, H, entries, ...]``."""


class Codec:
    """The storage format of one role (keys or values): ``none`` keeps ``dtype`` as is."""

    def __init__(
        self,
        fmt: str,
        role: str,
        head_dim: int,
        dtype: torch.dtype,
        device: str,
        group_size: int | None = None,
    ) -> None:
        if fmt == "fp8" and (reason := fp8_supported(torch.device(device).type)):
            raise Unsupported(reason)
        self.fmt, self.role, self.head_dim, self.dtype = fmt, role, head_dim, dtype
        self.group_size = group_size_for(fmt, group_size)
        self.granule = self.group_size if fmt.startswith("kivi") and role == "key" else 1
        """Tokens per entry: KIVI keys are quantized in groups of tokens, everything else per token."""
        probe = self.encode(torch.zeros(1, 1, self.granule, head_dim, dtype=dtype))
        self.entry_shapes = {name: (tuple(t.shape[3:]), t.dtype) for name, t in probe.items()}
        """name → (trailing shape of one entry, dtype): what a store preallocates."""

    def encode(self, x_BHSD: torch.Tensor) -> Planes:
        """``[B, H, n, D]`` (n a multiple of ``granule``) → planes."""
        if self.fmt == "none":
            return {"x": x_BHSD}
        planes = quantize(x_BHSD, self.fmt, role=self.role, group_size=self.group_size).tensors()
        if self.fmt == "fp8":  # same bytes; index_copy_ has no float8 kernel on every device
            planes["data"] = planes["data"].view(torch.uint8)
        if self.granule > 1:
            planes["data"] = planes["data"].unflatten(2, (-1, self.granule))
        return planes

    def decode(self, planes: Planes) -> torch.Tensor:
        """Planes → ``[B, H, n, D]`` in the compute dtype."""
        if self.fmt == "none":
            return planes["x"]
        data = planes["data"].flatten(2, 3) if self.granule > 1 else planes["data"]
        if self.fmt == "fp8":
            data = data.view(torch.float8_e4m3fn)
        qt = QTensor(
            self.fmt,
            data,
            planes["scale"],
            planes.get("zero"),
            self.head_dim,
            self.role,
            self.group_size,
        )
        return dequantize(qt, self.dtype)


def allocate_planes(shapes, batch: int, heads: int, entries: int, device) -> Planes:
    # zeros, not empty: stale slots are masked, but a masked NaN still poisons p @ V.
    return {
        name: torch.zeros(batch, heads, entries, *rest, dtype=dtype, device=device)
        for name, (rest, dtype) in shapes.items()
    }


def entries_of(planes: Planes) -> int:
    return next(iter(planes.values())).shape[2]


class LinearStore:
    """Entries ``[0, length)`` in position order: dynamic (``capacity=None``) or static."""

    def __init__(self, shapes, batch: int, heads: int, device, capacity: int | None = None):
        self.shapes, self.batch, self.heads, self.device = shapes, batch, heads, device
        self.capacity = capacity
        self.length = 0
        self.planes: Planes = (
            {} if capacity is None else allocate_planes(shapes, batch, heads, capacity, device)
        )

    def room(self) -> int | None:
        """Entries that still fit (None: unbounded)."""
        return None if self.capacity is None else self.capacity - self.length

    def oldest(self, appended: int = 0) -> int:
        """The oldest entry held once ``appended`` more are in: nothing is ever overwritten."""
        return 0

    def append(self, planes: Planes) -> None:
        n = entries_of(planes)
        if self.capacity is None:
            if self.planes:
                self.planes = {k: torch.cat([t, planes[k]], dim=2) for k, t in self.planes.items()}
            else:  # own the bytes: never alias (or keep alive) the caller's tensors
                self.planes = {
                    k: t.clone(memory_format=torch.contiguous_format) for k, t in planes.items()
                }
        else:
            index = torch.arange(self.length, self.length + n, device=self.device)
            for name, t in self.planes.items():
                t.index_copy_(2, index, planes[name])
        self.length += n

    def advance(self, n: int) -> None:
        """Count ``n`` more entries as held: a writer (:func:`fused_writer`) already put them at
        ``[length, length + n)`` of this static store's planes."""
        if self.capacity is None or self.length + n > self.capacity:
            raise ValueError(
                f"advance({n}) needs a static store with room; capacity {self.capacity}"
            )
        self.length += n

    def read(self, lo: int, hi: int) -> Planes:
        """Entries ``[lo, hi)`` (views)."""
        return {k: t[:, :, lo:hi] for k, t in self.planes.items()}

    def truncate(self, length: int) -> None:
        """Forget entries from ``length`` on: a pointer move when static, a compacting copy when
        dynamic (so the bytes held stay the bytes used)."""
        if self.capacity is None:
            self.planes = (
                {k: t[:, :, :length].clone() for k, t in self.planes.items()} if length else {}
            )
        self.length = length

    def tensors(self) -> list[torch.Tensor]:
        return list(self.planes.values())


def fused_writer(k_codec: Codec, k_store, v_codec: Codec, v_store, device: torch.device):
    """One launch that encodes keys and values and writes them into two static stores
    (``kernels.qappend``: the same bytes as ``encode`` then ``append``), or None where it does
    not apply: a store that grows or is not linear, a device other than CUDA, a format the
    kernel does not write. Call it as ``writer(k, v, pos)``, then ``advance`` both stores."""
    stores = (k_store, v_store)
    if device.type != "cuda" or not all(
        isinstance(s, LinearStore) and s.capacity is not None for s in stores
    ):
        return None
    from sdpalab.attention.kernels.qappend import QuantizeAppend, refusal

    if refusal(k_codec, v_codec, device=device) is not None:
        return None
    return QuantizeAppend(k_codec, k_store.planes, v_codec, v_store.planes)


class RingStore:
    """The last ``capacity`` entries in a ring: entry ``p`` lives in slot ``p % capacity``.

    ``lo`` is the oldest entry still held; entries below it were overwritten.
    """

    def __init__(self, shapes, batch: int, heads: int, device, capacity: int):
        if capacity <= 0:
            raise ValueError(f"ring capacity must be positive; got {capacity}")
        self.device, self.capacity = device, capacity
        self.planes = allocate_planes(shapes, batch, heads, capacity, device)
        self.length = 0
        self.lo = 0

    def room(self) -> None:
        return None

    def oldest(self, appended: int = 0) -> int:
        """The oldest entry held once ``appended`` more are in."""
        return max(self.lo, self.length + appended - self.capacity)

    def _slots(self, lo: int, hi: int) -> torch.Tensor:
        return torch.arange(lo, hi, device=self.device) % self.capacity

    def append(self, planes: Planes) -> None:
        n = entries_of(planes)
        kept = min(n, self.capacity)  # of a long chunk only the tail survives
        slots = self._slots(self.length + n - kept, self.length + n)
        for name, t in self.planes.items():
            t.index_copy_(2, slots, planes[name][:, :, n - kept :])
        self.lo = self.oldest(n)
        self.length += n

    def read(self, lo: int, hi: int) -> Planes:
        """Entries ``[lo, hi)`` in position order (a gathered copy)."""
        if lo < self.lo or hi > self.length:
            raise ValueError(f"ring holds entries [{self.lo}, {self.length}); asked [{lo}, {hi})")
        slots = self._slots(lo, hi)
        return {k: t.index_select(2, slots) for k, t in self.planes.items()}

    def truncate(self, length: int) -> None:
        self.length = length
        self.lo = min(self.lo, length)

    def tensors(self) -> list[torch.Tensor]:
        return list(self.planes.values())
