"""What runs before a timing changes it: decode at B=1, 128k keys on one GPU, timed right after
different kinds of work.

    PYTHONPATH=src:benchmarks python benchmarks/notes/qdecode_warmup.py --out $OUT/qdecode-warmup.md

Two paths, the fused int4 kernel (``triton_qdecode``) and cuDNN bf16 SDPA (H_q=32, H_kv=8,
D=128, one query token), are each timed three times in a row as CUDA-graph replays with the L2
flushed (``qdecode_bench.graph_ms`` with two warm-up calls only) right after one of: ~0.2 s of
4096x4096 bf16 matmuls (the spin-up ``qdecode_bench.py`` used to run before each shape), the
eager timing loop of the same call, 30 ms or 200 ms of replays of the same call, or 0.5 s idle.
The SM clock and board power are read through NVML (``nvidia-ml-py``, where installed) before
and after the three timings. Every situation runs twice.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import qdecode_bench as qb
import torch

from sdpalab.attention.backends import make_attend
from sdpalab.attention.kernels.qdecode import bytes_read, qdecode_attention
from sdpalab.measure.provenance import provenance
from sdpalab.measure.roofline import measure_ceilings
from sdpalab.measure.timing import capture_graph, time_fn


def nvml_reader():
    """``() -> "1980 MHz 350 W"`` through NVML, or ``() -> "—"`` without nvidia-ml-py."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    except Exception:  # no NVML: the clocks stay unread, the timings still count
        return lambda: "—"

    def read() -> str:
        mhz = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)
        return f"{mhz} MHz {pynvml.nvmlDeviceGetPowerUsage(handle) / 1000:.0f} W"

    return read


def for_seconds(fn, seconds: float) -> None:
    """``fn`` back to back for ``seconds`` (``time_fn``'s time-based warm-up, one timed call)."""
    time_fn(fn, device="cuda", warmup=0, repeats=1, warmup_s=seconds)


def matmul_spin_up(seconds: float = 0.2) -> None:
    """~``seconds`` of 4096x4096 bf16 matmuls."""
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    for_seconds(lambda: a @ a, seconds)


BEFORE = {
    "0.2 s of matmuls": lambda fn: matmul_spin_up(0.2),
    "the eager timing loop": lambda fn: time_fn(
        fn, device="cuda", repeats=60, flush_l2=True, warmup_s=0
    ),
    "30 ms of the same call": lambda fn: for_seconds(capture_graph(fn, "cuda").replay, 0.03),
    "200 ms of the same call": lambda fn: for_seconds(capture_graph(fn, "cuda").replay, 0.2),
    "0.5 s idle": lambda fn: time.sleep(0.5),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="markdown file to write")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("qdecode_warmup.py needs a CUDA GPU", file=sys.stderr)
        return 2
    prov = provenance("cuda")
    copy_gbps = measure_ceilings("cuda").copy_gbps
    clock = nvml_reader()
    q, k, v = qb.inputs(1, 131072, 0)
    kq, vq, _, _ = qb.cache_for("int4", k, v)
    cudnn = make_attend("cudnn", "none", {})
    paths = {
        "fused int4": (lambda: qdecode_attention(q, kq, vq, causal=False), bytes_read(q, kq, vq)),
        "cudnn bf16": (lambda: cudnn(q, k, v), (2 * q.numel() + k.numel() + v.numel()) * 2),
    }
    for fn, _ in paths.values():
        fn()
    lines = [
        "# What runs before a timing changes it (decode, B=1, 128k keys)",
        "",
        "Command: `PYTHONPATH=src:benchmarks python benchmarks/notes/qdecode_warmup.py --out ...`  ",
        f"Date: {prov['time_utc']}  ",
        f"Device: {prov['device_name']}, copy bandwidth {copy_gbps:.0f} GB/s; torch "
        f"{prov['torch']}, triton {prov['triton']}, commit {prov['git_sha']}",
        "",
        __doc__.split("\n\n", 2)[2].strip(),
        "",
        "| round | path | timed right after | SM clock, power before | ms (three timings) "
        "| of copy | SM clock, power after |",
        "|---|---|---|---|---|---|---|",
    ]
    for round_ in (1, 2):
        for name, (fn, nbytes) in paths.items():
            for before, run in BEFORE.items():
                run(fn)
                c0 = clock()
                ms = [qb.graph_ms(fn, 40, warmup_s=0) for _ in range(3)]
                share = " ".join(f"{nbytes / m / 1e6 / copy_gbps:.1%}" for m in ms)
                row = (f"| {round_} | {name} | {before} | {c0} | {' '.join(f'{m:.4f}' for m in ms)} "
                       f"| {share} | {clock()} |")  # fmt: skip
                print(row, flush=True)
                lines.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
