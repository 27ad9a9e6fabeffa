"""Error of an attention output against the float64 oracle, and what a dtype should achieve."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Accuracy:
    """Error metrics of an output against a reference (both compared in float64)."""

    max_abs_err: float
    """max |out - ref|; ``inf`` when the output is not finite."""
    rel_fro_err: float
    """||out - ref||_F / ||ref||_F; ``inf`` when the output is not finite."""
    cosine: float
    """<out, ref> / (||out|| ||ref||) over the flattened tensors; ``nan`` when not finite."""
    finite: bool
    """False when the output holds a NaN or an Inf (a ``numerical_fail``)."""


def compare(out: torch.Tensor, ref: torch.Tensor) -> Accuracy:
    """Compare ``out`` with ``ref`` (same shape, any dtype and device) in float64 on the CPU.

    Zero norms are handled without dividing by zero: a zero reference gives a relative error
    of 0 if the output is zero too and ``inf`` otherwise; cosine is 1 when both are zero and 0
    when only one is.
    """
    if out.shape != ref.shape:
        raise ValueError(f"output shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}")
    ref64 = ref.detach().to("cpu", torch.float64)
    if not torch.isfinite(ref64).all():
        raise ValueError("the reference holds NaN or Inf; the oracle must be finite")
    out64 = out.detach().to("cpu", torch.float64)
    if not torch.isfinite(out64).all():
        return Accuracy(max_abs_err=math.inf, rel_fro_err=math.inf, cosine=math.nan, finite=False)
    if out64.numel() == 0:
        return Accuracy(max_abs_err=0.0, rel_fro_err=0.0, cosine=1.0, finite=True)

    diff = out64 - ref64
    diff_norm = torch.linalg.vector_norm(diff).item()
    ref_norm = torch.linalg.vector_norm(ref64).item()
    out_norm = torch.linalg.vector_norm(out64).item()
    rel = diff_norm / ref_norm if ref_norm > 0 else (0.0 if diff_norm == 0 else math.inf)
    if ref_norm > 0 and out_norm > 0:
        cosine = torch.dot(out64.flatten(), ref64.flatten()).item() / (out_norm * ref_norm)
    else:
        cosine = 1.0 if ref_norm == out_norm else 0.0
    return Accuracy(
        max_abs_err=diff.abs().max().item(), rel_fro_err=rel, cosine=cosine, finite=True
    )


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps / 2: the largest relative error of rounding one number to ``dtype``."""
    return torch.finfo(dtype).eps / 2


def tolerance(dtype: torch.dtype, kv_len: int = 32768) -> float:
    """Relative Frobenius error that an attention output computed in ``dtype`` may show.

    The oracle sees the same (already rounded) inputs, so input rounding does not count. What
    remains is:

    * rounding inside the kernel to ``dtype``: the scores or the probabilities P before the
      P·V product, and the output itself. Each costs about one unit roundoff u; with the
      exponential's sensitivity to score errors, a few u in all. We allow ``5 u``.
    * fp32 accumulation of the two reductions (over ``head_dim`` and over ``kv_len``): its
      typical relative error grows like ``sqrt(n) u_fp32`` (rounding errors of random sign).
      We allow ``sqrt(kv_len) u_fp32`` with kv_len up to 32k (``181 u_fp32``).

    So ``tol = 5 u(dtype) + sqrt(kv_len) u(fp32)``: fp32 (u = 2^-24) ≈ 1.1e-5, bfloat16
    (u = 2^-8) ≈ 2.0e-2, float16 (u = 2^-11) ≈ 2.5e-3. Kernels that use TF32 for fp32
    matmuls (off by default in torch) would exceed the fp32 figure, as they should.
    """
    if not dtype.is_floating_point:
        raise ValueError(f"dtype {dtype} is not a floating-point dtype")
    if kv_len < 1:
        raise ValueError(f"kv_len={kv_len} must be positive")
    return 5 * unit_roundoff(dtype) + math.sqrt(kv_len) * unit_roundoff(torch.float32)


GRAD_TOLERANCE_FACTOR = 4
"""How much more error a backward may show than its forward (:func:`grad_tolerance`)."""


def grad_tolerance(dtype: torch.dtype, kv_len: int = 32768) -> float:
    """Relative Frobenius error that attention's gradients (dq, dk, dv, a learned bias's)
    computed in ``dtype`` may show against the float64 oracle's.

    The backward recomputes the probabilities P and rounds them, and then
    ``dS = P * (dP - rowsum(dO * O))`` before its two products, to ``dtype`` as the forward
    rounds P: each rounding costs the forward's share, and the subtraction inside dS loses
    relative precision where the two terms nearly cancel. dk and dv also sum over every query
    row, another fp32 reduction of ``q_len`` terms. We allow ``GRAD_TOLERANCE_FACTOR`` (4) times
    :func:`tolerance`: fp32 ≈ 4.4e-5, bfloat16 ≈ 8e-2, float16 ≈ 1e-2.
    """
    return GRAD_TOLERANCE_FACTOR * tolerance(dtype, kv_len)
