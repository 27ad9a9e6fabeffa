"""``sl.bench_model``: Variants inside a transformers model, measured end to end.

A decoder runs a prefill and greedy generation of ``new_tokens`` tokens through ``generate``
(see ``generation.py``), once with the model's stock attention (``sdpa`` with a
``DynamicCache``) and once per Variant (its attention registered through ``AttentionInterface``,
its cache an ``SdpalabCache`` when it has a ``kv_cache``), scored against the stock run.

An encoder runs one forward over ``[batch, prompt_len]`` tokens for speed and memory, and embeds
real sentences one at a time (no padding) for agreement: the cosine of the mean-pooled sentence
embeddings and of every token's hidden state, worst case reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sdpalab.attention.errors import Unsupported
from sdpalab.integrations.generation import ModelRun, generation_run
from sdpalab.integrations.models import LoadedModel, load_model
from sdpalab.integrations.transformers import apply_variant
from sdpalab.measure.memory import cpu_allocation_peak
from sdpalab.measure.timing import time_fn
from sdpalab.spec import Variant, resolve_device

STOCK = "sdpa"
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The stock market fell sharply after the announcement.",
    "She baked a chocolate cake for her brother's birthday.",
    "Attention lets a model weigh every token against every other.",
    "Heavy rain is expected across the north of the country tomorrow.",
    "How do I reset my password if I no longer have access to my email?",
)
"""Real text for the encoder's agreement check (also what ``sdpalab model minilm`` reports)."""


@dataclass(frozen=True)
class ModelBench:
    """A model measured with its stock attention (``runs[0]``) and each Variant after it."""

    model: str
    kind: str
    device: str
    dtype: str
    batch: int
    prompt_len: int
    new_tokens: int
    runs: tuple[ModelRun, ...]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _variant_cache(variant: Variant, max_len: int) -> tuple[Callable[[], Any], str]:
    from transformers import DynamicCache

    if variant.kv_cache == "none":
        return DynamicCache, "DynamicCache"
    from sdpalab.integrations.hf_cache import SdpalabCache

    SdpalabCache(variant)  # a variant a cache cannot serve fails here, before any run
    cache = variant.kv_cache + ("" if variant.kv_quant == "none" else f"+{variant.kv_quant}")
    return lambda: SdpalabCache(variant, max_cache_len=max_len), f"SdpalabCache({cache})"


def _bench_decoder(loaded, variants, *, batch, prompt_len, new_tokens, device, seed, warmup):
    from transformers import DynamicCache

    config = loaded.model.config
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, prompt_len), generator=gen).to(device)
    # Every variant is checked against the model (and registered) before anything runs.
    prepared = [
        (
            variant,
            apply_variant(loaded.model, variant),
            *_variant_cache(variant, prompt_len + new_tokens),
        )
        for variant in variants
    ]
    stock, reference = generation_run(
        loaded,
        ids,
        label="stock",
        attn_implementation=STOCK,
        cache_name="DynamicCache",
        make_cache=lambda: DynamicCache(config=config),
        new_tokens=new_tokens,
        warmup=warmup,
    )
    runs = [stock]
    for variant, name, make_cache, cache_name in prepared:
        run, _ = generation_run(
            loaded,
            ids,
            label=variant.label(),
            attn_implementation=name,
            make_cache=make_cache,
            cache_name=cache_name,
            new_tokens=new_tokens,
            reference=reference,
            warmup=warmup,
        )
        runs.append(run)
    return runs


def _bench_encoder(loaded, variants, *, batch, prompt_len, device, texts, warmup):
    model, tok = loaded.model, loaded.tokenizer
    if tok is None:
        raise ValueError(f"encoder {loaded.name!r} has no tokenizer to embed real text with")
    limit = model.config.max_position_embeddings
    if prompt_len > limit:
        raise ValueError(f"prompt_len={prompt_len} exceeds {loaded.name}'s {limit} positions")
    encoded = [tok(t, return_tensors="pt").to(device) for t in texts]
    stream = torch.cat([e["input_ids"][0] for e in encoded])
    ids = stream.repeat(prompt_len // len(stream) + 1)[:prompt_len].expand(batch, -1)

    def measure(label: str, name: str, reference=None) -> tuple[ModelRun, list]:
        model.set_attn_implementation(name)
        with torch.inference_mode():
            try:
                hidden = [model(**e).last_hidden_state[0] for e in encoded]
                timing = time_fn(
                    lambda: model(input_ids=ids), device=str(device), warmup=warmup, repeats=5
                )
            except Unsupported as err:
                return ModelRun(label, name, "-", "unsupported", str(err)), []
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
                model(input_ids=ids)
                peak = torch.cuda.max_memory_allocated(device) - before
            else:
                peak = cpu_allocation_peak(lambda: model(input_ids=ids))
        cos = {}
        if reference is not None:
            pairs = list(zip(hidden, reference, strict=True))
            cos["embedding_cosine"] = min(
                torch.cosine_similarity(h.float().mean(0), r.float().mean(0), dim=0).item()
                for h, r in pairs
            )
            cos["hidden_cosine"] = min(
                torch.cosine_similarity(h.float(), r.float(), dim=-1).min().item() for h, r in pairs
            )
        run = ModelRun(label, name, "-", prefill_ms=timing.latency_ms, peak_mem_bytes=peak, **cos)
        return run, hidden

    names = [apply_variant(model, variant) for variant in variants]
    stock, reference = measure("stock", STOCK)
    runs = [stock]
    for variant, name in zip(variants, names, strict=True):
        runs.append(measure(variant.label(), name, reference)[0])
    return runs


def bench_model(
    model: str | LoadedModel,
    variant: Variant | Sequence[Variant],
    *,
    prompt_len: int = 128,
    new_tokens: int = 32,
    batch: int = 1,
    device: str = "auto",
    dtype: str = "float32",
    seed: int = 0,
    warmup: int = 1,
    texts: Sequence[str] = SENTENCES,
) -> ModelBench:
    """Run ``model`` (a built-in name, a local path, or a :class:`LoadedModel`) with its stock
    attention and with each Variant; measure prefill, per-token decode latency, peak memory,
    KV cache bytes and agreement with the stock run.

    Decoders generate ``new_tokens`` greedily after a seeded random prompt of ``prompt_len``
    tokens; encoders embed ``texts`` for agreement and time a ``prompt_len`` forward. Raises
    ``ValueError`` for a model or variant that cannot be used together (a bad path, a mod that
    breaks the model's masking), ``ImportError`` with the install command for a missing package.
    """
    variants = [variant] if isinstance(variant, Variant) else list(variant)
    for name, value in (("prompt_len", prompt_len), ("new_tokens", new_tokens), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    device = resolve_device(device)
    loaded = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, device=device, dtype=dtype, seed=seed)
    )
    dev = next(loaded.model.parameters()).device
    common = dict(batch=batch, prompt_len=prompt_len, device=dev, warmup=warmup)
    if loaded.kind == "decoder":
        runs = _bench_decoder(loaded, variants, new_tokens=new_tokens, seed=seed, **common)
    else:
        runs = _bench_encoder(loaded, variants, texts=texts, **common)
    return ModelBench(
        model=loaded.name,
        kind=loaded.kind,
        device=str(dev),
        dtype=str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        batch=batch,
        prompt_len=prompt_len,
        new_tokens=new_tokens if loaded.kind == "decoder" else 0,
        runs=tuple(runs),
    )


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _agreement_cell(bench: ModelBench, run: ModelRun) -> str:
    if run is bench.runs[0]:
        return "stock"
    if bench.kind == "encoder":
        return _num(run.embedding_cosine, ".6f")
    return f"{_num(run.token_match, '.3f')} / {_num(run.step_match, '.3f')}"


def model_table(bench: ModelBench) -> tuple[list[str], list[list[str]]]:
    """Column names and rows (strings) of a :class:`ModelBench`, one row per run."""
    agreement = "token / step match" if bench.kind == "decoder" else "embedding cos"
    columns = ["run", "attention", "cache", "status", "prefill ms", "decode ms/tok", "tok/s"]
    columns += ["peak MiB", "KV MiB", agreement]
    rows = []
    for run in bench.runs:
        mib = [None if b is None else b / 2**20 for b in (run.peak_mem_bytes, run.kv_cache_bytes)]
        status = run.status if run.status == "ok" else f"{run.status}: {run.reason}"
        timing = [run.prefill_ms, run.decode_ms_per_token, run.tokens_per_s, *mib]
        cells = [
            _num(x, f) for x, f in zip(timing, (".1f", ".2f", ".1f", ".2f", ".3f"), strict=True)
        ]
        rows.append([run.label, run.attn_implementation, run.cache, status, *cells])
        rows[-1].append(_agreement_cell(bench, run))
    return columns, rows
