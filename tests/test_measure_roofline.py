import json

import pytest

from sdpalab.measure.roofline import (
    Ceilings,
    attention_bytes,
    attention_flops,
    cache_path,
    load_ceilings,
    measure_ceilings,
    save_ceilings,
    throughput,
)


def test_flops_of_a_constructed_case():
    # 2 matmuls x B*H*L*L*D multiply-adds x 2 flops
    full = attention_flops(batch=2, heads_q=8, q_len=1024, kv_len=1024, head_dim=64)
    assert full == 4 * 2 * 8 * 1024 * 1024 * 64 == 4_294_967_296
    half = attention_flops(
        batch=2, heads_q=8, q_len=1024, kv_len=1024, head_dim=64, allowed_fraction=0.5
    )
    assert half == full // 2
    with pytest.raises(ValueError):
        attention_flops(batch=1, heads_q=1, q_len=1, kv_len=1, head_dim=1, allowed_fraction=2)


def test_bytes_of_a_decode_step_with_and_without_a_cache():
    kw = dict(batch=1, heads_q=8, heads_kv=2, q_len=1, kv_len=4096, head_dim=128, elem_bytes=2)
    q_and_out = 2 * 8 * 1 * 128 * 2
    assert attention_bytes(**kw) == q_and_out + 2 * 2 * 4096 * 128 * 2
    assert attention_bytes(**kw, kv_bytes=1000) == q_and_out + 1000


def test_throughput_and_fractions_of_peak():
    ceil = Ceilings("x", matmul_tflops=2.0, copy_gbps=4.0, dtype="float32", measured_at="t")
    rates = throughput(10**12, 10**9, 1000.0, ceil)
    assert rates == pytest.approx(
        {"tflops": 1.0, "gbps": 1.0, "frac_peak_flops": 0.5, "frac_peak_bw": 0.25}
    )
    bare = throughput(10**12, 10**9, 500.0, None)
    assert bare["tflops"] == pytest.approx(2.0) and bare["frac_peak_flops"] is None
    assert throughput(1, 1, None, ceil)["tflops"] is None


def test_ceilings_measure_save_and_load(tmp_path, monkeypatch):
    monkeypatch.setenv("SDPALAB_CACHE_DIR", str(tmp_path))
    assert load_ceilings("cpu") is None
    c = measure_ceilings("cpu")
    assert c.dtype == "float32" and c.matmul_tflops > 0.001 and c.copy_gbps > 0.1
    save_ceilings(c)
    assert cache_path() == tmp_path / "ceilings.json"
    assert load_ceilings("cpu") == c
    assert c.device_name in json.loads(cache_path().read_text())


def test_a_corrupt_cache_reads_as_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("SDPALAB_CACHE_DIR", str(tmp_path))
    cache_path().write_text("{not json")
    assert load_ceilings("cpu") is None
