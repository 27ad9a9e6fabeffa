import time

import pytest
import torch

from sdpalab.measure.timing import summarize, time_fn


def test_summarize_known_list():
    t = summarize([1.0, 2.0, 3.0, 4.0])
    assert t.latency_ms == 2.5
    assert t.latency_iqr_ms == pytest.approx(1.5)  # quartiles 1.75 and 3.25 (linear)
    assert t.latency_n == 4
    assert t.noisy  # 1.5 / 2.5 > 10 %
    assert t.samples_ms == (1.0, 2.0, 3.0, 4.0)


def test_summarize_outlier_moves_neither_median_nor_flag_much():
    t = summarize([10.0, 10.1, 9.9, 10.0, 10.05, 50.0])
    assert t.latency_ms == pytest.approx(10.025)
    assert not t.noisy


def test_summarize_single_sample_and_empty():
    t = summarize([3.0])
    assert (t.latency_ms, t.latency_iqr_ms, t.latency_n, t.noisy) == (3.0, 0.0, 1, False)
    with pytest.raises(ValueError):
        summarize([])


def test_time_fn_measures_a_known_sleep():
    t = time_fn(lambda: time.sleep(0.02), device="cpu", warmup=1, repeats=5)
    assert t.latency_n == 5
    assert 19.5 <= t.latency_ms <= 40.0


def test_setup_runs_before_every_call_outside_the_timed_region():
    calls = {"setup": 0, "fn": 0}

    def setup():
        calls["setup"] += 1
        time.sleep(0.02)

    def fn():
        calls["fn"] += 1

    t = time_fn(fn, device="cpu", warmup=2, repeats=4, setup=setup)
    assert calls == {"setup": 6, "fn": 6}
    assert t.latency_ms < 5.0


def test_bad_counts_are_rejected():
    with pytest.raises(ValueError):
        time_fn(lambda: None, device="cpu", repeats=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_events_time_a_known_kernel_and_l2_flush_runs():
    torch.cuda.synchronize()
    x = torch.randn(4096, 4096, device="cuda")
    t = time_fn(lambda: torch.cuda._sleep(10_000_000), device="cuda", warmup=1, repeats=5)
    assert t.latency_ms > 1.0  # ~10M cycles: several ms on any GPU
    flushed = time_fn(lambda: x.add_(1), device="cuda:0", repeats=5, flush_l2=True)
    assert flushed.latency_n == 5 and flushed.latency_ms > 0
