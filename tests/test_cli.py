"""The CLI's contract: exit 0 on success, 2 with one line on bad input, never a traceback."""

import json
import subprocess
import sys

import pytest

from cli_runner import run_cli


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["plan", "--heads-kv", "8", "--head-dim", "128", "--context", "12x"], "--context '12x'"),
        (["plan", "--heads-kv", "0", "--head-dim", "128"], "--heads-kv 0 must be positive"),
        (
            ["plan", "--heads-kv", "8", "--head-dim", "64", "--kv-cache", "ring"],
            "--kv-cache 'ring'",
        ),
        (["plan", "--heads-kv", "8", "--head-dim", "64", "--kv-quant", "int3"], "kv_quant='int3'"),
        (["plan", "--heads-kv", "8"], "Missing option '--head-dim'"),
        (["list", "things"], "list 'things' is not valid; choose one of: variants, mods, presets"),
        (["doctor", "--device", "tpu"], "device='tpu'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["sweep", "/nonexistent/config.yaml"], "nonexistent"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, fragment):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err + out


def test_plan_prints_every_quantization(capsys):
    code, out, _ = run_cli(
        capsys,
        "plan",
        "--heads-kv",
        "8",
        "--head-dim",
        "128",
        "--layers",
        "32",
        "--context",
        "128k",
    )
    assert code == 0
    for quant in ("none", "int8", "int4", "fp8", "kivi2", "kivi4"):
        assert f" {quant} " in out
    assert "16 GiB" in out  # 32 layers x 2 x 8 heads x 128 x 2 bytes x 131072 tokens


@pytest.mark.parametrize("what", ["variants", "mods", "presets"])
def test_list(capsys, what):
    code, out, _ = run_cli(capsys, "list", what)
    assert code == 0
    expected = {"variants": "kv_quant", "mods": "sliding_window", "presets": "decode-long"}[what]
    assert expected in out


@pytest.mark.slow
def test_demo_quick_writes_a_run(tmp_path):
    """The real entry point in a subprocess: table, results, run.json, plots and report."""
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "sdpalab.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("results.sqlite", "results.csv", "run.json", "report.html"):
        assert (out / name).is_file(), name
    assert list((out / "plots").glob("*.png"))
    info = json.loads((out / "run.json").read_text())
    assert info["counts"].get("ok", 0) > 0
    assert "math" in proc.stdout and "ok" in proc.stdout


@pytest.mark.slow
def test_doctor_reports_backends_and_ceilings(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SDPALAB_CACHE_DIR", str(tmp_path))
    code, out, _ = run_cli(capsys, "doctor", "--device", "cpu")
    assert code == 0
    assert "math/float32" in out and "efficient/float32" in out and "unsupported" in out
    assert "TFLOP/s" in out and "GB/s" in out
    assert (tmp_path / "ceilings.json").is_file()
