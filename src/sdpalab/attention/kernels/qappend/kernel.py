"""The quantize-and-append kernel: new keys and/or values ``[B, H, n, D]`` quantized as
``kvquant.quantize`` does, to the bit, and stored into a static cache's planes at entry ``pos``.

Kinds (``KIND``, as ``host.KIND``): 0 copy (format ``none``), 1 int8, 2 fp8 e4m3, 3 asymmetric
per token over channel groups (int4, KIVI values), 4 asymmetric per channel over a group of
tokens (KIVI keys). Every step is an IEEE float32 operation in the order ``kvquant`` takes:
divisions are ``div_rn`` (Triton's ``/`` is approximate on NVIDIA), rounding to an integer and
to e4m3 are done on the bits, so no compiler contraction or fast math can change a code.
"""

import triton
import triton.language as tl

# 1.5 * 2^23: in y + RINT_MAGIC the low mantissa bits hold y rounded half to even
RINT_MAGIC = tl.constexpr(12582912.0)
RINT_BITS = tl.constexpr(0x4B400000)  # the float32 bits of RINT_MAGIC


@triton.jit
def rint_code(y):
    """Round-half-even of float32 ``y`` (|y| <= 2^22) as int32, as ``torch.round`` does."""
    return (y + RINT_MAGIC).to(tl.int32, bitcast=True) - RINT_BITS


@triton.jit
def f16_up(x):
    """float32 -> the smallest float16 not below it (``kvquant._f16_up``)."""
    h = x.to(tl.float16)
    bits = h.to(tl.int16, bitcast=True).to(tl.int32)  # sign-extended: negative iff sign set
    step = tl.where(bits < 0, bits - 1, bits + 1)  # one float16 toward +inf
    return tl.where(h.to(tl.float32) < x, step, bits).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def f16_down(x):
    """float32 -> the largest float16 not above it (``kvquant._f16_down``)."""
    h = x.to(tl.float16)
    bits = h.to(tl.int16, bitcast=True).to(tl.int32)
    step = tl.where(bits < 0, bits + 1, bits - 1)  # one float16 toward -inf
    return tl.where(h.to(tl.float32) > x, step, bits).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def safe(scale):
    """float16 scale -> float32 divisor; a zero scale divides by one (``kvquant._safe``)."""
    s = scale.to(tl.float32)
    return tl.where(s == 0.0, 1.0, s)


@triton.jit
def e4m3_code(y):
    """float32 ``y`` in [-448, 448] -> its float8_e4m3fn bits (round-half-even), as int32: the
    steps of c10's ``fp8e4m3fn_from_fp32_value``."""
    u = y.to(tl.int32, bitcast=True)
    sign = (u >> 24) & 0x80
    a = u & 0x7FFFFFFF
    # below 2^-6, e4m3's subnormals: adding 2^14 leaves the multiple of 2^-9 in the low bits
    sub = (a.to(tl.float32, bitcast=True) + 16384.0).to(tl.int32, bitcast=True) - (141 << 23)
    odd = (a >> 20) & 1
    normal = (a + (-120 << 23) + 0x7FFFF + odd) >> 20  # rebias 127 -> 7, keep 3 mantissa bits
    return tl.where(a < (121 << 23), sub, normal) | sign


@triton.jit
def asym_params(lo, hi, LEVELS: tl.constexpr):
    """Group minimum and maximum -> (zero, scale) float16 (``kvquant._asymmetric``)."""
    zero = f16_down(lo)
    scale = f16_up(tl.math.div_rn(hi - zero.to(tl.float32), tl.full(hi.shape, LEVELS, tl.float32)))
    return zero, scale


@triton.jit
def asym_codes(x, zero, div, LEVELS: tl.constexpr):
    """Codes in [0, LEVELS] of x given its broadcast zero (float32) and divisor."""
    y = tl.math.div_rn(x - zero, div)
    return rint_code(tl.minimum(tl.maximum(y, 0.0), LEVELS))  # clamp, then round: same codes


@triton.jit
def pack(codes, BITS: tl.constexpr, PER: tl.constexpr):
    """int32 codes ``[..., NBP, PER]`` -> bytes ``[..., NBP]``: code p of a byte at bit p*BITS."""
    shifts = tl.arange(0, PER) * BITS
    return tl.sum(codes << shifts, axis=len(codes.shape) - 1)


@triton.jit
def row_entries(rows, entry0, n_rows, n_tok, cap, heads):
    """Rows ``(b, h, t)`` of x ``[B, H, n_tok, ...]`` numbered ``(b * H + h) * n_tok + t``: their
    ``t``, ``b``, ``h`` (int64), entry in any ``[B, H, cap, ...]`` plane, and which are live
    (a row of the launch and an entry under ``cap``)."""
    t = rows % n_tok
    bh = rows // n_tok
    h = (bh % heads).to(tl.int64)
    b = (bh // heads).to(tl.int64)
    entry = (b * heads + h) * cap + entry0 + t
    return t, b, h, entry, (rows < n_rows) & (entry0 + t < cap)


@triton.jit
def copy_rows(
    X, DATA, entry0, n_rows, n_tok, cap, heads, sxb, sxh, sxn, sxd,
    BLOCK_R: tl.constexpr, DP: tl.constexpr, HEAD_DIM: tl.constexpr,
):  # fmt: skip
    """Kind 0 (format ``none``): BLOCK_R rows of x copied into the plane ``[B, H, cap, D]``."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    t, b, h, entry, live = row_entries(rows, entry0, n_rows, n_tok, cap, heads)
    d = tl.arange(0, DP)
    mask = live[:, None] & (d < HEAD_DIM)[None]
    x_row = b * sxb + h * sxh + t.to(tl.int64) * sxn
    x = tl.load(X + x_row[:, None] + d[None] * sxd, mask=mask)
    tl.store(DATA + entry[:, None] * HEAD_DIM + d[None], x.to(DATA.dtype.element_ty), mask=mask)


@triton.jit
def append_rows(
    X, DATA, SCALE, ZERO, entry0, n_rows, n_tok, cap, heads, sxb, sxh, sxn, sxd,
    KIND: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, NG: tl.constexpr,
    PER: tl.constexpr, NB: tl.constexpr, NBP: tl.constexpr, BLOCK_R: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):  # fmt: skip
    """Kinds 1-3: BLOCK_R rows (b, h, t) of x [B, H, n, D], each one entry of the planes:
    data ``[B, H, cap, NB]``, scale and zero ``[B, H, cap, NG]``."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    t, b, h, entry, live = row_entries(rows, entry0, n_rows, n_tok, cap, heads)

    kb = tl.arange(0, NBP)
    d = kb[:, None] * PER + tl.arange(0, PER)[None, :]  # [NBP, PER]: channel of each code
    on_d = d < HEAD_DIM
    mask = live[:, None, None] & on_d[None]
    x_row = b * sxb + h * sxh + t.to(tl.int64) * sxn
    x = tl.load(X + x_row[:, None, None] + d[None] * sxd, mask=mask, other=0.0).to(tl.float32)

    if KIND == 1 or KIND == 2:  # one symmetric scale per token
        LIMIT: tl.constexpr = 127.0 if KIND == 1 else 448.0
        amax = tl.max(tl.max(tl.abs(x), axis=2), axis=1)
        scale = f16_up(tl.math.div_rn(amax, tl.full(amax.shape, LIMIT, tl.float32)))
        tl.store(SCALE + entry, scale, mask=live)
        y = tl.math.div_rn(x, safe(scale)[:, None, None])
        y = tl.minimum(tl.maximum(y, -LIMIT), LIMIT)
        codes = rint_code(y) if KIND == 1 else e4m3_code(y)
    else:  # asymmetric, NG groups of GROUP channels
        LEVELS: tl.constexpr = (1 << BITS) - 1
        group_of = (d // GROUP)[None]
        zero_e = tl.zeros([BLOCK_R, NBP, PER], tl.float32)
        div_e = tl.full([BLOCK_R, NBP, PER], 1.0, tl.float32)  # lanes past D: finite
        for j in tl.static_range(NG):
            in_g = mask & (group_of == j)
            lo = tl.min(tl.min(tl.where(in_g, x, float("inf")), axis=2), axis=1)
            hi = tl.max(tl.max(tl.where(in_g, x, float("-inf")), axis=2), axis=1)
            lo = tl.where(live, lo, 0.0)  # rows past the end: finite, never stored
            hi = tl.where(live, hi, 0.0)
            zero, scale = asym_params(lo, hi, LEVELS)
            tl.store(SCALE + entry * NG + j, scale, mask=live)
            tl.store(ZERO + entry * NG + j, zero, mask=live)
            zero_e = tl.where(group_of == j, zero.to(tl.float32)[:, None, None], zero_e)
            div_e = tl.where(group_of == j, safe(scale)[:, None, None], div_e)
        codes = asym_codes(x, zero_e, div_e, LEVELS)
    codes = tl.where(on_d[None], codes, 0)  # a last byte's missing channels pack as zeros
    byte = pack(codes, BITS, PER).to(DATA.dtype.element_ty)
    tl.store(DATA + entry[:, None] * NB + kb[None], byte, mask=live[:, None] & (kb < NB)[None])


@triton.jit
def append_key_groups(
    X, DATA, SCALE, ZERO, entry0, n_rows, n_ent, cap, heads, sxb, sxh, sxn, sxd,
    BITS: tl.constexpr, GROUP: tl.constexpr, GP: tl.constexpr, PER: tl.constexpr,
    NB: tl.constexpr, NBP: tl.constexpr, HEAD_DIM: tl.constexpr,
):  # fmt: skip
    """Kind 4 (KIVI keys): one program a (b, h, entry) of GROUP tokens, quantized per channel;
    data ``[B, H, cap, GROUP, NB]``, scale and zero ``[B, H, cap, D]``."""
    row = tl.program_id(0) + tl.zeros([1], tl.int32)  # [1]: the interpreter's masks want tensors
    e, b, h, entry, live = row_entries(row, entry0, n_rows, n_ent, cap, heads)

    i = tl.arange(0, GP)  # token within the group
    on_i = (i < GROUP) & live
    kb = tl.arange(0, NBP)
    d = kb[:, None] * PER + tl.arange(0, PER)[None, :]  # [NBP, PER]
    on_d = d < HEAD_DIM
    mask = on_i[:, None, None] & on_d[None]
    tok = (e * GROUP + i).to(tl.int64)
    x_ptr = X + (b * sxb + h * sxh)[:, None, None] + tok[:, None, None] * sxn + d[None] * sxd
    x = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)

    LEVELS: tl.constexpr = (1 << BITS) - 1
    lo = tl.min(tl.where(mask, x, float("inf")), axis=0)  # [NBP, PER]: per channel
    hi = tl.max(tl.where(mask, x, float("-inf")), axis=0)
    lo = tl.where(on_d, lo, 0.0)
    hi = tl.where(on_d, hi, 0.0)
    zero, scale = asym_params(lo, hi, LEVELS)
    on_c = on_d & live[:, None]
    tl.store(SCALE + entry[:, None] * HEAD_DIM + d, scale, mask=on_c)
    tl.store(ZERO + entry[:, None] * HEAD_DIM + d, zero, mask=on_c)
    codes = asym_codes(x, zero.to(tl.float32)[None], safe(scale)[None], LEVELS)
    codes = tl.where(on_d[None], codes, 0)
    byte = pack(codes, BITS, PER).to(DATA.dtype.element_ty)  # [GP, NBP]
    ptr = DATA + entry[:, None] * (GROUP * NB) + i[:, None] * NB + kb[None]
    tl.store(ptr, byte, mask=on_i[:, None] & (kb < NB)[None])


@triton.jit
def append_role(
    X, DATA, SCALE, ZERO, pos, n_rows, n_tok, cap, heads, sxb, sxh, sxn, sxd,
    KIND: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, NG: tl.constexpr,
    PER: tl.constexpr, NB: tl.constexpr, NBP: tl.constexpr, BLOCK_R: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):  # fmt: skip
    """One role's share of the launch; ``pos`` counts tokens (entries of GROUP for kind 4)."""
    if KIND == 0:
        copy_rows(
            X, DATA, pos, n_rows, n_tok, cap, heads, sxb, sxh, sxn, sxd, BLOCK_R, NBP, HEAD_DIM
        )
    elif KIND == 4:
        append_key_groups(
            X, DATA, SCALE, ZERO, pos // GROUP, n_rows, n_tok, cap, heads, sxb, sxh, sxn, sxd,
            BITS, GROUP, BLOCK_R, PER, NB, NBP, HEAD_DIM,
        )  # fmt: skip
    else:
        append_rows(
            X, DATA, SCALE, ZERO, pos, n_rows, n_tok, cap, heads, sxb, sxh, sxn, sxd,
            KIND, BITS, GROUP, NG, PER, NB, NBP, BLOCK_R, HEAD_DIM,
        )  # fmt: skip


@triton.jit(do_not_specialize=["pos"])  # a new position each decode step: one compile
def qappend_kernel(
    POS, pos, heads,
    KX, KD, KS, KZ, k_rows, k_tok, k_cap, ksxb, ksxh, ksxn, ksxd,
    VX, VD, VS, VZ, v_rows, v_tok, v_cap, vsxb, vsxh, vsxn, vsxd,
    K_KIND: tl.constexpr, K_BITS: tl.constexpr, K_GROUP: tl.constexpr, K_NG: tl.constexpr,
    K_PER: tl.constexpr, K_NB: tl.constexpr, K_NBP: tl.constexpr, K_BR: tl.constexpr,
    V_KIND: tl.constexpr, V_BITS: tl.constexpr, V_GROUP: tl.constexpr, V_NG: tl.constexpr,
    V_PER: tl.constexpr, V_NB: tl.constexpr, V_NBP: tl.constexpr, V_BR: tl.constexpr,
    HEAD_DIM: tl.constexpr, POS_PTR: tl.constexpr, HAS_V: tl.constexpr,
):  # fmt: skip
    """Grid ``(programs, 1 + HAS_V)``: axis 1 picks keys (0) or values (1); ``pos`` is read from
    ``POS`` (a one-element int tensor on the device, for graph capture) when ``POS_PTR``."""
    p = tl.load(POS).to(tl.int32) if POS_PTR else pos
    if HAS_V:
        if tl.program_id(1) == 1:
            append_role(
                VX, VD, VS, VZ, p, v_rows, v_tok, v_cap, heads, vsxb, vsxh, vsxn, vsxd,
                V_KIND, V_BITS, V_GROUP, V_NG, V_PER, V_NB, V_NBP, V_BR, HEAD_DIM,
            )  # fmt: skip
        else:
            append_role(
                KX, KD, KS, KZ, p, k_rows, k_tok, k_cap, heads, ksxb, ksxh, ksxn, ksxd,
                K_KIND, K_BITS, K_GROUP, K_NG, K_PER, K_NB, K_NBP, K_BR, HEAD_DIM,
            )  # fmt: skip
    else:
        append_role(
            KX, KD, KS, KZ, p, k_rows, k_tok, k_cap, heads, ksxb, ksxh, ksxn, ksxd,
            K_KIND, K_BITS, K_GROUP, K_NG, K_PER, K_NB, K_NBP, K_BR, HEAD_DIM,
        )  # fmt: skip
