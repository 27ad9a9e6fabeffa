"""Variants inside a transformers model, measured end to end: :func:`bench_model` (what
``sdpalab model`` runs: the stock attention and each Variant, side by side) and
:func:`measure_model` (a :class:`~sdpalab.spec.ModelWorkload` trial: one Variant, one Result).

A decoder prefills a seeded random prompt of ``prompt_len`` tokens and generates ``new_tokens``
greedily (``sdpalab.models.generation``), once with the model's stock attention (``sdpa`` with a
``DynamicCache``) and once per Variant (its attention registered through ``AttentionInterface``,
its cache an ``SdpalabCache`` when it has a ``kv_cache``), scored against the stock run. An
encoder runs one forward over ``[batch, prompt_len]`` tokens for speed and memory, and embeds real
sentences one at a time (no padding) for agreement: the cosine of the mean-pooled sentence
embeddings and of every token's hidden state, worst case reported.

A trial's :class:`Result` is read by the sweep, search, Pareto and recommendation like any other:

- ``latency_ms`` / ``latency_iqr_ms``: median / IQR of one greedy decode step (ms per token;
  encoders: one forward of ``[batch, prompt_len]``), ``latency_n`` the steps timed;
- ``peak_mem_bytes``: the run's peak above what was live before (weights, inputs), the KV
  cache included; ``peak_mem_total_bytes`` adds the model's weights, so a budget such as
  ``--max-memory 2GiB`` limits what the model needs; ``kv_cache_bytes``: the cache after
  generation;
- ``rel_fro_err``: the largest relative error of one step's logits against the stock attention,
  teacher-forced on the stock run's tokens; encoders: ``sqrt(2 - 2 cos)`` of the worst token's
  hidden state (the relative error of its direction), ``cosine`` that cosine;
- ``kernel``: the Variant's backend; ``status``/``reason``: the run's (a failure is a status,
  never an exception).

A trial keeps the loaded model and the stock run per worker process, keyed by everything they
depend on, so a search over many variants of one model pays for them once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sdpalab.attention.errors import Unsupported
from sdpalab.measure.memory import cpu_allocation_peak
from sdpalab.measure.result import Result
from sdpalab.measure.timing import time_fn
from sdpalab.models.attention import apply_variant
from sdpalab.models.generation import ModelRun, generation_run
from sdpalab.models.loading import LoadedModel, load_model
from sdpalab.spec import MeasureSettings, ModelWorkload, Variant, resolve_device

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

Reference = tuple[torch.Tensor, torch.Tensor]
"""A run's generation: ``(tokens [B, n], logits [B, n, V])``."""


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


def _prompt(loaded: LoadedModel, batch: int, prompt_len: int, seed: int) -> torch.Tensor:
    """Seeded random token ids ``[batch, prompt_len]`` on the model's device."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, loaded.model.config.vocab_size, (batch, prompt_len), generator=gen)
    return ids.to(next(loaded.model.parameters()).device)


def _stock_run(loaded, ids, new_tokens: int, warmup: int) -> tuple[ModelRun, Reference | None]:
    from transformers import DynamicCache

    config = loaded.model.config
    return generation_run(
        loaded,
        ids,
        label="stock",
        attn_implementation=STOCK,
        cache_name="DynamicCache",
        make_cache=lambda: DynamicCache(config=config),
        new_tokens=new_tokens,
        warmup=warmup,
    )


def _prepare(loaded: LoadedModel, variant: Variant, max_len: int) -> Callable[..., Any]:
    """``generation_run`` for ``variant``, its attention registered and its cache checked now,
    so that a bad variant fails before anything runs."""
    # Imported here: the cache module needs transformers, and a missing one must fail inside
    # bench_model (with the install command), not where this module is imported.
    from sdpalab.models.cache import variant_cache

    name = apply_variant(loaded.model, variant)
    layers = getattr(loaded.model.config, "num_hidden_layers", None)  # checks a per-layer map
    make_cache, cache_name = variant_cache(variant, max_len, layers)
    return functools.partial(
        generation_run,
        loaded,
        label=variant.label(),
        attn_implementation=name,
        make_cache=make_cache,
        cache_name=cache_name,
    )


def _bench_encoder(loaded, variants, *, batch, prompt_len, texts, warmup) -> list[ModelRun]:
    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
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
    loaded = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, device=resolve_device(device), dtype=dtype, seed=seed)
    )
    if loaded.kind == "decoder":
        ids = _prompt(loaded, batch, prompt_len, seed)
        prepared = [_prepare(loaded, v, prompt_len + new_tokens) for v in variants]
        stock, reference = _stock_run(loaded, ids, new_tokens, warmup)
        runs = [stock]
        for run in prepared:
            runs.append(run(ids, new_tokens=new_tokens, reference=reference, warmup=warmup)[0])
    else:
        runs = _bench_encoder(
            loaded, variants, batch=batch, prompt_len=prompt_len, texts=texts, warmup=warmup
        )
    param = next(loaded.model.parameters())
    return ModelBench(
        model=loaded.name,
        kind=loaded.kind,
        device=str(param.device),
        dtype=str(param.dtype).removeprefix("torch."),
        batch=batch,
        prompt_len=prompt_len,
        new_tokens=new_tokens if loaded.kind == "decoder" else 0,
        runs=tuple(runs),
    )


_MODELS: dict[tuple, LoadedModel] = {}
_STOCK: dict[tuple, tuple[torch.Tensor, ModelRun, Reference | None]] = {}
"""(model, prompt_len, new_tokens, batch, dtype, device, seed, warmup) → (ids, stock run,
its generation)."""


def _loaded(workload: ModelWorkload, seed: int) -> LoadedModel:
    key = (workload.model, workload.device, workload.dtype, seed)
    if key not in _MODELS:
        if len(_MODELS) >= 2:  # a sweep over several models keeps the newest two
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[key] = load_model(
            workload.model, device=workload.device, dtype=workload.dtype, seed=seed
        )
    return _MODELS[key]


def _stock(loaded, workload: ModelWorkload, settings: MeasureSettings):
    """The prompt and stock run of this model and shape, measured once per worker."""
    key = (workload.model, workload.prompt_len, workload.new_tokens, workload.batch)
    key += (workload.dtype, workload.device, settings.seed, settings.warmup)
    if key not in _STOCK:
        ids = _prompt(loaded, workload.batch, workload.prompt_len, settings.seed)
        _STOCK[key] = (ids, *_stock_run(loaded, ids, workload.new_tokens, settings.warmup))
    return _STOCK[key]


def _trial_run(loaded, variant: Variant, workload: ModelWorkload, settings: MeasureSettings):
    if loaded.kind == "encoder":
        return _bench_encoder(
            loaded,
            [variant],
            batch=workload.batch,
            prompt_len=workload.prompt_len,
            texts=SENTENCES,
            warmup=settings.warmup,
        )[-1]
    run = _prepare(loaded, variant, workload.prompt_len + workload.new_tokens)
    ids, stock, reference = _stock(loaded, workload, settings)
    if stock.status != "ok":
        return dataclasses.replace(stock, reason=f"the stock run failed: {stock.reason}")
    kwargs = dict(new_tokens=workload.new_tokens, reference=reference, warmup=settings.warmup)
    return run(ids, **kwargs)[0]


def _fields(run: ModelRun, loaded: LoadedModel, workload: ModelWorkload) -> dict[str, Any]:
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    weights += sum(b.numel() * b.element_size() for b in loaded.model.buffers())
    peak = run.peak_mem_bytes
    out: dict[str, Any] = dict(
        peak_mem_bytes=peak,
        peak_mem_total_bytes=None if peak is None else peak + weights,
        memory_method="cuda_max_allocated" if "cuda" in workload.device else "cpu_profiler",
        kv_cache_bytes=run.kv_cache_bytes,
    )
    if loaded.kind == "decoder":
        out.update(
            latency_ms=run.decode_ms_per_token,
            latency_iqr_ms=run.decode_iqr_ms,
            latency_n=max(0, workload.new_tokens - 1),
            rel_fro_err=run.logits_rel_err,
        )
    else:
        cos = run.hidden_cosine
        out.update(
            latency_ms=run.prefill_ms,
            cosine=cos,
            rel_fro_err=None if cos is None else math.sqrt(max(0.0, 2.0 - 2.0 * cos)),
        )
    return out


def measure_model(variant: Variant, workload: ModelWorkload, settings: MeasureSettings) -> Result:
    """Run ``workload``'s model with ``variant`` and return its Result (never raises)."""
    from sdpalab.measure.provenance import provenance

    started = time.perf_counter()
    result = Result(
        variant=variant.to_dict(),
        workload=workload.to_dict(),
        label=variant.label(),
        kernel=variant.backend,
        settings=settings.to_dict(),
    )
    try:
        loaded = _loaded(workload, settings.seed)
        run = _trial_run(loaded, variant, workload, settings)
        result.status, result.reason = run.status, run.reason
        if run.status == "ok":
            for key, value in _fields(run, loaded, workload).items():
                setattr(result, key, value)
            if result.latency_ms is None:
                result.status, result.reason = "error", "no decode step was timed (new_tokens=1)"
    except (Unsupported, ValueError) as err:
        result.status, result.reason = "unsupported", _line(err)
    except torch.OutOfMemoryError as err:
        result.status, result.reason = "oom", _line(err)
    except Exception as err:  # a failure is a status, never an exception
        traceback.print_exc()
        result.status, result.reason = "error", f"{type(err).__name__}: {_line(err)}"
    with contextlib.suppress(Exception):  # provenance is best effort
        result.provenance = provenance(workload.device)
    result.wall_s = time.perf_counter() - started
    return result


def _line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
