"""Training attention on a GPU: forward and backward of cuDNN, flash, efficient and flex
(compiled FlexAttention), causal and not, head_dim 64 and 128, 1k to 16k tokens, batch x heads
16 x 16 in bfloat16, each measured by ``sl.measure`` on a ``phase: train`` workload: forward,
backward and total latency, TFLOP/s (the backward's FLOPs 2.5x the forward's, masked pairs
left out), peak memory, and the gradients' error against the float64 oracle's autograd.
The head_dim 128, 16k rows are printed beside published H100 figures, and the configuration a
recommendation picks there (causal) closes the report.

    python3 benchmarks/train_bench.py --out benchmarks/results/train-h100.md

The markdown file is rewritten after every trial, so a run cut short keeps what it measured;
the last stdout line is one JSON document with every row. ``--seqs``, ``--head-dims`` and
``--backends`` take a subset and ``--masks`` an order (``--seqs 1024 2048`` for a first look).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import sdpalab as sl
from sdpalab.explore.recommend import recommend
from sdpalab.units import format_bytes

BACKENDS = ("cudnn", "flash", "efficient", "flex")
SEQS = (1024, 2048, 4096, 8192, 16384)
HEAD_DIMS = (64, 128)
BATCH, HEADS = 16, 16
PUBLISHED = {
    # H100 SXM, head_dim 128, 16k tokens, TFLOP/s (forward, backward), as issue 22 cites them
    "FlashAttention-3": (648, 561),
    "cuDNN": (595, 516),
    "FlashAttention-2": (370, 322),
}


def workload(seq: int, head_dim: int, causal: bool) -> sl.Workload:
    return sl.Workload(
        phase="train",
        mod="causal" if causal else None,
        batch=BATCH,
        heads_q=HEADS,
        seq_kv=seq,
        head_dim=head_dim,
        dtype="bfloat16",
        device="cuda",
    )


def cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def row_of(res: sl.Result, causal: bool) -> dict:
    wl = res.workload
    return {
        "backend": res.variant["backend"],
        "causal": causal,
        "head_dim": wl["head_dim"],
        "seq": wl["seq_kv"],
        "status": res.status,
        "reason": res.reason,
        "kernel": res.kernel,
        "fwd_ms": res.latency_fwd_ms,
        "bwd_ms": res.latency_bwd_ms,
        "total_ms": res.latency_ms,
        "noisy": res.noisy,
        "tflops_fwd": res.tflops_fwd,
        "tflops_bwd": res.tflops_bwd,
        "tflops": res.tflops,
        "frac_peak_flops": res.frac_peak_flops,
        "peak_mem_bytes": res.peak_mem_bytes,
        "saved_mem_bytes": res.saved_mem_bytes,
        "rel_fro_err": res.rel_fro_err,
        "grad_rel_err": res.grad_rel_err,
        "grad_tolerance": res.grad_tolerance,
        "compile_s": res.compile_s,
    }


HEADER = (
    "| backend | causal | D | S | fwd ms | bwd ms | total ms | fwd TFLOP/s | bwd TFLOP/s "
    "| total TFLOP/s | peak mem | saved for bwd | out err | grad err (tol) | kernel |"
)


def line(row: dict) -> str:
    if row["status"] != "ok":
        why = row["reason"].replace("|", "/")[:120]
        return (
            f"| {row['backend']} | {row['causal']} | {row['head_dim']} | {row['seq']} | "
            f"{row['status']}: {why} |" + " |" * 10
        )
    mem = format_bytes(row["peak_mem_bytes"]) if row["peak_mem_bytes"] is not None else "-"
    saved = format_bytes(row["saved_mem_bytes"]) if row["saved_mem_bytes"] is not None else "-"
    grad = f"{cell(row['grad_rel_err'], '.1e')} ({cell(row['grad_tolerance'], '.0e')})"
    noisy = " (noisy)" if row["noisy"] else ""
    return (
        f"| {row['backend']} | {row['causal']} | {row['head_dim']} | {row['seq']} | "
        f"{cell(row['fwd_ms'], '.3f')} | {cell(row['bwd_ms'], '.3f')} | "
        f"{cell(row['total_ms'], '.3f')}{noisy} | {cell(row['tflops_fwd'], '.0f')} | "
        f"{cell(row['tflops_bwd'], '.0f')} | {cell(row['tflops'], '.0f')} | {mem} | {saved} | "
        f"{cell(row['rel_fro_err'], '.1e')} | {grad} | {row['kernel'] or '-'} |"
    )


def published_table(rows: list[dict]) -> list[str]:
    """Our head_dim 128, 16k rows beside the published figures."""
    ours = [r for r in rows if r["head_dim"] == 128 and r["seq"] == 16384 and r["status"] == "ok"]
    lines = [
        "### head_dim 128, 16k tokens, beside published H100 figures",
        "",
        "| | fwd TFLOP/s | bwd TFLOP/s | fwd+bwd TFLOP/s |",
        "|---|---|---|---|",
    ]
    for name, (fwd, bwd) in PUBLISHED.items():
        both = 3.5 / (1 / fwd + 2.5 / bwd)  # the same FLOPs over the summed times
        lines.append(f"| {name} (published) | {fwd} | {bwd} | {both:.0f} |")
    for r in sorted(ours, key=lambda r: (r["causal"], -(r["tflops"] or 0))):
        lines.append(
            f"| sdpalab {r['backend']}{', causal' if r['causal'] else ''} (measured) | "
            f"{cell(r['tflops_fwd'], '.0f')} | {cell(r['tflops_bwd'], '.0f')} | "
            f"{cell(r['tflops'], '.0f')} |"
        )
    lines += [
        "",
        "Published figures as issue 22 cites them (FlashAttention-3 paper and NVIDIA's cuDNN "
        "figures); they count a causal call's FLOPs at half, as sdpalab does.",
    ]
    return lines


def recommendation(results: list[sl.Result]) -> list[str]:
    """What a recommendation picks among the causal head_dim 128, 16k results."""
    pool = [
        r
        for r in results
        if r.workload["head_dim"] == 128 and r.workload["seq_kv"] == 16384
        and r.workload.get("mod") == "causal"
    ]  # fmt: skip
    if not pool:
        return []
    try:
        rec = recommend(pool, priority="latency")
    except ValueError as err:
        return ["### recommendation (causal, head_dim 128, 16k)", "", f"none: {err}"]
    return ["### recommendation (causal, head_dim 128, 16k)", "", "```", rec.summary(), "```"]


def write(path: Path | None, head: list[str], rows: list[dict], results) -> str:
    text = "\n".join(
        [
            *head,
            HEADER,
            "|" + "---|" * 15,
            *map(line, rows),
            "",
            *published_table(rows),
            "",
            *recommendation(results),
            "",
        ]
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="markdown file to (re)write")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--seqs", nargs="+", type=int, default=list(SEQS))
    parser.add_argument("--head-dims", nargs="+", type=int, default=list(HEAD_DIMS))
    parser.add_argument(
        "--masks",
        nargs="+",
        choices=("none", "causal"),
        default=["none", "causal"],
        help="in this order (causal first: the 16k recommendation's rows early)",
    )
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("train_bench.py measures GPU kernels; no CUDA device is visible", file=sys.stderr)
        return 2
    settings = sl.MeasureSettings(warmup=3, repeats=args.repeats, timeout_s=600)
    started = datetime.now(timezone.utc)
    head = [
        "## Training attention: forward and backward",
        "",
        f"- command: `{shlex.join(['python3', *sys.argv])}`",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
        f"- batch x heads {BATCH} x {HEADS}, bfloat16; warmup {settings.warmup}, "
        f"{settings.repeats} repeats (median); gradients against float64 autograd on the first "
        "batch entry (entries are independent)",
        "",
    ]
    rows, results = [], []
    t0 = time.perf_counter()
    for head_dim in args.head_dims:
        for seq in args.seqs:
            for causal in (mask == "causal" for mask in args.masks):
                for backend in args.backends:
                    res = sl.measure(
                        sl.Variant(backend=backend, mod="causal" if causal else "none"),
                        workload(seq, head_dim, causal),
                        settings,
                    )
                    results.append(res)
                    rows.append(row_of(res, causal))
                    print(res.summary(), file=sys.stderr, flush=True)
                    write(args.out, head, rows, results)
                    torch.cuda.empty_cache()
    text = write(args.out, head, rows, results)
    print(text)
    print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
