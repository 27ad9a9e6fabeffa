"""Run trials in worker processes and turn every outcome into a stored Result.

Workers are long-lived (torch is imported once per worker, not per trial) and replaced when one
dies. The parent classifies each outcome: ``ok``, ``unsupported``, ``oom``, ``numerical_fail``
and ``error`` come from ``measure()`` in the worker; ``timeout`` is a trial that gave no answer
within ``settings.timeout_s`` (its worker is killed and replaced); ``crash`` is a worker that
died during a trial (the signal or exit code and the tail of its stderr go in the reason).
Each Result is written to the store the moment it arrives, so a run killed at any point loses
at most the trials in flight, and ``resume=True`` runs only the trials without a row. Each
also gets the machine's load as it arrived in its provenance (``load``, and ``busy`` when other
work held the CPUs, or the GPU before the run began): a busy machine's latencies say little.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sdpalab.measure.provenance import BUSY_GPU_PCT, OtherCpu, machine_load
from sdpalab.measure.result import Result
from sdpalab.run.rundir import ResultStore
from sdpalab.spec import Trial

OnResult = Callable[[Result, int, int], None]
"""``on_result(result, done, total)``, called in the parent after each result is stored."""
STARTUP_TIMEOUT_S = 300.0
"""Longest a new worker may take to import torch and say it is ready."""
STDERR_TAIL_CHARS = 600
MAX_START_FAILURES = 3
GPU_INDEX = "gpu_index"
SCALE_INSTALL = "pip install 'sdpalab[scale]'"
"""What adds Ray and psycopg (``--executor ray``, ``--storage postgresql://``)."""
"""Provenance key: the GPU a pinned worker ran on, as ``CUDA_VISIBLE_DEVICES`` names it."""


# --------------------------------------------------------------------------- executors


class Pool(Protocol):
    """What an executor makes: runs trials, passing every outcome to its ``finish``."""

    def run(self, pending: deque[Trial], *, keep: bool = False) -> None: ...

    def close(self) -> None: ...


class Scheduler:
    """The loop every pool runs: start workers and hand out trials (``_fill``), wait for
    messages (``_wait``), enforce deadlines, until nothing is pending or running."""

    def run(self, pending: deque[Trial], *, keep: bool = False) -> None:
        """Run ``pending`` to the end. ``keep``: the workers stay up for the next ``run`` (the
        search's batches), until ``close()``; an exception closes them anyway."""
        try:
            while pending or self._busy():
                self._fill(pending)
                self._wait()
                self._check_deadlines()
        except BaseException:
            keep = False
            raise
        finally:
            if not keep:
                self.close()


class Executor(Protocol):
    """Where trials run. ``open(device)`` checks it can run trials on ``device`` (a ValueError
    of one line if not) before anything runs; ``pool`` makes the scheduler; ``close`` lets go
    of what ``open`` took; ``describe`` is what ``run.json`` records."""

    name: str

    def open(self, device: str) -> None: ...

    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def pool(
        self,
        log_dir: Path,
        size: int,
        finish: Callable[[Result], None],
        *,
        device: str = "cpu",
        load_at_start: dict | None = None,
    ) -> Pool: ...


def gpu_slots(
    workers: int, device: str, device_count: int, visible: str | None
) -> list[str] | None:
    """The GPU each of ``workers`` workers is pinned to (its ``CUDA_VISIBLE_DEVICES``), or None
    when nothing is pinned: one worker, trials not on the default CUDA device (``cuda:1`` names
    a GPU itself), or fewer than two GPUs. ``visible``: the ``CUDA_VISIBLE_DEVICES`` this
    process was given (its entries are shared out), else ``device_count`` GPUs. More workers
    than GPUs take them round-robin."""
    if workers < 2 or device not in ("cuda", "cuda:0"):
        return None
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible is not None else []
    if visible is None:
        ids = [str(i) for i in range(device_count)]
    if len(ids) < 2:
        return None
    return [ids[k % len(ids)] for k in range(workers)]


@dataclass(frozen=True, kw_only=True)
class LocalExecutor:
    """Worker processes on this host (:class:`WorkerPool`)."""

    gpu_count: int | None = None
    """GPUs to share workers over; ``None``: ``torch.cuda.device_count()`` (a test fakes it)."""
    name = "local"

    def open(self, device: str) -> None:
        pass

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name}

    def pool(
        self,
        log_dir: Path,
        size: int,
        finish: Callable[[Result], None],
        *,
        device: str = "cpu",
        load_at_start: dict | None = None,
    ) -> WorkerPool:
        count = self.gpu_count
        if count is None and str(device).startswith("cuda"):
            import torch

            count = torch.cuda.device_count()
        gpus = gpu_slots(size, str(device), count or 0, os.environ.get("CUDA_VISIBLE_DEVICES"))
        return WorkerPool(log_dir, size, finish, load_at_start=load_at_start, gpus=gpus)


_EXECUTOR: ContextVar[Executor | None] = ContextVar("sdpalab_executor", default=None)


def current_executor() -> Executor:
    """The executor :func:`use_executor` set for this context, else a :class:`LocalExecutor`."""
    return _EXECUTOR.get() or LocalExecutor()


@contextmanager
def use_executor(executor: Executor, device: str = "cpu") -> Iterator[Executor]:
    """Run the trials of every sweep or search inside on ``executor``: opened here (its
    ValueError, before anything runs), closed at the end."""
    executor.open(device)
    token = _EXECUTOR.set(executor)
    try:
        yield executor
    finally:
        _EXECUTOR.reset(token)
        executor.close()


def _stderr_tail(text: str, limit: int = STDERR_TAIL_CHARS) -> str:
    """The telling part of a worker's stderr, on one line: for a fatal signal, faulthandler's
    first line and the innermost frames; otherwise the last lines."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    fatal = next((i for i, line in enumerate(lines) if line.startswith("Fatal Python error")), None)
    if fatal is not None:
        frames = [line for line in lines[fatal + 1 :] if line.startswith("File ")]
        lines = [lines[fatal], *frames[:3]]
    else:
        lines = lines[-6:]
    tail = " | ".join(lines)
    return tail if len(tail) <= limit else "..." + tail[-limit:]


def _death(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"worker died from {name} (signal {-returncode})"
    return f"worker exited with code {returncode}"


def trial_message(trial: Trial) -> dict[str, Any]:
    """What a worker (a process here, or a Ray actor) is sent to run ``trial``."""
    return {
        "trial_id": trial.trial_id,
        "variant": trial.variant_spec,
        "workload": trial.workload_spec,
        "settings": trial.settings.to_dict(),
    }


class Worker:
    """One ``python -m sdpalab.run.worker`` process and the trial it is running, if any."""

    def __init__(self, log_path: Path, env: dict[str, str], gpu: str | None = None) -> None:
        self.log_path, self.gpu = log_path, gpu
        if gpu is not None:
            env = {**env, "CUDA_VISIBLE_DEVICES": gpu}
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sdpalab.run.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            close_fds=True,
        )
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self._buffer = b""
        self.ready = False
        self.trial: Trial | None = None
        self.started = time.monotonic()
        self.deadline = self.started + STARTUP_TIMEOUT_S
        self._log_offset = 0

    def send(self, trial: Trial) -> None:
        self.trial = trial
        self.started = time.monotonic()
        self.deadline = self.started + trial.settings.timeout_s
        self._log.flush()
        self._log_offset = self.log_path.stat().st_size
        message = {
            "trial_id": trial.trial_id,
            "variant": trial.variant_spec,
            "workload": trial.workload_spec,
            "settings": trial.settings.to_dict(),
        }
        self.proc.stdin.write((json.dumps(message, default=str) + "\n").encode())
        self.proc.stdin.flush()

    def read(self) -> tuple[list[dict], bool]:
        """Messages now available, and whether the worker's stdout has closed (it died)."""
        try:
            chunk = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return [], False
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()], not chunk

    def stderr_since_trial(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def kill(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        self._log.close()
        return self.proc.returncode


def worker_env(workers: int) -> dict[str, str]:
    """The workers' environment: this one, sdpalab importable, CPU threads shared out."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the directory that holds sdpalab/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    if workers > 1 and "SDPALAB_WORKER_THREADS" not in env:
        env["SDPALAB_WORKER_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    return env


def worker_threads(env: dict[str, str]) -> int:
    """Torch threads each worker runs (what it adds to the machine's load)."""
    import torch

    return int(env.get("SDPALAB_WORKER_THREADS") or torch.get_num_threads())


def stamp_load(result: Result, sample: dict, *, gpu_busy: bool = False) -> None:
    """Put a load sample (:func:`~sdpalab.measure.provenance.machine_load`) and the ``busy``
    flag into ``result``'s provenance (a copy: results of one process share theirs)."""
    busy = bool(sample.get("busy")) or gpu_busy
    result.provenance = {**result.provenance, "load": sample, "busy": busy}


def run_trials(
    trials: Sequence[Trial],
    out_dir: str | Path,
    *,
    workers: int = 1,
    resume: bool = False,
    on_result: OnResult | None = None,
    load_at_start: dict | None = None,
    executor: Executor | None = None,
) -> list[Result]:
    """Run ``trials`` in ``workers`` workers of ``executor`` (default:
    :func:`current_executor`), storing each Result in ``out_dir/results.sqlite`` as it arrives.
    Returns one Result per distinct trial, in order.

    With ``resume``, trials that already have a final row are not run again (their stored
    Result is returned). Unsupported combinations are stored without running. Measured
    Results carry the load as they arrived (see :class:`WorkerPool`).
    """
    if workers < 1:
        raise ValueError(f"workers={workers!r} must be at least 1")
    out_dir = Path(out_dir)
    unique = list({t.trial_id: t for t in reversed(trials)}.values())[::-1]  # first wins
    store = ResultStore(out_dir)
    try:
        done: dict[str, Result] = {}
        if resume:
            finished = store.done_ids()
            done = {r.trial_id: r for r in store.results() if r.trial_id in finished}
        total = len(unique)
        count = sum(t.trial_id in done for t in unique)

        def finish(result: Result) -> None:
            nonlocal count
            store.write(result)
            done[result.trial_id] = result
            count += 1
            if on_result is not None:
                on_result(result, count, total)

        pending = deque()
        for trial in unique:
            if trial.trial_id in done:
                continue
            if trial.unsupported is not None:
                finish(trial.result("unsupported", trial.unsupported))
            else:
                pending.append(trial)
        if pending:
            size = min(workers, len(pending))
            executor = executor or current_executor()
            device = str(pending[0].workload_spec.get("device") or "cpu")
            pool = executor.pool(
                out_dir / "logs", size, finish, device=device, load_at_start=load_at_start
            )
            pool.run(pending)
        return [done[t.trial_id] for t in unique]
    finally:
        store.close()


def _take(held: list, item: Any) -> bool:
    """Remove one ``item`` from ``held``; whether there was one."""
    if item in held:
        held.remove(item)
        return True
    return False


class WorkerPool(Scheduler):
    """The scheduler: hands trials to idle workers, watches deadlines and deaths, and passes
    every outcome to ``finish(result)``. Up to ``size`` workers, started as needed.

    Each outcome first gets the machine's load as it arrived (:func:`stamp_load`): the CPU
    cores other processes used while it ran (our workers' CPU time counted out), or the load
    average less our threads where ``/proc`` is missing; a GPU that other work used before the
    run (``load_at_start``, a :func:`~sdpalab.measure.provenance.machine_load` sample) marks
    every outcome busy, since during the run our own kernels hide it.

    ``gpus``: the ``CUDA_VISIBLE_DEVICES`` of each worker slot (:func:`gpu_slots`); a worker
    that replaces a dead one takes its GPU, and each result records it as ``gpu_index``."""

    def __init__(
        self,
        log_dir: Path,
        size: int,
        finish: Callable[[Result], None],
        *,
        load_at_start: dict | None = None,
        gpus: Sequence[str] | None = None,
    ) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir, self.size, self.finish = log_dir, size, finish
        self.gpus = list(gpus) if gpus is not None else None
        self.env = worker_env(size)
        self.workers: list[Worker] = []
        self.start_failures = 0
        self.spawned = 0
        self.own_threads = size * worker_threads(self.env)
        self.gpu_busy = ((load_at_start or {}).get("gpu_util_pct") or 0.0) > BUSY_GPU_PCT
        self.others = OtherCpu()
        self.others.cores([])  # the baseline: the first result measures from here

    def _record(self, trial: Trial, result: Result, worker: Worker) -> None:
        device = trial.workload_spec.get("device") or "cpu"
        pids = [w.proc.pid for w in {*self.workers, worker}]
        sample = machine_load(
            device, own_threads=self.own_threads, other_cores=self.others.cores(pids), gpu=False
        )
        stamp_load(result, sample, gpu_busy=self.gpu_busy)
        if worker.gpu is not None:
            result.provenance = {**result.provenance, GPU_INDEX: worker.gpu}
        self.finish(result)

    def _spawn(self) -> None:
        self.spawned += 1
        gpu = None
        if self.gpus:  # the first slot no living worker holds
            held = [w.gpu for w in self.workers]
            gpu = next((g for g in self.gpus if not _take(held, g)), self.gpus[0])
        log = self.log_dir / f"worker-{self.spawned}.log"
        self.workers.append(Worker(log, self.env, gpu))

    def _fill(self, pending: deque[Trial]) -> None:
        while len(self.workers) < min(self.size, len(pending) + self._busy()):
            self._spawn()  # at the start, and to replace a worker that died
        for worker in list(self.workers):
            if worker.ready and worker.trial is None and pending:
                self._send(worker, pending)

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        self.workers = []

    def _send(self, worker: Worker, pending: deque[Trial]) -> None:
        trial = pending.popleft()
        try:
            worker.send(trial)
        except OSError:  # it died between trials: the trial goes back, the worker is replaced
            pending.appendleft(trial)
            worker.trial = None
            self.workers.remove(worker)
            worker.kill()

    def _busy(self) -> int:
        return sum(w.trial is not None for w in self.workers)

    def _wait(self) -> None:
        now = time.monotonic()
        timeout = min([w.deadline - now for w in self.workers] + [1.0])
        ready, _, _ = select.select([w.fd for w in self.workers], [], [], max(0.0, timeout))
        for worker in [w for w in self.workers if w.fd in ready]:
            messages, closed = worker.read()
            for message in messages:
                self._handle(worker, message)
            if closed:
                self._died(worker)

    def _handle(self, worker: Worker, message: dict) -> None:
        if message.get("event") == "ready":
            worker.ready, worker.deadline = True, math.inf
            self.start_failures = 0
        elif message.get("event") == "result" and worker.trial is not None:
            trial, worker.trial, worker.deadline = worker.trial, None, math.inf
            result = Result.from_dict(message["result"])
            result.trial_id = trial.trial_id  # the id the parent scheduled is the identity
            if result.status == "error":
                tail = _stderr_tail(worker.stderr_since_trial())
                if tail and tail not in result.reason:
                    result.reason = f"{result.reason} [stderr: {tail}]"
            self._record(trial, result, worker)

    def _died(self, worker: Worker) -> None:
        self.workers.remove(worker)
        code = worker.kill()
        tail = _stderr_tail(
            worker.stderr_since_trial()
            if worker.trial
            else worker.log_path.read_text(errors="replace")
        )
        if worker.trial is not None:
            trial = worker.trial
            reason = _death(code) + (f"; stderr: {tail}" if tail else "")
            result = trial.result("crash", reason, wall_s=time.monotonic() - worker.started)
            self._record(trial, result, worker)
        elif not worker.ready:
            self.start_failures += 1
            if self.start_failures >= MAX_START_FAILURES:
                raise RuntimeError(
                    f"the worker process failed to start {MAX_START_FAILURES} "
                    f"times: {_death(code)}; stderr: {tail or '(empty)'}"
                )

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for worker in [w for w in self.workers if w.deadline <= now]:
            if worker.trial is None and worker.ready:
                continue
            self.workers.remove(worker)
            worker.kill()
            if worker.trial is None:  # never became ready
                self.start_failures += 1
                if self.start_failures >= MAX_START_FAILURES:
                    raise RuntimeError(
                        f"the worker process did not start within "
                        f"{STARTUP_TIMEOUT_S:g} s, {MAX_START_FAILURES} times"
                    )
                continue
            trial = worker.trial
            reason = (
                f"no result within timeout_s={trial.settings.timeout_s:g} s; worker killed and "
                "replaced"
            )
            result = trial.result("timeout", reason, wall_s=now - worker.started)
            self._record(trial, result, worker)
