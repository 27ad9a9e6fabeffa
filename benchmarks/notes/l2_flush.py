"""How the L2 flush before each timed call changes what is measured (CUDA only).

    PYTHONPATH=src python benchmarks/notes/l2_flush.py --out $OUT/l2-flush.md

A flush is work queued before the start event, so the span is the device's time for the call
alone, with none of its data in the L2. It can be done two ways: overwrite a buffer twice the
L2's size (``memset``, as ``triton.testing.do_bench`` does) or read one (``read``, what
``sdpalab.measure.timing.time_fn`` does). After a memset the L2 is full of dirty lines, and the
timed call's own reads evict them: their write-back to memory falls inside the timed span.
``none`` times back-to-back replays: for a working set well over the L2's size no line survives
from one call to the next, so ``none`` is the call's own time, and a flush that adds nothing to
it is the right one; for a working set that fits, ``none`` is the warm-cache time a flush must
undo.

Per row: bf16 decode attention (cuDNN) and the fused int8 kernel, one query token, H_q=32,
H_kv=8, D=128, each call replayed from a CUDA graph; median of 50 calls per flush.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

# qdecode_warmup.py sits beside this file, qdecode_bench.py one folder up (benchmarks/)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import qdecode_bench as qb
from qdecode_warmup import matmul_spin_up

from sdpalab.attention.backends import make_attend
from sdpalab.attention.kernels.qdecode import bytes_read, qdecode_attention
from sdpalab.measure.provenance import provenance
from sdpalab.measure.timing import capture_graph

FLUSHES = ("memset", "read", "none")
SHAPES = ((1, 4096), (8, 32768), (1, 131072))


def replay_ms(fn, flush: str, calls: int = 50) -> float:
    """Median ms of ``fn`` replayed from a CUDA graph, after ``flush`` before each replay."""
    graph = capture_graph(fn, "cuda")
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    scratch = torch.ones(2 * l2 // 8, dtype=torch.int64, device="cuda")
    sink = torch.empty((), dtype=torch.int64, device="cuda")
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(calls)]  # fmt: skip
    for start, end in events:
        if flush == "memset":
            scratch.zero_()
        elif flush == "read":
            torch.sum(scratch, dim=0, out=sink)
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return sorted(s.elapsed_time(e) for s, e in events)[calls // 2]


def shape_rows(batch: int, seq: int) -> list[str]:
    """One markdown row per path at one shape."""
    q, k, v = qb.inputs(batch, seq, 0)
    kq, vq, _, _ = qb.cache_for("int8", k, v)
    cudnn = make_attend("cudnn", "none", {})
    paths = [
        ("cudnn", lambda: cudnn(q, k, v), 2 * q.numel() * 2 + 2 * k.numel() * 2),
        ("fused int8", lambda: qdecode_attention(q, kq, vq, causal=False), bytes_read(q, kq, vq)),
    ]
    rows = []
    for name, fn, nbytes in paths:
        ms = {flush: replay_ms(fn, flush) for flush in FLUSHES}
        cells = " | ".join(f"{ms[f]:.4f}" for f in FLUSHES)
        extra = (ms["memset"] - ms["read"]) * 1e3
        rows.append(f"| {batch} | {seq} | {name} | {nbytes / 1e6:.1f} | {cells} | {extra:.1f} us |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="markdown file to write")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("l2_flush.py: needs a CUDA device (the L2 and CUDA graphs are what it measures)",
              file=sys.stderr)  # fmt: skip
        return 2
    prov = provenance("cuda")
    lines = [
        "# What the L2 flush adds to a timed decode call",
        "",
        "Command: `PYTHONPATH=src python benchmarks/notes/l2_flush.py --out ...`  ",
        f"Date: {prov['time_utc']}  ",
        f"Device: {prov['device_name']}, torch {prov['torch']}, triton {prov['triton']}",
        "",
        __doc__.split("\n\n", 2)[2].strip(),
        "",
        "| B | S | path | MB read | "
        + " | ".join(f"{f} ms" for f in FLUSHES)
        + " | memset - read |",
        "|---|---|---|---|" + "---|" * (len(FLUSHES) + 1),
    ]
    matmul_spin_up(1.0)  # the flushes are compared within each shape
    for batch, seq in SHAPES:
        for row in shape_rows(batch, seq):
            print(row, flush=True)
            lines.append(row)
        qb.free()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
