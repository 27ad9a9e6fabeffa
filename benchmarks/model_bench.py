"""A Llama-architecture model at a long context: KV cache bytes and decode speed of sdpalab's
caches (bf16, int8, int4, KIVI-4) against transformers' own DynamicCache and QuantizedCache.

    PYTHONPATH=src python benchmarks/model_bench.py --out $OUT/model.md

Runs on a bare GPU image (torch + transformers; no pydantic, optuna or torchao). The model has
Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 query heads over 8 KV heads of 64) with seeded
random weights, in bfloat16. Every configuration prefills the same random prompt of
``--context`` tokens and greedily generates ``--new-tokens``; the stock run (sdpa attention,
DynamicCache) is the reference for agreement. transformers' QuantizedCache backends that are not
installed are reported ``unsupported`` with the reason. The last stdout line is one JSON document.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

import sdpalab as sl
from sdpalab.measure.provenance import provenance
from sdpalab.models.attention import apply_variant
from sdpalab.models.cache import SdpalabCache
from sdpalab.models.generation import ModelRun, generation_run
from sdpalab.models.loading import load_model

LLAMA_1B = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=32000,
)
GiB = 2**30


def transformers_quantized(config, backend: str, nbits: int | None):
    """transformers' QuantizedCache of one backend, or the reason it cannot be built here."""
    from transformers import QuantizedCache

    kwargs = {} if nbits is None else {"nbits": nbits}
    try:
        QuantizedCache(backend=backend, config=config, **kwargs)
    except ImportError:
        package = {"quanto": "optimum-quanto", "hqq": "hqq"}.get(backend, backend)
        return None, f"not installed ({package})"
    except ValueError as err:  # e.g. a transformers without this backend
        return None, str(err).splitlines()[0]
    return (lambda: QuantizedCache(backend=backend, config=config, **kwargs)), None


def guarded(label: str, attn: str, cache: str, run) -> ModelRun:
    """One configuration; a crash is a data point, never the end of the benchmark."""
    try:
        return run()[0]
    except Exception as err:
        return ModelRun(label, attn, cache, "crash", f"{type(err).__name__}: {err}"[:300])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    parser.add_argument("--context", type=int, default=32768, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--backend", default="auto", help="sdpalab kernel for the variants")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--layers", type=int, default=LLAMA_1B["num_hidden_layers"])
    args = parser.parse_args()

    started = time.perf_counter()
    loaded = load_model(
        "tiny-llama",
        device=args.device,
        dtype=args.dtype,
        overrides={**LLAMA_1B, "num_hidden_layers": args.layers},
    )
    config = loaded.model.config
    ids = torch.randint(
        0, config.vocab_size, (1, args.context), generator=torch.Generator().manual_seed(0)
    ).to(args.device)
    common = dict(new_tokens=args.new_tokens, warmup=1)

    from transformers import DynamicCache

    stock, reference = generation_run(
        loaded,
        ids,
        label="stock",
        attn_implementation="sdpa",
        cache_name="DynamicCache",
        make_cache=lambda: DynamicCache(config=config),
        **common,
    )
    runs: list[ModelRun] = [stock]
    for backend, nbits in (("quanto", 4), ("quanto", 2), ("hqq", 8), ("hqq", 4), ("fp8", None)):
        name = f"QuantizedCache({backend}" + ("" if nbits is None else f", {nbits} bit") + ")"
        make_cache, reason = transformers_quantized(config, backend, nbits)
        if make_cache is None:
            runs.append(ModelRun("stock", "sdpa", name, "unsupported", reason))
            continue
        runs.append(
            guarded(
                "stock",
                "sdpa",
                name,
                lambda name=name, make_cache=make_cache: generation_run(
                    loaded,
                    ids,
                    label="stock",
                    attn_implementation="sdpa",
                    cache_name=name,
                    make_cache=make_cache,
                    reference=reference,
                    **common,
                ),
            )
        )
    max_len = args.context + args.new_tokens
    for kv_cache, kv_quant in (
        ("dynamic", "none"),
        ("static", "none"),
        ("static", "int8"),
        ("static", "int4"),
        ("dynamic", "kivi4"),
    ):
        variant = sl.Variant(backend=args.backend, kv_cache=kv_cache, kv_quant=kv_quant)
        attn = apply_variant(loaded.model, variant)
        cache = f"SdpalabCache({kv_cache}" + ("" if kv_quant == "none" else f"+{kv_quant}") + ")"
        runs.append(
            guarded(
                variant.label(),
                attn,
                cache,
                lambda v=variant, attn=attn, cache=cache: generation_run(
                    loaded,
                    ids,
                    label=v.label(),
                    attn_implementation=attn,
                    cache_name=cache,
                    make_cache=lambda: SdpalabCache(v, max_cache_len=max_len),
                    reference=reference,
                    **common,
                ),
            )
        )

    prov = provenance(args.device)
    import transformers

    lines = [
        "# A Llama-architecture model at a long context: KV caches in transformers\n",
        f"Command: `PYTHONPATH=src python {' '.join(sys.argv)}`, {prov['time_utc']}, "
        f"{prov.get('device_name', args.device)}, torch {prov['torch']}, "
        f"transformers {transformers.__version__}, {time.perf_counter() - started:.0f} s.\n",
        f"Model: Llama architecture, seeded random weights, {args.dtype}: "
        + ", ".join(f"{k}={getattr(config, k)}" for k in LLAMA_1B)
        + f". Prompt {args.context} random tokens, batch 1, greedy decoding of "
        f"{args.new_tokens} tokens after one warm-up generation. sdpalab variants run backend "
        f"`{args.backend}`.\n",
        "prefill: time to the first token. decode: median (IQR) of the per-token steps of "
        "`generate`, the step's Python included. KV: bytes the cache holds after generation "
        "(values, scales, zeros, residual windows). peak: most bytes allocated above the weights "
        "and the prompt during generation. step match / logits err: teacher-forced against the "
        "stock run (argmax agreement, worst relative error of a step's logits); token match: "
        "free-running.\n",
        "| attention | cache | status | prefill ms | decode ms/token | tok/s | KV GiB | peak GiB "
        "| step match | logits err | token match |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    for r in runs:
        status = r.status if r.status == "ok" else f"{r.status}: {r.reason}"
        decode = (
            "-"
            if r.decode_ms_per_token is None
            else (f"{r.decode_ms_per_token:.2f} ({r.decode_iqr_ms:.2f})")
        )
        kv = None if r.kv_cache_bytes is None else r.kv_cache_bytes / GiB
        peak = None if r.peak_mem_bytes is None else r.peak_mem_bytes / GiB
        lines.append(
            f"| {r.attn_implementation} | {r.cache} | {status} | {num(r.prefill_ms, '.0f')} | {decode} "
            f"| {num(r.tokens_per_s, '.1f')} | {num(kv, '.3f')} | {num(peak, '.2f')} "
            f"| {num(r.step_match, '.3f')} | {num(r.logits_rel_err, '.2e')} "
            f"| {num(r.token_match, '.3f')} |"
        )
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(json.dumps({"provenance": prov, "runs": [dataclasses.asdict(r) for r in runs]}))


if __name__ == "__main__":
    main()
