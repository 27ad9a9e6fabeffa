"""The engine under faults: test-only backends that OOM, segfault, hang, return NaN and raise,
injected into a real sweep; and a sweep killed with SIGKILL, then resumed."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from faults import EXPECTED_STATUS, plugin_env
from sdpalab.run.executor import run_trials
from sdpalab.run.rundir import SQLITE, ResultStore
from sdpalab.spec.config import spec_from_dict

SEQS = [16, 24, 32, 40, 48, 56, 64]
FAULTS = ["fault_oom", "fault_segv", "fault_hang", "fault_nan", "fault_raise"]
FAULT_CONFIG = f"""
name: faults
device: cpu
workload: {{heads_q: 2, head_dim: 16}}
measure: {{warmup: 1, repeats: 3, timeout_s: 120}}
grids:
  - name: healthy
    workload: {{seq_kv: {SEQS}}}
    variants: {{backend: [math, eager], mod: [none, causal]}}
  - name: healthy-window
    workload: {{seq_kv: {SEQS}}}
    variants: {{backend: flash, mod: {{sliding_window: {{window: 8}}}}}}
  - name: faults
    workload: {{seq_kv: 16}}
    variants: {{backend: [fault_oom, fault_segv, fault_nan, fault_raise]}}
  - name: hang
    workload: {{seq_kv: 16}}
    variants: {{backend: fault_hang}}
    measure: {{timeout_s: 5}}
"""
RESUME_CONFIG = """
name: resumable
device: cpu
workload: {heads_q: 2, head_dim: 16, seq_kv: [16, 24, 32, 40, 48, 56]}
variants: {backend: [math, eager], mod: [none, causal]}
measure: {warmup: 2, repeats: 40, timeout_s: 120}
"""


def _sweep_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sdpalab.cli", "sweep", str(config), "--out", str(out), *extra]


def _env(**extra: str) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
    }
    env.update(extra)
    return env


@pytest.mark.slow
def test_faults_are_results_and_healthy_trials_survive(tmp_path):
    config = tmp_path / "faults.yaml"
    config.write_text(FAULT_CONFIG)
    out = tmp_path / "run"
    done = subprocess.run(
        _sweep_cmd(config, out, "--workers", "2"),
        env=_env(**plugin_env()),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # says how many failed, and why
    assert (
        "40 trials in" in done.stdout
        and "35 ok; failed: 1 crash, 1 error, 1 numerical_fail, 1 oom, 1 timeout" in done.stdout
    )

    with ResultStore(out) as store:
        results = store.results()
    assert len(results) == 40 and len({r.trial_id for r in results}) == 40
    by_backend = {}
    for r in results:
        by_backend.setdefault(r.variant["backend"], []).append(r)
    for fault in FAULTS:
        (r,) = by_backend.pop(fault)
        assert r.status == EXPECTED_STATUS[fault], (fault, r.status, r.reason)
        assert r.reason
    assert "SIGSEGV" in by_backend_reason(results, "fault_segv")
    assert "timeout_s=5" in by_backend_reason(results, "fault_hang")
    assert "injected fault" in by_backend_reason(results, "fault_raise")
    assert "allocate" in by_backend_reason(results, "fault_oom")

    healthy = [r for rs in by_backend.values() for r in rs]
    assert len(healthy) == 35
    for r in healthy:
        assert r.status == "ok", (r.label, r.reason)
        assert r.latency_ms > 0 and r.latency_n == 3
        assert r.peak_mem_bytes is not None and r.peak_mem_bytes >= 0
        assert r.rel_fro_err is not None and r.rel_fro_err < r.tolerance
        assert r.kernel and r.provenance.get("torch")
    # the CSV and run.json sit beside the store
    assert (out / "results.csv").read_text().count("\n") == 41
    # and the report, whose failures section names every fault
    page = (out / "report.html").read_text()
    assert all(status in page for status in ("crash", "timeout", "oom", "numerical_fail"))
    import json

    info = json.loads((out / "run.json").read_text())
    assert info["config"]["name"] == "faults" and info["counts"]["ok"] == 35
    assert info["provenance"]["torch"] and "sweep" in info["command"]


def by_backend_reason(results, backend: str) -> str:
    return next(r.reason for r in results if r.variant["backend"] == backend)


def _tagged_pids(tag: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"SDPALAB_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
def test_sigkill_then_resume_keeps_exactly_one_row_per_trial(tmp_path):
    config = tmp_path / "resume.yaml"
    config.write_text(RESUME_CONFIG)
    out = tmp_path / "run"
    expected = {
        t.trial_id for t in spec_from_dict(__import__("yaml").safe_load(RESUME_CONFIG)).trials()
    }
    assert len(expected) == 24

    tag = uuid.uuid4().hex
    sweep = subprocess.Popen(
        _sweep_cmd(config, out),
        env=_env(SDPALAB_TEST_TAG=tag),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # kill at a random moment once the run has started writing rows
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and sweep.poll() is None:
        if (out / SQLITE).exists():
            with ResultStore(out) as store:
                if len(store):
                    break
        time.sleep(0.05)
    delay = random.Random().uniform(0.0, 1.0)
    time.sleep(delay)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait(30)
    with ResultStore(out) as store:
        before = {r.trial_id: r for r in store.results()}
    assert before, "the sweep wrote no row before it was killed"
    # the killed sweep's worker dies with it (no orphan keeps measuring)
    for _ in range(50):
        if not _tagged_pids(tag):
            break
        time.sleep(0.1)
    assert not _tagged_pids(tag)

    done = subprocess.run(
        _sweep_cmd(config, out, "--resume"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    db = sqlite3.connect(out / SQLITE)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = db.execute("SELECT trial_id, status, written_utc FROM trials").fetchall()
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == 24, f"killed after {delay:.2f}s with {len(before)} rows"
    assert set(ids) == expected
    assert all(status == "ok" for _, status, _ in rows)
    # rows written before the kill were kept, not run again
    with ResultStore(out) as store:
        after = {r.trial_id: r for r in store.results()}
    assert all(after[i] == r for i, r in before.items())
    if len(before) < 24:  # on a fast machine the sweep may finish before the kill lands
        assert f"{24 - len(before)} trials in" in done.stdout


def test_unsupported_trials_are_stored_without_a_worker(tmp_path, monkeypatch):
    import sdpalab.spec.workload

    # a dtype this machine has no kernels for: valid elsewhere, unsupported here
    monkeypatch.setattr(sdpalab.spec.workload, "supported_dtypes", lambda device: ("float32",))
    spec = spec_from_dict(
        {
            "name": "u",
            "device": "cpu",
            "workload": {"seq_kv": 8, "dtype": "float16"},
            "variants": {"backend": ["math", "eager"]},
        }
    )
    seen = []
    results = run_trials(spec.trials(), tmp_path, on_result=lambda r, d, t: seen.append((d, t)))
    assert [r.status for r in results] == ["unsupported", "unsupported"]
    assert "dtype='float16' is not supported on cpu" in results[0].reason
    assert seen == [(1, 2), (2, 2)]
    assert not (tmp_path / "logs").exists()  # no worker was started
    # resuming finds everything done and runs nothing
    again = run_trials(spec.trials(), tmp_path, resume=True, on_result=lambda *a: seen.append(a))
    assert [r.trial_id for r in again] == [r.trial_id for r in results] and len(seen) == 2


@pytest.mark.gpu
def test_gpu_memory_is_released_between_trials(tmp_path, fault_backends):
    """A big masked trial, then a CUDA OOM, must not inflate a later small trial's peak: the
    same small trial measures the same total peak before and after them."""
    small = {"seq_kv": 64, "heads_q": 1, "head_dim": 16}
    big = {"seq_kv": 4096, "heads_q": 8, "head_dim": 64}
    spec = spec_from_dict(
        {
            "name": "gpu-release",
            "device": "cuda",
            "workload": {"dtype": "auto"},
            "measure": {"warmup": 1, "repeats": 3, "timeout_s": 300},
            "grids": [
                {"workload": small, "variants": {"backend": "math"}, "measure": {"seed": 1}},
                {
                    "workload": big,
                    "variants": {"backend": "math", "mod": {"sliding_window": {"window": 256}}},
                },
                {"workload": big, "variants": {"backend": "fault_oom"}},
                {"workload": small, "variants": {"backend": "math"}, "measure": {"seed": 2}},
            ],
        }
    )
    first, masked, oom, again = run_trials(spec.trials(), tmp_path)
    assert [r.status for r in (first, masked, oom, again)] == ["ok", "ok", "oom", "ok"], [
        r.reason for r in (first, masked, oom, again)
    ]
    assert "OutOfMemoryError" in oom.reason or "out of memory" in oom.reason.lower()
    # the masked trial's cached mask alone is >= 16 MiB: none of it may still be live
    assert again.peak_mem_total_bytes <= first.peak_mem_total_bytes + 2**20
