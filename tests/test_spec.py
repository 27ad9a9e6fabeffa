"""Workload and Variant validate on construction and name the field, the value, the choices."""

import pytest

import sdpalab as sl


def test_defaults_fill_in():
    wl = sl.Workload(phase="decode", heads_q=12, heads_kv=4, seq_kv=100)
    assert (wl.seq_q, wl.group, wl.device) == (1, 3, "cpu")
    assert sl.Workload(seq_kv=64).seq_q == 64
    assert sl.Workload(heads_q=6).heads_kv == 6


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"phase": "train"}, "phase='train' is not valid; choose one of: prefill, decode"),
        ({"batch": 0}, "batch=0 must be a positive integer"),
        ({"head_dim": -64}, "head_dim=-64"),
        ({"seq_kv": 1.5}, "seq_kv=1.5"),
        ({"heads_q": 8, "heads_kv": 3}, "heads_q=8 must be a multiple of heads_kv=3"),
        ({"seq_q": 10, "seq_kv": 5}, "seq_q=10 must be at most seq_kv=5"),
        (
            {"dtype": "float8"},
            "dtype='float8' is not valid; choose one of: float32, bfloat16, float16",
        ),
        ({"device": "tpu"}, "device='tpu'"),
    ],
)
def test_bad_workload(kwargs, fragment):
    with pytest.raises(ValueError, match=None) as info:
        sl.Workload(**kwargs)
    assert fragment in str(info.value)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_bad_input():
    with pytest.raises(ValueError, match="not available here"):
        sl.Workload(device="cuda")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"backend": "xformers"}, "backend='xformers' is not valid; choose one of: math, flash"),
        ({"mod": "diagonal"}, "mod='diagonal' is not valid; choose one of: none, causal"),
        ({"mod": "sliding_window"}, "needs mod_args.window"),
        (
            {"mod": "sliding_window", "mod_args": {"window": 0}},
            "mod_args.window=0 must be positive",
        ),
        ({"mod": "causal", "mod_args": {"window": 4}}, "not a parameter of 'causal'"),
        ({"mod": "document", "mod_args": {"lengths": []}}, "list of positive integers"),
        ({"kv_cache": "ring"}, "kv_cache='ring' is not valid"),
        ({"kv_quant": "int3"}, "kv_quant='int3' is not valid"),
        ({"kv_quant": "int8"}, "kv_quant='int8' needs a kv_cache"),
        ({"kv_cache": "sliding"}, "needs kv_args.window"),
        ({"kv_cache": "sliding", "kv_args": {"window": 0}}, "kv_args.window=0"),
        ({"kv_cache": "static", "kv_args": {"size": 4}}, "kv_args key='size' is not valid"),
        ({"weight_quant": "int2"}, "weight_quant='int2' is not valid"),
    ],
)
def test_bad_variant(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        sl.Variant(**kwargs)
    assert fragment in str(info.value)


def test_variant_identity_and_printing():
    a = sl.Variant(backend="flex", mod="sliding_window", mod_args={"window": 256})
    b = sl.Variant(backend="flex", mod="sliding_window", mod_args={"window": 256})
    assert a == b and hash(a) == hash(b) and a.key() == b.key()
    assert a.label() == "flex/sliding_window(window=256)"
    assert (
        a.python() == "sl.Variant(backend='flex', mod='sliding_window', mod_args={'window': 256})"
    )
    assert eval(a.python(), {"sl": sl}) == a
    assert sl.Variant(weight_quant="int8_dynamic").projections is True
