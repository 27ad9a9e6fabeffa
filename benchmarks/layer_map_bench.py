"""A per-layer KV format against the best uniform one at the same KL budget, on a real model.

``sdpalab.explore.layermap.search_layer_map``: every uniform format scored through the cache;
the smallest within ``--max-kl`` is the uniform answer; then each layer's cost of a cheaper
format is measured one layer at a time (a shorter probe), the cheapest layers are switched
while the summed costs fit the budget, and the count is then bisected on maps scored with the
full settings, in the same run as the uniform rows.

    python benchmarks/layer_map_bench.py --out benchmarks/results/layer-map-cpu.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import sdpalab as sl
from sdpalab.explore.layermap import Scoring, search_layer_map
from sdpalab.units import format_bytes


def row(run, best_uniform) -> str:
    ratio = best_uniform.kv_cache_bytes / run.kv_cache_bytes if run.kv_cache_bytes else None
    ci = f"{run.ppl_delta_pct:+.2f} [{run.ppl_delta_pct_lo:+.2f}, {run.ppl_delta_pct_hi:+.2f}]"
    return (
        f"| `{run.variant['kv_quant']}` | {run.kl_mean_nats:.5f} | {ci} | "
        f"{run.top1_agreement:.4f} | {format_bytes(run.kv_cache_bytes)} | "
        f"{'-' if ratio is None else f'{ratio:.3f}x'} |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="markdown file to write")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--max-kl", type=float, default=0.01)
    p.add_argument("--formats", default="int8,kivi4,int4,kivi2")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=128)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--probe-tokens", type=int, default=32, help="tokens a window, per-layer pass")
    p.add_argument("--probe-windows", type=int, default=2)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    result = search_layer_map(
        args.model,
        max_kl=args.max_kl,
        formats=tuple(args.formats.split(",")),
        scoring=Scoring(args.context, args.eval_tokens, args.windows),
        probe=Scoring(args.context, args.probe_tokens, args.probe_windows),
        on_stage=lambda msg: print(f"{time.perf_counter() - t0:6.0f} s  {msg}", file=sys.stderr),
    )
    elapsed = time.perf_counter() - t0
    best = result.best_uniform
    lines = [
        "# A per-layer KV format against the best uniform one, at one KL budget",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}  ",
        f"Machine: {platform.processor() or platform.machine()}, CPU, float32; sdpalab "
        f"{sl.__version__}; {elapsed:.0f} s in all (a shared 2-core machine: not a speed)",
        "",
        f"Model `{args.model}`, text `pydoc_data.topics`, context {args.context}, "
        f"{args.windows} windows x {args.eval_tokens} tokens scored teacher-forced through "
        f"sdpalab's static cache; KL(reference || cache) against the unquantized stock model, "
        f"as in `quality-cpu.md`. Budget: mean KL <= {args.max_kl}.",
        "",
        f"Best uniform format within the budget: `{result.safe}`. Each layer's cost of turning "
        f"`{result.cheap}` (others `{result.safe}`) was measured one layer at a time on "
        f"{args.probe_windows} windows x {args.probe_tokens} tokens; the cheapest layers turn "
        "first, as many as the summed costs allow, then the count is bisected on measured maps. "
        "Every row below was measured with the full settings in this run.",
        "",
        "| kv_quant | KL mean | Δppl % [95% CI] | top-1 | KV bytes | bytes vs best uniform |",
        "|---|---|---|---|---|---|",
        *(row(r, best) for r in result.uniform if r.status == "ok"),
        *(row(r, best) for r in result.maps if r.status == "ok"),
        "",
    ]
    if result.best_map is not None:
        lines.append(
            f"**Smallest map within KL {args.max_kl}:** `{result.best_map.variant['kv_quant']}`, "
            f"KL {result.best_map.kl_mean_nats:.5f}, {format_bytes(result.best_map.kv_cache_bytes)}: "
            f"{result.saving:.3f}x smaller than uniform `{result.safe}` "
            f"(KL {best.kl_mean_nats:.5f}, {format_bytes(best.kv_cache_bytes)})."
        )
    else:
        lines.append(f"No measured map stayed within KL {args.max_kl}.")
    lines += [
        "",
        f"Per-layer cost of `{result.cheap}` (probe KL above all-`{result.safe}`), cheapest first:",
        "",
        "| layer | KL | cost |",
        "|---|---|---|",
        *(
            f"| {c.layer} | {c.kl:.5f} | {c.cost:+.5f} |"
            for c in sorted(result.costs, key=lambda c: (c.cost, c.layer))
        ),
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
