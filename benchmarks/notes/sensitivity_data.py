"""Measure the two CPU grids that tests/test_sensitivity.py analyses, and store them.

Real measurements through the engine (``sweep``), kept as ``tests/data/*.jsonl.gz`` (one Result
a line) so that the sensitivity test is fast and deterministic on any CI machine while its
numbers come from real kernels:

* ``sensitivity-decode-cpu``: a decode step against a static KV cache; backend {math, eager,
  flash} x kv_quant {none, int8, int4} x seq_kv {512, 2048, 8192} x batch {1, 4}.
* ``sensitivity-prefill-masks-cpu``: prefill; backend {flex, math} x mod {none, causal,
  sliding_window 256, sliding_window 64} x seq {1024, 2048} x batch {1, 2}. FlexAttention
  skips the blocks its BlockMask leaves out; the math kernel computes every score and masks.

    python benchmarks/notes/sensitivity_data.py --workers 8
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data"
CONFIGS = {
    "sensitivity-decode-cpu": {
        "name": "sensitivity-decode-cpu",
        "device": "cpu",
        "workload": {
            "phase": "decode",
            "batch": [1, 4],
            "heads_q": 8,
            "heads_kv": 2,
            "seq_kv": [512, 2048, 8192],
            "head_dim": 64,
            "dtype": "float32",
        },
        "variants": {
            "backend": ["math", "eager", "flash"],
            "kv_cache": "static",
            "kv_quant": ["none", "int8", "int4"],
        },
        "measure": {"warmup": 3, "repeats": 20, "timeout_s": 120},
    },
    "sensitivity-prefill-masks-cpu": {
        "name": "sensitivity-prefill-masks-cpu",
        "device": "cpu",
        "workload": {
            "phase": "prefill",
            "batch": [1, 2],
            "heads_q": 4,
            "heads_kv": 4,
            "seq_kv": [1024, 2048],
            "head_dim": 64,
            "dtype": "float32",
        },
        "variants": {
            "backend": ["flex", "math"],
            "mod": ["none", "causal", {"sliding_window": [{"window": 256}, {"window": 64}]}],
        },
        "measure": {"warmup": 3, "repeats": 15, "timeout_s": 300},
    },
}


def save(path: Path, results) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        for i, res in enumerate(results):
            data = res.to_dict()
            if i:  # the same for every trial of the run: kept once
                data["provenance"] = {}
            f.write(json.dumps(data, default=str) + "\n")


def main() -> None:
    from sdpalab.explore.grid import sweep
    from sdpalab.spec.config import spec_from_dict

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--only", choices=sorted(CONFIGS))
    args = parser.parse_args()
    for name, config in CONFIGS.items():
        if args.only and name != args.only:
            continue
        spec = spec_from_dict(config)
        with tempfile.TemporaryDirectory() as tmp:
            started = time.time()
            run = sweep(spec, Path(tmp) / name, workers=args.workers)
            print(
                f"{name}: {len(run)} trials in {time.time() - started:.0f} s: {run.counts()}",
                flush=True,
            )
            save(OUT / f"{name}.jsonl.gz", run.results)


if __name__ == "__main__":
    main()
