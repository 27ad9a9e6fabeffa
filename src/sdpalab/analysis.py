"""``PerformanceAnalysis``: profile, time and take the peak memory of any callable, in a notebook.

The corrected version of the case study's class of the same name. There, the "memory profile"
was a table of CPU times, the GPU check compared a ``torch.device`` with a string (always False,
so no GPU activity was ever recorded), and the benchmark rebuilt its statement from source
text. Here every number comes from the measurement modules of ``sdpalab.measure``: latency from
the device's clock with warm-up, median and IQR; peak memory in bytes from the CUDA allocator or
the CPU profiler's allocation timeline; top ops on the device's own activity.

    pa = PerformanceAnalysis(attn, (q, k, v))
    print(pa.report())
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from sdpalab.measure.memory import MemoryPeak, peak_memory
from sdpalab.measure.profiler import top_ops
from sdpalab.measure.timing import Timing, time_fn


def _tensors(inputs: tuple) -> list[torch.Tensor]:
    return [x for x in inputs if isinstance(x, torch.Tensor)]


def input_bytes(inputs: tuple) -> int:
    """Bytes held by the tensors among ``inputs``, counting a shared storage once."""
    storages = {}
    for t in _tensors(inputs):
        storage = t.untyped_storage()
        storages[(t.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


class PerformanceAnalysis:
    """Measurements of ``fn(*inputs)``: ``profile()``, ``benchmark()``, ``memory()``, ``report()``.

    ``fn`` is any callable (a function, an ``nn.Module``, a compiled function); ``inputs`` the
    positional arguments it takes, e.g. ``(q, k, v)``. ``device`` defaults to the device of the
    first tensor among the inputs (CPU if there is none). Calls run under ``torch.no_grad()``
    unless ``grad=True``, so that autograd's saved tensors do not count as the function's memory.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        inputs: tuple,
        *,
        device: str | None = None,
        name: str | None = None,
        grad: bool = False,
    ) -> None:
        self.fn = fn
        self.inputs = tuple(inputs)
        tensors = _tensors(self.inputs)
        self.device = device or (str(tensors[0].device) if tensors else "cpu")
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.grad = grad
        self._warm = False

    def _call(self) -> Any:
        with contextlib.nullcontext() if self.grad else torch.no_grad():
            return self.fn(*self.inputs)

    def _warmup(self) -> None:
        # The first call may compile; no profile or memory figure should include that.
        if not self._warm:
            self._call()
            self._warm = True

    def profile(self, n: int = 15) -> str:
        """Top ``n`` ops by self time (GPU time on a GPU) of one warm call, as a table."""
        self._warmup()
        return top_ops(self._call, device=self.device, n=n)

    def benchmark(self, warmup: int = 3, repeats: int = 20) -> Timing:
        """Latency of ``fn(*inputs)``: median, IQR, n and a noise flag, in milliseconds."""
        return time_fn(self._call, device=self.device, warmup=warmup, repeats=repeats)

    def memory(self) -> MemoryPeak:
        """Peak memory of one warm call, above the inputs (whose bytes are the baseline)."""
        self._warmup()
        return peak_memory(self._call, device=self.device, baseline_bytes=input_bytes(self.inputs))

    def report(self, n: int = 15) -> str:
        """A readable report: latency, peak memory and the top ops."""
        timing = self.benchmark()
        mem = self.memory()
        on_gpu = torch.device(self.device).type == "cuda"
        noise = "  (noisy: IQR > 10% of median)" if timing.noisy else ""
        lines = [
            f"PerformanceAnalysis: {self.name}",
            f"  device        {self.device}",
            f"  latency       {timing.latency_ms:.3f} ms median, IQR {timing.latency_iqr_ms:.3f} ms,"
            f" n={timing.latency_n}{noise}",
            f"  peak memory   +{mem.peak_mem_bytes / 2**20:.2f} MiB above inputs,"
            f" {mem.peak_mem_total_bytes / 2**20:.2f} MiB total ({mem.method})",
            f"  inputs        {input_bytes(self.inputs) / 2**20:.2f} MiB",
            "",
            f"Top {n} ops by self {'CUDA' if on_gpu else 'CPU'} time:",
            self.profile(n),
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"PerformanceAnalysis({self.name!r}, device={self.device!r})"
