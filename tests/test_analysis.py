import pytest
import torch

from sdpalab.analysis import PerformanceAnalysis, input_bytes

MiB = 2**20


class Scale(torch.nn.Module):
    def forward(self, q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v


@pytest.fixture(scope="module")
def qkv():
    return tuple(torch.randn(1, 2, 256, 32) for _ in range(3))


def test_module_report_has_every_part(qkv):
    pa = PerformanceAnalysis(Scale(), qkv)
    assert pa.device == "cpu" and pa.name == "Scale"
    text = pa.report()
    for part in (
        "Scale",
        "cpu",
        "ms median",
        "IQR",
        "n=20",
        "MiB",
        "cpu_profiler",
        "aten::bmm",
        "Self CPU",
    ):
        assert part in text


def test_memory_is_bytes_above_the_inputs(qkv):
    def alloc(q, k, v):
        return torch.empty(16 * MiB, dtype=torch.uint8).fill_(0)

    mem = PerformanceAnalysis(alloc, qkv).memory()
    assert mem.peak_mem_bytes == pytest.approx(16 * MiB, rel=0.05)
    assert mem.peak_mem_total_bytes == mem.peak_mem_bytes + input_bytes(qkv)


def test_benchmark_and_profile(qkv):
    pa = PerformanceAnalysis(lambda q, k, v: q + k, qkv, name="add")
    t = pa.benchmark(warmup=1, repeats=7)
    assert t.latency_n == 7 and t.latency_ms > 0
    assert "aten::add" in pa.profile(n=3)


def test_input_bytes_counts_shared_storage_once():
    x = torch.zeros(1024)
    assert input_bytes((x, x[:10], 3, "s")) == 4096
    assert input_bytes((x, torch.zeros(10))) == 4096 + 40


def test_runs_without_autograd_by_default():
    w = torch.randn(8, 8, requires_grad=True)
    seen = []
    PerformanceAnalysis(
        lambda x: seen.append((x @ w).requires_grad), (torch.randn(2, 8),)
    ).benchmark(warmup=0, repeats=1)
    assert seen == [False]
