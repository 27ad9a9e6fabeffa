"""One decode step through ``sl.measure`` (append the new token to the cache, then attend) for
a few kernels x caches: what a search sees.

    PYTHONPATH=src python benchmarks/notes/decode_step.py [--batch 8 --seq 32768]

Prints one line per variant: status, median latency and IQR (L2 flushed before each step, the
cache rolled back between steps; timed as ``sl.measure`` times it, by default as replays of the
step captured in a CUDA graph, and the line says how), and the host's microseconds per step
when the step is issued from Python (steps back to back; the GPU may lag).
"""

from __future__ import annotations

import argparse
import time

import torch

import sdpalab as sl
from sdpalab.run.trial import fill_cache, fill_chunk, make_inputs
from sdpalab.spec import MeasureSettings

VARIANTS = [("cudnn", "none"), ("flash", "int8"), ("triton_qdecode", "int8"),
            ("triton_qdecode", "fp8"), ("triton_qdecode", "int4")]  # fmt: skip


def host_us(variant: sl.Variant, workload: sl.Workload, steps: int = 50) -> float:
    attn = sl.build(variant, workload)
    q, k, v = make_inputs(workload, 0)
    prefix = workload.seq_kv - workload.seq_q
    with torch.inference_mode():
        fill_cache(attn, q, k, v, prefix, fill_chunk(variant, q, prefix))
        k_new, v_new = k[:, :, prefix:], v[:, :, prefix:]
        for _ in range(5):
            attn.rollback(prefix)
            attn(q, k_new, v_new)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            attn.rollback(prefix)
            attn(q, k_new, v_new)
        host = (time.perf_counter() - start) / steps * 1e6
        torch.cuda.synchronize()
    return host


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=32768)
    p.add_argument("--only", default="", help="backend/quant,... (default: all of VARIANTS)")
    args = p.parse_args()
    wl = sl.Workload(phase="decode", batch=args.batch, heads_q=32, heads_kv=8, seq_kv=args.seq,
                     head_dim=128, dtype="bfloat16", device="cuda")  # fmt: skip
    settings = MeasureSettings(warmup=10, repeats=50, flush_l2=True, memory=False,
                               check_accuracy=False)  # fmt: skip
    print(f"decode step B={args.batch} S={args.seq} H=32/8 D=128 bf16, static cache, "
          f"{torch.cuda.get_device_name()}")  # fmt: skip
    chosen = [tuple(x.split("/")) for x in args.only.split(",") if x] or VARIANTS
    for backend, quant in chosen:
        variant = sl.Variant(backend=backend, kv_cache="static", kv_quant=quant)
        r = sl.measure(variant, wl, settings)
        shown = f"{r.latency_ms:.3f} ms ± {r.latency_iqr_ms:.3f}" if r.latency_ms else r.reason
        print(f"{backend}/static+{quant}: {r.status} {shown} ({r.timing_method}); host "
              f"{host_us(variant, wl):.0f} us per step", flush=True)  # fmt: skip
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
