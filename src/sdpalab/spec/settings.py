"""How a trial is measured (:class:`MeasureSettings`) and what a recommendation must meet
(:class:`Constraints`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MeasureSettings:
    """How a trial is measured (part of the trial's identity)."""

    warmup: int = 3
    repeats: int = 20
    timeout_s: float = 300.0
    flush_l2: bool = False
    cuda_graph: bool = True
    """On a CUDA device, time replays of the call captured in a CUDA graph (the device's time,
    as a serving loop that replays its decode steps sees it), falling back to plain events
    when the call cannot be captured; ``Result.timing_method`` says which."""
    check_accuracy: bool = True
    memory: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.warmup, int) or isinstance(self.warmup, bool) or self.warmup < 0:
            raise ValueError(f"warmup={self.warmup!r} must be a non-negative integer")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"repeats={self.repeats!r} must be a positive integer")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s={self.timeout_s!r} must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self, device: Any) -> dict[str, Any]:
        """The settings that make a trial on ``device`` what it is (for its id): ``cuda_graph``
        only on a CUDA device, where it changes what is timed; elsewhere it changes nothing,
        and trials stored before it existed keep their ids."""
        out = self.to_dict()
        if not str(device).startswith("cuda"):
            del out["cuda_graph"]
        return out


@dataclass(frozen=True)
class Constraints:
    """Budgets a recommendation must meet; ``None`` means no limit."""

    max_error: float | None = None
    """Largest relative Frobenius error against the float64 oracle."""
    max_memory: int | None = None
    """Largest total peak memory, bytes: inputs, KV cache and the call's own peak
    (``Result.peak_mem_total_bytes``), as the search and the recommendation check it."""
    max_latency_ms: float | None = None
    max_kl: float | None = None
    """Largest mean KL divergence of a model's next-token distributions from the stock
    model's, in nats (``Result.kl_mean_nats``; model workloads only)."""
    max_ppl_increase: float | None = None
    """Largest perplexity increase over the stock model's, in percent
    (``Result.ppl_delta_pct``; model workloads only)."""
    allow_approximate: bool = False
    """Whether a variant computing another mask than the one its workload names (an
    approximation, its error measured against the workload's mask) may be recommended, be on a
    front, or be searched. A permission, not a limit."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def limits(self) -> dict[str, Any]:
        """The limits set (the ``max_*`` fields that are not ``None``): name → bound."""
        return {k: v for k, v in self.to_dict().items() if k.startswith("max_") and v is not None}
