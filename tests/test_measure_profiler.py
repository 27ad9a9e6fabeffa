import json

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, record_function

from sdpalab.measure.profiler import (
    activities,
    classify_kernels,
    export_trace,
    kernels_ran,
    top_ops,
)


@pytest.fixture(scope="module")
def qkv():
    return tuple(torch.randn(1, 2, 128, 32) for _ in range(3))


def pinned(backend, q, k, v):
    def fn():
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v)

    return fn


def test_math_and_flash_are_told_apart_on_cpu(qkv):
    assert kernels_ran(pinned(SDPBackend.MATH, *qkv), device="cpu") == ["math"]
    assert kernels_ran(pinned(SDPBackend.FLASH_ATTENTION, *qkv), device="cpu") == ["flash"]


def test_eager_and_non_attention(qkv):
    q, k, v = qkv
    eager = lambda: torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v  # noqa: E731
    assert kernels_ran(eager, device="cpu") == ["eager"]
    assert kernels_ran(lambda: q + k, device="cpu") == []


def test_flex_is_found_by_its_label():
    def fn():
        with record_function("sdpalab::flex_attention"):
            return torch.ones(3) * 2

    assert kernels_ran(fn, device="cpu") == ["flex"]


def test_gpu_op_names_map_to_their_kernels():
    assert classify_kernels(
        {"aten::_scaled_dot_product_efficient_attention", "aten::_efficient_attention_forward"}
    ) == ["efficient"]
    assert classify_kernels({"aten::_scaled_dot_product_cudnn_attention"}) == ["cudnn"]
    assert classify_kernels(
        {"aten::_scaled_dot_product_flash_attention", "aten::_flash_attention_forward"}
    ) == ["flash"]
    assert classify_kernels({"FlexAttentionAutogradOp", "aten::bmm", "aten::softmax"}) == ["flex"]
    # math runs bmm + softmax inside its own op: that is math, not eager
    assert classify_kernels(
        {"aten::_scaled_dot_product_attention_math", "aten::bmm", "aten::_softmax"}
    ) == ["math"]


def test_cuda_devices_get_cuda_activity():
    # The case study compared a torch.device with "cuda" (always False).
    for device in ("cuda", "cuda:1"):
        assert ProfilerActivity.CUDA in activities(device)
    assert activities("cpu") == [ProfilerActivity.CPU]


def test_top_ops_and_trace(qkv, tmp_path):
    table = top_ops(pinned(SDPBackend.MATH, *qkv), device="cpu", n=5)
    assert "aten::" in table and "Self CPU" in table
    path = export_trace(pinned(SDPBackend.MATH, *qkv), device="cpu", path=str(tmp_path / "t.json"))
    with open(path) as f:
        names = {e.get("name") for e in json.load(f)["traceEvents"]}
    assert "aten::_scaled_dot_product_attention_math" in names


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernels_are_identified():
    q, k, v = (torch.randn(1, 2, 256, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    assert kernels_ran(pinned(SDPBackend.FLASH_ATTENTION, q, k, v), device="cuda") == ["flash"]
    assert kernels_ran(pinned(SDPBackend.EFFICIENT_ATTENTION, q, k, v), device="cuda") == [
        "efficient"
    ]
    assert kernels_ran(pinned(SDPBackend.MATH, q, k, v), device="cuda") == ["math"]
    table = top_ops(pinned(SDPBackend.FLASH_ATTENTION, q, k, v), device="cuda", n=5)
    assert "CUDA" in table
