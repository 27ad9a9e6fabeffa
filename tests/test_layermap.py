"""The per-layer map search (``explore/layermap.py``) on a model of its measurements: layers
whose costs compound, so the additive guess overshoots and the bisection must correct it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sdpalab.attention.kvlayers import layer_formats
from sdpalab.explore import layermap
from sdpalab.explore.layermap import Scoring, layer_map, search_layer_map
from sdpalab.models.quality import QualityRun

LAYERS = 10
BYTES = {"int8": 100, "kivi4": 90, "int4": 50, "kivi2": 70}
KL = {"int8": 0.001, "kivi4": 0.004, "int4": 0.2, "kivi2": 0.4}
COST = [0.0005 * (i + 1) for i in range(LAYERS)]  # layer i's cost of int4 over kivi4


def fake_kl(kv_quant: str) -> float:
    formats = layer_formats(kv_quant, LAYERS)
    if len(set(formats)) == 1:
        return KL[formats[0]]
    cheap = [i for i, f in enumerate(formats) if f == "int4"]
    extra = sum(COST[i] for i in cheap)
    return KL["kivi4"] + extra * (1 + 0.3 * len(cheap))  # several layers compound


def fake_measure(loaded, variants, *, text=None, **sizes):
    runs = [QualityRun("reference", "DynamicCache")]
    for v in variants:
        formats = layer_formats(v.kv_quant, LAYERS)
        runs.append(
            QualityRun(
                v.label(), "SdpalabCache", v.to_dict(),
                kv_cache_bytes=sum(BYTES[f] for f in formats), kl_mean_nats=fake_kl(v.kv_quant),
            )
        )  # fmt: skip
    return SimpleNamespace(runs=runs)


@pytest.fixture
def model(monkeypatch):
    monkeypatch.setattr(layermap, "measure_quality", fake_measure)
    return SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(num_hidden_layers=LAYERS)))


def test_the_map_beats_the_best_uniform_format_within_the_budget(model):
    stages = []
    result = search_layer_map(model, max_kl=0.01, scoring=Scoring(8, 2, 1), on_stage=stages.append)
    assert (result.safe, result.cheap) == ("kivi4", "int4")  # int4 saves most bytes per KL
    assert result.best_uniform.variant["kv_quant"] == "kivi4"
    best = result.best_map
    assert best is not None and best.kl_mean_nats <= 0.01
    assert best.kv_cache_bytes < result.best_uniform.kv_cache_bytes and result.saving > 1
    # the cheapest layers (0, 1, ...) turn first, and the largest count within budget is found
    cheap = [
        i for i, f in enumerate(layer_formats(best.variant["kv_quant"], LAYERS)) if f == "int4"
    ]
    assert cheap == list(range(len(cheap)))
    assert fake_kl(layer_map("int4", "kivi4", list(range(len(cheap) + 1)))) > 0.01
    assert len(result.maps) <= 4 and any(r.kl_mean_nats > 0.01 for r in result.maps)
    assert len(stages) >= 3


def test_no_uniform_format_within_the_budget_is_a_clear_error(model):
    with pytest.raises(ValueError, match="no uniform format"):
        search_layer_map(model, max_kl=1e-6, scoring=Scoring(8, 2, 1))


def test_maps_are_written_the_one_way():
    assert layer_map("int4", "kivi4", []) == "kivi4"
    assert layer_map("int4", "kivi4", [3, 0, 1]) == "int4@0-1,int4@3,kivi4"
