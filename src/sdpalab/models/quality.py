"""A model's quality through a KV cache, where users feel it: its next-token distributions.

Each window of a text is scored teacher-forced: ``context`` tokens are prefilled into a fresh
cache, then the next tokens are fed through that same cache (one a step, as decoding does, or in
chunks), and every position's next-token log-probabilities are kept. Against a reference run over
the same tokens (the same model with an unquantized cache), per token:

- negative log-likelihood of the true next token, the variant's and the reference's: perplexity is
  ``exp`` of their mean, and the paired differences give its change with a 95 % interval;
- ``KL(reference || variant)`` of the two next-token distributions, in nats;
- whether the two put their largest probability on the same token (top-1 agreement).

The interval treats the scored tokens as independent samples of the paired difference; neighbours
in one window are correlated, so it is a little narrower than a window-level one would be.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sdpalab.models.loading import cache_argument
from sdpalab.models.quiet import quiet_libraries

Z95 = 1.959963984540054
"""Two-sided 95 % quantile of the standard normal."""


@dataclass(frozen=True)
class TokenScores:
    """Per-token scores of one variant against the reference, each ``[n_tokens]`` (float64,
    top-1 bool), the scored tokens of every window concatenated in order."""

    nll: torch.Tensor
    """The variant's negative log-likelihood of the true next token, in nats."""
    ref_nll: torch.Tensor
    """The reference's, on the same tokens."""
    kl: torch.Tensor
    """``KL(reference || variant)`` of the next-token distributions, in nats (clamped at 0
    against rounding)."""
    top1: torch.Tensor
    """The two distributions' most probable tokens are the same."""

    @staticmethod
    def cat(parts: list[TokenScores]) -> TokenScores:
        """The scores of several windows as one."""
        fields = ("nll", "ref_nll", "kl", "top1")
        return TokenScores(*(torch.cat([getattr(p, f) for p in parts]) for f in fields))


@dataclass(frozen=True)
class QualityRun:
    """One cache configuration's quality against the reference, pooled over every scored token.

    Perplexities are ``exp(mean NLL)`` in nats; ``*_lo``/``*_hi`` bound the 95 % interval of the
    change, paired over the same tokens. The reference's own row has a change of 0, KL 0 and
    agreement 1.
    """

    label: str
    """The variant's label, or ``reference``."""
    cache: str
    """The cache it ran with, e.g. ``SdpalabCache(static+int4)`` or ``DynamicCache``."""
    variant: dict[str, Any] | None = None
    """The Variant's fields (``Variant.to_dict``); None for the reference."""
    status: str = "ok"
    """``ok``, ``unsupported`` or ``oom`` (then ``reason`` says why)."""
    reason: str = ""
    scored_tokens: int | None = None
    perplexity: float | None = None
    ppl_delta: float | None = None
    """``perplexity`` minus the reference's."""
    ppl_delta_lo: float | None = None
    ppl_delta_hi: float | None = None
    ppl_delta_pct: float | None = None
    """``ppl_delta`` relative to the reference's perplexity, in percent."""
    ppl_delta_pct_lo: float | None = None
    ppl_delta_pct_hi: float | None = None
    kl_mean_nats: float | None = None
    """Mean over tokens of ``KL(reference || variant)``."""
    kl_max_nats: float | None = None
    top1_agreement: float | None = None
    """Fraction of tokens whose most probable next token is the reference's."""
    kv_cache_bytes: int | None = None
    """What the cache holds for one sequence of ``context + eval_tokens - 1`` tokens (values,
    scales, zeros, KIVI's full-precision residual); a static cache counts its whole capacity."""
    eval_s: float | None = None
    """Wall time of scoring every window (prefill and teacher-forced steps)."""


@quiet_libraries()
def forced_logprobs(
    model: torch.nn.Module,
    ids: torch.Tensor,
    cache: Any,
    *,
    context: int,
    chunk: int = 1,
    on_forward: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Next-token log-probabilities ``[B, n, V]`` (float32) of ``ids[:, context:]`` given all
    tokens before each, through ``cache``.

    ``ids [B, context + n]``: the first ``context`` tokens are prefilled in one forward (its last
    position predicts ``ids[:, context]``), then ``ids[:, context:-1]`` are fed ``chunk`` tokens
    a forward, each position predicting the next. ``on_forward`` is called after each forward.
    """
    n = ids.shape[1] - context
    if context < 1 or n < 1:
        raise ValueError(f"need at least 1 context and 1 scored token; got {context} and {n}")
    params = set(inspect.signature(model.forward).parameters)
    with_cache = {cache_argument(model): cache}
    # Only the prefill's last position is scored: don't compute [B, context, V] logits for it.
    keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    with torch.inference_mode():
        logits = [model(input_ids=ids[:, :context], **with_cache, **keep).logits[:, -1:]]
        if on_forward:
            on_forward()
        for start in range(context, context + n - 1, chunk):
            stop = min(start + chunk, context + n - 1)
            logits.append(model(input_ids=ids[:, start:stop], **with_cache).logits)
            if on_forward:
                on_forward()
        return torch.log_softmax(torch.cat(logits, 1).float(), dim=-1)


def forwards_per_window(eval_tokens: int, chunk: int) -> int:
    """How many forwards :func:`forced_logprobs` runs to score ``eval_tokens`` tokens."""
    return 1 + math.ceil((eval_tokens - 1) / chunk)


def token_scores(
    ref_logprobs: torch.Tensor, logprobs: torch.Tensor, targets: torch.Tensor
) -> TokenScores:
    """Per-token scores of ``logprobs`` against ``ref_logprobs`` (both ``[B, n, V]``) for the
    true next tokens ``targets [B, n]``, flattened to ``[B * n]`` in row order."""
    if ref_logprobs.shape != logprobs.shape or logprobs.shape[:2] != targets.shape:
        raise ValueError(
            f"shapes differ: reference {tuple(ref_logprobs.shape)}, run {tuple(logprobs.shape)}, "
            f"targets {tuple(targets.shape)}"
        )
    idx = targets.unsqueeze(-1)
    nll = -logprobs.gather(-1, idx).squeeze(-1)
    ref_nll = -ref_logprobs.gather(-1, idx).squeeze(-1)
    # One row at a time: the float32 [n, V] products stay small beside the inputs.
    kl = torch.stack(
        [(r.exp() * (r - v)).sum(-1) for r, v in zip(ref_logprobs, logprobs, strict=True)]
    ).clamp_min(0)
    top1 = ref_logprobs.argmax(-1) == logprobs.argmax(-1)
    return TokenScores(*(x.reshape(-1).double() for x in (nll, ref_nll, kl)), top1=top1.reshape(-1))


def paired_ci95(diffs: torch.Tensor) -> tuple[float, float, float]:
    """Mean of paired differences ``[n]`` and its 95 % normal interval: ``(mean, lo, hi)``
    (``lo == hi == mean`` for fewer than 2 samples or no spread)."""
    mean = diffs.double().mean().item()
    if diffs.numel() < 2:
        return mean, mean, mean
    half = Z95 * diffs.double().std().item() / math.sqrt(diffs.numel())
    return mean, mean - half, mean + half


def summarize_quality(scores: TokenScores) -> dict[str, float | int]:
    """The pooled :class:`QualityRun` fields of ``scores``: perplexity, its change against the
    reference with the paired 95 % interval, KL mean and max, top-1 agreement."""
    ref_ppl = math.exp(scores.ref_nll.mean().item())
    # ppl = exp(mean NLL), so the change in log-perplexity is the mean paired NLL difference.
    mean, lo, hi = paired_ci95(scores.nll - scores.ref_nll)
    ratio = [math.expm1(x) for x in (mean, lo, hi)]
    return dict(
        scored_tokens=scores.nll.numel(),
        perplexity=ref_ppl * math.exp(mean),
        ppl_delta=ref_ppl * ratio[0],
        ppl_delta_lo=ref_ppl * ratio[1],
        ppl_delta_hi=ref_ppl * ratio[2],
        ppl_delta_pct=100 * ratio[0],
        ppl_delta_pct_lo=100 * ratio[1],
        ppl_delta_pct_hi=100 * ratio[2],
        kl_mean_nats=scores.kl.mean().item(),
        kl_max_nats=scores.kl.max().item(),
        top1_agreement=scores.top1.double().mean().item(),
    )
