"""Split-KV, shared by both kernels: which keys a program reads, and the kernel that merges the
splits' partial outputs by their log-sum-exp (on sm_90 and later launched as a programmatic
dependent of the split kernel, so that it waits on the GPU instead of after a launch gap); or,
the fast kernel's ``merge="fused"`` option, the merge done by the last program of each query tile
to finish (``last_split``, ``merge_rows``), with no second kernel.
"""

import triton
import triton.language as tl

try:  # programmatic dependent launches: triton 3.3 and later
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    HAS_PDL = True
except ImportError:
    HAS_PDL = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


@triton.jit
def key_range(qi, pid_m, pid_s, q_len, kv_len, chunk, ROWS: tl.constexpr, G: tl.constexpr,
              CAUSAL: tl.constexpr):  # fmt: skip
    """Keys of split ``pid_s`` for query tile ``pid_m`` (``ROWS`` rows ``i * G + g``; ``qi``
    the query token of each row): ``lim`` (per row, the last key it sees), ``[lo, hi)`` (the
    keys the tile reads: its last visible key bounds the loops) and ``seen_by_all`` (keys
    ``< seen_by_all`` every row of the tile sees). Causal is bottom-right."""
    if CAUSAL:
        lim = kv_len - q_len + qi
        i_last = tl.minimum((pid_m * ROWS + ROWS - 1) // G, q_len - 1)
        hi = tl.minimum(kv_len - q_len + i_last + 1, kv_len)
        seen_by_all = kv_len - q_len + (pid_m * ROWS) // G + 1
    else:
        lim = kv_len - 1 + 0 * qi
        hi = kv_len
        seen_by_all = kv_len
    lo = pid_s * chunk
    return lim, lo, tl.minimum(hi, lo + chunk), seen_by_all


@triton.jit
def merge_kernel(
    Part, Lse, Out, q_len, H_Q, num_splits, s_ob, s_oh, s_os,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Merge the splits of one query row, ``BLOCK_D`` channels (program 1 picks which):
    ``Part [rows, splits, HEAD_DIM]`` float32 partial outputs, ``Lse [rows, splits]`` their
    base-2 log-sum-exps, weights ``2^(lse_s - max lse)``. ``PDL``: launched as a programmatic
    dependent of the split kernel (``launch_pdl``), it may start before that kernel ends, and
    waits here for its stores."""
    if PDL:
        gdc_wait()
    row = tl.program_id(0).to(tl.int64)
    qi = row % q_len
    hq = (row // q_len) % H_Q
    b = row // (q_len * H_Q)
    s = tl.arange(0, BLOCK_S)
    s_ok = s < num_splits
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    lse = tl.load(Lse + row * num_splits + s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)
    part_ptrs = Part + (row * num_splits + s)[:, None] * HEAD_DIM + d[None, :]
    part = tl.load(part_ptrs, mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    den = tl.sum(w, 0)
    num = tl.sum(w[:, None] * part, 0)
    o = num / tl.where(den == 0.0, 1.0, den)
    tl.store(Out + b * s_ob + hq * s_oh + qi * s_os + d, o.to(Out.dtype.element_ty), mask=d_ok)


@triton.jit
def last_split(Counters, tile):
    """True in the last of a query tile's split programs to finish: each adds one to the tile's
    counter once its partial output is stored (the barrier first, so that every thread's stores
    are ordered before the release); the last one resets it to 0 for the next call."""
    tl.debug_barrier()
    seen = tl.atomic_add(Counters + tile, 1, sem="acq_rel", scope="gpu")
    done = seen == tl.num_programs(2) - 1
    if done:
        tl.atomic_xchg(Counters + tile, 0, sem="relaxed", scope="gpu")
    tl.debug_barrier()
    return done


@triton.jit
def merge_rows(Part, Lse, out_ptrs, row, row_ok, num_splits, HEAD_DIM: tl.constexpr,
               SB: tl.constexpr):  # fmt: skip
    """Merge the splits of rows ``row [R]`` (``Part``/``Lse`` as ``merge_kernel`` reads them)
    into ``out_ptrs [R]`` (each row's first channel), ``SB`` splits a step. The partial outputs
    come from other programs: loaded from L2 (``.cg``), never from a stale L1 line."""
    d = tl.arange(0, HEAD_DIM)
    s = tl.arange(0, SB)
    m = tl.full(row.shape, float("-inf"), tl.float32)
    den = tl.zeros(row.shape, tl.float32)
    num = tl.zeros([row.shape[0], HEAD_DIM], tl.float32)
    for s0 in range(0, num_splits, SB):
        slot = row[None, :] * num_splits + (s0 + s)[:, None]  # [SB, R]
        ok = ((s0 + s) < num_splits)[:, None] & row_ok[None, :]
        lse = tl.load(Lse + slot, mask=ok, other=float("-inf"), cache_modifier=".cg")
        part = tl.load(Part + slot[:, :, None] * HEAD_DIM + d[None, None, :], mask=ok[:, :, None],
                       other=0.0, cache_modifier=".cg")  # fmt: skip
        m_new = tl.maximum(m, tl.max(lse, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        c = tl.exp2(m - m_safe)
        w = tl.exp2(lse - m_safe[None, :])
        den = den * c + tl.sum(w, 0)
        num = num * c[:, None] + tl.sum(w[:, :, None] * part, 0)
        m = m_new
    o = num / tl.where(den == 0.0, 1.0, den)[:, None]
    tl.store(out_ptrs[:, None] + d[None, :], o.to(out_ptrs.dtype.element_ty), mask=row_ok[:, None])
