"""The one-launch int8 quantization (``kernels.quantize_int8``) gives the bits of the torch path
(``kvquant._quantize_int8_torch``), which ``kvquant.quantize`` uses on the CPU."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from sdpalab.attention.kernels import quantize_int8 as fused
from sdpalab.attention.kvquant import _quantize_int8_torch, quantize

INTERPRETED = type(fused._quantize_int8_kernel).__name__ == "InterpretedFunction"


def _inputs(dtype, shape, device, seed=0):
    """Rows from 1e-6 to 1e4 in magnitude, one all-zero row, one row with a single value."""
    gen = torch.Generator(device).manual_seed(seed)
    mags = torch.logspace(-6, 4, shape[2], device=device).view(1, 1, -1, 1)
    x = torch.randn(*shape, generator=gen, device=device) * mags
    x[0, 0, 0] = 0
    x[-1, -1, -1] = 0
    x[-1, -1, -1, 3] = -2.5
    return x.to(dtype)


CASES = [
    (torch.bfloat16, (2, 3, 9, 128)),
    (torch.float16, (1, 2, 7, 80)),
    (torch.float32, (3, 1, 5, 64)),
]


def _check(x):
    data, scale = fused.quantize_int8(x)
    want_data, want_scale = _quantize_int8_torch(x.float())
    assert scale.dtype == torch.float16 and data.dtype == torch.int8
    assert torch.equal(scale, want_scale), (scale != want_scale).sum()
    assert torch.equal(data, want_data), (data != want_data).sum()


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton's interpreter (no GPU here)")
@pytest.mark.parametrize("dtype,shape", CASES)
def test_same_bits_as_torch_interpreted(dtype, shape):
    _check(_inputs(dtype, shape, "cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,shape", [*CASES, (torch.bfloat16, (8, 8, 4096, 128))])
def test_same_bits_as_torch_on_gpu(dtype, shape):
    x = _inputs(dtype, shape, "cuda")
    _check(x)
    qt = quantize(x, "int8")  # kvquant takes the fused path on a GPU
    assert torch.equal(qt.data, _quantize_int8_torch(x.float())[0])


def test_empty_input():
    data, scale = fused.quantize_int8(torch.zeros(1, 2, 0, 64))
    assert data.shape == (1, 2, 0, 64) and scale.shape == (1, 2, 0, 1)
