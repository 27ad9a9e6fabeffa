"""The analytic memory model matches what the caches allocate, and plans a context length."""

import pytest
import torch

import sdpalab.spec as spec
from sdpalab.attention import kvplan
from sdpalab.attention.kvplan import cache_bytes_model, plan_table, step_bytes_model
from sdpalab.build import make_cached_attention

SMOOTH = {"smooth_keys": 1}  # the key means count too
GEOMETRIES = [
    # (batch, heads_q, heads_kv, head_dim, dtype, tokens, kv_args)
    (3, 12, 4, 80, "float32", 53,
     {"page_size": 4, "window": 16, "group_size": 8, "residual": 8, **SMOOTH}),
    (2, 8, 2, 128, "bfloat16", 200, {"page_size": 16, "window": 64}),
    (1, 4, 4, 64, "float16", 131, {"page_size": 128, "window": 7, "max_len": 150, **SMOOTH}),
]  # fmt: skip


def _cases():
    for geometry in GEOMETRIES:
        for layout in ("dynamic", "static", "sliding", "paged"):
            for fmt in kvplan.KV_QUANTS:
                if fmt.startswith("kivi") and layout in ("sliding", "paged"):
                    continue
                yield (*geometry, layout, fmt)


@pytest.mark.parametrize(
    ("batch", "heads_q", "heads_kv", "head_dim", "dtype", "tokens", "kv_args", "layout", "fmt"),
    list(_cases()),
)
def test_model_matches_allocation(
    batch, heads_q, heads_kv, head_dim, dtype, tokens, kv_args, layout, fmt
):
    wl = spec.Workload(
        phase="decode",
        batch=batch,
        heads_q=heads_q,
        heads_kv=heads_kv,
        seq_kv=tokens,
        head_dim=head_dim,
        dtype=dtype,
    )
    kv_args = {k: v for k, v in kv_args.items() if k != "window" or layout == "sliding"}
    variant = spec.Variant(backend="math", kv_cache=layout, kv_quant=fmt, kv_args=kv_args)
    cache = make_cached_attention(variant, wl)
    gen = torch.Generator().manual_seed(0)

    def rand(h):
        return torch.randn(batch, h, tokens, head_dim, generator=gen).to(wl.torch_dtype)

    cache(rand(heads_q), rand(heads_kv), rand(heads_kv))
    model = cache_bytes_model(
        kv_cache=layout,
        kv_quant=fmt,
        batch=batch,
        heads_kv=heads_kv,
        head_dim=head_dim,
        tokens=tokens,
        dtype_bytes=wl.torch_dtype.itemsize,
        rollback_tokens=wl.seq_q,
        **kv_args,
    )
    measured = cache.cache_bytes()
    assert abs(measured - model) <= 0.02 * model
    assert measured == model  # on the CPU the allocation is exact


def test_plan_table_at_128k():
    rows = plan_table(heads_kv=8, head_dim=128, layers=32, context=128 * 1024)
    by_quant = {row["kv_quant"]: row for row in rows}
    assert list(by_quant) == list(kvplan.KV_QUANTS)
    none = by_quant["none"]
    assert (
        none["total_bytes"] == 16 * 2**30
    )  # 2 (k, v) * 8 heads * 128 * 2 bytes * 32 layers * 128k
    assert none["bytes_per_token"] == 128 * 1024 and none["ratio_to_bf16"] == 1
    assert by_quant["int8"]["ratio_to_bf16"] <= 0.53
    assert by_quant["int4"]["ratio_to_bf16"] <= 0.30
    assert by_quant["kivi2"]["total_bytes"] < by_quant["kivi4"]["total_bytes"] < none["total_bytes"]
    for row in rows:
        assert row["total_bytes"] == pytest.approx(row["bytes_per_token"] * 128 * 1024)


def test_plan_table_options():
    rows = plan_table(
        heads_kv=8,
        head_dim=128,
        layers=2,
        context=4096,
        batch=4,
        dtype="float32",
        kv_quants=("none", "int4", "kivi4"),
        kv_cache="paged",
        page_size=256,
    )
    assert [row["kv_quant"] for row in rows] == ["none", "int4"]  # no KIVI on paged
    assert rows[0]["ratio_to_bf16"] == pytest.approx(2.0, rel=1e-3)  # float32 is twice bf16
    with pytest.raises(ValueError, match="choose one of"):
        plan_table(heads_kv=8, head_dim=128, layers=1, context=10, kv_quants=("int3",))
    with pytest.raises(ValueError, match="choose one of"):
        plan_table(heads_kv=8, head_dim=128, layers=1, context=10, dtype="float64")


def test_step_bytes():
    common = dict(batch=8, heads_q=32, heads_kv=8, head_dim=128, dtype_bytes=2)
    q_and_out = 2 * 8 * 32 * 128 * 2
    none = step_bytes_model(kv_cache="static", kv_quant="none", tokens=32768, **common)
    assert none == 8 * 8 * (32768 + 1) * 2 * 128 * 2 + q_and_out
    int4 = step_bytes_model(kv_cache="static", kv_quant="int4", tokens=32768, **common)
    assert int4 < 0.3 * none
    sliding = step_bytes_model(
        kv_cache="sliding", kv_quant="none", tokens=32768, window=4096, **common
    )
    assert sliding == 8 * 8 * (4096 + 1) * 2 * 128 * 2 + q_and_out
    kivi = step_bytes_model(kv_cache="static", kv_quant="kivi4", tokens=32768, **common)
    assert kivi < 0.35 * none


def test_per_layer_maps_sum_their_layers():
    geometry = dict(kv_cache="static", batch=2, heads_kv=3, head_dim=64, tokens=1280, dtype_bytes=4)
    one = {fmt: cache_bytes_model(kv_quant=fmt, **geometry) for fmt in ("int8", "kivi2", "none")}
    per_layer = kvplan.layer_cache_bytes(kv_quant="int8@0-1,none@29,kivi2", layers=30, **geometry)
    assert per_layer == [one["int8"]] * 2 + [one["kivi2"]] * 27 + [one["none"]]
    total = cache_bytes_model(kv_quant="int8@0-1,none@29,kivi2", layers=30, **geometry)
    assert total == sum(per_layer)
    assert cache_bytes_model(kv_quant="kivi2", layers=30, **geometry) < total
    with pytest.raises(ValueError, match="names layer 29; the model has 20 layers"):
        cache_bytes_model(kv_quant="int8@0-1,none@29,kivi2", layers=20, **geometry)
    steps = step_bytes_model(
        kv_quant="int8@0-1,kivi2", layers=30, heads_q=9, **{**geometry, "kv_cache": "dynamic"}
    )
    plain = {
        fmt: step_bytes_model(kv_quant=fmt, heads_q=9, **{**geometry, "kv_cache": "dynamic"})
        for fmt in ("int8", "kivi2")
    }
    assert steps == 2 * plain["int8"] + 28 * plain["kivi2"]


def test_plan_table_takes_per_layer_maps():
    rows = plan_table(
        heads_kv=3,
        head_dim=64,
        layers=30,
        context=2048,
        kv_quants=("int8", "kivi2", "kivi2, int8@1, int8@0"),
    )
    by_quant = {row["kv_quant"]: row["total_bytes"] for row in rows}
    mixed = by_quant["int8@0-1,kivi2"]  # written the one way
    assert mixed == (2 * by_quant["int8"] + 28 * by_quant["kivi2"]) / 30
    paged = plan_table(
        heads_kv=3, head_dim=64, layers=30, context=2048, kv_cache="paged",
        kv_quants=("int8", "int8@0-1,kivi2"),
    )  # fmt: skip
    assert [row["kv_quant"] for row in paged] == ["int8"]  # a map with KIVI: as KIVI
    with pytest.raises(ValueError, match="kv_quant='int8@0-1': a per-layer map needs"):
        plan_table(heads_kv=3, head_dim=64, layers=30, context=10, kv_quants=("int8@0-1",))
