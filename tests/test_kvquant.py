"""KV quantization: exact layouts, round-trip error within the bound derived from the step, and
storage that really shrinks."""

import pytest
import torch

from sdpalab.attention import kvquant
from sdpalab.attention.errors import Unsupported
from sdpalab.attention.kvquant import FORMATS, dequantize, error_bound, nbytes, quantize

ROLES = ("key", "value")
# float32 evaluation of code * scale + zero, and of (x - zero) / scale before rounding: a few ulp
# of the largest magnitude involved, far below any quantization step.
FLOAT_SLACK = 1e-5


def _data(batch, heads, seq, head_dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, heads, seq, head_dim, generator=gen) * 3
    x[0, 0, 0] = 0.0  # an all-zero token: scale 0
    x[0, 0, 1] = 1.5  # a constant token: zero range
    x[-1, -1, -1] *= 1000  # an outlier token
    return x


@pytest.mark.parametrize("head_dim", [128, 80, 7])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_within_half_step(fmt, role, head_dim):
    x = _data(2, 3, 64, head_dim)
    qt = quantize(x, fmt, role=role)
    err = (dequantize(qt) - x).abs()
    bound = error_bound(qt).expand_as(err)
    assert torch.all(err <= bound + FLOAT_SLACK * x.abs().amax(-1, keepdim=True).clamp_min(1))
    assert qt.shape == tuple(x.shape)


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantize_dtype_and_shape(fmt):
    x = _data(1, 2, 32, 80).to(torch.bfloat16)
    for role in ROLES:
        out = dequantize(quantize(x, fmt, role=role), torch.bfloat16)
        assert out.dtype == torch.bfloat16 and out.shape == x.shape


def _layout(qt):
    return {name: (tuple(t.shape), t.dtype) for name, t in qt.tensors().items()}


def test_layouts_at_head_dim_128():
    b, h, s, d = 2, 3, 64, 128
    x = _data(b, h, s, d)
    f16, u8 = torch.float16, torch.uint8
    assert _layout(quantize(x, "int8")) == {
        "data": ((b, h, s, d), torch.int8),
        "scale": ((b, h, s, 1), f16),
    }
    assert _layout(quantize(x, "int4")) == {
        "data": ((b, h, s, 64), u8),
        "scale": ((b, h, s, 2), f16),
        "zero": ((b, h, s, 2), f16),
    }
    assert _layout(quantize(x, "fp8")) == {
        "data": ((b, h, s, d), torch.float8_e4m3fn),
        "scale": ((b, h, s, 1), f16),
    }
    assert _layout(quantize(x, "kivi4", role="key")) == {
        "data": ((b, h, s, 64), u8),
        "scale": ((b, h, 2, d), f16),
        "zero": ((b, h, 2, d), f16),
    }
    assert _layout(quantize(x, "kivi2", role="value")) == {
        "data": ((b, h, s, 32), u8),
        "scale": ((b, h, s, 4), f16),
        "zero": ((b, h, s, 4), f16),
    }


def test_ragged_last_group():
    x = _data(1, 1, 4, 80)
    qt = quantize(x, "int4")  # groups of 64 channels: 64 + 16
    assert qt.scale.shape[-1] == 2 and qt.data.shape[-1] == 40


def test_bit_order():
    # codes equal to the channel index: group min 0, max 15 → scale 1, zero 0
    x = (torch.arange(16.0) % 16).view(1, 1, 1, 16)
    qt = quantize(x, "int4", group_size=16)
    assert qt.scale.item() == 1 and qt.zero.item() == 0
    assert qt.data[0, 0, 0].tolist() == [
        lo | hi << 4 for lo, hi in zip(range(0, 16, 2), range(1, 16, 2), strict=True)
    ]
    x2 = (torch.arange(8.0) % 4).view(1, 1, 1, 8)
    q2 = quantize(x2, "kivi2", role="value", group_size=8)  # codes 0,1,2,3 at bits 0,2,4,6
    assert q2.data[0, 0, 0].tolist() == [0 | 1 << 2 | 2 << 4 | 3 << 6] * 2


def test_int8_is_symmetric_per_token():
    x = _data(1, 2, 5, 16)
    qt = quantize(x, "int8")
    amax = x.abs().amax(-1, keepdim=True)
    assert torch.all(qt.scale.float() >= amax / 127)
    assert torch.all(qt.data.abs().amax(-1) == torch.where(amax.squeeze(-1) > 0, 127, 0))


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8", "kivi4"])
def test_per_token_formats_are_chunk_invariant(fmt):
    # The caches quantize tokens as they arrive; the result must not depend on the chunking.
    x = _data(2, 2, 40, 80)
    whole = quantize(x, fmt, role="value").tensors()
    part = quantize(x[:, :, 13:29], fmt, role="value").tensors()
    for name, t in part.items():
        assert torch.equal(t.view(torch.uint8), whole[name][:, :, 13:29].view(torch.uint8))


@pytest.mark.parametrize(("fmt", "limit"), [("int8", 0.53), ("int4", 0.30)])
def test_storage_shrinks_at_head_dim_128(fmt, limit):
    x = _data(2, 8, 256, 128).to(torch.bfloat16)
    assert nbytes(quantize(x, fmt)) <= limit * x.numel() * x.element_size()


def test_bad_input():
    x = _data(1, 1, 33, 64)
    with pytest.raises(ValueError, match="whole groups of 32 tokens"):
        quantize(x, "kivi4", role="key")
    with pytest.raises(ValueError, match="choose one of"):
        quantize(x, "int3")
    with pytest.raises(ValueError, match="role"):
        quantize(x, "int8", role="query")
    with pytest.raises(ValueError, match=r"\[B, H, S, D\]"):
        quantize(x[0], "int8")


def test_fp8_unsupported_has_a_reason(monkeypatch):
    monkeypatch.setattr(kvquant, "fp8_supported", lambda device_type: "no float8 here")
    with pytest.raises(Unsupported, match="no float8 here"):
        quantize(_data(1, 1, 2, 8), "fp8")
