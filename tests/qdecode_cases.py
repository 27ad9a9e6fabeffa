"""Shared by the triton_qdecode tests: the float64 reading of every stored layout and one random
case run against the oracle (``run_case``, ``check_case``)."""

from __future__ import annotations

import pytest
import torch

from sdpalab.attention.kernels.qdecode import general, qdecode_attention
from sdpalab.attention.kvquant import BITS, QTensor, fp8_supported, quantize
from sdpalab.attention.reference import attention_ref
from sdpalab.measure.accuracy import compare, tolerance
from sdpalab.measure.timing import capture_graph

FORMATS = ["none", "int8", "int4", "fp8", "kivi4", "kivi2"]
KIVI_GROUP = 32
INTERPRETED = type(general.general_kernel).__name__ == "InterpretedFunction"
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
    recent=None, causal=True, capacity=0, transpose_q=False, seed=0, graph=False, **launch,
):  # fmt: skip
    """Run the kernel on random inputs; return (output, float64 reference) for batch rows 0 and
    B-1 (all rows when B <= 2: the first and last rows exercise the base offsets). ``graph``:
    the output of a CUDA-graph replay of the call (its output zeroed first), not of the call."""
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

    def call():
        return qdecode_attention(q, kq, vq, k_rec, v_rec, causal=causal, **launch)

    if graph:
        held = {}
        replay = capture_graph(lambda: held.update(out=call()), device)
        held["out"].zero_()
        replay.replay()
        out = held["out"]
    else:
        out = call()
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
