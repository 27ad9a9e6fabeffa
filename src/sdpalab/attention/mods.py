"""The mod library: masks as ``mask_mod`` and biases as ``score_mod``, one factory each.

One definition serves every path: FlexAttention takes the closures directly (with a cached
BlockMask for masks), the SDPA backends take them materialized as a boolean mask or an additive
float bias, and the float64 oracle applies them densely.

Indices follow FlexAttention: ``q_idx`` in ``[0, q_len)``, ``kv_idx`` in ``[0, kv_len)``. When
``q_len < kv_len`` (decode, chunked prefill) queries sit at the end of the sequence: query ``i``
is at position ``i + offset`` with ``offset = kv_len - q_len`` (bottom-right alignment).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
ScoreMod = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
]
REQUIRED = object()


@dataclass(frozen=True, eq=False)
class Mod:
    """A built mod for one geometry. ``additive`` means ``score_mod(s) == s + bias``."""

    name: str
    mask_mod: MaskMod | None = None
    score_mod: ScoreMod | None = None
    additive: bool = True
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    """Tensors the score_mod reads that training learns (``relative_bias``'s table): a train
    trial makes them require grad and checks their gradients against the oracle's. They must
    not depend on the alignment offset (the oracle rebinds them into each block of rows)."""
    rebind: Callable[[dict[str, torch.Tensor]], Mod] | None = None
    """The same mod reading other tensors in place of ``params`` (the oracle's float64 ones)."""

    def with_params(self, params: dict[str, torch.Tensor]) -> Mod:
        """This mod with ``params`` in place of its own (same names and shapes)."""
        if self.rebind is None or set(params) != set(self.params):
            raise ValueError(f"mod {self.name!r} learns {sorted(self.params) or 'nothing'}")
        return self.rebind(params)

    def trainable(self) -> bool:
        """Whether a gradient is being taken for any of its params (grad mode on, one requires
        grad): then a bias made from them must be rebuilt each call, not cached."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.params.values())


@dataclass(frozen=True)
class Geometry:
    """What a factory may depend on: alignment offset, key length, heads, device."""

    offset: int
    kv_len: int
    heads: int
    device: str


@dataclass(frozen=True)
class ModSpec:
    factory: Callable[..., Mod]
    params: dict[str, tuple[type, Any, str]]
    """name -> (type, default or REQUIRED, description)."""
    doc: str


def _none(g: Geometry) -> Mod:
    return Mod("none")


def _causal(g: Geometry) -> Mod:
    offset = g.offset

    def causal(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    return Mod("causal", mask_mod=causal)


def _sliding_window(g: Geometry, window: int) -> Mod:
    offset = g.offset

    def sliding_window(b, h, q_idx, kv_idx):
        q_pos = q_idx + offset
        return (q_pos >= kv_idx) & (q_pos - kv_idx < window)

    return Mod("sliding_window", mask_mod=sliding_window)


def _prefix_lm(g: Geometry, prefix: int) -> Mod:
    offset = g.offset

    def prefix_lm(b, h, q_idx, kv_idx):
        return (kv_idx < prefix) | (q_idx + offset >= kv_idx)

    return Mod("prefix_lm", mask_mod=prefix_lm)


def document_ids(lengths: tuple[int, ...], kv_len: int, device: str) -> torch.Tensor:
    """Document id of each kv position; positions past ``sum(lengths)`` form one more document."""
    ids = torch.repeat_interleave(
        torch.arange(len(lengths)), torch.tensor(lengths, dtype=torch.long)
    )[:kv_len]
    tail = torch.full((kv_len - ids.numel(),), len(lengths), dtype=torch.long)
    return torch.cat([ids, tail]).to(device)


def _document(g: Geometry, lengths: tuple[int, ...], causal: bool) -> Mod:
    offset = g.offset
    doc = document_ids(lengths, g.kv_len, g.device)

    def document(b, h, q_idx, kv_idx):
        q_pos = q_idx + offset
        same = doc[q_pos] == doc[kv_idx]
        return same & (q_pos >= kv_idx) if causal else same

    return Mod("document", mask_mod=document)


def _alibi(g: Geometry) -> Mod:
    # Press et al.: geometric slopes 2^(-8 (h + 1) / H); bias grows with distance into the past.
    offset = g.offset
    slopes = torch.tensor(
        [2.0 ** (-8.0 * (i + 1) / g.heads) for i in range(g.heads)], device=g.device
    )

    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx - offset)

    return Mod("alibi", score_mod=alibi)


def _softcap(g: Geometry, cap: float) -> Mod:
    def softcap(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    return Mod("softcap", score_mod=softcap, additive=False)


def _relative_bias(g: Geometry, max_distance: int, seed: int) -> Mod:
    # A per-head table over clipped relative distance, as T5-style learned biases are; seeded
    # random values stand in for trained ones, and training learns the table.
    gen = torch.Generator().manual_seed(seed)
    table = (0.5 * torch.randn(g.heads, 2 * max_distance + 1, generator=gen)).to(g.device)
    return relative_bias_mod(g.offset, max_distance, table)


def relative_bias_mod(offset: int, max_distance: int, table_HR: torch.Tensor) -> Mod:
    """``relative_bias`` reading ``table_HR`` ``[heads, 2 * max_distance + 1]``."""

    def relative_bias(score, b, h, q_idx, kv_idx):
        rel = torch.clamp(kv_idx - q_idx - offset, -max_distance, max_distance) + max_distance
        return score + table_HR[h, rel]

    return Mod(
        "relative_bias",
        score_mod=relative_bias,
        params={"table": table_HR},
        rebind=lambda p: relative_bias_mod(offset, max_distance, p["table"]),
    )


MODS: dict[str, ModSpec] = {
    "none": ModSpec(_none, {}, "full attention, no mask"),
    "causal": ModSpec(_causal, {}, "each query sees keys at or before its position"),
    "sliding_window": ModSpec(
        _sliding_window,
        {"window": (int, REQUIRED, "keys within this many positions, the query's own included")},
        "causal, limited to the last `window` positions",
    ),
    "prefix_lm": ModSpec(
        _prefix_lm,
        {"prefix": (int, REQUIRED, "length of the bidirectional prefix")},
        "bidirectional over the first `prefix` keys, causal after",
    ),
    "document": ModSpec(
        _document,
        {
            "lengths": (list, REQUIRED, "document lengths packed along the sequence"),
            "causal": (bool, True, "also causal inside each document"),
        },
        "packed documents attend only within themselves",
    ),
    "alibi": ModSpec(_alibi, {}, "ALiBi linear distance bias, per-head slopes"),
    "softcap": ModSpec(
        _softcap,
        {"cap": (float, 30.0, "tanh soft cap on the scores")},
        "scores soft-capped by cap * tanh(score / cap) (not additive: flex and eager only)",
    ),
    "relative_bias": ModSpec(
        _relative_bias,
        {
            "max_distance": (int, 128, "relative distances are clipped to this"),
            "seed": (int, 0, "seed of the per-head bias table"),
        },
        "per-head bias table over clipped relative distance (learned: train checks its grad)",
    ),
}


def validate_mod(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Check a mod name and its arguments; return the arguments with defaults filled in."""
    if name not in MODS:
        raise ValueError(f"mod={name!r} is not valid; choose one of: {', '.join(MODS)}")
    spec = MODS[name]
    for key in args:
        if key not in spec.params:
            valid = ", ".join(spec.params) or "none"
            raise ValueError(f"mod_args.{key} is not a parameter of {name!r}; valid: {valid}")
    full = {}
    for key, (typ, default, _) in spec.params.items():
        value = args.get(key, default)
        if value is REQUIRED:
            raise ValueError(f"mod {name!r} needs mod_args.{key}")
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if typ is list:
            ok = (
                isinstance(value, list | tuple)
                and value
                and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value)
            )
            if not ok:
                raise ValueError(f"mod_args.{key}={value!r} must be a list of positive integers")
            value = tuple(value)
        elif not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ValueError(f"mod_args.{key}={value!r} must be {typ.__name__}")
        elif typ in (int, float) and key != "seed" and value <= 0:
            raise ValueError(f"mod_args.{key}={value!r} must be positive")
        full[key] = value
    return full


@functools.lru_cache(maxsize=256)
def _make_mod_cached(name, args_items, q_len, kv_len, heads, device) -> Mod:
    geometry = Geometry(offset=kv_len - q_len, kv_len=kv_len, heads=heads, device=device)
    return MODS[name].factory(geometry, **dict(args_items))


def clear_cache() -> None:
    """Drop the built mods (some hold tensors of one trial's geometry)."""
    _make_mod_cached.cache_clear()


def make_mod(
    name: str, args: dict[str, Any], *, q_len: int, kv_len: int, heads: int, device: str
) -> Mod:
    """Build (or fetch from cache) the mod for one geometry, bottom-right aligned.

    The same geometry returns the same closures, so compiled FlexAttention is not re-traced.
    """
    full = validate_mod(name, args)
    return _make_mod_cached(
        name, tuple(sorted(full.items())), q_len, kv_len, heads, str(torch.device(device))
    )


def _grid(batch: int, heads: int, q_len: int, kv_len: int, device, q_start: int = 0):
    b = torch.arange(batch, device=device).view(-1, 1, 1, 1)
    h = torch.arange(heads, device=device).view(1, -1, 1, 1)
    q = torch.arange(q_start, q_start + q_len, device=device).view(1, 1, -1, 1)
    kv = torch.arange(kv_len, device=device).view(1, 1, 1, -1)
    return b, h, q, kv


def dense_mask(mod: Mod, heads: int, q_len: int, kv_len: int, device) -> torch.Tensor | None:
    """The mask as a boolean tensor ``[1, 1 or H, q_len, kv_len]`` (True = attend), or None."""
    if mod.mask_mod is None:
        return None
    b, h, q, kv = _grid(1, heads, q_len, kv_len, device)
    mask = mod.mask_mod(b, h, q, kv)
    return mask.expand(1, mask.shape[1], q_len, kv_len)


def dense_bias(mod: Mod, heads: int, q_len: int, kv_len: int, device, dtype) -> torch.Tensor | None:
    """An additive score_mod as a float bias ``[1, H, q_len, kv_len]``, or None."""
    if mod.score_mod is None:
        return None
    if not mod.additive:
        raise ValueError(f"mod {mod.name!r} is not additive and cannot be a bias tensor")
    b, h, q, kv = _grid(1, heads, q_len, kv_len, device)
    zero = torch.zeros((), dtype=torch.float64, device=device)
    bias = mod.score_mod(zero, b, h, q, kv)
    return bias.expand(1, heads, q_len, kv_len).to(dtype)


def apply_dense(mod: Mod, scores_BHQK: torch.Tensor) -> torch.Tensor:
    """Apply the score mod and the mask (as -inf) to full scores ``[B, H, q_len, kv_len]``."""
    batch, heads, q_len, kv_len = scores_BHQK.shape
    b, h, q, kv = _grid(batch, heads, q_len, kv_len, scores_BHQK.device)
    if mod.score_mod is not None:
        scores_BHQK = mod.score_mod(scores_BHQK, b, h, q, kv)
    if mod.mask_mod is not None:
        keep = mod.mask_mod(b, h, q, kv)
        scores_BHQK = scores_BHQK.masked_fill(~keep, float("-inf"))
    return scores_BHQK


def allowed_fraction(name: str, args: dict[str, Any], q_len: int, kv_len: int) -> float:
    """Fraction of (query, key) pairs the mod's mask lets through (1.0 without a mask).

    Counted exactly on the CPU, in row chunks so long sequences need no ``q_len x kv_len``
    tensor. Masks here do not depend on batch or head, so one (b, h) is counted.
    """
    mod = make_mod(name, args, q_len=q_len, kv_len=kv_len, heads=1, device="cpu")
    if mod.mask_mod is None:
        return 1.0
    total, chunk = 0, max(1, (1 << 24) // kv_len)
    for start in range(0, q_len, chunk):
        rows = min(chunk, q_len - start)
        b, h, q, kv = _grid(1, 1, rows, kv_len, "cpu", q_start=start)
        total += int(mod.mask_mod(b, h, q, kv).sum())
    return total / (q_len * kv_len)


def default_scale(head_dim: int) -> float:
    """The softmax scale 1/sqrt(D) (the case study's notebook forgot it)."""
    return 1.0 / math.sqrt(head_dim)
