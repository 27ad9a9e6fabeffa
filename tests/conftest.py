"""Shared test set-up: a warm Inductor cache inside the repo, GPU tests skipped without CUDA."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))
os.environ.setdefault("SDPALAB_CACHE_DIR", str(ROOT / ".cache" / "sdpalab"))

import torch  # noqa: E402

# Without a GPU, Triton kernels (backend triton_qdecode) run in Triton's CPU interpreter. The
# variable only counts if it is set before anything imports triton, hence here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Each xdist worker would take one torch thread per core: `-n 2` on 2 cores then runs 4 threads,
# and OpenMP's spin-waits doubled the CPU time of the small-op tests (model generation).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fault_backends(monkeypatch):
    """The test-only fault backends, registered here and in every subprocess, for one test."""
    import faults

    for key, value in faults.plugin_env().items():
        monkeypatch.setenv(key, value)
    faults.register_backends()
    yield faults
    faults.unregister_backends()
