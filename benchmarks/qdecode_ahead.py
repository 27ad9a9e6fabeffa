"""Time the fast ``triton_qdecode`` kernel with each block's scores computed one block ahead of
its values (``SCORES_AHEAD`` 1, or 2 with the next block's value words asked into L2) against
whole blocks (0), in one process, on the same allocations.

    PYTHONPATH=src:benchmarks python benchmarks/qdecode_ahead.py --shapes 1,131072 8,32768

For each shape (B,S with H_q=32, H_kv=8, D=128, bf16, as ``qdecode_bench.py``) and format, every
variant is first checked to give exactly the output of whole blocks, then timed as
``qdecode_bench.graph_ms`` (CUDA-graph replays, the L2 flushed by a read before each, after
``time_fn``'s 50 ms warm-up), in alternating order for ``--rounds`` rounds; the table gives the
median of the rounds and each round's time, in ms, with the GB/s of the median against the copy
bandwidth measured at the start. Plain text on stdout.
"""

from __future__ import annotations

import argparse
import functools
import statistics

import qdecode_bench as qb
import torch

from sdpalab.attention.kernels import qdecode_launch
from sdpalab.attention.kernels.qdecode import bytes_read, qdecode_attention
from sdpalab.measure.roofline import measure_ceilings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["1,131072", "8,32768"], help="B,S pairs")
    p.add_argument("--formats", default="int4,int8,fp8")
    p.add_argument("--variants", default="0,1,2", help="SCORES_AHEAD values to time")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30, help="timed replays per measurement")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("qdecode_ahead needs a CUDA GPU")
        return 2
    copy_gbps = measure_ceilings("cuda").copy_gbps
    print(f"{torch.cuda.get_device_name()}: copy {copy_gbps:.0f} GB/s")
    variants = [int(x) for x in args.variants.split(",")]
    for shape in args.shapes:
        batch, seq = (int(x) for x in shape.split(","))
        q, k, v = qb.inputs(batch, seq, seed=0)
        for fmt in args.formats.split(","):
            kq, vq, kr, vr = qb.cache_for(fmt, k, v)
            nbytes = bytes_read(q, kq, vq, kr, vr)
            cfg = qdecode_launch.default_config(fmt, torch.bfloat16, fast=True)
            outs, times = {}, {a: [] for a in variants}
            for r in range(args.rounds):
                order = variants if r % 2 == 0 else variants[::-1]
                for ahead in order:
                    qdecode_launch.SCORES_AHEAD[fmt] = ahead
                    call = functools.partial(qdecode_attention, q, kq, vq, kr, vr, causal=False,
                                             **cfg)  # fmt: skip
                    if r == 0:
                        outs[ahead] = call()
                    times[ahead].append(qb.graph_ms(call, args.repeats))
            base = outs[variants[0]]
            for ahead in variants:
                same = torch.equal(outs[ahead], base)
                med = statistics.median(times[ahead])
                gbps = nbytes / (med * 1e6)
                rounds = " ".join(f"{t:.4f}" for t in times[ahead])
                print(f"B={batch} S={seq} {fmt} ahead={ahead}: {med:.4f} ms {gbps:.0f} GB/s "
                      f"({100 * gbps / copy_gbps:.1f}% of copy) same={same} [{rounds}]")  # fmt: skip
            qb.free()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
