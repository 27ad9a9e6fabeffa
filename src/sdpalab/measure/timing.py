"""Latency: warm up, time each call, summarize once.

Warm-up is ``warmup`` calls and, on a GPU, at least ``CUDA_WARMUP_S`` of calls: a GPU's clock
follows the work it was given last, and a short kernel timed right after heavy work (a matmul,
another trial's oracle) runs at that work's clock, not its own (on an H100, 1545 MHz after
matmuls against 1980 MHz, and an int4 decode step 6-12 % slower:
``benchmarks/notes/qdecode-warmup-h100.md``).

On a GPU each call is bracketed by a pair of CUDA events on the device's own clock; all events
are read after one synchronize at the end. When the GPU sits idle waiting for the host (short
kernels launched from Python), the span between the events includes the host's time to launch
the call, as the caller sees it; when the GPU is kept busy (``setup`` or ``flush_l2`` work
queued before the start event), the span is the device time alone. On the CPU each call is
timed with the monotonic ``time.perf_counter_ns``. Statistics (median, IQR, noise flag) are
computed here and nowhere else in the project.
"""

from __future__ import annotations

import functools
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

NOISE_THRESHOLD = 0.10
"""A timing is flagged noisy when IQR / median exceeds this."""
CUDA_WARMUP_S = 0.05
"""Seconds of warm-up calls on a GPU, at the least (module doc)."""


@dataclass(frozen=True)
class Timing:
    """Summary of one latency measurement; every field in milliseconds unless named otherwise."""

    latency_ms: float
    """Median of the samples."""
    latency_iqr_ms: float
    """Interquartile range (75th minus 25th percentile, linear interpolation)."""
    latency_n: int
    """Number of timed samples."""
    noisy: bool
    """IQR / median > 10 %: the number is less trustworthy than it looks."""
    samples_ms: tuple[float, ...]
    """Every sample, in the order taken."""


def summarize(samples_ms: Sequence[float]) -> Timing:
    """Median, IQR and noise flag of latency samples in milliseconds.

    Quartiles use linear interpolation between order statistics (numpy's default), so
    ``[1, 2, 3, 4]`` has quartiles 1.75 and 3.25 and IQR 1.5. One sample has IQR 0.
    """
    samples = tuple(float(s) for s in samples_ms)
    if not samples:
        raise ValueError("summarize() needs at least one latency sample")
    median = statistics.median(samples)
    if len(samples) > 1:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        iqr = q3 - q1
    else:
        iqr = 0.0
    return Timing(
        latency_ms=median,
        latency_iqr_ms=iqr,
        latency_n=len(samples),
        noisy=iqr > NOISE_THRESHOLD * median,
        samples_ms=samples,
    )


def time_fn(
    fn: Callable[[], Any],
    *,
    device: str,
    warmup: int = 3,
    repeats: int = 20,
    flush_l2: bool = False,
    setup: Callable[[], Any] | None = None,
    warmup_s: float | None = None,
) -> Timing:
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed calls, and untimed calls for at
    least ``warmup_s`` seconds (default: ``CUDA_WARMUP_S`` on a GPU, 0 on the CPU).

    ``device`` is ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. ``setup`` (e.g. rolling a KV cache
    back) runs before every call, warm-up included, outside the timed region. ``flush_l2``
    (CUDA only) reads a buffer twice the size of the L2 cache before each call, outside the
    timed region, so every call starts with a cold cache. Reading, not writing: after a memset
    the L2 holds dirty lines, and the timed call's own reads evict them, so their write-back
    lands inside the timed region (about 9 us a call on an H100, the same with or without the
    kernel's own data in the cache: ``benchmarks/notes/l2-flush-h100.md``).
    """
    dev, warmup_s = _checked(device, repeats, warmup, warmup_s)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            return summarize(_time_cuda(fn, dev, warmup, warmup_s, repeats, flush_l2, setup))
    _warm_up(fn, warmup, warmup_s, setup, sync=lambda: None)
    return summarize(_time_cpu(fn, repeats, setup))


def _checked(device: str, repeats: int, warmup: int, warmup_s: float | None):
    """``(device, warmup_s)`` once the counts are valid (``warmup_s`` None: the device's
    default); raises ``ValueError`` naming them otherwise."""
    if repeats < 1 or warmup < 0 or (warmup_s is not None and warmup_s < 0):
        raise ValueError(
            f"need repeats >= 1, warmup >= 0 and warmup_s >= 0, got {repeats=} {warmup=} "
            f"{warmup_s=}"
        )
    dev = torch.device(device)
    if warmup_s is None:
        warmup_s = CUDA_WARMUP_S if dev.type == "cuda" else 0.0
    return dev, warmup_s


def time_steps(
    steps: Sequence[Callable[[], Any]],
    *,
    device: str,
    warmup: int = 3,
    repeats: int = 20,
    flush_l2: bool = False,
    setup: Callable[[], Any] | None = None,
    warmup_s: float | None = None,
) -> tuple[Timing, ...]:
    """Time calls made one after another (a forward, then its backward): one Timing for each
    step, then one for the steps together, each summarizing the same ``repeats`` runs.

    As :func:`time_fn`, with the steps in place of one call: ``setup`` (e.g. dropping the last
    run's gradients) and the L2 flush run before the first step only, outside the timed region.
    On a GPU an event sits between steps, so a step's time is its device time once the GPU is
    kept busy; on the CPU the monotonic clock is read between them.
    """
    if not steps:
        raise ValueError("time_steps() needs at least one step")
    dev, warmup_s = _checked(device, repeats, warmup, warmup_s)

    def run_all() -> None:
        for step in steps:
            step()

    if dev.type == "cuda":
        with torch.cuda.device(dev):
            spans = _time_steps_cuda(
                steps, run_all, dev, warmup, warmup_s, repeats, flush_l2, setup
            )
    else:
        _warm_up(run_all, warmup, warmup_s, setup, sync=lambda: None)
        spans = []
        for _ in range(repeats):
            if setup is not None:
                setup()
            marks = [time.perf_counter_ns()]
            for step in steps:
                step()
                marks.append(time.perf_counter_ns())
            spans.append([(b - a) / 1e6 for a, b in itertools.pairwise(marks)])
    per_step = [summarize([run[i] for run in spans]) for i in range(len(steps))]
    return (*per_step, summarize([sum(run) for run in spans]))


def _time_steps_cuda(steps, run_all, dev, warmup, warmup_s, repeats, flush_l2, setup):
    scratch = sink = None
    if flush_l2:
        l2_bytes = torch.cuda.get_device_properties(dev).L2_cache_size
        scratch = torch.ones(2 * l2_bytes // 8, dtype=torch.int64, device=dev)
        sink = torch.empty((), dtype=torch.int64, device=dev)

    def before():
        if setup is not None:
            setup()
        if scratch is not None:
            torch.sum(scratch, dim=0, out=sink)

    _warm_up(run_all, warmup, warmup_s, before, sync=lambda: torch.cuda.synchronize(dev))
    runs = []
    for _ in range(repeats):
        before()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(len(steps) + 1)]
        events[0].record()
        for step, end in zip(steps, events[1:], strict=True):
            step()
            end.record()
        runs.append(events)
    torch.cuda.synchronize(dev)
    return [[a.elapsed_time(b) for a, b in itertools.pairwise(run)] for run in runs]


def _warm_up(fn, calls: int, seconds: float, before, sync) -> None:
    """``calls`` calls of ``fn`` (each after ``before``, if given), then more until ``seconds``
    have passed since the first; ``sync`` waits for the device every few calls."""
    start = time.perf_counter()
    done = 0
    while done < calls or time.perf_counter() - start < seconds:
        for _ in range(calls - done if done < calls else 8):
            if before is not None:
                before()
            fn()
            done += 1
        sync()


def _time_cpu(fn, repeats, setup) -> list[float]:
    samples = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return samples


def _time_cuda(fn, dev, warmup, warmup_s, repeats, flush_l2, setup) -> list[float]:
    scratch = None
    if flush_l2:
        l2_bytes = torch.cuda.get_device_properties(dev).L2_cache_size
        scratch = torch.ones(2 * l2_bytes // 8, dtype=torch.int64, device=dev)
        sink = torch.empty((), dtype=torch.int64, device=dev)

    def before():  # the warm-up runs what the timed loop runs
        if setup is not None:
            setup()
        if scratch is not None:
            torch.sum(scratch, dim=0, out=sink)

    _warm_up(fn, warmup, warmup_s, before, sync=lambda: torch.cuda.synchronize(dev))
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(repeats)
    ]
    for start, end in events:
        if setup is not None:
            setup()
        if scratch is not None:
            torch.sum(scratch, dim=0, out=sink)  # leaves the L2 holding clean lines of scratch
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(dev)
    return [start.elapsed_time(end) for start, end in events]


def capture_stream(device: str) -> torch.cuda.Stream:
    """The one side stream graphs are captured on, per device. One, not one per capture: cuBLAS
    keeps a workspace (32 MiB on an H100) for every stream it has run on, for the life of the
    process. Made with that workspace already taken, so that it counts in every later memory
    reading alike, not only in those after the first capture."""
    dev = torch.device(device)
    return _capture_stream(torch.cuda.current_device() if dev.index is None else dev.index)


@functools.cache
def _capture_stream(index: int) -> torch.cuda.Stream:
    dev = torch.device("cuda", index)
    stream = torch.cuda.Stream(dev)
    with torch.cuda.stream(stream):
        torch.ones(16, 16, device=dev) @ torch.ones(16, 16, device=dev)
    stream.synchronize()
    return stream


def capture_graph(
    fn: Callable[[], Any], device: str, setup: Callable[[], Any] | None = None
) -> torch.cuda.CUDAGraph:
    """``fn`` captured in a CUDA graph, for ``time_fn(graph.replay, ...)``. ``fn`` runs once on
    the capture stream first (libraries set up their workspaces there); ``setup`` runs before
    that run and before the capture. Raises whatever the capture raises (host syncs, work that
    a graph cannot hold)."""
    dev = torch.device(device)
    stream = capture_stream(device)
    stream.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(stream):
        if setup is not None:
            setup()
        fn()
    torch.cuda.current_stream(dev).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    if setup is not None:
        setup()
    with torch.cuda.graph(graph, stream=stream):
        fn()
    torch.cuda.current_stream(dev).wait_stream(stream)
    return graph
