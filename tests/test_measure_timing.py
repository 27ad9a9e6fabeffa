import time

import pytest
import torch

from sdpalab.measure.timing import CUDA_WARMUP_S, summarize, time_fn


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
    with pytest.raises(ValueError, match="warmup_s"):
        time_fn(lambda: None, device="cpu", warmup_s=-1.0)


def test_warm_up_runs_for_warmup_s_seconds_after_its_calls():
    calls = {"setup": 0, "fn": 0}

    def setup():
        calls["setup"] += 1

    def fn():
        calls["fn"] += 1
        time.sleep(0.005)

    start = time.perf_counter()
    time_fn(fn, device="cpu", warmup=1, repeats=2, setup=setup, warmup_s=0.06)
    assert time.perf_counter() - start >= 0.06
    assert calls["fn"] >= 2 + 0.06 / 0.005 * 0.5  # sleeps may overshoot, never undershoot
    assert calls["setup"] == calls["fn"]
    calls["fn"] = 0  # the CPU's default: the warmup calls alone
    time_fn(fn, device="cpu", warmup=2, repeats=3)
    assert calls["fn"] == 5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_events_time_a_known_kernel_and_l2_flush_runs():
    torch.cuda.synchronize()
    x = torch.randn(4096, 4096, device="cuda")
    t = time_fn(lambda: torch.cuda._sleep(10_000_000), device="cuda", warmup=1, repeats=5)
    assert t.latency_ms > 1.0  # ~10M cycles: several ms on any GPU
    flushed = time_fn(lambda: x.add_(1), device="cuda:0", repeats=5, flush_l2=True)
    assert flushed.latency_n == 5 and flushed.latency_ms > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_warm_up_lasts_cuda_warmup_s_by_default():
    """On a GPU the warm-up runs for CUDA_WARMUP_S at the least, so that the clock follows the
    timed work, not whatever ran before it."""
    x = torch.randn(1024, device="cuda")
    calls = []
    start = time.perf_counter()
    time_fn(lambda: calls.append(x.add_(1)), device="cuda", warmup=0, repeats=1)
    assert time.perf_counter() - start >= CUDA_WARMUP_S
    assert len(calls) > 8


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GRAPH_VARIANTS = [
    ("cudnn", "static", "none"),
    ("math", "sliding", "none"),  # a ring of kv_args.window = 128 slots (flash takes no mask)
    ("triton_qdecode", "static", "int8"),
    ("triton_qdecode", "static", "int4"),
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend,kv_cache,kv_quant", GRAPH_VARIANTS)
def test_a_captured_decode_step_replays_the_eager_step(backend, kv_cache, kv_quant):
    """What ``sl.measure`` times on a GPU: the decode step captured after a rollback, replayed.
    Each replay must compute the eager step's output, bit for bit."""
    import sdpalab as sl
    from sdpalab.measure.timing import capture_graph

    wl = sl.Workload(phase="decode", batch=2, heads_q=8, heads_kv=2, seq_kv=333, head_dim=64,
                     dtype="bfloat16", device="cuda")  # fmt: skip
    kv_args = {"window": 128} if kv_cache == "sliding" else {}
    variant = sl.Variant(backend=backend, kv_cache=kv_cache, kv_quant=kv_quant, kv_args=kv_args)
    attn = sl.build(variant, wl)
    gen = torch.Generator(device="cuda").manual_seed(0)
    k, v = (torch.randn(2, 2, 333, 64, device="cuda", generator=gen).bfloat16() for _ in "kv")
    q = torch.randn(2, 8, 1, 64, device="cuda", generator=gen).bfloat16()
    prefix = 332
    with torch.inference_mode():
        for start in range(0, prefix, 83):  # fill in chunks, as the trial does
            n = min(83, prefix - start)
            attn(torch.randn(2, 8, n, 64, device="cuda").bfloat16(),
                 k[:, :, start : start + n], v[:, :, start : start + n])  # fmt: skip
        eager = attn(q, k[:, :, prefix:], v[:, :, prefix:]).clone()
        outs = []
        graph = capture_graph(lambda: outs.append(attn(q, k[:, :, prefix:], v[:, :, prefix:])),
                              "cuda", setup=lambda: attn.rollback(prefix))  # fmt: skip
        captured = outs[-1]
        captured.fill_(float("nan"))
        attn.rollback(prefix)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, eager)


@pytest.mark.gpu
@needs_cuda
def test_measure_times_graph_replays_and_says_when_it_cannot():
    import sdpalab as sl
    from sdpalab.run.trial import timed_call
    from sdpalab.spec import MeasureSettings

    wl = sl.Workload(phase="decode", batch=1, heads_q=8, heads_kv=2, seq_kv=256, head_dim=64,
                     dtype="bfloat16", device="cuda")  # fmt: skip
    var = sl.Variant(backend="triton_qdecode", kv_cache="static", kv_quant="int8")
    fast = sl.measure(var, wl, MeasureSettings(repeats=5, warmup=1))
    assert fast.status == "ok" and fast.timing_method == "cuda_graph", fast.summary()
    plain = sl.measure(var, wl, MeasureSettings(repeats=5, warmup=1, cuda_graph=False))
    assert plain.status == "ok" and plain.timing_method == "cuda_events"
    assert fast.trial_id != plain.trial_id  # the method is part of the trial's identity

    for refused in (sl.Variant(backend="flex", kv_cache="static"),
                    sl.Variant(backend="cudnn", kv_cache="dynamic")):  # fmt: skip
        res = sl.measure(refused, wl, MeasureSettings(repeats=3, warmup=1))
        assert res.status == "ok" and res.timing_method.startswith("cuda_events (no graph: ")

    x = torch.ones(8, device="cuda")
    fn, method, graph = timed_call(lambda: x.sum().item(), None, var, "cuda", MeasureSettings())
    assert graph is None and method.startswith("cuda_events (no graph: ")
    assert fn() == 8.0  # the eager step still runs after the failed capture
