"""Quality of cache configurations on a real model and real text: :func:`measure_quality`
(what ``sdpalab quality`` runs).

The reference is the model as it ships: its ``sdpa`` attention over transformers'
``DynamicCache``, unquantized, float32 on the CPU. Every variant runs its own attention
(registered through ``AttentionInterface``) over its own cache (``SdpalabCache`` when it has a
``kv_cache``) on the same windows of the text, scored token by token against the reference
(:mod:`sdpalab.models.quality`). The windows run as one batch: a decode step of 4 sequences costs
little more than one of a single sequence on a CPU, where reading the weights dominates.
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdpalab.attention.errors import Unsupported
from sdpalab.models.attention import apply_variant
from sdpalab.models.generation import cache_nbytes
from sdpalab.models.loading import LoadedModel, load_model
from sdpalab.models.quality import (
    QualityRun,
    forced_logprobs,
    forwards_per_window,
    summarize_quality,
    token_scores,
)
from sdpalab.models.text import load_text, text_windows
from sdpalab.run.model_trial import STOCK
from sdpalab.spec import Variant

REFERENCE = "reference"
_REFERENCES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""model → (text hash, sizes) → the reference's (QualityRun, log-probs)."""


@dataclass(frozen=True)
class QualityReport:
    """Every variant's :class:`QualityRun` on one model and text, the reference first."""

    model: str
    text: str
    """``pydoc_data.topics`` or the path of the user's text."""
    text_sha256: str
    text_tokens: int
    """Tokens in the whole text (the windows are cut from these)."""
    context: int
    """Tokens prefilled into each window's cache before scoring."""
    eval_tokens: int
    """Tokens scored per window, teacher-forced after the prefill."""
    windows: int
    chunk: int
    """Tokens fed per forward after the prefill (1: decode steps)."""
    device: str
    dtype: str
    load_s: float
    """Wall time to load the model (a cached conversion for GGUF files)."""
    runs: tuple[QualityRun, ...]

    @property
    def reference(self) -> QualityRun:
        return self.runs[0]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")


def _prepare(variants: Sequence[Variant], max_len: int) -> list[tuple[Variant, Callable, str]]:
    """Each variant with its cache factory and name; a variant no cache can serve fails now."""
    # Imported here: the cache module needs transformers, and a missing one must fail inside
    # measure_quality (with the install command), not where this module is imported.
    from sdpalab.models.cache import variant_cache

    return [(v, *variant_cache(v, max_len)) for v in variants]


def _load_decoder(model: str | LoadedModel, tokens: int) -> tuple[LoadedModel, float]:
    """The model and its load time in seconds; ``ValueError`` unless it is a float32 CPU
    decoder with a tokenizer and room for ``tokens`` positions."""
    started = time.perf_counter()
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    load_s = time.perf_counter() - started
    if loaded.kind != "decoder" or loaded.tokenizer is None:
        raise ValueError(
            f"model {loaded.name!r} is not a decoder with a tokenizer; quality scores next-token "
            "predictions on real text: use smollm2, a .gguf file or a checkpoint with a tokenizer"
        )
    param = next(loaded.model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        raise ValueError(
            f"the quality reference runs float32 on the CPU; model {loaded.name!r} is "
            f"{str(param.dtype).removeprefix('torch.')} on {param.device}"
        )
    limit = getattr(loaded.model.config, "max_position_embeddings", None)
    if limit is not None and tokens > limit:
        raise ValueError(
            f"context + eval_tokens = {tokens} exceeds {loaded.name}'s {limit} positions"
        )
    return loaded, load_s


def measure_quality(
    model: str | LoadedModel,
    variants: Sequence[Variant],
    *,
    text: str | Path | None = None,
    context: int = 512,
    eval_tokens: int = 128,
    windows: int = 4,
    chunk: int = 1,
    peers: Sequence[tuple[str, Callable[[Any], Any]]] = (),
    on_progress: Callable[[int, int], None] | None = None,
) -> QualityReport:
    """Score each variant's cache against the reference on ``windows`` windows of ``text``.

    ``model``: a built-in name, a local path or a :class:`LoadedModel` (a decoder with a
    tokenizer, on the CPU in float32). ``text``: a UTF-8 file, default ``pydoc_data.topics``.
    Each window is ``context + eval_tokens`` tokens: the first ``context`` are prefilled, the
    other ``eval_tokens`` scored, fed ``chunk`` at a time. ``peers``: other caches to score the
    same way under the model's own attention, as ``(name, make_cache(model_config))`` (e.g.
    transformers' ``QuantizedCache``). ``on_progress(done, total)`` counts
    forwards. Raises ``ValueError`` before anything runs for bad sizes, a bad text or a variant
    that cannot run in the model, ``ImportError`` with the install command for a missing package.
    """
    _check_sizes(context=context, eval_tokens=eval_tokens, windows=windows, chunk=chunk)
    corpus = load_text(text)
    prepared = _prepare(variants, context + eval_tokens)
    loaded, load_s = _load_decoder(model, context + eval_tokens)
    net = loaded.model
    ids, text_tokens = text_windows(loaded.tokenizer, corpus, context + eval_tokens, windows)
    names = [apply_variant(net, v) for v, _, _ in prepared]  # each checked before any run
    total = (1 + len(prepared) + len(peers)) * forwards_per_window(eval_tokens, chunk)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_progress:
            on_progress(done, total)

    targets = ids[:, context:]

    def score(label, attn, make_cache, cache_name, variant=None, reference=None):
        """One run over every window: its QualityRun and its log-probs."""
        net.set_attn_implementation(attn)
        cache = make_cache()
        t0 = time.perf_counter()
        logprobs = forced_logprobs(net, ids, cache, context=context, chunk=chunk, on_forward=tick)
        fields = dict(
            eval_s=time.perf_counter() - t0, kv_cache_bytes=cache_nbytes(cache) // windows
        )
        scores = token_scores(logprobs if reference is None else reference, logprobs, targets)
        spec = None if variant is None else variant.to_dict()
        return QualityRun(label, cache_name, spec, **fields, **summarize_quality(scores)), logprobs

    from transformers import DynamicCache

    # The reference of these windows is scored once per model (a search calls this again).
    memo = _REFERENCES.setdefault(net, {})
    key = (corpus.sha256, context, eval_tokens, windows, chunk)
    if key not in memo:
        # The first forward pays one-off costs (allocator, lazy dispatch): not the reference's.
        net.set_attn_implementation(STOCK)
        with torch.inference_mode():
            forced_logprobs(net, ids[:1, :9], DynamicCache(config=net.config), context=8)
        memo[key] = score(REFERENCE, STOCK, lambda: DynamicCache(config=net.config), "DynamicCache")
    else:
        done += forwards_per_window(eval_tokens, chunk)
    ref_run, ref_logprobs = memo[key]
    runs = [ref_run]
    for (variant, make_cache, cache_name), attn in zip(prepared, names, strict=True):
        label, spec = variant.label(), variant.to_dict()
        try:
            runs.append(score(label, attn, make_cache, cache_name, variant, ref_logprobs)[0])
        except Unsupported as err:
            runs.append(QualityRun(label, cache_name, spec, "unsupported", str(err)))
        except torch.OutOfMemoryError as err:
            runs.append(QualityRun(label, cache_name, spec, "oom", str(err)[:200]))
        # a failed run's forwards never come: keep the count honest for the ETA
        done = max(done, len(runs) * forwards_per_window(eval_tokens, chunk))
    for name, make_peer in peers:
        try:
            runs.append(
                score(name, STOCK, lambda m=make_peer: m(net.config), name, None, ref_logprobs)[0]
            )
        except (ImportError, ValueError, RuntimeError) as err:  # a peer that cannot run here
            runs.append(QualityRun(name, name, None, "unsupported", str(err).splitlines()[0]))
        done = max(done, len(runs) * forwards_per_window(eval_tokens, chunk))
    return QualityReport(
        model=loaded.name,
        text=corpus.source,
        text_sha256=corpus.sha256,
        text_tokens=text_tokens,
        context=context,
        eval_tokens=eval_tokens,
        windows=windows,
        chunk=chunk,
        device="cpu",
        dtype="float32",
        load_s=load_s,
        runs=tuple(runs),
    )
