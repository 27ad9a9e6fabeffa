"""KV caches: chunked decoding equals causal attention over the whole sequence (float64 oracle),
for every layout and storage format; rollback, bad input and byte accounting.

Expected outputs. Each call attends over the cache state after its own tokens were appended. For
per-token formats that state is ``dequantize(quantize(k))`` of every token so far; for KIVI the
first ``quantized_length(end)`` positions are quantized and the rest exact. The oracle run on
that *effective* k, v gives the tight check (float32 rounding only); the loose check against the
true k, v uses a bound derived from the per-element quantization error ``eps`` (``error_bound``):
a key error shifts score j by at most ``delta = scale * max_j sum_d |q_d| eps_k[j, d]``, which
moves each softmax weight by a factor in ``[e^-2delta, e^2delta]``, so

    |out - out_true|_d <= (e^(2 delta) - 1) * max_j |v[j, d]| + max_j eps_v[j, d].
"""

import math

import pytest
import torch

import sdpalab.spec as spec
from sdpalab.attention import kvquant
from sdpalab.attention.errors import Unsupported
from sdpalab.attention.kivi import KiviCache
from sdpalab.attention.reference import attention_ref
from sdpalab.build import make_cached_attention

LAYOUTS = ("dynamic", "static", "sliding", "paged")
FORMATS = ("none", "int8", "int4", "fp8", "kivi2", "kivi4")
CHUNKS = (37, 1, 1, 1, 3, 5, 4, 1, 1)  # odd prefill, single tokens, chunks of 3 to 5
B, HQ, HKV, D = 3, 12, 4, 80
WINDOW = 16
KIVI_ARGS = {"group_size": 8, "residual": 8}  # small, so 54 tokens quantize several groups
# float32 attention over <= 64 keys of O(1) values, against float64: rounding only.
F32_ATOL, F32_RTOL = 2e-5, 1e-5


def _qkv(seq, seed=0, batch=B, heads_q=HQ, heads_kv=HKV, head_dim=D):
    gen = torch.Generator().manual_seed(seed)

    def rand(h):
        return torch.randn(batch, h, seq, head_dim, generator=gen)

    return rand(heads_q), rand(heads_kv), rand(heads_kv)


def _workload(seq, **kw):
    geometry = dict(batch=B, heads_q=HQ, heads_kv=HKV, head_dim=D)
    return spec.Workload(phase="decode", seq_kv=seq, **{**geometry, **kw})


def _variant(layout, fmt, backend="math", **kv_args):
    if layout == "sliding":
        kv_args.setdefault("window", WINDOW)
    if layout == "paged":
        kv_args.setdefault("page_size", 4)
    if fmt.startswith("kivi"):
        kv_args = {**KIVI_ARGS, **kv_args}
    return spec.Variant(backend=backend, kv_cache=layout, kv_quant=fmt, kv_args=kv_args)


def _supported(layout, fmt):
    return not (fmt.startswith("kivi") and layout in ("sliding", "paged"))


def _effective(x, fmt, role, end, cache):
    """(k or v as the cache holds it after ``end`` tokens, per-element error bound)."""
    x = x[:, :, :end]
    if fmt == "none":
        return x, torch.zeros_like(x)
    kivi = isinstance(cache, KiviCache)
    group = cache.group if kivi else None
    # KIVI: the newest [residual, residual + group) positions stay exact
    quantized = max(0, end - cache.residual) // group * group if kivi else end
    eff, eps = x.clone(), torch.zeros_like(x)
    if quantized:
        qt = kvquant.quantize(x[:, :, :quantized], fmt, role=role, group_size=group)
        eff[:, :, :quantized] = kvquant.dequantize(qt, x.dtype)
        eps[:, :, :quantized] = kvquant.error_bound(qt).expand(-1, -1, quantized, -1)
    return eff, eps


def _mod(layout):
    return ("sliding_window", {"window": WINDOW}) if layout == "sliding" else ("causal", {})


def _run(cache, q, k, v, chunks=CHUNKS):
    """Feed the sequence chunk by chunk; yield (start, end, output) per call."""
    start = 0
    for n in chunks:
        end = start + n
        out = cache(q[:, :, start:end], k[:, :, start:end], v[:, :, start:end])
        yield start, end, out
        start = end


def _bound(q, k_true, v_true, eps_k, eps_v, group):
    """Loose bound per output element (module doc), [B, H_q, n, D]."""
    eps_k = eps_k.double().repeat_interleave(group, dim=1)
    eps_v = eps_v.double().repeat_interleave(group, dim=1)
    v_max = v_true.double().abs().repeat_interleave(group, dim=1).amax(2, keepdim=True)
    shift = q.double().abs() @ eps_k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    delta = shift.amax(-1, keepdim=True)
    return torch.expm1(2 * delta) * v_max + eps_v.amax(2, keepdim=True)


def _check_against_oracle(cache, mod, fmt, q, k, v, chunks=CHUNKS):
    """Run the chunks through the cache, checking each call; return the last output."""
    group = q.shape[1] // k.shape[1]
    for start, end, out in _run(cache, q, k, v, chunks):
        k_eff, eps_k = _effective(k, fmt, "key", end, cache)
        v_eff, eps_v = _effective(v, fmt, "value", end, cache)
        q_call = q[:, :, start:end]
        tight = attention_ref(q_call, k_eff, v_eff, *mod)
        torch.testing.assert_close(out.double(), tight, atol=F32_ATOL, rtol=F32_RTOL)
        true = attention_ref(q_call, k[:, :, :end], v[:, :, :end], *mod)
        bound = _bound(q_call, k[:, :, :end], v[:, :, :end], eps_k, eps_v, group)
        assert torch.all((out.double() - true).abs() <= bound + F32_ATOL), (start, end)
    assert cache.length == sum(chunks)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunked_decoding_matches_oracle(layout, fmt):
    seq = sum(CHUNKS)
    variant = _variant(layout, fmt)
    if not _supported(layout, fmt):
        with pytest.raises(Unsupported, match="dynamic and static"):
            make_cached_attention(variant, _workload(seq))
        return
    cache = make_cached_attention(variant, _workload(seq), page_seed=7)
    _check_against_oracle(cache, _mod(layout), fmt, *_qkv(seq))


@pytest.mark.parametrize("fmt", ["kivi4", "kivi2"])
def test_kivi_default_groups(fmt):
    chunks = (67, 1, 1, 30, 5, 1, 33, 1)  # crosses several flushes of 32-token groups
    seq = sum(chunks)
    variant = spec.Variant(backend="math", kv_cache="static", kv_quant=fmt)
    cache = make_cached_attention(variant, _workload(seq))
    assert (cache.group, cache.residual) == (32, 32)
    _check_against_oracle(cache, _mod("static"), fmt, *_qkv(seq, seed=3), chunks)
    assert cache.quantized_length(seq) == 96  # 139 tokens: 3 groups of 32, 43 exact


@pytest.mark.parametrize("layout", LAYOUTS)
def test_eager_backend_and_batch_one(layout):
    seq = sum(CHUNKS)
    workload = _workload(seq, batch=1, heads_q=4, heads_kv=4)
    cache = make_cached_attention(_variant(layout, "int8", backend="eager"), workload, page_seed=1)
    _check_against_oracle(cache, _mod(layout), "int8", *_qkv(seq, batch=1, heads_q=4, heads_kv=4))


@pytest.mark.parametrize("layout", ["dynamic", "static", "paged"])
def test_sliding_window_mod_over_full_caches(layout):
    seq = sum(CHUNKS)
    variant = spec.Variant(
        backend="math",
        mod="sliding_window",
        mod_args={"window": 9},
        kv_cache=layout,
        kv_args={"page_size": 4} if layout == "paged" else {},
    )
    cache = make_cached_attention(variant, _workload(seq), page_seed=2)
    q, k, v = _qkv(seq)
    outs = torch.cat([out for _, _, out in _run(cache, q, k, v)], 2)
    ref = attention_ref(q, k, v, "sliding_window", {"window": 9})
    torch.testing.assert_close(outs.double(), ref, atol=F32_ATOL, rtol=F32_RTOL)


@pytest.mark.parametrize(
    ("layout", "fmt"),
    [("static", "kivi4"), ("dynamic", "int4"), ("paged", "int8"), ("sliding", "fp8")],
)
def test_quantized_caches_with_a_window_mod(layout, fmt):
    seq = sum(CHUNKS)
    variant = _variant(layout, fmt)
    variant = spec.Variant(
        backend="math",
        mod="sliding_window",
        mod_args={"window": 9},
        kv_cache=layout,
        kv_quant=fmt,
        kv_args=variant.kv_args,
    )
    cache = make_cached_attention(variant, _workload(seq), page_seed=6)
    mod = ("sliding_window", {"window": 9})
    _check_against_oracle(cache, mod, fmt, *_qkv(seq, seed=8))


def test_unsupported_mods_and_windows():
    wl = _workload(64)
    with pytest.raises(Unsupported, match="alibi"):
        make_cached_attention(spec.Variant(mod="alibi", kv_cache="static"), wl)
    with pytest.raises(ValueError, match="exceeds"):
        make_cached_attention(
            spec.Variant(
                mod="sliding_window",
                mod_args={"window": 32},
                kv_cache="sliding",
                kv_args={"window": 16},
            ),
            wl,
        )
    with pytest.raises(ValueError, match="window"):
        spec.Variant(kv_cache="sliding", kv_args={"window": 0})


# -- rollback ---------------------------------------------------------------------------------

ROLLBACK_CASES = [(layout, fmt) for layout in LAYOUTS for fmt in FORMATS if _supported(layout, fmt)]


@pytest.mark.parametrize(("layout", "fmt"), ROLLBACK_CASES)
def test_rollback_repeats_the_same_step(layout, fmt):
    # Fill to L, then time-style: step, roll back, step again. With KIVI (group 8, residual 8)
    # L = 47 makes the step flush a group; with the sliding ring, L > W wraps it.
    fill, seq = 47, 49
    q, k, v = _qkv(seq, seed=5)
    variant = _variant(layout, fmt, max_len=seq)
    cache = make_cached_attention(variant, _workload(seq), page_seed=3)
    fresh = make_cached_attention(variant, _workload(seq), page_seed=3)
    cache(q[:, :, :fill], k[:, :, :fill], v[:, :, :fill])
    fresh(q[:, :, :fill], k[:, :, :fill], v[:, :, :fill])
    step = [t[:, :, fill : fill + 1] for t in (q, k, v)]
    other = [t[:, :, fill + 1 : fill + 2] for t in (q, k, v)]
    bytes_before = cache.cache_bytes()
    first = cache(*step)
    for _ in range(3):
        cache.rollback(fill)
        assert cache.length == fill
        torch.testing.assert_close(cache(*step), first, atol=0, rtol=0)
    cache.rollback(fill)
    # after the rollback the cache behaves like one that never saw the step
    torch.testing.assert_close(cache(*other), fresh(*other), atol=0, rtol=0)
    if layout != "dynamic":
        assert cache.cache_bytes() == bytes_before  # a pointer move: nothing reallocated


def test_rollback_limits():
    q, k, v = _qkv(40)
    cache = make_cached_attention(_variant("sliding", "none"), _workload(40))
    cache(q, k, v)
    with pytest.raises(ValueError, match="ring keeps positions"):
        cache.rollback(30)
    assert cache.length == 40
    cache.rollback(39)  # one step back is what the ring keeps
    with pytest.raises(ValueError, match=r"in \[0, 39\]"):
        cache.rollback(41)
    dynamic = make_cached_attention(_variant("dynamic", "none"), _workload(40))
    dynamic(q, k, v)
    dynamic.rollback(10)  # dynamic can go anywhere back, and compacts
    assert dynamic.cache_bytes() == 2 * B * HKV * 10 * D * 4


def test_reset_and_reuse():
    seq = sum(CHUNKS)
    q, k, v = _qkv(seq)
    cache = make_cached_attention(_variant("static", "int4"), _workload(seq))
    first = [out for _, _, out in _run(cache, q, k, v)]
    cache.reset()
    assert cache.length == 0
    again = [out for _, _, out in _run(cache, q, k, v)]
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "fmt"),
    [("static", "none"), ("dynamic", "kivi4"), ("sliding", "int8"), ("paged", "int4")],
)
def test_bad_steps_leave_the_cache_unchanged(layout, fmt):
    seq = 48
    q, k, v = _qkv(seq)
    cache = make_cached_attention(_variant(layout, fmt, max_len=seq), _workload(seq), page_seed=0)
    reference = make_cached_attention(
        _variant(layout, fmt, max_len=seq), _workload(seq), page_seed=0
    )
    for c in (cache, reference):
        c(q[:, :, :40], k[:, :, :40], v[:, :, :40])
    step = [t[:, :, 40:41] for t in (q, k, v)]
    bad = {
        "batch": (step[0][:2], step[1][:2], step[2][:2]),
        "kv heads": (step[0], step[1][:, :2], step[2][:, :2]),
        "query heads": (step[0][:, :8], step[1], step[2]),
        "head_dim": (step[0][..., :64], step[1][..., :64], step[2][..., :64]),
        "k/v length": (step[0], step[1], torch.cat([step[2], step[2]], 2)),
        "dtype": (step[0].double(), step[1].double(), step[2].double()),
    }
    for what, args in bad.items():
        with pytest.raises(ValueError, match=r"shape|tokens|cache is"):
            cache(*args)
        assert cache.length == 40, what
    torch.testing.assert_close(cache(*step), reference(*step), atol=0, rtol=0)


def test_static_overflow():
    q, k, v = _qkv(12)
    for fmt in ("none", "kivi4"):
        cache = make_cached_attention(_variant("static", fmt, max_len=10), _workload(10))
        cache(q[:, :, :8], k[:, :, :8], v[:, :, :8])
        bytes_before = cache.cache_bytes()
        with pytest.raises(ValueError, match=r"overflow.*room for 2 more.*adds 3"):
            cache(q[:, :, 8:11], k[:, :, 8:11], v[:, :, 8:11])
        assert cache.length == 8 and cache.cache_bytes() == bytes_before
        cache(q[:, :, 8:10], k[:, :, 8:10], v[:, :, 8:10])  # exactly full is fine
    paged = make_cached_attention(_variant("paged", "none", max_len=10), _workload(10))
    paged(q, k, v)  # 3 pages of 4: room for 12
    with pytest.raises(ValueError, match="overflow"):
        paged(q[:, :, :1], k[:, :, :1], v[:, :, :1])


# -- bytes --------------------------------------------------------------------------------------


def _storage_bytes(cache):
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in cache.tensors()
    }
    return sum(storages.values())


@pytest.mark.parametrize(("layout", "fmt"), ROLLBACK_CASES)
def test_cache_bytes_are_the_allocated_storage(layout, fmt):
    seq = sum(CHUNKS)
    cache = make_cached_attention(_variant(layout, fmt), _workload(seq), page_seed=4)
    list(_run(cache, *_qkv(seq)))
    assert cache.cache_bytes() == _storage_bytes(cache) > 0


@pytest.mark.parametrize(("fmt", "limit"), [("int8", 0.53), ("int4", 0.30)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_quantized_cache_shrinks_at_head_dim_128(layout, fmt, limit):
    wl = spec.Workload(
        phase="decode", batch=2, heads_q=8, heads_kv=2, seq_kv=256, head_dim=128, dtype="bfloat16"
    )
    q, k, v = (
        t.to(torch.bfloat16) for t in _qkv(256, batch=2, heads_q=8, heads_kv=2, head_dim=128)
    )
    sizes = {}
    for quant in ("none", fmt):
        cache = make_cached_attention(_variant(layout, quant, page_size=128, window=128), wl)
        cache(q, k, v)
        sizes[quant] = cache.cache_bytes()
    assert sizes[fmt] <= limit * sizes["none"]


# -- compiled paths -------------------------------------------------------------------------------


@pytest.mark.slow  # a Dynamo trace
@pytest.mark.parametrize("kv_args", [{}, {"smooth_keys": 1}], ids=["plain", "smooth_keys"])
def test_static_cache_traces_under_torch_compile(kv_args):
    seq, fill = 40, 30
    q, k, v = _qkv(seq, batch=2, heads_q=8, heads_kv=2, head_dim=64)
    wl = spec.Workload(phase="decode", batch=2, heads_q=8, heads_kv=2, seq_kv=seq, head_dim=64)
    variant = spec.Variant(backend="eager", kv_cache="static", kv_args=kv_args)
    cache = make_cached_attention(variant, wl)
    cache(q[:, :, :fill], k[:, :, :fill], v[:, :, :fill])
    buffer = cache.k_store.planes["x"].data_ptr()
    # fullgraph: the write, the length bump and the attention are one graph, no break
    step = torch.compile(cache, backend="aot_eager", fullgraph=True)
    outs = [
        step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1]) for t in range(fill, seq)
    ]
    ref = attention_ref(q, k, v, "causal")[:, :, fill:]
    torch.testing.assert_close(torch.cat(outs, 2).double(), ref, atol=F32_ATOL, rtol=F32_RTOL)
    assert cache.length == seq and cache.k_store.planes["x"].data_ptr() == buffer


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "window"), [("none", None), ("int8", None), ("none", 9)])
def test_paged_flex_reads_pages_in_place(fmt, window):
    chunks = (37, 1, 1, 5, 5)  # three query lengths: three compiles
    seq = sum(chunks)
    mod = ("sliding_window", {"window": window}) if window else ("causal", {})
    variant = spec.Variant(
        backend="flex",
        mod=mod[0],
        mod_args=mod[1],
        kv_cache="paged",
        kv_quant=fmt,
        kv_args={"page_size": 4},
    )
    cache = make_cached_attention(variant, _workload(seq), page_seed=11)
    assert type(cache).__name__ == "PagedFlexCache"
    q, k, v = _qkv(seq, seed=9)
    last = _check_against_oracle(cache, mod, fmt, q, k, v, chunks)
    table = cache.table.table
    assert not torch.equal(table, table.sort(dim=-1).values)  # pages out of order
    cache.rollback(seq - 1)
    again = cache(*(t[:, :, -1:] for t in (q, k, v)))
    torch.testing.assert_close(again, last[:, :, -1:], atol=F32_ATOL, rtol=F32_RTOL)


# -- key smoothing ------------------------------------------------------------------------------
# Keys are stored as k - mean (the first call's channel means): every score of one query moves by
# the same q . mean, so the oracle of the original keys still applies, and a quantized cache is
# checked tightly against what it stores and loosely against the true keys, as above.

OUTLIERS = (3, 17, 41, 79)  # channels of head_dim 80 with a large offset, as real keys have


def _outlier_keys(k, offset=12.0, spread=3.0):
    k = k.clone()
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0])
    k[..., OUTLIERS] = sign * offset + spread * k[..., OUTLIERS]
    return k


def _check_smoothed(cache, mod, fmt, q, k, v, chunks=CHUNKS):
    """Like ``_check_against_oracle``, with the cache's keys shifted by the first call's means."""
    mean = k[:, :, : chunks[0]].float().mean(2, keepdim=True)
    shifted = k - mean
    group = q.shape[1] // k.shape[1]
    for start, end, out in _run(cache, q, k, v, chunks):
        k_eff, eps_k = _effective(shifted, fmt, "key", end, cache)
        v_eff, eps_v = _effective(v, fmt, "value", end, cache)
        q_call = q[:, :, start:end]
        tight = attention_ref(q_call, k_eff, v_eff, *mod)  # what the cache stores
        torch.testing.assert_close(out.double(), tight, atol=F32_ATOL, rtol=F32_RTOL)
        true = attention_ref(q_call, k[:, :, :end], v[:, :, :end], *mod)  # the original keys
        bound = _bound(q_call, k[:, :, :end], v[:, :, :end], eps_k, eps_v, group)
        assert torch.all((out.double() - true).abs() <= bound + F32_ATOL), (start, end)
    torch.testing.assert_close(cache.key_mean, mean, atol=0, rtol=0)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_smoothed_keys_match_the_oracle_of_the_original_keys(layout, fmt):
    if not _supported(layout, fmt):
        return
    seq = sum(CHUNKS)
    cache = make_cached_attention(_variant(layout, fmt, smooth_keys=1), _workload(seq), page_seed=7)
    q, k, v = _qkv(seq, seed=12)
    _check_smoothed(cache, _mod(layout), fmt, q, _outlier_keys(k), v)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_smoothing_an_unquantized_cache_changes_nothing(layout):
    seq = sum(CHUNKS)
    q, k, v = _qkv(seq, seed=13)
    k = _outlier_keys(k)
    plain, smoothed = (
        make_cached_attention(_variant(layout, "none", **args), _workload(seq), page_seed=1)
        for args in ({}, {"smooth_keys": 1})
    )
    for (_, _, a), (_, _, b) in zip(_run(plain, q, k, v), _run(smoothed, q, k, v), strict=True):
        torch.testing.assert_close(b, a, atol=F32_ATOL, rtol=F32_RTOL)


def _rel_err(layout, fmt, q, k, v, **kv_args):
    cache = make_cached_attention(_variant(layout, fmt, **kv_args), _workload(q.shape[2]))
    outs = torch.cat([out for _, _, out in _run(cache, q, k, v)], 2).double()
    ref = attention_ref(q, k, v, *_mod(layout))
    return float((outs - ref).norm() / ref.norm())


def test_smoothing_helps_per_token_int4_on_outlier_keys():
    # What the option is for: outlier channels stretch int4's per-token range; KIVI keys are
    # quantized per channel, which a per-channel shift leaves as it was.
    seq = sum(CHUNKS)
    q, k, v = _qkv(seq, seed=14)
    k = _outlier_keys(k)
    plain, smoothed = (_rel_err("static", "int4", q, k, v, **a) for a in ({}, {"smooth_keys": 1}))
    assert smoothed < 0.5 * plain
    kivi = [_rel_err("static", "kivi4", q, k, v, **a) for a in ({}, {"smooth_keys": 1})]
    assert kivi[1] == pytest.approx(kivi[0], rel=0.05)


@pytest.mark.parametrize(
    ("layout", "fmt"), [("static", "int4"), ("sliding", "int8"), ("dynamic", "kivi4")]
)
def test_smoothed_rollback_and_reset(layout, fmt):
    # rolling back keeps the prefill's means; a reset starts a new sequence, whose first call
    # sets new ones
    fill, seq = 47, 49
    q, k, v = _qkv(seq, seed=15)
    k = _outlier_keys(k)
    variant = _variant(layout, fmt, max_len=seq, smooth_keys=1)
    cache = make_cached_attention(variant, _workload(seq))
    cache(q[:, :, :fill], k[:, :, :fill], v[:, :, :fill])
    step = [t[:, :, fill : fill + 1] for t in (q, k, v)]
    first = cache(*step)
    cache.rollback(fill)
    torch.testing.assert_close(cache(*step), first, atol=0, rtol=0)
    cache.reset()
    fresh = make_cached_attention(variant, _workload(seq))
    other = [t.flip(2) for t in (q, k, v)]  # another sequence
    for c in (cache, fresh):
        c(*(t[:, :, :fill] for t in other))
    torch.testing.assert_close(cache.key_mean, fresh.key_mean, atol=0, rtol=0)
    torch.testing.assert_close(
        cache(*(t[:, :, fill : fill + 1] for t in other)),
        fresh(*(t[:, :, fill : fill + 1] for t in other)),
        atol=0,
        rtol=0,
    )


@pytest.mark.parametrize(("layout", "fmt"), ROLLBACK_CASES)
def test_smoothed_cache_bytes_count_the_means(layout, fmt):
    seq = sum(CHUNKS)
    sizes = {}
    for args in ({}, {"smooth_keys": 1}):
        cache = make_cached_attention(_variant(layout, fmt, **args), _workload(seq), page_seed=4)
        list(_run(cache, *_qkv(seq)))
        assert cache.cache_bytes() == _storage_bytes(cache)
        sizes[bool(args)] = cache.cache_bytes()
    assert sizes[True] - sizes[False] == B * HKV * D * 4  # float32 means per (row, head, channel)


def test_per_layer_maps_are_refused_on_one_attention_call():
    variant = spec.Variant(kv_cache="static", kv_quant="int8@0-1,kivi2")
    with pytest.raises(ValueError, match="per-layer map; one attention call is one layer"):
        make_cached_attention(variant, _workload(16))
