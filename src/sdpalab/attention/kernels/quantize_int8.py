"""``int8`` KV quantization in one Triton launch, bit for bit what ``kvquant.quantize`` computes
with torch's CUDA kernels (about eighteen launches): a cache appends one token per decode step,
and those launches were most of the step's host time.

Per row of D channels: ``amax = max |x|`` in float32; ``scale`` = ``amax * fl32(1/127)`` (torch
divides a tensor by a Python scalar by multiplying with its float32 reciprocal) rounded up to
float16; codes ``round(x / scale)`` (IEEE division, round half to even, by adding and taking
off 1.5 * 2^23) clamped to ±127, with a zero scale read as 1. ``tests/test_kvquant.py`` checks the bits against the torch path on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_INV_127 = 1.0 / 127.0
_RINT = 1.5 * 2.0**23  # v + _RINT - _RINT rounds |v| < 2^22 to an integer, half to even


@triton.jit
def _quantize_int8_kernel(X, Data, Scale, n_rows, D: tl.constexpr, BLOCK_D: tl.constexpr,
                          ROWS: tl.constexpr):  # fmt: skip
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    d = tl.arange(0, BLOCK_D)
    ok = (r < n_rows)[:, None] & (d < D)[None, :]
    offs = r.to(tl.int64)[:, None] * D + d[None, :]
    x = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32)
    want = tl.max(tl.abs(x), 1) * _INV_127
    h = want.to(tl.float16)
    # round up to float16: the next float16 when rounding went down (scales are >= 0)
    up = (h.to(tl.int16, bitcast=True) + 1).to(tl.float16, bitcast=True)
    h = tl.where(h.to(tl.float32) < want, up, h)
    safe = tl.where(h == 0.0, 1.0, h.to(tl.float32))
    ratio = tl.math.div_rn(x, safe[:, None])  # |ratio| <= 127 (+ rounding)
    codes = (ratio + _RINT) - _RINT
    codes = tl.minimum(tl.maximum(codes, -127.0), 127.0)
    tl.store(Data + offs, codes.to(tl.int8), mask=ok)
    tl.store(Scale + r, h, mask=r < n_rows)


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [..., D]`` (float16, bfloat16 or float32, CUDA) → int8 codes ``[..., D]`` and float16
    scales ``[..., 1]``, as ``kvquant.quantize(x, "int8")`` stores them."""
    x = x.contiguous()
    head_dim = x.shape[-1]
    data = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    scale = torch.empty((*x.shape[:-1], 1), dtype=torch.float16, device=x.device)
    n_rows = x.numel() // max(head_dim, 1)
    if n_rows == 0:
        return data, scale
    rows = 8
    _quantize_int8_kernel[(-(-n_rows // rows),)](
        x, data, scale, n_rows, D=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), ROWS=rows,
        num_warps=4,
    )  # fmt: skip
    return data, scale
