"""How long a sweep would take, before anything runs (``sdpalab sweep --dry-run``).

Each attention trial makes ``1 + warmup + repeats`` calls, one more for its memory and one for
its kernel profile; a call takes its FLOPs or its bytes (the larger share) at half this
machine's ceilings (what ``sdpalab doctor`` measured, else modest defaults); the float64 oracle
checks the rows it checks at a quarter of the matmul ceiling; a decode trial first fills its
cache. A train trial's calls are forward and backward (3.5x the FLOPs, 3x the bytes), it takes
its memory twice (what the forward keeps, then the peak), and its oracle differentiates too. Each trial adds its build and the engine's hand-off, a compiling backend a compile per
trial, and each worker its start-up. Model trials are counted at a flat guess. An estimate, not
a measurement: it says what it rests on (:attr:`SweepEstimate.basis`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sdpalab.attention.backends import get_backend
from sdpalab.measure.roofline import load_ceilings
from sdpalab.run.trial import ORACLE_MAX_ELEMENTS, call_cost, grad_batch
from sdpalab.spec import ModelWorkload, SweepSpec, TraceWorkload, Trial, Workload

DEFAULT_CEILINGS = {"cpu": (0.1, 10.0), "cuda": (200.0, 2000.0)}
"""``(matmul TFLOP/s, copy GB/s)`` assumed where ``sdpalab doctor`` measured none."""
EFFICIENCY = 0.5
"""Share of the ceilings an attention call reaches."""
TRIAL_OVERHEAD_S = 0.05
"""Build, inputs and the engine's hand-off and store write, per trial."""
COMPILE_S = {"cpu": 2.0, "cuda": 10.0}
"""One compile of a compiling backend (FlexAttention), per trial."""
MODEL_TRIAL_S = 30.0
"""A model trial (load, prefill, generation, scoring): a guess."""
WORKER_START_S = 5.0
"""One worker's start-up (torch's import; ``benchmarks/results/engine-overhead-cpu.md``)."""


@dataclass
class SweepEstimate:
    """The trials of a sweep and the seconds each would take."""

    spec: SweepSpec
    trials: list[Trial]
    seconds: dict[str, float] = field(default_factory=dict)
    """Trial id → estimated seconds (0 for a trial this machine cannot run: it is not run)."""
    workers: int = 1
    basis: str = ""
    """What the estimate rests on, for people."""

    @property
    def total_s(self) -> float:
        """Wall time: the trials shared among the workers, and their start-up."""
        work = sum(self.seconds.values())
        return work / self.workers + (WORKER_START_S if self.trials else 0.0)


def estimate_sweep(spec: SweepSpec, workers: int = 1) -> SweepEstimate:
    """Estimate each trial of ``spec`` (nothing runs; ``workers`` trials at once)."""
    kind = spec.device.split(":")[0]
    ceilings = load_ceilings(spec.device)
    if ceilings is not None:
        rates = (ceilings.matmul_tflops, ceilings.copy_gbps)
        basis = (
            f"this machine's ceilings ({rates[0]:.3g} TFLOP/s, {rates[1]:.3g} GB/s, measured "
            f"{ceilings.measured_at[:10]})"
        )
    else:
        rates = DEFAULT_CEILINGS[kind]
        basis = (
            f"assumed ceilings ({rates[0]:.3g} TFLOP/s, {rates[1]:.3g} GB/s; `sdpalab doctor` "
            "measures this machine's)"
        )
    basis += f", compiles at {COMPILE_S[kind]:.0f} s, model trials at {MODEL_TRIAL_S:.0f} s"
    trials = spec.trials()
    out = SweepEstimate(spec, trials, workers=workers, basis=basis)
    for trial in trials:
        out.seconds[trial.trial_id] = trial_seconds(trial, rates, kind)
    return out


def trial_seconds(trial: Trial, rates: tuple[float, float], kind: str) -> float:
    """One trial's estimated seconds at ``rates`` (TFLOP/s, GB/s) on a ``kind`` device."""
    if trial.unsupported is not None or trial.workload is None:
        return 0.0
    workload = trial.workload
    if isinstance(workload, ModelWorkload):
        return MODEL_TRIAL_S
    if isinstance(workload, TraceWorkload):
        workload = workload.as_workload()
    variant, settings = trial.variant, trial.settings
    backend = get_backend(variant.backend)
    call = _call_seconds(variant, workload, rates, backend.materializes_scores)
    train = workload.phase == "train"
    memory = settings.memory * (2 if train else 1)
    calls = 1 + settings.warmup + settings.repeats + memory + backend.profile_kernel
    seconds = TRIAL_OVERHEAD_S + calls * call
    if settings.check_accuracy:
        seconds += _oracle_seconds(workload, rates)
    if settings.check_accuracy and train:  # float64 forward and backward of grad_batch entries
        n = grad_batch(workload.batch, workload.heads_q, workload.seq_q, workload.seq_kv)
        flops, _ = call_cost(_with(workload, batch=n))
        seconds += flops / (rates[0] * 1e12 / 4)
    prefix = workload.seq_kv - workload.seq_q
    if variant.kv_cache != "none" and prefix:  # filling the context, once
        seconds += _call_seconds(variant, _with(workload, seq_q=prefix), rates, False)
    if backend.compiles:
        seconds += COMPILE_S[kind]
    return seconds


def _call_seconds(variant, wl: Workload, rates, materializes: bool) -> float:
    flops, moved = call_cost(wl)
    if materializes:  # the scores written, read and written by the softmax, read again
        moved += 4 * wl.batch * wl.heads_q * wl.seq_q * wl.seq_kv * wl.torch_dtype.itemsize
    tflops, gbps = rates
    return max(flops / (tflops * 1e12), moved / (gbps * 1e9)) / EFFICIENCY


def _oracle_seconds(wl: Workload, rates) -> float:
    rows = min(wl.seq_q, max(2, ORACLE_MAX_ELEMENTS // (wl.batch * wl.heads_q * wl.seq_kv)))
    flops, _ = call_cost(_with(wl, seq_q=rows, phase="prefill"))
    return flops / (rates[0] * 1e12 / 4)


def _with(wl: Workload, **changes) -> Workload:
    fields = {**wl.to_dict(), **changes}
    return Workload(**fields)


def duration_text(seconds: float) -> str:
    """``40 s``, ``3 min 20 s``, ``1 h 5 min``: an estimate's precision, no more."""
    if seconds < 60:
        return f"{max(1, math.ceil(seconds))} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest} s" if minutes < 10 else f"{round(seconds / 60)} min"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{hours} h {rest} min"
