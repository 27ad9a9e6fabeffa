"""The Python contract of the README: build, measure, PerformanceAnalysis, stateful caches."""

import torch

import sdpalab as sl
from sdpalab.attention.reference import attention_ref
from sdpalab.measure.accuracy import compare, tolerance


def test_build_and_measure_stay_functions_after_use():
    import sdpalab.build
    import sdpalab.run.trial  # noqa: F401

    wl = sl.Workload(batch=2, heads_q=8, heads_kv=2, seq_kv=96, head_dim=64)
    var = sl.Variant(backend="math", mod="sliding_window", mod_args={"window": 16})
    attn = sl.build(var, wl)
    q, k, v = torch.randn(2, 8, 96, 64), torch.randn(2, 2, 96, 64), torch.randn(2, 2, 96, 64)
    ref = attention_ref(q, k, v, "sliding_window", {"window": 16})
    assert compare(attn(q, k, v), ref).rel_fro_err < tolerance(torch.float32)
    res = sl.measure(var, wl, sl.MeasureSettings(repeats=3, warmup=1))
    assert res.status == "ok" and res.rel_fro_err < tolerance(torch.float32)
    assert res.latency_ms > 0 and res.peak_mem_bytes > 0 and res.kernel == "math"
    assert res.timing_method == "cpu_clock"
    assert 0 < res.allowed_fraction < 0.2


def test_decode_loop_equals_full_causal_attention():
    wl = sl.Workload(phase="decode", heads_q=12, heads_kv=4, seq_kv=40, head_dim=80)
    attn = sl.build(sl.Variant(backend="math", kv_cache="static"), wl)
    q, k, v = torch.randn(1, 12, 40, 80), torch.randn(1, 4, 40, 80), torch.randn(1, 4, 40, 80)
    outs = [attn(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1]) for t in range(40)]
    ref = attention_ref(q, k, v, "causal")
    assert compare(torch.cat(outs, dim=2), ref).rel_fro_err < tolerance(torch.float32)
    attn.reset()
    assert compare(attn(q, k, v), ref).rel_fro_err < tolerance(torch.float32)


def test_failures_are_statuses_not_exceptions():
    wl = sl.Workload(seq_kv=32, head_dim=16, heads_q=2)
    assert sl.measure(sl.Variant(backend="cudnn"), wl).status in ("unsupported", "ok")
    res = sl.measure(sl.Variant(backend="math", mod="softcap"), wl)
    assert res.status == "unsupported" and "non-additively" in res.reason


def test_performance_analysis_report():
    q = torch.randn(1, 4, 256, 32)
    text = sl.PerformanceAnalysis(
        torch.nn.functional.scaled_dot_product_attention, (q, q, q)
    ).report()
    assert "latency" in text and "peak memory" in text and "MiB" in text
