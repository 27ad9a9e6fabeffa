"""Provenance: what produced a measurement (software, hardware, code version, time, command),
and the load other work put on the machine while it ran (:func:`machine_load`).

Every field is gathered defensively: a field that cannot be read is ``None``, and
``provenance()`` never raises. Things that cannot change within a process are read once.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch


def _safe(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except Exception:
        return None


@functools.cache
def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.cache
def _package_version(*names: str) -> str | None:
    # Read the installed metadata instead of importing: importing triton costs a second.
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@functools.cache
def nvidia_driver() -> str | None:
    """The NVIDIA driver version, from ``/proc`` or else ``nvidia-smi``; ``None`` without one."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        for word in text.split():
            if word[:1].isdigit() and word.count(".") >= 1:
                return word
    except OSError:
        pass
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=2,
            check=True,
        )
        return done.stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _git(*args: str) -> subprocess.CompletedProcess:
    here = Path(__file__).resolve().parent
    return subprocess.run(
        ["git", "-C", str(here), *args], capture_output=True, text=True, timeout=1
    )


def _git_sha() -> str | None:
    done = _git("rev-parse", "HEAD")
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def _git_dirty() -> bool | None:
    done = _git("status", "--porcelain", "--untracked-files=no")
    return bool(done.stdout.strip()) if done.returncode == 0 else None


def _device_name(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_model()


def provenance(device: str = "cpu", argv: list[str] | None = None, seed: int | None = None) -> dict:
    """A JSON-ready record of the environment a measurement on ``device`` ran in.

    Keys: python, torch, triton, cuda, cudnn, driver, device, device_name, cpu_model,
    torch_threads, git_sha, git_dirty (of the sdpalab source tree), time_utc, argv, seed,
    hostname, platform. Unknown values are ``None``.
    """
    on_gpu = _safe(lambda: torch.device(device).type == "cuda")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _safe(lambda: _package_version("triton", "pytorch-triton")),
        "cuda": torch.version.cuda,
        "cudnn": _safe(torch.backends.cudnn.version) if on_gpu else None,
        "driver": _safe(nvidia_driver) if on_gpu else None,
        "device": device,
        "device_name": _safe(lambda: _device_name(device)),
        "cpu_model": _safe(cpu_model),
        "torch_threads": _safe(torch.get_num_threads),
        "git_sha": _safe(_git_sha),
        "git_dirty": _safe(_git_dirty),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv if argv is None else argv),
        "seed": seed,
        "hostname": _safe(socket.gethostname),
        "platform": _safe(platform.platform),
    }


BUSY_CPU_SHARE = 0.5
"""Busy: other work keeps more than this share of the CPUs running (1-minute load average)."""
BUSY_GPU_PCT = 20.0
"""Busy: the GPU was this utilized (percent) before the run put any work on it."""


def _gpu_sample(device: str) -> dict[str, float]:
    """Utilization and SM clocks of ``device`` from ``nvidia-smi`` (one call, 2 s at most)."""
    index = torch.device(device).index or 0
    done = subprocess.run(
        [
            "nvidia-smi",
            f"--id={index}",
            "--query-gpu=utilization.gpu,clocks.sm,clocks.max.sm",
            "--format=csv,noheader,nounits",
        ],
        capture_output=True,
        text=True,
        timeout=2,
        check=True,
    )
    util, clock, max_clock = (float(x) for x in done.stdout.strip().splitlines()[0].split(","))
    return {"gpu_util_pct": util, "sm_clock_mhz": clock, "max_sm_clock_mhz": max_clock}


def _machine_cpu_s() -> float:
    """CPU seconds the whole machine has been busy since boot (``/proc/stat``; steal counts)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, f.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _process_cpu_s(pid: int) -> float | None:
    """CPU seconds process ``pid`` has used (``/proc/<pid>/stat`` utime + stime)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class OtherCpu:
    """How many CPU cores processes other than ours kept busy lately: the machine's busy CPU
    time less our processes', over the wall time since the previous reading (Linux ``/proc``;
    ``None`` elsewhere). Exact over its interval, where the load average lags a minute."""

    def __init__(self, min_interval_s: float = 1.0) -> None:
        self.min_interval_s = min_interval_s
        """Readings closer than this return the last figure (a short interval is mostly noise)."""
        self._base: tuple[float, float, dict[int, float]] | None = None
        self._cores: float | None = None

    def cores(self, pids: list[int]) -> float | None:
        """Cores others used since the previous reading (``None`` at the first, or off Linux).
        ``pids``: our processes (this one is added); one that ended since the previous reading
        is lost, and its last seconds count as others'."""
        try:
            now, machine = time.monotonic(), _machine_cpu_s()
        except (OSError, ValueError):
            return None
        if self._base is not None and now - self._base[0] < max(self.min_interval_s, 1e-3):
            return self._cores
        ours = {pid: _process_cpu_s(pid) for pid in {os.getpid(), *pids}}
        ours = {pid: cpu for pid, cpu in ours.items() if cpu is not None}
        if self._base is not None:
            then, machine_then, ours_then = self._base
            used = sum(cpu - ours_then.get(pid, 0.0) for pid, cpu in ours.items())
            self._cores = max(0.0, (machine - machine_then - used) / (now - then))
        self._base = (now, machine, ours)
        return self._cores


def machine_load(
    device: str = "cpu",
    *,
    own_threads: int = 0,
    other_cores: float | None = None,
    window_s: float = 0.0,
    gpu: bool = True,
) -> dict:
    """How busy other work keeps this machine now; JSON-ready, never raises.

    Keys: ``load_1m`` (the 1-minute load average), ``cpus``, ``own_threads`` (threads of this
    run, counted out of the load), ``other_cores`` (cores other processes used lately, see
    :class:`OtherCpu`: given, or measured over ``window_s`` seconds now), ``busy`` and, on a
    CUDA ``device`` with ``gpu`` and ``nvidia-smi`` present, ``gpu_util_pct``,
    ``sm_clock_mhz``, ``max_sm_clock_mhz``. ``busy`` is other work holding more than
    :data:`BUSY_CPU_SHARE` of the CPUs (``other_cores`` when known, else the load average less
    ``own_threads``), or the GPU more than :data:`BUSY_GPU_PCT` utilized; sample the GPU only before a run puts its own work there
    (``gpu=False`` during it). ``None`` where a value cannot be read.
    """
    cpus = os.cpu_count() or 1
    load = _safe(lambda: os.getloadavg()[0])
    if other_cores is None and window_s > 0:
        # the load average lags a minute: a run just finished would read as other work
        meter = OtherCpu(min_interval_s=0.0)
        meter.cores([])
        time.sleep(window_s)
        other_cores = meter.cores([])
    others = other_cores
    if others is None and load is not None:
        others = load - own_threads
    sample: dict = {
        "load_1m": None if load is None else round(load, 2),
        "cpus": cpus,
        "own_threads": own_threads,
        "busy": None if others is None else others > BUSY_CPU_SHARE * cpus,
    }
    if other_cores is not None:
        sample["other_cores"] = round(other_cores, 2)
    if gpu and _safe(lambda: torch.device(device).type == "cuda"):
        found = _safe(lambda: _gpu_sample(device)) or {}
        sample.update(found)
        if found.get("gpu_util_pct", 0.0) > BUSY_GPU_PCT:
            sample["busy"] = True
    return sample


def load_text(sample: dict) -> str:
    """``load 3.1 on 2 CPUs, 1.8 cores used by others, GPU 45% in use``: a sample for people."""
    parts = []
    if sample.get("load_1m") is not None:
        parts.append(f"load {sample['load_1m']:g} on {sample.get('cpus', '?')} CPUs")
    if sample.get("other_cores") is not None:
        parts.append(f"{sample['other_cores']:g} cores used by others")
    if sample.get("gpu_util_pct") is not None:
        parts.append(f"GPU {sample['gpu_util_pct']:g}% in use")
    return ", ".join(parts) or "load unknown"
