"""The fast kernel of fused decode attention over a quantized KV cache: int8, fp8 and int4 caches
without recent tokens, KIVI caches (kivi4, kivi2) with their full-precision recent tokens,
float16 or bfloat16 queries, power-of-two head dims of at least 16 words (``host.fast_unavailable``);
the general kernel (``general.py``) takes the rest.

Keys first: every product is transposed so that the keys are the large side of the tensor-core
tile (scores ``codes [BLOCK_N, D] @ q^T [D, rows]``, outputs ``codes^T [D/E, BLOCK_N] @ p
[BLOCK_N, rows]``), and decode's 1 to 8 query rows per KV head fill its 8-wide side unpadded.

Codes by position: a 32-bit word holds ``E`` codes (4 bytes or 8 nibbles) of channels ``E*j ..
E*j + E-1``, and a dot product does not care in which order it visits channels, so codes are
never put back into channel order. ``codes.code_pairs`` takes the codes at bits ``s`` and
``s + 16`` into the two float16 halves of a register, which a tensor core takes as a pair along
the reduced dimension: for keys the channels (``_joined``; the queries are gathered once in the
same order, ``_joined_channel``), for values the keys (the halves of the words of keys ``2i``
and ``2i + 1`` are first regrouped, ``_value_tiles``). The words load straight into the operand
layout; no code goes through shared memory; one accumulator per value tile.

Codes as float16 subnormals: an integer code ``u < 1024`` read as float16 is ``u * 2^-24``
exactly, and tensor cores multiply subnormals exactly into float32; fp8 e4m3 becomes
``value * 2^-8``. A code tile holds ``(code + OFF) / UNIT_INV``; int4 codes at bits 4 and 12
come out 16 times larger (``UP``), which their queries and outputs absorb.

Channel groups by stacked rows (int4: a scale and a zero per token and group of channels): the
``R`` query rows are repeated ``NG`` times, once per group, with the other groups' channels of
the queries zeroed. One product gives every group's partial score; each stacked row is scaled by
its group's scale and a row's copies (neighbouring columns ``r * NG + g``, held by one thread)
are summed into the score they share. The online softmax runs once per row; each copy carries
the probabilities times its group's value scales, and channel ``c`` is read from the copy of its
group. A row's copies share one power-of-two query scale ``alpha``; the softmax scale's sign
goes into the queries. Value scales are taken relative to a running maximum ``beta``, so float16
probabilities times scales never overflow; each block's product is added to the float32
accumulators outside the tensor cores, which truncate as they accumulate (int8's bias makes
their sums ~100x the result).

KIVI (keys per channel over groups of ``GROUP`` tokens, values as int4 with groups of ``GROUP``
channels): the key side has no stacked rows; per token group the queries (over ``alpha``, so at
most 1; tiles 1 and 3, whose codes come out 16 times larger, over ``16 alpha``) are multiplied
by the group's float16 channel scales, which keeps them within float16, and meet the codes in
one product; q · zeros, one reduction over the four tiles, is added to every score of the group.
A block is a multiple or a divisor of the group, so scales and zeros load once per group. kivi2's
words (16 codes of 2 bits) are split into two words of nibbles, the even and the odd codes
(``_as_nibbles``), and read from there on as int4 words; ``_channel`` maps their columns back
to channels. The recent tokens are read last, in blocks of ``BLOCK_N`` in the queries' dtype,
their outputs added to the value tiles' accumulators in the accumulators' units.

Per-token scales (and int4 zeros) feed no ``tl.dot``, so Triton's pipeliner does not stage them:
with up to two groups the next block's are loaded while a block computes (``AHEAD``), with more
they are prefetched into L1 (compiled kernels only). Why each choice, with measurements:
``benchmarks/notes/qdecode-kernel.md``.
"""

from typing import NamedTuple

import triton
import triton.language as tl

from sdpalab.attention.kernels.qdecode.codes import Planes, code_pairs, dot16, halves, plane_bases
from sdpalab.attention.kernels.qdecode.splits import (
    gdc_launch_dependents,
    key_range,
    last_split,
    merge_rows,
)


class Scales(NamedTuple):
    """Per-token scales and zeros ``[BLOCK_N, NG]`` float16 of one block (int8 and fp8 have no
    zeros: ``kz``, ``vz`` repeat the scales)."""

    ks: tl.tensor
    kz: tl.tensor
    vs: tl.tensor
    vz: tl.tensor


class State(NamedTuple):
    """A program's online softmax after some blocks of keys, float32. Rows are a tile's query
    rows; stacked rows their ``NG`` copies (``BLOCK_M = R * NG``)."""

    m_i: tl.tensor  # [R] largest base-2 score so far
    l_i: tl.tensor  # [R] sum of 2^(score - m_i)
    beta: tl.tensor  # [] largest value scale so far
    ps: tl.tensor  # [BLOCK_M] sum of the float16 p * scale / beta (takes off int8's code bias)
    zs: tl.tensor  # [BLOCK_M] sum of p * zero / beta (int4's zeros)
    a0: tl.tensor  # [WP, BLOCK_M] output of value tile 0 (channels E * col); a1..a7 likewise
    a1: tl.tensor
    a2: tl.tensor
    a3: tl.tensor
    a4: tl.tensor  # int8, fp8: [1, 1], carried unchanged
    a5: tl.tensor
    a6: tl.tensor
    a7: tl.tensor
    scales: Scales  # the next block's, when loaded ahead (``AHEAD``); else 0.0


class Keys(NamedTuple):
    """Where a program finds a block of keys: ``n0 + offs`` for block ``n0``, none past ``hi``."""

    planes: Planes
    offs: tl.tensor  # [BLOCK_N] 0 .. BLOCK_N - 1
    hi: tl.tensor  # end of the program's keys
    kw_off: tl.tensor  # [BLOCK_N, WP] offsets of a block's key words from the block's base
    vw_off: tl.tensor  # the same for value words (int8, fp8: kw_off itself)
    s_kwn: tl.tensor  # token stride of the key words
    s_vwn: tl.tensor  # token stride of the value words
    s_kst: tl.tensor  # KIVI: token-group stride of the key scales and zeros ([S / GROUP, D])


class Queries(NamedTuple):
    """A program's queries as the blocks meet them."""

    q0: tl.tensor  # [2 * WP, BLOCK_M] float16 queries of key tile 0's channels; q1..q3 likewise
    q1: tl.tensor  # (KIVI: [2 * WP, R] float32, before the key scales)
    q2: tl.tensor  # int8, fp8: q0 again
    q3: tl.tensor  # int8, fp8: q1 again
    off: tl.tensor  # [BLOCK_M] what the code bias adds to a stacked row's raw products
    zero: tl.tensor  # [BLOCK_M] times a zero: the zero's share of the raw products
    row_scale: tl.tensor  # [R] (> 0) turns a row's summed raw products into base-2 scores
    g_row: tl.tensor  # [BLOCK_M] channel group of each stacked row
    lim: tl.tensor  # [R] the last key each row sees (causal)
    nat: tl.tensor  # KIVI: [R, D] the queries as given, for the recent tokens; else 0.0


class Recent(NamedTuple):
    """Where a KIVI program finds its full-precision recent tokens (positions ``start`` on)."""

    k: tl.tensor  # keys [R_len, D] of this (batch, KV head)
    v: tl.tensor  # values, the same
    s_kn: tl.tensor  # token strides
    s_vn: tl.tensor
    start: tl.tensor  # position of recent token 0 (the quantized token count)
    hi: tl.tensor  # end of the program's keys
    qk_scale: tl.tensor  # the softmax scale times log2(e)


# ---------------------------------------------------------------- codes → tensor-core operands


@triton.jit
def _as_nibbles(w):
    """kivi2 words ``[N, W]`` (16 codes of 2 bits) → ``[N, 2W]`` words of 8 codes in nibbles:
    word ``2j`` holds word j's even codes, word ``2j + 1`` its odd ones (``_channel``)."""
    even = w & 0x33333333
    odd = (w >> 2) & 0x33333333
    return tl.reshape(tl.join(even, odd), (w.shape[0], 2 * w.shape[1]))


@triton.jit
def _channel(c, PAIRS: tl.constexpr):
    """The channel of code ``c % 8`` of word ``c // 8`` (``c = 8 * word + code``): itself, or
    with ``PAIRS`` (kivi2, ``_as_nibbles``) code ``2 * (c % 8) + odd`` of stored word ``c // 16``."""
    if PAIRS:
        return (c // 16) * 16 + (c % 8) * 2 + (c // 8) % 2
    return c


@triton.jit
def _joined(w, SHIFT: tl.constexpr, FMT: tl.constexpr):
    """The codes at bits ``SHIFT`` and ``SHIFT + 16`` of words ``[N, WP]`` side by side
    ``[N, 2 * WP]``, as the two halves of one 32-bit register (no data moves)."""
    lo, hi = halves(code_pairs(w, SHIFT, FMT, True))
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
def _joined_channel(col, T: tl.constexpr, E: tl.constexpr):
    """The channel of column ``col`` of joined key tile ``T`` (codes ``T`` and ``T + E/2``)."""
    return (col // 2) * E + T + (col % 2) * (E // 2)


@triton.jit
def _by_token(y):
    """``[N/2, WP]`` words holding the float16 codes of keys ``2i`` (low half) and ``2i + 1``
    (high half) → ``[N, WP]``: the halves become the key pairs that a value operand keeps in
    one register, so no data moves."""
    lo, hi = halves(y)
    x = tl.permute(tl.join(lo, hi), (0, 2, 1))
    return tl.reshape(x, (2 * y.shape[0], y.shape[1]))


@triton.jit
def _value_tiles(w, FMT: tl.constexpr, E: tl.constexpr):
    """Value words ``[N, WP]`` → ``E`` float16 code tiles ``[N, WP]``, tile ``T`` holding channel
    ``E * col + T`` (int8, fp8: the last four repeat the first; int4 odd tiles are 16 times
    larger). The low halves of the words of keys ``2i`` and ``2i + 1`` are put in one word, and
    their high halves in another, with one byte permute each; every code is then taken from
    the pair as from a key word."""
    N: tl.constexpr = w.shape[0]
    WP: tl.constexpr = w.shape[1]
    we, wo = tl.split(tl.permute(tl.reshape(w, (N // 2, 2, WP)), (0, 2, 1)))
    lo = (we & 0xFFFF) | (wo << 16)
    hi = ((we >> 16) & 0xFFFF) | (wo & -0x10000)
    if E == 4:
        c0 = _by_token(code_pairs(lo, 0, FMT, True))
        c1 = _by_token(code_pairs(lo, 8, FMT, True))
        c2 = _by_token(code_pairs(hi, 0, FMT, True))
        c3 = _by_token(code_pairs(hi, 8, FMT, True))
        c4, c5, c6, c7 = c0, c1, c2, c3
    else:
        c0 = _by_token(code_pairs(lo, 0, FMT, True))
        c1 = _by_token(code_pairs(lo, 4, FMT, True))
        c2 = _by_token(code_pairs(lo, 8, FMT, True))
        c3 = _by_token(code_pairs(lo, 12, FMT, True))
        c4 = _by_token(code_pairs(hi, 0, FMT, True))
        c5 = _by_token(code_pairs(hi, 4, FMT, True))
        c6 = _by_token(code_pairs(hi, 8, FMT, True))
        c7 = _by_token(code_pairs(hi, 12, FMT, True))
    return c0, c1, c2, c3, c4, c5, c6, c7


# ---------------------------------------------------------------- stacked rows, per-token planes


@triton.jit
def _load_q(base, col, row_ok, g_row, T: tl.constexpr, E: tl.constexpr, GROUP: tl.constexpr,
            alpha):  # fmt: skip
    """Queries of key tile ``T``'s channels, of each stacked row's group only, over alpha,
    float16, transposed: ``[2 * WP, BLOCK_M]``."""
    ch = _joined_channel(col, T, E)
    keep = row_ok[None, :] & ((ch // GROUP)[:, None] == g_row[None, :])
    x = tl.load(base + ch[:, None], mask=keep, other=0.0).to(tl.float32)
    return (x / alpha[None, :]).to(tl.float16)


@triton.jit
def _store(base, col, row_ok, g_row, x, T: tl.constexpr, E: tl.constexpr, GROUP: tl.constexpr,
           PAIRS: tl.constexpr):  # fmt: skip
    """Output of value tile ``T`` (``x [WP, BLOCK_M]``: channel ``E * col + T``, or its
    ``_channel`` with ``PAIRS``), each stacked row's group only."""
    ch = _channel(col * E + T, PAIRS)
    keep = row_ok[None, :] & ((ch // GROUP)[:, None] == g_row[None, :])
    tl.store(base + ch[:, None], x, mask=keep)


@triton.jit
def _times_group(x, base, n, n_ok, g_row, NG: tl.constexpr):
    """``x [BLOCK_N, BLOCK_M]`` times the per-token values of each stacked row's group (plane
    ``[S, NG]`` at ``base``; stacked row r has group ``g_row[r]``)."""
    if n_ok is None:
        out = x * tl.load(base + n * NG).to(tl.float32)[:, None]
    else:
        out = x * tl.load(base + n * NG, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    for g in tl.static_range(1, NG):
        if n_ok is None:
            vg = tl.load(base + n * NG + g).to(tl.float32)
        else:
            vg = tl.load(base + n * NG + g, mask=n_ok, other=0.0).to(tl.float32)
        out = tl.where((g_row == g)[None, :], x * vg[:, None], out)
    return out


@triton.jit
def _plane_max(base, n, n_ok, NG: tl.constexpr):
    """The largest per-token value of keys ``n`` in plane ``[S, NG]`` at ``base`` (0 for keys
    past ``n_ok``)."""
    g = tl.arange(0, NG)
    if n_ok is None:
        v = tl.load(base + n[:, None] * NG + g[None, :])
    else:
        v = tl.load(base + n[:, None] * NG + g[None, :], mask=n_ok[:, None], other=0.0)
    return tl.max(tl.max(v, 1), 0).to(tl.float32)


@triton.jit
def _plane_tile(base, n0, offs_n, hi, NG: tl.constexpr):
    """Per-token values ``[BLOCK_N, NG]`` of keys ``n0 + offs_n`` (0 past ``hi``) from a plane
    stored ``[S, NG]`` contiguous, as stored (float16: converted where used, so that nothing
    waits on the load before then): one vectorized load from a scalar base."""
    g = tl.arange(0, NG)
    ok = (offs_n + n0 < hi)[:, None]  # offsets first: the interpreter's n0 may be a constexpr
    return tl.load(base + n0 * NG + (offs_n[:, None] * NG + g[None, :]), mask=ok, other=0.0)


@triton.jit
def _scales_of(planes, n0, offs_n, hi, E: tl.constexpr, NG: tl.constexpr, KIVI: tl.constexpr):
    """The ``Scales`` of keys ``n0 + offs_n`` (KIVI: the values' only; ``ks``, ``kz`` repeat
    them)."""
    vs = _plane_tile(planes.vs, n0, offs_n, hi, NG)
    if KIVI:
        vz = _plane_tile(planes.vz, n0, offs_n, hi, NG)
        return Scales(vs, vz, vs, vz)
    ks = _plane_tile(planes.ks, n0, offs_n, hi, NG)
    if E == 8:
        kz = _plane_tile(planes.kz, n0, offs_n, hi, NG)
        vz = _plane_tile(planes.vz, n0, offs_n, hi, NG)
    else:
        kz, vz = ks, vs
    return Scales(ks, kz, vs, vz)


@triton.jit
def _pick(v, R: tl.constexpr):
    """``[BLOCK_N, NG]`` per-token values → ``[BLOCK_N, R * NG]``, each stacked row (``r * NG +
    g``) its group's value, float32."""
    n: tl.constexpr = v.shape[0]
    NG: tl.constexpr = v.shape[1]
    x = tl.broadcast_to(tl.expand_dims(v.to(tl.float32), 1), (n, R, NG))
    return tl.reshape(x, (n, R * NG))


@triton.jit
def _row_total(x, NG: tl.constexpr, R: tl.constexpr):
    """``[N, R * NG]`` stacked rows → ``[N, R]``: each row's sum over its NG copies."""
    if NG == 1:
        return x
    n: tl.constexpr = x.shape[0]
    return tl.sum(tl.reshape(x, (n, R, NG)), 2)


@triton.jit
def _copies(x, NG: tl.constexpr):
    """``[N, R]`` per row → ``[N, R * NG]`` per stacked row (a row's copies side by side)."""
    if NG == 1:
        return x
    n: tl.constexpr = x.shape[0]
    r: tl.constexpr = x.shape[1]
    return tl.reshape(tl.broadcast_to(tl.expand_dims(x, 2), (n, r, NG)), (n, r * NG))


@triton.jit
def _row_copies(x, NG: tl.constexpr):
    """``[R]`` per row → ``[R * NG]`` per stacked row."""
    if NG == 1:
        return x
    r: tl.constexpr = x.shape[0]
    return tl.reshape(tl.broadcast_to(tl.expand_dims(x, 1), (r, NG)), (r * NG,))


# ---------------------------------------------------------------- memory hints (compiled only)


@triton.jit
def _prefetch(ptrs):
    """Ask for the lines at ``ptrs`` to be brought into L1 (no result, nothing waits on it)."""
    tl.inline_asm_elementwise("prefetch.global.L1 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs],
                              dtype=tl.int32, is_pure=False, pack=1)  # fmt: skip


@triton.jit
def _bulk_l2(ptr, nbytes):
    """Ask L2 for about ``nbytes`` from ``ptr``: one bulk prefetch (sm_90 and later) of the
    16-byte-aligned range inside them, issued by lane 0; nothing waits on it."""
    p = ptr + tl.zeros([1], tl.int32)
    n = (nbytes + tl.zeros([1], tl.int32)).to(tl.int32)
    tl.inline_asm_elementwise(
        "{ .reg .pred p, q; .reg .b32 l, n; .reg .b64 a, e; "
        "add.u64 a, $1, 15; and.b64 a, a, -16; cvt.u64.u32 e, $2; add.u64 e, e, $1; "
        "and.b64 e, e, -16; sub.u64 e, e, a; cvt.u32.u64 n, e; "
        "mov.u32 l, %laneid; setp.eq.u32 p, l, 0; setp.gt.s32 q, n, 0; and.pred p, p, q; "
        "@p cp.async.bulk.prefetch.L2.global [a], n; mov.u32 $0, 0; }",
        "=r,l,r", [p, n], dtype=tl.int32, is_pure=False, pack=1,
    )  # fmt: skip


# ---------------------------------------------------------------- one block of keys


# ---------------------------------------------------------------- KIVI: keys per channel, recent tokens


@triton.jit
def _kivi_q(row, col, row_ok, T: tl.constexpr, PAIRS: tl.constexpr, alpha):
    """Queries of key tile ``T``'s channels over alpha, float32, transposed: ``[2 * WP, R]``."""
    ch = _channel(_joined_channel(col, T, 8), PAIRS)
    x = tl.load(row[None, :] + ch[:, None], mask=row_ok[None, :], other=0.0).to(tl.float32)
    return x / alpha[None, :]


@triton.jit
def _kivi_queries(row, row_ok, col, g_row, lim, qk_scale, UNIT_INV: tl.constexpr,
                  HEAD_DIM: tl.constexpr, PAIRS: tl.constexpr):  # fmt: skip
    """The ``Queries`` of rows whose first channels are at ``row [R]``, for KIVI keys: ``q0..q3``
    the queries of each key tile over a power of two ``alpha`` >= the row's largest |q| (the
    softmax scale's sign included), tiles 1 and 3 (codes at bits 4 and 12, 16 times larger)
    over ``16 alpha``; per token group ``_kivi_scores`` multiplies them by the key scales."""
    d = tl.arange(0, HEAD_DIM)
    nat = tl.load(row[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)
    top = tl.max(tl.abs(nat.to(tl.float32)), 1)
    alpha_r = tl.exp2(tl.ceil(tl.log2(tl.where(top == 0.0, 1.0, top))))
    alpha = alpha_r * tl.where(qk_scale < 0, -1.0, 1.0)
    return Queries(
        _kivi_q(row, col, row_ok, 0, PAIRS, alpha),
        _kivi_q(row, col, row_ok, 1, PAIRS, alpha * 16.0),
        _kivi_q(row, col, row_ok, 2, PAIRS, alpha),
        _kivi_q(row, col, row_ok, 3, PAIRS, alpha * 16.0),
        off=0.0,
        zero=0.0,
        row_scale=alpha_r * (UNIT_INV * tl.abs(qk_scale)),
        g_row=g_row,
        lim=lim,
        nat=nat,
    )  # fmt: skip


@triton.jit
def _kivi_scale(base, ch, first, hi):
    """Per-channel values ``[2 * WP]`` of the token group whose first token is ``first`` (0 if
    that is past ``hi``: a partial last block), float32."""
    return tl.load(base + ch, mask=(first + 0 * ch) < hi, other=0.0).to(tl.float32)


@triton.jit
def _kivi_scores(k0, k1, k2, k3, n0, n, keys, queries, GROUP: tl.constexpr, PAIRS: tl.constexpr,
                 UNIT_INV: tl.constexpr):  # fmt: skip
    """Raw scores ``[BLOCK_N, R]`` of KIVI key tiles ``k0..k3`` (times ``row_scale`` they are the
    base-2 scores): per token group of the block, ``codes · (q * scale)`` plus ``q · zero``.
    ``|q| <= 1`` (tiles 1 and 3: 1/16) and float16 scales keep ``q * scale`` in float16."""
    BLOCK_N: tl.constexpr = k0.shape[0]
    TG: tl.constexpr = BLOCK_N // GROUP if BLOCK_N > GROUP else 1  # token groups per block
    col = tl.arange(0, k0.shape[1])
    c0 = _channel(_joined_channel(col, 0, 8), PAIRS)
    c1 = _channel(_joined_channel(col, 1, 8), PAIRS)
    c2 = _channel(_joined_channel(col, 2, 8), PAIRS)
    c3 = _channel(_joined_channel(col, 3, 8), PAIRS)
    qk = tl.zeros([BLOCK_N, queries.q0.shape[1]], tl.float32)
    for t in tl.static_range(TG):
        tg = n0 // GROUP + t
        ks = keys.planes.ks + tg * keys.s_kst
        s0, s1 = _kivi_scale(ks, c0, tg * GROUP, keys.hi), _kivi_scale(ks, c1, tg * GROUP, keys.hi)
        s2, s3 = _kivi_scale(ks, c2, tg * GROUP, keys.hi), _kivi_scale(ks, c3, tg * GROUP, keys.hi)
        raw = tl.dot(k0, (queries.q0 * s0[:, None]).to(tl.float16))
        raw = tl.dot(k1, (queries.q1 * s1[:, None]).to(tl.float16), raw)
        raw = tl.dot(k2, (queries.q2 * s2[:, None]).to(tl.float16), raw)
        raw = tl.dot(k3, (queries.q3 * s3[:, None]).to(tl.float16), raw)
        kz = keys.planes.kz + tg * keys.s_kst  # q · zeros: one reduction for the four tiles
        z0, z1 = _kivi_scale(kz, c0, tg * GROUP, keys.hi), _kivi_scale(kz, c1, tg * GROUP, keys.hi)
        z2, z3 = _kivi_scale(kz, c2, tg * GROUP, keys.hi), _kivi_scale(kz, c3, tg * GROUP, keys.hi)
        qz = queries.q0 * z0[:, None] + queries.q2 * z2[:, None]
        qz += (queries.q1 * z1[:, None] + queries.q3 * z3[:, None]) * 16.0
        part = raw + (tl.sum(qz, 0) * (1.0 / UNIT_INV))[None, :]
        if TG == 1:  # noqa: SIM108 (a constexpr branch; keep it explicit for Triton)
            qk = part
        else:
            qk = tl.where(((n // GROUP) == tg)[:, None], part, qk)
    return qk


@triton.jit
def _plus_recent(acc, f, recent, nr, n_ok, pc, unit, T: tl.constexpr, PAIRS: tl.constexpr):
    """Value tile ``T``'s accumulator ``[WP, BLOCK_M]`` rescaled by ``f`` plus the recent
    tokens' ``v^T · p`` (``pc [BLOCK_N, BLOCK_M]``) in its units (odd tiles 16 times larger)."""
    WP: tl.constexpr = acc.shape[0]
    ch = _channel(tl.arange(0, WP) * 8 + T, PAIRS)
    v = tl.load(recent.v + nr[:, None] * recent.s_vn + ch[None, :], mask=n_ok[:, None], other=0.0)
    up: tl.constexpr = 16.0 if T % 2 else 1.0
    return acc * f + dot16(tl.trans(v.to(pc.dtype)), pc) * (unit * up)


@triton.jit
def _recent_block(state, n0, offs, recent, queries, NG: tl.constexpr, PAIRS: tl.constexpr,
                  UNIT_INV: tl.constexpr):  # fmt: skip
    """The ``State`` after full-precision recent tokens ``n0 + offs`` (one more block, in the
    queries' dtype): their outputs go into the value tiles' accumulators in those units (the
    numerator over ``beta * UNIT_INV``, odd tiles 16 times larger). ``beta`` is raised to at
    least 1 first, so that the units of a program with no quantized token stay in range."""
    n = n0 + offs
    n_ok = n < recent.hi
    nr = n - recent.start
    ty = queries.nat.dtype
    HEAD_DIM: tl.constexpr = queries.nat.shape[1]
    d = tl.arange(0, HEAD_DIM)
    kr = tl.load(recent.k + nr[:, None] * recent.s_kn + d[None, :], mask=n_ok[:, None], other=0.0)
    qk = dot16(kr.to(ty), tl.trans(queries.nat)) * recent.qk_scale  # [BLOCK_N, R], base 2
    qk = tl.where(n_ok[:, None] & (n[:, None] <= queries.lim[None, :]), qk, float("-inf"))
    m_new = tl.maximum(state.m_i, tl.max(qk, 0))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    corr = tl.exp2(state.m_i - m_safe)
    p = tl.exp2(qk - m_safe[None, :])
    l_i = state.l_i * corr + tl.sum(p, 0)
    beta = tl.maximum(state.beta, 1.0)
    f_row = _row_copies(corr * (state.beta / beta), NG)
    f = f_row[None, :]
    pc = _copies(p, NG).to(ty)  # every copy: the recent tokens have no channel groups
    unit = 1.0 / (beta * UNIT_INV)
    a0 = _plus_recent(state.a0, f, recent, nr, n_ok, pc, unit, 0, PAIRS)
    a1 = _plus_recent(state.a1, f, recent, nr, n_ok, pc, unit, 1, PAIRS)
    a2 = _plus_recent(state.a2, f, recent, nr, n_ok, pc, unit, 2, PAIRS)
    a3 = _plus_recent(state.a3, f, recent, nr, n_ok, pc, unit, 3, PAIRS)
    a4 = _plus_recent(state.a4, f, recent, nr, n_ok, pc, unit, 4, PAIRS)
    a5 = _plus_recent(state.a5, f, recent, nr, n_ok, pc, unit, 5, PAIRS)
    a6 = _plus_recent(state.a6, f, recent, nr, n_ok, pc, unit, 6, PAIRS)
    a7 = _plus_recent(state.a7, f, recent, nr, n_ok, pc, unit, 7, PAIRS)
    return State(m_new, l_i, beta, state.ps * f_row, state.zs * f_row, a0, a1, a2, a3, a4, a5, a6,
                 a7, state.scales)  # fmt: skip


@triton.jit
def _block(
    state, n0, keys, queries, FMT: tl.constexpr, E: tl.constexpr, NG: tl.constexpr,
    OFF: tl.constexpr, R: tl.constexpr, MASKED: tl.constexpr, PREFETCH: tl.constexpr,
    AHEAD: tl.constexpr, GROUP: tl.constexpr, UNIT_INV: tl.constexpr,
):  # fmt: skip
    """The ``State`` after keys ``n0 + keys.offs``. ``MASKED``: some keys are past ``keys.hi``
    or, for some rows, past the causal limit ``queries.lim``. Tiles are transposed, keys first:
    scores ``[BLOCK_N, rows]``, output ``[WP, rows]`` per value tile. KIVI (``FMT`` 4, 5): keys
    in token groups of ``GROUP`` (``_kivi_scores``)."""
    KIVI: tl.constexpr = FMT >= 4
    CODES: tl.constexpr = 4 if KIVI else FMT  # kivi2's words are split into nibbles
    planes = keys.planes
    n = n0 + keys.offs
    g_row = queries.g_row
    BLOCK_M: tl.constexpr = g_row.shape[0]
    BLOCK_N: tl.constexpr = n.shape[0]
    sc = state.scales
    if AHEAD:  # this block's scales (and zeros) came with the last block; load the next ones
        ks, kz, vs, vz = sc
        sc = _scales_of(planes, n0 + BLOCK_N, keys.offs, keys.hi, E, NG, KIVI)
    elif PREFETCH:  # the next block's scales (and zeros) into L1 while this block computes
        nx = tl.minimum(n + BLOCK_N, keys.hi - 1)
        _prefetch(planes.vs + nx * NG)
        if not KIVI:
            _prefetch(planes.ks + nx * NG)
        if E == 8:
            _prefetch(planes.vz + nx * NG)
            if not KIVI:
                _prefetch(planes.kz + nx * NG)
    kw_blk = planes.kw + n0 * keys.s_kwn
    vw_blk = planes.vw + n0 * keys.s_vwn
    if MASKED:
        n_ok = n < keys.hi
        kw = tl.load(kw_blk + keys.kw_off, mask=n_ok[:, None], other=0)
        vw = tl.load(vw_blk + keys.vw_off, mask=n_ok[:, None], other=0)
    else:
        n_ok = None
        kw = tl.load(kw_blk + keys.kw_off)
        vw = tl.load(vw_blk + keys.vw_off)
    if FMT == 5:
        kw, vw = _as_nibbles(kw), _as_nibbles(vw)

    # ---- scores: per copy, scale * (codes·q16 - off) [+ zero * sum q], summed over a row's
    # copies; times row_scale (> 0) they are the base-2 softmax's scores
    k0, k1, k2, k3 = _key_tiles(kw, CODES, E)
    if KIVI:  # one copy per row: the key scales are per channel
        qk = _kivi_scores(k0, k1, k2, k3, n0, n, keys, queries, GROUP, FMT == 5, UNIT_INV)
    else:
        raw = tl.zeros([BLOCK_N, BLOCK_M], tl.float32) - queries.off[None, :]
        raw = tl.dot(k0, queries.q0, raw)
        raw = tl.dot(k1, queries.q1, raw)
        if E == 8:
            raw = tl.dot(k2, queries.q2, raw)
            raw = tl.dot(k3, queries.q3, raw)
        if AHEAD:
            qk = raw * _pick(ks, R)
            if E == 8:
                qk += _pick(kz, R) * queries.zero[None, :]
        else:
            qk = _times_group(raw, planes.ks, n, n_ok, g_row, NG)
            if E == 8:  # int4 has zeros: zero * sum(q); the ones are raw * 0 + 1, to stay in
                # the product's layout
                qz = _times_group(raw * 0.0 + 1.0, planes.kz, n, n_ok, g_row, NG)
                qk += qz * queries.zero[None, :]
        qk = _row_total(qk, NG, R)

    # ---- online softmax (base 2), once per row; its probabilities then go to every copy
    if MASKED:
        qk = tl.where(n_ok[:, None] & (n[:, None] <= queries.lim[None, :]), qk, float("-inf"))
    m_new = tl.maximum(state.m_i, tl.max(qk, 0) * queries.row_scale)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    corr = tl.exp2(state.m_i - m_safe)
    p = tl.exp2(qk * queries.row_scale[None, :] - m_safe[None, :])
    l_i = state.l_i * corr + tl.sum(p, 0)

    # ---- values: acc += codes · (p * scale / beta), everything rescaled by corr and beta (the
    # running largest value scale, one for all rows)
    if AHEAD:
        beta_new = tl.maximum(state.beta, tl.max(tl.max(vs, 1), 0).to(tl.float32))
    else:
        beta_new = tl.maximum(state.beta, _plane_max(planes.vs, n, n_ok, NG))
    p = _copies(p * (-1.0 / beta_new), NG)  # -p / beta, per copy
    if AHEAD:
        pv_neg = (p * _pick(vs, R)).to(tl.float16)
    else:
        pv_neg = _times_group(p, planes.vs, n, n_ok, g_row, NG).to(tl.float16)
    f_row = _row_copies(corr * (state.beta / beta_new), NG)
    f = f_row[None, :]
    ps, zs = state.ps, state.zs
    if OFF != 0:
        ps = ps * f_row - tl.sum(pv_neg.to(tl.float32), 0)
    if E == 8:
        pz = p * _pick(vz, R) if AHEAD else _times_group(p, planes.vz, n, n_ok, g_row, NG)
        zs = zs * f_row - tl.sum(pz, 0)
    v0, v1, v2, v3, v4, v5, v6, v7 = _value_tiles(vw, CODES, E)
    # A fresh product per block, added in float32: tensor cores truncate as they accumulate.
    # (Subtracting the product of -pv keeps Triton from folding the sum back into the product's
    # accumulator.)
    a0 = state.a0 * f - tl.dot(tl.trans(v0), pv_neg)
    a1 = state.a1 * f - tl.dot(tl.trans(v1), pv_neg)
    a2 = state.a2 * f - tl.dot(tl.trans(v2), pv_neg)
    a3 = state.a3 * f - tl.dot(tl.trans(v3), pv_neg)
    a4, a5, a6, a7 = state.a4, state.a5, state.a6, state.a7
    if E == 8:
        a4 = a4 * f - tl.dot(tl.trans(v4), pv_neg)
        a5 = a5 * f - tl.dot(tl.trans(v5), pv_neg)
        a6 = a6 * f - tl.dot(tl.trans(v6), pv_neg)
        a7 = a7 * f - tl.dot(tl.trans(v7), pv_neg)
    return State(m_new, l_i, beta_new, ps, zs, a0, a1, a2, a3, a4, a5, a6, a7, sc)


# ---------------------------------------------------------------- the kernel


@triton.jit
def fast_kernel(
    Q, Out, Part, Lse, KW, KS, KZ, VW, VS, VZ, KR, VR,
    q_len, n_quant, kv_len, chunk, num_splits, qk_scale,
    s_qb, s_qh, s_qs, s_ob, s_oh, s_os,
    s_kwb, s_kwh, s_kwn, s_ksb, s_ksh, s_kst,
    s_vwb, s_vwh, s_vwn, s_vsb, s_vsh,
    s_krb, s_krh, s_krn, s_vrb, s_vrh, s_vrn,
    H_KV, counter_off,
    G: tl.constexpr, HEAD_DIM: tl.constexpr, FMT: tl.constexpr, E: tl.constexpr,
    WP: tl.constexpr, NG: tl.constexpr, OFF: tl.constexpr, UNIT_INV: tl.constexpr,
    R: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, SPLIT: tl.constexpr,
    PREFETCH: tl.constexpr, PDL: tl.constexpr, BULK_L2: tl.constexpr,
    FUSED_MERGE: tl.constexpr = False,
):  # fmt: skip
    """One (batch, KV head) x ``R`` query rows x KV split (grid: ``B * H_kv``, query tiles,
    splits). ``Q``, ``Out``: ``[B, H_q, q_len, D]``; ``KW``/``VW``: int32 words ``[B, H_kv, S,
    WP]`` of ``E`` codes each (kivi2: ``WP / 2`` words of 16); ``KS``/``KZ``/``VS``/``VZ``:
    per-token float16 scales and zeros ``[B, H_kv, S, NG]``, a token's ``NG`` values
    contiguous. int8, fp8 (E = 4): one scale per token, ``NG`` = 1. int4 (E = 8): a scale and a
    zero per token and group of ``HEAD_DIM / NG`` channels. KIVI (E = 8): values as int4; key
    scales and zeros ``[B, H_kv, S / GROUP, D]`` (token-group stride ``s_kst``, channels
    contiguous) with ``GROUP = HEAD_DIM / NG``, the value groups' size too; keys ``[0,
    n_quant)`` quantized, ``[n_quant, kv_len)`` in ``KR``/``VR`` ``[B, H_kv, R_len, D]``.
    ``Part``/``Lse``: each split's partial output and base-2 log-sum-exp. ``qk_scale``: the
    softmax scale times log2(e). ``PDL``: the merge kernel, a programmatic dependent launch, may
    be scheduled once every program is past its loop. ``FUSED_MERGE``: no merge kernel; the
    last split program of each query tile merges the tile (int32 counters, zero between calls,
    at ``Lse + counter_off``)."""
    KIVI: tl.constexpr = FMT >= 4
    PAIRS: tl.constexpr = FMT == 5  # kivi2: two words of nibbles per stored word
    BLOCK_M: tl.constexpr = NG * R
    GROUP: tl.constexpr = HEAD_DIM // NG  # channels per group (KIVI: tokens per key group too)
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = (pid_bh // H_KV).to(tl.int64)
    hk = (pid_bh % H_KV).to(tl.int64)
    r = pid_m * R + tl.arange(0, R)  # the rows themselves
    lim, lo, hi, seen_by_all = key_range(r // G, pid_m, pid_s, q_len, kv_len, chunk, R, G,
                                         CAUSAL)  # fmt: skip
    q_hi = tl.minimum(hi, n_quant)  # end of the quantized keys
    planes = plane_bases(
        KW, KS, KZ, VW, VS, VZ, b, hk, s_kwb, s_kwh, s_ksb, s_ksh, s_vwb, s_vwh, s_vsb, s_vsh
    )
    if BULK_L2 and hi > lo:  # the first two blocks head for L2 while the queries load
        ntok = tl.minimum(hi - lo, 2 * BLOCK_N)
        _bulk_l2(planes.kw + lo * s_kwn, ntok * s_kwn * 4)
        _bulk_l2(planes.vw + lo * s_vwn, ntok * s_vwn * 4)
        _bulk_l2(planes.ks + lo * NG, ntok * NG * 2)
        _bulk_l2(planes.vs + lo * NG, ntok * NG * 2)
        if E == 8:
            _bulk_l2(planes.kz + lo * NG, ntok * NG * 2)
            _bulk_l2(planes.vz + lo * NG, ntok * NG * 2)

    # stacked row t: copy g_row = t % NG of row m = pid_m * R + t // NG (query token m // G,
    # query head hk * G + m % G); a row's copies are neighbours, held by one thread
    t = tl.arange(0, BLOCK_M)
    g_row = t % NG
    m = pid_m * R + t // NG
    qi = m // G
    hq = hk * G + m % G
    row_ok = qi < q_len
    j = tl.arange(0, WP)  # word of a token; column of a value tile
    kcol = tl.arange(0, 2 * WP)  # of a key tile
    q_row = Q + b * s_qb + hq * s_qh + qi * s_qs
    if KIVI:
        rows = Q + b * s_qb + (hk * G + r % G) * s_qh + (r // G) * s_qs
        queries = _kivi_queries(rows, r // G < q_len, kcol, g_row, lim, qk_scale, UNIT_INV,
                                HEAD_DIM, PAIRS)  # fmt: skip
        UP: tl.constexpr = 16.0
    else:
        d = tl.arange(0, HEAD_DIM)
        in_d = row_ok[:, None] & ((d // GROUP)[None, :] == g_row[:, None])
        q = tl.load(q_row[:, None] + d[None, :], mask=in_d, other=0.0).to(tl.float32)
        q_base = q_row[None, :]
        # per row (all its copies): a power of two >= its largest |q|, so q / alpha is exact and
        # at most 1; the scale's sign goes into the queries, so that row_scale > 0
        top_q = tl.max(tl.reshape(tl.max(tl.abs(q), 1), (R, NG)), 1)
        alpha_r = tl.exp2(tl.ceil(tl.log2(tl.where(top_q == 0.0, 1.0, top_q))))
        alpha = _row_copies(alpha_r, NG) * tl.where(qk_scale < 0, -1.0, 1.0)
        # int4 key tiles 1 and 3 hold 16 c: tiles 0 and 2 are met by 16 q (exact, and |q| <= 16)
        UP: tl.constexpr = 16.0 if E == 8 else 1.0
        q0 = _load_q(q_base, kcol, row_ok, g_row, 0, E, GROUP, alpha / UP)
        q1 = _load_q(q_base, kcol, row_ok, g_row, 1, E, GROUP, alpha)
        if E == 8:
            q2 = _load_q(q_base, kcol, row_ok, g_row, 2, E, GROUP, alpha / UP)
            q3 = _load_q(q_base, kcol, row_ok, g_row, 3, E, GROUP, alpha)
        else:
            q2, q3 = q0, q1
        q16 = (q / alpha[:, None]).to(tl.float16).to(tl.float32)
        queries = Queries(
            q0, q1, q2, q3,
            off=(OFF / UNIT_INV) * tl.sum(q16, 1),
            zero=tl.sum(q, 1) * UP / (alpha * UNIT_INV),
            row_scale=alpha_r * (UNIT_INV * tl.abs(qk_scale) / UP),
            g_row=g_row,
            lim=lim,
            nat=0.0,
        )  # fmt: skip

    a4 = tl.zeros([WP, BLOCK_M] if E == 8 else [1, 1], tl.float32)  # int8, fp8: unused
    offs_n = tl.arange(0, BLOCK_N)
    jw = tl.arange(0, WP // 2 if PAIRS else WP)  # words stored per token
    kw_off = offs_n[:, None] * s_kwn + jw[None, :]
    # int8, fp8: one set of offsets for both planes (the launcher makes their strides equal);
    # two spill the registers of a 128-key block. int4 is faster with two (notes)
    vw_off = kw_off if E == 4 else offs_n[:, None] * s_vwn + jw[None, :]
    keys = Keys(planes, offs_n, q_hi, kw_off, vw_off, s_kwn, s_vwn, s_kst)
    # blocks every row sees in full need no masks; the last partial or causal blocks do
    full = lo + tl.maximum(tl.minimum(q_hi, seen_by_all) - lo, 0) // BLOCK_N * BLOCK_N
    AHEAD: tl.constexpr = NG <= 2  # scales loaded one block ahead, in registers
    acc = tl.zeros([WP, BLOCK_M], tl.float32)
    state = State(
        m_i=tl.full([R], float("-inf"), tl.float32),
        l_i=tl.zeros([R], tl.float32),
        beta=tl.full([], 1e-30, tl.float32),
        ps=tl.zeros([BLOCK_M], tl.float32),
        zs=tl.zeros([BLOCK_M], tl.float32),
        a0=acc, a1=acc, a2=acc, a3=acc, a4=a4, a5=a4, a6=a4, a7=a4,
        scales=_scales_of(planes, lo, offs_n, q_hi, E, NG, KIVI) if AHEAD else 0.0,
    )  # fmt: skip
    for n0 in range(lo, full, BLOCK_N):
        state = _block(state, n0, keys, queries, FMT, E, NG, OFF, R, False, PREFETCH, AHEAD,
                       GROUP, UNIT_INV)  # fmt: skip
    for n0 in range(full, q_hi, BLOCK_N):
        state = _block(state, n0, keys, queries, FMT, E, NG, OFF, R, True, PREFETCH, AHEAD,
                       GROUP, UNIT_INV)  # fmt: skip
    if KIVI:  # the recent tokens, in blocks of BLOCK_N
        recent = Recent(KR + b * s_krb + hk * s_krh, VR + b * s_vrb + hk * s_vrh, s_krn, s_vrn,
                        n_quant, hi, qk_scale)  # fmt: skip
        for n0 in range(tl.maximum(lo, n_quant), hi, BLOCK_N):
            state = _recent_block(state, n0, offs_n, recent, queries, NG, PAIRS, UNIT_INV)
    if PDL:  # the merge kernel may start now (it waits for this grid's stores to land)
        gdc_launch_dependents()

    # numerator = beta * (UNIT_INV * acc - OFF * ps + zs); the output of channel E*j + p is the
    # copy of its group
    l_safe = tl.where(state.l_i == 0.0, 1.0, state.l_i)
    l_row = _row_copies(l_safe, NG)
    w = (state.beta * UNIT_INV / l_row)[None, :]
    c = (state.beta * (state.zs - OFF * state.ps) / l_row)[None, :]
    if SPLIT:
        row = (b * (H_KV * G) + hq) * q_len + qi
        o_base = Part + (row * num_splits + pid_s)[None, :] * HEAD_DIM
        r_row = (b * (H_KV * G) + hk * G + r % G) * q_len + r // G
        lse = tl.where(state.l_i == 0.0, float("-inf"), state.m_i + tl.log2(l_safe))
        tl.store(Lse + r_row * num_splits + pid_s, lse, mask=r // G < q_len)
        ty = Part.dtype.element_ty
    else:
        o_base = Out + b * s_ob + hq[None, :] * s_oh + qi[None, :] * s_os
        ty = Out.dtype.element_ty
    _store(o_base, j, row_ok, g_row, (state.a0 * w + c).to(ty), 0, E, GROUP, PAIRS)
    _store(o_base, j, row_ok, g_row, (state.a1 * (w / UP) + c).to(ty), 1, E, GROUP, PAIRS)
    _store(o_base, j, row_ok, g_row, (state.a2 * w + c).to(ty), 2, E, GROUP, PAIRS)
    _store(o_base, j, row_ok, g_row, (state.a3 * (w / UP) + c).to(ty), 3, E, GROUP, PAIRS)
    if E == 8:
        _store(o_base, j, row_ok, g_row, (state.a4 * w + c).to(ty), 4, E, GROUP, PAIRS)
        _store(o_base, j, row_ok, g_row, (state.a5 * (w / UP) + c).to(ty), 5, E, GROUP, PAIRS)
        _store(o_base, j, row_ok, g_row, (state.a6 * w + c).to(ty), 6, E, GROUP, PAIRS)
        _store(o_base, j, row_ok, g_row, (state.a7 * (w / UP) + c).to(ty), 7, E, GROUP, PAIRS)
    SB: tl.constexpr = 2048 // (R * HEAD_DIM) if R * HEAD_DIM < 2048 else 1  # splits a step
    if SPLIT and FUSED_MERGE:  # the tile's last program to finish merges its splits
        counters = (Lse + counter_off).to(tl.pointer_type(tl.int32), bitcast=True)
        if last_split(counters, pid_bh * tl.num_programs(1) + pid_m):
            out_rows = Out + b * s_ob + (hk * G + r % G) * s_oh + (r // G) * s_os
            merge_rows(Part, Lse, out_rows, r_row, r // G < q_len, num_splits, HEAD_DIM, SB)
