"""Variants inside a transformers model, measured end to end: :func:`bench_model` (what
``sdpalab model`` runs: the stock attention and each Variant, side by side, generating greedily)
and :func:`measure_model` (a :class:`~sdpalab.spec.ModelWorkload` trial: one Variant, one Result).

A decoder trial reads ``batch`` windows of the workload's text (``pydoc_data.topics`` unless it
names a file; seeded random tokens for a model without a tokenizer): it prefills ``prompt_len``
tokens of each into the Variant's cache (its attention registered through ``AttentionInterface``,
its cache an ``SdpalabCache`` when it has a ``kv_cache``), then feeds the next ``new_tokens`` one
decode step at a time, teacher-forced, and scores every step's next-token distribution against
the stock model's on the same tokens (``sdpa`` with a ``DynamicCache``; :mod:`sdpalab.models.
quality`). An encoder runs one forward over ``[batch, prompt_len]`` tokens for speed and memory,
and embeds real sentences one at a time (no padding) for agreement: the cosine of the mean-pooled
sentence embeddings and of every token's hidden state, worst case reported.

A trial's :class:`Result` is read by the sweep, search, Pareto and recommendation like any other:

- ``latency_ms`` / ``latency_iqr_ms``: median / IQR of one decode step of ``batch`` sequences
  (encoders: one forward of ``[batch, prompt_len]``), ``latency_n`` the steps timed. On a GPU
  an sdpalab static cache's last step is captured in a CUDA graph and replayed (the cache
  rewound before each replay), so Python and launch gaps do not rank the variants; other
  caches keep their eager steps, and ``timing_method`` says which;
- ``peak_mem_bytes``: the run's peak above what was live before (weights, inputs), the KV
  cache included (on a CPU a separate, profiled pass, when ``MeasureSettings.memory``);
  ``peak_mem_total_bytes`` adds the model's weights, so a budget such as ``--max-memory 2GiB``
  limits what the model needs; ``kv_cache_bytes``: the cache of all ``batch`` sequences after
  the last step;
- quality (decoders): ``kl_mean_nats`` / ``kl_max_nats`` (KL of the stock model's next-token
  distribution to the variant's), ``ppl_delta_pct`` and its paired 95 % interval
  ``ppl_delta_pct_lo`` / ``_hi``, ``top1_agreement``, over ``batch * new_tokens`` tokens;
- ``rel_fro_err``: the largest relative error of one step's logits against the stock model's;
  encoders: ``sqrt(2 - 2 cos)`` of the worst token's hidden state (the relative error of its
  direction), ``cosine`` that cosine;
- ``kernel``: the Variant's backend; ``status``/``reason``: the run's (a failure is a status,
  never an exception).

A trial keeps the loaded model and the stock model's log-probs per worker process, keyed by
everything they depend on, so a search over many variants of one model pays for them once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdpalab.attention.errors import Unsupported
from sdpalab.measure.memory import cpu_allocation_peak
from sdpalab.measure.result import Result
from sdpalab.measure.timing import Timing, capture_graph, summarize, time_fn
from sdpalab.models.attention import apply_variant
from sdpalab.models.generation import ModelRun, cache_nbytes, generation_run
from sdpalab.models.loading import LoadedModel, load_model
from sdpalab.models.quality import forced_logprobs, summarize_quality, token_scores
from sdpalab.models.text import Corpus, load_text, text_windows
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
    prompt: str = ""
    """What the decoders' prompts are: windows of a text, or random token ids."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _prompt(loaded: LoadedModel, batch: int, prompt_len: int, seed: int) -> torch.Tensor:
    """Seeded random token ids ``[batch, prompt_len]`` on the model's device."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, loaded.model.config.vocab_size, (batch, prompt_len), generator=gen)
    return ids.to(next(loaded.model.parameters()).device)


def check_positions(loaded: LoadedModel, length: int) -> None:
    """``ValueError`` (one line) when ``length`` tokens (prompt and generated) exceed the
    positions ``loaded`` was trained for."""
    limit = getattr(loaded.model.config, "max_position_embeddings", None)
    if limit is not None and length > limit:
        raise ValueError(
            f"prompt_len + new_tokens = {length} exceeds {loaded.name}'s {limit} positions"
        )


def prompt_ids(
    loaded: LoadedModel, batch: int, length: int, seed: int, text: str | Path | Corpus | None
) -> tuple[torch.Tensor, str]:
    """Token ids ``[batch, length]`` and what they are: ``batch`` windows spread over ``text``
    (a path or a loaded :class:`Corpus`; default: Python's ``pydoc_data.topics``) for a model
    with a tokenizer, seeded random tokens for one without (its weights are random too).
    Raises ``ValueError`` for ``text`` given to a model without a tokenizer, or a text too short
    for the windows."""
    if loaded.tokenizer is None:
        if text is not None:
            name = text.source if isinstance(text, Corpus) else str(text)
            raise ValueError(
                f"model {loaded.name!r} has no tokenizer to read text {name!r}; use "
                "smollm2, a .gguf file or a checkpoint with a tokenizer, or drop text"
            )
        return _prompt(loaded, batch, length, seed), f"{length} random token ids (seed {seed})"
    corpus = text if isinstance(text, Corpus) else load_text(text)
    ids, _ = text_windows(loaded.tokenizer, corpus, length, batch)
    where = f"{batch} window{'s' * (batch > 1)} of {length} tokens of {corpus.source}"
    return ids.to(next(loaded.model.parameters()).device), where


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
    text: str | Path | None = None,
) -> ModelBench:
    """Run ``model`` (a built-in name, a local path, or a :class:`LoadedModel`) with its stock
    attention and with each Variant; measure prefill, per-token decode latency, peak memory,
    KV cache bytes and agreement with the stock run.

    Decoders generate ``new_tokens`` greedily after ``batch`` prompts of ``prompt_len`` tokens:
    windows of ``text`` (a UTF-8 file; default Python's ``pydoc_data.topics``) for a model with a
    tokenizer, seeded random tokens for one without (:func:`prompt_ids`); encoders embed
    ``texts`` for agreement and time a ``prompt_len`` forward. Raises ``ValueError`` for a model
    or variant that cannot be used together (a bad path, a mod that breaks the model's masking,
    a text for a model without a tokenizer or too short), ``ImportError`` with the install
    command for a missing package.
    """
    variants = [variant] if isinstance(variant, Variant) else list(variant)
    for name, value in (("prompt_len", prompt_len), ("new_tokens", new_tokens), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    corpus = None if text is None else load_text(text)  # a bad path fails before the model loads
    loaded = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, device=resolve_device(device), dtype=dtype, seed=seed)
    )
    prompt = ""
    if loaded.kind == "decoder":
        check_positions(loaded, prompt_len + new_tokens)
        ids, prompt = prompt_ids(loaded, batch, prompt_len, seed, corpus)
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
        prompt=prompt,
    )


_MODELS: dict[tuple, LoadedModel] = {}
_REFERENCES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
"""(model, text, prompt_len, new_tokens, batch, dtype, device, seed) → (token windows
``[batch, prompt_len + new_tokens]``, the stock model's log-probs on them ``[batch, new_tokens,
V]``)."""
_KEPT = 4
"""References kept per worker: a search visits its shapes round-robin."""

QUALITY_FIELDS = (
    "kl_mean_nats",
    "kl_max_nats",
    "ppl_delta_pct",
    "ppl_delta_pct_lo",
    "ppl_delta_pct_hi",
    "top1_agreement",
)
"""The :func:`~sdpalab.models.quality.summarize_quality` fields a model Result records."""


def _loaded(workload: ModelWorkload, seed: int) -> LoadedModel:
    key = (workload.model, workload.device, workload.dtype, seed)
    if key not in _MODELS:
        if len(_MODELS) >= 2:  # a sweep over several models keeps the newest two
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[key] = load_model(
            workload.model, device=workload.device, dtype=workload.dtype, seed=seed
        )
    return _MODELS[key]


def _windows(loaded: LoadedModel, workload: ModelWorkload, seed: int) -> torch.Tensor:
    """Token ids ``[batch, prompt_len + new_tokens]``: ``batch`` windows spread over the text,
    or seeded random tokens for a model without a tokenizer (its weights are random too)."""
    length = workload.prompt_len + workload.new_tokens
    check_positions(loaded, length)
    return prompt_ids(loaded, workload.batch, length, seed, workload.text)[0]


def _warm(net: torch.nn.Module, ids: torch.Tensor, cache: Any, warmup: int) -> None:
    """``warmup`` short passes (a few tokens prefilled, one step): the first forward pays
    one-off costs (allocator, lazy dispatch) that are not the variant's."""
    head = ids[:, : min(9, ids.shape[1])]
    for _ in range(warmup):
        forced_logprobs(net, head, cache(), context=head.shape[1] - 1)


def _reference(loaded: LoadedModel, workload: ModelWorkload, settings: MeasureSettings):
    """The token windows and the stock model's log-probs on them, computed once per worker."""
    from transformers import DynamicCache

    key = (workload.model, workload.text, workload.prompt_len, workload.new_tokens)
    key += (workload.batch, workload.dtype, workload.device, settings.seed)
    if key not in _REFERENCES:
        if len(_REFERENCES) >= _KEPT:
            _REFERENCES.pop(next(iter(_REFERENCES)))
        ids = _windows(loaded, workload, settings.seed)
        net = loaded.model
        net.set_attn_implementation(STOCK)
        stock = functools.partial(DynamicCache, config=net.config)
        _warm(net, ids, stock, settings.warmup)
        logprobs = forced_logprobs(net, ids, stock(), context=workload.prompt_len)
        _REFERENCES[key] = (ids, logprobs)
    return _REFERENCES[key]


def _centered_rel_err(logprobs: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest relative error of one step's logits ``[B, n, V]`` against the reference's, from
    log-probs: log-softmax keeps logits up to a per-row constant, which centering removes."""
    a, b = logprobs - logprobs.mean(-1, keepdim=True), ref - ref.mean(-1, keepdim=True)
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()


def _decoder_fields(
    loaded: LoadedModel, variant: Variant, workload: ModelWorkload, settings: MeasureSettings
) -> dict[str, Any]:
    """One teacher-forced pass of ``variant`` over the reference's windows: decode latency
    (each step after the prefill timed), cache bytes, quality against the stock model."""
    # Imported here: the cache module needs transformers, and a missing one must fail inside
    # the trial (with the install command), not where this module is imported.
    from sdpalab.models.cache import variant_cache

    ids, ref_logprobs = _reference(loaded, workload, settings)
    net, device = loaded.model, ids.device
    layers = getattr(net.config, "num_hidden_layers", None)  # checks a per-layer map
    make_cache, _ = variant_cache(variant, ids.shape[1], layers)
    apply_variant(net, variant)
    _warm(net, ids, make_cache, settings.warmup)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    stamps: list[float] = []

    def stamp() -> None:
        sync()
        stamps.append(time.perf_counter())

    def run(cache: Any) -> torch.Tensor:
        return forced_logprobs(net, ids, cache, context=workload.prompt_len, on_forward=stamp)

    cache = make_cache()
    peak = None
    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    stamp()
    logprobs = run(cache)
    gaps_ms = [(b - a) * 1e3 for a, b in itertools.pairwise(stamps)]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    elif settings.memory:  # the CPU profiler slows the run it watches: a separate, untimed one
        peak = cpu_allocation_peak(lambda: run(make_cache()))
    decode = summarize(gaps_ms[1:]) if len(gaps_ms) > 1 else None  # [0] is the prefill
    method = "cpu_clock" if device.type != "cuda" else "cuda_events (eager steps)"
    if decode is not None and device.type == "cuda" and settings.cuda_graph:
        graphed, why = _graph_step(net, ids, cache, settings)
        decode = graphed or decode
        method = "cuda_graph" if graphed else f"cuda_events (eager steps: {why})"
    quality = summarize_quality(token_scores(ref_logprobs, logprobs, ids[:, workload.prompt_len :]))
    return dict(
        latency_ms=decode and decode.latency_ms,
        latency_iqr_ms=decode and decode.latency_iqr_ms,
        latency_n=decode and decode.latency_n,
        noisy=decode and decode.noisy,
        timing_method=method,
        peak_mem_bytes=peak,
        kv_cache_bytes=cache_nbytes(cache),
        rel_fro_err=_centered_rel_err(logprobs, ref_logprobs),
        **{k: quality[k] for k in QUALITY_FIELDS},
    )


def _graph_step(net, ids, cache, settings: MeasureSettings) -> tuple[Timing | None, str]:
    """The last decode step of the teacher-forced run, replayed from a CUDA graph: the whole
    step (every layer, the logits) without Python or launch gaps, as a deployment that captures
    its step runs it. Only a cache whose position lives on the host can replay one step: an
    sdpalab static cache, rewound before each replay. ``(None, why)`` where it cannot."""
    from sdpalab.models.cache import SdpalabCache

    if not isinstance(cache, SdpalabCache) or cache.variant.kv_cache != "static":
        return None, "only an sdpalab static cache replays one step"
    pos = cache.get_seq_length() - 1
    rewind = functools.partial(cache.rollback, pos)
    token = ids[:, pos : pos + 1]
    position = torch.full((ids.shape[0], 1), pos, device=ids.device)

    def step() -> None:
        net(input_ids=token, past_key_values=cache, position_ids=position, use_cache=True)

    try:
        with torch.inference_mode():
            rewind()
            graph = capture_graph(step, str(ids.device), setup=rewind)
            timing = time_fn(
                graph.replay,
                device=str(ids.device),
                warmup=settings.warmup,
                repeats=settings.repeats,
                setup=rewind,
            )
    except Exception as err:  # a step that cannot be captured keeps its eager timing
        return None, _line(err)[:120]
    finally:
        with contextlib.suppress(Exception):
            cache.rollback(pos + 1)
    return timing, ""


def _encoder_fields(loaded, variant: Variant, workload: ModelWorkload, settings) -> dict:
    if workload.text is not None:
        raise ValueError(
            f"text scores next-token predictions, and {loaded.name!r} is an encoder; drop text"
        )
    run = _bench_encoder(
        loaded,
        [variant],
        batch=workload.batch,
        prompt_len=workload.prompt_len,
        texts=SENTENCES,
        warmup=settings.warmup,
    )[-1]
    if run.status != "ok":
        return {"status": run.status, "reason": run.reason}
    cos = run.hidden_cosine
    return dict(
        latency_ms=run.prefill_ms,
        peak_mem_bytes=run.peak_mem_bytes,
        kv_cache_bytes=run.kv_cache_bytes,
        cosine=cos,
        rel_fro_err=None if cos is None else math.sqrt(max(0.0, 2.0 - 2.0 * cos)),
    )


def _weights_bytes(loaded: LoadedModel) -> int:
    net = loaded.model
    return sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))


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
        measured = _decoder_fields if loaded.kind == "decoder" else _encoder_fields
        for key, value in measured(loaded, variant, workload, settings).items():
            setattr(result, key, value)
        if result.ok and result.peak_mem_bytes is not None:
            result.peak_mem_total_bytes = result.peak_mem_bytes + _weights_bytes(loaded)
            cuda = "cuda" in workload.device
            result.memory_method = "cuda_max_allocated" if cuda else "cpu_profiler"
        if result.ok and result.latency_ms is None:
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
