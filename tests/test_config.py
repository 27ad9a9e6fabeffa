"""Sweep configs: axes and their cross product, sub-grids, zip, presets, resolution on the
device, unsupported combinations kept as trials, stable trial ids."""

import json

import pytest

from sdpalab.attention.backends import available
from sdpalab.spec import MeasureSettings
from sdpalab.spec.config import list_presets, load_spec, parse_bytes, spec_from_dict

PRESETS = {"quick", "case-study", "decode-long", "prefill-masks", "demo"}


def _spec(**data):
    return spec_from_dict({"name": "t", "device": "cpu", **data}, source="t.yaml")


def test_cross_product_in_stable_order():
    spec = _spec(
        workload={"seq_kv": [16, 32], "heads_q": 2, "head_dim": 16},
        variants={"backend": ["math", "eager"], "mod": ["none", "causal"]},
    )
    trials = spec.trials()
    assert len(trials) == 8
    assert [(t.workload.seq_kv, t.label) for t in trials[:4]] == [
        (16, "math"),
        (16, "math/causal"),
        (16, "eager"),
        (16, "eager/causal"),
    ]
    assert len({t.trial_id for t in trials}) == 8
    assert [t.trial_id for t in trials] == [
        t.trial_id
        for t in _spec(
            **{
                "workload": {"seq_kv": [16, 32], "heads_q": 2, "head_dim": 16},
                "variants": {"backend": ["math", "eager"], "mod": ["none", "causal"]},
            }
        ).trials()
    ]


def test_trial_id_is_the_measured_id():
    from sdpalab.spec import trial_id

    t = _spec(workload={"seq_kv": 16}).trials()[0]
    assert t.trial_id == trial_id(t.variant, t.workload, t.settings.identity(t.workload.device))
    # graph timing changes what a GPU trial times, nothing elsewhere: CPU ids stay as they were
    settings = MeasureSettings()
    assert "cuda_graph" not in settings.identity("cpu")
    assert settings.identity("cuda:0") == settings.to_dict()
    assert "cuda_graph" in settings.to_dict()


def test_mods_inline_args_and_mod_args_axis():
    spec = _spec(
        variants={
            "mod": ["none", {"sliding_window": [{"window": 4}, {"window": 8}]}, "prefix_lm"],
            "mod_args": [{"prefix": 2}, {"prefix": 6}],
        },
        workload={"seq_kv": 16},
    )
    labels = [t.label for t in spec.trials()]
    # mod_args goes to the plain mods that take its keys; none takes no prefix and runs plain
    assert "auto/sliding_window(window=4)" in labels and "auto/sliding_window(window=8)" in labels
    assert "auto/prefix_lm(prefix=2)" in labels and "auto/prefix_lm(prefix=6)" in labels
    assert labels.count("auto") == 1 and len(labels) == 5
    assert not [t for t in spec.trials() if t.unsupported] and not spec.left_out()


def test_grids_inherit_and_override_and_zip():
    spec = _spec(
        workload={"heads_q": 4, "head_dim": 16, "dtype": "float32"},
        measure={"repeats": 7},
        grids=[
            {
                "name": "a",
                "zip": ["batch", "seq_kv"],
                "workload": {"batch": [1, 2, 3], "seq_kv": [8, 16, 32]},
            },
            {
                "name": "b",
                "workload": {"phase": "decode", "seq_kv": 64},
                "variants": {"kv_cache": "static", "kv_quant": ["none", "int8"]},
                "measure": {"warmup": 0},
            },
            {"name": "gpu", "only_on": "cuda", "workload": {"seq_kv": 8}},
        ],
    )
    trials = spec.trials()
    a = [t for t in trials if t.grid == "a"]
    assert [(t.workload.batch, t.workload.seq_kv) for t in a] == [(1, 8), (2, 16), (3, 32)]
    b = [t for t in trials if t.grid == "b"]
    assert [t.label for t in b] == ["auto/static", "auto/static+int8"]
    assert b[0].settings == MeasureSettings(repeats=7, warmup=0)
    assert a[0].settings.repeats == 7 and a[0].settings.warmup == MeasureSettings().warmup
    assert not [t for t in trials if t.grid == "gpu"]  # only_on: cuda, and this is the CPU


def test_not_here_is_unsupported_and_never_valid_is_not_a_trial(monkeypatch):
    """What this machine lacks is an ``unsupported`` trial; a point no machine could run is
    left out of the grid (listed with the reason), and a value that makes no valid point at
    all is a config error naming its key."""
    import sdpalab.spec.workload

    monkeypatch.setattr(sdpalab.spec.workload, "supported_dtypes", lambda device: ("float32",))
    spec = _spec(
        workload={"seq_kv": 16, "seq_q": [8, 16], "dtype": ["float32", "float16"]},
        variants={"kv_cache": ["none", "static"], "kv_quant": ["none", "int8"]},
    )
    trials = spec.trials()
    assert len(trials) == 12  # of 16: int8 without a cache, at 2 seq_q x 2 dtypes, left out
    left = spec.left_out()
    assert len(left) == 4 and all("needs a kv_cache" in t.invalid for t in left)
    reasons = [t.unsupported for t in trials if t.unsupported]
    assert len(reasons) == 6 and all("not supported on cpu" in r for r in reasons)  # float16
    with pytest.raises(ValueError, match=r"workload\.seq_q: 32 makes no valid trial: seq_q=32"):
        _spec(workload={"seq_kv": 16, "seq_q": [8, 32]})
    with pytest.raises(ValueError, match=r"variants\.kv_quant: 'int8' makes no valid trial"):
        _spec(variants={"kv_quant": ["none", "int8"]})
    with pytest.raises(ValueError, match=r"grids\[1\]\.variants\.mod: 'sliding_window'"):
        _spec(grids=[{}, {"variants": {"mod": "sliding_window"}}])
    t = next(t for t in trials if t.unsupported)
    res = t.result("unsupported", t.unsupported)
    assert res.trial_id == t.trial_id and res.label == t.label and res.workload["seq_kv"] == 16


def test_device_resolution_auto_dtype_and_available_backends():
    spec = _spec(device="auto", workload={"dtype": "auto"}, variants={"backend": "available"})
    assert spec.device == "cpu"  # CI has no GPU; auto picks cpu here
    trials = spec.trials()
    assert {t.workload.dtype for t in trials} == {"float32"}
    assert [t.variant.backend for t in trials] == list(available("cpu"))


def test_spec_round_trips_through_its_dict():
    spec = load_spec("demo")
    again = spec_from_dict(json.loads(json.dumps(spec.to_dict())))
    assert [t.trial_id for t in again.trials()] == [t.trial_id for t in spec.trials()]


def test_presets_load_and_list():
    assert {name for name, _ in list_presets()} >= PRESETS
    assert all(desc for _, desc in list_presets())
    for name in PRESETS:
        spec = load_spec(name)
        trials = spec.trials()
        assert trials and spec.name == name
        assert not [t.unsupported for t in trials if t.unsupported], name


def test_demo_on_cpu():
    trials = load_spec("demo").trials()
    prefill = [t for t in trials if t.workload.phase == "prefill"]
    decode = [t for t in trials if t.workload.phase == "decode"]
    assert {t.variant.backend for t in prefill} == {"math", "flash", "eager", "flex"}
    assert {t.workload.seq_kv for t in prefill} == {256, 512, 1024, 2048}
    assert {t.variant.mod for t in prefill} == {"none", "causal", "sliding_window"}
    assert {t.variant.kv_quant for t in decode} == {"none", "int8", "int4", "kivi4"}
    assert {t.workload.seq_kv for t in decode} == {1024, 2048, 4096, 8192}
    assert {t.workload.dtype for t in trials} == {"float32"}


def test_configs_dir_is_the_presets(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert load_spec(root / "configs" / "quick.yaml").name == "quick"


def test_parse_bytes():
    assert parse_bytes("2GiB") == 2 * 2**30
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes(4096) == 4096
    for bad in ("lots", "-1GiB", 0, True, "2 XB"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    assert (
        _spec(constraints={"max_memory": "8GiB", "max_error": "1e-2"}).constraints.max_memory
        == 8 * 2**30
    )
