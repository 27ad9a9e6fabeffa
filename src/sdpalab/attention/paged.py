"""Paged KV storage: fixed-size pages in a shared pool, one page table per batch row, and
attention that reads the pool in place through a FlexAttention BlockMask built from the table.

Layout. Each plane of the pool is ``[1, H_kv, n_pages * page_size, ...]`` — batch 1: the rows
share one pool and flex broadcasts it over the query batch. Token ``t`` of batch row ``b`` lives
at pool position ``table[b, t // page_size] * page_size + t % page_size``; ``page_logical[p]`` is
the logical page index of physical page ``p`` within its row (-1: free). The pool holds
``batch * ceil(max_len / page_size)`` pages, allocated up front; a row gets a page from the free
list (in order, or shuffled by ``seed``) when its length first reaches it, and keeps it when the
cache rolls back (a pointer move).

BlockMask. One KV block is one page; one Q block is 128 queries. For each Q block, the pages that
some of its queries see (causal, and inside the window if any) are listed by physical id in
logical order: pages every query of the block sees whole are *full* (no mask_mod call), the others
*partial*. The mask_mod maps a physical pool position back to its logical position and applies
the causal (and window) test there. Only the BlockMask changes from step to step, so compiled
flex is traced once per query length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.nn.attention.flex_attention import BlockMask

from sdpalab.attention.flex import compiled_flex
from sdpalab.attention.kvcache import TokenCache
from sdpalab.attention.kvstore import Planes, allocate_planes, entries_of

if TYPE_CHECKING:
    from sdpalab.spec import Workload

PAGE_SIZE = 128
"""Default tokens per page."""
Q_BLOCK = 128


class PageTable:
    """Which physical page holds each row's logical page; shared by the key and value pools."""

    def __init__(self, batch: int, page_size: int, max_len: int, device, seed: int | None = None):
        self.batch, self.page_size, self.device = batch, page_size, device
        self.pages_per_row = -(-max_len // page_size)
        self.n_pages = batch * self.pages_per_row
        self.table = torch.full((batch, self.pages_per_row), -1, dtype=torch.int32, device=device)
        self.page_logical = torch.full((self.n_pages,), -1, dtype=torch.int32, device=device)
        order = (
            torch.arange(self.n_pages)
            if seed is None
            else torch.randperm(self.n_pages, generator=torch.Generator().manual_seed(seed))
        )
        self.free = order.tolist()[::-1]  # pop() hands out pages in `order`
        self.assigned = 0
        """Logical pages assigned to every row (rows advance together)."""

    @property
    def capacity(self) -> int:
        """Tokens per row."""
        return self.pages_per_row * self.page_size

    def reserve(self, length: int) -> None:
        """Assign pages so every row can hold ``length`` tokens."""
        need = -(-length // self.page_size)
        if need <= self.assigned:
            return
        new = need - self.assigned
        pages = torch.tensor([self.free.pop() for _ in range(self.batch * new)], dtype=torch.int32)
        pages = pages.view(self.batch, new).to(self.device)
        self.table[:, self.assigned : need] = pages
        logical = torch.arange(self.assigned, need, dtype=torch.int32, device=self.device)
        self.page_logical[pages.flatten().long()] = logical.repeat(self.batch)
        self.assigned = need

    def addresses(self, lo: int, hi: int) -> torch.Tensor:
        """Pool positions ``[B, hi - lo]`` of tokens ``[lo, hi)`` of every row."""
        pos = torch.arange(lo, hi, device=self.device)
        return self.table[:, pos // self.page_size].long() * self.page_size + pos % self.page_size

    def tensors(self) -> list[torch.Tensor]:
        return [self.table, self.page_logical]


class PagedStore:
    """One role's planes in a page pool ``[1, H, n_pages * page_size, ...]``."""

    def __init__(self, shapes, heads: int, table: PageTable):
        self.table = table
        self.length = 0
        entries = table.n_pages * table.page_size
        self.planes = allocate_planes(shapes, 1, heads, entries, table.device)

    def room(self) -> int:
        return self.table.capacity - self.length

    def oldest(self, appended: int = 0) -> int:
        return 0

    def append(self, planes: Planes) -> None:
        n = entries_of(planes)
        self.table.reserve(self.length + n)
        addr = self.table.addresses(self.length, self.length + n).flatten()
        for name, pool in self.planes.items():
            # [B, H, n, ...] → [H, B*n, ...], b-major like addr
            pool[0].index_copy_(1, addr, planes[name].transpose(0, 1).flatten(1, 2))
        self.length += n

    def read(self, lo: int, hi: int) -> Planes:
        """Tokens ``[lo, hi)`` of every row, gathered in order: ``[B, H, hi - lo, ...]``."""
        addr = self.table.addresses(lo, hi)
        return {
            name: pool[0].index_select(1, addr.flatten()).unflatten(1, addr.shape).transpose(0, 1)
            for name, pool in self.planes.items()
        }

    def truncate(self, length: int) -> None:
        self.length = length

    def tensors(self) -> list[torch.Tensor]:
        return list(self.planes.values()) + self.table.tensors()


class PagedFlexCache(TokenCache):
    """Paged cache attended in place by compiled FlexAttention (see the module doc); built like a
    :class:`TokenCache` over two :class:`PagedStore` sharing one :class:`PageTable`."""

    def __init__(self, workload: Workload, **parts) -> None:
        super().__init__(workload, **parts)
        self.table = self.k_store.table
        self._q_start = torch.zeros((), dtype=torch.int32, device=self.device)
        self._mask_mod = self._paged_mask_mod()

    def _paged_mask_mod(self):
        page_size, logical_of, q_start = (
            self.table.page_size,
            self.table.page_logical,
            self._q_start,
        )
        window = self.window

        def paged_causal(b, h, q_idx, kv_idx):
            page = logical_of[kv_idx // page_size]
            kv_pos = page * page_size + kv_idx % page_size
            q_pos = q_idx + q_start
            keep = (page >= 0) & (kv_pos <= q_pos)
            if window is not None:
                keep = keep & (q_pos - kv_pos < window)
            return keep

        return paged_causal

    def _pages(self, chosen: torch.Tensor):
        """Pages chosen per Q block ``[rows, pages_per_row]`` → (counts ``[B, 1, rows]``,
        physical ids ``[B, 1, rows, n_pages]``, chosen first, in logical order)."""
        rows, per_row = chosen.shape
        logical = torch.arange(per_row, device=self.device)
        order = torch.argsort(torch.where(chosen, logical, logical + per_row), dim=-1)
        ids = torch.zeros(
            self.batch, 1, rows, self.table.n_pages, dtype=torch.int32, device=self.device
        )
        ids[:, 0, :, :per_row] = self.table.table[:, order].clamp_min(0)
        counts = chosen.sum(-1, dtype=torch.int32).expand(self.batch, rows).unsqueeze(1)
        return counts.contiguous(), ids

    def block_mask(self, start: int, n: int) -> BlockMask:
        """BlockMask over the pool for queries at positions ``[start, start + n)``."""
        page_size = self.table.page_size
        q_first = start + torch.arange(-(-n // Q_BLOCK), device=self.device)[:, None] * Q_BLOCK
        q_last = torch.clamp(q_first + Q_BLOCK - 1, max=start + n - 1)
        first = torch.arange(self.table.pages_per_row, device=self.device)[None] * page_size
        last = first + page_size - 1
        sees_any, sees_all = first <= q_last, last <= q_first
        if self.window is not None:
            sees_any &= last > q_first - self.window
            sees_all &= first > q_last - self.window
        partial = self._pages(sees_any & ~sees_all)
        full = self._pages(sees_all)
        return BlockMask.from_kv_blocks(
            *partial,
            *full,
            BLOCK_SIZE=(Q_BLOCK, page_size),
            mask_mod=self._mask_mod,
            seq_lengths=(n, self.table.n_pages * page_size),
            compute_q_blocks=False,
        )

    def _attend_stored(self, q, start: int, n: int) -> torch.Tensor:
        k_pool = self.k_codec.decode(self.k_store.planes)
        v_pool = self.v_codec.decode(self.v_store.planes)
        self._q_start.fill_(start)
        return compiled_flex()(
            q,
            k_pool,
            v_pool,
            block_mask=self.block_mask(start, n),
            enable_gqa=self.heads_q != self.heads_kv,
        )
