"""The stored cache as both kernels read it: where a (batch, KV head) starts in each plane, and
32-bit words of codes turned into float16 bit patterns in registers.

Format ids (``FMT``, as ``host.FMT_ID``): 0 none, 1 int8, 2 fp8 e4m3, 3 int4, 4 kivi4, 5 kivi2.
A code becomes a float16 without an integer-to-float conversion (a slow, narrow unit on NVIDIA
GPUs): its bits are put under a float16 exponent, so every code is exact in float16.
"""

from typing import NamedTuple

import triton
import triton.language as tl

# Triton's CPU interpreter keeps bfloat16 as raw uint16 and multiplies the bit patterns in
# tl.dot (triton 3.6 and 3.9); there, bf16 products run in float32, which is exact for them.
# Triton's own switch: host.interpreting() reads the same variable without importing triton.
INTERPRETED = tl.constexpr(triton.knobs.runtime.interpret)


class Planes(NamedTuple):
    """Pointers to where one (batch, KV head) starts in each stored plane."""

    kw: tl.tensor  # key words, int32 [S, words]
    ks: tl.tensor  # key scales
    kz: tl.tensor  # key zeros (int4, KIVI); same strides as the key scales
    vw: tl.tensor  # value words
    vs: tl.tensor  # value scales
    vz: tl.tensor  # value zeros; same strides as the value scales


@triton.jit
def plane_bases(KW, KS, KZ, VW, VS, VZ, b, hk, s_kwb, s_kwh, s_ksb, s_ksh, s_vwb, s_vwh, s_vsb,
                s_vsh):  # fmt: skip
    """The ``Planes`` of batch ``b``, KV head ``hk`` (strides: words, then scales, per tensor)."""
    return Planes(
        KW + b * s_kwb + hk * s_kwh, KS + b * s_ksb + hk * s_ksh, KZ + b * s_ksb + hk * s_ksh,
        VW + b * s_vwb + hk * s_vwh, VS + b * s_vsb + hk * s_vsh, VZ + b * s_vsb + hk * s_vsh,
    )  # fmt: skip


@triton.jit
def code_pairs(w, SHIFT: tl.constexpr, FMT: tl.constexpr, SUBNORMAL: tl.constexpr):
    """int32 words → int32 words holding two float16 bit patterns: the code at bit ``SHIFT`` in
    the low half, the code at bit ``SHIFT + 16`` in the high half.

    ``SUBNORMAL`` (the fast kernel): an integer code ``c`` becomes the subnormal ``c * 2^-24``,
    and 4-bit codes at bits 4 and 12 are masked in place, coming out 16 times larger. Otherwise
    (the general kernel) ``c`` becomes ``1024 + c``, one subtraction from exact. int8 codes come
    out biased by 128 (``c + 128``); fp8 e4m3 codes as ``value * 2^-8`` either way.
    """
    if FMT == 2:  # e4m3: sign to bit 15, exponent and mantissa to bits 7..13
        x = w >> SHIFT
        return ((x << 7) & 0x3F803F80) | ((x << 8) & -0x7FFF8000)  # 0x80008000 as an int32
    EXP: tl.constexpr = 0 if SUBNORMAL else 0x64006400  # the float16 exponent of 1024, twice
    if FMT == 1:  # int8: the sign bit flipped is c + 128
        return ((w >> SHIFT) & 0x00FF00FF) ^ (0x00800080 | EXP)
    if FMT == 5:
        MASK: tl.constexpr = 0x00030003
    else:
        MASK: tl.constexpr = 0x000F000F
    AT: tl.constexpr = SHIFT % 8 if SUBNORMAL else 0  # where the code lands in its half
    y = (w >> (SHIFT - AT)) & (MASK << AT)
    if not SUBNORMAL:
        y = y | EXP
    return y


@triton.jit
def halves(y):
    """int32 words of two float16 bit patterns → the low and the high float16, same shape."""
    lo = y.to(tl.int16).to(tl.float16, bitcast=True)
    hi = (y >> 16).to(tl.int16).to(tl.float16, bitcast=True)
    return lo, hi


@triton.jit
def dot16(a, b):
    """``a @ b`` of float16 or bfloat16 tiles, accumulated in float32 (bfloat16 in float32 under
    the interpreter, whose bf16 products are wrong)."""
    if INTERPRETED and a.dtype == tl.bfloat16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)
