"""A trial whose workload is a whole model: ``measure_model(variant, workload, settings)``.

The model (a :class:`~sdpalab.trials.ModelWorkload`) runs a prefill of ``prompt_len`` seeded
random tokens and greedy generation of ``new_tokens`` tokens with the Variant's attention and
cache (as :func:`sdpalab.integrations.bench_model.bench_model` does), and the run becomes a
:class:`Result` the sweep, search, Pareto and recommendation read like any other:

- ``latency_ms`` / ``latency_iqr_ms``: median / IQR of one greedy decode step (ms per token;
  encoders: one forward of ``[batch, prompt_len]``), ``latency_n`` the steps timed;
- ``peak_mem_bytes``: the run's peak above what was live before (weights, inputs), the KV
  cache included; ``peak_mem_total_bytes`` adds the model's weights, so a budget such as
  ``--max-memory 2GiB`` limits what the model needs; ``kv_cache_bytes``: the cache after
  generation;
- ``rel_fro_err``: the largest relative error of one step's logits against the model's stock
  attention (``sdpa`` with a ``DynamicCache``), teacher-forced on the stock run's tokens;
  encoders: ``sqrt(2 - 2 cos)`` of the worst token's hidden state (the relative error of its
  direction), ``cosine`` that cosine;
- ``kernel``: the Variant's backend; ``status``/``reason``: the run's (a failure is a status,
  never an exception).

The loaded model and the stock run are kept per worker process, keyed by everything they
depend on, so a search over many variants of one model pays for them once.
"""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from typing import Any

import torch

from sdpalab.attention.errors import Unsupported
from sdpalab.measure.result import Result
from sdpalab.spec import MeasureSettings, Variant

_MODELS: dict[tuple, Any] = {}
_STOCK: dict[tuple, tuple[Any, Any, Any]] = {}
"""(model, prompt_len, new_tokens, batch, dtype, device, seed, warmup) → (ids, stock run,
its (tokens, logits))."""


def clear_caches() -> None:
    """Forget the loaded models and stock runs (tests; a worker keeps them for its lifetime)."""
    _MODELS.clear()
    _STOCK.clear()


def _loaded(workload, seed: int):
    from sdpalab.integrations.models import load_model

    key = (workload.model, workload.device, workload.dtype, seed)
    if key not in _MODELS:
        if len(_MODELS) >= 2:  # a sweep over several models keeps the newest two
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[key] = load_model(
            workload.model, device=workload.device, dtype=workload.dtype, seed=seed
        )
    return _MODELS[key]


def _stock(loaded, workload, settings: MeasureSettings):
    """The stock run of this model and shape, measured once per worker."""
    from transformers import DynamicCache

    from sdpalab.integrations.bench_model import STOCK
    from sdpalab.integrations.generation import generation_run

    key = (
        workload.model,
        workload.prompt_len,
        workload.new_tokens,
        workload.batch,
        workload.dtype,
        workload.device,
        settings.seed,
        settings.warmup,
    )
    if key not in _STOCK:
        config = loaded.model.config
        gen = torch.Generator().manual_seed(settings.seed)
        ids = torch.randint(
            0, config.vocab_size, (workload.batch, workload.prompt_len), generator=gen
        )
        ids = ids.to(next(loaded.model.parameters()).device)
        run, reference = generation_run(
            loaded,
            ids,
            label="stock",
            attn_implementation=STOCK,
            cache_name="DynamicCache",
            make_cache=lambda: DynamicCache(config=config),
            new_tokens=workload.new_tokens,
            warmup=settings.warmup,
        )
        _STOCK[key] = (ids, run, reference)
    return _STOCK[key]


def _decoder_run(loaded, variant: Variant, workload, settings: MeasureSettings):
    from sdpalab.integrations.bench_model import _variant_cache
    from sdpalab.integrations.generation import generation_run
    from sdpalab.integrations.transformers import apply_variant

    name = apply_variant(loaded.model, variant)
    make_cache, cache_name = _variant_cache(variant, workload.prompt_len + workload.new_tokens)
    ids, stock, reference = _stock(loaded, workload, settings)
    if stock.status != "ok":
        return stock.status, f"the stock run failed: {stock.reason}", None
    run, _ = generation_run(
        loaded,
        ids,
        label=variant.label(),
        attn_implementation=name,
        make_cache=make_cache,
        cache_name=cache_name,
        new_tokens=workload.new_tokens,
        reference=reference,
        warmup=settings.warmup,
    )
    return run.status, run.reason, run


def _fields(run, loaded, workload) -> dict[str, Any]:
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


def measure_model(variant: Variant, workload, settings: MeasureSettings) -> Result:
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
        if loaded.kind == "decoder":
            status, reason, run = _decoder_run(loaded, variant, workload, settings)
        else:
            from sdpalab.integrations.bench_model import bench_model

            bench = bench_model(
                loaded,
                [variant],
                prompt_len=workload.prompt_len,
                batch=workload.batch,
                device=workload.device,
                seed=settings.seed,
                warmup=settings.warmup,
            )
            run = bench.runs[-1]
            status, reason = run.status, run.reason
        result.status, result.reason = status, reason
        if run is not None and status == "ok":
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
