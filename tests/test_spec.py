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
        (
            {"phase": "training"},
            "phase='training' is not valid; choose one of: prefill, decode, train",
        ),
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


# -- per-layer KV formats and key smoothing ----------------------------------------------------


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("int8@0-1,kivi2", "int8@0-1,kivi2"),
        (" kivi2, int8@1, int8@0 ", "int8@0-1,kivi2"),  # any order, spaces, touching runs
        ("int4@3,int4@4-5,none@0,kivi4", "none@0,int4@3-5,kivi4"),
        ("kivi2@0-3,kivi2", "kivi2"),  # runs that equal the rest are the uniform format
        ("none@0,none", "none"),
        ("int8@07,fp8", "int8@7,fp8"),
    ],
)
def test_per_layer_maps_have_one_spelling(written, canonical):
    variant = sl.Variant(kv_cache="static", kv_quant=written)
    assert variant.kv_quant == canonical
    assert variant == sl.Variant(kv_cache="static", kv_quant=canonical)
    assert variant.key() == sl.Variant(kv_cache="static", kv_quant=canonical).key()


@pytest.mark.parametrize(
    ("kv_quant", "fragment"),
    [
        (
            "int3",
            "kv_quant='int3' is not valid; choose one of: none, int8, int4, fp8, kivi2, kivi4",
        ),
        ("int8@0-1", "a per-layer map needs exactly one bare format for every other layer"),
        ("int8,kivi2", "it has 2 (int8, kivi2)"),
        ("int9@0,kivi2", "'int9' is not a format; choose one of: none, int8"),
        ("int8@2-1,kivi2", "int8@2-1 is not valid; write FORMAT@LAYER or FORMAT@FIRST-LAST"),
        ("int8@x,kivi2", "int8@x is not valid"),
        ("int8@0-3,int4@3,kivi2", "layer 3 is given twice (int8 and int4)"),
        (["int8"], "is not valid; choose one of"),
    ],
)
def test_bad_per_layer_maps(kv_quant, fragment):
    with pytest.raises(ValueError) as info:
        sl.Variant(kv_cache="static", kv_quant=kv_quant)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("kv_quant=")


def test_per_layer_map_identity_and_printing():
    from sdpalab.attention.kvlayers import format_of_layer, kv_formats, layer_formats

    variant = sl.Variant(backend="math", kv_cache="dynamic", kv_quant="int8@0-1,kivi2")
    other = sl.Variant(backend="math", kv_cache="dynamic", kv_quant="kivi2,int8@1,int8@0")
    assert hash(variant) == hash(other) and variant.key() == other.key()
    assert variant.label() == "math/dynamic+int8@0-1,kivi2"
    assert eval(variant.python(), {"sl": sl}) == variant
    assert layer_formats(variant.kv_quant, 4) == ("int8", "int8", "kivi2", "kivi2")
    assert layer_formats("int4", 2) == ("int4", "int4")
    assert [format_of_layer("none@0,int4@28-29,int8", i) for i in (0, 1, 28, 29, 30)] == [
        "none", "int8", "int4", "int4", "int8",
    ]  # fmt: skip
    assert kv_formats("none@0,int4@28-29,int8") == ("none", "int4", "int8")
    with pytest.raises(ValueError, match=r"names layer 29; the model has 12 layers \(0-11\)"):
        layer_formats("none@0,int4@28-29,int8", 12)


def test_smooth_keys_is_a_flag_of_a_cache():
    variant = sl.Variant(kv_cache="static", kv_quant="int4", kv_args={"smooth_keys": 1})
    assert variant.label() == "auto/static+int4+smooth_keys"
    assert variant.key() != sl.Variant(kv_cache="static", kv_quant="int4").key()
    for value in (0, 2, True, "1", 1.0):
        with pytest.raises(ValueError, match=r"kv_args.smooth_keys=.* is not valid; choose 1"):
            sl.Variant(kv_cache="static", kv_args={"smooth_keys": value})
    with pytest.raises(ValueError, match=r"kv_args\.smooth_keys needs a kv_cache"):
        sl.Variant(kv_args={"smooth_keys": 1})


MODEL_WORKLOAD = {"model": "tiny-llama", "prompt_len": 16, "new_tokens": 4}


def _yaml_spec(tmp_path, text):
    from sdpalab.spec.config import load_spec

    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_spec(path)


def test_per_layer_maps_in_yaml(tmp_path):
    spec = _yaml_spec(
        tmp_path,
        "name: t\ndevice: cpu\n"
        "workload: {model: tiny-llama, prompt_len: 16, new_tokens: 4}\n"
        "variants:\n"
        "  kv_cache: dynamic\n"
        '  kv_quant: [int4, "kivi2, int8@0-1"]\n'
        "  kv_args: [{}, {smooth_keys: 1}]\n",
    )
    got = sorted((t.variant.kv_quant, t.variant.label()) for t in spec.trials())
    assert got == [
        ("int4", "auto/dynamic+int4"),
        ("int4", "auto/dynamic+int4+smooth_keys"),
        ("int8@0-1,kivi2", "auto/dynamic+int8@0-1,kivi2"),
        ("int8@0-1,kivi2", "auto/dynamic+int8@0-1,kivi2+smooth_keys"),
    ]
    # block style needs no quotes
    block = "name: t\ndevice: cpu\nworkload: {model: tiny-llama}\n"
    block += "variants:\n  kv_cache: static\n  kv_quant: int8@0-1,kivi2\n"
    assert [t.variant.kv_quant for t in _yaml_spec(tmp_path, block).trials()] == ["int8@0-1,kivi2"]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (
            {"workload": {"seq_kv": 64}, "variants": {"kv_cache": "static",
                                                      "kv_quant": ["int8", "int8@0-1,kivi2"]}},
            "t.yaml: variants.kv_quant[1]: 'int8@0-1,kivi2' is a per-layer map, which needs a "
            "model workload",
        ),
        (
            {"workload": {"seq_kv": 64}, "variants": {"kv_cache": "static"},
             "grids": [{"variants": {"kv_quant": "int4@0,int8"}}]},
            "t.yaml: grids[0].variants.kv_quant[0]: 'int4@0,int8' is a per-layer map",
        ),
        (
            {"workload": MODEL_WORKLOAD, "variants": {"kv_cache": "static",
                                                      "kv_quant": "int8@0,int8@0,kivi2"}},
            "t.yaml: variants.kv_quant: 'int8@0,int8@0,kivi2': layer 0 is given twice",
        ),
        (
            {"workload": MODEL_WORKLOAD, "variants": {"kv_cache": "static",
                                                      "kv_args": {"smooth_keys": 0}}},
            "t.yaml: variants.kv_args: smooth_keys=0 is not valid; choose 1",
        ),
    ],
)  # fmt: skip
def test_per_layer_map_config_errors(data, fragment):
    from sdpalab.spec.config import spec_from_dict

    with pytest.raises(ValueError) as info:
        spec_from_dict({"name": "t", "device": "cpu", **data}, source="t.yaml")
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)
