"""Trials on a Ray cluster: a pool of Ray actors, each a warm worker like the local executor's.

Each actor imports torch once and measures trial after trial (``num_gpus=1`` on a GPU workload,
a share of the cluster's CPUs otherwise); the driver keeps the run directory, as with local
workers. Statuses keep their meaning: a trial with no answer within ``timeout_s`` has its
actor killed (``timeout``); an actor whose process dies mid-trial is ``crash`` (restarts and
retries are off, so a crash is recorded once, never repeated); ``oom``, ``numerical_fail`` and
the rest come from ``measure()`` in the actor. ``ray`` is imported only here, where used.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdpalab.measure.provenance import BUSY_GPU_PCT, OtherCpu, machine_load
from sdpalab.measure.result import Result
from sdpalab.run.executor import (
    GPU_INDEX,
    MAX_START_FAILURES,
    SCALE_INSTALL,
    STARTUP_TIMEOUT_S,
    Scheduler,
    stamp_load,
    trial_message,
    worker_env,
)
from sdpalab.run.rundir import redact_secrets
from sdpalab.spec import Trial

CONNECT_TIMEOUT_S = 5.0
"""How long ``--address`` may take to accept a connection before it is called unreachable."""
REASON_CHARS = 300
_ENV_PREFIXES = ("SDPALAB_", "TORCHINDUCTOR_", "TRITON_")


def import_ray():
    """``ray``, or an ImportError that names the install command."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"--executor ray needs Ray: {SCALE_INSTALL}") from None
    return ray


def check_address(address: str | None) -> str | None:
    """``address`` if it names a Ray cluster (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``),
    else a ValueError of one line; ``None``: a Ray instance on this host, started here."""
    if address is None or address == "auto":
        return address
    hint = "give the head node's HOST:PORT (`ray start --head` prints it), ray://HOST:PORT or auto"
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        raise ValueError(f"--address {redact_secrets(address)!r} is not valid; {hint}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(
            f"--address {redact_secrets(address)!r}: no Ray cluster answers there ({reason}); "
            f"{hint}"
        ) from None
    return address


@contextlib.contextmanager
def _argv_redacted() -> Iterator[None]:
    # Ray keeps the driver's command line (the job's entrypoint) in its session files
    argv, sys.argv = sys.argv, [redact_secrets(a) for a in sys.argv]
    try:
        yield
    finally:
        sys.argv = argv


@dataclass(kw_only=True)
class RayExecutor:
    """Trials as calls on Ray actors. ``address``: a running cluster (``HOST:PORT``,
    ``ray://HOST:PORT``, ``auto``); ``None`` starts a Ray instance on this host for the run
    (dashboard off, CPUs and GPUs of this host) unless this process is connected already."""

    address: str | None = None
    name = "ray"
    _owned: bool = field(default=False, repr=False)

    def open(self, device: str) -> None:
        """Connect (a ValueError of one line when the address or the cluster will not do)."""
        ray = import_ray()
        check_address(self.address)
        if not ray.is_initialized():
            options: dict[str, Any] = {
                "log_to_driver": False,  # a worker's prints must not reach the CLI's stdout
                "logging_level": logging.ERROR,
                "configure_logging": True,
            }
            if self.address is None:
                options |= {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
            try:
                with _argv_redacted():
                    ray.init(address=self.address, **options)
            except (ConnectionError, RuntimeError, ValueError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                where = self.address or "a local Ray instance"
                raise ValueError(
                    f"--address {where}: Ray did not connect ({type(err).__name__}: "
                    f"{redact_secrets(first)[:REASON_CHARS]})"
                ) from None
            self._owned = True
            _quiet_worker_deaths()
        resources = ray.cluster_resources()
        if str(device).startswith("cuda") and not resources.get("GPU"):
            self.close()
            raise ValueError(
                f"the Ray cluster{f' at {self.address}' if self.address else ''} has no GPUs; "
                f"the config's device is {device}"
            )

    def close(self) -> None:
        if self._owned:
            import ray

            ray.shutdown()
            self._owned = False

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "address": self.address or "local"}

    def pool(
        self,
        log_dir: Path,
        size: int,
        finish: Callable[[Result], None],
        *,
        device: str = "cpu",
        load_at_start: dict | None = None,
    ) -> RayPool:
        ray = import_ray()
        if not ray.is_initialized():
            self.open(device)
        return RayPool(log_dir, size, finish, device=device, load_at_start=load_at_start)


def trial_resources(device: str, workers: int, nodes: list[dict[str, float]]) -> dict[str, float]:
    """What one actor asks Ray for: a GPU (and a CPU) on a GPU workload, else an equal share of
    the cluster's CPUs among ``workers`` (at most one node's, at least one).
    ``nodes``: each live node's resources."""
    if str(device).startswith("cuda"):
        return {"num_gpus": 1, "num_cpus": 1}
    cpus = [n.get("CPU", 0) for n in nodes] or [1]
    share = max(1, min(int(max(cpus)), int(sum(cpus)) // max(1, workers)))
    return {"num_cpus": share}


def pool_size(workers: int, resources: dict[str, float], nodes: list[dict[str, float]]) -> int:
    """Actors that fit the cluster at once (an actor Ray cannot place would wait forever)."""
    key = "GPU" if resources.get("num_gpus") else "CPU"
    need = resources.get("num_gpus") or resources["num_cpus"]
    fits = sum(int(n.get(key, 0) // need) for n in nodes)
    return max(1, min(workers, fits))


def actor_env() -> dict[str, str]:
    """The environment the actors get: sdpalab's, Torch Inductor's and Triton's variables and
    the Python path (so plugins such as the tests' fault backends load there too)."""
    env = worker_env(1)
    keep = {k: v for k, v in env.items() if k.startswith(_ENV_PREFIXES)}
    keep["PYTHONPATH"] = env["PYTHONPATH"]
    return keep


class TrialWorker:
    """The actor: one warm worker process (torch imported, the trial modules loaded)."""

    def __init__(self, threads: int | None) -> None:
        import faulthandler

        sys.argv = ["sdpalab-ray-worker"]  # the provenance's command, not Ray's worker argv
        faulthandler.enable()  # a segfault leaves its stack in the actor's log on its node
        import torch

        if threads:
            torch.set_num_threads(threads)
        import sdpalab.run.trial  # noqa: F401  (pay the imports before the first trial's clock)

        self.threads = threads or torch.get_num_threads()
        gc.collect()
        gc.freeze()

    def ready(self) -> dict[str, Any]:
        import ray

        gpus = ray.get_gpu_ids()
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node": ray.get_runtime_context().get_node_id(),
            "gpu": ",".join(map(str, gpus)) if gpus else None,
        }

    def run(self, message: dict[str, Any]) -> dict[str, Any]:
        from sdpalab.run.worker import release_memory, run_one

        result = run_one(message)
        release_memory()
        device = str(message.get("workload", {}).get("device") or "cpu")
        # the node's load, less this actor's threads (the driver may be on another host)
        return {"result": result, "load": machine_load(device, own_threads=self.threads, gpu=False)}


@dataclass
class _Slot:
    actor: Any
    ready_ref: Any
    info: dict[str, Any] | None = None
    trial: Trial | None = None
    ref: Any = None
    started: float = field(default_factory=time.monotonic)
    deadline: float = field(default_factory=lambda: time.monotonic() + STARTUP_TIMEOUT_S)


class RayPool(Scheduler):
    """The scheduler on Ray: up to ``size`` actors, each running one trial at a time; every
    outcome goes to ``finish(result)`` with the load it ran under (:func:`stamp_load`)."""

    def __init__(
        self,
        log_dir: Path,
        size: int,
        finish: Callable[[Result], None],
        *,
        device: str = "cpu",
        load_at_start: dict | None = None,
    ) -> None:
        import ray

        self.ray, self.finish, self.device = ray, finish, device
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        self.resources = trial_resources(device, size, nodes)
        self.size = pool_size(size, self.resources, nodes)
        threads = None if self.resources.get("num_gpus") else int(self.resources["num_cpus"])
        self.actor_class = ray.remote(TrialWorker).options(
            max_restarts=0,
            max_task_retries=0,
            runtime_env={"env_vars": actor_env()},
            **self.resources,
        )
        self.threads = threads
        self.slots: list[_Slot] = []
        self.start_failures = 0
        self.gpu_busy = ((load_at_start or {}).get("gpu_util_pct") or 0.0) > BUSY_GPU_PCT
        self.host = socket.gethostname()
        self.others = OtherCpu()
        self.others.cores([])
        self._log = (log_dir / "ray.log").open("a")

    def _note(self, text: str) -> None:
        self._log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")
        self._log.flush()

    def _fill(self, pending: deque[Trial]) -> None:
        while len(self.slots) < min(self.size, len(pending) + self._busy()):
            self._spawn()
        for slot in self.slots:
            if slot.info is not None and slot.trial is None and pending:
                self._send(slot, pending.popleft())

    def close(self) -> None:
        for slot in self.slots:
            self._kill(slot)
        self.slots = []
        if not self._log.closed:
            self._log.close()

    def _busy(self) -> int:
        return sum(s.trial is not None for s in self.slots)

    def _spawn(self) -> None:
        actor = self.actor_class.remote(self.threads)
        self.slots.append(_Slot(actor, actor.ready.remote()))

    def _send(self, slot: _Slot, trial: Trial) -> None:
        slot.trial, slot.started = trial, time.monotonic()
        slot.deadline = slot.started + trial.settings.timeout_s
        slot.ref = slot.actor.run.remote(trial_message(trial))

    def _kill(self, slot: _Slot) -> None:
        with contextlib.suppress(Exception):
            self.ray.kill(slot.actor, no_restart=True)

    def _wait(self) -> None:
        refs = {(s.ref if s.info is not None else s.ready_ref): s for s in self.slots}
        refs = {ref: s for ref, s in refs.items() if ref is not None}
        if not refs:
            return
        now = time.monotonic()
        timeout = max(0.0, min([s.deadline - now for s in self.slots] + [1.0]))
        ready, rest = self.ray.wait(list(refs), num_returns=1, timeout=timeout)
        if ready and rest:  # whatever else finished meanwhile
            ready += self.ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        for ref in ready:
            slot = refs[ref]
            if slot.info is None:
                self._started(slot)
            else:
                self._answered(slot)

    def _started(self, slot: _Slot) -> None:
        try:
            slot.info = self.ray.get(slot.ready_ref)
        except Exception as err:  # the actor could not start (import error, lost node)
            self.slots.remove(slot)
            self._kill(slot)
            self.start_failures += 1
            self._note(f"actor failed to start: {_short(err)}")
            if self.start_failures >= MAX_START_FAILURES:
                raise RuntimeError(
                    f"the Ray worker failed to start {MAX_START_FAILURES} times: {_short(err)}"
                ) from None
            return
        self.start_failures = 0
        slot.deadline = math.inf
        self._note(f"actor ready: pid {slot.info['pid']} on {slot.info['host']}")

    def _answered(self, slot: _Slot) -> None:
        trial, ref = slot.trial, slot.ref
        slot.trial, slot.ref, slot.deadline = None, None, math.inf
        try:
            answer = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as err:  # its process died mid-trial
            self.slots.remove(slot)
            self._kill(slot)
            self._note(f"actor pid {slot.info['pid']} died during {trial.trial_id}: {_short(err)}")
            reason = f"ray worker died: {_death(err)}"
            self._record(trial, trial.result("crash", reason, wall_s=_since(slot)), slot, None)
            return
        except Exception as err:  # Ray itself failed the call (an object lost, a node gone)
            self.slots.remove(slot)
            self._kill(slot)
            reason = f"ray: {_short(err)}"
            self._record(trial, trial.result("crash", reason, wall_s=_since(slot)), slot, None)
            return
        result = Result.from_dict(answer["result"])
        result.trial_id = trial.trial_id  # the id the driver scheduled is the identity
        self._record(trial, result, slot, answer.get("load"))

    def _record(self, trial: Trial, result: Result, slot: _Slot, load: dict | None) -> None:
        info = slot.info or {}
        if info.get("host") == self.host or load is None:  # as the local pool measures it
            pids = [s.info["pid"] for s in self.slots if s.info and s.info["host"] == self.host]
            if info.get("host") == self.host:
                pids.append(info["pid"])
            own = len(pids) * (self.threads or 1)
            load = machine_load(
                trial.workload_spec.get("device") or "cpu",
                own_threads=own,
                other_cores=self.others.cores(pids),
                gpu=False,
            )
        stamp_load(result, load, gpu_busy=self.gpu_busy)
        extra = {"executor": "ray", "ray_node": info.get("node")}
        if info.get("gpu") is not None:
            extra[GPU_INDEX] = info["gpu"]
        result.provenance = {**result.provenance, **extra}
        self.finish(result)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for slot in [s for s in self.slots if s.deadline <= now]:
            self.slots.remove(slot)
            self._kill(slot)
            if slot.trial is None:  # never became ready
                self.start_failures += 1
                self._note("actor did not start in time")
                if self.start_failures >= MAX_START_FAILURES:
                    raise RuntimeError(
                        f"the Ray worker did not start within {STARTUP_TIMEOUT_S:g} s, "
                        f"{MAX_START_FAILURES} times (does the cluster have room for "
                        f"{self.resources}?)"
                    )
                continue
            trial = slot.trial
            reason = (
                f"no result within timeout_s={trial.settings.timeout_s:g} s; Ray worker killed "
                "and replaced"
            )
            self._record(
                trial, trial.result("timeout", reason, wall_s=now - slot.started), slot, None
            )


def _quiet_worker_deaths() -> None:
    """Ray prints each dead worker's notice on the driver's stdout (where ``--json`` writes its
    document); the crash is in the trial's result already, so the notice goes to the log."""
    module = sys.modules.get("ray._private.worker")
    original = getattr(module, "print_to_stdstream", None)
    if original is None or getattr(original, "_sdpalab_quiet", False):
        return

    def to_log(data: dict, *args: Any, **kwargs: Any) -> None:
        if data.get("pid") == "raylet":
            logging.getLogger("sdpalab.ray").info(" ".join(data.get("lines", [])))
        else:
            original(data, *args, **kwargs)

    to_log._sdpalab_quiet = True  # type: ignore[attr-defined]
    module.print_to_stdstream = to_log


def _since(slot: _Slot) -> float:
    return time.monotonic() - slot.started


def _short(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return redact_secrets(f"{type(err).__name__}: {lines[0] if lines else ''}")[:REASON_CHARS]


def _death(err: BaseException) -> str:
    """Ray's account of a dead actor, shortened: its exit type and detail, when it gives one."""
    text = " ".join(str(err).split())
    start = text.find("Worker exit type")
    if start >= 0:
        detail = text[start:]
        cut = detail.find(". ", detail.find("Worker exit detail"))
        return detail[: cut + 1 if cut > 0 else REASON_CHARS][:REASON_CHARS]
    return _short(err)
