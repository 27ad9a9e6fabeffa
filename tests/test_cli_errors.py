"""The command line's exit-code contract for every command (README, "The command line"):
bad paths, flags and configs are exit 2 with one line and nothing written; run directories are
never overwritten without ``--force``; ``--resume`` means one thing for ``sweep`` and
``search`` and refuses a changed config; Ctrl-C is exit 130 with the count of stored trials and
the command that resumes, and leaves ``results.csv`` and ``run.json`` agreeing with the store.

No test here starts a worker or measures (the ``no_runs`` fixture turns any attempt into a
failure), except the one marked slow that interrupts a real sweep."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_runner import run_cli
from sdpalab import cli
from sdpalab.run.rundir import CSV, RUN_JSON, ResultStore, start_run
from sdpalab.spec.config import spec_from_dict

CONFIG = "name: c\ndevice: cpu\nworkload: {seq_kv: 16, heads_q: 2, head_dim: 16}\n"
NEVER_VALID = {
    # (config text, the key path the one line must name, what it must say is valid)
    "window missing": (
        "name: c\ndevice: cpu\nvariants: {mod: sliding_window}\n",
        "variants.mod",
        "mod_args.window",
    ),
    "heads do not divide": (
        "name: c\ndevice: cpu\nworkload: {heads_q: 8, heads_kv: 3}\n",
        "workload.heads_",
        "multiple of",
    ),
    "int8 without a cache": (
        "name: c\ndevice: cpu\nvariants: {kv_quant: int8}\n",
        "variants.kv_quant",
        "dynamic, static",
    ),
}


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch):
    """An idle machine, whatever else runs here: no busy warning in the one line."""
    import sdpalab.run.rundir

    monkeypatch.setattr(sdpalab.run.rundir, "LOAD_WINDOW_S", 0.0)  # the load average decides
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))


@pytest.fixture
def no_runs(monkeypatch):
    """Any worker, search runner or case-study measurement fails the test at once."""
    import sdpalab.casestudy.run
    import sdpalab.run.executor

    def refuse(*args, **kwargs):
        raise AssertionError("a trial would have run")

    monkeypatch.setattr(sdpalab.run.executor.WorkerPool, "run", refuse)
    monkeypatch.setattr(sdpalab.casestudy.run, "measure", refuse)


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A scratch working directory holding a config and a plain file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(CONFIG)
    (tmp_path / "afile").write_text("not a directory\n")
    return tmp_path


def with_out(command: str, out: str) -> list[str]:
    return {
        "sweep": ["sweep", "c.yaml", "--out", out],
        "search": ["search", "c.yaml", "--trials", "1", "--out", out],
        "demo": ["demo", "--quick", "--out", out],
        "reproduce": ["reproduce", "case-study", "--quick", "--out", out],
    }[command]


COMMANDS = ("sweep", "search", "demo", "reproduce")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("out", "fragment"),
    [
        ("/sys/sdpalab-x", "cannot create"),
        ("afile", "is a file"),
        ("afile/sub", "is a file"),
    ],
    ids=["unwritable", "existing file", "under a file"],
)
def test_bad_out_is_exit_2_and_one_line(command, out, fragment, here, no_runs, monkeypatch, capsys):
    if out.startswith("/sys") and not Path("/sys").is_dir():
        pytest.skip("no /sys here (sysfs refuses new directories, even to root)")
    before = files_under(here)
    code, _, err = run_cli(capsys, *with_out(command, out))
    line = one_line(err)
    assert code == 2, err
    assert line.startswith("error: --out ") and fragment in line, line
    assert files_under(here) == before and not Path("/sys/sdpalab-x").exists()


@pytest.mark.parametrize("command", ("sweep", "search"))
@pytest.mark.parametrize("case", NEVER_VALID, ids=list(NEVER_VALID))
def test_never_valid_config_is_refused_before_any_trial(
    command, case, here, no_runs, monkeypatch, capsys
):
    text, key, valid = NEVER_VALID[case]
    (here / "bad.yaml").write_text(text)
    before = files_under(here)
    args = with_out(command, "run")
    args[1] = "bad.yaml"
    code, _, err = run_cli(capsys, *args)
    line = one_line(err)
    assert code == 2, err
    assert f"bad.yaml: {key}" in line and valid in line, line
    assert files_under(here) == before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["sweep", "c.yaml", "--frobnicate"], "No such option"),
        (["sweep", "c.yaml", "--workers", "0"], "--workers 0"),
        (["sweep"], "Missing argument"),
        (["sweep", "nope.yaml"], "no such file or preset"),
        (["search", "c.yaml", "--trials", "0"], "--trials"),
        (["search", "c.yaml", "--trials", "1", "--sampler", "magic"], "--sampler 'magic'"),
        (["search", "c.yaml", "--trials", "1", "--workers", "0"], "--workers 0"),
        (["search", "c.yaml"], "--trials"),
        (["demo", "--frobnicate"], "No such option"),
        (["reproduce", "case-study", "--quick", "--out", "cs", "--device", "tpu"], "device='tpu'"),
        (["reproduce", "case-study"], "--out"),
        (["report", "nowhere"], "does not exist"),
        (["report", "afile"], "does not exist"),
        (["pareto", "nowhere"], "does not exist"),
        (["sensitivity", "nowhere"], "does not exist"),
        (["doctor", "--device", "tpu"], "device='tpu'"),
        (["plan", "--heads-kv", "0", "--head-dim", "64"], "--heads-kv 0"),
        (["list", "things"], "list 'things'"),
        (["model", "tiny-llama", "--kv-quant", "int3"], "int3"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_flags_are_exit_2_and_one_line(args, fragment, here, no_runs, monkeypatch, capsys):
    before = files_under(here)
    code, _, err = run_cli(capsys, *args)
    line = one_line(err)
    assert code == 2 and fragment in line, line
    assert files_under(here) == before


def test_bare_command_prints_help_without_an_error(monkeypatch, capsys):
    code, out, err = run_cli(capsys)
    assert code == 0
    assert "sweep" in out + err and "Usage" in out + err
    assert not [line for line in (out + err).splitlines() if line.startswith("error")]


def test_version(monkeypatch, capsys):
    import sdpalab

    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"sdpalab {sdpalab.__version__}"


# --------------------------------------------------------------------------- run directories


def stored_run(out: Path, text: str = CONFIG, rows: int = 1) -> None:
    """A run directory as ``sweep`` leaves it: run.json with the config, ``rows`` trials."""
    spec = spec_from_dict(__import__("yaml").safe_load(text), source="c.yaml")
    out.mkdir(parents=True, exist_ok=True)
    start_run(out, spec, len(spec.trials()))
    with ResultStore(out) as store:
        for trial in spec.trials()[:rows]:
            store.write(trial.result("ok", "", latency_ms=1.0))


@pytest.mark.parametrize("command", COMMANDS)
def test_an_existing_run_is_never_overwritten(command, here, no_runs, monkeypatch, capsys):
    stored_run(here / "run")
    before = {p: (here / "run" / p).read_bytes() for p in files_under(here / "run")}
    code, _, err = run_cli(capsys, *with_out(command, "run"))
    line = one_line(err)
    assert code == 2 and "already holds a run" in line and "--force" in line, line
    # every flag the message suggests is one this command has
    params = {
        opt
        for param in _command(command).params
        for opt in (*param.opts, *getattr(param, "secondary_opts", []))
    }
    assert set(re.findall(r"--[a-z][a-z-]*", line.split("holds a run", 1)[1])) <= params, line
    assert {p: (here / "run" / p).read_bytes() for p in files_under(here / "run")} == before


def _command(name: str):
    import typer.main

    group = typer.main.get_command(cli.app)
    if name == "reproduce":
        return group.commands["reproduce"].commands["case-study"]
    return group.commands[name]


def test_reproduce_twice_refuses_the_second(here, no_runs, monkeypatch, capsys):
    (here / "cs").mkdir()
    (here / "cs" / RUN_JSON).write_text(json.dumps({"name": "case-study-quick"}))
    (here / "cs" / "case-study.md").write_text("# first run\n")
    code, _, err = run_cli(capsys, *with_out("reproduce", "cs"))
    assert code == 2 and "already holds a run" in one_line(err)
    assert (here / "cs" / "case-study.md").read_text() == "# first run\n"


@pytest.mark.parametrize("command", ("sweep", "search"))
def test_resume_refuses_a_changed_config(command, here, no_runs, monkeypatch, capsys):
    stored_run(here / "run", CONFIG.replace("seq_kv: 16", "seq_kv: 32"))
    code, _, err = run_cli(capsys, *with_out(command, "run"), "--resume")
    line = one_line(err)
    assert code == 2 and "another config" in line and "seq_kv" in line, line


@pytest.mark.parametrize("command", ("sweep", "search"))
def test_resume_needs_a_run_to_resume(command, here, no_runs, monkeypatch, capsys):
    code, _, err = run_cli(capsys, *with_out(command, "new"), "--resume")
    assert code == 2 and "nothing to resume" in one_line(err)
    assert not (here / "new").exists()


def test_resume_accepts_a_config_that_grew(tmp_path):
    """A config that holds every stored trial (a backend added) may continue the run."""
    from sdpalab.run.rundir import prepare_run_dir

    stored_run(tmp_path / "run", CONFIG, rows=1)
    grown = spec_from_dict(
        __import__("yaml").safe_load(CONFIG + "variants: {backend: [auto, math]}\n")
    )
    assert prepare_run_dir(tmp_path / "run", grown, resume=True) == tmp_path / "run"
    shrunk = spec_from_dict(__import__("yaml").safe_load(CONFIG + "variants: {backend: math}\n"))
    with pytest.raises(ValueError, match="another config"):
        prepare_run_dir(tmp_path / "run", shrunk, resume=True)


def test_force_replaces_a_run(here, monkeypatch, capsys):
    # float16 is made "not here": its trials are stored as unsupported without a worker
    import sdpalab.spec.workload

    monkeypatch.setattr(sdpalab.spec.workload, "supported_dtypes", lambda device: ("float32",))
    stored_run(here / "run")
    (here / "f16.yaml").write_text(CONFIG.replace("head_dim: 16", "head_dim: 16, dtype: float16"))
    code, _, err = run_cli(capsys, "sweep", "f16.yaml", "--out", "run", "--force")
    assert code == 0, err
    with ResultStore(here / "run") as store:
        assert [r.status for r in store.results()] == ["unsupported"]
    assert len((here / "run" / RUN_JSON).read_text().split('"started_utc"')) == 2  # one run


def test_points_that_run_nowhere_are_listed_not_stored(here, monkeypatch, capsys):
    """``kv_quant: int8`` by ``kv_cache: none`` is no trial (not ``unsupported``): the grid's
    other points run, and the one left out is named on the output and in run.json."""
    import sdpalab.spec.workload

    monkeypatch.setattr(sdpalab.spec.workload, "supported_dtypes", lambda device: ("float32",))
    text = CONFIG.replace("head_dim: 16", "head_dim: 16, dtype: float16")
    (here / "x.yaml").write_text(
        text + "variants: {kv_cache: [none, static], kv_quant: [none, int8]}\n"
    )
    code, out, err = run_cli(capsys, "sweep", "x.yaml", "--out", "run")
    assert code == 0, err
    assert "note: 1 point(s) of the grid can run nowhere" in out and "needs a kv_cache" in out
    with ResultStore(here / "run") as store:
        reasons = [r.reason for r in store.results()]
    assert len(reasons) == 3 and not [r for r in reasons if "kv_cache" in r]
    info = json.loads((here / "run" / RUN_JSON).read_text())
    (left,) = info["left_out"]
    assert "needs a kv_cache" in left["reason"]


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_says_what_is_stored_and_how_to_resume(here, monkeypatch, capsys):
    import sdpalab.explore.grid

    def two_then_interrupt(trials, out, **kwargs):
        with ResultStore(out) as store:
            for trial in trials[:2]:
                store.write(trial.result("ok", "", latency_ms=1.0))
        raise KeyboardInterrupt

    (here / "c4.yaml").write_text(CONFIG + "variants: {backend: [math, eager, auto, flex]}\n")
    monkeypatch.setattr(sdpalab.explore.grid, "run_trials", two_then_interrupt)
    code, _, err = run_cli(capsys, "sweep", "c4.yaml", "--out", "run")
    assert code == 130
    line = one_line(err)
    assert "2 of 4 trials stored in run" in line, line
    assert "sdpalab sweep c4.yaml --out run --resume" in line, line
    csv_rows = (here / "run" / CSV).read_text().strip().splitlines()
    assert len(csv_rows) == 1 + 2
    info = json.loads((here / "run" / RUN_JSON).read_text())
    last = info["invocations"][-1]
    assert last["interrupted"] is True and last["stored"] == 2 and last["finished_utc"]


@pytest.mark.slow
def test_sigint_stops_a_real_sweep_cleanly(tmp_path):
    import faults

    out = tmp_path / "run"
    # a trial that hangs after one that finishes: the signal always lands mid-run, however
    # busy the machine (a quick preset could end between the first row and the signal)
    config = tmp_path / "sigint.yaml"
    config.write_text(
        "name: sigint\ndevice: cpu\n"
        "workload: {batch: 1, heads_q: 2, seq_kv: 64, head_dim: 16}\n"
        "variants: {backend: [math, eager, fault_hang]}\n"
        "measure: {warmup: 0, repeats: 2, timeout_s: 120}\n"
    )
    env = {**os.environ, **faults.plugin_env()}
    env["PYTHONPATH"] += os.pathsep + str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdpalab.cli", "sweep", str(config), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        # a pytest-xdist worker ignores SIGINT, and an ignored signal stays ignored in its
        # children: Python then installs no KeyboardInterrupt handler. A terminal's CLI has one.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(out / "results.sqlite") as db:
                if db.execute("SELECT COUNT(*) FROM trials").fetchone()[0] >= 1:
                    break
        except sqlite3.Error:
            pass
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    with ResultStore(out) as store:
        stored = len(store)
    assert f"{stored} of 3 trials stored" in err and "--resume" in err, err
    assert "Traceback" not in err
    assert len((out / CSV).read_text().strip().splitlines()) == 1 + stored
    last = json.loads((out / RUN_JSON).read_text())["invocations"][-1]
    assert last["interrupted"] is True and last["stored"] == stored
