"""KV-cache quality on a real model and real text: every sdpalab format, with and without key
smoothing, beside transformers' own ``QuantizedCache`` (quanto and HQQ, 4 and 2 bits), each
scored the same way in the same run (``sdpalab.run.quality.measure_quality``: prefill
``context`` tokens into the cache, then score ``eval_tokens`` teacher-forced through it, on
several windows of ``pydoc_data.topics``, against the unquantized stock model).

    python benchmarks/quality_bench.py --out benchmarks/results/quality-cpu.md

The markdown file is rewritten after every context, so a run cut short keeps what it measured;
the last stdout line is one JSON document with every row.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import sdpalab as sl
from sdpalab.run.quality import measure_quality
from sdpalab.units import format_bytes

FORMATS = ("none", "int8", "fp8", "int4", "kivi4", "kivi2")


def peers(bits: tuple[int, ...]) -> list[tuple[str, object]]:
    """transformers' QuantizedCache with each backend and width, at its defaults otherwise."""
    from transformers import QuantizedCache

    return [
        (f"QuantizedCache({backend}, {n}-bit)", lambda cfg, b=backend, n=n: QuantizedCache(b, cfg, nbits=n))
        for backend in ("quanto", "hqq")
        for n in bits
    ]  # fmt: skip


def variants(formats: list[str], cache: str) -> list[sl.Variant]:
    out = []
    for fmt in formats:
        out.append(sl.Variant(kv_cache=cache, kv_quant=fmt))
        if fmt != "none":
            out.append(sl.Variant(kv_cache=cache, kv_quant=fmt, kv_args={"smooth_keys": 1}))
    return out


def cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(report) -> list[str]:
    ref = report.reference
    lines = [
        f"### context {report.context}: {report.windows} windows x {report.eval_tokens} tokens "
        f"scored ({report.windows * report.eval_tokens} in all), reference perplexity "
        f"{ref.perplexity:.3f}",
        "",
        "| cache | status | ppl | Δppl % [95% CI] | KL mean | KL max | top-1 | KV bytes | vs ref |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report.runs:
        ci = (
            f"{run.ppl_delta_pct:+.2f} [{run.ppl_delta_pct_lo:+.2f}, {run.ppl_delta_pct_hi:+.2f}]"
            if run.ppl_delta_pct is not None
            else "-"
        )
        size = "-" if run.kv_cache_bytes is None else format_bytes(run.kv_cache_bytes)
        ratio = (
            f"{ref.kv_cache_bytes / run.kv_cache_bytes:.2f}x smaller"
            if run.kv_cache_bytes and ref.kv_cache_bytes
            else "-"
        )
        name = run.label if run.label == run.cache else f"{run.label} ({run.cache})"
        lines.append(
            f"| {name} | {run.status} | {cell(run.perplexity, '.3f')} | {ci} | "
            f"{cell(run.kl_mean_nats, '.5f')} | {cell(run.kl_max_nats, '.3f')} | "
            f"{cell(run.top1_agreement, '.4f')} | {size} | {ratio} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="markdown file to write")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--contexts", default="512,2048")
    p.add_argument("--eval-tokens", type=int, default=128)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--cache", default="static")
    p.add_argument("--peer-bits", default="4,2", help="QuantizedCache widths ('' for none)")
    args = p.parse_args(argv)
    command = " ".join(["python", *sys.argv])
    head = [
        "# KV-cache quality on a real model: perplexity, KL and agreement through the cache",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}  ",
        f"Machine: {platform.processor() or platform.machine()}, CPU, float32; sdpalab "
        f"{sl.__version__}",
        "",
        "Each cache is prefilled with `context` tokens of `pydoc_data.topics`, then the next "
        "tokens are scored teacher-forced through it, one decode step at a time, on windows "
        "spread over the text. Against the stock model (its `sdpa` attention, transformers' "
        "`DynamicCache`, unquantized): perplexity change with a 95 % interval paired over the "
        "same tokens, mean and max KL(reference || cache) of the next-token distributions, "
        "top-1 agreement. KV bytes: what the cache holds for one sequence (values, scales, "
        "zeros, KIVI's full-precision residual; sdpalab's static cache counts its capacity). "
        "`+smooth_keys`: each key channel's prefill mean subtracted before quantization. "
        "QuantizedCache rows: transformers' own quantized cache at its defaults (group 64, a "
        "full-precision residual of 128 tokens).",
        "",
    ]
    bits = tuple(int(b) for b in args.peer_bits.split(",") if b)
    rows, sections = [], []
    for context in (int(c) for c in args.contexts.split(",")):
        t0 = time.perf_counter()
        print(f"context {context} ...", file=sys.stderr, flush=True)
        report = measure_quality(
            args.model,
            variants(args.formats.split(","), args.cache),
            context=context,
            eval_tokens=args.eval_tokens,
            windows=args.windows,
            peers=peers(bits) if bits else (),
            on_progress=lambda d, t: (
                print(f"  {d}/{t}", file=sys.stderr, flush=True) if d % 50 == 0 else None
            ),
        )
        sections += [*table(report), "", f"({time.perf_counter() - t0:.0f} s)", ""]
        rows.append(report.to_dict())
        Path(args.out).write_text("\n".join(head + sections) + "\n")
    print(json.dumps(rows, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
