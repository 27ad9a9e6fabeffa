"""The fast quantized-KV decode kernel's stacked query rows and per-token planes
(``qdecode_fast``, module doc: "Channel groups by stacked rows" and "Scales one block ahead").

Stacked rows: a tile's ``R`` query rows each repeated ``NG`` times, once per channel group,
copy ``g`` of row ``r`` in column ``r * NG + g``. Here: the queries and outputs of each copy's
channels, summing copies into rows and spreading rows back over their copies. Per-token planes
(scales, int4 zeros) are stored ``[S, NG]``: loading a block of them, and applying each copy's
group's value to a ``[BLOCK_N, rows]`` tile.
"""

import triton
import triton.language as tl

from sdpalab.attention.kernels.qdecode_codes import _joined_channel


@triton.jit
def _load_q(base, col, row_ok, g_row, T: tl.constexpr, E: tl.constexpr, GROUP: tl.constexpr,
            alpha):  # fmt: skip
    """Queries of key tile ``T``'s channels, of each row's group only, over alpha, float16,
    transposed: ``[2 * WP, rows]``."""
    ch = _joined_channel(col, T, E)
    keep = row_ok[None, :] & ((ch // GROUP)[:, None] == g_row[None, :])
    x = tl.load(base + ch[:, None], mask=keep, other=0.0).to(tl.float32)
    return (x / alpha[None, :]).to(tl.float16)


@triton.jit
def _store(base, col, row_ok, g_row, x, T: tl.constexpr, E: tl.constexpr, GROUP: tl.constexpr):
    """Output of value tile ``T`` (``x [WP, rows]``: channel ``E * col + T``), each row's group
    only."""
    ch = col * E + T
    keep = row_ok[None, :] & ((ch // GROUP)[:, None] == g_row[None, :])
    tl.store(base + ch[:, None], x, mask=keep)


@triton.jit
def _times_group(x, base, n, n_ok, g_row, NG: tl.constexpr):
    """``x [BLOCK_N, rows]`` times per-token values of each row's group (plane ``[S, NG]`` at
    ``base``; row r has group ``g_row[r]``)."""
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
    waits on the load before then). One load of contiguous memory, vectorized; the block's
    base is a scalar and its offsets are loop invariant."""
    g = tl.arange(0, NG)
    ok = (offs_n + n0 < hi)[:, None]  # offsets first: the interpreter's n0 may be a constexpr
    return tl.load(base + n0 * NG + (offs_n[:, None] * NG + g[None, :]), mask=ok, other=0.0)


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


@triton.jit
def _scales_of(n0, offs_n, hi, ks_base, kz_base, vs_base, vz_base, E: tl.constexpr,
               NG: tl.constexpr):  # fmt: skip
    """Key and value scales (and int4 zeros) ``[BLOCK_N, NG]`` of keys ``n0 + offs_n``."""
    ks = _plane_tile(ks_base, n0, offs_n, hi, NG)
    vs = _plane_tile(vs_base, n0, offs_n, hi, NG)
    if E == 8:
        kz = _plane_tile(kz_base, n0, offs_n, hi, NG)
        vz = _plane_tile(vz_base, n0, offs_n, hi, NG)
    else:
        kz, vz = ks, vs
    return ks, kz, vs, vz
