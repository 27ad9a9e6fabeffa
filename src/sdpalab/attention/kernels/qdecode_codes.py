"""How the fast quantized-KV decode kernel (``qdecode_fast``) turns 32-bit words of a cache
into float16 tensor-core operands, in registers.

Codes by position. A 32-bit word of the cache holds ``E`` codes (4 bytes, or 8 nibbles) of
channels ``E*j .. E*j + E-1``. A dot product does not care in which order it visits channels, so
the codes of a word are never put back into channel order. ``_bits`` takes two codes of a word
at once, those at bits ``s`` and ``s + 16``, into the two float16 halves of a 32-bit register,
with one shift and one AND (int8: and an XOR; int4 codes at bits 4 and 12 are masked in place
and come out 16 times larger, which the queries and outputs of those tiles absorb). A tensor
core takes a register as a pair along the reduced dimension. For keys that is the channels:
the two halves are used as they are (``_joined``), with the queries gathered once per program in
the same channel order (``_joined_channel``). For values it is the keys: the low halves of the
words of keys ``2i`` and ``2i + 1`` are first put in one register and their high halves in
another (``_value_tiles``), and the codes are taken from those. Either way the words are loaded
straight into the tensor core's operand layout and no code goes through shared memory. The
output keeps one accumulator per value tile, stored with the matching stride.

Codes as float16 subnormals. The bits of an integer code ``u < 1024`` read as a float16 are the
subnormal ``u * 2^-24``, exactly, with no offset to take off (int8 codes are stored biased by
128, so that bias comes off the small score and output tiles). Tensor cores multiply float16
subnormals exactly into their float32 accumulators. fp8 e4m3 codes are re-based into float16 as
``value * 2^-8``.
"""

import triton
import triton.language as tl

from sdpalab.attention.kernels.qdecode_triton import _halves


@triton.jit
def _bits(x, SHIFT: tl.constexpr, FMT: tl.constexpr):
    """32-bit words → two float16 codes each, in the words' halves: the codes at bits ``SHIFT``
    and ``SHIFT + 16``. int4 codes at bits 4 and 12 are masked in place, with no shift: they
    come out 16 times larger (the kernel's ``UP``)."""
    if FMT == 1:  # int8 c → subnormal (c + 128) * 2^-24
        return ((x >> SHIFT) & 0x00FF00FF) ^ 0x00800080
    elif FMT == 2:  # e4m3 → value * 2^-8: sign to bit 15, exponent and mantissa to bits 7..13
        x = x >> SHIFT
        return ((x << 7) & 0x3F803F80) | ((x << 8) & -0x7FFF8000)
    elif SHIFT % 8 == 4:  # 4-bit c → subnormal 16 c * 2^-24
        return (x >> (SHIFT - 4)) & 0x00F000F0
    else:  # 4-bit c → subnormal c * 2^-24
        return (x >> SHIFT) & 0x000F000F


@triton.jit
def _joined(w, SHIFT: tl.constexpr, FMT: tl.constexpr):
    """The codes at bits ``SHIFT`` and ``SHIFT + 16`` of words ``[N, WP]`` side by side
    ``[N, 2 * WP]``, as the two halves of one 32-bit register (no data moves)."""
    lo, hi = _halves(_bits(w, SHIFT, FMT))
    return tl.reshape(tl.join(lo, hi), (w.shape[0], 2 * w.shape[1]))


@triton.jit
def _key_tiles(w, FMT: tl.constexpr, E: tl.constexpr):
    """Key words ``[N, WP]`` → ``E / 2`` float16 code tiles ``[N, 2 * WP]`` (``_joined_channel``
    maps their columns to channels; the last two repeat when E = 4; int4 tiles 1 and 3 are
    16 times larger)."""
    if E == 4:
        c0 = _joined(w, 0, FMT)
        c1 = _joined(w, 8, FMT)
        c2, c3 = c0, c1
    else:
        c0 = _joined(w, 0, FMT)
        c1 = _joined(w, 4, FMT)
        c2 = _joined(w, 8, FMT)
        c3 = _joined(w, 12, FMT)
    return c0, c1, c2, c3


@triton.jit
def _by_token(y):
    """``[N/2, WP]`` words holding the float16 codes of keys ``2i`` (low half) and ``2i + 1``
    (high half) → ``[N, WP]``: the halves become the key pairs that a value operand keeps in
    one register, so no data moves."""
    lo, hi = _halves(y)
    x = tl.permute(tl.join(lo, hi), (0, 2, 1))
    return tl.reshape(x, (2 * y.shape[0], y.shape[1]))


@triton.jit
def _value_tiles(w, FMT: tl.constexpr, E: tl.constexpr):
    """Value words ``[N, WP]`` → ``E`` float16 code tiles ``[N, WP]``, tile ``T`` holding channel
    ``E * col + T`` (int8, fp8: the last four repeat the first; int4 odd tiles are 16 times
    larger). A value operand pairs its registers along the keys: the low halves of the words
    of keys ``2i`` and ``2i + 1`` are put in one word, and their high halves in another, with
    one byte permute each; every code is then taken from the pair as from a key word."""
    N: tl.constexpr = w.shape[0]
    WP: tl.constexpr = w.shape[1]
    we, wo = tl.split(tl.permute(tl.reshape(w, (N // 2, 2, WP)), (0, 2, 1)))
    lo = (we & 0xFFFF) | (wo << 16)
    hi = ((we >> 16) & 0xFFFF) | (wo & -0x10000)
    if E == 4:
        c0 = _by_token(_bits(lo, 0, FMT))
        c1 = _by_token(_bits(lo, 8, FMT))
        c2 = _by_token(_bits(hi, 0, FMT))
        c3 = _by_token(_bits(hi, 8, FMT))
        c4, c5, c6, c7 = c0, c1, c2, c3
    else:
        c0 = _by_token(_bits(lo, 0, FMT))
        c1 = _by_token(_bits(lo, 4, FMT))
        c2 = _by_token(_bits(lo, 8, FMT))
        c3 = _by_token(_bits(lo, 12, FMT))
        c4 = _by_token(_bits(hi, 0, FMT))
        c5 = _by_token(_bits(hi, 4, FMT))
        c6 = _by_token(_bits(hi, 8, FMT))
        c7 = _by_token(_bits(hi, 12, FMT))
    return c0, c1, c2, c3, c4, c5, c6, c7


@triton.jit
def _joined_channel(col, T: tl.constexpr, E: tl.constexpr):
    """The channel of column ``col`` of joined tile ``T`` (codes ``T`` and ``T + E/2``)."""
    return (col // 2) * E + T + (col % 2) * (E // 2)
