"""KIVI caches (kivi4, kivi2) through the fast triton_qdecode kernel (``qdecode/fast.py``):
keys per channel over token groups, values per token, the full-precision recent tokens read in
the same program, against the float64 oracle on the dequantized inputs.

On the CPU in Triton's interpreter: head_dim 128 on the fast kernel and 64, 80 on the general
one it falls back to; GQA 1, 4, 8; lengths that are not multiples of the token group; the
recent window partly full; blocks smaller than, equal to and larger than a token group; split-KV
on and off, splits of recent tokens only; the fused split merge. Tests marked ``gpu`` run the
compiled kernel; ``slow`` ones compile it for sm_90 without a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from qdecode_cases import KIVI_GROUP, check_case, cpu_only, dequantize_f64, run_case
from sdpalab.attention.errors import Unsupported
from sdpalab.attention.kernels.qdecode import plan_launch, qdecode_attention
from sdpalab.attention.kvquant import quantize
from sdpalab.attention.reference import attention_ref
from sdpalab.measure.accuracy import compare, tolerance

KIVI = ["kivi4", "kivi2"]

# (batch, heads_q, heads_kv, q_len, kv_len, head_dim, dtype, launch overrides). With groups of 32
# and at least 32 recent tokens, kv_len 77 keeps 32 quantized and 45 recent (the ring holds up
# to 63), 150 keeps 96 and 54, 200 keeps 160 and 40, 70 keeps 32 and 38.
KIVI_CASES = [
    pytest.param((1, 8, 8, 1, 77, 128, torch.float16, {}), id="gqa1-fp16"),
    pytest.param((2, 32, 8, 1, 200, 128, torch.bfloat16, {"block_n": 64, "splits": 2}), id="gqa4-b64-split2", marks=pytest.mark.slow),
    pytest.param((1, 16, 2, 1, 150, 128, torch.bfloat16, {"block_n": 16, "splits": 5}), id="gqa8-b16-recent-only-splits"),
    pytest.param((1, 16, 2, 3, 150, 128, torch.float16, {"splits": 1}), id="gqa8-step3-nosplit"),
    pytest.param((1, 12, 4, 5, 200, 128, torch.bfloat16, {"block_n": 64, "splits": 3, "tile_rows": 4}), id="step5-tiles", marks=pytest.mark.slow),
]  # fmt: skip


@cpu_only
@pytest.mark.parametrize("case", KIVI_CASES)
@pytest.mark.parametrize("fmt", KIVI)
def test_kivi_fast_kernel_matches_oracle_interpreted(fmt, case):
    *shape, dtype, launch = case
    assert plan_launch(*_inputs(fmt, *shape, dtype))["kernel"] == "fast"
    check_case(fmt, *shape, dtype, kernel="fast", **launch)


def _inputs(fmt, batch, heads_q, heads_kv, q_len, kv_len, head_dim, dtype):
    """q, k, v, k_recent, v_recent of a KIVI cache (what ``run_case`` quantizes), for a plan."""
    quant = max(0, kv_len - KIVI_GROUP) // KIVI_GROUP * KIVI_GROUP
    k = torch.randn(batch, heads_kv, kv_len, head_dim)
    q = torch.randn(batch, heads_q, q_len, head_dim).to(dtype)
    kq = quantize(k[:, :, :quant], fmt, role="key") if quant else None
    vq = quantize(k[:, :, :quant], fmt, role="value") if quant else None
    recent = k[:, :, quant:].to(dtype)
    return q, kq, vq, recent, recent


@cpu_only
@pytest.mark.parametrize("fmt", KIVI)
@pytest.mark.parametrize("head_dim", [64, 80])
def test_kivi_other_head_dims_take_the_general_kernel(fmt, head_dim):
    """head_dim 64 (8 words of 8 codes) and 80 (not a power of two): the general kernel."""
    shape = (1, 8, 2, 1, 99, head_dim, torch.bfloat16)
    assert plan_launch(*_inputs(fmt, *shape))["kernel"] == "general"
    with pytest.raises(Unsupported, match=f"head_dim {head_dim} is not a power of two"):
        plan_launch(*_inputs(fmt, *shape), kernel="fast")
    check_case(fmt, *shape, block_n=32, splits=2)


def test_kivi_routing():
    q, kq, vq, kr, vr = _inputs("kivi4", 1, 8, 2, 1, 100, 128, torch.bfloat16)
    assert plan_launch(q, kq, vq, kr, vr)["kernel"] == "fast"
    assert plan_launch(q, kq, vq)["kernel"] == "fast"  # no recent tokens
    assert plan_launch(q, kq, vq, kr, vr, kernel="general")["kernel"] == "general"
    assert plan_launch(q.float(), kq, vq, kr.float(), vr.float())["kernel"] == "general"
    assert plan_launch(q, kq, vq, kr, vr)["copies"] == 4  # value groups of 32 channels
    assert plan_launch(q, None, None, kr, vr)["kernel"] == "general"  # nothing quantized yet
    k = torch.randn(1, 2, 64, 128)
    kq64 = quantize(k, "kivi4", role="key", group_size=64)
    vq16 = quantize(k, "kivi4", role="value", group_size=16)
    with pytest.raises(Unsupported, match="key groups of 64 tokens and value groups of 16"):
        plan_launch(q, kq64, vq16, kernel="fast")
    with pytest.raises(ValueError, match="merge='serial'; valid: kernel, fused"):
        plan_launch(q, kq, vq, merge="serial")


@cpu_only
@pytest.mark.parametrize("fmt", KIVI)
@pytest.mark.parametrize("group", [16, 64])
def test_kivi_other_groups(fmt, group):
    """Token (and value channel) groups of 16 and 64 with blocks of 32: several groups a block,
    several blocks a group."""
    gen = torch.Generator().manual_seed(group)
    k = torch.randn(1, 2, 192, 128, generator=gen) * 2 + 0.5
    v = torch.randn(1, 2, 192, 128, generator=gen)
    q = torch.randn(1, 8, 1, 128, generator=gen).bfloat16()
    if fmt == "kivi2" and group == 16:
        group = 32  # kivi2 value groups are whole words of 16 channels; 16 works, smaller not
    kq = quantize(k[:, :, :128], fmt, role="key", group_size=group)
    vq = quantize(v[:, :, :128], fmt, role="value", group_size=group)
    kr, vr = k[:, :, 128:].bfloat16(), v[:, :, 128:].bfloat16()
    out = qdecode_attention(q, kq, vq, kr, vr, kernel="fast", block_n=32, splits=3)
    ref = attention_ref(
        q, torch.cat([dequantize_f64(kq), kr.double()], 2),
        torch.cat([dequantize_f64(vq), vr.double()], 2), "causal",
    )  # fmt: skip
    assert compare(out, ref).rel_fro_err <= tolerance(torch.bfloat16, 192)


@cpu_only
@pytest.mark.parametrize("fmt", KIVI)
@pytest.mark.parametrize("magnitude", [1e-5, 1e-3, 1e2])  # zeros within float16: |k| < 65504
def test_kivi_outlier_channels_and_magnitudes(fmt, magnitude):
    """Keys with a few channels 50 times larger (why KIVI quantizes keys per channel) and
    values far from 1: queries over their power-of-two maximum times float16 key scales stay in
    float16's range (tiny ones lose bits as subnormals, far below the scores' rounding), so do
    the probabilities times value scales."""
    gen = torch.Generator().manual_seed(4)
    k = torch.randn(1, 2, 160, 128, generator=gen) * magnitude
    k[..., ::37] *= 50
    v = torch.randn(1, 2, 160, 128, generator=gen) * magnitude
    q = (torch.randn(1, 8, 1, 128, generator=gen) / magnitude**0.5).bfloat16()
    kq = quantize(k[:, :, :96], fmt, role="key")
    vq = quantize(v[:, :, :96], fmt, role="value")
    kr, vr = k[:, :, 96:].bfloat16(), v[:, :, 96:].bfloat16()
    out = qdecode_attention(q, kq, vq, kr, vr, kernel="fast", block_n=64, splits=2)
    ref = attention_ref(
        q, torch.cat([dequantize_f64(kq), kr.double()], 2),
        torch.cat([dequantize_f64(vq), vr.double()], 2), "causal",
    )  # fmt: skip
    assert compare(out, ref).rel_fro_err <= tolerance(torch.bfloat16, 160)


@cpu_only
@pytest.mark.slow  # 9-21 s each in the interpreter
@pytest.mark.parametrize(("fmt", "recent"), [("kivi2", None), ("int4", None), ("int8", None)])
def test_fused_merge_matches_the_merge_kernel(fmt, recent):
    """``merge="fused"``: the last split program of each tile merges it; twice in a row (the
    counters go back to zero), the same output as the merge kernel's up to float32 order."""
    kw = dict(block_n=32, splits=4, seed=9, kernel="fast")
    base, ref = run_case(fmt, 2, 16, 4, 2, 300, 128, torch.bfloat16, **kw)
    for _ in range(2):
        fused, _ = run_case(fmt, 2, 16, 4, 2, 300, 128, torch.bfloat16, merge="fused", **kw)
        assert compare(fused, base.double()).rel_fro_err <= 2**-7
    assert compare(fused, ref).rel_fro_err <= tolerance(torch.bfloat16, 300)


def test_fused_merge_is_a_fast_kernel_option():
    q, kq, vq, kr, vr = _inputs("kivi4", 1, 8, 2, 1, 100, 80, torch.bfloat16)
    with pytest.raises(Unsupported, match="merge='fused' is an option of the fast"):
        plan_launch(q, kq, vq, kr, vr, merge="fused")


# ---------------------------------------------------------------- through a cache


def _stream(backend, fmt, kv_args, device="cpu", steps=3, prompt=70):
    import sdpalab as sl

    wl = sl.Workload(phase="decode", batch=1, heads_q=8, heads_kv=2, seq_kv=prompt + steps,
                     head_dim=128, dtype="bfloat16", device=device)  # fmt: skip
    attn = sl.build(sl.Variant(backend=backend, kv_cache="static", kv_quant=fmt,
                               kv_args=kv_args), wl)  # fmt: skip
    gen = torch.Generator(device).manual_seed(5)
    outs = []
    for n in [prompt] + [1] * steps:
        q = torch.randn(1, 8, n, 128, generator=gen, device=device).bfloat16()
        k = (torch.randn(1, 2, n, 128, generator=gen, device=device) + 3).bfloat16()
        v = torch.randn(1, 2, n, 128, generator=gen, device=device).bfloat16()
        outs.append(attn(q, k, v))
    return outs


@cpu_only
@pytest.mark.slow  # 5-7 s each in the interpreter
@pytest.mark.parametrize("smooth", [False, True], ids=["plain", "smooth_keys"])
@pytest.mark.parametrize("fmt", KIVI)
def test_cached_kivi_decode_through_the_fast_kernel(monkeypatch, fmt, smooth):
    """A KIVI cache (head_dim 128) hands the fast kernel its codes and recent ring: the same
    outputs as SDPA math on the same cache. Smoothed keys are only other codes to the kernel."""
    from sdpalab.attention.kernels.qdecode import host

    kernels = []
    real = host.plan_launch

    def spy(*args, **kwargs):
        plan = real(*args, **kwargs)
        kernels.append(plan["kernel"])
        return plan

    monkeypatch.setattr(host, "plan_launch", spy)
    kv_args = {"smooth_keys": 1} if smooth else {}
    ours = _stream("triton_qdecode", fmt, kv_args)
    theirs = _stream("math", fmt, kv_args)
    assert kernels[1:] == ["fast"] * 3  # the prompt itself: 70 tokens, 32 of them quantized
    for a, b in zip(ours, theirs, strict=True):
        assert compare(a, b.double()).rel_fro_err <= 2 * tolerance(torch.bfloat16, 80)


# ---------------------------------------------------------------- the benchmark


def test_bench_tunes_kivi_over_the_gpu_tested_configs():
    from test_qdecode_fast import _bench_module

    assert _bench_module().KIVI_CONFIGS == KIVI_BENCH_CONFIGS


KIVI_BENCH_CONFIGS = [(32, 1, 3), (32, 1, 2), (64, 1, 3), (64, 2, 2), (32, 2, 2), (128, 2, 2)]


# ---------------------------------------------------------------- GPU (compiled)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", KIVI)
@pytest.mark.parametrize("merge", ["kernel", "fused"])
def test_kivi_fast_kernel_on_gpu(fmt, merge):
    check_case(fmt, 3, 32, 8, 1, 4097, 128, torch.bfloat16, device="cuda", merge=merge)
    check_case(fmt, 2, 16, 2, 3, 999, 128, torch.float16, device="cuda", merge=merge)
    check_case(fmt, 1, 32, 32, 1, 20000, 128, torch.bfloat16, device="cuda", merge=merge,
               graph=True)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", KIVI)
def test_kivi_one_split_over_128k_keys_on_gpu(fmt):
    check_case(fmt, 1, 32, 8, 1, 131072, 128, torch.bfloat16, device="cuda", splits=1)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", KIVI)
@pytest.mark.parametrize("config", KIVI_BENCH_CONFIGS, ids=lambda c: "bn{}-w{}-s{}".format(*c))
def test_every_benchmarked_kivi_config_is_correct_on_gpu(fmt, config):
    launch = dict(zip(("block_n", "num_warps", "num_stages"), config, strict=True))
    check_case(fmt, 2, 32, 8, 1, 5000, 128, torch.bfloat16, device="cuda", **launch)


# ---------------------------------------------------------------- compiles for sm_90

COMPILE = r"""
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sdpalab.attention.kernels.qdecode.fast import fast_kernel

POINTERS = {"Q": "*bf16", "Out": "*bf16", "Part": "*fp32", "Lse": "*fp32", "KW": "*i32",
            "KS": "*fp16", "KZ": "*fp16", "VW": "*i32", "VS": "*fp16", "VZ": "*fp16",
            "KR": "*bf16", "VR": "*bf16"}
sizes = {}
for fid, name in [(4, "kivi4"), (5, "kivi2")]:
    for block_n, warps, stages, split, fused in [(32, 1, 3, True, False), (64, 2, 2, True, True),
                                                 (128, 2, 2, False, False)]:
        consts = dict(G=4, HEAD_DIM=128, FMT=fid, E=8, WP=16, NG=4, OFF=0.0, UNIT_INV=2.0**24,
                      R=4, BLOCK_N=block_n, CAUSAL=True, SPLIT=split, PREFETCH=True, PDL=split,
                      BULK_L2=False, FUSED_MERGE=fused)
        sig = {a: "constexpr" if a in consts else POINTERS.get(a, "i32")
               for a in fast_kernel.arg_names}
        sig["qk_scale"] = "fp32"
        out = triton.compile(ASTSource(fn=fast_kernel, signature=sig, constexprs=consts),
                             target=GPUTarget("cuda", 90, 32),
                             options={"num_warps": warps, "num_stages": stages})
        sizes[f"{name}-{block_n}-{fused}"] = len(out.asm["cubin"])
print(json.dumps(sizes))
"""


@pytest.mark.slow
def test_kivi_fast_kernel_compiles_for_sm90_without_a_gpu():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run([sys.executable, "-c", COMPILE], capture_output=True, text=True,
                         env=env, timeout=900)  # fmt: skip
    if "ptxas" in run.stderr and "not found" in run.stderr.lower():
        pytest.skip("this triton has no bundled ptxas")
    assert run.returncode == 0, run.stderr[-3000:]
    sizes = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(sizes) == 6 and all(size > 0 for size in sizes.values()), sizes
