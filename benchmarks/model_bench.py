"""A decode step of a Llama-3.1-8B-shaped model over a long KV cache: stock transformers caches
against sdpalab's, graph-captured where the cache allows, side by side in one run.

    PYTHONPATH=src python benchmarks/model_bench.py --out $OUT/model.md

The model has Llama-3.1-8B's shape (32 layers, hidden 4096, 32 query heads over 8 KV heads of
128, MLP 14336, vocabulary 128256) with seeded random weights in bfloat16 (16 GB). For each case
(``--cases``: batch x context) every cache is filled with the same seeded random keys and values
for ``context`` tokens through its own ``update`` (sdpalab's quantize them as a prefill would;
the quality of each format comes from the real model: ``quality-cpu.md``), then one decode step
at position ``context`` is timed:

- ``graph``: the whole step (embedding, 32 layers, logits) captured in a CUDA graph and replayed,
  the same way for stock ``StaticCache`` and for sdpalab's static caches (whose position is reset
  before each replay, so every replay is the same step);
- ``eager``: the step as ``generate`` runs it, Python and launches included.

Rows: stock sdpa over ``StaticCache`` and ``DynamicCache``; transformers' ``QuantizedCache``
(HQQ at 8 bits, quanto and HQQ at 4 and 2; eager only: it dequantizes in Python); sdpalab
caches with the fused decode kernel (``backend triton_qdecode``: decode steps read the stored
codes, appends are one launch a layer). ms per token: median and IQR of the steps; tok/s: batch over that. The split
of a step's device time (attention kernels, the cache append, everything else) comes from the
profiler on eager steps. Token agreement: 16 greedy steps from the filled cache against stock
``StaticCache``. The last stdout line is one JSON document.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import sdpalab as sl
from sdpalab.measure.provenance import provenance
from sdpalab.measure.timing import capture_graph, time_fn
from sdpalab.models.attention import apply_variant
from sdpalab.models.cache import SdpalabCache
from sdpalab.models.generation import cache_nbytes
from sdpalab.models.loading import load_model

SHAPES = {
    "llama-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=262144,
    ),
    "tiny": dict(  # the CPU smoke test's
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=500,
    ),
}
SDPALAB_FORMATS = ("none", "int8", "fp8", "int4", "kivi4")
PEERS = (("hqq", 8), ("quanto", 4), ("quanto", 2), ("hqq", 4), ("hqq", 2))
GREEDY = 16
GiB = 2**30


@dataclass
class Row:
    case: str
    cache: str
    attention: str
    status: str = "ok"
    reason: str = ""
    graph_ms: float | None = None
    graph_iqr_ms: float | None = None
    eager_ms: float | None = None
    eager_iqr_ms: float | None = None
    kv_bytes: int | None = None
    peak_bytes: int | None = None
    split_ms: dict = field(default_factory=dict)
    """Device time of one eager step: attention, append, other."""
    tokens: list | None = None
    agreement: float | None = None


# --------------------------------------------------------------------------- caches


def stock_static(model, batch, max_len):
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=max_len)


def stock_dynamic(model, batch, max_len):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def peer(backend: str, nbits: int):
    def make(model, batch, max_len):
        from transformers import QuantizedCache

        return QuantizedCache(backend=backend, config=model.config, nbits=nbits)

    return make


def sdpalab_cache(variant: sl.Variant):
    def make(model, batch, max_len):
        return SdpalabCache(variant, max_cache_len=max_len)

    return make


def fill(model, cache, batch: int, context: int, seed: int = 0) -> None:
    """``context`` seeded random tokens of keys and values into every layer, through the cache's
    own ``update`` (a cache that attends itself also attends them: its prefill path)."""
    cfg = model.config
    dev, dtype = model.device, model.dtype
    heads_kv, head_dim = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    gen = torch.Generator(dev).manual_seed(seed)
    queries = torch.Generator(dev).manual_seed(seed + 1)  # never shifts the keys and values
    position = torch.arange(context, device=dev)
    for layer in range(cfg.num_hidden_layers):
        shape = (batch, heads_kv, context, head_dim)
        k = torch.randn(shape, generator=gen, device=dev, dtype=dtype)
        v = torch.randn(shape, generator=gen, device=dev, dtype=dtype)
        keys, _ = cache.update(k, v, layer, {"cache_position": position})
        held = getattr(keys, "sdpalab_layer", None)
        if held is not None:
            q = torch.randn(
                (batch, cfg.num_attention_heads, context, head_dim),
                generator=queries, device=dev, dtype=dtype,
            )  # fmt: skip
            held.attend(q)
            del q
        del k, v, keys


def rollback(cache, context: int) -> Callable[[], None]:
    """What puts ``cache`` back at ``context`` tokens before a timed step (None: nothing)."""
    if isinstance(cache, SdpalabCache):
        return lambda: cache.rollback(context)
    if type(cache).__name__ == "DynamicCache":  # crop takes the (negative) count to drop
        return lambda: (
            cache.get_seq_length() > context and cache.crop(context - cache.get_seq_length())
        )
    if type(cache).__name__ == "StaticCache":
        return lambda: [_rewind(layer, context) for layer in cache.layers]
    return lambda: None  # QuantizedCache cannot roll back: its steps go on appending


def _rewind(layer, context: int) -> None:
    """A static layer that counts what it holds (transformers 5.2x writes each update at its
    ``cumulative_length``, not at ``cache_position``) set back to ``context``."""
    count = getattr(layer, "cumulative_length", None)
    if isinstance(count, torch.Tensor):
        count.fill_(context)
    elif count is not None:
        layer.cumulative_length = context


# --------------------------------------------------------------------------- measuring


def step_fn(model, cache, batch: int, context: int, token: torch.Tensor):
    dev = model.device
    position = torch.full((batch, 1), context, device=dev)
    cache_position = torch.tensor([context], device=dev)

    def step():
        return model(
            input_ids=token, past_key_values=cache, position_ids=position,
            cache_position=cache_position, use_cache=True,
        ).logits  # fmt: skip

    return step


KERNELS = {
    "attention": ("fast_kernel", "general_kernel", "merge_kernel", "flash", "fmha", "cudnn",
                  "attention", "sdpa"),
    "append": ("qappend_kernel", "index_copy"),
}  # fmt: skip


def split(step: Callable, setup: Callable, steps: int = 3) -> dict[str, float]:
    """Device time of one eager step by kind of kernel (names in ``KERNELS``), in ms."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            setup()
            step()
        torch.cuda.synchronize()
    out = {"attention": 0.0, "append": 0.0, "other": 0.0}
    for evt in prof.events():
        if evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = evt.name.lower()
        kind = next((k for k, words in KERNELS.items() if any(w in name for w in words)), "other")
        out[kind] += evt.device_time / 1000 / steps
    return out


def greedy(model, cache, batch: int, context: int, steps: int) -> list:
    torch.manual_seed(1)
    token = torch.zeros((batch, 1), dtype=torch.long, device=model.device)
    out = []
    for i in range(steps):
        logits = step_fn(model, cache, batch, context + i, token)()
        token = logits[:, -1:].argmax(-1)
        out.append(token.flatten().tolist())
    return out


def measure(
    model, row: Row, make, batch, context, graph: bool, repeats: int, profile: bool = False
) -> Row:
    """Fill a cache, take its greedy tokens, time its step (eager, and graph-replayed when
    ``graph``); ``profile``: the eager step's device-time split instead of the graph."""
    dev = str(model.device)
    max_len = context + GREEDY + repeats + 16
    cache = make(model, batch, max_len)
    fill(model, cache, batch, context)
    row.kv_bytes = cache_nbytes(cache)
    token = torch.zeros((batch, 1), dtype=torch.long, device=model.device)
    step, reset = step_fn(model, cache, batch, context, token), rollback(cache, context)
    cuda = model.device.type == "cuda"
    with torch.inference_mode():
        row.tokens = greedy(model, cache, batch, context, GREEDY)  # from the filled cache
        reset()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        eager = time_fn(step, device=dev, warmup=3, repeats=repeats, setup=reset)
        row.eager_ms, row.eager_iqr_ms = eager.latency_ms, eager.latency_iqr_ms
        if cuda:
            row.peak_bytes = torch.cuda.max_memory_allocated() - base
        if profile and cuda:  # never before a graph capture in the same process run
            row.split_ms = split(step, reset)
        if graph and cuda and not profile:
            try:
                g = capture_graph(step, dev, setup=reset)
                timed = time_fn(g.replay, device=dev, warmup=5, repeats=repeats * 2, setup=reset)
                row.graph_ms, row.graph_iqr_ms = timed.latency_ms, timed.latency_iqr_ms
                del g
            except Exception as err:
                row.reason = f"graph: {type(err).__name__}: {str(err).splitlines()[0]}"[:200]
    del cache, step
    return row


def guarded(row: Row, run: Callable[[], Row]) -> Row:
    try:
        return run()
    except torch.OutOfMemoryError as err:
        row.status, row.reason = "oom", str(err).splitlines()[0][:200]
    except Exception as err:  # a crash is a data point, never the end of the benchmark
        row.status, row.reason = "crash", f"{type(err).__name__}: {err}"[:300]
    return row


def configs_for(peers) -> list[tuple[str, object, Callable, bool]]:
    """``(cache name, attention, make_cache, graph-capturable)`` of every row."""
    configs: list[tuple[str, object, Callable, bool]] = [
        ("StaticCache", "sdpa", stock_static, True),
        ("DynamicCache", "sdpa", stock_dynamic, False),
        *((f"QuantizedCache({b}, {n}-bit)", "sdpa", peer(b, n), False) for b, n in peers),
    ]
    for fmt in SDPALAB_FORMATS:
        variant = sl.Variant(backend="triton_qdecode", kv_cache="static", kv_quant=fmt)
        configs.append((f"SdpalabCache(static+{fmt})", variant, sdpalab_cache(variant), True))
    return configs


def select(model, attention) -> str:
    if isinstance(attention, sl.Variant):
        return apply_variant(model, attention)
    model.set_attn_implementation(attention)
    return attention


def free(model) -> None:
    gc.collect()
    if model.device.type == "cuda":
        torch.cuda.empty_cache()


def run_case(model, batch: int, context: int, repeats: int, peers) -> list[Row]:
    case = f"B={batch}, {context // 1024}k"
    rows = []
    for name, attention, make, graph in configs_for(peers):
        row = Row(case, name, select(model, attention))
        print(f"  {case} {name} ...", file=sys.stderr, flush=True)
        rows.append(
            guarded(
                row, lambda r=row, m=make, g=graph: measure(model, r, m, batch, context, g, repeats)
            )
        )
        free(model)
    reference = rows[0].tokens
    for row in rows:
        if row.tokens is not None and reference is not None:
            steps = zip(row.tokens, reference, strict=True)
            pairs = [(a, b) for s, t in steps for a, b in zip(s, t, strict=True)]
            row.agreement = sum(a == b for a, b in pairs) / len(pairs)
    return rows


SPLIT_ROWS = ("StaticCache", "SdpalabCache(static+int8)", "SdpalabCache(static+int4)",
              "SdpalabCache(static+kivi4)")  # fmt: skip


def split_pass(model, rows: list[Row], batch: int, context: int, repeats: int) -> None:
    """The device-time split of the eager step of the rows in ``SPLIT_ROWS``, into them."""
    for name, attention, make, _ in configs_for(()):
        row = next((r for r in rows if r.cache == name and r.status == "ok"), None)
        if row is None or name not in SPLIT_ROWS:
            continue
        print(f"  profiling {name} ...", file=sys.stderr, flush=True)
        probe = Row(row.case, name, select(model, attention))
        probe = guarded(
            probe,
            lambda p=probe, m=make: measure(model, p, m, batch, context, False, repeats, True),
        )
        row.split_ms = probe.split_ms or {"error": probe.reason[:120]}
        free(model)


# --------------------------------------------------------------------------- the report


def num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def table(rows: list[Row], batch: int) -> list[str]:
    stock = next((r.graph_ms for r in rows if r.cache == "StaticCache" and r.graph_ms), None)
    lines = [
        "| cache | attention | status | graph ms/token (IQR) | vs stock graph | eager ms/token "
        "(IQR) | tok/s | KV GiB | peak GiB | attention / append / other ms | tokens = stock |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        best = r.graph_ms or r.eager_ms
        status = r.status if not r.reason else f"{r.status}: {r.reason}"
        split_ms = r.split_ms if "error" not in r.split_ms else {}
        parts = "-" if not split_ms else " / ".join(
            f"{split_ms[k]:.2f}" for k in ("attention", "append", "other")
        )  # fmt: skip
        lines.append(
            f"| {r.cache} | {r.attention} | {status} "
            f"| {num(r.graph_ms, '.2f')} ({num(r.graph_iqr_ms, '.2f')}) "
            f"| {'-' if not (stock and r.graph_ms) else f'{r.graph_ms / stock:.2f}x'} "
            f"| {num(r.eager_ms, '.2f')} ({num(r.eager_iqr_ms, '.2f')}) "
            f"| {'-' if not best else f'{batch * 1000 / best:.0f}'} "
            f"| {num(None if r.kv_bytes is None else r.kv_bytes / GiB, '.2f')} "
            f"| {num(None if r.peak_bytes is None else r.peak_bytes / GiB, '.2f')} "
            f"| {parts} | {num(r.agreement, '.3f')} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="markdown file to write")
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-8b")
    p.add_argument("--cases", default="8x32768,1x131072", help="BATCHxCONTEXT, comma-separated")
    p.add_argument("--layers", type=int, help="fewer layers than the shape's (a quick check)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--no-peers", action="store_true", help="skip transformers' QuantizedCache")
    p.add_argument("--no-split", action="store_true", help="skip the profiler's time split")
    args = p.parse_args(argv)
    started = time.perf_counter()
    overrides = dict(SHAPES[args.shape])
    if args.layers:
        overrides["num_hidden_layers"] = args.layers
    loaded = load_model("tiny-llama", device=args.device, dtype=args.dtype, overrides=overrides)
    model = loaded.model
    prov = provenance(args.device)
    import transformers

    head = [
        "# A decode step of a Llama-3.1-8B-shaped model over a long KV cache\n",
        f"Command: `PYTHONPATH=src python {' '.join(['benchmarks/model_bench.py', *sys.argv[1:]])}`"
        f"  \nDate: {prov['time_utc']}  \nDevice: {prov.get('device_name', args.device)}, torch "
        f"{prov['torch']}, transformers {transformers.__version__}\n",
        f"Model: Llama architecture, seeded random weights, {args.dtype}: "
        + ", ".join(f"{k}={getattr(model.config, k)}" for k in SHAPES["llama-8b"])
        + ". Caches filled with seeded random keys and values (not a prefill of text); one decode "
        "step at the context's position timed (module doc of `benchmarks/model_bench.py`).\n",
    ]
    cases = [tuple(int(x) for x in c.lower().split("x")) for c in args.cases.split(",")]
    results: list[tuple[int, int, list[Row]]] = []

    def write() -> str:
        sections = []
        for batch, context, rows in results:
            sections += [f"## B={batch}, context {context}\n", *table(rows, batch), ""]
        text = "\n".join(head + sections) + f"\n({time.perf_counter() - started:.0f} s)\n"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        return text

    for batch, context in cases:
        print(f"case B={batch} context={context}", file=sys.stderr, flush=True)
        rows = run_case(model, batch, context, args.repeats, () if args.no_peers else PEERS)
        results.append((batch, context, rows))
        write()
    if not args.no_split and model.device.type == "cuda":  # last: a profiler crash loses nothing
        batch, context, rows = results[0]
        split_pass(model, rows, batch, context, args.repeats)
    text = write()
    everything = [asdict(r) for _, _, rows in results for r in rows]
    print(text)
    print(json.dumps({"provenance": prov, "rows": everything}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
