"""``sl.measure(variant, workload)``: one trial, end to end, into one Result.

Build the variant, make seeded inputs, run once (compile included) and check that output
against the float64 oracle, then time it, take its peak memory, see which kernel ran, and
derive throughput. Every failure becomes a status on the Result; nothing here raises for a
trial that cannot run.

The oracle applies the mask the workload names (``Workload.mod``), so a variant computing
another one is an approximation whose error shows; a workload that names none checks each
variant against its own mask.

A ``train`` workload runs the call forward and backward (``out.backward(grad)``, the upstream
gradient seeded): forward, backward and total latency, the memory the forward keeps for the
backward and the peak of both, TFLOP/s with the backward's FLOPs at 2.5x the forward's, and the
errors of dq, dk, dv (and of a learned bias's gradient) against the float64 oracle's autograd.

On a :class:`~sdpalab.spec.TraceWorkload` the inputs are a model's captured q, k, v (cast to the
workload's dtype), the oracle applies that layer's own mask, a variant whose mod is ``none``
runs that mask too (as inside the model), and the Result's workload carries the trace fields
and the shapes measured (:meth:`~sdpalab.spec.TraceWorkload.to_dict`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import torch

from sdpalab.attention.backends import clear_trial_caches, get_backend
from sdpalab.attention.errors import Unsupported
from sdpalab.attention.mods import allowed_fraction, make_mod
from sdpalab.attention.reference import attention_grads_ref, attention_ref
from sdpalab.measure.accuracy import compare, grad_tolerance, tolerance
from sdpalab.measure.memory import peak_memory, retained_memory
from sdpalab.measure.profiler import kernels_ran
from sdpalab.measure.provenance import provenance
from sdpalab.measure.result import Result
from sdpalab.measure.roofline import (
    BACKWARD_FLOPS_RATIO,
    attention_bytes,
    attention_flops,
    load_ceilings,
    throughput,
)
from sdpalab.measure.timing import capture_graph, capture_stream, time_fn, time_steps
from sdpalab.spec import MeasureSettings, TraceWorkload, Variant, Workload, trial_id
from sdpalab.spec.trace import load_layer
from sdpalab.spec.variant import phase_refusal

ORACLE_MAX_ELEMENTS = 1 << 25
"""Largest float64 score matrix the oracle builds; longer problems are checked on a slice of
query rows from each end of the sequence (rows are independent given their positions)."""


@functools.cache
def _provenance(device: str) -> dict:
    return provenance(device)


def make_inputs(workload: Workload, seed: int):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    wl = workload

    def rand(heads: int, length: int) -> torch.Tensor:
        x = torch.randn(wl.batch, heads, length, wl.head_dim, generator=gen)
        return x.to(wl.device, wl.torch_dtype)

    return rand(wl.heads_q, wl.seq_q), rand(wl.heads_kv, wl.seq_kv), rand(wl.heads_kv, wl.seq_kv)


def trace_inputs(workload: TraceWorkload) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A trace layer's ``q [B, H_q, S, D]``, ``k, v [B, H_kv, S, D]`` in the workload's dtype on
    its device; ``decode`` keeps the last query only (``[B, H_q, 1, D]``, bottom-right)."""
    parts = load_layer(workload.trace, workload.layer)
    q, k, v = (parts[p].to(workload.device, workload.torch_dtype) for p in ("q", "k", "v"))
    return (q[:, :, -1:] if workload.phase == "decode" else q), k, v


def on_trace(variant: Variant, workload: TraceWorkload) -> Variant:
    """The variant as it runs on a trace: mod ``none`` applies the layer's own mask, as a
    model's attention does (another mod is an approximation, measured against that mask)."""
    if variant.mod != "none":
        return variant
    mod, args = workload.mask
    return dataclasses.replace(variant, mod=mod, mod_args=args)


def _record_accuracy(result: Result, out: torch.Tensor, oracle, workload: Workload) -> None:
    """The output's error against the oracle's ``(expected, rows)`` and the dtype's tolerance."""
    expected, rows = oracle
    acc = compare(out[:, :, rows], expected)
    result.max_abs_err, result.rel_fro_err, result.cosine = (
        acc.max_abs_err,
        acc.rel_fro_err,
        acc.cosine,
    )
    result.tolerance = tolerance(workload.torch_dtype)


def _oracle(attn, variant: Variant, q, k, v, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 expected output for the checked query rows, and those rows' indices. ``mask``
    is the workload's ``(mod, args)``; by default the variant's own (:func:`oracle_mod`)."""
    from sdpalab.build import oracle_mod

    mod, args = mask or oracle_mod(variant)
    batch, heads_q, q_len, _ = q.shape
    kv_len = k.shape[2]
    budget = max(2, ORACLE_MAX_ELEMENTS // (batch * heads_q * kv_len))
    if q_len > budget:
        rows = torch.cat([torch.arange(budget // 2), torch.arange(q_len - budget // 2, q_len)])
    else:
        rows = torch.arange(q_len)
    blocks = rows.split(max(1, budget // 2))  # each block is a contiguous run of rows
    first = kv_len - q_len

    def ref_rows(q_rows, kk, vv):
        parts, at = [], 0
        for block in blocks:
            sub = q_rows[:, :, at : at + len(block)]
            at += len(block)
            parts.append(attention_ref(sub, kk, vv, mod, args, q_start=first + int(block[0])))
        return torch.cat(parts, dim=2)

    q_rows = q[:, :, rows]
    if variant.projections:
        from sdpalab.attention.projections import projected_ref

        weights = attn.reference_weights
        return projected_ref(weights, ref_rows, q_rows, k, v, heads_q, k.shape[1]), rows
    return ref_rows(q_rows, k, v), rows


FILL_MAX_SCORES = 1 << 27
"""Most score elements one cache-filling call may create, for a backend that materializes them
(the registry's ``materializes_scores``)."""
FILL_MAX_QUERIES = 1 << 26
"""Most query elements one cache-filling call may carry, for every backend."""


def fill_chunk(variant: Variant, q: torch.Tensor, prefix: int) -> int:
    """Tokens per cache-filling call: as many as memory allows, since every new length is a new
    shape to plan or compile (cuDNN plans and compiled flex graphs are made per shape; a 32k
    context filled 16 tokens at a time made 2048 of them on an H100)."""
    batch, heads_q, _, head_dim = q.shape
    chunk = FILL_MAX_QUERIES // (batch * heads_q * head_dim)
    if get_backend(variant.backend).materializes_scores:
        chunk = min(chunk, FILL_MAX_SCORES // (batch * heads_q * max(prefix, 1)))
    return max(1, min(chunk, prefix))


def fill_cache(attn, q, k, v, prefix: int, chunk: int) -> None:
    """Fill a cached attention with the first ``prefix`` tokens of k, v (untimed, unchecked),
    ``chunk`` tokens a call (:func:`fill_chunk`): filling the context is set-up, not the trial.
    """
    batch, heads_q, _, head_dim = q.shape
    for start in range(0, prefix, chunk):
        n = min(chunk, prefix - start)
        q_chunk = torch.randn(batch, heads_q, n, head_dim, device=q.device, dtype=q.dtype)
        attn(q_chunk, k[:, :, start : start + n], v[:, :, start : start + n])


def _classify(err: BaseException) -> tuple[str, str]:
    text = f"{type(err).__name__}: {err}".strip()
    if isinstance(err, Unsupported):
        return "unsupported", str(err)
    if isinstance(err, NotImplementedError):  # torch's own word that it has no such path
        return "unsupported", (str(err) or text).splitlines()[0]
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return "oom", text
    if isinstance(err, RuntimeError) and (
        "out of memory" in str(err).lower() or "can't allocate memory" in str(err)
    ):
        return "oom", text
    return "error", text.splitlines()[0] if text else type(err).__name__


def measure(
    variant: Variant, workload: Workload | TraceWorkload, settings: MeasureSettings | None = None
) -> Result:
    """Measure one variant on one workload (Gaussian inputs, or a trace's real ones). Never
    raises for a trial that fails: the Result's ``status`` says what happened (``ok``,
    ``unsupported``, ``oom``, ``numerical_fail``, ``error``). A pair that can never run (a KV
    cache in phase ``train``) is not a trial: ``ValueError``.
    """
    settings = settings or MeasureSettings()
    refusal = phase_refusal(variant, workload)
    if refusal:
        raise ValueError(refusal)
    result = Result(
        variant=variant.to_dict(),
        workload=workload.to_dict(),
        trial_id=trial_id(variant, workload, settings.identity(workload.device)),
        label=variant.label(),
        settings=settings.to_dict(),
        provenance=_provenance(workload.device),
    )
    started = time.perf_counter()
    try:
        _measure_into(result, variant, workload, settings)
    except Exception as err:  # a failed trial is a result, never the end of a run
        result.status, result.reason = _classify(err)
    finally:
        if torch.device(workload.device).type == "cuda":
            torch.cuda.synchronize(workload.device)
    result.wall_s = time.perf_counter() - started
    return result


def _measure_into(
    result: Result, variant: Variant, workload: Workload | TraceWorkload, settings
) -> None:
    from sdpalab.build import build, oracle_mod

    trace = workload if isinstance(workload, TraceWorkload) else None
    mask = None  # the attention the workload means; None: the variant's own
    if trace is not None:
        variant, workload, mask = on_trace(variant, trace), trace.as_workload(), trace.mask
    elif workload.mod is not None:
        mask = workload.mod, dict(workload.mod_args)
    if workload.phase == "train":
        _measure_train_into(result, variant, workload, settings, trace, mask)
        return
    if settings.cuda_graph and torch.device(workload.device).type == "cuda":
        capture_stream(workload.device)  # its workspaces count in every trial's memory alike
    t0 = time.perf_counter()
    attn = build(variant, workload)
    result.build_s = time.perf_counter() - t0
    q, k, v = make_inputs(workload, settings.seed) if trace is None else trace_inputs(trace)
    cached = variant.kv_cache != "none"
    prefix = workload.seq_kv - workload.seq_q
    with torch.inference_mode():
        if cached:
            inner = getattr(attn, "attn", attn)  # projections wrap the cache
            fill_cache(attn, q, k, v, prefix, fill_chunk(variant, q, prefix))

            def setup() -> None:
                # a prefill starts from an empty cache; a rollback to 0 would ask KIVI for
                # positions it has already quantized, and refuse
                if prefix:
                    inner.rollback(prefix)
                else:
                    inner.reset()

            step: Callable = lambda: attn(q, k[:, :, prefix:], v[:, :, prefix:])  # noqa: E731
        else:
            setup = None
            step = lambda: attn(q, k, v)  # noqa: E731

        if setup:
            setup()
        t0 = time.perf_counter()
        out = step()
        if torch.device(workload.device).type == "cuda":
            torch.cuda.synchronize(workload.device)
        result.compile_s = time.perf_counter() - t0

        if not torch.isfinite(out).all():
            result.status, result.reason = "numerical_fail", "output contains NaN or Inf"
            return
        if settings.check_accuracy:
            _record_accuracy(result, out, _oracle(attn, variant, q, k, v, mask), workload)

        if cached:
            result.kv_cache_bytes = int(inner.cache_bytes())
            result.kv_cache_bytes_model = _kv_model(variant, workload, "cache")
        input_bytes = sum(t.numel() * t.element_size() for t in (q, k, v))
        result.input_bytes = input_bytes

        if settings.memory:
            if setup:
                setup()
            held = input_bytes + (result.kv_cache_bytes or 0)
            _record_peak(result, peak_memory(step, device=workload.device, baseline_bytes=held))
        _record_kernel(result, variant, step, workload.device, setup)

        # last: a captured graph keeps its own memory until it is dropped
        timed, result.timing_method, graph = timed_call(
            step, setup, variant, workload.device, settings
        )
        timing = time_fn(
            timed,
            device=workload.device,
            warmup=settings.warmup,
            repeats=settings.repeats,
            flush_l2=settings.flush_l2,
            setup=setup,
        )
        del graph
        _record_timing(result, timing)

    mod, args = oracle_mod(variant)
    wl = workload
    result.allowed_fraction = allowed_fraction(mod, args, wl.seq_q, wl.seq_kv)
    result.flops, result.bytes_moved = call_cost(wl, result.allowed_fraction)
    if cached:  # what one step must read and write, in storage format (kvplan's model)
        result.step_bytes = _kv_model(variant, workload, "step")
        result.bytes_moved = result.step_bytes
    _record_rates(result, wl.device)


def _record_peak(result: Result, peak) -> None:
    result.peak_mem_bytes, result.peak_mem_total_bytes = (
        peak.peak_mem_bytes,
        peak.peak_mem_total_bytes,
    )
    result.memory_method = peak.method


def _record_kernel(result: Result, variant: Variant, step, device: str, setup=None) -> None:
    """The kernels ``step`` launched, from the profiler, where the backend's name does not say."""
    if get_backend(variant.backend).profile_kernel:
        if setup:
            setup()
        result.kernel = ",".join(kernels_ran(step, device=device)) or "unknown"
    else:
        result.kernel = variant.backend


def _record_timing(result: Result, timing) -> None:
    result.latency_ms, result.latency_iqr_ms = timing.latency_ms, timing.latency_iqr_ms
    result.latency_n, result.noisy = timing.latency_n, timing.noisy


def _record_rates(result: Result, device: str) -> None:
    """TFLOP/s, GB/s and their fractions of the device's ceilings, from the result's FLOPs,
    bytes and latency."""
    rates = throughput(result.flops, result.bytes_moved, result.latency_ms, load_ceilings(device))
    result.tflops, result.gbps = rates["tflops"], rates["gbps"]
    result.frac_peak_flops, result.frac_peak_bw = rates["frac_peak_flops"], rates["frac_peak_bw"]


GRAD_ORACLE_MAX_ELEMENTS = 1 << 30
"""Most score elements (batch x heads x q_len x kv_len) whose float64 gradients the oracle
takes; a larger problem's gradients are checked on its first batch entries (one at the least:
entries are independent), its rows a block of ``ORACLE_MAX_ELEMENTS`` scores at a time."""
_REFUSALS = ("not supported", "does not support", "no available kernel", "not implemented")
"""Words by which a kernel's backward refuses a combination (an ``unsupported`` trial)."""


def _measure_train_into(
    result: Result, variant: Variant, workload: Workload, settings, trace, mask
) -> None:
    """Phase ``train``: the call forward and backward, measured (module doc)."""
    backend = get_backend(variant.backend)
    if "train" not in backend.phases:
        raise Unsupported(
            f"backend {variant.backend!r} has no backward: it serves {', '.join(backend.phases)}"
        )
    # Masks and biases an earlier inference-mode trial cached cannot be saved for a backward,
    # and the learned tables made to require grad here must not outlive the trial.
    clear_trial_caches()
    try:
        with torch.enable_grad():
            _train(result, variant, workload, settings, trace, mask)
    finally:
        clear_trial_caches()


def _train(result: Result, variant: Variant, wl: Workload, settings, trace, mask) -> None:
    from sdpalab.build import build, oracle_mod

    t0 = time.perf_counter()
    attn = build(variant, wl)
    result.build_s = time.perf_counter() - t0
    q, k, v = make_inputs(wl, settings.seed) if trace is None else trace_inputs(trace)
    gen = torch.Generator(device="cpu").manual_seed(settings.seed + 1)
    grad_out = torch.randn(q.shape, generator=gen).to(wl.device, wl.torch_dtype)  # dL/d out
    for t in (q, k, v):
        t.requires_grad_(True)
    computed = oracle_mod(variant)
    # the backends build this same (cached) mod at this geometry: its learned tensors are theirs
    mod = make_mod(*computed, q_len=wl.seq_q, kv_len=wl.seq_kv, heads=wl.heads_q, device=wl.device)
    params = mod.params
    for p in params.values():
        p.requires_grad_(True)
    state: dict = {}

    def setup() -> None:  # as zero_grad(set_to_none=True): each step allocates its gradients
        for t in (q, k, v, *params.values()):
            t.grad = None
        state.clear()

    def forward() -> None:
        state["out"] = attn(q, k, v)

    def backward() -> None:
        try:
            state["out"].backward(grad_out)
        except RuntimeError as err:
            if any(word in str(err).lower() for word in _REFUSALS):
                first = str(err).strip().splitlines()[0]
                raise Unsupported(f"{variant.backend} backward: {first}") from None
            raise

    def step() -> None:
        forward()
        backward()

    setup()
    t0 = time.perf_counter()
    step()
    if torch.device(wl.device).type == "cuda":
        torch.cuda.synchronize(wl.device)
    result.compile_s = time.perf_counter() - t0
    grads = {"dq": q.grad, "dk": k.grad, "dv": v.grad}
    grads |= {f"d{name}": p.grad for name, p in params.items()}
    out = state["out"].detach()
    if not all(torch.isfinite(t).all() for t in (out, *grads.values()) if t is not None):
        result.status, result.reason = "numerical_fail", "output or gradient holds NaN or Inf"
        return
    if settings.check_accuracy:
        with torch.no_grad():
            _record_accuracy(result, out, _oracle(attn, variant, q, k, v, mask), wl)
        _check_grads(result, attn, (q, k, v, grad_out), grads, params, mask or computed)
    input_bytes = sum(t.numel() * t.element_size() for t in (q, k, v, grad_out))
    input_bytes += sum(p.numel() * p.element_size() for p in params.values())
    result.input_bytes = input_bytes

    if settings.memory:
        setup()
        result.saved_mem_bytes = retained_memory(forward, device=wl.device)
        setup()
        _record_peak(result, peak_memory(step, device=wl.device, baseline_bytes=input_bytes))
    _record_kernel(result, variant, step, wl.device, setup)

    on_gpu = torch.device(wl.device).type == "cuda"
    fwd, bwd, total = time_steps(
        [forward, backward],
        device=wl.device,
        warmup=settings.warmup,
        repeats=settings.repeats,
        flush_l2=settings.flush_l2 and on_gpu,
        setup=setup,
    )
    setup()
    result.timing_method = (
        "cuda_events (no graph: forward and backward timed apart)" if on_gpu else "cpu_clock"
    )
    _record_timing(result, total)
    result.latency_fwd_ms, result.latency_bwd_ms = fwd.latency_ms, bwd.latency_ms

    result.allowed_fraction = allowed_fraction(*computed, wl.seq_q, wl.seq_kv)
    result.flops, result.bytes_moved = call_cost(wl, result.allowed_fraction)
    _record_rates(result, wl.device)
    fwd_flops = round(result.flops / (1 + BACKWARD_FLOPS_RATIO))
    result.tflops_fwd = throughput(fwd_flops, None, fwd.latency_ms, None)["tflops"]
    bwd_flops = result.flops - fwd_flops
    result.tflops_bwd = throughput(bwd_flops, None, bwd.latency_ms, None)["tflops"]


def grad_batch(batch: int, heads_q: int, q_len: int, kv_len: int) -> int:
    """How many batch entries the gradient oracle checks (:data:`GRAD_ORACLE_MAX_ELEMENTS`)."""
    return max(1, min(batch, GRAD_ORACLE_MAX_ELEMENTS // (heads_q * q_len * kv_len)))


def _check_grads(result: Result, attn, tensors, grads: dict, params: dict, meant) -> None:
    """The gradients' errors against the oracle's on the first :func:`grad_batch` entries: a
    slice of the step's own gradients or, when a learned bias (whose gradient sums over the
    batch) is among them, those of the variant run again on that slice."""
    q, k, v, grad_out = tensors
    batch, heads_q, q_len, _ = q.shape
    kv_len = k.shape[2]
    n = grad_batch(batch, heads_q, q_len, kv_len)
    if n < batch and params:
        sliced = [t[:n].detach().clone().requires_grad_(True) for t in (q, k, v)]
        for p in params.values():
            p.grad = None
        attn(*sliced).backward(grad_out[:n])
        grads = {"dq": sliced[0].grad, "dk": sliced[1].grad, "dv": sliced[2].grad}
        grads |= {f"d{name}": p.grad for name, p in params.items()}
    elif n < batch:
        grads = {name: grad[:n] for name, grad in grads.items()}
    block = max(1, ORACLE_MAX_ELEMENTS // (n * heads_q * kv_len))
    ref = attention_grads_ref(q[:n], k[:n], v[:n], grad_out[:n], *meant, block_rows=block)
    errors = {
        name: compare(grad, ref[name]).rel_fro_err
        for name, grad in grads.items()
        if name in ref and grad is not None
    }
    result.dq_rel_err, result.dk_rel_err, result.dv_rel_err = (
        errors.get("dq"),
        errors.get("dk"),
        errors.get("dv"),
    )
    learned = [err for name, err in errors.items() if name not in ("dq", "dk", "dv")]
    result.dparam_rel_err = max(learned) if learned else None
    result.grad_rel_err = max(errors.values()) if errors else None
    result.grad_tolerance = grad_tolerance(q.dtype)


CACHE_GRAPH_REFUSALS = {"dynamic": "a dynamic cache reallocates its tensors every step"}
"""KV cache layouts timed with plain events on a GPU, and why (backends say it in the registry)."""


def timed_call(step: Callable, setup: Callable | None, variant: Variant, device: str, settings):
    """(what to time, how it is timed, the graph to drop afterwards). On a CUDA device with
    ``settings.cuda_graph``, the step captured in a CUDA graph: its replays are the device's
    time, with no Python or launch cost, as a serving loop replays its decode steps (the
    captured step appends at the position ``setup`` rolled back to, the same every replay).
    A step that cannot be captured is timed as it is, and the method says why."""
    if torch.device(device).type != "cuda":
        return step, "cpu_clock", None
    if not settings.cuda_graph:
        return step, "cuda_events", None
    refusal = get_backend(variant.backend).graph_refusal or CACHE_GRAPH_REFUSALS.get(
        variant.kv_cache
    )
    if refusal:
        return step, f"cuda_events (no graph: {refusal})", None
    try:
        graph = capture_graph(step, device, setup)
    except Exception as err:  # e.g. a host sync inside the step; time it eagerly instead
        torch.cuda.synchronize(device)
        why = (f"{type(err).__name__}: {err}".splitlines() or [""])[0][:160]
        return step, f"cuda_events (no graph: {why})", None
    return graph.replay, "cuda_graph", graph


def call_cost(wl: Workload, allowed: float = 1.0) -> tuple[int, int]:
    """(FLOPs, bytes) of one uncached attention call of ``wl``'s shape: FLOPs of the
    ``allowed`` fraction of score pairs, bytes of q, k, v read and the output written once.
    In phase ``train`` the backward too: ``BACKWARD_FLOPS_RATIO`` (2.5) times the forward's
    FLOPs, and q, k, v, the output and its gradient read, dq, dk, dv written (3x the bytes)."""
    flops = attention_flops(
        batch=wl.batch,
        heads_q=wl.heads_q,
        q_len=wl.seq_q,
        kv_len=wl.seq_kv,
        head_dim=wl.head_dim,
        allowed_fraction=allowed,
    )
    moved = attention_bytes(
        batch=wl.batch,
        heads_q=wl.heads_q,
        heads_kv=wl.heads_kv,
        q_len=wl.seq_q,
        kv_len=wl.seq_kv,
        head_dim=wl.head_dim,
        elem_bytes=wl.torch_dtype.itemsize,
    )
    if wl.phase == "train":
        return round(flops * (1 + BACKWARD_FLOPS_RATIO)), 3 * moved
    return flops, moved


def _kv_model(variant: Variant, workload: Workload, which: str) -> int:
    """kvplan's analytic cache bytes (``which="cache"``) or step bytes (``"step"``)."""
    from sdpalab.attention.kvplan import cache_bytes_model, step_bytes_model

    common = dict(
        kv_cache=variant.kv_cache,
        kv_quant=variant.kv_quant,
        batch=workload.batch,
        heads_kv=workload.heads_kv,
        head_dim=workload.head_dim,
        tokens=workload.seq_kv,
        dtype_bytes=workload.torch_dtype.itemsize,
        **variant.kv_args,
    )
    if which == "step":
        return step_bytes_model(heads_q=workload.heads_q, seq_q=workload.seq_q, **common)
    # the measurement rolls back one step of seq_q tokens between repeats (decode only)
    spare = workload.seq_q if workload.phase == "decode" else 0
    return cache_bytes_model(rollback_tokens=spare, **common)
