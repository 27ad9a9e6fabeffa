"""triton_qdecode (fused decode over a quantized KV cache) against the float64 oracle.

The oracle attends over the cache dequantized exactly (float64, from the layouts documented in
``kvquant``; a test checks that reading against ``kvquant.dequantize``), so the only error left is
the kernel's own arithmetic and the tolerance is ``tolerance(dtype, kv_len)``.

Without a GPU the kernels run in Triton's CPU interpreter (``tests/conftest.py`` sets
``TRITON_INTERPRET=1`` before triton is imported) on tiny shapes that still reach every path:
each format, GQA 4:1, 8:8 and 12:4, head_dim 64 and 80, lengths that are not multiples of the
block, several KV splits (the log-sum-exp merge), multi-token causal steps, several query tiles,
recent full-precision tokens; and the fast kernel (int8, fp8, int4 at power-of-two head dims)
with GQA 1 to 16, int4 groups of 32 to 128 channels, and values far from 1. Tests marked
``gpu`` run the compiled kernels on the issue's grid.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from sdpalab.attention.dispatch import make_attend
from sdpalab.attention.errors import Unsupported
from sdpalab.attention.kernels import qdecode, qdecode_triton
from sdpalab.attention.kernels.attend import qtensor_from_planes
from sdpalab.attention.kernels.qdecode import (
    CODES_PER_WORD,
    launch_geometry,
    plan_launch,
    qdecode_attention,
)
from sdpalab.attention.kvquant import BITS, QTensor, dequantize, fp8_supported, quantize
from sdpalab.attention.kvstore import Codec
from sdpalab.attention.reference import attention_ref
from sdpalab.measure.accuracy import compare, tolerance

FORMATS = ["none", "int8", "int4", "fp8", "kivi4", "kivi2"]
KIVI_GROUP = 32
INTERPRETED = type(qdecode_triton._qdecode_kernel).__name__ == "InterpretedFunction"
cpu_only = pytest.mark.skipif(
    not INTERPRETED,
    reason="the CPU tests need Triton's interpreter active before triton is imported "
    "(TRITON_INTERPRET=1; tests/conftest.py sets it when there is no GPU)",
)


def _skip_fp8(fmt: str, device: str) -> None:
    if fmt == "fp8" and (reason := fp8_supported(torch.device(device).type)):
        pytest.skip(reason)


# ---------------------------------------------------------------- exact dequantization (float64)


def _codes(data: torch.Tensor, bits: int, head_dim: int) -> torch.Tensor:
    """Unsigned codes ``[..., head_dim]`` of packed bytes, lowest bits first."""
    raw = data.view(torch.uint8).to(torch.int64)
    shifts = torch.arange(0, 8, bits, device=data.device)
    return ((raw.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).flatten(-2)[..., :head_dim]


def dequantize_f64(qt: QTensor) -> torch.Tensor:
    """``qt`` reconstructed exactly in float64, read from the layouts in ``kvquant``'s doc."""
    scale = qt.scale.double()
    if qt.fmt == "int8":
        return qt.data.double() * scale
    if qt.fmt == "fp8":
        return qt.data.float().double() * scale
    codes = _codes(qt.data, BITS[qt.fmt], qt.head_dim).double()
    zero = qt.zero.double()
    if qt.fmt.startswith("kivi") and qt.role == "key":
        scale = scale.repeat_interleave(qt.group_size, dim=2)
        zero = zero.repeat_interleave(qt.group_size, dim=2)
    else:
        scale = scale.repeat_interleave(qt.group_size, dim=-1)[..., : qt.head_dim]
        zero = zero.repeat_interleave(qt.group_size, dim=-1)[..., : qt.head_dim]
    return codes * scale + zero


# ---------------------------------------------------------------- one case


def _lengths(fmt: str, kv_len: int, recent: int | None) -> tuple[int, int]:
    """(quantized, recent) token counts; KIVI quantizes whole groups and keeps >= 32 recent."""
    if fmt == "none":
        return 0, kv_len
    quant = kv_len - (recent or 0)
    if fmt.startswith("kivi"):
        quant = max(0, kv_len - max(recent or 0, KIVI_GROUP)) // KIVI_GROUP * KIVI_GROUP
    return quant, kv_len - quant


def _quantize_view(x, fmt, role, capacity):
    """Quantize ``x`` inside a larger buffer (a static cache) and return the view of its tokens."""
    n = x.shape[2]
    if capacity <= n:
        return quantize(x, fmt, role=role)
    pad = x.new_zeros(*x.shape[:2], capacity - n, x.shape[3])
    full = quantize(torch.cat([x, pad], 2), fmt, role=role)
    groups = n // full.group_size if fmt.startswith("kivi") and role == "key" else n
    return QTensor(
        fmt, full.data[:, :, :n], full.scale[:, :, :groups],
        None if full.zero is None else full.zero[:, :, :groups], full.head_dim, role,
        full.group_size,
    )  # fmt: skip


def run_case(
    fmt, batch, heads_q, heads_kv, q_len, kv_len, head_dim, dtype, device="cpu", *,
    recent=None, causal=True, capacity=0, transpose_q=False, seed=0, **launch,
):  # fmt: skip
    """Run the kernel on random inputs; return (output, float64 reference) for batch rows 0 and
    B-1 (all rows when B <= 2: the first and last rows exercise the base offsets)."""
    _skip_fp8(fmt, device)
    gen = torch.Generator(device).manual_seed(seed)
    n_quant, n_recent = _lengths(fmt, kv_len, recent)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    k = randn(batch, heads_kv, kv_len, head_dim) * 2 + 0.5
    v = randn(batch, heads_kv, kv_len, head_dim)
    if transpose_q:
        q = randn(batch, q_len, heads_q, head_dim).transpose(1, 2).to(dtype)
    else:
        q = randn(batch, heads_q, q_len, head_dim).to(dtype)
    rows = list(range(batch)) if batch <= 2 else [0, batch - 1]
    kq = vq = k_rec = v_rec = None
    parts_k, parts_v = [], []
    if n_quant:
        kq = _quantize_view(k[:, :, :n_quant], fmt, "key", capacity)
        vq = _quantize_view(v[:, :, :n_quant], fmt, "value", capacity)
        parts_k.append(dequantize_f64(kq)[rows])
        parts_v.append(dequantize_f64(vq)[rows])
    if n_recent:
        k_rec, v_rec = k[:, :, n_quant:].to(dtype), v[:, :, n_quant:].to(dtype)
        parts_k.append(k_rec[rows].double())
        parts_v.append(v_rec[rows].double())
    k = v = None
    out = qdecode_attention(q, kq, vq, k_rec, v_rec, causal=causal, **launch)
    mod = "causal" if causal else "none"
    ref = attention_ref(q[rows], torch.cat(parts_k, 2), torch.cat(parts_v, 2), mod)
    return out[rows], ref


def check_case(*args, **kwargs):
    dtype = args[7]
    out, ref = run_case(*args, **kwargs)
    acc = compare(out, ref)
    assert out.dtype == dtype and out.shape == ref.shape
    assert acc.finite, acc
    tol = tolerance(dtype, max(args[5], 1))
    assert acc.rel_fro_err <= tol, (args, kwargs, acc, tol)
    return acc


# ---------------------------------------------------------------- CPU (interpreter)

# (batch, heads_q, heads_kv, q_len, kv_len, head_dim, dtype, launch overrides)
CPU_CASES = [
    pytest.param((1, 4, 1, 1, 1, 64, torch.bfloat16, {}), id="one-token"),
    pytest.param((1, 8, 8, 1, 37, 80, torch.bfloat16, {}), id="mha-d80-odd"),
    pytest.param((1, 12, 4, 1, 300, 64, torch.bfloat16, {"block_n": 64, "splits": 3}), id="gqa3-split3"),
    pytest.param((2, 4, 1, 3, 130, 64, torch.float16, {"block_n": 32, "splits": 2}), id="step3-fp16-split"),
    pytest.param((2, 4, 1, 2, 200, 80, torch.float32, {"block_n": 64}), id="fp32-d80-b2"),
    pytest.param((1, 12, 4, 7, 96, 64, torch.bfloat16, {"block_n": 32, "splits": 1}), id="step7-nosplit"),
]  # fmt: skip


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


# ---------------------------------------------------------------- the fast kernel (CPU)

# (batch, heads_q, heads_kv, q_len, kv_len, head_dim, dtype, launch overrides)
FAST_CASES = [
    pytest.param((1, 4, 1, 1, 1, 128, torch.bfloat16, {}), id="one-token"),
    pytest.param((2, 32, 8, 1, 300, 128, torch.bfloat16, {"block_n": 64, "splits": 3}), id="gqa4-split3"),
    pytest.param((1, 8, 8, 1, 77, 128, torch.float16, {}), id="mha-fp16"),
    pytest.param((1, 16, 2, 1, 200, 128, torch.bfloat16, {"block_n": 32}), id="gqa8"),
    pytest.param((2, 12, 4, 5, 129, 128, torch.bfloat16, {"block_n": 32, "splits": 2}), id="step5-gqa3"),
    pytest.param((1, 16, 1, 3, 90, 128, torch.float16, {"block_n": 32}), id="step3-gqa16-tiles"),
    pytest.param((1, 8, 2, 1, 100, 64, torch.bfloat16, {"block_n": 32}), id="d64"),
]  # fmt: skip


@cpu_only
@pytest.mark.parametrize("case", FAST_CASES)
@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
def test_fast_kernel_matches_oracle_interpreted(fmt, case):
    *shape, dtype, launch = case
    if fmt == "int4" and shape[5] == 64:  # 8 words of int4: too few for tl.dot
        with pytest.raises(Unsupported, match="at least 16 words"):
            run_case(fmt, *shape, dtype, kernel="fast", **launch)
        return
    check_case(fmt, *shape, dtype, kernel="fast", **launch)


def _int4_case(group, magnitude, dtype, device="cpu", kv_len=150, splits=None):
    gen = torch.Generator(device).manual_seed(group)
    k = torch.randn(2, 2, kv_len, 128, generator=gen, device=device) * magnitude + magnitude / 2
    v = torch.randn(2, 2, kv_len, 128, generator=gen, device=device) * magnitude
    q = torch.randn(2, 8, 1, 128, generator=gen, device=device).to(dtype)
    kq = quantize(k, "int4", role="key", group_size=group)
    vq = quantize(v, "int4", role="value", group_size=group)
    out = qdecode_attention(q, kq, vq, kernel="fast", block_n=64, splits=splits)
    ref = attention_ref(q, dequantize_f64(kq), dequantize_f64(vq), "causal")
    return compare(out, ref), tolerance(dtype, kv_len)


@cpu_only
@pytest.mark.parametrize("group", [32, 64, 128])
def test_fast_int4_every_channel_group_count(group):
    """Groups of 32, 64 and 128 channels: 4, 2 and 1 stacked copies of each query row."""
    acc, tol = _int4_case(group, 1.0, torch.bfloat16)
    assert acc.rel_fro_err <= tol, (group, acc)


@cpu_only
@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("magnitude", [1e-4, 1e3])
def test_fast_kernel_values_far_from_one(fmt, magnitude):
    """Scales near float16's smallest normals and far above 1: the float16 probabilities times
    scales stay in range (relative to the running largest scale)."""
    gen = torch.Generator().manual_seed(3)
    k = torch.randn(1, 2, 200, 128, generator=gen) * magnitude
    v = torch.randn(1, 2, 200, 128, generator=gen) * magnitude
    # bfloat16: outputs near 1e-5 are below float16's normal range
    q = (torch.randn(1, 8, 1, 128, generator=gen) / magnitude**0.5).bfloat16()
    kq, vq = quantize(k, fmt, role="key"), quantize(v, fmt, role="value")
    out = qdecode_attention(q, kq, vq, kernel="fast", block_n=64)
    ref = attention_ref(q, dequantize_f64(kq), dequantize_f64(vq), "causal")
    assert compare(out, ref).rel_fro_err <= tolerance(torch.bfloat16, 200)


def test_plan_takes_the_fast_kernel_where_it_applies():
    bf16 = torch.bfloat16
    q = torch.randn(1, 8, 1, 128, dtype=bf16)
    k8 = quantize(torch.randn(1, 2, 40, 128), "int8")
    k4 = quantize(torch.randn(1, 2, 40, 128), "int4")
    kivi = quantize(torch.randn(1, 2, 64, 128), "kivi4", role="key")
    recent = torch.randn(1, 2, 5, 128, dtype=bf16)
    assert plan_launch(q, k8, k8)["kernel"] == "fast"
    assert plan_launch(q, k4, k4)["kernel"] == "fast"
    assert plan_launch(q, k8, k8, kernel="general")["kernel"] == "general"
    assert plan_launch(q.float(), k8, k8)["kernel"] == "general"
    assert plan_launch(q, k8, k8, recent, recent)["kernel"] == "general"
    kivi_v = quantize(torch.randn(1, 2, 64, 128), "kivi4", role="value")
    assert plan_launch(q, kivi, kivi_v)["kernel"] == "general"
    q80, k80 = torch.randn(1, 8, 1, 80, dtype=bf16), quantize(torch.randn(1, 2, 9, 80), "int8")
    assert plan_launch(q80, k80, k80)["kernel"] == "general"
    with pytest.raises(Unsupported, match="head_dim 80 is not a power of two"):
        plan_launch(q80, k80, k80, kernel="fast")
    with pytest.raises(ValueError, match="valid: fast, general"):
        plan_launch(q, k8, k8, kernel="quick")


@pytest.mark.parametrize(
    "batch,kv_len,splits", [(8, 32768, 8), (1, 131072, 64), (32, 32768, 2), (64, 32768, 1)]
)
def test_fast_splits_fill_one_wave_of_an_h100(monkeypatch, batch, kv_len, splits):
    """4 programs per SM on 132 SMs: up to 528 programs, the split counts timed fastest there
    (B=1: 66 asked, 64 chunks of 16 whole blocks)."""
    monkeypatch.setattr(qdecode, "_sm_count", lambda index: 132)
    geo = launch_geometry(
        batch=batch, heads_q=32, heads_kv=8, q_len=1, kv_len=kv_len, fmt="int8",
        dtype=torch.bfloat16, device=torch.device("cuda", 0), block_n=128, fast=True,
    )  # fmt: skip
    assert geo["splits"] == splits


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


# the launch configurations benchmarks/qdecode_bench.py times (block_n, num_warps, num_stages)
BENCH_CONFIGS = [(128, 2, 2), (128, 2, 3), (64, 2, 2), (64, 4, 2), (64, 4, 3), (128, 4, 2),
                 (256, 4, 2), (128, 2, 1)]  # fmt: skip


def _bench_module():
    """``benchmarks/qdecode_bench.py`` as a module (registered: its dataclasses need it)."""
    import importlib.util
    import sys
    from pathlib import Path

    if "qdecode_bench" in sys.modules:
        return sys.modules["qdecode_bench"]
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "qdecode_bench.py"
    spec = importlib.util.spec_from_file_location("qdecode_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["qdecode_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_gpu_tests_cover_every_benchmarked_config():
    assert _bench_module().CONFIGS == BENCH_CONFIGS


@cpu_only
def test_benchmark_dry_run_writes_its_table(tmp_path, capsys):
    """``qdecode_bench.py --device cpu`` end to end on a tiny shape (the numbers mean nothing)."""
    out = tmp_path / "qdecode.md"
    args = ["--out", str(out), "--device", "cpu", "--batches", "1", "--seqs", "64",
            "--formats", "int8,int4", "--tune", "", "--no-flex", "--repeats", "2"]  # fmt: skip
    assert _bench_module().main(args) == 0
    text = out.read_text()
    assert "| 1 | 64 | fused int8 |" in text and "kernel=fast" in text
    assert "| 1 | 64 | dequant+flash int4 |" in text


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
@pytest.mark.parametrize("config", BENCH_CONFIGS, ids=lambda c: "bn{}-w{}-s{}".format(*c))
def test_every_benchmarked_config_is_correct_on_gpu(fmt, config):
    launch = dict(zip(("block_n", "num_warps", "num_stages"), config, strict=True))
    check_case(fmt, 2, 32, 8, 1, 5000, 128, torch.bfloat16, device="cuda", **launch)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
def test_one_split_and_many_splits_on_gpu(fmt):
    check_case(fmt, 1, 16, 2, 3, 700, 80, torch.float16, device="cuda", splits=1)
    check_case(fmt, 1, 16, 2, 3, 700, 80, torch.float16, device="cuda", splits=6, block_n=64)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
@pytest.mark.parametrize("kernel", ["fast", "general"])
def test_both_kernels_on_gpu(fmt, kernel):
    check_case(fmt, 3, 32, 8, 1, 4097, 128, torch.bfloat16, device="cuda", kernel=kernel)
    head_dim = 128 if fmt == "int4" else 64  # the fast kernel reads int4 at 16 words or more
    check_case(fmt, 2, 16, 2, 3, 999, head_dim, torch.float16, device="cuda", kernel=kernel)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
def test_fast_kernel_one_split_over_128k_keys_on_gpu(fmt):
    """One program reads all 128k keys: the accumulation over a long sequence stays exact."""
    check_case(fmt, 1, 32, 8, 1, 131072, 128, torch.bfloat16, device="cuda", splits=1)


@pytest.mark.gpu
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("magnitude", [1e-4, 1.0, 1e3])
def test_fast_int4_groups_and_magnitudes_on_gpu(group, magnitude):
    acc, tol = _int4_case(group, magnitude, torch.bfloat16, "cuda", kv_len=5000, splits=4)
    assert acc.rel_fro_err <= tol, (group, magnitude, acc)


@pytest.mark.gpu
def test_gpu_recent_tokens_and_static_views():
    check_case("int4", 4, 32, 8, 1, 3000, 128, torch.bfloat16, device="cuda", recent=77)
    check_case("int8", 4, 32, 8, 2, 3000, 128, torch.bfloat16, device="cuda", capacity=4096)
    check_case("kivi2", 2, 32, 8, 1, 3000, 128, torch.bfloat16, device="cuda", capacity=4096)


# ---------------------------------------------------------------- through a cache


def _decode_stream(backend, fmt, layout, device, steps=3, prompt=70):
    import sdpalab as sl

    wl = sl.Workload(phase="decode", batch=1, heads_q=8, heads_kv=2, seq_kv=prompt + steps,
                     head_dim=64, dtype="bfloat16", device=device)  # fmt: skip
    attn = sl.build(sl.Variant(backend=backend, kv_cache=layout, kv_quant=fmt), wl)
    gen = torch.Generator(device).manual_seed(5)
    outs = []
    for n in [prompt] + [1] * steps:
        q = torch.randn(1, 8, n, 64, generator=gen, device=device).bfloat16()
        k = torch.randn(1, 2, n, 64, generator=gen, device=device).bfloat16()
        v = torch.randn(1, 2, n, 64, generator=gen, device=device).bfloat16()
        outs.append(attn(q, k, v))
    return outs


def _check_stream(fmt, layout, device):
    _skip_fp8(fmt, device)
    ours = _decode_stream("triton_qdecode", fmt, layout, device)
    theirs = _decode_stream("math", fmt, layout, device)
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


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
def test_cached_decode_matches_math_backend_on_gpu(fmt):
    _check_stream(fmt, "static", "cuda")


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
    from sdpalab.attention.kernels.attend import QDecodeAttend

    calls = []
    real = QDecodeAttend.attend_quantized

    def spy(self, q, k, v, *rest, **kwargs):
        calls.append(k)
        return real(self, q, k, v, *rest, **kwargs)

    monkeypatch.setattr(QDecodeAttend, "attend_quantized", spy)
    _decode_stream("triton_qdecode", fmt, layout, "cpu")
    assert len(calls) == 4  # the prompt, then three single-token steps
    assert all(isinstance(k, QTensor) for k in calls[1:])
