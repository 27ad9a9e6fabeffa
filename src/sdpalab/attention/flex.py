"""Compiled FlexAttention with cached BlockMasks.

One compiled ``flex_attention`` serves the whole process, and one BlockMask per (mod, geometry,
device): a sparse mask is skipped work, and nothing is rebuilt or re-traced between calls.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from sdpalab.attention.mods import Mod, make_mod


@functools.cache
def compiled_flex() -> Callable:
    """The process-wide compiled ``flex_attention`` (compiled on first call, then reused).

    Each new geometry or mod is a recompile of this one function; past dynamo's default limit
    (8) it would silently fall back to uncompiled flex (dense, slow), so a sweep or a test run
    that visits many shapes gets a larger limit.
    """
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, 256)
    dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 4096)
    return torch.compile(flex_attention, dynamic=False)


def _full(b, h, q_idx, kv_idx):
    return q_idx >= 0


@functools.lru_cache(maxsize=64)
def block_mask_for(mod: Mod, q_len: int, kv_len: int, device: str):
    """The BlockMask of a mod at one geometry (shared by all batches and heads).

    Unmasked mods get an explicit full mask: with ``block_mask=None`` flex builds a default
    one on every call, which on the CPU was measured to cost ~6x more peak memory.
    """
    return create_block_mask(mod.mask_mod or _full, None, None, q_len, kv_len, device=device)


def clear_cache() -> None:
    """Drop the cached BlockMasks (they belong to one trial's geometry, on its device)."""
    block_mask_for.cache_clear()


def make_flex(mod_name: str, mod_args: dict) -> Callable:
    def attend(q_BHSD, k_BHSD, v_BHSD):
        q_len, kv_len, heads = q_BHSD.shape[2], k_BHSD.shape[2], q_BHSD.shape[1]
        device = str(q_BHSD.device)
        mod = make_mod(mod_name, mod_args, q_len=q_len, kv_len=kv_len, heads=heads, device=device)
        return compiled_flex()(
            q_BHSD,
            k_BHSD,
            v_BHSD,
            score_mod=mod.score_mod,
            block_mask=block_mask_for(mod, q_len, kv_len, device),
            enable_gqa=q_BHSD.shape[1] != k_BHSD.shape[1],
        )

    return attend
