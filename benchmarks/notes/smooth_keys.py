"""Key smoothing (``kv_args.smooth_keys``) on keys with a few large channels: the attention
error of each quantized cache with and without it, against the float64 oracle of the original
keys. CPU, float32, a few seconds.

    PYTHONPATH=src python benchmarks/notes/smooth_keys.py [--seeds 3]

The keys are Gaussian plus a few outlier channels with a large offset and a larger spread (as
real keys have, e.g. SmolLM2's); the cache prefills ``context`` tokens in one call (which sets
the means), then decodes ``steps`` tokens one at a time. The error is the relative Frobenius
error of the decode outputs; prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch

import sdpalab as sl
from sdpalab.attention.reference import attention_ref
from sdpalab.build import make_cached_attention

FORMATS = ("int8", "int4", "fp8", "kivi4", "kivi2")


def keys_with_outliers(gen, batch, heads, seq, dim, channels=4, offset=12.0, spread=3.0):
    """``[B, H, S, D]`` Gaussian keys whose first ``channels`` channels (per head, scattered)
    sit at ``+-offset`` with standard deviation ``spread``."""
    k = torch.randn(batch, heads, seq, dim, generator=gen)
    for h in range(heads):
        idx = torch.randperm(dim, generator=gen)[:channels]
        sign = torch.randint(0, 2, (channels,), generator=gen) * 2 - 1
        k[:, h, :, idx] = sign * offset + spread * k[:, h, :, idx]
    return k


def error(fmt: str, smooth: bool, q, k, v, context: int) -> float:
    batch, heads_q, seq, dim = q.shape
    heads_kv = k.shape[1]
    wl = sl.Workload(
        phase="decode", batch=batch, heads_q=heads_q, heads_kv=heads_kv, seq_kv=seq, head_dim=dim
    )
    variant = sl.Variant(
        backend="math",
        kv_cache="static",
        kv_quant=fmt,
        kv_args={"smooth_keys": 1} if smooth else {},
    )
    cache = make_cached_attention(variant, wl)
    cache(q[:, :, :context], k[:, :, :context], v[:, :, :context])
    outs = [cache(*(t[:, :, i : i + 1] for t in (q, k, v))) for i in range(context, seq)]
    got = torch.cat(outs, 2).double()
    want = attention_ref(q, k, v, "causal")[:, :, context:]
    return float((got - want).norm() / want.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--offset", type=float, default=12.0, help="outlier channels' offset")
    parser.add_argument("--spread", type=float, default=3.0, help="and standard deviation")
    args = parser.parse_args()
    rows = {}
    for seed in range(args.seeds):
        gen = torch.Generator().manual_seed(seed)
        seq, dim = args.context + args.steps, args.head_dim
        q = torch.randn(1, 9, seq, dim, generator=gen)
        k = keys_with_outliers(gen, 1, 3, seq, dim, offset=args.offset, spread=args.spread)
        v = torch.randn(1, 3, seq, dim, generator=gen)
        for fmt in FORMATS:
            for smooth in (False, True):
                rows.setdefault((fmt, smooth), []).append(error(fmt, smooth, q, k, v, args.context))
    print(f"{'kv_quant':8} {'plain':>8} {'smoothed':>9}   (rel. Frobenius error, mean of seeds)")
    table = {}
    for fmt in FORMATS:
        plain, smoothed = (sum(rows[fmt, s]) / len(rows[fmt, s]) for s in (False, True))
        table[fmt] = {"plain": plain, "smoothed": smoothed}
        print(f"{fmt:8} {plain:8.4f} {smoothed:9.4f}")
    setup = {k: getattr(args, k) for k in ("context", "steps", "head_dim", "offset", "spread")}
    print(json.dumps({**setup, "rel_fro_err": table}))


if __name__ == "__main__":
    main()
