"""Launch fused decode over one format's cache a few times, for Nsight Compute to profile.

    PYTHONPATH=src:benchmarks ncu --clock-control none -k regex:fast_kernel -s 3 -c 1 --set full \
        python3 benchmarks/notes/qdecode_ncu.py --format kivi4 --shape 8,32768

Inputs as ``qdecode_bench.py`` makes them (H_q=32, H_kv=8, D=128, bf16, seeded). ``--cfg``
passes launch overrides to ``qdecode_attention`` (``block_n=64,num_warps=1``).
"""

from __future__ import annotations

import argparse

import qdecode_bench as qb
import torch

from sdpalab.attention.kernels.qdecode import qdecode_attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", default="kivi4")
    parser.add_argument("--shape", default="8,32768")
    parser.add_argument("--cfg", default="", help="key=value,... launch overrides")
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    batch, seq = (int(x) for x in args.shape.split(","))
    cfg = {}
    for item in filter(None, args.cfg.split(",")):
        key, value = item.split("=")
        cfg[key] = int(value) if value.lstrip("-").isdigit() else value
    q, k, v = qb.inputs(batch, seq, seed=0)
    kq, vq, kr, vr = qb.cache_for(args.format, k, v)
    del k, v
    for _ in range(args.calls):
        qdecode_attention(q, kq, vq, kr, vr, causal=False, **cfg)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
