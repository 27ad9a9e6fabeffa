"""A per-layer KV format for a quality budget: :func:`search_layer_map`.

Layers differ in how much quantizing their cache costs the model. The search measures it,
one layer at a time, and spends the budget on the layers that cost least:

1. **Uniform formats.** Every candidate format on every layer, scored against the reference:
   the best uniform answer is the smallest cache whose KL meets ``max_kl``.
2. **One-at-a-time sensitivity.** For a ``cheap`` format (smaller, worse) and a ``safe`` one
   (larger, within budget), each layer alone gets ``cheap`` while the others keep ``safe``; the
   KL above the all-``safe`` cache is that layer's cost.
3. **Greedy fill, then bisection.** Layers sorted by cost turn ``cheap`` while the summed costs
   stay within the budget. The sum is a model (costs of several layers compound, and the probe
   is short), the measurement is the answer: the map of that many layers is measured, then the
   count is bisected between the largest measured count within ``max_kl`` and the smallest
   over it, ``rounds`` measurements in all; the smallest measured map within it wins.

Quality is :func:`sdpalab.run.quality.measure_quality`'s: KL(reference || cache) of the next-token
distributions through the cache, teacher-forced on windows of a text; bytes are what each cache
holds, measured. The sensitivity pass may use fewer tokens (``probe``) than the final
measurements, which always use the full settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdpalab.attention.kvlayers import canonical_kv_quant
from sdpalab.models.loading import LoadedModel, load_model
from sdpalab.models.quality import QualityRun
from sdpalab.run.quality import measure_quality
from sdpalab.spec import Variant


@dataclass(frozen=True)
class Scoring:
    """How many tokens a quality measurement scores."""

    context: int = 512
    eval_tokens: int = 128
    windows: int = 4

    def kwargs(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LayerCost:
    layer: int
    kl: float
    """KL of the cache with this layer ``cheap`` and the others ``safe``."""
    cost: float
    """``kl`` above the all-``safe`` cache's KL (the same probe settings)."""


@dataclass(frozen=True)
class LayerMapResult:
    max_kl: float
    cheap: str
    safe: str
    uniform: tuple[QualityRun, ...]
    """Each candidate format on every layer, full settings."""
    costs: tuple[LayerCost, ...]
    """Per layer, layer 0 first (probe settings)."""
    maps: tuple[QualityRun, ...]
    """The greedy maps measured, full settings."""
    best_uniform: QualityRun | None
    """The smallest uniform cache within ``max_kl`` (None: none is)."""
    best_map: QualityRun | None
    """The smallest measured map within ``max_kl`` (None: none is)."""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def saving(self) -> float | None:
        """``best_uniform`` bytes over ``best_map`` bytes (> 1: the map is smaller)."""
        if self.best_uniform is None or self.best_map is None:
            return None
        return self.best_uniform.kv_cache_bytes / self.best_map.kv_cache_bytes


def layer_map(cheap: str, safe: str, cheap_layers: list[int]) -> str:
    """The ``kv_quant`` map with ``cheap_layers`` in ``cheap`` and every other layer ``safe``."""
    if not cheap_layers:
        return safe
    return canonical_kv_quant(",".join([*(f"{cheap}@{i}" for i in cheap_layers), safe]))


def greedy_layers(costs: list[LayerCost], base_kl: float, max_kl: float) -> list[int]:
    """The cheapest-first layers whose summed costs keep ``base_kl`` within ``max_kl``."""
    chosen, total = [], base_kl
    for c in sorted(costs, key=lambda c: (c.cost, c.layer)):
        if total + max(c.cost, 0.0) > max_kl:
            break
        chosen.append(c.layer)
        total += max(c.cost, 0.0)
    return chosen


def _within(run: QualityRun, max_kl: float) -> bool:
    return run.status == "ok" and run.kl_mean_nats is not None and run.kl_mean_nats <= max_kl


def _smallest(runs, max_kl: float) -> QualityRun | None:
    fits = [r for r in runs if _within(r, max_kl)]
    return min(fits, key=lambda r: (r.kv_cache_bytes, r.kl_mean_nats), default=None)


def _cheap_for(safe: QualityRun, uniform: list[QualityRun]) -> str:
    """Of the uniform runs smaller than ``safe``, the one saving most bytes per KL added."""
    smaller = [r for r in uniform if r.status == "ok" and r.kv_cache_bytes < safe.kv_cache_bytes]
    if not smaller:
        raise ValueError(f"{safe.variant['kv_quant']} is the smallest format: nothing to mix in")

    def bytes_per_kl(r: QualityRun) -> float:
        added = max(r.kl_mean_nats - safe.kl_mean_nats, 1e-12)
        return (safe.kv_cache_bytes - r.kv_cache_bytes) / added

    return max(smaller, key=bytes_per_kl).variant["kv_quant"]


def search_layer_map(
    model: str | LoadedModel,
    *,
    max_kl: float,
    formats: tuple[str, ...] = ("int8", "kivi4", "int4", "kivi2"),
    cheap: str | None = None,
    kv_cache: str = "static",
    kv_args: dict[str, Any] | None = None,
    text: str | None = None,
    scoring: Scoring = Scoring(),
    probe: Scoring | None = None,
    rounds: int = 4,
    on_stage: Callable[[str], None] | None = None,
) -> LayerMapResult:
    """The smallest per-layer map of ``formats`` within ``max_kl``, beside the best uniform one.

    ``safe`` is the smallest uniform format within ``max_kl``; ``cheap`` is what the layers
    that cost least turn into (default: of the uniform formats smaller than ``safe``, the one
    that saves the most bytes per unit of KL it adds).
    ``kv_args``: for every cache (e.g. ``{"smooth_keys": 1}``). ``probe``: the settings of the per-layer pass (default: ``scoring``). ``rounds``: maps
    measured with the full settings. Raises ``ValueError`` when no uniform
    format meets ``max_kl`` or none is smaller than the one that does.
    """
    say = on_stage or (lambda _msg: None)
    loaded = load_model(model) if isinstance(model, str) else model
    layers = loaded.model.config.num_hidden_layers
    probe = probe or scoring

    def measure(kv_quants: list[str], settings: Scoring) -> list[QualityRun]:
        variants = [
            Variant(kv_cache=kv_cache, kv_quant=q, kv_args=dict(kv_args or {})) for q in kv_quants
        ]
        report = measure_quality(loaded, variants, text=text, **settings.kwargs())
        return list(report.runs[1:])

    say(f"uniform formats: {', '.join(formats)}")
    uniform = measure(list(formats), scoring)
    safe_run = _smallest(uniform, max_kl)
    if safe_run is None:
        raise ValueError(f"no uniform format of {', '.join(formats)} meets max_kl={max_kl}")
    safe = safe_run.variant["kv_quant"]
    if cheap is None:
        cheap = _cheap_for(safe_run, uniform)

    say(f"per-layer cost of {cheap} over {safe}: {layers} layers")
    probed = measure([safe, *(layer_map(cheap, safe, [i]) for i in range(layers))], probe)
    base_kl = probed[0].kl_mean_nats
    costs = [
        LayerCost(i, r.kl_mean_nats, r.kl_mean_nats - base_kl) for i, r in enumerate(probed[1:])
    ]
    order = [c.layer for c in sorted(costs, key=lambda c: (c.cost, c.layer))]
    count = max(1, len(greedy_layers(costs, base_kl, max_kl)))
    fits, over = 0, layers + 1  # counts known to meet / to break the budget
    maps: list[QualityRun] = []
    for _ in range(rounds):
        if count <= fits or count >= over:
            break
        kv_quant = layer_map(cheap, safe, sorted(order[:count]))
        say(f"measuring {count} layers {cheap}: {kv_quant}")
        run = measure([kv_quant], scoring)[0]
        maps.append(run)
        if _within(run, max_kl):
            fits = count
        else:
            over = count
        count = (fits + over) // 2 if over <= layers else min(layers, 2 * count)
    return LayerMapResult(
        max_kl=max_kl,
        cheap=cheap,
        safe=safe,
        uniform=tuple(uniform),
        costs=tuple(costs),
        maps=tuple(maps),
        best_uniform=safe_run,
        best_map=_smallest(maps, max_kl),
        settings={
            "scoring": scoring.kwargs(),
            "probe": probe.kwargs(),
            "kv_cache": kv_cache,
            "kv_args": kv_args or {},
        },
    )
