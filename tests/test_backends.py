"""Every backend and every mod against the float64 oracle, on random inputs and awkward shapes.

Tolerances come from the precision (``sdpalab.measure.accuracy.tolerance``), never from what
the code happens to produce.
"""

import pytest
import torch

from sdpalab.attention.backends import make_attend
from sdpalab.attention.errors import Unsupported
from sdpalab.attention.mods import MODS
from sdpalab.attention.reference import attention_ref
from sdpalab.measure.accuracy import compare, tolerance

MOD_ARGS = {
    "none": {},
    "causal": {},
    "sliding_window": {"window": 37},
    "prefix_lm": {"prefix": 19},
    "document": {"lengths": [23, 41, 7]},
    "alibi": {},
    "softcap": {"cap": 4.0},
    "relative_bias": {"max_distance": 16},
}
# (batch, heads_q, heads_kv, q_len, kv_len, head_dim): awkward on purpose
SHAPES = [
    (3, 8, 2, 100, 100, 80),  # GQA 4:1, odd head_dim, batch 3
    (2, 12, 4, 1, 67, 64),  # one decode token, GQA 3:1
    (1, 4, 4, 13, 77, 32),  # chunk of queries at the end (bottom-right)
]


def test_every_mod_has_args():
    assert set(MOD_ARGS) == set(MODS)


def _inputs(batch, heads_q, heads_kv, q_len, kv_len, head_dim, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads_q, q_len, head_dim, generator=gen)
    k = torch.randn(batch, heads_kv, kv_len, head_dim, generator=gen)
    v = torch.randn(batch, heads_kv, kv_len, head_dim, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _check(backend, mod, shape, dtype=torch.float32):
    q, k, v = _inputs(*shape, dtype=dtype)
    try:
        out = make_attend(backend, mod, MOD_ARGS[mod])(q, k, v)
    except Unsupported as err:
        assert mod == "softcap" and backend not in ("eager", "flex"), err
        return
    ref = attention_ref(q, k, v, mod, MOD_ARGS[mod])
    acc = compare(out, ref)
    assert acc.finite
    assert out.dtype == dtype and out.shape == ref.shape
    assert acc.rel_fro_err <= tolerance(dtype), (backend, mod, shape, acc)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mod", list(MOD_ARGS))
@pytest.mark.parametrize("backend", ["math", "flash", "auto", "eager"])
def test_sdpa_and_eager_match_oracle(backend, mod, shape):
    _check(backend, mod, shape)


@pytest.mark.parametrize("mod", ["none", "causal", "alibi"])
@pytest.mark.parametrize("backend", ["math", "eager", "flash"])
def test_bfloat16_within_its_precision(backend, mod):
    _check(backend, mod, SHAPES[0], dtype=torch.bfloat16)


@pytest.mark.parametrize("backend", ["efficient", "cudnn"])
def test_gpu_only_backends_say_why_on_cpu(backend):
    q, k, v = _inputs(*SHAPES[2])
    with pytest.raises(Unsupported, match=f"SDPA backend '{backend}' cannot run this on cpu"):
        make_attend(backend, "none", {})(q, k, v)


def test_causal_is_bottom_right_not_top_left():
    """The case study's bug: SDPA's is_causal on one query against a cache is top-left."""
    q, k, v = _inputs(1, 2, 2, 1, 50, 16)
    ours = make_attend("math", "causal", {})(q, k, v)
    assert compare(ours, attention_ref(q, k, v, "none")).rel_fro_err < 1e-5  # last row sees all
    top_left = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert compare(top_left, attention_ref(q, k, v, "none")).rel_fro_err > 0.1


@pytest.mark.slow
@pytest.mark.xdist_group("flex")
@pytest.mark.parametrize("mod", list(MOD_ARGS))
def test_flex_matches_oracle_awkward(mod):
    # head_dim 80, seq 1000, GQA 4:1, batch 3 (one geometry: one compile per mod)
    _check("flex", mod, (3, 8, 2, 1000, 1000, 80))


@pytest.mark.slow
@pytest.mark.xdist_group("flex")
def test_flex_decode_and_chunk():
    for shape in SHAPES[1:]:
        _check("flex", "causal", shape)


@pytest.mark.gpu
@pytest.mark.parametrize("mod", ["none", "causal", "sliding_window", "alibi"])
@pytest.mark.parametrize(
    "backend", ["math", "flash", "efficient", "cudnn", "auto", "eager", "flex"]
)
def test_gpu_backends_match_oracle(backend, mod):
    q, k, v = (t.cuda() for t in _inputs(2, 8, 2, 129, 300, 64, dtype=torch.bfloat16))
    try:
        out = make_attend(backend, mod, MOD_ARGS[mod])(q, k, v)
    except Unsupported:
        pytest.skip(f"{backend} cannot run {mod} here")
    acc = compare(out, attention_ref(q, k, v, mod, MOD_ARGS[mod]))
    assert acc.rel_fro_err <= tolerance(torch.bfloat16), acc
