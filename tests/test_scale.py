"""Scaling out: trials on Ray (same ids and statuses as local workers, faults included; a
worker killed mid-trial), one worker per GPU, and a study shared through PostgreSQL by two
search processes, whose password no file of a run holds.

One Ray head and one PostgreSQL server serve the whole session (``tests/services.py``); every
test here runs in one xdist group, so ``make test -n 2`` starts each once.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import pytest

import services
from cli_runner import run_cli
from sdpalab.run.executor import LocalExecutor, WorkerPool, gpu_slots
from sdpalab.run.rundir import ResultStore, redact_secrets
from sdpalab.spec.config import spec_from_dict

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("scale")]

FAULT_CONFIG = """
name: scale-faults
device: cpu
workload: {heads_q: 2, head_dim: 16}
measure: {warmup: 1, repeats: 3, timeout_s: 60}
grids:
  - name: healthy
    workload: {seq_kv: [16, 32]}
    variants: {backend: [math, eager]}
  - name: faults
    workload: {seq_kv: 16}
    variants: {backend: [fault_oom, fault_segv, fault_nan, fault_raise]}
  - name: hang
    workload: {seq_kv: 16}
    variants: {backend: fault_hang}
    measure: {timeout_s: 4}
"""
SEARCH_CONFIG = """
name: scale-search
device: cpu
workload: {phase: prefill, batch: 1, heads_q: 2, heads_kv: 1, seq_kv: 32, head_dim: 16}
variants: {backend: [math, eager, flash, efficient], mod: [none, causal, alibi]}
measure: {warmup: 1, repeats: 3, timeout_s: 60}
"""


@pytest.fixture(scope="session")
def ray_cluster():
    """A Ray head on this machine for the session; its token in this process's environment."""
    pytest.importorskip("ray", reason="needs the scale extra: pip install 'sdpalab[scale]'")
    try:
        with services.ray_head() as head:
            saved = {k: os.environ.get(k) for k in head.env}
            os.environ.update(head.env)
            try:
                yield head
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
    except services.Unavailable as err:
        pytest.skip(f"no Ray here: {err}")


@pytest.fixture(scope="session")
def pg():
    try:
        with services.postgres() as server:
            yield server
    except services.Unavailable as err:
        pytest.skip(f"no PostgreSQL here: {err}")


def statuses(out: Path) -> dict[str, str]:
    with sqlite3.connect(out / "results.sqlite") as db:
        return dict(db.execute("SELECT trial_id, status FROM trials"))


def _cli_env(**extra: str) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


# --------------------------------------------------------------------------- Ray


def test_ray_gives_the_local_ids_and_statuses(tmp_path, capsys, fault_backends, ray_cluster):
    config = tmp_path / "faults.yaml"
    config.write_text(FAULT_CONFIG)
    runs = {}
    for name, extra in (
        ("local", ()),
        ("ray", ("--executor", "ray", "--address", ray_cluster.address)),
    ):
        out = tmp_path / name
        code, stdout, err = run_cli(capsys, "sweep", config, "--out", out, "--workers", "2", *extra)
        assert code == 0, err
        assert "(raylet)" not in stdout  # Ray's notice of a dead worker stays off stdout
        runs[name] = statuses(out)
    assert runs["ray"] == runs["local"]
    assert sorted(runs["ray"].values()) == sorted(
        ["ok"] * 4 + ["oom", "crash", "numerical_fail", "error", "timeout"]
    )
    with ResultStore(tmp_path / "ray") as store:
        results = store.results()
    ok = [r for r in results if r.status == "ok"]
    assert all(r.provenance["executor"] == "ray" and r.provenance["load"] for r in ok)
    assert "timeout_s=4" in next(r.reason for r in results if r.status == "timeout")
    assert "ray worker died" in next(r.reason for r in results if r.status == "crash")


def _kill_when_running_long(title: bytes, after_s: float, killed: list[int]) -> None:
    """Kill (SIGKILL) the first Ray actor process that has run a trial for ``after_s``."""
    first_seen: dict[int, float] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                running = (entry / "cmdline").read_bytes().startswith(title)
            except OSError:
                continue
            pid = int(entry.name)
            if not running:
                first_seen.pop(pid, None)
                continue
            if time.monotonic() - first_seen.setdefault(pid, time.monotonic()) >= after_s:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.1)


def test_a_ray_worker_killed_mid_trial_leaves_one_row(
    tmp_path, capsys, fault_backends, ray_cluster
):
    config = tmp_path / "kill.yaml"
    config.write_text(
        FAULT_CONFIG.replace("fault_oom, fault_segv, fault_nan, fault_raise", "fault_nan").replace(
            "timeout_s: 4", "timeout_s: 90"
        )
    )
    out = tmp_path / "run"
    killed: list[int] = []
    # a healthy trial takes milliseconds; the one still running after 3 s is the hang
    killer = threading.Thread(
        target=_kill_when_running_long, args=(b"ray::TrialWorker.run", 3.0, killed)
    )
    killer.start()
    address = ("--executor", "ray", "--address", ray_cluster.address)
    code, _, err = run_cli(capsys, "sweep", config, "--out", out, *address)
    killer.join()
    assert code == 0, err
    assert killed
    rows = statuses(out)
    with sqlite3.connect(out / "results.sqlite") as db:
        (hang,) = db.execute("SELECT trial_id FROM trials WHERE v_backend = 'fault_hang'")
        assert db.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == len(rows) == 6
    assert rows[hang[0]] == "crash"
    # --resume runs nothing again: a crash is recorded once, not retried
    code, _, err = run_cli(capsys, "sweep", config, "--out", out, "--resume", *address)
    assert code == 0, err
    assert statuses(out) == rows


def test_search_on_ray_keeps_workers_busy(tmp_path, capsys, ray_cluster):
    config = tmp_path / "search.yaml"
    config.write_text(SEARCH_CONFIG)
    out = tmp_path / "search"
    code, stdout, err = run_cli(
        capsys,
        "search",
        config,
        "--trials",
        "4",
        "--out",
        out,
        "--workers",
        "2",
        "--sampler",
        "tpe",
        "--executor",
        "ray",
        "--address",
        ray_cluster.address,
        "--json",
    )
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["search"]["measured"] == 4
    assert len(statuses(out)) == 4
    info = json.loads((out / "run.json").read_text())
    entry = info["invocations"][-1]["search"]
    assert entry["executor"] == "ray" and entry["address"] == ray_cluster.address


# --------------------------------------------------------------------------- GPUs of one host


def test_gpu_slots_pin_one_worker_per_gpu():
    assert gpu_slots(2, "cuda", 2, None) == ["0", "1"]
    assert gpu_slots(4, "cuda", 4, None) == ["0", "1", "2", "3"]
    assert gpu_slots(3, "cuda:0", 2, None) == ["0", "1", "0"]  # round-robin past the count
    assert gpu_slots(2, "cuda", 8, "5,7") == ["5", "7"]  # the GPUs this process was given
    assert gpu_slots(1, "cuda", 2, None) is None
    assert gpu_slots(2, "cuda:1", 2, None) is None  # the trial names its GPU itself
    assert gpu_slots(2, "cpu", 2, None) is None
    assert gpu_slots(2, "cuda", 1, None) is None


def test_pinned_workers_record_their_gpu(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    pool = LocalExecutor(gpu_count=2).pool(tmp_path / "logs", 2, lambda r: None, device="cuda")
    assert pool.gpus == ["0", "1"]
    # the pinning on the CPU: two workers given fake GPUs run CPU trials, each records its own
    spec = spec_from_dict(
        {
            "name": "pinned",
            "device": "cpu",
            "workload": {"heads_q": 2, "head_dim": 16, "seq_kv": [16, 24, 32, 40]},
            "variants": {"backend": "math"},
            "measure": {"warmup": 1, "repeats": 2, "timeout_s": 60},
        }
    )
    results = []
    pool = WorkerPool(tmp_path / "logs", 2, results.append, gpus=["0", "1"])
    pool.run(deque(spec.trials()))
    assert len(results) == 4 and all(r.ok for r in results)
    assert {r.provenance["gpu_index"] for r in results} <= {"0", "1"}
    logs = sorted((tmp_path / "logs").glob("worker-*.log"))
    assert len(logs) == 2


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--executor", "slurm"), "--executor 'slurm' is not valid"),
        (("--address", "127.0.0.1:6379"), "--address needs --executor ray"),
        (("--executor", "ray", "--address", "not an address"), "is not valid"),
        (("--executor", "ray", "--address", "127.0.0.1:1"), "no Ray cluster answers there"),
    ],
)
def test_bad_executor_options_exit_2_before_anything_runs(tmp_path, capsys, args, says):
    pytest.importorskip("ray")
    config = tmp_path / "c.yaml"
    config.write_text(SEARCH_CONFIG)
    out = tmp_path / "out"
    for command in (("sweep", config), ("search", config, "--trials", "2")):
        code, _, err = run_cli(capsys, *command, "--out", out, *args)
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://me:{pw}@127.0.0.1/db",
        "postgresql://me:{pw}@127.0.0.1:1/db",  # nothing listens there
        "postgresql://sdpalab:{pw}@127.0.0.1:{port}/postgres",  # the wrong password
    ],
)
def test_bad_storage_exits_2_without_its_password(tmp_path, capsys, pg, url):
    password = "hunter2-not-this-one"
    port = pg.url.rsplit(":", 1)[1].split("/")[0]
    config = tmp_path / "c.yaml"
    config.write_text(SEARCH_CONFIG)
    out = tmp_path / "out"
    storage = url.format(pw=password, port=port)
    code, stdout, err = run_cli(
        capsys, "search", config, "--trials", "2", "--out", out, "--storage", storage
    )
    assert code == 2 and "--storage" in err and len(err.strip().splitlines()) == 1, err
    assert password not in err + stdout
    assert not out.exists()
    code, _, err = run_cli(capsys, "pareto", "--storage", storage, "--study", "x")
    assert code == 2 and password not in err


# --------------------------------------------------------------------------- a shared study


def test_two_searches_share_one_postgres_study(tmp_path, capsys, pg):
    config = tmp_path / "search.yaml"
    config.write_text(SEARCH_CONFIG)
    budget = 4
    outs = [tmp_path / f"host{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "sdpalab.cli", "search", str(config)),
                *("--trials", str(budget), "--out", str(out), "--storage", pg.url),
                *("--study", "shared", "--sampler", "tpe"),
            ],
            env=_cli_env(SDPALAB_WORKER_THREADS="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]
    logs = [p.communicate(timeout=400) for p in procs]
    for proc, (stdout, stderr) in zip(procs, logs, strict=True):
        assert proc.returncode == 0, stderr[-2000:]
        assert pg.password not in stdout + stderr
    measured = [set(statuses(out)) for out in outs]
    assert [len(ids) for ids in measured] == [budget, budget]
    assert not measured[0] & measured[1]  # no point measured twice

    # the study holds both processes' measurements; pareto and report read it
    code, stdout, err = run_cli(
        capsys, "pareto", "--storage", pg.url, "--study", "shared", "--json"
    )
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["run"] == "shared"
    shown = {row["trial_id"] for shape in doc["shapes"] for row in shape["front"]}
    assert shown and shown <= measured[0] | measured[1]
    report = tmp_path / "study-report"
    code, stdout, err = run_cli(capsys, "report", report, "--storage", pg.url, "--study", "shared")
    assert code == 0, err
    assert (report / "report.html").exists()

    # no file any of this wrote holds the password
    written = [p for root in [*outs, report] for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "run.json" for p in written)
    for path in written:
        assert pg.password.encode() not in path.read_bytes(), path
    info = json.loads((outs[0] / "run.json").read_text())
    assert info["invocations"][-1]["search"]["storage"] == redact_secrets(pg.url)
    assert "***" in info["command"]


def test_redact_secrets_masks_url_and_libpq_passwords():
    assert redact_secrets("postgresql://u:p@ss@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact_secrets("--storage=postgresql+psycopg://u:x@h/db") == (
        "--storage=postgresql+psycopg://u:***@h/db"
    )
    assert redact_secrets("host=h password=abc user=u") == "host=h password=*** user=u"
    assert redact_secrets("postgresql://u@h/db") == "postgresql://u@h/db"  # ~/.pgpass supplies it
