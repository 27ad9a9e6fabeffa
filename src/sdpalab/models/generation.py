"""One measured configuration of a model: ``ModelRun``, and greedy generation measured.

``generation_run`` runs ``generate`` with one attention implementation and a fresh cache.
Per-token latency comes from a logits processor that stamps the clock at every step
(synchronizing a GPU first): the first stamp closes the prefill, the gaps between the others are
the decode steps. Agreement with a reference run is scored two ways: the exact-token match of the
free-running generations (what a user sees, but one early flip changes everything after it), and
teacher-forced, feeding the reference's tokens through the run's own cache: the argmax match and
the logits' relative error per step, which one flip does not spoil.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sdpalab.attention.errors import Unsupported
from sdpalab.measure.memory import cpu_allocation_peak
from sdpalab.measure.timing import summarize
from sdpalab.models.loading import LoadedModel, cache_argument
from sdpalab.models.quiet import quiet_libraries


@dataclass(frozen=True)
class ModelRun:
    """One configuration of a model (an attention implementation and a cache), measured."""

    label: str
    attn_implementation: str
    cache: str
    status: str = "ok"
    """``ok``, ``unsupported`` or ``oom`` (then ``reason`` says why)."""
    reason: str = ""
    prefill_ms: float | None = None
    """Decoders: time to the first generated token. Encoders: median of one forward."""
    decode_ms_per_token: float | None = None
    """Median time of one greedy decode step (decoders)."""
    decode_iqr_ms: float | None = None
    tokens_per_s: float | None = None
    """``batch * 1000 / decode_ms_per_token``."""
    peak_mem_bytes: int | None = None
    """Most bytes allocated at once above what was live before (weights, inputs)."""
    kv_cache_bytes: int | None = None
    """Bytes the cache holds after generation: values, scales, zeros, residual windows."""
    token_match: float | None = None
    """Fraction of generated tokens equal to the stock run's, position by position. One early
    flip changes everything after it, so this swings widely on near-tied logits."""
    first_mismatch: int | None = None
    """Index of the first generated token that differs from the stock run (None: none)."""
    step_match: float | None = None
    """Teacher-forced: fraction of steps whose argmax token equals the stock run's when the
    variant is fed the stock run's tokens (its own cache, prefill then one token a step)."""
    logits_rel_err: float | None = None
    """Teacher-forced: largest relative Frobenius error of one step's logits vs the stock's."""
    embedding_cosine: float | None = None
    """Encoders: smallest cosine between mean-pooled sentence embeddings and the stock ones."""
    hidden_cosine: float | None = None
    """Encoders: smallest cosine between any token's last hidden state and the stock one."""


def cache_nbytes(cache: Any) -> int:
    """Bytes of every tensor a cache holds, each storage counted once.

    sdpalab caches report their own storage; transformers' layers are walked (tensors,
    tuples and dicts of them, and tensor subclasses such as quanto's through their inner
    tensors).
    """
    if hasattr(cache, "cache_bytes"):
        return cache.cache_bytes()
    seen: dict[int, int] = {}

    def walk(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            if hasattr(obj, "__tensor_flatten__") and type(obj) is not torch.Tensor:
                for name in obj.__tensor_flatten__()[0]:
                    walk(getattr(obj, name))
            elif obj.numel():
                storage = obj.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, dict):
            for value in obj.values():
                walk(value)
        elif isinstance(obj, list | tuple):
            for value in obj:
                walk(value)

    for layer in cache.layers:
        walk(vars(layer))
    return sum(seen.values())


class _StepClock:
    """A logits processor that stamps the time at every generation step."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.stamps = device, []

    def start(self) -> None:
        self._sync()
        self.stamps = [time.perf_counter()]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._sync()
        self.stamps.append(time.perf_counter())
        return scores

    def gaps_ms(self) -> list[float]:
        return [(b - a) * 1e3 for a, b in zip(self.stamps, self.stamps[1:], strict=False)]


@quiet_libraries()
def teacher_forced_logits(
    model: torch.nn.Module, ids: torch.Tensor, tokens: torch.Tensor, cache: Any
) -> torch.Tensor:
    """Logits ``[B, n, V]`` predicting each of ``tokens [B, n]`` after ``ids``: a prefill, then
    ``tokens`` fed one a step through ``cache``, the way greedy decoding feeds its own."""
    with_cache = {cache_argument(model): cache}
    with torch.inference_mode():
        steps = [model(input_ids=ids, **with_cache).logits[:, -1]]
        for t in range(tokens.shape[1] - 1):
            steps.append(model(input_ids=tokens[:, t : t + 1], **with_cache).logits[:, -1])
    return torch.stack(steps, 1).float()


def _agreement(tokens, logits, reference) -> dict[str, Any]:
    ref_tokens, ref_logits = reference
    same = tokens == ref_tokens
    differs = (~same).any(0).nonzero()
    err = (logits - ref_logits).norm(dim=-1) / ref_logits.norm(dim=-1)
    return dict(
        token_match=same.float().mean().item(),
        first_mismatch=int(differs[0]) if len(differs) else None,
        step_match=(logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item(),
        logits_rel_err=err.max().item(),
    )


@quiet_libraries()
def generation_run(
    loaded: LoadedModel,
    ids: torch.Tensor,
    *,
    label: str,
    attn_implementation: str,
    make_cache: Callable[[], Any],
    cache_name: str,
    new_tokens: int,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    warmup: int = 1,
) -> tuple[ModelRun, tuple[torch.Tensor, torch.Tensor] | None]:
    """Greedy generation of ``new_tokens`` from ``ids [B, prompt_len]`` with one attention
    implementation and a fresh cache from ``make_cache()`` per run.

    Returns the run and ``(tokens [B, n], logits [B, n, V])`` of its generation.
    ``reference``: another run's ``(tokens, logits)`` to score agreement against.
    """
    from transformers import LogitsProcessorList

    model, device = loaded.model, ids.device
    model.set_attn_implementation(attn_implementation)
    clock = _StepClock(device)
    eos = model.generation_config.eos_token_id

    def generate():
        cache = make_cache()
        clock.start()
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            **{cache_argument(model): cache},
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList([clock]),
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=eos[0] if isinstance(eos, list) else eos,
        )
        return (out.sequences[:, ids.shape[1] :], torch.stack(out.logits, 1).float()), cache

    try:
        with torch.inference_mode():
            for _ in range(warmup):
                generate()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            generated, cache = generate()
            gaps = clock.gaps_ms()
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) - before
            else:  # the CPU profiler slows the run it watches: a separate, untimed one
                peak = cpu_allocation_peak(generate)
            agreement = {}
            if reference is not None:
                forced = teacher_forced_logits(model, ids, reference[0], make_cache())
                agreement = _agreement(generated[0], forced, reference)
    except Unsupported as err:
        return ModelRun(label, attn_implementation, cache_name, "unsupported", str(err)), None
    except torch.OutOfMemoryError as err:
        return ModelRun(label, attn_implementation, cache_name, "oom", str(err)[:200]), None
    decode = summarize(gaps[1:]) if len(gaps) > 1 else None
    return ModelRun(
        label,
        attn_implementation,
        cache_name,
        prefill_ms=gaps[0],
        decode_ms_per_token=decode and decode.latency_ms,
        decode_iqr_ms=decode and decode.latency_iqr_ms,
        tokens_per_s=decode and ids.shape[0] * 1e3 / decode.latency_ms,
        peak_mem_bytes=peak,
        kv_cache_bytes=cache_nbytes(cache),
        **agreement,
    ), generated
