"""A/B of the fused decode kernel before and after a refactor, in one process on one card.

The old tree is a copy of ``src/sdpalab`` at the old commit, renamed to ``sdpalab_old``::

    git archive OLD src/sdpalab | tar -x -C /tmp && cp -r /tmp/src/sdpalab .ab/sdpalab_old
    sed -i 's/\\bsdpalab\\./sdpalab_old./g' $(grep -rl sdpalab .ab/sdpalab_old --include=*.py)
    PYTHONPATH=src:benchmarks:.ab python benchmarks/notes/qdecode_ab_refactor.py

Each format and shape runs the default launch of both kernels on the same cache (each quantized
by its own tree), checks the outputs are bit-identical, then times CUDA-graph replays with the L2
flushed, alternating old and new ``--rounds`` times; the table gives the median of each.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics

import torch
from qdecode_bench import HEAD_DIM, HEADS_KV, HEADS_Q, graph_ms

from sdpalab.attention.kivi import KIVI_RESIDUAL


def trees() -> dict:
    out = {}
    for name in ("sdpalab_old", "sdpalab"):
        out[name] = (
            importlib.import_module(f"{name}.attention.kernels.qdecode").qdecode_attention,
            importlib.import_module(f"{name}.attention.kvquant").quantize,
        )
    return out


def cache(quantize, fmt: str, k: torch.Tensor, v: torch.Tensor):
    seq = k.shape[2]
    n = max(0, seq - KIVI_RESIDUAL) // 32 * 32 if fmt.startswith("kivi") else seq
    kq, vq = quantize(k[:, :, :n], fmt, role="key"), quantize(v[:, :, :n], fmt, role="value")
    if n == seq:
        return kq, vq, None, None
    return kq, vq, k[:, :, n:].contiguous(), v[:, :, n:].contiguous()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--formats", default="int8,int4,fp8,kivi4,kivi2")
    p.add_argument("--shapes", default="1x131072,8x32768,32x32768")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()
    kernels = trees()
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| format | B | S | old ms | new ms | new/old | identical |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        batch, seq = (int(x) for x in shape.split("x"))
        gen = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(batch, HEADS_Q, 1, HEAD_DIM, device="cuda", generator=gen).bfloat16()
        k, v = (
            torch.randn(batch, HEADS_KV, seq, HEAD_DIM, device="cuda", generator=gen).bfloat16()
            for _ in range(2)
        )
        for fmt in args.formats.split(","):
            calls, outs = {}, {}
            for name, (attend, quantize) in kernels.items():
                kq, vq, kr, vr = cache(quantize, fmt, k, v)
                calls[name] = lambda a=attend, c=(q, kq, vq, kr, vr): a(*c, causal=False)
                outs[name] = calls[name]()
            same = torch.equal(outs["sdpalab_old"], outs["sdpalab"])
            times = {name: [] for name in calls}
            for _ in range(args.rounds):
                for name, call in calls.items():
                    times[name].append(graph_ms(call, args.repeats))
            old, new = (statistics.median(times[n]) for n in ("sdpalab_old", "sdpalab"))
            rows.append(dict(fmt=fmt, batch=batch, seq=seq, old_ms=old, new_ms=new,
                             ratio=new / old, identical=same, runs=times))  # fmt: skip
            print(f"| {fmt} | {batch} | {seq} | {old:.4f} | {new:.4f} | {new / old:.3f} | "
                  f"{'yes' if same else '**no**'} |", flush=True)  # fmt: skip
            del calls, outs
            torch.cuda.empty_cache()
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
