import math

import pytest
import torch

from sdpalab.measure.accuracy import compare, tolerance


def test_identical_tensors_have_no_error():
    ref = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    acc = compare(ref.clone(), ref)
    assert (acc.max_abs_err, acc.rel_fro_err, acc.finite) == (0.0, 0.0, True)
    assert acc.cosine == pytest.approx(1.0)


def test_known_perturbation_gives_known_numbers():
    ref = torch.ones(100, dtype=torch.float64)  # ||ref|| = 10
    out = ref.clone()
    out[7] += 0.5
    acc = compare(out, ref)
    assert acc.max_abs_err == pytest.approx(0.5)
    assert acc.rel_fro_err == pytest.approx(0.05)
    assert acc.cosine == pytest.approx(100.5 / (10 * math.sqrt(99 + 1.5**2)))


def test_uniform_scaling_is_a_relative_error_with_cosine_one():
    ref = torch.randn(64, dtype=torch.float64)
    acc = compare(ref * 1.01, ref)
    assert acc.rel_fro_err == pytest.approx(0.01)
    assert acc.max_abs_err == pytest.approx(0.01 * ref.abs().max().item())
    assert acc.cosine == pytest.approx(1.0)


def test_orthogonal_and_opposite():
    ref = torch.tensor([1.0, 0.0])
    acc = compare(torch.tensor([0.0, 1.0]), ref)
    assert acc.cosine == pytest.approx(0.0)
    assert acc.rel_fro_err == pytest.approx(math.sqrt(2))
    assert compare(-ref, ref).cosine == pytest.approx(-1.0)


def test_low_precision_output_is_compared_in_float64():
    ref = torch.full((8,), 1 / 3, dtype=torch.float64)
    acc = compare(ref.to(torch.bfloat16), ref)
    assert 0 < acc.rel_fro_err < 2**-8  # one bf16 rounding


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_output_fails(bad):
    out = torch.zeros(4)
    out[2] = bad
    acc = compare(out, torch.zeros(4))
    assert not acc.finite
    assert acc.max_abs_err == math.inf and acc.rel_fro_err == math.inf
    assert math.isnan(acc.cosine)


def test_zero_reference_and_mismatched_shapes():
    zero = torch.zeros(3)
    assert compare(zero, zero).rel_fro_err == 0.0
    assert compare(torch.ones(3), zero).rel_fro_err == math.inf
    with pytest.raises(ValueError, match="shape"):
        compare(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="reference"):
        compare(torch.zeros(1), torch.tensor([math.nan]))


def test_tolerances_follow_unit_roundoff():
    assert tolerance(torch.float32) == pytest.approx(1.1e-5, rel=0.05)
    assert tolerance(torch.bfloat16) == pytest.approx(2.0e-2, rel=0.05)
    assert tolerance(torch.float16) == pytest.approx(2.5e-3, rel=0.05)
    with pytest.raises(ValueError):
        tolerance(torch.int8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_plain_attention_in_each_dtype_meets_its_tolerance(dtype):
    # A plain PyTorch attention in that precision is what the tolerance must admit.
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 300, 80).to(dtype) for _ in range(3))
    ref = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(80), -1) @ v.double()
    out = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(80), -1) @ v
    assert compare(out, ref).rel_fro_err < tolerance(dtype) / 2
