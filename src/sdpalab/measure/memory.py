"""Peak memory of one call, in bytes: above what was live before it, and in total.

GPU: the caching allocator's own peak counter (``max_memory_allocated``), reset just before the
call. CPU: torch has no CPU peak counter, so the profiler records every allocation and free of
the CPU allocator (``profile_memory=True``); sorting those events by time and taking the
running sum rebuilds the allocation timeline, whose maximum is the peak. The events come from
the profiler's raw Kineto results: the ``[memory]`` entries of ``prof.events()`` have already
been folded into the operators that allocated, which loses the frees inside an operator and so
the timeline. Either way the numbers are bytes, never a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


@dataclass(frozen=True)
class MemoryPeak:
    """Peak memory of one call."""

    peak_mem_bytes: int
    """Most bytes allocated at once during the call, above what was live just before it."""
    peak_mem_total_bytes: int
    """Peak including what was live before: the allocator's own peak on a GPU,
    ``baseline_bytes + peak_mem_bytes`` on the CPU."""
    method: str
    """``"cuda_allocator"`` or ``"cpu_profiler"``."""


def peak_memory(
    fn: Callable[[], Any], *, device: str, baseline_bytes: int = 0, warmup: int = 0
) -> MemoryPeak:
    """Peak memory of one call of ``fn()`` on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``).

    ``baseline_bytes`` is what the caller knows is live already (its inputs, a KV cache); it only
    enters the CPU total, since the GPU allocator knows its own total. ``warmup`` calls run
    first, unmeasured (a first call may compile, and compilation allocates).
    """
    for _ in range(warmup):
        fn()
    dev = torch.device(device)
    if dev.type == "cuda":
        return _peak_cuda(fn, dev)
    peak = cpu_allocation_peak(fn)
    return MemoryPeak(
        peak_mem_bytes=peak, peak_mem_total_bytes=baseline_bytes + peak, method="cpu_profiler"
    )


def retained_memory(fn: Callable[[], Any], *, device: str) -> int:
    """Bytes that ``fn()`` leaves allocated while its result is held: the result itself and
    whatever it keeps alive (a forward's tensors saved for its backward). GPU: the allocator's
    count after the call less before; CPU: the profiler's allocation timeline, summed."""
    dev = torch.device(device)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            torch.cuda.synchronize(dev)
            before = torch.cuda.memory_allocated(dev)
            out = fn()
            torch.cuda.synchronize(dev)
            kept = torch.cuda.memory_allocated(dev) - before
            del out
        return kept
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    kept = sum(delta for _, delta in allocation_events(prof))
    del out
    return max(0, kept)


def _peak_cuda(fn: Callable[[], Any], dev: torch.device) -> MemoryPeak:
    with torch.cuda.device(dev):  # empty_cache acts on the current device
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        out = fn()
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev)
        del out
    return MemoryPeak(
        peak_mem_bytes=peak - before, peak_mem_total_bytes=peak, method="cuda_allocator"
    )


def cpu_allocation_peak(fn: Callable[[], Any]) -> int:
    """Most CPU-allocator bytes live at once during ``fn()``, above those live before it."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    return timeline_peak(allocation_events(prof))


def allocation_events(prof: profile) -> list[tuple[int, int]]:
    """``(time_ns, bytes)`` of every CPU allocation (+) and free (-) a finished profile saw."""
    results = prof.profiler.kineto_results
    if results is None:
        raise RuntimeError("the profiler kept no results; was it run with profile_memory=True?")
    return [
        (event.start_ns(), event.nbytes())
        for event in results.events()
        if event.name() == "[memory]" and event.device_type() == DeviceType.CPU
    ]


def timeline_peak(events: list[tuple[int, int]]) -> int:
    """Maximum of the running sum of byte deltas taken in time order (0 if it never rises).

    Frees of memory allocated before the window make the sum negative; the peak is still
    measured from the level at the start of the window.
    """
    level = peak = 0
    # On a tie in time, sorting puts the free (negative) first: never a peak that did not exist.
    for _, delta in sorted(events):
        level += delta
        peak = max(peak, level)
    return peak
