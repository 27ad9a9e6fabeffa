"""The PyTorch profiler, on the right activities: which attention kernel ran, top ops, traces.

The activities follow the device: CPU always, CUDA added when ``device`` is a CUDA device. The
test is ``torch.device(device).type == "cuda"``; comparing a ``torch.device`` with the string
``"cuda"`` is always False, which is how the case study's GPU profiles never saw the GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

KERNEL_RULES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    (
        "flash",
        lambda n: (
            n.startswith("aten::_scaled_dot_product_flash_attention")
            or n.startswith("aten::_flash_attention_forward")
        ),
    ),
    ("efficient", lambda n: "_efficient_attention" in n),
    ("cudnn", lambda n: "_cudnn_attention" in n),
    ("math", lambda n: n.startswith("aten::_scaled_dot_product_attention_math")),
    ("flex", lambda n: "flex_attention" in n.lower() or "flexattention" in n.lower()),
)
"""Kernel label → rule on a profiled op name. SDPA's backends each have their own aten op (on
CPU ``flash`` is ``_scaled_dot_product_flash_attention_for_cpu``). Uncompiled FlexAttention
shows as ``FlexAttentionAutogradOp``; a compiled one on the CPU shows only its compiled graph,
so it is recognised only by a ``record_function`` label containing ``flex_attention``."""

_MATMULS = {"aten::bmm", "aten::matmul", "aten::mm", "aten::baddbmm"}
_SOFTMAXES = {"aten::softmax", "aten::_softmax", "aten::_safe_softmax"}


def activities(device: str) -> list[ProfilerActivity]:
    """Profiler activities for ``device``: CPU, plus CUDA on a CUDA device."""
    if torch.device(device).type == "cuda":
        return [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    return [ProfilerActivity.CPU]


def _profiled(fn: Callable[[], Any], device: str, warmup: int, **options) -> profile:
    for _ in range(warmup):
        fn()
    dev = torch.device(device)
    if dev.type == "cuda":  # work queued earlier must not land in this profile
        torch.cuda.synchronize(dev)
    with profile(activities=activities(device), **options) as prof:
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    return prof


def classify_kernels(op_names: set[str]) -> list[str]:
    """Sorted attention-kernel labels for a set of profiled op names (see ``KERNEL_RULES``).

    ``eager`` is reported when a matmul and a softmax ran and no other attention kernel did.
    """
    found = {label for label, rule in KERNEL_RULES for name in op_names if rule(name)}
    if not found and op_names & _MATMULS and op_names & _SOFTMAXES:
        found.add("eager")
    return sorted(found)


def kernels_ran(fn: Callable[[], Any], *, device: str, warmup: int = 0) -> list[str]:
    """Run ``fn()`` once under the profiler; return the attention kernels it used.

    Labels: ``flash``, ``efficient``, ``cudnn``, ``math``, ``flex``, ``eager``; empty when none
    is recognised. Warm up compiled functions first (``warmup`` calls run unprofiled), or the
    ops run while compiling are seen too.
    """
    prof = _profiled(fn, device, warmup)
    return classify_kernels({event.name for event in prof.events()})


def top_ops(fn: Callable[[], Any], *, device: str, n: int = 15, warmup: int = 0) -> str:
    """Table of the ``n`` ops with the most self time (device time on a GPU, CPU time on CPU)."""
    prof = _profiled(fn, device, warmup, record_shapes=True)
    on_gpu = torch.device(device).type == "cuda"
    sort_by = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=n)


def export_trace(fn: Callable[[], Any], *, device: str, path: str, warmup: int = 0) -> str:
    """Profile one call of ``fn()`` and write a Chrome trace (chrome://tracing, Perfetto) to
    ``path``; returns ``path``."""
    prof = _profiled(fn, device, warmup, record_shapes=True)
    prof.export_chrome_trace(str(path))
    return str(path)
