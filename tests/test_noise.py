"""A busy machine is noticed: sampled before and during a run, flagged in the results'
provenance and run.json, warned about once, and never read as a real difference by
``report --compare``; the doctor's cached ceilings carry their date and load and are measured
again when stale."""

from __future__ import annotations

import importlib
import json
import os
from datetime import datetime, timedelta, timezone

import pytest

from cli_runner import run_cli
from sdpalab.measure import roofline
from sdpalab.measure.provenance import machine_load
from sdpalab.measure.roofline import Ceilings, stale_reason
from sdpalab.run.rundir import RUN_JSON, ResultStore

CONFIG = "name: c\ndevice: cpu\nworkload: {seq_kv: 16, heads_q: 2, head_dim: 16}\n"


def load_avg(monkeypatch, value: float, cpus: int = 4) -> None:
    """The load average reads ``value``, and a run's first sample trusts it (no window)."""
    import sdpalab.run.rundir

    monkeypatch.setattr(sdpalab.run.rundir, "LOAD_WINDOW_S", 0.0)
    monkeypatch.setattr(os, "getloadavg", lambda: (value, value, value))
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)


def test_machine_load_counts_our_own_threads_out(monkeypatch):
    load_avg(monkeypatch, 3.0, cpus=4)
    busy = machine_load("cpu")
    assert busy["busy"] is True and busy["load_1m"] == 3.0 and busy["cpus"] == 4
    assert machine_load("cpu", own_threads=2)["busy"] is False  # 1.0 of others on 4 CPUs
    load_avg(monkeypatch, 0.5, cpus=4)
    idle = machine_load("cpu")
    assert idle["busy"] is False and "gpu_util_pct" not in idle
    json.dumps(idle)
    if os.path.exists("/proc/stat"):  # measured over a window, where the average lags
        assert machine_load("cpu", window_s=0.05)["other_cores"] >= 0.0


def test_other_cpu_counts_what_others_used_over_the_interval(monkeypatch):
    provenance = importlib.import_module("sdpalab.measure.provenance")  # the module, not
    # the function sdpalab.measure exports under its name
    clock = {"t": 100.0, "machine": 10.0, "ours": 1.0}
    monkeypatch.setattr(provenance.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(provenance, "_machine_cpu_s", lambda: clock["machine"])
    monkeypatch.setattr(provenance, "_process_cpu_s", lambda pid: clock["ours"])
    meter = provenance.OtherCpu()
    assert meter.cores([]) is None  # the baseline
    clock.update(t=102.0, machine=16.0, ours=3.0)  # 6 s busy in 2 s, 2 of them ours
    assert meter.cores([]) == pytest.approx(2.0)
    clock.update(t=102.5, machine=17.0, ours=3.0)  # too soon: the last figure
    assert meter.cores([]) == pytest.approx(2.0)
    load_avg(monkeypatch, 0.0, cpus=2)  # an idle load average: the measured cores decide
    sample = machine_load("cpu", other_cores=2.0)
    assert sample["busy"] is True and sample["other_cores"] == 2.0
    assert machine_load("cpu", other_cores=0.4)["busy"] is False


def test_sweep_on_a_busy_machine_warns_once_at_the_top(tmp_path, monkeypatch, capsys):
    # float16 is made "not here": its trials are stored as unsupported without a worker
    import sdpalab.spec.workload

    monkeypatch.setattr(sdpalab.spec.workload, "supported_dtypes", lambda device: ("float32",))
    load_avg(monkeypatch, 9.0, cpus=4)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(CONFIG.replace("head_dim: 16", "head_dim: 16, dtype: float16"))
    code, _, err = run_cli(capsys, "sweep", "c.yaml", "--out", "run")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "busy" in warnings[0] and "load 9 on 4 CPUs" in warnings[0]
    assert err.splitlines()[0] == warnings[0]  # before anything else
    info = json.loads((tmp_path / "run" / RUN_JSON).read_text())
    assert info["invocations"][-1]["load"]["busy"] is True


@pytest.mark.slow
def test_measured_results_carry_the_load_they_ran_under(tmp_path, monkeypatch):
    from sdpalab.explore.grid import sweep
    from sdpalab.measure.provenance import OtherCpu
    from sdpalab.spec.config import spec_from_dict

    load_avg(monkeypatch, 50.0, cpus=4)  # sampled in this process, as each result arrives
    monkeypatch.setattr(OtherCpu, "cores", lambda self, pids: 3.5)  # others: 3.5 of 4 CPUs
    spec = spec_from_dict({**_yaml(CONFIG), "variants": {"backend": "math"}})
    run = sweep(spec, tmp_path / "run")
    (result,) = run.results
    assert result.ok and result.provenance["busy"] is True
    assert result.provenance["load"]["other_cores"] == 3.5
    with ResultStore(tmp_path / "run") as store:
        assert store.results()[0].provenance["busy"] is True
    last = json.loads((tmp_path / "run" / RUN_JSON).read_text())["invocations"][-1]
    assert last["busy_trials"] == 1


def _yaml(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


# --------------------------------------------------------------------------- doctor


def ceilings(**fields) -> Ceilings:
    import platform

    import torch

    base = {
        "device_name": "Test CPU",
        "matmul_tflops": 1.0,
        "copy_gbps": 10.0,
        "dtype": "float32",
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load": {"load_1m": 0.1, "cpus": 4, "own_threads": 0, "busy": False},
        "torch": torch.__version__,
        "hostname": platform.node(),
    }
    return Ceilings(**{**base, **fields})


def test_ceilings_go_stale():
    assert stale_reason(ceilings()) is None
    old = (datetime.now(timezone.utc) - timedelta(days=8)).isoformat(timespec="seconds")
    assert "8 days ago" in stale_reason(ceilings(measured_at=old))
    busy = {"load_1m": 7.9, "cpus": 2, "own_threads": 0, "busy": True}
    assert "busy machine (load 7.9 on 2 CPUs)" in stale_reason(ceilings(load=busy))
    assert "torch 1.0" in stale_reason(ceilings(torch="1.0"))
    assert "another-host" in stale_reason(ceilings(hostname="another-host"))
    assert "no record" in stale_reason(ceilings(load=None))  # cached before loads were kept


def test_doctor_measures_stale_ceilings_again_and_shows_date_and_load(
    tmp_path, monkeypatch, capsys
):
    import sdpalab.doctor

    monkeypatch.setenv("SDPALAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(sdpalab.doctor, "probe_backend", lambda *args: "ok")
    measured = []

    def measure(device, dtype=None):
        measured.append(device)
        return ceilings(device_name=roofline.device_name(device), copy_gbps=20.0)

    monkeypatch.setattr(sdpalab.doctor, "measure_ceilings", measure)
    busy = {"load_1m": 7.9, "cpus": 2, "own_threads": 0, "busy": True}
    roofline.save_ceilings(ceilings(device_name=roofline.device_name("cpu"), load=busy))
    code, out, _ = run_cli(capsys, "doctor", "--device", "cpu")
    assert code == 0 and measured == ["cpu"]  # busy: measured again
    assert "copy 20 GB/s" in out and "under load 0.1 on 4 CPUs" in out
    assert "measured again" in out and "busy machine" in out
    assert roofline.load_ceilings("cpu").copy_gbps == 20.0
    code, out, _ = run_cli(capsys, "doctor", "--device", "cpu")
    assert code == 0 and measured == ["cpu"]  # fresh and idle: the cache holds
    assert "under load 0.1 on 4 CPUs" in out and "measured again" not in out
    assert out.count("measured 2") == 1  # the date once, with its load
