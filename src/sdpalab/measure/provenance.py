"""Provenance: what produced a measurement (software, hardware, code version, time, command).

Every field is gathered defensively: a field that cannot be read is ``None``, and
``provenance()`` never raises. Things that cannot change within a process are read once.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import socket
import subprocess
import sys
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
