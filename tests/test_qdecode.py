"""triton_qdecode (fused decode over a quantized KV cache) against the float64 oracle.

The oracle attends over the cache dequantized exactly (float64, from the layouts documented in
``kvquant``; a test checks that reading against ``kvquant.dequantize``), so the only error left is
the kernel's own arithmetic and the tolerance is ``tolerance(dtype, kv_len)``.

Without a GPU the kernels run in Triton's CPU interpreter (``tests/conftest.py`` sets
``TRITON_INTERPRET=1`` before triton is imported) on tiny shapes that still reach every path:
each format, GQA 4:1, 8:8 and 12:4, head_dim 64 and 80, lengths that are not multiples of the
block, several KV splits (the log-sum-exp merge), multi-token causal steps, several query tiles,
recent full-precision tokens. Tests marked ``gpu`` run the compiled kernels on the issue's
grid. The fast kernel's own tests are in ``test_qdecode_fast.py``; the shared case runner in
``qdecode_cases.py``.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from qdecode_cases import (
    FORMATS,
    _skip_fp8,
    check_case,
    cpu_only,
    dequantize_f64,
    run_case,
)
from sdpalab.attention.backends import make_attend
from sdpalab.attention.errors import Unsupported
from sdpalab.attention.kernels.qdecode import (
    CODES_PER_WORD,
    launch_geometry,
    qdecode_attention,
    qtensor_from_planes,
)
from sdpalab.attention.kvquant import QTensor, dequantize, quantize
from sdpalab.attention.kvstore import Codec
from sdpalab.attention.reference import attention_ref
from sdpalab.measure.accuracy import compare, tolerance

# ---------------------------------------------------------------- CPU (interpreter)

# (batch, heads_q, heads_kv, q_len, kv_len, head_dim, dtype, launch overrides)
CPU_CASES = [
    pytest.param((1, 4, 1, 1, 1, 64, torch.bfloat16, {}), id="one-token"),
    pytest.param((1, 8, 8, 1, 37, 80, torch.bfloat16, {}), id="mha-d80-odd"),
    pytest.param((1, 12, 4, 1, 300, 64, torch.bfloat16, {"block_n": 64, "splits": 3}), id="gqa3-split3"),
    pytest.param((2, 4, 1, 3, 130, 64, torch.float16, {"block_n": 32, "splits": 2}), id="step3-fp16-split"),
    pytest.param((2, 4, 1, 2, 200, 80, torch.float32, {"block_n": 64}), id="fp32-d80-b2"),
    pytest.param((1, 12, 4, 7, 96, 64, torch.bfloat16, {"block_n": 32, "splits": 1}), id="step7-nosplit"),
    pytest.param((1, 12, 4, 3, 150, 80, torch.float32, {"block_n": 32, "splits": 2, "tile_rows": 4}), id="fp32-tile4"),
    pytest.param((1, 4, 2, 1, 1100, 80, torch.bfloat16, {"block_n": 16, "splits": 40}), id="merge-d-chunks"),
]  # fmt: skip


@pytest.mark.slow  # 40 s of Triton interpreter: every format on every case
@cpu_only
@pytest.mark.parametrize("case", CPU_CASES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_oracle_interpreted(fmt, case):
    *shape, dtype, launch = case
    check_case(fmt, *shape, dtype, **launch)


@cpu_only
@pytest.mark.parametrize("fmt", ["int8", "int4", "kivi2"])
def test_several_query_tiles_with_causal_bounds(fmt):
    # G * q_len = 8 * 9 = 72 rows: two tiles of 64, each with its own last visible key
    check_case(fmt, 1, 8, 1, 9, 150, 64, torch.bfloat16, block_n=32, splits=2)
    check_case(fmt, 1, 8, 1, 5, 70, 64, torch.float32, block_n=32)  # tiles of 32 rows in fp32


@cpu_only
def test_split_merge_agrees_with_one_pass():
    kw = dict(block_n=32, seed=3)
    one, ref = run_case("int8", 1, 4, 2, 1, 250, 64, torch.float32, splits=1, **kw)
    for splits in (2, 5, 8):
        many, _ = run_case("int8", 1, 4, 2, 1, 250, 64, torch.float32, splits=splits, **kw)
        assert compare(many, one.double()).rel_fro_err < 1e-6
    assert compare(one, ref).rel_fro_err <= tolerance(torch.float32, 250)


@cpu_only
@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
def test_quantized_then_recent_tokens(fmt):
    check_case(fmt, 2, 8, 2, 2, 150, 64, torch.bfloat16, recent=21, block_n=32, splits=3)


@cpu_only
@pytest.mark.parametrize("fmt", ["int8", "int4", "kivi4"])
def test_views_into_a_larger_static_buffer(fmt):
    check_case(fmt, 2, 4, 2, 1, 100, 64, torch.float16, capacity=256, block_n=32)


@cpu_only
def test_strided_queries_and_first_call_prefill():
    check_case("int4", 1, 4, 2, 1, 90, 64, torch.bfloat16, transpose_q=True, block_n=32)
    check_case("int8", 1, 4, 2, 24, 24, 64, torch.float32, block_n=16)  # prefill: q_len == kv_len


@cpu_only
def test_not_causal():
    check_case("int4", 1, 4, 4, 4, 50, 64, torch.float32, causal=False, block_n=16)


@cpu_only
def test_rows_that_see_no_key_are_zero():
    # causal with q_len > kv_len: the first two queries precede every key (oracle: zeros)
    out, ref = run_case("int8", 1, 4, 4, 5, 3, 64, torch.float32, block_n=16)
    assert torch.equal(out[:, :, :2], torch.zeros_like(out[:, :, :2]))
    assert compare(out, ref).rel_fro_err <= tolerance(torch.float32, 3)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "none"])
def test_exact_dequantization_reads_kvquant_layouts(fmt):
    _skip_fp8(fmt, "cpu")
    x = torch.randn(2, 3, 64, 80) * 3 - 1
    for role in ("key", "value"):
        qt = quantize(x, fmt, role=role)
        exact = dequantize_f64(qt)
        # kvquant computes c * scale + zero in float32: two roundings at most
        slack = 2**-22 * (exact.abs() + qt.scale.double().abs().max() * 16) + 1e-30
        assert ((dequantize(qt).double() - exact).abs() <= slack).all(), (fmt, role)


@cpu_only
@pytest.mark.parametrize("fmt", FORMATS)
def test_cache_planes_give_the_same_output(fmt):
    """What a cache stores (kvstore.Codec planes) read through qtensor_from_planes."""
    _skip_fp8(fmt, "cpu")
    gen = torch.Generator().manual_seed(1)
    k = torch.randn(1, 2, 64, 64, generator=gen)
    v = torch.randn(1, 2, 64, 64, generator=gen)
    q = torch.randn(1, 4, 1, 64, generator=gen).to(torch.bfloat16)
    attend = make_attend("triton_qdecode", "causal", {})
    assert attend.reads_quantized
    if fmt == "none":
        out = attend(q, k.to(torch.bfloat16), v.to(torch.bfloat16))
        ref = attention_ref(q, k.to(torch.bfloat16), v.to(torch.bfloat16), "causal")
        assert compare(out, ref).rel_fro_err <= tolerance(torch.bfloat16, 64)
        return
    kc = Codec(fmt, "key", 64, torch.bfloat16, "cpu")
    vc = Codec(fmt, "value", 64, torch.bfloat16, "cpu")
    kq, vq = qtensor_from_planes(kc, kc.encode(k)), qtensor_from_planes(vc, vc.encode(v))
    out = attend.attend_quantized(q, kq, vq)
    direct = qdecode_attention(q, quantize(k, fmt, role="key"), quantize(v, fmt, role="value"))
    assert torch.equal(out, direct)


def test_backend_refuses_other_mods_and_machines(monkeypatch):
    with pytest.raises(Unsupported, match="mods none, causal"):
        make_attend("triton_qdecode", "sliding_window", {"window": 8})
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(Unsupported, match=r"needs a CUDA GPU \(or TRITON_INTERPRET=1"):
        make_attend("triton_qdecode", "causal", {})


def test_head_dim_must_fill_whole_words():
    q = torch.randn(1, 2, 1, 36)
    kq = quantize(torch.randn(1, 2, 8, 36), "int4")
    with pytest.raises(Unsupported, match="multiple of 8"):
        qdecode_attention(q, kq, kq)
    assert CODES_PER_WORD["kivi2"] == 16


@pytest.mark.parametrize("batch,kv_len", [(1, 1), (1, 4096), (1, 131072), (8, 32768), (32, 4096)])
def test_splits_cover_the_sequence_in_whole_blocks(batch, kv_len):
    geo = launch_geometry(
        batch=batch, heads_q=32, heads_kv=8, q_len=1, kv_len=kv_len, fmt="int8",
        dtype=torch.bfloat16, device=torch.device("cpu"),
    )  # fmt: skip
    assert geo["chunk"] % geo["block_n"] == 0
    assert geo["splits"] * geo["chunk"] >= kv_len > (geo["splits"] - 1) * geo["chunk"]
    assert geo["block_m"] == 16 and geo["m_tiles"] == 1


# ---------------------------------------------------------------- GPU (compiled)

# A sample of the grid: GQA 1/4/8, head_dim 64/80/128, batch 1..32, context 1..128k,
# each shape with the formats listed after it.
# (batch, heads_q, heads_kv, q_len, kv_len, head_dim, dtype): formats
ALL = " ".join(FORMATS)
GPU_GRID = {
    (1, 32, 8, 1, 131072, 128, torch.bfloat16): "int8 int4 fp8 kivi2",
    (8, 32, 8, 1, 32768 - 5, 128, torch.bfloat16): ALL,
    (32, 32, 32, 1, 4099, 64, torch.bfloat16): "none int8 int4 kivi4",
    (4, 32, 4, 1, 12345, 80, torch.float16): ALL,
    (2, 16, 2, 4, 8191, 128, torch.bfloat16): "int8 int4 fp8 kivi4 kivi2",
    (3, 8, 8, 1, 1, 128, torch.float32): ALL,
    (16, 8, 1, 1, 2000, 80, torch.float32): "none int8 int4 kivi2",
}
GPU_CASES = [
    pytest.param(fmt, shape, id=f"{fmt}-" + "x".join(map(str, shape[:6])) + f"-{str(shape[6])[6:]}")
    for shape, fmts in GPU_GRID.items()
    for fmt in fmts.split()
]


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,shape", GPU_CASES)
def test_matches_oracle_on_gpu(fmt, shape):
    check_case(fmt, *shape, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
def test_one_split_and_many_splits_on_gpu(fmt):
    check_case(fmt, 1, 16, 2, 3, 700, 80, torch.float16, device="cuda", splits=1)
    check_case(fmt, 1, 16, 2, 3, 700, 80, torch.float16, device="cuda", splits=6, block_n=64)


@pytest.mark.gpu
def test_gpu_recent_tokens_and_static_views():
    check_case("int4", 4, 32, 8, 1, 3000, 128, torch.bfloat16, device="cuda", recent=77)
    check_case("int8", 4, 32, 8, 2, 3000, 128, torch.bfloat16, device="cuda", capacity=4096)
    check_case("kivi2", 2, 32, 8, 1, 3000, 128, torch.bfloat16, device="cuda", capacity=4096)


# ---------------------------------------------------------------- through a cache


def _decode_stream(backend, fmt, layout, device, steps=3, prompt=70, kv_args=None):
    import sdpalab as sl

    wl = sl.Workload(phase="decode", batch=1, heads_q=8, heads_kv=2, seq_kv=prompt + steps,
                     head_dim=64, dtype="bfloat16", device=device)  # fmt: skip
    variant = sl.Variant(backend=backend, kv_cache=layout, kv_quant=fmt, kv_args=kv_args or {})
    attn = sl.build(variant, wl)
    gen = torch.Generator(device).manual_seed(5)
    outs = []
    for n in [prompt] + [1] * steps:
        q = torch.randn(1, 8, n, 64, generator=gen, device=device).bfloat16()
        k = torch.randn(1, 2, n, 64, generator=gen, device=device).bfloat16()
        v = torch.randn(1, 2, n, 64, generator=gen, device=device).bfloat16()
        outs.append(attn(q, k, v))
    return outs


def _check_stream(fmt, layout, device, kv_args=None):
    _skip_fp8(fmt, device)
    ours = _decode_stream("triton_qdecode", fmt, layout, device, kv_args=kv_args)
    theirs = _decode_stream("math", fmt, layout, device, kv_args=kv_args)
    for a, b in zip(ours, theirs, strict=True):
        # both attend to the cache's tokens; the fused kernel may read them without the bf16
        # rounding of the dequantized copy, so allow each side its bf16 tolerance
        assert compare(a, b.double()).rel_fro_err <= 2 * tolerance(torch.bfloat16, 80)


@cpu_only
@pytest.mark.parametrize(
    "fmt,layout", [("int8", "static"), ("int4", "dynamic"), ("kivi2", "static")]
)
def test_cached_decode_matches_math_backend(fmt, layout):
    """Prefill then single-token steps through ``sl.build``: the same outputs as SDPA math on the
    same cache (whether or not the cache hands the kernel its quantized planes)."""
    _check_stream(fmt, layout, "cpu")


@cpu_only
@pytest.mark.parametrize("fmt,layout", [("int4", "dynamic"), ("kivi4", "static")])
def test_smoothed_keys_through_the_fused_kernel(fmt, layout):
    """The kernel reads the stored keys (less their prefill means) as they are: the same outputs
    as SDPA math on the same smoothed cache."""
    _check_stream(fmt, layout, "cpu", {"smooth_keys": 1})


@pytest.mark.gpu
@pytest.mark.parametrize("smooth", [False, True], ids=["plain", "smooth_keys"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_cached_decode_matches_math_backend_on_gpu(fmt, smooth):
    _check_stream(fmt, "static", "cuda", {"smooth_keys": 1} if smooth else None)


@cpu_only
@pytest.mark.parametrize(
    "fmt,layout",
    [
        ("int8", "static"),
        ("int4", "dynamic"),
        ("fp8", "paged"),
        ("kivi4", "static"),
        ("kivi2", "dynamic"),
    ],
)
def test_cache_hands_the_kernel_its_quantized_planes(monkeypatch, fmt, layout):
    """With the fused backend the cache passes its stored codes, never a dequantized copy."""
    _skip_fp8(fmt, "cpu")
    from sdpalab.attention.kernels.qdecode import QDecodeAttend

    calls = []
    real = QDecodeAttend.attend_quantized

    def spy(self, q, k, v, *rest, **kwargs):
        calls.append(k)
        return real(self, q, k, v, *rest, **kwargs)

    monkeypatch.setattr(QDecodeAttend, "attend_quantized", spy)
    _decode_stream("triton_qdecode", fmt, layout, "cpu")
    assert len(calls) == 4  # the prompt, then three single-token steps
    assert all(isinstance(k, QTensor) for k in calls[1:])
