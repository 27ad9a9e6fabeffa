"""Time a grid of launch configurations of ``triton_qdecode`` on one GPU and print the fastest.

    PYTHONPATH=src:benchmarks python benchmarks/notes/qdecode_explore.py --shapes 8,32768 1,131072 \
        --block-n 64,128 --warps 2,4 --stages 2,3 --splits 0,66 --tile-rows 0,4

Issue 21's fixed cost at B=1, 128k keys (``qdecode-kernel.md``, "to be measured"): fewer,
longer splits (``--splits 0,32,64``) and the split merge fused into the last program of each
query tile (``--merge kernel,fused``):

    PYTHONPATH=src:benchmarks python benchmarks/notes/qdecode_explore.py --shapes 1,131072 \
        --formats int8,int4,fp8,kivi4,kivi2 --block-n 32,64,128 --warps 1,2 --stages 3 \
        --splits 0,32,64 --merge kernel,fused

How ``default_config`` and the split rule of the fast kernel were chosen. For each shape (B,S
with H_q=32, H_kv=8, D=128, bf16, as ``qdecode_bench.py``) and format, every configuration is
checked against dequantize-then-flash and timed as a CUDA-graph replay with the L2 flushed
(the device's time), after at least 50 ms of replays of the same call (``time_fn``'s warm-up);
splits 0 means the default rule; ``--merge``: how the splits are merged (``host.MERGES``). For the fastest, the eager call (host launch included) and the
host's time per call are printed too. Output is plain text on stdout.
"""

from __future__ import annotations

import argparse
import itertools
import time

import qdecode_bench as qb
import torch

from sdpalab.attention.kernels.qdecode import bytes_read, qdecode_attention
from sdpalab.measure.timing import time_fn


def host_us(fn, calls: int = 50) -> float:
    """Host microseconds per call, launches only (the GPU may still be running)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    return host


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def explore(batch: int, seq: int, fmt: str, q, k, v, args) -> None:
    kq, vq, kr, vr = qb.cache_for(fmt, k, v)
    kd, vd = qb.dequantized(kq, vq, kr, vr, torch.bfloat16)
    ref = qb.make_attend("flash", "none", {})(q, kd, vd)
    del kd, vd
    nbytes = bytes_read(q, kq, vq, kr, vr)
    grid = itertools.product(
        args.kernels.split(","), ints(args.block_n), ints(args.warps), ints(args.stages),
        ints(args.splits), ints(args.tile_rows), args.merge.split(","),
    )  # fmt: skip
    rows = []
    for kernel, block_n, warps, stages, splits, tile_rows, merge in grid:
        cfg = {"kernel": kernel, "block_n": block_n, "num_warps": warps, "num_stages": stages}
        if merge != "kernel":
            cfg["merge"] = merge
        if splits:
            cfg["splits"] = splits
        if tile_rows:
            cfg["tile_rows"] = tile_rows

        def fused(cfg=cfg):
            return qdecode_attention(q, kq, vq, kr, vr, causal=False, **cfg)

        try:
            err = qb.rel_err(fused(), ref)  # compiles (graph_ms warms up on the call itself)
            rows.append((qb.graph_ms(fused, 20), cfg, err))
        except Exception as exc:  # a configuration that fails is reported, not fatal
            print(f"  {fmt} {cfg}: {type(exc).__name__}: {str(exc)[:150]}", flush=True)
    rows.sort(key=lambda row: row[0])
    for ms, cfg, err in rows[: args.top]:
        print(f"B={batch} S={seq} {fmt} {cfg}: {ms:.4f} ms {nbytes / ms / 1e6:.0f} GB/s "
              f"err {err:.1e}", flush=True)  # fmt: skip
    if rows:
        best = rows[0][1]

        def fused_best():
            return qdecode_attention(q, kq, vq, kr, vr, causal=False, **best)

        eager = time_fn(fused_best, device="cuda", warmup=3, repeats=30, flush_l2=True)
        print(f"B={batch} S={seq} {fmt} fastest as an eager call: {eager.latency_ms:.4f} ms; "
              f"host {host_us(fused_best):.1f} us per call", flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["8,32768", "1,131072"], help="B,S pairs")
    p.add_argument("--formats", default="int8,int4,fp8")
    p.add_argument("--kernels", default="fast", help="fast and/or general")
    p.add_argument("--block-n", default="64,128")
    p.add_argument("--warps", default="2,4")
    p.add_argument("--stages", default="2,3")
    p.add_argument("--splits", default="0", help="0: the default rule")
    p.add_argument("--tile-rows", default="0", help="query rows per program; 0: the default")
    p.add_argument("--merge", default="kernel", help="kernel and/or fused (the split merge)")
    p.add_argument("--top", type=int, default=6, help="configurations printed per format")
    args = p.parse_args()
    for shape in args.shapes:
        batch, seq = ints(shape)
        q, k, v = qb.inputs(batch, seq, 0)
        nbytes = (2 * q.numel() + k.numel() + v.numel()) * 2
        for name in ("cudnn", "flash"):
            attend = qb.make_attend(name, "none", {})
            ms = qb.graph_ms(lambda attend=attend, q=q, k=k, v=v: attend(q, k, v), 20)
            print(f"B={batch} S={seq} {name}: {ms:.4f} ms {nbytes / ms / 1e6:.0f} GB/s", flush=True)
        for fmt in args.formats.split(","):
            explore(batch, seq, fmt, q, k, v, args)
        q = k = v = None
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
