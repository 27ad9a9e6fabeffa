"""``PerformanceAnalysis``: profile, time and take the peak memory of any callable, in a notebook.

The corrected version of the case study's class of the same name. There, the "memory profile"
was a table of CPU times, the GPU check compared a ``torch.device`` with a string (always False,
so no GPU activity was ever recorded), and the benchmark rebuilt its statement from source
text. Here every number comes from the measurement modules of ``sdpalab.measure``: latency from
the device's clock with warm-up, median and IQR; peak memory in bytes from the CUDA allocator or
the CPU profiler's allocation timeline; top ops on the device's own activity.

    pa = PerformanceAnalysis(attn, (q, k, v))
    print(pa.report())

With ``backward=True`` each call is a training step: ``fn(*inputs)`` and then
``out.backward(grad)`` with a fixed, seeded upstream gradient; the report gives the forward,
the backward and both together, and the peak memory holds what the forward keeps for the
backward and the gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from sdpalab.measure.memory import MemoryPeak, peak_memory
from sdpalab.measure.profiler import top_ops
from sdpalab.measure.timing import Timing, time_fn, time_steps


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
    ``backward=True`` makes each call a training step (module doc): the forward with autograd,
    then its backward with an upstream gradient drawn once from ``seed``, every input's and
    parameter's gradient dropped before each step (as ``zero_grad(set_to_none=True)``). It needs
    an input tensor, or a parameter of an ``nn.Module`` ``fn``, that requires grad.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        inputs: tuple,
        *,
        device: str | None = None,
        name: str | None = None,
        grad: bool = False,
        backward: bool = False,
        seed: int = 0,
    ) -> None:
        self.fn = fn
        self.inputs = tuple(inputs)
        tensors = _tensors(self.inputs)
        self.device = device or (str(tensors[0].device) if tensors else "cpu")
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.grad = grad or backward
        self.backward = backward
        self.seed = seed
        self._warm = False
        self._grad_out: torch.Tensor | None = None
        self._out: Any = None
        if backward and not self._leaves():
            raise ValueError(
                "backward=True needs an input tensor (or a parameter of fn) that requires grad; "
                "e.g. q.requires_grad_(True)"
            )

    def _leaves(self) -> list[torch.Tensor]:
        params = list(self.fn.parameters()) if isinstance(self.fn, torch.nn.Module) else []
        return [t for t in (*_tensors(self.inputs), *params) if t.requires_grad]

    def _drop_grads(self) -> None:
        for t in self._leaves():
            t.grad = None
        self._out = None

    def _forward(self) -> Any:
        with contextlib.nullcontext() if self.grad else torch.no_grad():
            out = self.fn(*self.inputs)
        if self.backward:  # kept for the backward step
            self._out = out
        return out

    def _backward(self) -> None:
        out = self._out
        if self._grad_out is None:  # drawn once: every step differentiates the same loss
            gen = torch.Generator().manual_seed(self.seed)
            self._grad_out = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
        out.backward(self._grad_out)

    def _call(self) -> Any:
        if not self.backward:
            return self._forward()
        self._drop_grads()
        out = self._forward()
        self._backward()
        return out

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
        """Latency of ``fn(*inputs)`` (with ``backward``: of the forward and backward together):
        median, IQR, n and a noise flag, in milliseconds."""
        if self.backward:
            return self.benchmark_steps(warmup, repeats)["total"]
        return time_fn(self._call, device=self.device, warmup=warmup, repeats=repeats)

    def benchmark_steps(self, warmup: int = 3, repeats: int = 20) -> dict[str, Timing]:
        """With ``backward``: ``{"forward", "backward", "total"}`` latencies of the same steps,
        each timed apart (gradients dropped before each step, outside the timed region)."""
        if not self.backward:
            raise ValueError("benchmark_steps() times a training step; pass backward=True")
        found = time_steps(
            [self._forward, self._backward],
            device=self.device,
            warmup=warmup,
            repeats=repeats,
            setup=self._drop_grads,
        )
        self._drop_grads()
        return dict(zip(("forward", "backward", "total"), found, strict=True))

    def memory(self) -> MemoryPeak:
        """Peak memory of one warm call, above the inputs (whose bytes are the baseline)."""
        self._warmup()
        self._drop_grads()  # the last step's gradients are not this one's baseline
        peak = peak_memory(self._call, device=self.device, baseline_bytes=input_bytes(self.inputs))
        self._drop_grads()
        return peak

    def report(self, n: int = 15) -> str:
        """A readable report: latency (with ``backward``: forward, backward and both), peak
        memory and the top ops."""
        steps = self.benchmark_steps() if self.backward else {"latency": self.benchmark()}
        mem = self.memory()
        on_gpu = torch.device(self.device).type == "cuda"
        lines = [f"PerformanceAnalysis: {self.name}", f"  device        {self.device}"]
        for what, timing in steps.items():
            noise = "  (noisy: IQR > 10% of median)" if timing.noisy else ""
            lines.append(
                f"  {what:<13} {timing.latency_ms:.3f} ms median, IQR "
                f"{timing.latency_iqr_ms:.3f} ms, n={timing.latency_n}{noise}"
            )
        lines += [
            f"  peak memory   +{mem.peak_mem_bytes / 2**20:.2f} MiB above inputs,"
            f" {mem.peak_mem_total_bytes / 2**20:.2f} MiB total ({mem.method})",
            f"  inputs        {input_bytes(self.inputs) / 2**20:.2f} MiB",
            "",
            f"Top {n} ops by self {'CUDA' if on_gpu else 'CPU'} time:",
            self.profile(n),
        ]
        self._drop_grads()
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"PerformanceAnalysis({self.name!r}, device={self.device!r})"
